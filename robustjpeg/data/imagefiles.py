"""The image files of one split: a folder of class folders, or a .tar / .tar.gz of one, listed without decoding.

Layout rules (each breach is a one-line BadInput naming the file and the fix):

- a split holds one folder per class (``<class>/<image>``; deeper folders inside a class are allowed). In a tar,
  a folder that every member shares (``test/<class>/<image>``) is the split's own folder and is skipped;
- hidden files and folders (``.DS_Store``, ``__MACOSX``) are ignored, and so are non-image files beside the class
  folders (a README); an image beside the class folders, a non-image file inside one, and a class folder without
  images are refused;
- a file that cannot be decoded (corrupt, truncated, not an image in spite of its name) stops the command with
  its name: skipping it would silently change the evaluation subset, which must be the same for every model.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from robustjpeg.errors import BadInput, DatasetNotFound

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff", ".gif")
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
T = TypeVar("T")


def parallel_map(fn: Callable[..., T], items: Iterable, workers: int) -> list[T]:
    """fn over items in a thread pool (Pillow decodes and resizes outside the GIL), in order; the first error wins."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def default_workers() -> int:
    """Threads for decoding: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


class ImageFiles:
    """Sorted image names of one split with their class folders; bytes read on demand.

    Folders and plain tars are read at random (a tar member by its offset); a compressed tar is read through
    once per batch of requests, or held (still JPEG/PNG-compressed) in memory for random access.
    """

    def __init__(self, root: Path | None, names: list[str], classes_of: list[str], spans: list | None = None,
                 compressed: bool = False, prefix: str = "") -> None:
        self.root, self.names, self.classes_of = root, names, classes_of
        self.spans, self.compressed, self.prefix = spans, compressed, prefix
        self._in_folder = root is not None and root.is_dir()
        self._blobs: dict[str, bytes] | None = None
        self._last: tuple[frozenset, dict[str, bytes]] = (frozenset(), {})

    @classmethod
    def scan(cls, source: Path) -> ImageFiles:
        """List a split folder or tar, checking the layout."""
        if not source.exists():
            raise DatasetNotFound(f"imagefolder: {source} does not exist")
        return _scan_tar(source) if source.is_file() else _scan_folder(source)

    @classmethod
    def of_paths(cls, paths: list[Path]) -> ImageFiles:
        """Files named one by one (a data set with its own index files)."""
        return cls(None, [str(p) for p in paths], [Path(p).parent.name for p in paths])

    def __len__(self) -> int:
        return len(self.names)

    def where(self, i: int) -> str:
        """The file as a user finds it: path of a file, or tar:member."""
        if self.root is None:
            return self.names[i]
        return _name_in(self.root, self.names[i], self.prefix, self._in_folder)

    def classes(self) -> list[str]:
        """Sorted class folder names."""
        return sorted(set(self.classes_of))

    def subset(self, idx: list[int]) -> ImageFiles:
        spans = None if self.spans is None else [self.spans[i] for i in idx]
        out = ImageFiles(self.root, [self.names[i] for i in idx], [self.classes_of[i] for i in idx], spans,
                         self.compressed, self.prefix)
        out._blobs = self._blobs
        return out

    def _path(self, i: int) -> Path:
        return Path(self.names[i]) if self.root is None else self.root / self.names[i]

    def read(self, i: int) -> bytes:
        if self.root is None or self._in_folder:
            return self._path(i).read_bytes()
        if self.compressed:
            if self._blobs is None:
                self._blobs = self._stream(set(self.names))
            return self._blobs[self.names[i]]
        offset, size = self.spans[i]
        with open(self.root, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    def read_many(self, idx: list[int], workers: int) -> list[bytes]:
        """Bytes of several files: one pass through a compressed tar, a thread pool otherwise."""
        if self.compressed and self._blobs is None:
            wanted = frozenset(self.names[i] for i in idx)
            if wanted != self._last[0]:  # headers, then pixels: the same request twice reads the archive once
                self._last = (wanted, self._stream(set(wanted)))
            return [self._last[1][self.names[i]] for i in idx]
        return parallel_map(self.read, idx, workers)

    def peek_many(self, idx: list[int], workers: int) -> list[tuple[bool, tuple[int, int]]]:
        """(grey?, (H, W)) of several files from their headers, without decoding the pixels."""
        if self.root is None or self._in_folder:
            return parallel_map(lambda i: _peek(self._path(i), self.where(i)), idx, workers)
        blobs = self.read_many(idx, workers)
        return parallel_map(lambda k: _peek(io.BytesIO(blobs[k]), self.where(idx[k])), range(len(idx)), workers)

    def _stream(self, wanted: set[str]) -> dict[str, bytes]:
        found = {}
        with _open_tar(self.root, "r|*") as tf:
            for member in tf:
                name = _member_name(member)
                if member.isfile() and name.startswith(self.prefix) and name[len(self.prefix):] in wanted:
                    name = name[len(self.prefix):]
                    found[name] = tf.extractfile(member).read()
        return found


def class_folders(source: Path) -> list[str]:
    """Class names of a split without listing its images: a folder's subfolders (torchvision's rule), a tar's scan."""
    if source.is_dir():
        return sorted(d.name for d in source.iterdir() if d.is_dir() and not _hidden(d.name))
    return ImageFiles.scan(source).classes()


