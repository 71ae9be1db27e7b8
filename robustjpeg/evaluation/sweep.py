"""run_sweep: every attack of a suite over its budget grid, per sample, into a resumable run folder (or shards)."""

from __future__ import annotations

import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from robustjpeg.attacks.suites import Suite
from robustjpeg.errors import BadInput, ConfigError, RunFolderError
from robustjpeg.evaluation import checks
from robustjpeg.evaluation.cells import all_cells
from robustjpeg.evaluation.engine import Engine
from robustjpeg.evaluation.results import (
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
from robustjpeg.utils.gpu import attack_batch_size
from robustjpeg.utils.io import config_hash, device_description, library_versions, read_json, resolve_device


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
    batch_size: int | None = None  # None: 256 on a CPU, from free memory on a GPU (run_sweep resolves it); halved on OOM
    resume: bool = False  # continue a run folder cell by cell instead of refusing a used one
    progress: bool = True
    jpeg_mode: str | None = None  # the whole sweep under one JPEG quantiser mode (e.g. "hard", a deployed codec)
    dataset: str = "unknown"
    indices: Tensor | None = None  # the samples' numbers in their test split, for paired comparisons
    data_facts: dict | None = None  # how the images were read (decoded count, resize, memory): run.json's "data"

    def __post_init__(self) -> None:
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or self.batch_size < 1):
            raise ConfigError(f"batch size {self.batch_size!r}: give a positive number of images per attack batch, "
                              "or none to size it to the device")


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
    requested = config.batch_size
    config = replace(config, device=device, progress=config.progress and launch.rank == 0,
                     batch_size=requested or attack_batch_size(model, x, device))  # probed once, for every engine
    run = {"status": "running", "fingerprint": fingerprint, "suite": suite.to_dict(), "model": info.to_dict(),
           "dataset": config.dataset, "n": len(y), "seed": config.seed, "deploy_mode": config.jpeg_mode,
           "data": config.data_facts, "versions": library_versions(), "device": device_description(device),
           "batch_size": requested, "processes": launch.world,
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
    with _deployed(model, config.jpeg_mode), torch.enable_grad():
        engine = _engine(model, x, y, config, transfer_source)
        for k, v in (shard_passes or {}).items():
            engine.reused[k] += v
        cells, where, skipped, distances = all_cells(engine, suite, CellStore(out))
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
        all_cells(engine, suite, store)
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


