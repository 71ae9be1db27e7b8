"""Training harness: one recipe for baseline, JPEG-DL and fixed-JPEG models; atomic per-epoch checkpoints, exact resume."""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustjpeg.data.datasets import Dataset, TensorSplit, augment, load_dataset, stratified_indices, training_dataset
from robustjpeg.data.preprocess import Preprocess
from robustjpeg.errors import ConfigError, RobustJpegError, RunFolderError
from robustjpeg.models.checkpoints import SCHEMA, load_trained, read_checkpoint
from robustjpeg.models.factory import VARIANTS, JpegModel, ModelSpec, build_model
from robustjpeg.models.jpeg import INITS as JPEG_INITS
from robustjpeg.models.jpeg import STEP_MAX, JpegLayer, init_abs_avg, init_sensitivity
from robustjpeg.utils import distributed
from robustjpeg.utils.io import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    device_description,
    library_versions,
    resolve_device,
)
from robustjpeg.utils.stats import accuracy_record

DEFAULT_ARCH = {"mnist": "smallcnn", "cifar": "resnet20", "fine": "tv_resnet18"}
# Backbone recipes per data family (DESIGN.md §3); milestones are fractions of the epoch count.
RECIPES = {
    "mnist": {"epochs": 4, "batch_size": 32, "lr": 0.05, "weight_decay": 5e-4, "milestones": (0.5, 0.75)},
    "cifar": {"epochs": 240, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "milestones": (0.625, 0.75, 0.875)},
    "fine": {"epochs": 200, "batch_size": 64, "lr": 0.1, "weight_decay": 1e-4, "milestones": (0.5, 0.75)},
}
# Flags that may differ between a run and its resumption (a resumed run takes its tables from the checkpoint, so
# the baseline it was initialised from may have moved).
RESUME_FREE = ("device", "compile", "progress", "data_root", "download", "workers", "init_from")
SENSITIVITY_IMAGES = 10_000  # the official code estimates sensitivity on at least 10,000 training images
DEFAULT_Q_MAX = 10.0  # largest luma step of the sensitivity tables: the paper's CIFAR setting (5 for fine-grained)


