"""The whole benchmark from one TOML file (read by robustjpeg.benchfile): train what needs training, sweep every
model, report, compare.

Every stage is resumable: a trained model is reused when its recipe, data and seed are unchanged (the
checkpoint folder is keyed by a hash of them), and sweeps resume cell by cell. One benchmark writes into an output
folder at a time: a second one on the same folder is refused while the first runs (see robustjpeg.utils.lock).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from robustjpeg.benchfile import Benchmark, ModelEntry, match_source
from robustjpeg.errors import ConfigError, FolderLocked
from robustjpeg.utils.io import config_hash

if TYPE_CHECKING:
    from robustjpeg.report.runs import Run

LATER_KEYS = ("q_max", "chroma_offset")  # train keys added after checkpoint folders were first keyed


def resolve_match(entry: ModelEntry, checkpoints: dict[str, Path], log: Log) -> ModelEntry:
    """Replace jpeg_quality = "match:NAME" by the quality closest to NAME's learned tables."""
    from robustjpeg.models.checkpoints import load_trained
    from robustjpeg.models.codec import matched_quality

    source = match_source(entry)
    if source is None:
        return entry
    model, _, _ = load_trained(checkpoints[source])
    matched = matched_quality(model.jpeg.steps())
    log(f"{entry.name}: jpeg_quality {matched}, the standard quality closest to {source}'s learned tables")
    return dataclasses.replace(entry, train={**entry.train, "jpeg_quality": matched})


def resolve_init_from(entry: ModelEntry, checkpoints: dict[str, Path], log: Log) -> ModelEntry:
    """Replace init_from = NAME by the path of NAME's trained checkpoint."""
    source = (entry.train or {}).get("init_from")
    if source is None:
        return entry
    log(f"{entry.name}: sensitivity tables from {source} ({checkpoints[source]})")
    return dataclasses.replace(entry, train={**entry.train, "init_from": str(checkpoints[source])})


class Log:
    """Line-based progress: one timestamped line per step, readable in a nightly log (rank 0 only under torchrun)."""

    def __init__(self, stream=sys.stderr) -> None:
        from robustjpeg.utils.distributed import is_main

        self.stream = stream if is_main() else None
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.stream is None:
            return
        elapsed = time.perf_counter() - self.t0
        print(f"[bench {datetime.now():%H:%M:%S} +{elapsed:6.1f}s] {message}", file=self.stream, flush=True)


def train_config(bench: Benchmark, entry: ModelEntry, device: str):
    """The TrainConfig of a model entry; the benchmark's dataset and seed apply unless the entry sets them."""
    from robustjpeg.training.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(entry.train) - fields)
    if unknown:
        raise ConfigError(f"{bench.path}: model {entry.name!r}: unknown train key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(fields - {'extra'}))}")
    values = {"dataset": bench.dataset, "seed": bench.seed, "data_root": bench.data_root, "download": bench.download,
              "device": device, **entry.train}
    return TrainConfig(**values)


def ensure_trained(bench: Benchmark, entry: ModelEntry, models_dir: Path, device: str, log: Log) -> Path:
    """Train a model unless a finished checkpoint of the same recipe exists; return the checkpoint path."""
    from robustjpeg.models.checkpoints import read_checkpoint
    from robustjpeg.training.loop import train

    cfg = train_config(bench, entry, device)
    folder = models_dir / f"{entry.name}-{config_hash(_recipe_key(cfg))}"
    checkpoint = folder / "checkpoint.pt"
    if checkpoint.is_file() and read_checkpoint(checkpoint).get("complete"):
        log(f"{entry.name}: reusing trained checkpoint {checkpoint}")
        return checkpoint
    log(f"{entry.name}: training ({'resuming' if checkpoint.is_file() else 'from scratch'}) into {folder}")
    summary = train(cfg, folder, resume=checkpoint.is_file())
    log(f"{entry.name}: trained, clean test accuracy {summary['test']['accuracy']:.4f} (n={summary['test']['n']})")
    return checkpoint


