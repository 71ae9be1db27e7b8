"""Per-sample random draws: each image's noise is keyed by a seed and the image itself, not by its batch.

An attack that draws one noise tensor for a whole batch gives a sample different noise in every batch layout, so a
cascaded sweep (each attack on the survivors of the earlier ones), a sharded sweep and a sweep with another batch
size would each attack a sample with different draws, and their worst cases would differ by chance. Keyed draws make
a sample's attack a function of (seed, image) alone: those sweeps agree sample by sample, on a CPU and on a GPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor


def row_keys(x: Tensor, seed: int, *salt, tags: Tensor | None = None) -> list[int]:
    """One 63-bit key per row of x: a hash of the seed, the salt, the row's tag (if any) and the row's float32 bytes."""
    rows = x.detach().to("cpu", torch.float32).contiguous().flatten(1).numpy()
    row_tags = [None] * len(rows) if tags is None else tags.detach().cpu().tolist()
    prefix = "|".join(map(str, (seed, *salt))).encode()
    return [int.from_bytes(hashlib.blake2b(prefix + f"|{tag}|".encode() + row.tobytes(), digest_size=8).digest(),
                           "little") >> 1 for row, tag in zip(rows, row_tags)]


def keyed_rand(x: Tensor, seed: int, *salt, shape: Sequence[int] | None = None, normal: bool = False,
               tags: Tensor | None = None) -> Tensor:
    """Per-row draws of `shape` (default: one row of x), U[0, 1) or N(0, 1), from generators keyed by row_keys.

    Drawn on the CPU, so the same image gets the same noise on every device; returned on x's device and dtype.
    """
    shape = tuple(x.shape[1:] if shape is None else shape)
    draw = torch.randn if normal else torch.rand
    rows = [draw(shape, generator=torch.Generator().manual_seed(key)) for key in row_keys(x, seed, *salt, tags=tags)]
    out = torch.stack(rows) if rows else torch.zeros((0, *shape))
    return out.to(x.device, x.dtype)


def chunk_seed(x: Tensor, seed: int) -> int:
    """A seed for a library's own batch-wide draws, different for every batch (keyed by its first image)."""
    return row_keys(x[:1], seed, "chunk")[0] & 0x7FFFFFFF if len(x) else seed
