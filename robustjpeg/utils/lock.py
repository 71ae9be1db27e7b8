"""One writer per output folder: a lock file naming its holder (pid, host), taken over once the holder is gone.

The lock is an exclusive ``flock`` on ``DIR/.robustjpeg.lock``, so the kernel drops it the moment its holder dies
(even under ``kill -9``); the file's JSON content (pid, host, command, start time) is only there to say who holds it.
A file left by a dead holder is therefore stale by construction and the next command takes it over.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from robustjpeg.errors import FolderLocked

LOCK_NAME = ".robustjpeg.lock"


@contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[Path]:
    """Hold the lock of `folder` inside the block; a live holder elsewhere makes this raise FolderLocked at once."""
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, command)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _acquire(path: Path, command: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLocked(_refusal(path)) from None
        if _same_file(fd, path):  # not a file its last holder unlinked while this process was opening it
            break
        os.close(fd)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _refusal(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        who = f"robustjpeg {holder['command']} (pid {holder['pid']} on host {holder['host']}, since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        who = "another robustjpeg process"
    return (f"{who} is writing into {path.parent}; wait until it finishes (this command then resumes its work), "
            f"or give another -o folder")
