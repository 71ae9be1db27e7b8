"""The sweep engine's machinery: counted model passes, seeded batches, out-of-memory halving, one cell at a time."""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch import Tensor, nn

from robustjpeg.attacks.suites import AttackSpec
from robustjpeg.evaluation.results import CellStore
from robustjpeg.models.jpeg import jpeg_mode
from robustjpeg.utils.gpu import for_attacks


class PassCounter(nn.Module):
    """Wraps a model and counts per-sample passes: batch rows through forward, and rows whose logits got a gradient."""

    def __init__(self, model: nn.Module, tally: dict[str, int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.tally = {"forward": 0, "backward": 0} if tally is None else tally
        self.train(model.training)  # torchattacks restores the mode it reads here: never flip BN into training

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        self.tally["forward"] += x.shape[0]
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad: Tensor) -> None:
        self.tally["backward"] += grad.shape[0]


def batch_seed(seed: int, *parts) -> int:
    """A seed for one batch of one cell, fixed by the run seed, so reruns and resumes draw the same noise."""
    return zlib.crc32("|".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF


@contextmanager
def seeded(seed: int, device: torch.device):
    """Global torch RNG fixed to seed inside (torchattacks draws from it), restored afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Engine:
    """Holds the model, data and bookkeeping of one sweep; every model call goes through its pass counter."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int, device, batch_size: int,
                 progress: bool, transfer_source: nn.Module | None = None, ids: Tensor | None = None) -> None:
        self.device = torch.device(device)
        self.tally = {"forward": 0, "backward": 0}
        self.reused = {"forward": 0, "backward": 0}  # passes of cells finished by an earlier, resumed invocation
        self.meta: dict[str, dict] = {}  # facts of every cell (budget, adversarial-example statistics, passes)
        self.model, self.source = (None if m is None else PassCounter(for_attacks(m, self.device), self.tally)
                                   for m in (model, transfer_source))
        # contiguous: adv-lib's attacks project through in-place ops on flatten() views, which on a channels-last
        # tensor are copies, so the projection would be lost without a word
        self.x, self.y = x.to(self.device, torch.float32).contiguous(), y.to(self.device, torch.int64)
        self.seed, self.progress = seed, progress
        self.batch_size = batch_size
        self.ids = torch.arange(len(x)) if ids is None else ids.cpu()  # sample numbers in the whole sweep (batch seeds)
        self.logits = self.map(torch.arange(len(x), device=self.device), lambda idx: self.predict_logits(self.x[idx]))
        self.clean = (self.logits.argmax(1) == self.y)

    def map(self, idx: Tensor, fn: Callable[[Tensor], Tensor], desc: str | None = None) -> Tensor:
        """fn over idx in batches; on CUDA out-of-memory the batch size halves and the batch is retried."""
        outputs, start = [], 0
        bar = self._bar(len(idx), desc)
        while start < len(idx):
            chunk = idx[start:start + self.batch_size]
            try:
                outputs.append(fn(chunk))
            except RuntimeError as exc:
                if not _is_oom(exc) or self.batch_size == 1:
                    raise
                self.batch_size //= 2
                torch.cuda.empty_cache()
                continue
            start += len(chunk)
            bar.update(len(chunk))
        bar.close()
        return torch.cat(outputs) if outputs else torch.zeros(0, device=self.device)

    def _bar(self, total: int, desc: str | None):
        from tqdm import tqdm

        quiet = desc is None or not self.progress or not sys.stderr.isatty()
        return tqdm(total=total, desc=desc, disable=quiet, leave=False, unit="img")

    @torch.no_grad()
    def predict_logits(self, x: Tensor) -> Tensor:
        return self.model(x).float()

    def predict(self, x: Tensor) -> Tensor:
        return self.predict_logits(x).argmax(1)

    def cell(self, store: CellStore, key: str, compute: Callable[[], tuple[dict, dict]]) -> dict[str, np.ndarray]:
        """A finished cell from disk, or compute it, time it, count its passes and save it atomically."""
        done = store.load(key)
        if done is not None:
            for k in self.reused:
                self.reused[k] += done[0]["passes"][k]
            self.meta[key] = done[0]
            return done[1]
        before, t0 = dict(self.tally), time.perf_counter()
        meta, arrays = compute()
        meta.update(passes={k: self.tally[k] - before[k] for k in before}, wall_time_s=round(time.perf_counter() - t0, 4))
        store.save(key, meta, **arrays)
        self.meta[key] = meta
        return arrays

    def craft_model(self, spec: AttackSpec) -> nn.Module:
        return self.source if spec.source == "transfer" else self.model

    def view(self, spec: AttackSpec):
        """The JPEG mode examples are crafted under (BPDA = 'ste'); evaluation always uses the model as given."""
        return nullcontext() if spec.view is None else jpeg_mode(self.craft_model(spec), spec.view)

    def break_samples(self, spec: AttackSpec, key: str, idx: Tensor, eps: float,
                      perturb: Callable[[Tensor, int], Tensor], stats: dict) -> Tensor:
        """Attack idx (restarts attack only the survivors); returns which of idx were broken.

        perturb gets one seed per cell and restart, whatever the batch: adapters key their noise by it and the image
        (attacks.noise), so a sample's attack does not depend on its batch mates; the global RNG, for draws a library
        makes per batch, is seeded per batch."""
        broken = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
        for restart in range(spec.restarts):
            alive = (~broken).nonzero().flatten()
            if len(alive) == 0:
                break
            seed = batch_seed(self.seed, key, restart)

            def attack(pos: Tensor) -> Tensor:
                chunk = idx[pos]
                with self.view(spec), seeded(batch_seed(seed, int(self.ids[int(chunk[0])])), self.device):  # noqa: B023
                    adv = perturb(chunk, seed)  # noqa: B023 (run in this loop)
                record_adv_stats(stats, adv.detach(), self.x[chunk], eps, spec.norm)
                return self.predict(adv.detach()) != self.y[chunk]

            broken[alive] = self.map(alive, attack, desc=f"{key} r{restart}").bool()
        return broken


def record_adv_stats(stats: dict, adv: Tensor, x: Tensor, eps: float | None, norm: str = "Linf") -> None:
    """Facts check 3 needs: the largest excess over the budget (in the attack's norm), the value range, NaNs."""
    if eps is not None:
        excess = float(perturbation_norm(adv - x, norm).max()) - eps
        stats["max_excess"] = max(stats.get("max_excess", 0.0), excess)
    stats["min"] = min(stats.get("min", 0.0), float(torch.nan_to_num(adv, nan=0.0).min()))
    stats["max"] = max(stats.get("max", 1.0), float(torch.nan_to_num(adv, nan=1.0).max()))
    stats["nan"] = stats.get("nan", 0) + int(torch.isnan(adv).flatten(1).any(1).sum())


def perturbation_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample size of a perturbation in the norm a budget is measured in."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)
