"""The sweep engine: every attack of a suite over its budget grid, per sample, with nested budgets and resume."""

from __future__ import annotations

import hashlib
import sys
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from robustjpeg.attacks.adapters import FGSM, PGD
from robustjpeg.attacks.suites import AttackSpec, Suite, load_suite
from robustjpeg.errors import BadInput, ConfigError, RunFolderError
from robustjpeg.evaluation.results import (
    CellKey,
    CellStore,
    robust_record,
    worst_case,
    write_results,
    write_run,
    write_samples,
)
from robustjpeg.models.info import ModelInfo
from robustjpeg.models.jpeg import jpeg_layers, jpeg_mode
from robustjpeg.utils import distributed
from robustjpeg.utils.io import config_hash, device_description, library_versions, read_json, resolve_device

__all__ = ["Engine", "PassCounter", "load_suite", "reference_sweep", "run_sweep"]  # load_suite: one import for callers


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
        self.model = PassCounter(model.to(self.device, torch.float32).eval(), self.tally)
        self.source = None if transfer_source is None else PassCounter(
            transfer_source.to(self.device, torch.float32).eval(), self.tally)
        # contiguous: adv-lib's attacks project through in-place ops on flatten() views, which on a channels-last
        # tensor are copies, so the projection would be lost without a word
        self.x, self.y = x.to(self.device, torch.float32).contiguous(), y.to(self.device, torch.int64)
        self.seed, self.batch_size, self.progress = seed, batch_size, progress
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
        """Attack idx (restarts attack only the survivors); returns which of idx were broken."""
        broken = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
        for restart in range(spec.restarts):
            alive = (~broken).nonzero().flatten()
            if len(alive) == 0:
                break

            def attack(pos: Tensor) -> Tensor:
                chunk = idx[pos]
                seed = batch_seed(self.seed, key, restart, int(self.ids[int(chunk[0])]))  # noqa: B023 (run in this loop)
                with self.view(spec), seeded(seed, self.device):
                    adv = perturb(chunk, seed)
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


