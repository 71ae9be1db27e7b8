"""Load any model the suite evaluates: our checkpoints, third-party files, TorchScript, RobustBench zoo entries.

Every model comes back in eval mode taking float NCHW images in [0, 1]. Sources:

- our training checkpoints (``checkpoint.pt`` from ``train``): the architecture, JPEG layer and normalisation
  come from the file;
- PyTorch files (``.pt``, ``.pth``, ``.th``) holding a state dict, bare or wrapped under ``state_dict``,
  ``model``, ``net`` or ``model_state_dict``; ``module.`` / ``model.`` key prefixes are stripped. They need
  ``arch``: a name from our model registry, ``torchvision:NAME`` or ``timm:NAME`` (a bare name not in our
  registry is looked up in torchvision, then timm). The class count and input channels are read from the file
  unless given;
- safetensors files (the same, without any pickle);
- TorchScript archives (no ``arch``), taken as they are;
- ``robustbench:NAME`` or ``robustbench:DATASET/NAME`` (DATASET cifar10 by default, also cifar100, imagenet):
  built by RobustBench's own ``load_model`` from ``model_dir/<dataset>/<threat_model>/<NAME>.pt``, offline;
  a missing file is fetched only with ``download=True``. Zoo models are taken as they are;
- a model-spec TOML file (below).

A model is labelled in reports and history by the name it is given (``name``, ``--name``, a spec's or a benchmark's
``name``); without one, by what it is: the file's stem (for our checkpoint.pt, its training run's folder) and the first
8 hex digits of its SHA-256, or the zoo name (with dataset and threat model unless cifar10 / Linf). Two different
files therefore never share a label, even when both are called ``checkpoint.pt``.

Preprocessing: images of one size reach the model as they are, resized inside it when it declares another
``input_size`` (attack budgets stay in the data's pixels). Images of several sizes, and any ``resize``,
``crop_pct`` or ``interpolation``, are resized and centre-cropped in the data pipeline as timm's eval does; for
``timm:NAME`` the input size, crop_pct and interpolation of the model's ``pretrained_cfg`` are the defaults of that
resize (``info["preprocess_defaults"]``), below flags and spec keys. ``info["preprocess"]`` holds what was declared.

Third-party state dicts get mean/std normalisation (a ``Normalize`` wrapper) only when ``mean`` and ``std``
are given. Files load with ``torch.load(weights_only=True)``: a file that needs arbitrary pickled code is refused
unless ``trust=True`` (``--trust-checkpoint``), because unpickling it can run any code its author chose.

Model-spec TOML: one small file names everything a nightly job needs; every key but ``checkpoint`` is optional,
relative paths are relative to the TOML file, and arguments given to ``load_model`` (or CLI flags) win::

    name = "resnet20-cifar10"              # label in reports (default: file stem + content hash, or zoo name)
    checkpoint = "resnet20-12fca82f.th"    # a file, or "robustbench:NAME"
    arch = "resnet20"                      # ours, "torchvision:NAME" or "timm:NAME"
    num_classes = 10
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    input_size = [32, 32]                  # H, W the model expects
    resize = 36                            # shorter side before the centre crop (0: crop only; default
    crop_pct = 0.875                       #   floor(max(H, W) / crop_pct)); see robustjpeg.data.preprocess
    interpolation = "bicubic"              # nearest, bilinear (default), bicubic, lanczos, box, hamming
    defended = true                        # meant to be robust (adversarially trained): check 13 expects no collapse
    threat_model = "Linf"                  # robustbench only
    model_dir = "models"                   # robustbench only

``trust`` cannot be set in a spec: running pickled code stays an explicit choice on the command line.

Safe reading of files is in ``robustjpeg.models.files``, the RobustBench layer in ``robustjpeg.models.robustbench``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomllib
import torch
from torch import nn

from robustjpeg.data.preprocess import Preprocess, parse_input_size, timm_defaults
from robustjpeg.errors import CheckpointError, ConfigError, first_line
from robustjpeg.models.checkpoints import SCHEMA, load_trained
from robustjpeg.models.factory import Normalize, create_model, strip_prefixes
from robustjpeg.models.files import read_safetensors, sniff_file, torch_load, unwrap_state_dict
from robustjpeg.models.info import ModelInfo
from robustjpeg.models.robustbench import load_zoo
from robustjpeg.utils.io import file_sha256

SPEC_KEYS = {"name": str, "checkpoint": str, "arch": str, "num_classes": int, "mean": list, "std": list,
             "input_size": (int, list), "resize": int, "crop_pct": (float, int), "interpolation": str,
             "threat_model": str, "model_dir": str, "defended": bool}


def load_model(source: str | Path, *, arch: str | None = None, num_classes: int | None = None,
               mean: tuple | None = None, std: tuple | None = None, input_size: tuple | None = None,
               trust: bool = False, threat_model: str | None = None, model_dir: str | Path | None = None,
               device: str | torch.device = "cpu", name: str | None = None, download: bool = False,
               resize: int | None = None, crop_pct: float | None = None,
               interpolation: str | None = None, defended: bool | None = None) -> tuple[nn.Module, ModelInfo]:
    """Load a model from a file, a spec TOML or the RobustBench zoo; returns (model in eval mode, info)."""
    if str(source).endswith(".toml"):
        spec = read_model_spec(Path(source))
        given = dict(arch=arch, num_classes=num_classes, mean=mean, std=std, input_size=input_size,
                     threat_model=threat_model, model_dir=model_dir, name=name, resize=resize, crop_pct=crop_pct,
                     interpolation=interpolation, defended=defended)
        merged = {**spec, **{k: v for k, v in given.items() if v is not None}}
        return load_model(merged.pop("checkpoint"), trust=trust, device=device, download=download, **merged)
    _check_mean_std(mean, std)
    if str(source).startswith("robustbench:"):
        _refuse_normalisation(mean, std, "RobustBench zoo models")
        model, info = load_zoo(str(source), threat_model or "Linf", model_dir, download)
    else:
        model, info = _load_file(Path(source), arch, num_classes, mean, std, trust)
    size = input_size if input_size is not None else info.input_size
    declared = Preprocess(size, resize, crop_pct, interpolation).over(Preprocess.from_dict(info.preprocess))
    info = replace(info, name=name or info.name, input_size=list(parse_input_size(size)) if size else None,
                   preprocess=declared.to_dict(), defended=bool(defended))
    return model.to(torch.device(device)).eval(), info


def check_class_count(model: nn.Module, x: torch.Tensor, num_classes: int, data_name: str = "the data") -> None:
    """Run one batch and refuse a model whose output is not one score per class of the data."""
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as exc:
        raise CheckpointError(f"the model fails on input of shape {tuple(x.shape)} from {data_name} ({first_line(exc)}); "
                              "check --input-size, --arch and --dataset") from exc
    if not isinstance(out, torch.Tensor):
        raise CheckpointError(f"the model returns a {type(out).__name__}, not a tensor of class scores; wrap it so "
                              "that forward returns logits only")
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise CheckpointError(f"the model outputs shape {tuple(out.shape)} but {data_name} has {num_classes} classes; "
                              "use the dataset it was trained on, or the matching --num-classes")


class Resize(nn.Module):
    """Bilinear resize to the size a model expects, inside the model so budgets stay in the data's pixels."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


