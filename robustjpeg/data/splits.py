"""Splits as the stages read them: decoded uint8 tensors, or images decoded on demand; n images decoded at once.

Every split offers len, y (labels), where(i) (the file, for messages), peek(idx) ((grey?, (H, W)) per image,
from the headers where the format allows) and images(idx, ...) (decoded PIL images, optionally prepared in the
worker that decoded them). decode_images reads headers first, then decodes and, when asked for or when sizes
differ, resizes and centre-crops each image (robustjpeg.data.preprocess), so only the n results are held.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robustjpeg.data.imagefiles import ImageFiles, default_workers, open_image, parallel_map
from robustjpeg.data.preprocess import Preprocess, fit_image
from robustjpeg.errors import BadInput

DECODE_CHUNK = 2048


def _mode_of(channels: int | None) -> str | None:
    return {None: None, 1: "L", 3: "RGB"}[channels]


def _prepared(img, prepare: Callable | None, where: str):
    """prepare(img), with a BadInput it raises prefixed by the file it concerns."""
    if prepare is None:
        return img
    try:
        return prepare(img)
    except BadInput as exc:
        raise BadInput(f"{where} {exc}") from exc


@dataclass
class TensorSplit:
    """A whole split decoded once: x uint8 [N, C, H, W], y int64 [N]."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: Tensor) -> TensorSplit:
        return TensorSplit(self.x[idx], self.y[idx])

    def where(self, i: int) -> str:
        return f"image {i} of the split"

    def peek(self, idx: list[int], workers: int) -> list[tuple[bool, tuple[int, int]]]:
        return [(self.x.shape[1] == 1, tuple(self.x.shape[-2:]))] * len(idx)

    def images(self, idx: list[int], workers: int, channels: int | None = None, prepare: Callable | None = None) -> list:
        from PIL import Image

        def one(i: int):
            pixels = self.x[i].permute(1, 2, 0).numpy()
            img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
            return _prepared(img.convert(_mode_of(channels)) if channels else img, prepare, self.where(i))

        return parallel_map(one, idx, workers)


class _LazySplit(torch.utils.data.Dataset):
    """A split whose images are decoded when asked for; items are (transform(image), label)."""

    transform: Callable | None
    channels: int | None
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def image(self, i: int, channels: int | None = None):
        raise NotImplementedError

    def where(self, i: int) -> str:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return _prepared(self.image(i), self.transform, self.where(i)), int(self.y[i])

    def peek(self, idx: list[int], workers: int) -> list[tuple[bool, tuple[int, int]]]:
        return [(im.mode == "L", (im.height, im.width)) for im in self.images(idx, workers)]

    def images(self, idx: list[int], workers: int, channels: int | None = None, prepare: Callable | None = None) -> list:
        return parallel_map(lambda i: _prepared(self.image(i, channels), prepare, self.where(i)), idx, workers)


class ImageSplit(_LazySplit):
    """A split read lazily from image files (a folder, a tar, or listed paths); items are (transform(img), label)."""

    def __init__(self, files: ImageFiles | list[Path], labels: list[int], transform: Callable | None = None,
                 channels: int | None = None) -> None:
        self.files = files if isinstance(files, ImageFiles) else ImageFiles.of_paths(list(files))
        self.transform, self.channels = transform, channels
        self.y = torch.as_tensor(list(labels), dtype=torch.int64)

    def image(self, i: int, channels: int | None = None):
        return open_image(self.files.read(i), self.files.where(i), channels or self.channels)

    def where(self, i: int) -> str:
        return self.files.where(i)

    def peek(self, idx: list[int], workers: int) -> list[tuple[bool, tuple[int, int]]]:
        return self.files.peek_many(idx, workers)

    def images(self, idx: list[int], workers: int, channels: int | None = None, prepare: Callable | None = None) -> list:
        blobs = self.files.read_many(idx, workers)

        def one(k: int):
            img = open_image(blobs[k], self.where(idx[k]), channels or self.channels)
            blobs[k] = b""
            return _prepared(img, prepare, self.where(idx[k]))

        return parallel_map(one, range(len(idx)), workers)

    def subset(self, idx: Tensor) -> ImageSplit:
        keep = torch.as_tensor(idx).tolist()
        return ImageSplit(self.files.subset(keep), self.y[keep].tolist(), self.transform, self.channels)

    def with_transform(self, transform: Callable, channels: int | None) -> ImageSplit:
        """The same files read with another transform and channel count (training crops, test geometry)."""
        return ImageSplit(self.files, self.y.tolist(), transform, channels)


