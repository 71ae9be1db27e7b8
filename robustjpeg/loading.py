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
    crop_pct = 0.875                       #   floor(max(H, W) / crop_pct)); see robustjpeg.preprocess
    interpolation = "bicubic"              # nearest, bilinear (default), bicubic, lanczos, box, hamming
    threat_model = "Linf"                  # robustbench only
    model_dir = "models"                   # robustbench only

``trust`` cannot be set in a spec: running pickled code stays an explicit choice on the command line.

RobustBench 1.1.1 needs care (see ``import_robustbench``): install it with
``pip install --no-deps --force-reinstall robustbench==1.1.1`` after everything else, plus the ``robustbench``
extra of this package (its real run-time needs, with ``setuptools<81`` for ``pkg_resources``).
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
import sys
import tomllib
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustjpeg.errors import CheckpointError, ConfigError, UnknownName
from robustjpeg.models import MODELS, Normalize, create_model, strip_prefixes
from robustjpeg.preprocess import Preprocess, parse_input_size, timm_defaults
from robustjpeg.train import SCHEMA, load_trained

WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")
SPEC_KEYS = {"name": str, "checkpoint": str, "arch": str, "num_classes": int, "mean": list, "std": list,
             "input_size": (int, list), "resize": int, "crop_pct": (float, int), "interpolation": str,
             "threat_model": str, "model_dir": str}
ZOO_DATASETS = ("cifar10", "cifar100", "imagenet")
CODE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch names the callable it refused, in every message form
SAFE_MODULES = ("torch", "collections", "_codecs", "numpy")  # what plain weights pickle; torch's loader allows these
RISKY_MODULES = ("os", "posix", "nt", "subprocess", "sys", "io", "shutil", "socket", "importlib", "runpy", "pty",
                 "builtins")


def load_model(source: str | Path, *, arch: str | None = None, num_classes: int | None = None,
               mean: tuple | None = None, std: tuple | None = None, input_size: tuple | None = None,
               trust: bool = False, threat_model: str | None = None, model_dir: str | Path | None = None,
               device: str | torch.device = "cpu", name: str | None = None, download: bool = False,
               resize: int | None = None, crop_pct: float | None = None,
               interpolation: str | None = None) -> tuple[nn.Module, dict]:
    """Load a model from a file, a spec TOML or the RobustBench zoo; returns (model in eval mode, info)."""
    if str(source).endswith(".toml"):
        spec = read_model_spec(Path(source))
        given = dict(arch=arch, num_classes=num_classes, mean=mean, std=std, input_size=input_size,
                     threat_model=threat_model, model_dir=model_dir, name=name, resize=resize, crop_pct=crop_pct,
                     interpolation=interpolation)
        merged = {**spec, **{k: v for k, v in given.items() if v is not None}}
        return load_model(merged.pop("checkpoint"), trust=trust, device=device, download=download, **merged)
    _check_mean_std(mean, std)
    if str(source).startswith("robustbench:"):
        _refuse_normalisation(mean, std, "RobustBench zoo models")
        model, info = _load_zoo(str(source), threat_model or "Linf", model_dir, download)
    else:
        model, info = _load_file(Path(source), arch, num_classes, mean, std, trust)
    size = input_size if input_size is not None else info.get("input_size")
    declared = Preprocess(size, resize, crop_pct, interpolation).over(Preprocess.from_dict(info.get("preprocess")))
    info.update(name=name or info["name"], input_size=list(parse_input_size(size)) if size else None,
                preprocess=declared.to_dict())
    return model.to(torch.device(device)).eval(), info


