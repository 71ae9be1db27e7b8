"""Checkpoint files read safely: what a file is, weights without running pickled code, state dicts unwrapped.

Files load with ``torch.load(weights_only=True)``; a file that pickles code is refused, naming the callables it
would import, unless the caller trusts it (``--trust-checkpoint``): unpickling can run any code its author chose.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustjpeg.errors import CheckpointError, first_line

WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")


CODE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch names the callable it refused, in every message form


SAFE_MODULES = ("torch", "collections", "_codecs", "numpy")  # what plain weights pickle; torch's loader allows these


RISKY_MODULES = ("os", "posix", "nt", "subprocess", "sys", "io", "shutil", "socket", "importlib", "runpy", "pty",
                 "builtins")


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


def read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({first_line(exc)}); it may be truncated, "
                              "download it again") from exc


def torch_load(path: Path, trust: bool) -> Any:
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
        raise CheckpointError(f"{path} pickles objects whose Python code is not importable here ({first_line(exc)}); "
                              "re-save its state_dict() where that code lives and load it with --arch") from exc
    except (EOFError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint or is truncated ({first_line(exc)}); "
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


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
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