@dataclass
class TrainConfig:
    """A training run. None means "the data family's recipe" (RECIPES), filled in by resolved().

    recipe: the family whose recipe applies (default: the data's, see robustjpeg.data.datasets.family_of); input_size,
    resize, crop_pct, interpolation: the crop size and test-time resize (robustjpeg.data.preprocess); channels: read
    every image with 1 or 3 channels (default: grey only when every image is).
    """

    dataset: str = "mnist5k"
    arch: str | None = None
    variant: str = "baseline"
    jpeg_alpha: float | None = None
    jpeg_hardness: float | None = None
    jpeg_init: str = "standard"
    jpeg_quality: int = 50
    jpeg_constant: float | None = None
    init_from: str | None = None
    q_max: float | None = None
    chroma_offset: bool = False
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    milestones: tuple[int, ...] | None = None
    jpeg_lr: float = 3e-3
    jpeg_weight_decay: float = 0.0
    seed: int = 0
    train_subset: int | None = None
    data_root: str | None = None
    download: bool = False
    compile: bool = False
    device: str = "auto"
    progress: bool | None = None
    workers: int = 4
    recipe: str | None = None
    input_size: tuple[int, int] | None = None
    resize: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    channels: int | None = None
    extra: dict = field(default_factory=dict)

    def resolved(self, family: str) -> TrainConfig:
        """Fill unset fields from the family recipe and check the combination."""
        recipe = RECIPES[family]
        epochs = self.epochs if self.epochs is not None else recipe["epochs"]
        milestones = self.milestones
        if milestones is None:
            milestones = tuple(sorted({max(1, round(f * epochs)) for f in recipe["milestones"]}))
        cfg = replace(self, arch=self.arch or DEFAULT_ARCH[family], epochs=epochs,
                      batch_size=self.batch_size or recipe["batch_size"],
                      lr=self.lr if self.lr is not None else recipe["lr"],
                      weight_decay=self.weight_decay if self.weight_decay is not None else recipe["weight_decay"],
                      milestones=tuple(int(m) for m in milestones))
        validate(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (paths as strings), so checkpoints stay loadable with weights_only=True."""
        d = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        for key in ("milestones", "input_size"):
            d[key] = None if d[key] is None else list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        for key in ("milestones", "input_size"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def preprocess(self) -> Preprocess:
        """The crop size and test-time resize asked for (unset fields come from the data)."""
        return Preprocess(self.input_size, self.resize, self.crop_pct, self.interpolation)


def validate(cfg: TrainConfig) -> None:
    """Reject flag combinations that make no sense, naming the flag to change."""
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, not {cfg.variant!r}")
    if cfg.jpeg_alpha is not None and cfg.jpeg_hardness is not None:
        raise ConfigError("--alpha and --hardness both set the quantiser's softness; give one of them")
    if cfg.variant == "baseline" and (cfg.jpeg_alpha is not None or cfg.jpeg_hardness is not None):
        raise ConfigError("--alpha/--hardness configure a JPEG layer; add --jpeg or --jpeg-fixed QUALITY")
    if cfg.jpeg_init not in JPEG_INITS:
        raise ConfigError(f"--jpeg-init must be one of {', '.join(JPEG_INITS)}, not {cfg.jpeg_init!r}")
    if cfg.variant == "baseline" and (cfg.jpeg_init != "standard" or cfg.init_from or cfg.chroma_offset):
        raise ConfigError("--jpeg-init/--init-from/--official-chroma-offset configure a JPEG layer; "
                          "add --jpeg or --jpeg-fixed QUALITY")
    if (cfg.jpeg_init == "constant") != (cfg.jpeg_constant is not None):
        raise ConfigError("--jpeg-init constant and --jpeg-constant STEP go together")
    if (cfg.jpeg_init == "sensitivity") != bool(cfg.init_from):
        raise ConfigError("--jpeg-init sensitivity and --init-from BASELINE_CHECKPOINT go together")
    if cfg.init_from and not Path(cfg.init_from).is_file():
        raise ConfigError(f"--init-from {cfg.init_from} is not a file; pass a trained baseline checkpoint.pt")
    if cfg.q_max is not None and cfg.jpeg_init != "sensitivity":
        raise ConfigError("--q-max sets the largest luma step of the sensitivity tables; it needs --jpeg-init sensitivity")
    if cfg.q_max is not None and not 0 < cfg.q_max <= STEP_MAX:
        raise ConfigError(f"--q-max must lie in (0, {STEP_MAX:g}] (the paper uses 10 for CIFAR, 5 for fine-grained "
                          f"data), got {cfg.q_max}")
    if not 1 <= cfg.jpeg_quality <= 100:
        raise ConfigError(f"JPEG quality must lie in 1..100, got {cfg.jpeg_quality}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.train_subset is not None and cfg.train_subset < 1:
        raise ConfigError(f"--train-subset must be at least 1, got {cfg.train_subset}")
    if cfg.lr <= 0 or cfg.jpeg_lr <= 0:
        raise ConfigError("--lr and --jpeg-lr must be positive")
    if list(cfg.milestones) != sorted(set(cfg.milestones)) or any(m < 1 for m in cfg.milestones):
        raise ConfigError(f"--milestones must be increasing positive epochs, got {list(cfg.milestones)}")


# --- building the model --------------------------------------------------------------------------

def make_spec(cfg: TrainConfig, ds: Dataset) -> ModelSpec:
    """The model spec for this config and dataset (JPEG layer config from JpegLayer.config())."""
    jpeg = None
    if cfg.variant != "baseline":
        trainable = cfg.variant == "jpeg"
        layer = JpegLayer(channels=ds.in_channels, alpha=5.0 if cfg.jpeg_alpha is None else cfg.jpeg_alpha,
                          hardness=cfg.jpeg_hardness, init=cfg.jpeg_init, quality=cfg.jpeg_quality,
                          constant=cfg.jpeg_constant, trainable=trainable, chroma_offset=cfg.chroma_offset)
        jpeg = {**layer.config(), "trainable": trainable}
    return ModelSpec(cfg.arch, len(ds.classes), ds.in_channels, tuple(ds.mean), tuple(ds.std), ds.input_size, jpeg,
                     preprocess=ds.applied.to_dict() if ds.applied else None)


def init_tables(model: JpegModel, cfg: TrainConfig, ds: Dataset, device: torch.device) -> None:
    """Data-driven table starts, trainable or frozen: abs_avg from training images, sensitivity from a trained baseline.

    Sensitivity, as in the official code: mean squared loss gradient per DCT coefficient of the baseline over
    min(10,000, all) of the run's training images (its train_subset when set), steps ~ 1/sensitivity with the
    largest luma step q_max. A frozen control with the same recipe and init_from gets the very same tables.
    """
    if cfg.variant == "baseline" or cfg.jpeg_init not in ("abs_avg", "sensitivity"):
        return
    if cfg.jpeg_init == "abs_avg":
        x, _ = _sample_batch(ds, min(1024, len(ds.train)), cfg.seed)
        init_abs_avg(model.jpeg, x.to(device))
        return
    baseline, spec, _ = load_trained(cfg.init_from, device)
    if spec.jpeg is not None:
        raise ConfigError(f"--init-from {cfg.init_from} is a {spec.variant} model; sensitivity needs a baseline")
    pool = training_indices(ds, cfg)
    with torch.random.fork_rng(devices=[]):  # random crops of file data repeat, and leave training's RNG alone
        torch.manual_seed(cfg.seed)
        x, y = _sample_batch(ds, min(SENSITIVITY_IMAGES, len(pool)), cfg.seed, pool)
    init_sensitivity(model.jpeg, baseline, x.to(device), y.to(device),
                     q_max=DEFAULT_Q_MAX if cfg.q_max is None else cfg.q_max)


def _sample_batch(ds: Dataset, n: int, seed: int, pool: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """n class-stratified training images in [0, 1] with labels, drawn from `pool` (training indices; default all)."""
    pool = torch.arange(len(ds.train)) if pool is None else pool
    idx = pool[stratified_indices(ds.train.y[pool], n, seed)]
    if isinstance(ds.train, TensorSplit):
        return ds.train.x[idx].float() / 255.0, ds.train.y[idx]
    items = [ds.train[i] for i in idx.tolist()]
    return torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])


def training_indices(ds: Dataset, cfg: TrainConfig) -> Tensor:
    """Indices of the training images a run uses: all of them, or its fixed stratified train_subset."""
    if cfg.train_subset is None:
        return torch.arange(len(ds.train))
    if cfg.train_subset > len(ds.train):
        raise ConfigError(f"--train-subset {cfg.train_subset} exceeds the {len(ds.train)} training images")
    return stratified_indices(ds.train.y, cfg.train_subset, cfg.seed)


def make_optimisers(model: JpegModel, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """SGD with momentum for the backbone; a separate Adam for the JPEG tables (DESIGN.md §3)."""
    decay = [p for p in model.backbone_parameters() if p.ndim > 1]
    no_decay = [p for p in model.backbone_parameters() if p.ndim <= 1]
    opts: list[torch.optim.Optimizer] = [torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum)]
    if model.jpeg_parameters():
        opts.append(torch.optim.Adam(model.jpeg_parameters(), lr=cfg.jpeg_lr, weight_decay=cfg.jpeg_weight_decay))
    return opts


def backbone_lr(cfg: TrainConfig, epoch: int) -> float:
    """Step schedule: lr * 0.1 per milestone passed; a pure function of the epoch, so resume needs no scheduler object."""
    return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)


# --- batches -------------------------------------------------------------------------------------

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
        for x, y in _loaded(loader):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _loaded(loader) -> Iterator:
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


# --- one epoch, evaluation -----------------------------------------------------------------------

def _autocast(device: torch.device):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _to_input(x: Tensor, device: torch.device) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def train_epoch(net: nn.Module, opts: list, batches: Batches, gen: torch.Generator, device: torch.device,
                bar) -> dict[str, float]:
    """One pass over the training data; returns loss, accuracy and images per second (summed over all ranks)."""
    net.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, start = 0, time.perf_counter()
    for step, (x, y) in enumerate(batches.epoch(gen)):
        with _autocast(device):
            logits = net(_to_input(x, device))
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
            correct += (net(_to_input(x, device)).argmax(1) == y).sum()
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
    for x, y in _loaded(loader):
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
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
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
