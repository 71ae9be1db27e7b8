"""torch.distributed under torchrun: read the launch environment, start the process group, shard work by rank."""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

from robustjpeg.errors import ConfigError

# Ranks legitimately wait for hours (the slowest sweep shard, rank 0's checks); torchrun ends every rank when one
# dies, so a long collective timeout hides no crash.
WAIT = timedelta(hours=24)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a torchrun launch; world 1 means a plain single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"{name}={env[name]!r} is not an integer; launch with torchrun, which sets it") from None


def read_launch(env: Mapping[str, str] | None = None) -> Launch:
    """The launch described by RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; ConfigError when they contradict each other."""
    env = os.environ if env is None else env
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return Launch()
    missing = [name for name in ("RANK", "WORLD_SIZE") if name not in env]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} unset while {'WORLD_SIZE' if missing == ['RANK'] else 'RANK'} "
                          "is set; launch with torchrun (which sets both) or unset both for one process")
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} with WORLD_SIZE={world}: every rank must lie in 0..WORLD_SIZE-1")
    if local < 0 or local > rank:
        raise ConfigError(f"LOCAL_RANK={local} with RANK={rank}: a local rank lies in 0..RANK")
    absent = [name for name in ("MASTER_ADDR", "MASTER_PORT") if world > 1 and name not in env]
    if absent:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(absent)} unset; launch with torchrun, or set them "
                          "to the address and port of rank 0")
    return Launch(rank, world, local)


def backend() -> str:
    """gloo for CPU tensors, plus nccl for CUDA tensors where a GPU is present (one group serves both)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def launch() -> Launch:
    """This process's launch, starting the process group on first use when there are several processes."""
    info = read_launch()
    if info.active and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend(), rank=info.rank, world_size=info.world, timeout=WAIT)
        atexit.register(_close)
    return info


def _close() -> None:
    """Take the process group down before the interpreter does: gloo aborts the process if its threads outlive it."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the one process that writes shared files and prints."""
    return read_launch().rank == 0


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if dist.is_initialized():
        dist.barrier()


def local_device(device: torch.device, info: Launch) -> torch.device:
    """The GPU of this rank (cuda:LOCAL_RANK) when running on CUDA with several processes; otherwise device as given."""
    if device.type != "cuda" or not info.active:
        return device
    return torch.device("cuda", info.local_rank % torch.cuda.device_count())


def shard_indices(n: int, rank: int, world: int) -> Tensor:
    """Rank's share of 0..n-1, strided (rank, rank + world, ...) so every shard sees every part of sorted data."""
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} outside 0..{world - 1}")
    return torch.arange(rank, n, world)


def padded_shard(order: Tensor, rank: int, world: int) -> Tensor:
    """DistributedSampler's share of an order: padded by wrapping to a multiple of world, then strided by rank."""
    total = -(-len(order) // world) * world
    padded = order.repeat(-(-total // len(order)))[:total] if len(order) else order
    return padded[rank:total:world]


def gather_objects(obj: Any, info: Launch) -> list[Any] | None:
    """Every rank's obj as a list on rank 0 (None elsewhere); [obj] in a single process."""
    if not info.active:
        return [obj]
    out = [None] * info.world if info.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any, info: Launch) -> Any:
    """Rank 0's obj on every rank."""
    if not info.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: Tensor, info: Launch) -> Tensor:
    """Element-wise sum of a tensor over all ranks (a copy on every rank; values itself in a single process)."""
    if not info.active:
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total


def sync_buffers(module: torch.nn.Module, info: Launch) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every rank, so all ranks end an epoch with one model."""
    if info.active:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)