def check_class_count(model: nn.Module, x: torch.Tensor, num_classes: int, data_name: str = "the data") -> None:
    """Run one batch and refuse a model whose output is not one score per class of the data."""
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as exc:
        raise CheckpointError(f"the model fails on input of shape {tuple(x.shape)} from {data_name} ({_first_line(exc)}); "
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


def fit_input_size(model: nn.Module, info: dict, x: torch.Tensor) -> nn.Module:
    """Put a Resize in front when the model's declared input size differs from the data's (noted in info)."""
    size = info.get("input_size")
    if not size or tuple(size) == tuple(x.shape[-2:]):
        return model
    info["resized_from"] = list(x.shape[-2:])
    return nn.Sequential(Resize(size), model).to(x.device).eval()


def fit_to_data(model: nn.Module, info: dict, x: torch.Tensor, num_classes: int, data_name: str) -> nn.Module:
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
    wrong = [f"{k} = {v!r}" for k, v in spec.items() if not isinstance(v, SPEC_KEYS[k]) or isinstance(v, bool)]
    if wrong:
        raise ConfigError(f"model spec {path}: wrong type for {', '.join(wrong)} (see the format in robustjpeg.loading)")
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

def _load_file(path: Path, arch, num_classes, mean, std, trust) -> tuple[nn.Module, dict]:
    kind = sniff_file(path)
    sha = _sha256(path)
    info = {"name": file_label(path.stem, sha), "source": str(path), "sha256": sha, "format": kind,
            "arch": arch, "spec": None, "mean": list(mean) if mean else None, "std": list(std) if std else None}
    if kind == "torchscript":
        _refuse_normalisation(mean, std, "TorchScript models")
        if arch:
            raise ConfigError(f"{path} is a TorchScript archive that holds its own architecture; drop --arch {arch}")
        with warnings.catch_warnings():  # torch deprecates TorchScript, but people still ship it
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu"), {**info, "arch": "torchscript"}
    obj = _read_safetensors(path) if kind == "safetensors" else _torch_load(path, trust)
    if isinstance(obj, dict) and obj.get("schema") == SCHEMA:
        return _load_ours(path, obj, arch, mean, std, info)
    if isinstance(obj, nn.Module):
        info.update(format="pickled-module", arch=arch or type(obj).__name__)
        return _normalised(obj, mean, std), info
    state = _unwrap_state_dict(obj, path)
    model, num_classes, in_channels = _fit_architecture(arch, num_classes, state, path)
    load_matching_state(model, state, f"{path} (--arch {arch})")
    defaults = timm_defaults(model)
    info.update(format=kind if kind == "safetensors" else "state_dict", num_classes=num_classes, in_channels=in_channels,
                preprocess_defaults=defaults.to_dict() if defaults else None)
    return _normalised(model, mean, std), info


def file_label(stem: str, sha256: str) -> str:
    """The label of a model given no name: a readable stem plus the start of the file's content hash (once: torch hub
    files such as resnet20-12fca82f.th already end with it)."""
    return stem if stem.endswith(sha256[:8]) else f"{stem}-{sha256[:8]}"


def sniff_file(path: Path) -> str:
    """Say what a checkpoint file holds ('torch', 'torchscript', 'safetensors') or refuse it with the reason."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; a source is a checkpoint file, a model-spec .toml "
                              "or robustbench:NAME")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy failed; fetch the file again")
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if b"<html" in head.lower() or head.lstrip().lower().startswith(b"<!doctype"):
        raise CheckpointError(f"{path} is an HTML page, not a checkpoint: the link served a web page (a login, "
                              "quota or confirmation page); download the file itself")
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        return "safetensors"
    return "torch"


def _zip_kind(path: Path) -> str:
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{path} is truncated or corrupt (an incomplete zip archive); download it again") from exc
    return "torchscript" if any(n.endswith("/constants.pkl") for n in names) else "torch"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    return head[8:9] == b"{" and 0 < header_len <= size - 8


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(exc)}); it may be truncated, "
                              "download it again") from exc


def _torch_load(path: Path, trust: bool) -> Any:
    """torch.load with weights_only=True; pickled code only when trusted; every failure named."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        code = CODE_GLOBAL.search(str(exc))
        name = next(iter(pickle_globals(path)), code.group(1) if code else None)
        if name:
            raise CheckpointError(_code_refusal(path, name)) from exc
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (its bytes are no valid pickle); check the file, "
                              "or download it again") from exc
    except (ModuleNotFoundError, AttributeError) as exc:
        raise CheckpointError(f"{path} pickles objects whose Python code is not importable here ({_first_line(exc)}); "
                              "re-save its state_dict() where that code lives and load it with --arch") from exc
    except (EOFError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint or is truncated ({_first_line(exc)}); "
                              "check the file, or download it again") from exc