def fit_input_size(model: nn.Module, info: ModelInfo, x: torch.Tensor) -> nn.Module:
    """Put a Resize in front when the model's declared input size differs from the data's (noted in info)."""
    size = info.input_size
    if not size or tuple(size) == tuple(x.shape[-2:]):
        return model
    info.resized_from = list(x.shape[-2:])
    return nn.Sequential(Resize(size), model).to(x.device).eval()


def fit_to_data(model: nn.Module, info: ModelInfo, x: torch.Tensor, num_classes: int, data_name: str) -> nn.Module:
    """Resize inputs to the model's declared size, then refuse a model whose outputs are not one score per class."""
    model = fit_input_size(model, info, x[:1])
    check_class_count(model, x[:2], num_classes, data_name)
    return model


# --- model-spec TOML ---------------------------------------------------------------------------------

def read_model_spec(path: Path) -> dict[str, Any]:
    """Read a model-spec TOML into load_model keyword arguments (paths made relative to the file)."""
    if not path.is_file():
        raise ConfigError(f"model spec {path} does not exist")
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model spec {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        hint = "; trust is a command-line choice (--trust-checkpoint)" if "trust" in unknown or "trust_checkpoint" in unknown else ""
        raise ConfigError(f"model spec {path}: unknown keys {unknown}; known: {', '.join(SPEC_KEYS)}{hint}")
    if "checkpoint" not in spec:
        raise ConfigError(f"model spec {path} needs checkpoint = \"FILE\" or \"robustbench:NAME\"")
    wrong = [f"{k} = {v!r}" for k, v in spec.items()  # a TOML true is an int to Python: only `defended` takes it
             if not isinstance(v, SPEC_KEYS[k]) or (isinstance(v, bool) and SPEC_KEYS[k] is not bool)]
    if wrong:
        raise ConfigError(f"model spec {path}: wrong type for {', '.join(wrong)} (see the format in robustjpeg.models.loading)")
    return _resolve_spec_paths(spec, path.parent)


def _resolve_spec_paths(spec: dict, base: Path) -> dict:
    spec = dict(spec)
    if not str(spec["checkpoint"]).startswith("robustbench:"):
        spec["checkpoint"] = str(base / spec["checkpoint"])
    if "model_dir" in spec:
        spec["model_dir"] = str(base / spec["model_dir"])
    for key in ("mean", "std", "input_size"):
        if key in spec:
            spec[key] = tuple(spec[key]) if isinstance(spec[key], list) else spec[key]
    if "crop_pct" in spec:
        spec["crop_pct"] = float(spec["crop_pct"])
    return spec


# --- files ---------------------------------------------------------------------------------------

def _load_file(path: Path, arch, num_classes, mean, std, trust) -> tuple[nn.Module, ModelInfo]:
    kind = sniff_file(path)
    sha = file_sha256(path)
    info = ModelInfo(file_label(path.stem, sha), sha, str(path), kind, arch, mean=list(mean) if mean else None,
                     std=list(std) if std else None)
    if kind == "torchscript":
        _refuse_normalisation(mean, std, "TorchScript models")
        if arch:
            raise ConfigError(f"{path} is a TorchScript archive that holds its own architecture; drop --arch {arch}")
        with warnings.catch_warnings():  # torch deprecates TorchScript, but people still ship it
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu"), replace(info, arch="torchscript")
    obj = read_safetensors(path) if kind == "safetensors" else torch_load(path, trust)
    if isinstance(obj, dict) and obj.get("schema") == SCHEMA:
        return _load_ours(path, obj, arch, mean, std, info)
    if isinstance(obj, nn.Module):
        return _normalised(obj, mean, std), replace(info, format="pickled-module", arch=arch or type(obj).__name__)
    state = unwrap_state_dict(obj, path)
    model, num_classes, in_channels = _fit_architecture(arch, num_classes, state, path)
    load_matching_state(model, state, f"{path} (--arch {arch})")
    defaults = timm_defaults(model)
    info = replace(info, format=kind if kind == "safetensors" else "state_dict", num_classes=num_classes,
                   in_channels=in_channels, preprocess_defaults=defaults.to_dict() if defaults else None)
    return _normalised(model, mean, std), info


def file_label(stem: str, sha256: str) -> str:
    """The label of a model given no name: a readable stem plus the start of the file's content hash (once: torch hub
    files such as resnet20-12fca82f.th already end with it)."""
    return stem if stem.endswith(sha256[:8]) else f"{stem}-{sha256[:8]}"


def _load_ours(path: Path, ckpt: dict, arch, mean, std, info: ModelInfo) -> tuple[nn.Module, ModelInfo]:
    model, spec, _ = load_trained(path, device="cpu")
    if arch and arch != spec.arch:
        raise ConfigError(f"{path} is a robustjpeg checkpoint of a {spec.arch}; drop --arch {arch}")
    _refuse_normalisation(mean, std, "robustjpeg checkpoints (normalisation is stored inside)")
    stem = path.resolve().parent.name if path.stem == "checkpoint" else path.stem  # train -o DIR writes DIR/checkpoint.pt
    return model, replace(info, name=file_label(stem, info.sha256), format="robustjpeg", arch=spec.arch,
                          spec=spec.to_dict(), num_classes=spec.num_classes, mean=list(spec.mean), std=list(spec.std),
                          input_size=spec.input_size, complete=ckpt.get("complete"), epoch=ckpt.get("epoch"),
                          preprocess=spec.preprocess, jpeg_start_tables=ckpt.get("jpeg_start_tables"))


# --- architectures and key matching -------------------------------------------------------------------

def _fit_architecture(arch: str | None, num_classes: int | None, state: dict, path: Path):
    """Build the architecture with the class count and input channels the file's tensors imply."""
    if not arch:
        raise ConfigError(f"{path} holds only weights; name the architecture with --arch "
                          "(ours, torchvision:NAME or timm:NAME) or use a model-spec TOML")
    built = (num_classes or 10, 3)
    probe = create_model(arch, *built)
    state = strip_prefixes(state, probe.state_dict())
    fitted = (num_classes or _dim_of(state, _last_module_key(probe, nn.Linear), 0) or built[0],
              _dim_of(state, _first_module_key(probe, nn.Conv2d), 1) or 3)
    return (probe if fitted == built else create_model(arch, *fitted)), *fitted


def load_matching_state(model: nn.Module, state: dict, what: str) -> None:
    """Load a state dict after checking keys and shapes; a mismatch names the keys and shapes."""
    own = model.state_dict()
    state = strip_prefixes(state, own)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{label} ({len(items)}): {_listing(items)}"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
                if items]
    if problems:
        raise CheckpointError(f"{what} does not fit: " + "; ".join(problems)
                              + ". Check --arch and --num-classes against how the file was trained")
    try:
        model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{what}: the architecture refused the weights ({first_line(exc)})") from exc