class TorchvisionSplit(_LazySplit):
    """A torchvision data set (PIL images) with our transform and a label tensor `y` (for stratified subsets)."""

    def __init__(self, base, labels: list[int], transform: Callable | None = None, channels: int | None = None) -> None:
        self.base, self.transform, self.channels = base, transform, channels
        self.y = torch.tensor(labels, dtype=torch.int64)

    def image(self, i: int, channels: int | None = None):
        return self.base[i][0].convert(_mode_of(channels or self.channels or 3))

    def where(self, i: int) -> str:
        files = getattr(self.base, "_image_files", None)
        return str(files[i]) if files is not None else f"image {i} of {type(self.base).__name__}"

    def with_transform(self, transform: Callable, channels: int | None) -> TorchvisionSplit:
        return TorchvisionSplit(self.base, self.y.tolist(), transform, channels)


# --- decoding ------------------------------------------------------------------------------------

def channels_of(looks: list, split, idx: list[int]) -> int:
    """1 when every image is grey, 3 when every one is colour; a mix is refused, naming one of each."""
    grey = [g for g, _ in looks]
    if all(grey) or not any(grey):
        return 1 if grey[0] else 3
    g, c = grey.index(True), grey.index(False)
    raise BadInput(f"{split.where(idx[g])} is grey but {split.where(idx[c])} is colour; read every image one way "
                   "with --channels 3 (or --channels 1), or convert the files to one mode")


def first_of_each_size(looks: list) -> dict[tuple[int, int], int]:
    """Each (H, W) among the looks, with the position of the first image that has it."""
    sizes: dict[tuple[int, int], int] = {}
    for k, (_, size) in enumerate(looks):
        sizes.setdefault(tuple(size), k)
    return sizes


def sizes_differ(sizes: dict, split, idx: list[int], example: str = "") -> BadInput:
    shown = ", ".join(f"{split.where(idx[k])} {h}x{w}" for (h, w), k in list(sizes.items())[:2])
    return BadInput(f"images differ in size ({shown}, ...); pass --input-size H[,W]{example} (and --resize / "
                    "--crop-pct) to resize and centre-crop them")


def _resize_for(looks: list, split, idx: list[int], request: Preprocess, defaults: tuple) -> Preprocess | None:
    """The complete resize these images need: the request's if it asks for one, else one only if sizes differ."""
    sizes = first_of_each_size(looks)
    if not request.explicit and len(sizes) == 1:
        return None
    own = Preprocess(input_size=next(iter(sizes))) if len(sizes) == 1 else None
    pre = request.over(*defaults, own)
    if pre.input_size is None:
        raise sizes_differ(sizes, split, idx)
    return pre.complete()


def to_tensor(images: list) -> Tensor:
    """PIL images of one size and mode -> uint8 [N, C, H, W], filled in place (no second copy of the batch)."""
    first = np.asarray(images[0])
    h, w = first.shape[:2]
    c = 1 if first.ndim == 2 else first.shape[2]
    out = torch.empty((len(images), c, h, w), dtype=torch.uint8)
    for k, im in enumerate(images):
        out[k] = torch.from_numpy(np.array(im).reshape(h, w, c)).permute(2, 0, 1)
    return out


def fitter(pre: Preprocess | None) -> Callable | None:
    """The resize and centre crop of pre as a one-image function (None: images stay as they are)."""
    return None if pre is None else functools.partial(fit_image, pre=pre)


def decode_images(split, idx: list[int], request: Preprocess = Preprocess(), defaults: tuple = (),
                  channels: int | None = None, workers: int | None = None) -> tuple[Tensor, Preprocess | None]:
    """The chosen images as uint8 NCHW and the resize applied to them (None: used as they are).

    Headers come first (channels, sizes), then each image is decoded and, when asked for or when sizes differ,
    resized and centre-cropped in the same worker, so only the n results are held.
    """
    workers = workers or default_workers()
    looks = split.peek(idx, workers)
    depth = channels or channels_of(looks, split, idx)
    pre = _resize_for(looks, split, idx, request, defaults)
    return to_tensor(split.images(idx, workers, depth, prepare=fitter(pre))), pre


def decode_split(split, pre: Preprocess | None, channels: int | None, workers: int | None = None) -> Tensor:
    """Every image of a split as uint8 NCHW, in chunks: resized by pre (complete), or all of one size and mode."""
    parts = []
    for start in range(0, len(split), DECODE_CHUNK):
        idx = list(range(start, min(start + DECODE_CHUNK, len(split))))
        parts.append(decode_images(split, idx, pre or Preprocess(), channels=channels, workers=workers)[0])
        if parts[-1].shape[1:] != parts[0].shape[1:]:
            shapes = ["x".join(map(str, p.shape[1:])) for p in (parts[0], parts[-1])]
            raise BadInput(f"{split.where(0)} is {shapes[0]} (CxHxW) but {split.where(start)} is {shapes[1]}; pass "
                           "--input-size H[,W] to resize every image, or --channels to read them all one way")
    return torch.cat(parts) if len(parts) > 1 else parts[0]