def _budget_cells(engine: Engine, spec: AttackSpec, grid: list[float], store: CellStore,
                  survivors: dict[float, Tensor] | None = None, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """One fixed-budget attack over its norm's grid: a sample broken at a smaller budget is not attacked again, nor
    (cascade: survivors given) one an earlier attack broke at this budget, so its cells say "robust after 1..k".
    skip: AutoAttack parts other cells run (autoattack_skip)."""
    adapter = spec.build()
    alive = engine.clean.clone()
    out, direction = {}, None

    def compute(eps: float, key: str) -> tuple[dict, dict]:
        nonlocal direction
        stats = {}
        if survivors is not None:
            torch.logical_and(alive, survivors[eps], out=alive)
        if eps > 0 and bool(alive.any()):
            if isinstance(adapter, FGSM) and direction is None:
                direction = _fgsm_direction(engine, adapter, spec)
            idx = alive.nonzero().flatten()
            perturb = _perturber(engine, spec, adapter, eps, direction, skip)
            alive[idx[engine.break_samples(spec, key, idx, eps, perturb, stats)]] = False
        meta = {"attack": spec.name, "kind": spec.kind, "norm": adapter.norm, "eps": eps, "stats": stats}
        return meta, {"robust": alive.cpu().numpy().copy()}

    for eps in grid:
        key = str(CellKey(spec.name, adapter.norm, eps))
        out[key] = engine.cell(store, key, lambda: compute(eps, key))["robust"]  # noqa: B023 (called at once)
        alive = torch.tensor(out[key], device=engine.device)
    return out


def _fgsm_direction(engine: Engine, adapter: FGSM, spec: AttackSpec) -> Tensor:
    """FGSM's gradient sign for every clean-correct sample, once for the whole grid."""
    direction = torch.zeros_like(engine.x)
    idx = engine.clean.nonzero().flatten()

    def grad(chunk: Tensor) -> Tensor:
        with engine.view(spec):
            return adapter.direction(engine.craft_model(spec), engine.x[chunk], engine.y[chunk])

    if len(idx):
        direction[idx] = engine.map(idx, grad, desc=f"{spec.name} gradient")
    return direction


def _perturber(engine: Engine, spec: AttackSpec, adapter, eps: float, direction: Tensor | None = None,
               skip: tuple[str, ...] = ()):
    """perturb(chunk, seed) for break_samples; PGD also gets the evaluated model's labels for its early exit, the
    official AutoAttack the parts to leave out."""
    if direction is not None:
        return lambda chunk, seed: adapter.step(engine.x[chunk], direction[chunk], eps)
    craft = engine.craft_model(spec)
    if isinstance(adapter, PGD):
        judge = _judge(engine, spec)
        return lambda chunk, seed: adapter.perturb(craft, engine.x[chunk], engine.y[chunk], eps, seed, judge=judge)
    if skip:
        return lambda chunk, seed: adapter.perturb(craft, engine.x[chunk], engine.y[chunk], eps, seed, skip=skip)
    return lambda chunk, seed: adapter.perturb(craft, engine.x[chunk], engine.y[chunk], eps, seed)


def _judge(engine: Engine, spec: AttackSpec) -> Callable[[Tensor], Tensor] | None:
    """The evaluated model's labels (its JPEG layers in the modes they have now, outside any crafting view) when an
    attack is crafted through a view or on another model; None when crafting and evaluation are one forward."""
    if spec.view is None and spec.source == "model":
        return None
    layers = jpeg_layers(engine.model)
    given = [layer.mode for layer in layers]

    def judge(adv: Tensor) -> Tensor:
        crafting = [layer.mode for layer in layers]
        _set_modes(layers, given)
        try:
            return engine.predict(adv)
        finally:
            _set_modes(layers, crafting)

    return judge


def _set_modes(layers: list, modes: list[str]) -> None:
    for layer, mode in zip(layers, modes):
        layer.mode = mode


def distance_key(attack: str, norm: str) -> str:
    """'attack|norm|distances': the cell holding a minimum-norm attack's per-sample distances."""
    return f"{CellKey(attack, norm)}|distances"


def _distance_cells(engine: Engine, spec: AttackSpec, grid: list[float], store: CellStore) -> tuple[dict, np.ndarray]:
    """A minimum-norm attack run once on every clean-correct sample; robust at budget e iff its distance exceeds e."""
    adapter = spec.build()

    def compute() -> tuple[dict, dict]:
        stats = {}
        dist = _distances(engine, spec, adapter, stats)
        return {"attack": spec.name, "kind": spec.kind, "norm": adapter.norm, "stats": stats}, {"distance": dist}

    dist = engine.cell(store, distance_key(spec.name, adapter.norm), compute)["distance"]
    clean = engine.clean.cpu().numpy()
    return {str(CellKey(spec.name, adapter.norm, eps)): clean & (dist > eps) for eps in grid}, dist


def _distances(engine: Engine, spec: AttackSpec, adapter, stats: dict) -> np.ndarray:
    """Each sample's distance (in the attack's norm) to its adversarial example; inf where the attack failed, 0 where
    the clean prediction is already wrong (those samples are not attacked)."""
    craft = engine.craft_model(spec)
    dist = torch.zeros(len(engine.x), device=engine.device)
    idx = engine.clean.nonzero().flatten()

    def attack(chunk: Tensor) -> Tensor:
        seed = batch_seed(engine.seed, spec.name, int(engine.ids[int(chunk[0])]))
        with engine.view(spec), seeded(seed, engine.device):
            adv = adapter.perturb(craft, engine.x[chunk], engine.y[chunk], None, seed).detach()
        record_adv_stats(stats, adv, engine.x[chunk], None)
        d = perturbation_norm(adv - engine.x[chunk], adapter.norm)
        return torch.where(engine.predict(adv) != engine.y[chunk], d, torch.full_like(d, float("inf")))

    if len(idx):
        dist[idx] = engine.map(idx, attack, desc=f"{spec.name} (once)")
    return dist.cpu().numpy().astype(np.float32)


def autoattack_skip(suite: Suite, spec: AttackSpec) -> tuple[str, ...]:
    """Under cascade, the parts of an official AutoAttack entry that other entries of its norm, crafted the same way,
    run with AutoAttack's own settings as cells of their own: it leaves them out, so no part runs twice on a sample
    (AutoAttack is the cascade of its parts, and those cells run them on the same survivors)."""
    if not (suite.cascade and spec.adapter.official_autoattack):
        return ()
    return tuple(part for s in suite.attacks if s is not spec and (s.norm, s.view, s.source, s.restarts) ==
                 (spec.norm, spec.view, spec.source, 1) and (part := s.build().autoattack_part()))


def _all_cells(engine: Engine, suite: Suite, store: CellStore):
    """Run (or load) every cell, fixed-budget attacks in the suite's order (cascade: minimum-norm attacks first, then
    each fixed-budget attack only on what they and the earlier ones of its norm left robust at that budget; without
    cascade every attack on every clean-correct sample); returns per-sample outcomes and each cell's spec and budget
    (both in the suite's order), skipped attacks, and the per-sample distances of every minimum-norm attack
    ({'attack|norm': array})."""
    found, skipped, distances = {}, [], {}
    survivors: dict[str, dict[float, Tensor]] = {}  # cascade: per norm and budget, what every earlier attack failed on
    order = sorted(suite.attacks, key=lambda s: not s.adapter.minimum_norm) if suite.cascade else suite.attacks
    for spec in order:
        if spec.source == "transfer" and engine.source is None:
            skipped.append({"attack": spec.name, "reason": "no transfer source model (pass --transfer-from CKPT)"})
            continue
        norm = spec.norm
        grid = suite.grid(norm)
        if spec.adapter.minimum_norm:
            found[spec.name], distances[str(CellKey(spec.name, norm))] = _distance_cells(engine, spec, grid, store)
        else:
            found[spec.name] = _budget_cells(engine, spec, grid, store, survivors.get(norm),
                                             autoattack_skip(suite, spec))
        if suite.cascade:
            before = survivors.get(norm, {})
            survivors[norm] = {e: torch.as_tensor(r, device=engine.device) & before.get(e, True)
                               for e, r in zip(grid, found[spec.name].values())}
    cells, where = {}, {}
    for spec in (s for s in suite.attacks if s.name in found):
        cells.update(found[spec.name])
        where.update({key: (spec, spec.norm, eps) for key, eps in zip(found[spec.name], suite.grid(spec.norm))})
    return cells, where, skipped, distances


def _summarise(engine: Engine, suite: Suite, info: ModelInfo, dataset: str, cells: dict, where: dict,
               skipped: list) -> dict:
    """results.json content (DESIGN 2b): clean, per-cell and worst-case records, checks."""
    worst = worst_case(cells, {k: (w[1], w[2]) for k, w in where.items()})
    records = [{"attack": spec.name, "kind": spec.kind, "norm": norm, "eps": eps, "view": spec.view,
                "source": spec.source, "black_box": spec.black_box, **robust_record(cells[key])}
               for key, (spec, norm, eps) in where.items()]
    worst_records = [{"norm": norm, "eps": eps, **robust_record(v)} for (norm, eps), v in worst.items()]
    clean = engine.clean.cpu().numpy()
    clean_rec = robust_record(clean)
    return {"model": info.name, "dataset": dataset, "n": int(clean.size), "suite": suite.name,
            "standard_eps": suite.standard_eps, "standard_l2_eps": suite.standard_l2_eps, "eps": suite.eps,
            "l2_eps": suite.l2_eps, "cascade": suite.cascade,
            "clean": {"correct": clean_rec.pop("robust"), **clean_rec},
            "cells": records, "worst_case": worst_records, "skipped": skipped}


def sweep_fingerprint(suite: Suite, x: Tensor, y: Tensor, seed: int, model_info: ModelInfo | None,
                      deploy: str | None) -> str:
    """What makes two sweeps the same sweep: suite, data, seed, model identity; resume refuses anything else."""
    data = hashlib.sha256(x.detach().cpu().float().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()
    return config_hash({"suite": suite.to_dict(), "data": data, "seed": seed, "deploy": deploy,
                        "model": model_info and (model_info.sha256 or model_info.name)})


def _prepare_folder(out: Path, fingerprint: str, resume: bool) -> None:
    run_file = out / "run.json"
    if not run_file.is_file():
        return
    if not resume:
        raise RunFolderError(f"{out} already holds a sweep; pass --resume to finish it, or choose another -o folder")
    if read_json(run_file, "run file").get("fingerprint") != fingerprint:
        raise RunFolderError(f"{out} holds a different sweep (suite, data, seed or model differ); resume needs the same "
                             "arguments, or choose another -o folder")


def _validate(x: Tensor, y: Tensor) -> None:
    if x.ndim != 4 or not torch.is_floating_point(x):
        raise BadInput(f"images must be a float NCHW tensor, got {tuple(x.shape)} {x.dtype}")
    if len(x) != len(y) or len(x) == 0:
        raise BadInput(f"need as many labels as images (and at least one), got {len(x)} images, {len(y)} labels")
    if torch.isnan(x).any() or x.min() < 0 or x.max() > 1:
        raise BadInput(f"images must lie in [0, 1] without NaN (got {float(x.min()):.3g}..{float(x.max()):.3g}); "
                       "put mean/std normalisation inside the model, not in the data")


def jpeg_tables(model: nn.Module) -> dict | None:
    """Quantisation steps of the model's first JPEG layer ({"luma": 8x8, "chroma": 8x8 or None}); None without one."""
    layers = jpeg_layers(model)
    if not layers:
        return None
    steps = layers[0].steps().detach().cpu()
    return {"luma": steps[0].tolist(), "chroma": steps[1].tolist() if len(steps) > 1 else None}


def _spent(engine: Engine) -> dict[str, int]:
    """Per-sample passes this sweep cost, including cells finished before a resume."""
    return {k: engine.tally[k] + engine.reused[k] for k in engine.tally}


def _deployed(model: nn.Module, mode: str | None):
    """The whole sweep under one JPEG mode (e.g. 'hard', the quantiser a deployed codec uses)."""
    return nullcontext() if mode is None else jpeg_mode(model, mode)


@dataclass(frozen=True)
class SweepConfig:
    """How one sweep runs. Of these only seed and jpeg_mode change what is measured (both are in the fingerprint)."""

    seed: int = 0
    device: str | torch.device = "cpu"
    batch_size: int = 256  # halved on out-of-memory
    resume: bool = False  # continue a run folder cell by cell instead of refusing a used one
    progress: bool = True
    jpeg_mode: str | None = None  # the whole sweep under one JPEG quantiser mode (e.g. "hard", a deployed codec)
    dataset: str = "unknown"
    indices: Tensor | None = None  # the samples' numbers in their test split, for paired comparisons
    data_facts: dict | None = None  # how the images were read (decoded count, resize, memory): run.json's "data"


def run_sweep(model: nn.Module, x: Tensor, y: Tensor, suite: Suite, out_dir: Path,
              config: SweepConfig = SweepConfig(), *, model_info: ModelInfo | None = None,
              transfer_source: nn.Module | None = None) -> dict:
    """Attack `model` with every attack of `suite` over its grid; write the run folder; return results.json.

    Under torchrun each rank attacks its shard of the samples (shards/ holds them, for resume), rank 0 merges the
    shards into cells/ and finishes the run as one process would; every rank returns the same results.
    """
    _validate(x, y)
    launch = distributed.launch()
    if len(y) < launch.world:
        raise ConfigError(f"{len(y)} samples cannot be shared by {launch.world} processes; raise -n or launch fewer")
    out, t0 = Path(out_dir), time.perf_counter()
    fingerprint = sweep_fingerprint(suite, x, y, config.seed, model_info, config.jpeg_mode)
    _prepare_everywhere(out, fingerprint, config.resume, launch)
    info = replace(model_info or ModelInfo(type(model).__name__))
    info.jpeg_tables = info.jpeg_tables or jpeg_tables(model)
    device = config.device
    device = distributed.local_device(resolve_device(device) if isinstance(device, str) else torch.device(device), launch)
    config = replace(config, device=device, progress=config.progress and launch.rank == 0)
    run = {"status": "running", "fingerprint": fingerprint, "suite": suite.to_dict(), "model": info.to_dict(),
           "dataset": config.dataset, "n": len(y), "seed": config.seed, "deploy_mode": config.jpeg_mode,
           "data": config.data_facts, "versions": library_versions(), "device": device_description(device),
           "batch_size": config.batch_size, "processes": launch.world,
           "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if launch.rank == 0:
        write_run(out, run)
    shard_passes = None
    if launch.active:
        shard_passes = _sharded_cells(model, x, y, suite, out, config, transfer_source, launch)
        if launch.rank != 0:
            return distributed.broadcast_object(None, launch)
    results = _finish(model, x, y, suite, out, run, info, t0, shard_passes, config, transfer_source)
    return distributed.broadcast_object(results, launch)


def _engine(model: nn.Module, x: Tensor, y: Tensor, config: SweepConfig, transfer_source: nn.Module | None,
            ids: Tensor | None = None) -> Engine:
    torch.manual_seed(config.seed)
    return Engine(model, x, y, ids=ids, seed=config.seed, device=config.device, batch_size=config.batch_size,
                  progress=config.progress, transfer_source=transfer_source)


def _finish(model: nn.Module, x: Tensor, y: Tensor, suite: Suite, out: Path, run: dict, info: ModelInfo, t0: float,
            shard_passes: dict | None, config: SweepConfig, transfer_source: nn.Module | None) -> dict:
    """Every cell (run here, or loaded from cells/), checks, samples.npz, results.json and the final run.json."""
    from robustjpeg.evaluation import checks

    with _deployed(model, config.jpeg_mode), torch.enable_grad():
        engine = _engine(model, x, y, config, transfer_source)
        for k, v in (shard_passes or {}).items():
            engine.reused[k] += v
        cells, where, skipped, distances = _all_cells(engine, suite, CellStore(out))
        results = _summarise(engine, suite, info, config.dataset, cells, where, skipped)
        attack_passes, t_checks = _spent(engine), time.perf_counter()
        results.update(checks.run_checks(engine, suite, cells, where, results, info, distances))
        run.update(passes_attacks=attack_passes, wall_time_checks_s=round(time.perf_counter() - t_checks, 3))
    results["checks_failed"] = sum(c["status"] == "FAIL" for c in results["checks"])
    worst = worst_case(cells, {k: (w[1], w[2]) for k, w in where.items()})
    indices = np.arange(len(y)) if config.indices is None else np.asarray(config.indices)
    write_samples(out, indices=indices, labels=y.cpu().numpy(), clean_correct=engine.clean.cpu().numpy(), cells=cells,
                  worst=worst, distances=distances)
    write_results(out, results)
    run.update(status="complete", wall_time_s=round(time.perf_counter() - t0, 3), passes=_spent(engine),
               batch_size_final=engine.batch_size,
               finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), checks_failed=results["checks_failed"])
    write_run(out, run)
    return {"schema": "robustjpeg.results/1", **results}


def _prepare_everywhere(out: Path, fingerprint: str, resume: bool, launch: distributed.Launch) -> None:
    """Rank 0 checks the run folder; every rank raises its verdict, so no rank writes into a folder it may not use."""
    problem = None
    if launch.rank == 0:
        try:
            _prepare_folder(out, fingerprint, resume)
        except RunFolderError as exc:
            problem = str(exc)
    problem = distributed.broadcast_object(problem, launch)
    if problem:
        raise RunFolderError(problem)


def shard_folder(out: Path, rank: int, world: int) -> Path:
    """Where rank keeps its finished cells; the world size is part of the name because it decides the shards."""
    return Path(out) / "shards" / f"world-{world}" / f"rank-{rank}"


def _sharded_cells(model: nn.Module, x: Tensor, y: Tensor, suite: Suite, out: Path, config: SweepConfig,
                   transfer_source: nn.Module | None, launch: distributed.Launch) -> dict[str, int]:
    """This rank's cells on its samples (resumable in its shard folder); rank 0 merges all shards into cells/.

    Returns the passes the shards spent outside their cells (their clean predictions), for run.json.
    """
    ids = distributed.shard_indices(len(y), launch.rank, launch.world)
    store = CellStore(shard_folder(out, launch.rank, launch.world))
    with _deployed(model, config.jpeg_mode), torch.enable_grad():
        engine = _engine(model, x[ids], y[ids], config, transfer_source, ids)
        _all_cells(engine, suite, store)
    shard = {"ids": ids.numpy(), "cells": {key: store.load(key) for key in engine.meta}}
    shards = distributed.gather_objects(shard, launch)
    if launch.rank == 0:
        _merge_shards(shards, len(y), CellStore(out))
    return {"forward": len(y), "backward": 0}


def _merge_shards(shards: list[dict], n: int, store: CellStore) -> None:
    """One cell file per key over all n samples, as a single process writes it: outcomes scattered back to their
    sample numbers, passes summed, example statistics combined, wall time the slowest shard's."""
    for key, (meta, arrays) in shards[0]["cells"].items():
        merged = {name: np.empty(n, dtype=a.dtype) for name, a in arrays.items()}
        parts = [(s["ids"], s["cells"][key]) for s in shards]
        for ids, (_, shard_arrays) in parts:
            for name, a in shard_arrays.items():
                merged[name][ids] = a
        metas = [m for _, (m, _) in parts]
        meta = {k: v for k, v in meta.items() if k != "key"}
        meta.update(passes={k: sum(m["passes"][k] for m in metas) for k in meta["passes"]},
                    wall_time_s=max(m["wall_time_s"] for m in metas), stats=_merge_stats([m["stats"] for m in metas]))
        store.save(key, meta, **merged)


def _merge_stats(parts: list[dict]) -> dict:
    """The adversarial-example facts of check 3 over the union of shards."""
    out: dict = {}
    for stats in parts:
        for name, value in stats.items():
            pick = {"max_excess": max, "max": max, "min": min, "nan": lambda a, b: a + b}[name]
            out[name] = value if name not in out else pick(out[name], value)
    return out


def _plain_torchattack(model: nn.Module, spec: AttackSpec, eps: float, seed: int = 0):
    """The torchattacks object a plain loop would build for one attack at one budget (the official AutoAttack is
    not a torchattacks one: run it through pyautoattack)."""
    import torchattacks

    a = spec.build()
    if spec.kind == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if spec.kind == "pgd":
        cls = torchattacks.PGD if a.norm == "Linf" else torchattacks.PGDL2
        return cls(model, eps=eps, alpha=a.rel_stepsize * eps / a.steps, steps=a.steps, random_start=a.random_start)
    if spec.kind == "apgd" and a.targeted:
        return torchattacks.APGDT(model, norm=a.norm, eps=eps, steps=a.steps, seed=seed, n_classes=10)
    if spec.kind == "apgd":
        return torchattacks.APGD(model, norm=a.norm, eps=eps, steps=a.steps, seed=seed, loss=a.loss)
    if spec.kind == "square":
        return torchattacks.Square(model, norm=a.norm, eps=eps, n_queries=a.queries, p_init=a.p_init, seed=seed)
    raise ConfigError(f"the reference loop covers fgsm, pgd, apgd and square, not {spec.kind!r} ({spec.name})")


def reference_sweep(model: nn.Module, x: Tensor, y: Tensor, suite: Suite, *, batch_size: int = 256) -> tuple[dict, dict]:
    """The naive loop the engine's savings are measured and verified against: every attack (each restart) at every
    budget on every sample through plain torchattacks calls; outcomes then combined like the engine's (clean-wrong
    and broken at a smaller budget count as broken). Returns (cells, passes per attack name and "clean"); fgsm, pgd,
    apgd and square kinds (a minimum-norm attack runs once in both ways, so it has no naive loop and is left out)."""
    passes = {"clean": {"forward": 0, "backward": 0}}
    counted = PassCounter(model.eval(), passes["clean"])
    with torch.no_grad():
        clean = torch.cat([counted(xb).argmax(1) for xb in x.split(batch_size)]) == y
    cells = {}
    for spec in (s for s in suite.attacks if not s.adapter.minimum_norm):
        counted.tally = passes[spec.name] = {"forward": 0, "backward": 0}
        alive = clean.clone()
        for eps in suite.grid(spec.norm):
            for restart in range(spec.restarts if eps > 0 else 0):  # at eps 0 robust means clean-correct
                attack = _plain_torchattack(counted, spec, eps, seed=restart)
                for start in range(0, len(y), batch_size):
                    xb, yb = x[start:start + batch_size], y[start:start + batch_size]
                    adv = attack(xb, yb)
                    with torch.no_grad():
                        broken = counted(adv).argmax(1) != yb
                    alive[start:start + batch_size] &= ~broken
            cells[str(CellKey(spec.name, spec.norm, eps))] = alive.cpu().numpy().copy()
    return cells, passes
