"""The training loop: one recipe for baseline, JPEG-DL and fixed-JPEG models; atomic per-epoch checkpoints, exact resume."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustjpeg.data.datasets import Dataset, TensorSplit, load_dataset, training_dataset
from robustjpeg.errors import ConfigError, RunFolderError
from robustjpeg.models.checkpoints import SCHEMA, read_checkpoint
from robustjpeg.models.factory import JpegModel, ModelSpec, build_model
from robustjpeg.training.batches import Batches, loaded
from robustjpeg.training.config import RESUME_FREE, TrainConfig
from robustjpeg.training.setup import backbone_lr, init_tables, make_optimisers, make_spec
from robustjpeg.utils import distributed
from robustjpeg.utils.gpu import fast_input, fast_layout
from robustjpeg.utils.io import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    device_description,
    library_versions,
    resolve_device,
)
from robustjpeg.utils.stats import accuracy_record

# --- one epoch, evaluation -----------------------------------------------------------------------

def _autocast(device: torch.device):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_epoch(net: nn.Module, opts: list, batches: Batches, gen: torch.Generator, device: torch.device,
                bar) -> dict[str, float]:
    """One pass over the training data; returns loss, accuracy and images per second (summed over all ranks)."""
    net.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, start = 0, time.perf_counter()
    for step, (x, y) in enumerate(batches.epoch(gen)):
        with _autocast(device):
            logits = net(fast_input(x, device))
            loss = F.cross_entropy(logits.float(), y)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}", img_s=f"{rate:.0f}")
    if batches.launch.active:
        totals = distributed.all_sum(torch.stack([loss_sum.double(), correct.double(),
                                                  torch.tensor(seen, dtype=torch.float64, device=device)]), batches.launch)
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {"images": seen, "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
            "images_per_s": seen / elapsed, "epoch_time_s": elapsed}


@torch.no_grad()
def evaluate(net: nn.Module, split, device: torch.device, batch_size: int = 500, workers: int = 4,
             launch: distributed.Launch = distributed.Launch()) -> tuple[int, int]:
    """(correct, n) on a whole split, in eval mode; with several processes each rank counts its shard."""
    net.eval()
    n, part = len(split), _split_shard(split, launch)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in _eval_batches(part, batch_size, device, workers):
        with _autocast(device):
            correct += (net(fast_input(x, device)).argmax(1) == y).sum()
    return int(distributed.all_sum(correct, launch)), n


def _split_shard(split, launch: distributed.Launch):
    """This rank's strided share of a split (the split itself in a single process)."""
    if not launch.active:
        return split
    idx = distributed.shard_indices(len(split), launch.rank, launch.world)
    return split.subset(idx) if isinstance(split, TensorSplit) else torch.utils.data.Subset(split, idx.tolist())


def _eval_batches(split, batch_size: int, device: torch.device, workers: int) -> Iterator[tuple[Tensor, Tensor]]:
    if isinstance(split, TensorSplit):
        for start in range(0, len(split), batch_size):
            x = split.x[start:start + batch_size].to(device, non_blocking=True)
            yield x.float().div_(255.0), split.y[start:start + batch_size].to(device)
        return
    loader = torch.utils.data.DataLoader(split, batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    for x, y in loaded(loader):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# --- checkpoints ---------------------------------------------------------------------------------

def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"data": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: JpegModel, spec: ModelSpec, cfg: TrainConfig, epoch: int, opts: list,
                    gen: torch.Generator, history: list[dict], start_tables: list | None = None) -> None:
    """Everything to rebuild the model and continue training, as tensors and plain types (weights_only-safe).

    start_tables: the JPEG steps [T][8][8] the run started from (None without a JPEG layer).
    """
    atomic_torch_save({
        "schema": SCHEMA, "model_spec": spec.to_dict(), "state_dict": model.state_dict(),
        "complete": epoch == cfg.epochs, "epoch": epoch, "train_config": cfg.to_dict(),
        "optimisers": [opt.state_dict() for opt in opts], "rng": _rng_state(gen), "history": history,
        "jpeg_start_tables": start_tables,
    }, path)


# --- the run -------------------------------------------------------------------------------------

def _progress_bar(enabled: bool, total: int, epoch: int, epochs: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True)


def _check_resume(out: Path, resume: bool) -> Path:
    path = out / "checkpoint.pt"
    if resume and not path.is_file():
        raise RunFolderError(f"--resume: {path} does not exist; start without --resume")
    if not resume and path.exists():
        raise RunFolderError(f"{path} exists; pass --resume to continue it, or choose another -o/--out")
    return path


def _same_recipe(cfg: TrainConfig, stored: dict[str, Any], path: Path) -> None:
    now, before = cfg.to_dict(), TrainConfig.from_dict(stored).to_dict()
    diff = sorted(k for k in now if k not in RESUME_FREE and now[k] != before.get(k))
    if diff:
        raise ConfigError(f"--resume {path}: the run was started with other {', '.join(diff)}; "
                          "repeat the original flags or start a new run in another folder")


