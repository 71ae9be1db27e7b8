"""The whole benchmark from one TOML file: train what needs training, sweep every model, report, compare.

A benchmark file has three parts::

    [benchmark]                 # name, seed, num_examples, suites, out, history, fail_on_drop, batch_size,
                                # eps, standard_eps, suite_examples = {SUITE = n}, seeds = [0, 1, 2]
    [data]                      # dataset, root, download
    [[models]]                  # name, and either train = {TrainConfig fields} or load = {load_model options};
                                # optional suites (override) and transfer_from (another model's name)

A trained model may set jpeg_quality = "match:NAME": its (fixed) tables are then the standard tables of the
quality closest to the learned tables of NAME, an earlier JPEG-DL model of the same file. A JPEG model (trainable,
or the frozen control) may set jpeg_init = "sensitivity" with init_from = "NAME": its tables start from the
sensitivity of NAME, a baseline trained earlier in the same file (largest luma step q_max, default 10), so a frozen
control with the same keys gets JPEG-DL's very starting tables. With seeds = [...], every trained model is trained
once per seed (named NAME-sSEED); transfer_from, match: and init_from pair within a seed.

Every stage is resumable: a trained model is reused when its recipe, data and seed are unchanged (the
checkpoint folder is keyed by a hash of them), and sweeps resume cell by cell. One benchmark writes into an output
folder at a time: a second one on the same folder is refused while the first runs (see robustjpeg.utils.lock).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from robustjpeg.attacks.budgets import parse_eps_list
from robustjpeg.errors import ConfigError, FolderLocked
from robustjpeg.utils.io import config_hash

DEFAULT_FILE = Path(str(resources.files("robustjpeg") / "bench-quick.toml"))
MATCH = "match:"  # jpeg_quality = "match:NAME": a fixed-JPEG control matched to NAME's learned tables
LATER_KEYS = ("q_max", "chroma_offset")  # train keys added after checkpoint folders were first keyed
SECTION_KEYS = {
    "benchmark": {"name", "seed", "num_examples", "suites", "out", "history", "fail_on_drop", "batch_size",
                  "description", "eps", "standard_eps", "l2_eps", "standard_l2_eps", "suite_examples", "seeds"},
    "data": {"dataset", "root", "download"},
    "models": {"name", "train", "load", "suites", "transfer_from"},
}


@dataclass
class ModelEntry:
    """One model of a benchmark: trained from a recipe, or loaded from a checkpoint."""

    name: str
    train: dict | None = None
    load: dict | None = None
    suites: list[str] | None = None
    transfer_from: str | None = None


@dataclass
class Benchmark:
    """A parsed, validated benchmark file."""

    name: str
    path: Path
    dataset: str
    models: list[ModelEntry]
    suites: list[str] = field(default_factory=lambda: ["quick"])
    seed: int = 0
    num_examples: int | None = 500
    data_root: str | None = None
    download: bool = False
    out: Path | None = None
    history: Path | None = None
    fail_on_drop: float | None = None
    batch_size: int = 256
    eps: list[float] | None = None
    standard_eps: float | None = None
    l2_eps: list[float] | None = None  # L2 grid and standard budget for the suites that have L2 attacks
    standard_l2_eps: float | None = None
    suite_examples: dict[str, int] = field(default_factory=dict)

    def examples(self, suite: str) -> int | None:
        """How many test images a suite is run on (suite_examples overrides num_examples)."""
        return self.suite_examples.get(suite, self.num_examples)


def _check_keys(table: dict, allowed: set[str], where: str, path: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(sorted(allowed))}")


def _typed(value: Any, kind: type | tuple, key: str, path: Path) -> Any:
    if value is not None and not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(f"{path}: {key} = {value!r} has the wrong type")
    return value


def _path(value: str | None) -> Path | None:
    """Paths in a benchmark file are relative to the folder the command runs in, like paths on the CLI."""
    return None if value is None else Path(value).expanduser()


def _budgets(head: dict, key: str, path: Path, upper: float = 1.0):
    """benchmark.eps (a list) or benchmark.standard_eps (one budget), fractions allowed; None when absent."""
    if key not in head:
        return None
    try:
        values = parse_eps_list(head[key] if isinstance(head[key], list) else [head[key]], upper=upper)
    except ConfigError as exc:
        raise ConfigError(f"{path}: benchmark.{key}: {exc}") from exc
    return values if isinstance(head[key], list) else values[0]


def _parse_model(entry: dict, i: int, path: Path) -> ModelEntry:
    where = f"[[models]] #{i + 1}"
    _check_keys(entry, SECTION_KEYS["models"], where, path)
    if "name" not in entry:
        raise ConfigError(f"{path}: {where} needs a name")
    if ("train" in entry) == ("load" in entry):
        raise ConfigError(f"{path}: model {entry['name']!r} needs exactly one of train = {{...}} or load = {{...}}")
    for key in ("train", "load"):
        _typed(entry.get(key), dict, f"{entry['name']}.{key}", path)
    return ModelEntry(name=entry["name"], train=entry.get("train"), load=entry.get("load"),
                      suites=entry.get("suites"), transfer_from=entry.get("transfer_from"))


def load_benchmark(path: Path | str | None = None) -> Benchmark:
    """Read and validate a benchmark file (the embedded quick benchmark when path is None)."""
    path = Path(path) if path is not None else DEFAULT_FILE
    if not path.is_file():
        raise ConfigError(f"benchmark file {path} not found; give a path such as bench/jpeg-cifar10.toml")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    _check_keys(doc, set(SECTION_KEYS), "the top level", path)
    head, data = doc.get("benchmark", {}), doc.get("data", {})
    _check_keys(head, SECTION_KEYS["benchmark"], "[benchmark]", path)
    _check_keys(data, SECTION_KEYS["data"], "[data]", path)
    if "dataset" not in data:
        raise ConfigError(f"{path}: [data] needs dataset = NAME (e.g. mnist5k, cifar10, imagefolder:PATH)")
    models = [_parse_model(m, i, path) for i, m in enumerate(doc.get("models", []))]
    if not models:
        raise ConfigError(f"{path}: no [[models]] entries; add at least one model to train or load")
    if "seeds" in head:
        models = _per_seed(models, _seeds(head["seeds"], path), path)
    bench = Benchmark(
        name=_typed(head.get("name", path.stem), str, "benchmark.name", path), path=path,
        dataset=data["dataset"], models=models,
        suites=_typed(head.get("suites", ["quick"]), list, "benchmark.suites", path),
        seed=_typed(head.get("seed", 0), int, "benchmark.seed", path),
        num_examples=_typed(head.get("num_examples", 500), int, "benchmark.num_examples", path),
        data_root=data.get("root"), download=bool(data.get("download", False)),
        out=_path(head.get("out")), history=_path(head.get("history")),
        fail_on_drop=_typed(head.get("fail_on_drop"), (int, float), "benchmark.fail_on_drop", path),
        batch_size=_typed(head.get("batch_size", 256), int, "benchmark.batch_size", path),
        eps=_budgets(head, "eps", path), standard_eps=_budgets(head, "standard_eps", path),
        l2_eps=_budgets(head, "l2_eps", path, upper=math.inf),
        standard_l2_eps=_budgets(head, "standard_l2_eps", path, upper=math.inf),
        suite_examples=_typed(head.get("suite_examples", {}), dict, "benchmark.suite_examples", path))
    _check_models(bench)
    return bench


def _match_source(entry: ModelEntry) -> str | None:
    """NAME of jpeg_quality = "match:NAME" in a trained entry; None for an integer quality or a load entry."""
    quality = (entry.train or {}).get("jpeg_quality")
    return quality[len(MATCH):] if isinstance(quality, str) and quality.startswith(MATCH) else None


def _seeds(value: Any, path: Path) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in value) or len(set(value)) != len(value):
        raise ConfigError(f"{path}: benchmark.seeds = {value!r}; give distinct integers, e.g. seeds = [0, 1, 2]")
    return value


def _per_seed(models: list[ModelEntry], seeds: list[int], path: Path) -> list[ModelEntry]:
    """One trained entry per seed (NAME-sSEED); references to trained models point at the same seed's copy."""
    trained = {m.name for m in models if m.train is not None}

    def at(name: str | None, seed: int) -> str | None:
        return f"{name}-s{seed}" if name in trained else name

    out = []
    for seed in seeds:
        for m in models:
            if m.train is None:
                if seed == seeds[0]:
                    out.append(m)
                continue
            if "seed" in m.train:
                raise ConfigError(f"{path}: model {m.name!r} sets train.seed and benchmark.seeds is given; "
                                  "drop one of them")
            train = {**m.train, "seed": seed}
            if _match_source(m) is not None:
                train["jpeg_quality"] = MATCH + at(_match_source(m), seed)
            if "init_from" in m.train:
                train["init_from"] = at(m.train["init_from"], seed)
            out.append(dataclasses.replace(m, name=at(m.name, seed), train=train,
                                           transfer_from=at(m.transfer_from, seed)))
    return out