def _open_tar(path: Path, mode: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode)
    except TAR_ERRORS as exc:
        raise BadInput(f"imagefolder: {path} is not a readable tar archive ({exc}); check the file or unpack it "
                       "into a folder") from exc


def _member_name(member: tarfile.TarInfo) -> str:
    """A member's path without ./ or a leading /."""
    name = posixpath.normpath(member.name).lstrip("/")
    return "" if name == "." else name


def _common_prefix(names: list[str]) -> str:
    """The split's own folder in a tar: a first folder every image shares, above the class folders."""
    firsts = {n.split("/", 1)[0] for n in names}
    if len(firsts) == 1 and all(n.count("/") >= 2 for n in names):
        return firsts.pop() + "/"
    return ""


def _scan_tar(source: Path) -> ImageFiles:
    with open(source, "rb") as fh:
        compressed = fh.read(6).startswith(COMPRESSED_MAGIC)
    files, folders = [], set()
    try:
        with _open_tar(source, "r:*") as tf:
            for member in tf:
                name = _member_name(member)
                if not name or any(_hidden(p) for p in name.split("/")):
                    continue
                if member.isdir():
                    folders.add(name)
                elif member.isfile():
                    files.append((name, member.offset_data, member.size))
    except TAR_ERRORS as exc:
        raise BadInput(f"imagefolder: {source} is truncated or not a tar archive ({exc}); check the file") from exc
    prefix = _common_prefix([n for n, _, _ in files if _is_image(n)])
    entries = [(n[len(prefix):], off, size) for n, off, size in sorted(files) if n.startswith(prefix)]
    dirs = {d[len(prefix):] for d in folders if d.startswith(prefix) and d != prefix.rstrip("/")}
    names, classes_of = _check_layout([n for n, _, _ in entries], {d for d in dirs if "/" not in d}, source, prefix)
    spans = {n: (off, size) for n, off, size in entries}
    return ImageFiles(source, names, classes_of, [spans[n] for n in names], compressed, prefix)


def _scan_folder(root: Path) -> ImageFiles:
    relative = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        here = Path(folder).relative_to(root)
        relative += [(here / f).as_posix() for f in files if not _hidden(f)]
    class_dirs = {d.name for d in root.iterdir() if d.is_dir() and not _hidden(d.name)}
    names, classes_of = _check_layout(sorted(relative), class_dirs, root)
    return ImageFiles(root, names, classes_of)


def _name_in(source: Path, name: str, prefix: str, in_folder: bool) -> str:
    """How a file of the split is named in messages: its path, or archive:member."""
    return f"{source}/{name}" if in_folder else f"{source}:{prefix}{name}"


def _check_layout(names: list[str], class_dirs: set[str], source: Path, prefix: str = "") -> tuple[list[str], list[str]]:
    """Images inside class folders, sorted; refuse loose images, non-image files in class folders, empty classes."""
    in_folder = source.is_dir()

    def where(name: str) -> str:
        return _name_in(source, name, prefix, in_folder)

    loose = [n for n in names if "/" not in n and _is_image(n)]
    if loose:
        raise BadInput(f"imagefolder: {where(loose[0])} is not inside a class folder; put each image in "
                       f"<split>/<class>/ (a folder per class), or point imagefolder: at the folder above the classes")
    inside = [n for n in names if "/" in n]
    strays = [n for n in inside if not _is_image(n)]
    if strays:
        raise BadInput(f"imagefolder: {where(strays[0])} is not an image ({', '.join(IMAGE_SUFFIXES)}); move it out of "
                       "the class folders")
    if not inside:
        raise DatasetNotFound(f"imagefolder: {source} holds no class folders with images; expected "
                              "<split>/<class>/<image>, or train/ and test/ (or val/) splits of that layout")
    classes_of = [n.split("/", 1)[0] for n in inside]
    empty = sorted(class_dirs - set(classes_of))
    if empty:
        raise BadInput(f"imagefolder: class folder {where(empty[0])} holds no images; add images or remove the folder")
    return inside, classes_of


def is_grey(mode: str) -> bool:
    """Grey-scale PIL modes: one band (palettes excepted), or grey with alpha."""
    from PIL import Image

    return (Image.getmodebands(mode) == 1 and mode != "P") or mode == "LA"


def _undecodable(where: str, exc: Exception) -> BadInput:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BadInput(f"imagefolder: {where} cannot be decoded ({text}); it is corrupt or not an image: replace or "
                    "remove it")


def _peek(file, where: str) -> tuple[bool, tuple[int, int]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            return is_grey(im.mode), (im.height, im.width)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _undecodable(where, exc) from exc


def open_image(blob: bytes, where: str, channels: int | None = None):
    """Decode one file into a PIL image: grey ('L') or colour ('RGB'), or the given channel count."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            mode = {1: "L", 3: "RGB"}[channels] if channels else "L" if is_grey(im.mode) else "RGB"
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _undecodable(where, exc) from exc
