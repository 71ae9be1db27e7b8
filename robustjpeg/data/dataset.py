"""The Dataset record (classes, statistics, splits read on first use) and the class-stratified draws every stage shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from robustjpeg.data.preprocess import Preprocess
from robustjpeg.data.splits import TensorSplit
from robustjpeg.errors import BadInput


class Lazy:
    """A value computed on first use (a split, the class list), so a command reads only what it uses."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


class _Deferred:
    """Attribute that resolves a Lazy value once and keeps the result."""

    def __set_name__(self, owner, name: str) -> None:
        self.key = f"_{name}"

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.key]
        if isinstance(value, Lazy):
            value = obj.__dict__[self.key] = value.fn()
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.key] = value


class Dataset:
    """A named dataset: class names, normalisation stats (applied inside the model), splits, preprocessing defaults.

    classes and the splits may be Lazy (computed on first use). mean/std/family None: learnt from the data by
    training_dataset. channels: read every image with this many channels (None: from the data). applied: the
    resize training_dataset gave the images (None: used as they are).
    """

    classes = _Deferred()
    train = _Deferred()
    test = _Deferred()
    val = _Deferred()
    KEYS = ("name", "classes", "mean", "std", "family", "train", "test", "val", "preprocess", "channels",
            "in_channels", "input_size", "applied")

    def __init__(self, name: str, classes, mean: tuple | None, std: tuple | None, family: str | None, train, test,
                 val=None, preprocess: Preprocess = Preprocess(), channels: int | None = None,
                 in_channels: int | None = None, input_size: int | list | None = None,
                 applied: Preprocess | None = None) -> None:
        self.name, self.mean, self.std, self.family = name, mean, std, family
        self.classes, self.train, self.test, self.val = classes, train, test, val
        self.preprocess, self.channels, self.applied = preprocess, channels, applied
        self._in_channels, self._input_size = in_channels, input_size

    @property
    def in_channels(self) -> int:
        return self._in_channels if self._in_channels is not None else len(self.mean)

    @property
    def input_size(self) -> int | list:
        """Side (or [H, W]) of the images the model sees."""
        if self._input_size is not None:
            return self._input_size
        test = self.test
        return int(test.x.shape[-1]) if isinstance(test, TensorSplit) else self.preprocess.complete().input_size[0]

    def replaced(self, **changes) -> Dataset:
        """A copy with some values changed; values not computed yet stay lazy."""
        raw = {k: self.__dict__[f"_{k}"] if f"_{k}" in self.__dict__ else self.__dict__[k] for k in self.KEYS}
        return Dataset(**{**raw, **changes})


def stratified_indices(labels: Tensor, n: int, seed: int) -> Tensor:
    """n indices drawn class by class in proportion to class sizes (largest remainder), sorted; fixed by seed."""
    labels = torch.as_tensor(labels)
    total = len(labels)
    if not 0 < n <= total:
        raise BadInput(f"asked for {n} examples but the split holds {total}; pass -n between 1 and {total}")
    classes, counts = torch.unique(labels, return_counts=True)
    share = counts.double() * n / total
    quota = share.floor().long()
    order = torch.argsort(share - quota, descending=True, stable=True)
    quota[order[: n - int(quota.sum())]] += 1
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for cls, k in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.sort(torch.cat(picks)).values


def channel_stats(x: Tensor) -> tuple[tuple, tuple]:
    """Exact per-channel mean and std in [0, 1] units of a uint8 NCHW tensor, from value histograms (little memory)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        m = float((counts * levels).sum() / counts.sum())
        var = float((counts * (levels - m) ** 2).sum() / counts.sum())
        mean.append(round(m, 4))
        std.append(round(var ** 0.5, 4))
    return tuple(mean), tuple(std)