def _check_models(bench: Benchmark) -> None:
    names = [m.name for m in bench.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"{bench.path}: model names must be unique, got {names}")
    for i, m in enumerate(bench.models):
        if m.transfer_from is not None and m.transfer_from not in names:
            raise ConfigError(f"{bench.path}: model {m.name!r} has transfer_from = {m.transfer_from!r}, "
                              f"which is not one of {names}")
        _check_match(bench, m, bench.models[:i])
        _check_init(bench, m, bench.models[:i])
    if bench.num_examples is not None and bench.num_examples <= 0:
        raise ConfigError(f"{bench.path}: benchmark.num_examples must be positive")
    suites = set(bench.suites) | {s for m in bench.models for s in m.suites or []}
    for suite, n in bench.suite_examples.items():
        if suite not in suites or not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ConfigError(f"{bench.path}: benchmark.suite_examples.{suite} = {n!r}; give a positive number "
                              f"of images for one of the suites this file runs ({', '.join(sorted(suites))})")


def _check_match(bench: Benchmark, entry: ModelEntry, earlier: list[ModelEntry]) -> None:
    """jpeg_quality is an integer, or "match:NAME" naming an earlier trained JPEG-DL model."""
    quality = (entry.train or {}).get("jpeg_quality")
    if not isinstance(quality, str):
        return
    source = _match_source(entry)
    candidates = [m.name for m in earlier if m.train is not None and m.train.get("variant") == "jpeg"]
    if source not in candidates:
        raise ConfigError(f"{bench.path}: model {entry.name!r}: jpeg_quality = {quality!r}; give an integer "
                          f"1..100 or \"{MATCH}NAME\" with NAME an earlier trainable JPEG model "
                          f"({', '.join(candidates) or 'none in this file'})")


