"""A benchmark file read and checked: every mistake is named with the file and key before any work starts.

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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from robustjpeg.attacks.budgets import parse_eps_list
from robustjpeg.errors import ConfigError

DEFAULT_FILE = Path(str(resources.files("robustjpeg") / "bench-quick.toml"))


MATCH = "match:"  # jpeg_quality = "match:NAME": a fixed-JPEG control matched to NAME's learned tables


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
    batch_size: int | None = None  # None: the sweep's default (256 on a CPU, from free memory on a GPU)
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
        batch_size=_typed(head.get("batch_size"), int, "benchmark.batch_size", path),
        eps=_budgets(head, "eps", path), standard_eps=_budgets(head, "standard_eps", path),
        l2_eps=_budgets(head, "l2_eps", path, upper=math.inf),
        standard_l2_eps=_budgets(head, "standard_l2_eps", path, upper=math.inf),
        suite_examples=_typed(head.get("suite_examples", {}), dict, "benchmark.suite_examples", path))
    _check_models(bench)
    return bench


def match_source(entry: ModelEntry) -> str | None:
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
            if match_source(m) is not None:
                train["jpeg_quality"] = MATCH + at(match_source(m), seed)
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
    source = match_source(entry)
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