def _restore(path: Path, cfg: TrainConfig, model: JpegModel, opts: list,
             gen: torch.Generator) -> tuple[list[dict], list | None]:
    """Load weights, optimiser and RNG states from a checkpoint of the same recipe: (epoch history, start tables)."""
    ckpt = read_checkpoint(path)
    _same_recipe(cfg, ckpt["train_config"], path)
    model.load_state_dict(ckpt["state_dict"])
    for opt, state in zip(opts, ckpt["optimisers"]):
        opt.load_state_dict(state)
    _set_rng_state(gen, ckpt["rng"])
    return list(ckpt["history"]), ckpt.get("jpeg_start_tables")


def _steps(model: JpegModel) -> list | None:
    """The JPEG layer's current steps as nested lists [T][8][8]; None without a layer."""
    return None if model.jpeg is None else model.jpeg.steps().detach().cpu().tolist()


def train(cfg: TrainConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) a run in `out`; returns the summary also written to out/summary.json.

    Under torchrun the model is wrapped in DistributedDataParallel, each rank trains on its share of every epoch,
    and only rank 0 writes files (the run folder must be readable by every rank for --resume).
    """
    out = Path(out)
    launch = distributed.launch()
    ckpt_path = _check_resume(out, resume)
    device = distributed.local_device(resolve_device(cfg.device), launch)
    ds = training_dataset(load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.channels), cfg.preprocess(),
                          cfg.recipe)
    cfg = cfg.resolved(ds.family)
    torch.manual_seed(cfg.seed)
    spec = make_spec(cfg, ds)
    model = build_model(spec).to(device)
    if not resume:  # a resumed run takes its tables from the checkpoint
        init_tables(model, cfg, ds, device)
    model = fast_layout(model, device)
    opts = make_optimisers(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    history, start = _restore(ckpt_path, cfg, model, opts, gen) if resume else ([], _steps(model))
    main = launch.rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    net = torch.compile(model) if cfg.compile else model
    train_net = _parallel(model, cfg, device) if launch.active else net
    batches = Batches(ds, cfg, device, launch)
    progress = main and (sys.stderr.isatty() if cfg.progress is None else cfg.progress)
    started = time.perf_counter()
    for epoch in range(len(history), cfg.epochs):
        for group in opts[0].param_groups:
            group["lr"] = backbone_lr(cfg, epoch)
        bar = _progress_bar(progress, len(batches), epoch + 1, cfg.epochs)
        stats = train_epoch(train_net, opts, batches, gen, device, bar)
        if bar is not None:
            bar.close()
        distributed.sync_buffers(model, launch)
        correct, n = evaluate(net, ds.test, device, workers=cfg.workers, launch=launch)
        history.append({"epoch": epoch + 1, "lr": backbone_lr(cfg, epoch), **stats, "test_correct": correct,
                        "test_n": n, "test_acc": correct / n, **_table_summary(model)})
        if main:
            save_checkpoint(ckpt_path, model, spec, cfg, epoch + 1, opts, gen, history, start)
            atomic_write_text(out / "metrics.jsonl", "".join(_json_line(h) for h in history))
            _log(history[-1], cfg.epochs)
    distributed.barrier()
    return _finish(out, model, spec, cfg, ds, device, ckpt_path, history, time.perf_counter() - started, main, start)


def _parallel(model: JpegModel, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """DistributedDataParallel over every trainable parameter, JPEG tables included (compiled when asked)."""
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(ddp) if cfg.compile else ddp


def _table_summary(model: JpegModel) -> dict[str, float]:
    if model.jpeg is None:
        return {}
    steps = model.jpeg.steps().detach()
    return {"jpeg_step_mean": float(steps.mean()), "jpeg_step_min": float(steps.min()), "jpeg_step_max": float(steps.max())}


def _json_line(record: dict) -> str:
    return json.dumps(record) + "\n"


def _log(record: dict, epochs: int) -> None:
    print(f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  train_acc {record['train_acc']:.4f}  "
          f"test_acc {record['test_acc']:.4f}  {record['images_per_s']:.0f} img/s", flush=True)


def _finish(out: Path, model: JpegModel, spec: ModelSpec, cfg: TrainConfig, ds: Dataset, device: torch.device,
            ckpt_path: Path, history: list[dict], wall: float, write: bool = True,
            start_tables: list | None = None) -> dict[str, Any]:
    """Write summary.json; the final test accuracy is the last epoch's (the weights are the same).

    wall_time_s is this invocation's; train_time_s and passes add up every epoch, resumed ones included.
    """
    correct, n = history[-1]["test_correct"], history[-1]["test_n"]
    summary = {
        "schema": "robustjpeg.train/1", "checkpoint": str(ckpt_path), "dataset": ds.name, "arch": cfg.arch,
        "variant": spec.variant, "epochs": cfg.epochs, "seed": cfg.seed,
        "test": {"correct": correct, **accuracy_record(correct, n)},
        "train_config": cfg.to_dict(), "model_spec": spec.to_dict(), "device": device_description(device),
        "versions": library_versions(), "wall_time_s": round(wall, 3),
        "train_time_s": round(sum(h["epoch_time_s"] for h in history), 3),
        "images_per_s": history[-1]["images_per_s"],
        "passes": {"forward": sum(h["images"] + h["test_n"] for h in history),
                   "backward": sum(h["images"] for h in history)},
    }
    if model.jpeg is not None:
        summary["jpeg_tables"] = model.jpeg.export_qtables()
        summary["jpeg_start_tables"] = start_tables
    if write:
        atomic_write_json(out / "summary.json", summary)
    return summary
