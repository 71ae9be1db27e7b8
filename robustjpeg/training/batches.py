"""Training batches: uint8 tensors shuffled and augmented on the device, or image files through a DataLoader; one
shard per process under torchrun, and an order that a resumed run repeats exactly."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from robustjpeg.data.datasets import Dataset, augment
from robustjpeg.data.splits import TensorSplit
from robustjpeg.errors import RobustJpegError
from robustjpeg.training.config import TrainConfig
from robustjpeg.training.setup import training_indices
from robustjpeg.utils import distributed


class Batches:
    """Training batches in a seeded order; tensor data sets live on the device and are augmented there."""

    def __init__(self, ds: Dataset, cfg: TrainConfig, device: torch.device,
                 launch: distributed.Launch = distributed.Launch()) -> None:
        self.family, self.batch_size, self.device, self.workers = ds.family, cfg.batch_size, device, cfg.workers
        self.launch = launch
        idx = training_indices(ds, cfg)
        self.split, self.idx = ds.train, idx
        if isinstance(ds.train, TensorSplit):
            self.x = ds.train.x[idx].to(device)
            self.y = ds.train.y[idx].to(device)

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.idx) / self.launch.world) / self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.idx)

    def epoch(self, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass in an order drawn from gen (a CPU generator whose state the checkpoint keeps).

        With several processes every rank draws the same order and takes its DistributedSampler share of it;
        augmentation then draws from a per-rank generator seeded from gen, so gen stays the same on every rank.
        """
        order = torch.randperm(len(self.idx), generator=gen)
        if self.launch.active:
            order = distributed.padded_shard(order, self.launch.rank, self.launch.world)
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            gen = torch.Generator().manual_seed(seed + self.launch.rank)
        if not isinstance(self.split, TensorSplit):
            yield from self._loader(order, gen)
            return
        for start in range(0, len(order), self.batch_size):
            sel = order[start:start + self.batch_size].to(self.device)
            x = augment(self.x[sel], self.family, gen)
            yield x.float().div_(255.0), self.y[sel]

    def _loader(self, order: Tensor, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        subset = torch.utils.data.Subset(self.split, self.idx[order].tolist())
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        loader = torch.utils.data.DataLoader(
            subset, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", worker_init_fn=functools.partial(_seed_worker, seed))
        for x, y in loaded(loader):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def loaded(loader) -> Iterator:
    """Iterate a data loader; a user error raised in a worker (a corrupt file) comes back as its one line."""
    try:
        yield from loader
    except RobustJpegError as exc:
        lines = str(exc).strip().splitlines()
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        if len(lines) > 1 and lines[-1].startswith(prefix):
            raise type(exc)(lines[-1][len(prefix):]) from None
        raise


def _seed_worker(seed: int, worker: int) -> None:
    """Seed a data-loader worker from the run's data generator, so file-based augmentation repeats."""
    torch.manual_seed(seed + worker)
