"""RobustBench zoo models, offline: ``robustbench:NAME`` built by RobustBench's own ``load_model`` from local files.

RobustBench 1.1.1 needs care (see ``import_robustbench``): install it with
``pip install --no-deps --force-reinstall robustbench==1.1.1`` after everything else, plus the ``robustbench``
extra of this package (its real run-time needs, with ``setuptools<81`` for ``pkg_resources``).
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
import warnings
from pathlib import Path

from torch import nn

from robustjpeg.errors import CheckpointError, ConfigError, UnknownName, first_line
from robustjpeg.models.files import sniff_file
from robustjpeg.models.info import ModelInfo
from robustjpeg.utils.io import file_sha256

ZOO_DATASETS = ("cifar10", "cifar100", "imagenet")


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
    alias_autoattack()
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


def alias_autoattack() -> None:
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    if importlib.util.find_spec("pyautoattack") is None:
        raise ConfigError('robustbench needs AutoAttack: pip install "pyautoattack>=0.2.0"')
    importlib.import_module("pyautoattack")
    for module_name, module in list(sys.modules.items()):
        if module_name == "pyautoattack" or module_name.startswith("pyautoattack."):
            sys.modules.setdefault("autoattack" + module_name[len("pyautoattack"):], module)


def load_zoo(source: str, threat_model: str, model_dir, download: bool) -> tuple[nn.Module, dict]:
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
    info = ModelInfo(label, file_sha256(single) if single else None, source, "robustbench",
                     f"robustbench:{dataset}/{threat_model}/{zoo_name}")
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
        raise CheckpointError(f"{source}: RobustBench could not load the checkpoint ({first_line(exc)})") from exc


def _urlsafe_sha256(path: Path) -> str:
    import base64
    import hashlib

    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