def _recipe_key(cfg) -> dict:
    """What keys a trained model's folder: its recipe without run-only flags. init_from counts as the source's own
    folder name (its name and recipe key), wherever the output folder lies; keys added since folders were first keyed
    count only when set, so earlier checkpoints keep their folders."""
    defaults = type(cfg)()
    recipe = {k: v for k, v in cfg.to_dict().items() if k not in ("device", "progress", "workers", "compile")
              and not (k in LATER_KEYS and v == getattr(defaults, k))}
    if recipe.get("init_from"):
        recipe["init_from"] = Path(recipe["init_from"]).parent.name
    return recipe


def train_models(bench: Benchmark, out: Path, device: str, log: Log) -> dict[str, Path]:
    """Train (or reuse) every trained model in file order; their checkpoints by name."""
    checkpoints: dict[str, Path] = {}
    for entry in bench.models:
        if entry.train is not None:
            entry = resolve_init_from(resolve_match(entry, checkpoints, log), checkpoints, log)
            checkpoints[entry.name] = ensure_trained(bench, entry, out / "models", device, log)
    return checkpoints


def load_entry(bench: Benchmark, entry: ModelEntry, checkpoints: dict[str, Path], device: str):
    """Rebuild a benchmark model: our trained checkpoint, or any source through load_model."""
    from robustjpeg.models.loading import load_model

    if entry.train is not None:
        return load_model(checkpoints[entry.name], device=device, name=entry.name)
    options = dict(entry.load)
    source = options.pop("source", None)
    if source is None:
        raise ConfigError(f"{bench.path}: model {entry.name!r}: load needs source = FILE or robustbench:NAME")
    for key in ("mean", "std", "input_size"):
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    try:
        return load_model(source, device=device, name=entry.name, **options)
    except TypeError as exc:
        raise ConfigError(f"{bench.path}: model {entry.name!r}: bad load option ({exc})") from exc


@dataclass
class Outcome:
    """What a benchmark run produced and how a scheduler should read it."""

    report: Path
    run_dirs: list[Path]
    regressions: list[dict]
    untrusted: list[str]  # 'MODEL: verdict (reason)' for each model whose worst case over every suite is not reliable


def _sweep_order(bench: Benchmark, suites_override: list[str] | None) -> list[tuple[ModelEntry, str]]:
    """(model, suite) pairs suite by suite, in the order suites first appear: every model's first (cheap) suite
    finishes before any model's costly one, so a cut-short run still compares all models."""
    pairs = [(entry, suite) for entry in bench.models for suite in suites_override or entry.suites or bench.suites]
    order = list(dict.fromkeys(suite for _, suite in pairs))
    return sorted(pairs, key=lambda pair: order.index(pair[1]))


def _sweep_all(bench: Benchmark, models: dict, infos: dict, out: Path, device, suites_override, eps, progress,
               log: Log) -> list[Path]:
    from robustjpeg.data.datasets import load_dataset
    from robustjpeg.evaluation.sweep import sweep_fingerprint
    from robustjpeg.pipeline import fitted_suite, headline, prepare

    ds = load_dataset(bench.dataset, bench.data_root, bench.download)
    order = _sweep_order(bench, suites_override)
    ready = {}  # (model, n) -> its checked subset; every model is fitted and probed before the first attack
    for entry, suite_name in order:  # one seed: nested subsets while class quotas grow with n (balanced test sets)
        at = (entry.name, bench.examples(suite_name))
        if at not in ready:
            ready[at] = prepare(models[entry.name], infos[entry.name], ds, n=at[1], seed=bench.seed, device=device,
                                label=entry.name)
    run_dirs = []
    for entry, suite_name in order:
        n = bench.examples(suite_name)
        prepared = ready[entry.name, n]
        suite = fitted_suite(suite_name, ds, eps or bench.eps, bench.standard_eps, bench.l2_eps, bench.standard_l2_eps)
        key = sweep_fingerprint(suite, prepared.x, prepared.y, bench.seed, infos[entry.name], None)
        run_dir = out / "runs" / entry.name / key[:8] / suite.name
        log(f"{entry.name}: sweeping suite {suite.name!r} on {len(prepared.y)} images -> {run_dir}")
        source = ready.get((entry.transfer_from, n))  # the source fitted to the data where it was swept too
        source = source.model if source else models.get(entry.transfer_from)
        results = prepared.sweep(suite, run_dir, infos[entry.name], source, seed=bench.seed, device=device,
                                 resume=True, batch_size=bench.batch_size, progress=progress)
        log(f"{entry.name}: clean {results['clean']['accuracy']:.3f}{headline(results, suite)}, "
            f"{results['checks_failed']} check(s) failed")
        run_dirs.append(run_dir)
    return run_dirs