def _code_refusal(path: Path, name: str) -> str:
    risky = name.split(".")[0] in RISKY_MODULES
    why = " (it can run any command: this file is most likely malicious)" if risky else ""
    return (f"{path} was refused, and nothing in it ran: its pickle asks to run Python code when loaded, {name}{why}. "
            "--trust-checkpoint (trust=True) exists only for files you trust, since it lets that code run; better, "
            "re-save the model's state_dict() with torch.save or safetensors where it was made, and load that")


def pickle_globals(path: Path) -> list[str]:
    """The callables a checkpoint's pickle would import (GLOBAL, STACK_GLOBAL), beyond plain weights; never unpickled."""
    import io

    try:
        with zipfile.ZipFile(path) as archive:
            return _scan([io.BytesIO(archive.read(n)) for n in archive.namelist() if n.endswith(".pkl")])
    except zipfile.BadZipFile:
        with open(path, "rb") as fh:
            return _scan([fh])


def _scan(streams) -> list[str]:
    import pickletools

    names = []
    for stream in streams:
        size = stream.seek(0, 2)
        stream.seek(0)
        while stream.tell() < size:  # the legacy format holds several pickles in a row, then raw tensor bytes
            try:
                names += _globals_in(pickletools.genops(stream))
            except (ValueError, EOFError, IndexError):
                break
    return [n for n in names if n.split(".")[0] not in SAFE_MODULES]


def _globals_in(ops) -> list[str]:
    """Module.name of each GLOBAL/STACK_GLOBAL of one pickle, following the strings and memo STACK_GLOBAL reads."""
    names, recent, memo = [], [], {}
    for op, arg, _ in ops:
        if op.name in ("GLOBAL", "INST"):
            names.append(_python3_name(*arg.split(" ", 1)))
        elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
            names.append(_python3_name(str(recent[-2]), str(recent[-1])))
        elif op.name == "MEMOIZE" and recent:
            memo[len(memo)] = recent[-1]
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and recent:
            memo[arg] = recent[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(arg))
        elif isinstance(arg, str):
            recent.append(arg)
    return names


def _python3_name(module: str, name: str) -> str:
    """Protocol-2 pickles (torch.save's) spell callables the Python 2 way (__builtin__.eval, commands.Popen)."""
    import _compat_pickle

    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _load_ours(path: Path, ckpt: dict, arch, mean, std, info: dict) -> tuple[nn.Module, dict]:
    model, spec, _ = load_trained(path, device="cpu")
    if arch and arch != spec.arch:
        raise ConfigError(f"{path} is a robustjpeg checkpoint of a {spec.arch}; drop --arch {arch}")
    _refuse_normalisation(mean, std, "robustjpeg checkpoints (normalisation is stored inside)")
    stem = path.resolve().parent.name if path.stem == "checkpoint" else path.stem  # train -o DIR writes DIR/checkpoint.pt
    info.update(name=file_label(stem, info["sha256"]), format="robustjpeg", arch=spec.arch, spec=spec.to_dict(),
                num_classes=spec.num_classes, mean=list(spec.mean), std=list(spec.std), input_size=spec.input_size,
                complete=ckpt.get("complete"), epoch=ckpt.get("epoch"), preprocess=spec.preprocess)
    return model, info


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensors: a bare state dict, or one under state_dict / model / net / model_state_dict."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_state_dict(inner):
                return inner
        found = f"a dict with keys {sorted(map(str, obj))[:12]}"
    else:
        found = f"a {type(obj).__name__}"
    raise CheckpointError(f"{path} is not a model checkpoint: it holds {found}; expected a state dict of tensors, "
                          f"bare or under one of {', '.join(WRAPPER_KEYS)}")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


