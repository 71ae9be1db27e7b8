"""Datasets as the stages read them: loaded by name, the evaluation subset, the training view, augmentation.

Small sets are uint8 tensors; the rest are image files read lazily (the sources are in robustjpeg.data.sources).

Nothing is read before it is used: ``eval`` lists the evaluation split, draws its class-stratified subset from
the labels (the class folders) and decodes those n images only; the training split is never touched. Images of
one size are used as they are (a model that declares another input size resizes them inside itself, so attack
budgets stay in the data's pixels); images of several sizes, and any explicit resize, crop fraction or
interpolation, go through the resize + centre crop of ``robustjpeg.data.preprocess`` (timm's eval). A split is grey
(one channel) when every image read is grey; grey mixed with colour is refused unless ``channels`` says which.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from robustjpeg.data.dataset import Dataset, channel_stats, stratified_indices
from robustjpeg.data.imagefiles import default_workers
from robustjpeg.data.preprocess import Preprocess, eval_transform, train_transform
from robustjpeg.data.sources import DATASETS, decode_cached_split, load_imagefolder
from robustjpeg.data.splits import (
    TensorSplit,
    channels_of,
    decode_images,
    first_of_each_size,
    fitter,
    sizes_differ,
    to_tensor,
)
from robustjpeg.errors import ConfigError

FAMILIES = ("mnist", "cifar", "fine")
FAST_PATH_BYTES = 2 * 2**30   # decoded training sets up to this size are held as uint8 tensors (on the device)
SAMPLE_IMAGES = 1000          # training images read to learn channels, sizes and statistics of a lazy set


# --- the dataset ---------------------------------------------------------------------------------


def load_dataset(name: str, root: Path | str | None = None, download: bool = False,
                 channels: int | None = None) -> Dataset:
    """Look a dataset up by name; 'imagefolder:PATH' reads a split folder, a tar of one, or train/val/test splits."""
    if channels not in (None, 1, 3):
        raise ConfigError(f"--channels {channels} must be 1 (grey) or 3 (colour)")
    if name.startswith("imagefolder:"):
        ds = load_imagefolder(Path(name.split(":", 1)[1]), name)
    else:
        ds = DATASETS.create(name, root=Path(root) if root else None, download=download)
    return ds.replaced(channels=channels) if channels else ds


@dataclass
class EvalData:
    """An evaluation subset: x float32 NCHW in [0, 1], y int64, indices into the test split, facts for run.json."""

    x: Tensor
    y: Tensor
    indices: Tensor
    facts: dict


def eval_subset(ds: Dataset, n: int | None, seed: int, request: Preprocess = Preprocess(),
                defaults: Preprocess | None = None, workers: int | None = None) -> EvalData:
    """The fixed class-stratified subset of the test split, decoded alone (n images, never the whole split).

    request: the model's declared preprocessing (flags, spec, checkpoint); defaults: the model's own defaults
    (a timm pretrained_cfg), used before the data set's.
    """
    split = ds.test
    idx = torch.arange(len(split)) if n is None else stratified_indices(split.y, n, seed)
    fast = isinstance(split, TensorSplit) and not request.explicit and ds.channels in (None, split.x.shape[1])
    if fast:
        x8, pre = split.x[idx], None
    else:
        x8, pre = decode_images(split, idx.tolist(), request, (defaults, ds.preprocess), ds.channels, workers)
    x = x8.float().div_(255.0)
    facts = {"split_size": len(split), "decoded": 0 if fast else len(idx), "shape": list(x.shape[1:]),
             "resized_in_data": pre.to_dict() if pre else None,
             "workers": None if fast else workers or default_workers(),
             "tensor_mb": round(x.element_size() * x.nelement() / 2**20, 1), "peak_rss_mb": peak_rss_mb()}
    return EvalData(x, split.y[idx].clone(), idx, facts)


def eval_tensors(ds: Dataset, n: int | None, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The evaluation subset of the test split: x float32 NCHW in [0, 1], y int64, indices int64 (paired across models)."""
    data = eval_subset(ds, n, seed)
    return data.x, data.y, data.indices


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


# --- what training reads -------------------------------------------------------------------------

