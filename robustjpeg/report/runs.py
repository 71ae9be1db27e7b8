"""Read a finished sweep run folder (run.json, results.json, samples.npz) into one validated Run object.

Report, compare and history read run folders only through `load_run`, which builds on the sweep's own
reader (`results.read_run`): the folder format is written and read in one module, and checked here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from robustjpeg.errors import RunFolderError
from robustjpeg.evaluation.results import CellKey, read_run
from robustjpeg.evaluation.verdict import Verdict, model_verdict, run_verdict

_RESULTS_KEYS = ("model", "dataset", "n", "clean", "cells", "worst_case", "checks")
_SAMPLE_KEYS = ("indices", "labels", "clean_correct", "cell_keys", "robust", "worst_keys", "worst")


@dataclass(frozen=True)
class Outcomes:
    """Per-sample results of one run: which samples stay correct, keyed like the result cells."""

    indices: np.ndarray
    labels: np.ndarray
    clean: np.ndarray
    cells: dict[tuple[str, str, float], np.ndarray]
    worst: dict[tuple[str, float], np.ndarray]


@dataclass(frozen=True)
class Run:
    """One run folder: the run facts, the aggregate results and the per-sample outcomes."""

    path: Path
    facts: dict
    results: dict
    outcomes: Outcomes
    label: str = field(default="")
    verdict: Verdict | None = None  # set by load_run / load_runs (which sees the model's other runs)

    @property
    def model(self) -> str:
        return str(self.results["model"])

    @property
    def identity(self) -> tuple[str, str | None]:
        """What tells models apart: the name and the checkpoint's content hash (two files may share a given name)."""
        return self.model, (self.facts.get("model") or {}).get("sha256")

    @property
    def dataset(self) -> str:
        return str(self.results["dataset"])

    @property
    def n(self) -> int:
        return int(self.results["n"])

    @property
    def suite(self) -> str:
        suite = self.results.get("suite", self.facts.get("suite", {}))
        return str(suite.get("name", "?")) if isinstance(suite, dict) else str(suite)

    @property
    def standard_eps(self) -> float | None:
        eps = self.results.get("standard_eps", (self.facts.get("suite") or {}).get("standard_eps"))
        return None if eps is None else float(eps)

    @property
    def clean(self) -> dict:
        """The clean accuracy record with its n, shaped like a cell record."""
        return {**self.results["clean"], "n": self.n}

    @property
    def checks(self) -> list[dict]:
        return list(self.results["checks"])

    @property
    def unreliable(self) -> bool:
        """True unless the run's verdict is 'reliable' (verdict.py decides for every output)."""
        return self.verdict is not None and not self.verdict.trusted

    @property
    def jpeg_tables(self) -> dict | None:
        return (self.facts.get("model") or {}).get("jpeg_tables")

    @property
    def robust_standard(self) -> dict | None:
        """Worst-case robust accuracy at the suite's standard Linf budget (the headline figure), if it ran."""
        return self.worst_at("Linf", self.standard_eps)

    def worst_at(self, norm: str, eps: float | None) -> dict | None:
        """The worst-case record at one budget, or None when the run has no such budget."""
        return record_at(self.results["worst_case"], norm, eps)


def load_run(path: Path, label: str = "") -> Run:
    """Load and validate a run folder; a missing, partial or broken file raises RunFolderError naming it."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder {path} does not exist; pass the -o folder of a finished `robustjpeg sweep`")
    raw = read_run(path)
    missing = [k for k in _RESULTS_KEYS if k not in raw.results]
    _require(not missing, path / "results.json", f"lacks the fields {missing}")
    outcomes = _outcomes(raw.samples, path / "samples.npz", int(raw.results["n"]))
    _agree(raw.results, outcomes, path)
    return Run(path=path, facts=raw.run, results=raw.results, outcomes=outcomes,
               label=label or str(raw.results["model"]), verdict=run_verdict(raw.results))


def load_runs(paths: list[Path]) -> list[Run]:
    """Load several runs, labelled so that different models and runs of one model are told apart, each with a
    verdict that knows the model's other runs (a masking FAIL in one suite marks the others overstated)."""
    runs = [load_run(p) for p in paths]
    models = model_labels(runs)
    labels = [models[r.identity] for r in runs]
    return [replace(r, label=label if labels.count(label) == 1 else f"{label} ({r.path.name})",
                    verdict=run_verdict(r.results, [o.results for o in runs if o.identity == r.identity]))
            for r, label in zip(runs, labels)]


def model_labels(runs: list[Run]) -> dict[tuple[str, str | None], str]:
    """A label per model identity: its name, plus the start of its checkpoint hash where two models share the name."""
    names = [model for model, _ in dict.fromkeys(r.identity for r in runs)]
    return {r.identity: r.model if names.count(r.model) == 1 else f"{r.model} [{str(r.identity[1])[:8]}]"
            for r in runs}


def worst_case_verdict(runs: list[Run]) -> Verdict:
    """The verdict of one model's worst case over all of its runs."""
    return model_verdict([(r.facts, r.results) for r in runs])


def _require(ok: bool, path: Path, problem: str) -> None:
    if not ok:
        raise RunFolderError(f"{path}: {problem}")


def _outcomes(arrays: dict[str, np.ndarray], path: Path, n: int) -> Outcomes:
    missing = [k for k in _SAMPLE_KEYS if k not in arrays]
    _require(not missing, path, f"lacks the arrays {missing}")
    _require(arrays["clean_correct"].shape == (n,), path,
             f"holds {arrays['clean_correct'].shape} outcomes, results.json says n={n}")
    cells = {CellKey.parse(k): row.astype(bool) for k, row in zip(arrays["cell_keys"], arrays["robust"])}
    worst = {CellKey.parse(k, "worst")[1:]: row.astype(bool) for k, row in zip(arrays["worst_keys"], arrays["worst"])}
    return Outcomes(arrays["indices"], arrays["labels"], arrays["clean_correct"].astype(bool), cells, worst)


def _agree(results: dict, outcomes: Outcomes, path: Path) -> None:
    """results.json counts must equal the per-sample outcomes they summarise, or the folder mixes two runs."""
    pairs = [("clean", results["clean"].get("correct"), outcomes.clean)]
    pairs += [(f"{c['attack']} {c['norm']} {c['eps']:.6g}", c.get("robust"),
               find(outcomes.cells, c["attack"], c["norm"], c["eps"]))
              for c in results["cells"]]
    pairs += [(f"worst case {w['norm']} {w['eps']:.6g}", w.get("robust"), find(outcomes.worst, w["norm"], w["eps"]))
              for w in results["worst_case"]]
    for what, count, ok in pairs:
        _require(ok is not None, path / "samples.npz", f"has no per-sample outcomes for {what}; rerun the sweep")
        _require(count is None or int(count) == int(ok.sum()), path,
                 f"results.json says {count} for {what} but samples.npz holds {int(ok.sum())}; "
                 "the files come from different runs: rerun the sweep into a fresh folder")


def find(table: dict, *key) -> np.ndarray | None:
    """Look up per-sample outcomes by (…, eps), matching the budget with float tolerance."""
    *head, eps = key
    return next((v for k, v in table.items() if list(k[:-1]) == head and np.isclose(k[-1], eps)), None)


def record_at(records: list[dict], norm: str | None, eps: float | None) -> dict | None:
    """The first record at budget (norm, eps), matching the budget with float tolerance; None if absent."""
    if norm is None or eps is None:
        return None
    return next((r for r in records if r["norm"] == norm and np.isclose(r["eps"], eps)), None)