def _history(bench: Benchmark, run_dirs: list[Path], log: Log) -> list[dict]:
    """Append the runs to the history and return significant drops against each model's previous run."""
    from robustjpeg.report.history import append_history, find_regressions, load_history
    from robustjpeg.utils.io import read_json

    ids = {read_json(append_history(d, bench.history), "history record")["id"] for d in run_dirs}
    found = [r for r in find_regressions(load_history(bench.history), bench.fail_on_drop or 0.0) if r["id"] in ids]
    log(f"history {bench.history}: {len(found)} significant drop(s) against the previous runs")
    return found


@contextmanager
def one_writer(out: Path):
    """Rank 0 holds the lock of `out` for the whole benchmark; every rank stops when another process holds it."""
    from robustjpeg.utils import distributed
    from robustjpeg.utils.lock import folder_lock

    launch = distributed.launch()
    with ExitStack() as stack:
        refused = None
        if launch.rank == 0:
            try:
                stack.enter_context(folder_lock(out, "bench"))
            except FolderLocked as exc:
                refused = str(exc)
        refused = distributed.broadcast_object(refused, launch)
        if refused:
            raise FolderLocked(refused)
        yield


def run_benchmark(bench: Benchmark, out: Path, *, device: str = "auto", suites: list[str] | None = None,
                  eps: list[float] | None = None, progress: bool | None = None, log: Log | None = None) -> Outcome:
    """Train, sweep, report and compare: the whole nightly job, resumable at every stage, one writer per folder."""
    with one_writer(Path(out)):  # under torchrun this first joins the process group and picks this rank's GPU
        return _run(bench, Path(out), device, suites, eps, progress, log or Log())


def _run(bench: Benchmark, out: Path, device: str, suites: list[str] | None, eps: list[float] | None,
         progress: bool | None, log: Log) -> Outcome:
    from robustjpeg.report.markdown import render_report
    from robustjpeg.report.runs import load_runs
    from robustjpeg.utils.distributed import is_main
    from robustjpeg.utils.io import resolve_device

    progress = sys.stderr.isatty() if progress is None else progress
    device = str(resolve_device(device))
    log(f"benchmark {bench.name!r} from {bench.path}: {len(bench.models)} model(s), data {bench.dataset}, "
        f"n={bench.num_examples}, seed {bench.seed}, device {device}, output {out}")
    checkpoints = train_models(bench, out, device, log)
    loaded = {e.name: load_entry(bench, e, checkpoints, device) for e in bench.models}
    models = {name: m for name, (m, _) in loaded.items()}
    infos = {name: info for name, (_, info) in loaded.items()}
    run_dirs = _sweep_all(bench, models, infos, out, device, suites, eps, progress, log)
    if not is_main():  # under torchrun the other ranks share training and sweeps; rank 0 alone records and reports
        return Outcome(report=out / "report" / "report.md", run_dirs=run_dirs, regressions=[], untrusted=[])
    regressions = _history(bench, run_dirs, log) if bench.history else []
    runs = load_runs(run_dirs)
    report = render_report(runs, out / "report", history=bench.history)
    log(f"report written to {report}")
    return Outcome(report=report, run_dirs=run_dirs, regressions=regressions, untrusted=_untrusted(runs))


def _untrusted(runs: list[Run]) -> list[str]:
    """Models whose reported worst case (over every suite they ran) the verdict does not trust."""
    from robustjpeg.report.runs import worst_case_verdict

    by_model: dict[str, list] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(run)
    verdicts = {model: worst_case_verdict(runs) for model, runs in by_model.items()}
    return [f"{model}: {v.status} ({v.reason})" for model, v in verdicts.items() if not v.trusted]