# --- architectures and key matching -------------------------------------------------------------------

def _fit_architecture(arch: str | None, num_classes: int | None, state: dict, path: Path):
    """Build the architecture with the class count and input channels the file's tensors imply."""
    if not arch:
        raise ConfigError(f"{path} holds only weights; name the architecture with --arch "
                          "(ours, torchvision:NAME or timm:NAME) or use a model-spec TOML")
    built = (num_classes or 10, 3)
    probe = build_architecture(arch, *built)
    state = strip_prefixes(state, probe.state_dict())
    fitted = (num_classes or _dim_of(state, _last_module_key(probe, nn.Linear), 0) or built[0],
              _dim_of(state, _first_module_key(probe, nn.Conv2d), 1) or 3)
    return (probe if fitted == built else build_architecture(arch, *fitted)), *fitted


def build_architecture(arch: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """An untrained backbone by name: our registry first, then torchvision, then timm."""
    library, _, model_name = arch.rpartition(":")
    if not library and model_name in MODELS:
        return create_model(model_name, num_classes=num_classes, in_channels=in_channels)
    if library in ("", "torchvision"):
        import torchvision

        if model_name in torchvision.models.list_models(module=torchvision.models):
            return torchvision.models.get_model(model_name, weights=None, num_classes=num_classes)
    if library in ("", "timm") and importlib.util.find_spec("timm") is not None:
        import timm

        if timm.is_model(model_name):
            return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    raise UnknownName(f"unknown architecture {arch!r}; ours: {', '.join(MODELS.names())}; or torchvision:NAME / timm:NAME")


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
        raise CheckpointError(f"{what}: the architecture refused the weights ({_first_line(exc)})") from exc


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

def import_robustbench():
    """Import the real robustbench 1.1.1, working around its packaging traps; a broken install is named.

    - torchattacks 3.5.1's wheel ships an old ``robustbench`` folder that overwrites (or is overwritten by) the
      real one depending on install order: the files on disk are checked against robustbench's install record.
    - robustbench imports ``autoattack``, but its dependency pyautoattack installs ``pyautoattack``: the module
      is aliased under the name robustbench imports, unless a real ``autoattack`` is installed.
    - it imports ``pkg_resources``, which setuptools dropped in version 81: ask for ``setuptools<81``.
    """
    if "robustbench.utils" in sys.modules:
        return sys.modules["robustbench"]
    _check_robustbench_files()
    _alias_autoattack()
    if importlib.util.find_spec("pkg_resources") is None:
        raise ConfigError('robustbench 1.1.1 needs pkg_resources, which setuptools removed in 81: pip install "setuptools<81"')
    try:
        with warnings.catch_warnings():  # its imports warn about pkg_resources and old timm paths
            warnings.simplefilter("ignore")
            return importlib.import_module("robustbench")
    except ImportError as exc:
        raise ConfigError(f"robustbench cannot be imported ({exc}); install this package's robustbench extra: "
                          'pip install "robustjpeg[robustbench]"') from exc


def _check_robustbench_files() -> None:
    from importlib import metadata

    fix = "pip install --no-deps --force-reinstall robustbench==1.1.1"
    try:
        dist = metadata.distribution("robustbench")
    except metadata.PackageNotFoundError as exc:
        raise ConfigError(f"robustbench is not installed (a robustbench folder may come from torchattacks' wheel); {fix}") from exc
    records = {str(f): f for f in dist.files or [] if f.hash is not None}
    for name in ("robustbench/__init__.py", "robustbench/utils.py"):
        record = records.get(name)
        if record is None or _urlsafe_sha256(Path(dist.locate_file(record))) != record.hash.value:
            raise ConfigError(f"robustbench {dist.version} files are overwritten (torchattacks 3.5.1's wheel ships an "
                              f"old robustbench copy); reinstall after torchattacks: {fix}")


def _alias_autoattack() -> None:
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    if importlib.util.find_spec("pyautoattack") is None:
        raise ConfigError('robustbench needs AutoAttack: pip install "pyautoattack>=0.2.0"')
    importlib.import_module("pyautoattack")
    for module_name, module in list(sys.modules.items()):
        if module_name == "pyautoattack" or module_name.startswith("pyautoattack."):
            sys.modules.setdefault("autoattack" + module_name[len("pyautoattack"):], module)


def _load_zoo(source: str, threat_model: str, model_dir, download: bool) -> tuple[nn.Module, dict]:
    dataset, _, zoo_name = source[len("robustbench:"):].rpartition("/")
    dataset = dataset or "cifar10"
    rb = import_robustbench()
    entry = _zoo_entry(source, dataset, threat_model, zoo_name)
    threat_folder = threat_model.replace("_3d", "")
    if not download and _fetched_through_timm(zoo_name, dataset, threat_folder):
        raise CheckpointError(f"{source}: RobustBench builds this model through timm with weights fetched from the "
                              "network, ignoring --model-dir; pass --download to allow that")
    root = Path(model_dir or "models")
    files = _zoo_files(root / dataset / threat_folder / f"{zoo_name}.pt", entry["gdrive_id"], source, download)
    model = _zoo_load(rb, zoo_name, root, dataset, threat_model, source)
    single = files[0] if len(files) == 1 and files[0].is_file() else None
    label = zoo_name if (dataset, threat_model) == ("cifar10", "Linf") else f"{zoo_name}-{dataset}-{threat_model}"
    info = {"name": label, "source": source, "sha256": _sha256(single) if single else None,
            "format": "robustbench", "arch": f"robustbench:{dataset}/{threat_model}/{zoo_name}", "spec": None,
            "mean": None, "std": None}
    return model, info


def _zoo_entry(source: str, dataset: str, threat_model: str, zoo_name: str) -> dict:
    """RobustBench's model-zoo record for a name, or an error listing what the zoo holds."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    if dataset not in ZOO_DATASETS:
        raise ConfigError(f"{source}: RobustBench dataset {dataset!r} is not one of {', '.join(ZOO_DATASETS)}")
    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"--threat-model {threat_model!r} is not one RobustBench knows for {dataset}: "
                          f"{', '.join(t.value for t in ThreatModel)}") from exc
    if zoo_name not in zoo:
        raise UnknownName(f"RobustBench has no {dataset}/{threat_model} model {zoo_name!r}; known: {', '.join(zoo)}")
    return zoo[zoo_name]


def _fetched_through_timm(zoo_name: str, dataset: str, threat_model: str) -> bool:
    """RobustBench's own rule: a zoo name that timm knows loads timm's pretrained weights, never the local file."""
    import timm

    return timm.is_model(f"{zoo_name.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}")


def _zoo_files(path: Path, gdrive_id, source: str, download: bool) -> list[Path]:
    """The checkpoint file(s) RobustBench will read (ensembles have several); absent ones only with download."""
    files = [Path(f"{path}_m{i}.pt") for i in range(len(gdrive_id))] if isinstance(gdrive_id, list) else [path]
    absent = [str(f) for f in files if not f.is_file()]
    if absent and not download:
        raise CheckpointError(f"{source}: {', '.join(absent)} not found; put the checkpoint there (--model-dir DIR "
                              "holds <dataset>/<threat>/<NAME>.pt) or pass --download to fetch it")
    for f in files:
        if f.is_file():
            sniff_file(f)
    return files


def _zoo_load(rb, zoo_name: str, model_dir: Path, dataset: str, threat_model: str, source: str) -> nn.Module:
    try:
        return rb.load_model(zoo_name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{source}: the checkpoint names Python code and RobustBench loads weights only; "
                              "re-save its state_dict() to that file") from exc
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: RobustBench could not load the checkpoint ({_first_line(exc)})") from exc


# --- small helpers -------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    from robustjpeg.io import file_sha256

    return file_sha256(path)


def _urlsafe_sha256(path: Path) -> str:
    import base64
    import hashlib

    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