def family_of(channels: int, size: tuple[int, int]) -> str:
    """The recipe family the data imply: grey images up to 32 px -> mnist, up to 64 px -> cifar, larger -> fine."""
    if channels == 1 and max(size) <= 32:
        return "mnist"
    return "cifar" if max(size) <= 64 else "fine"


def training_dataset(ds: Dataset, request: Preprocess = Preprocess(), recipe: str | None = None,
                     workers: int | None = None) -> Dataset:
    """The dataset as training reads it, with family, channels, input size, statistics and splits settled.

    Small images (families mnist and cifar, decoded size up to FAST_PATH_BYTES) become uint8 tensors, resized once
    when needed and augmented on the device; the rest stay files, read by the data loader with random resized crops
    (fine) or a resize and padded crops (cifar) for training, and resize + centre crop for testing.
    """
    if recipe is not None and recipe not in FAMILIES:
        raise ConfigError(f"--recipe {recipe!r} is not one of {', '.join(FAMILIES)}")
    train, workers = ds.train, workers or default_workers()
    if (isinstance(train, TensorSplit) and not request.explicit and ds.channels in (None, train.x.shape[1])
            and request.input_size in (None, tuple(train.x.shape[-2:]))):
        return ds.replaced(family=recipe or ds.family, in_channels=int(train.x.shape[1]))
    sample = stratified_indices(train.y, min(SAMPLE_IMAGES, len(train)), 0).tolist()
    looks = train.peek(sample, workers)
    channels = ds.channels or channels_of(looks, train, sample)
    sizes = first_of_each_size(looks)
    size = request.input_size or ds.preprocess.input_size or (next(iter(sizes)) if len(sizes) == 1 else None)
    if size is None:
        raise sizes_differ(sizes, train, sample, " (e.g. 224: the crops training and testing use)")
    family = recipe or ds.family or family_of(channels, size)
    resized = request.explicit or set(sizes) != {tuple(size)}
    pre = request.over(ds.preprocess, Preprocess(input_size=size)).complete()
    applied = pre if resized else None
    decoded_bytes = len(train) * channels * size[0] * size[1]
    if isinstance(train, TensorSplit) or (family != "fine" and decoded_bytes <= FAST_PATH_BYTES):
        pixels = decode_cached_split(train, applied, ds.channels, workers)
        channels = int(pixels.shape[1])  # every image, not just the sample
        splits = {"train": TensorSplit(pixels, train.y),
                  "test": TensorSplit(decode_cached_split(ds.test, applied, channels, workers), ds.test.y)}
    else:
        splits = {"train": train.with_transform(train_transform(pre, family), channels),
                  "test": ds.test.with_transform(eval_transform(pre), channels)}
        pixels = to_tensor(train.images(sample, workers, channels, prepare=fitter(pre)))
    mean, std = (ds.mean, ds.std) if ds.mean is not None else channel_stats(pixels)
    side = int(size[0]) if size[0] == size[1] else list(size)
    return ds.replaced(**splits, family=family, channels=channels, in_channels=channels, input_size=side,
                       applied=applied, mean=mean, std=std)


# --- augmentation on the device ------------------------------------------------------------------

def augment(x: Tensor, family: str, gen: torch.Generator) -> Tensor:
    """Per-family training augmentation on a batch on any device (CIFAR: crop with padding 4 + flip; MNIST: none).

    Random draws come from the CPU generator `gen`, so data order and augmentation resume exactly.
    """
    if family != "cifar":
        return x
    n, _, h, w = x.shape
    dy, dx, flip = (torch.randint(0, 9, (n,), generator=gen) for _ in range(3))
    rows = torch.arange(h)[None, :] + dy[:, None]
    cols = torch.arange(w)[None, :] + dx[:, None]
    cols = torch.where((flip % 2).bool()[:, None], cols.flip(1), cols)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    batch = torch.arange(n)[:, None, None]
    out = padded[batch.to(x.device), :, rows[:, :, None].to(x.device), cols[:, None, :].to(x.device)]
    return out.permute(0, 3, 1, 2).contiguous()


# --- mnist5k -------------------------------------------------------------------------------------


# --- CIFAR via torchvision -----------------------------------------------------------------------


# --- fine-grained sets ---------------------------------------------------------------------------


# --- imagefolder:PATH ----------------------------------------------------------------------------