def _check_init(bench: Benchmark, entry: ModelEntry, earlier: list[ModelEntry]) -> None:
    """jpeg_init = "sensitivity" goes with init_from naming an earlier trained baseline; q_max is a positive step."""
    train = entry.train or {}
    where = f"{bench.path}: model {entry.name!r}"
    init, source, q_max = train.get("jpeg_init", "standard"), train.get("init_from"), train.get("q_max")
    _typed(train.get("chroma_offset"), bool, f"{entry.name}.train.chroma_offset", bench.path)
    if (init == "sensitivity") != (source is not None):
        raise ConfigError(f'{where}: jpeg_init = "sensitivity" and init_from = "NAME" go together (NAME: the baseline '
                          "trained earlier in this file whose sensitivity sets the tables)")
    if q_max is not None and (isinstance(q_max, bool) or not isinstance(q_max, (int, float)) or q_max <= 0
                              or init != "sensitivity"):
        raise ConfigError(f"{where}: q_max = {q_max!r}; give a positive largest luma step (the paper: 10 for CIFAR, "
                          f'5 for fine-grained data) with jpeg_init = "sensitivity"')
    if source is None:
        return
    if train.get("variant", "baseline") == "baseline" or "jpeg_quality" in train:
        raise ConfigError(f'{where}: jpeg_init = "sensitivity" sets the tables of a JPEG layer; give variant = "jpeg" '
                          'or "jpeg-fixed", without jpeg_quality')
    baselines = [m.name for m in earlier if m.train is not None and m.train.get("variant", "baseline") == "baseline"]
    if source not in baselines:
        names = [m.name for m in bench.models]
        problem = ("is not a baseline trained in this file" if source in {m.name for m in earlier}
                   else "comes later in the file (or is this model); list it first" if source in names
                   else "names no model of this file")
        raise ConfigError(f"{where}: init_from = {source!r} {problem}; give an earlier trained baseline "
                          f"({', '.join(baselines) or 'none before this model'})")


def resolve_match(entry: ModelEntry, checkpoints: dict[str, Path], log: Log) -> ModelEntry:
    """Replace jpeg_quality = "match:NAME" by the quality closest to NAME's learned tables."""
    from robustjpeg.models.checkpoints import load_trained
    from robustjpeg.models.codec import matched_quality

    source = _match_source(entry)
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
    if isinstance(values.get("milestones"), list):
        values["milestones"] = tuple(values["milestones"])
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
    from robustjpeg.report.markdown import write_report
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
    report = write_report(run_dirs, out / "report", history=bench.history)
    log(f"report written to {report}")
    return Outcome(report=report, run_dirs=run_dirs, regressions=regressions, untrusted=_untrusted(run_dirs))


def _untrusted(run_dirs: list[Path]) -> list[str]:
    """Models whose reported worst case (over every suite they ran) the verdict does not trust."""
    from robustjpeg.report.runs import load_run, worst_case_verdict

    by_model: dict[str, list] = {}
    for d in run_dirs:  # runs/MODEL/KEY/SUITE
        by_model.setdefault(d.parent.parent.name, []).append(load_run(d))
    verdicts = {model: worst_case_verdict(runs) for model, runs in by_model.items()}
    return [f"{model}: {v.status} ({v.reason})" for model, v in verdicts.items() if not v.trusted]
