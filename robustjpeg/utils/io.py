"""Atomic file writes, checked reads and run facts shared by every stage that writes results."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from robustjpeg.errors import RunFolderError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report must be as readable as any file written here
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes so that readers see the old file or the new one, never a partial one."""
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename, so a kill never leaves half a checkpoint."""
    import torch

    _atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_save_npz(path: Path, **arrays) -> None:
    import numpy as np

    _atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


REWRITE_HINT = "move it aside and rerun the command that wrote it (a sweep reuses its finished cells)"


def read_json(path: Path, what: str = "file", fix: str = REWRITE_HINT) -> Any:
    """Read a JSON file, turning a missing or broken file into an error that names it and says what to do."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{what} {path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{what} {path} is not valid JSON ({exc}); {fix}") from exc


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable config (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes a result."""
    from importlib import metadata

    names = ["robustjpeg", "torch", "torchvision", "torchattacks", "pyautoattack", "numpy"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    if out["robustjpeg"] == "not installed":
        from robustjpeg import __version__

        out["robustjpeg"] = f"{__version__} (source tree)"
    return out


def device_description(device) -> str:
    """Human-readable name of the device a run used: the GPU model, or the CPU with the torch threads it ran on and
    the vector kernels torch picked (AVX2 and AVX512 round differently, so the same training gives other weights)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return (f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{threads} thread{'s' if threads > 1 else ''}, {torch.backends.cpu.get_cpu_capability()} kernels)")


def resolve_device(choice: str = "auto"):
    """Map --device {auto,cpu,cuda} to a torch.device; 'cuda' without a GPU is an error."""
    import torch

    from robustjpeg.errors import ConfigError

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    if choice not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {choice!r}")
    return torch.device(choice)