def _listing(items: list[str], limit: int = 8) -> str:
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _first_module_key(model: nn.Module, kind: type) -> str | None:
    return next((f"{n}.weight" for n, m in model.named_modules() if isinstance(m, kind)), None)


def _last_module_key(model: nn.Module, kind: type) -> str | None:
    keys = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, kind)]
    return keys[-1] if keys else None


def _dim_of(state: dict, key: str | None, dim: int) -> int | None:
    tensor = state.get(key) if key else None
    return int(tensor.shape[dim]) if tensor is not None and tensor.ndim > dim else None


def _normalised(model: nn.Module, mean, std) -> nn.Module:
    if mean is None:
        return model
    return nn.Sequential(Normalize(mean, std), model)


def _check_mean_std(mean, std) -> None:
    if (mean is None) != (std is None):
        raise ConfigError("--mean and --std go together: give both (e.g. --mean 0.485,0.456,0.406 "
                          "--std 0.229,0.224,0.225) or neither")
    if std is not None and (len(mean) != len(std) or any(s <= 0 for s in std)):
        raise ConfigError(f"--mean {mean} and --std {std} need one value per channel and a positive std")


def _refuse_normalisation(mean, std, what: str) -> None:
    if mean is not None or std is not None:
        raise ConfigError(f"{what} are taken as they are; drop --mean/--std")


# --- RobustBench ---------------------------------------------------------------------------------


# --- small helpers -------------------------------------------------------------------------------


