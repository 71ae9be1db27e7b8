"""The run folder: per-cell partial files, run.json, results.json and samples.npz, written atomically and read back."""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from robustjpeg.errors import RobustJpegWarning, RunFolderError
from robustjpeg.utils.io import atomic_save_npz, atomic_write_json, read_json
from robustjpeg.utils.stats import accuracy_record

RUN_SCHEMA = "robustjpeg.run/1"
RESULTS_SCHEMA = "robustjpeg.results/1"
RUN_FIX = ("move it aside and rerun the same sweep with --resume: it reuses the finished cells in cells/ and writes "
           "run.json again")
REBUILD = "rerun the same sweep with --resume: it rebuilds {} from the finished cells in cells/"
CORRUPT = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)  # what reading a damaged .npz raises


class CellKey(NamedTuple):
    """The name of one stored row of per-sample outcomes: an attack in one norm at one budget; attack None: the
    worst case over the suite; eps None: a minimum-norm attack's distances (one row serves every budget).

    str() is the form cells/ and samples.npz store ('attack|norm|eps', 'norm|eps', 'attack|norm'); parse() reads it.
    """

    attack: str | None
    norm: str
    eps: float | None = None

    def __str__(self) -> str:
        parts = (self.attack, self.norm, None if self.eps is None else f"{self.eps:.8g}")
        return "|".join(p for p in parts if p is not None)

    @classmethod
    def parse(cls, text: str, kind: str = "cell") -> CellKey:
        """A stored key of one kind: "cell" (attack|norm|eps), "worst" (norm|eps) or "distance" (attack|norm)."""
        if kind == "worst":
            norm, eps = str(text).split("|")
            return cls(None, norm, float(eps))
        if kind == "distance":
            attack, norm = str(text).rsplit("|", 1)
            return cls(attack, norm)
        attack, norm, eps = str(text).rsplit("|", 2)
        return cls(attack, norm, float(eps))


def robust_record(robust: np.ndarray) -> dict:
    """{n, robust, accuracy, ci95} for a boolean per-sample outcome vector."""
    k, n = int(robust.sum()), int(robust.size)
    return {"n": n, "robust": k, **{key: v for key, v in accuracy_record(k, n).items() if key != "n"}}


class CellStore:
    """cells/: one small .npz per finished cell (per-sample outcomes plus a JSON blob of its facts)."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = Path(run_dir) / "cells"

    def path(self, key: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".npz")

    def save(self, key: str, meta: dict, **arrays: np.ndarray) -> None:
        atomic_save_npz(self.path(key), meta=np.array(json.dumps({"key": key, **meta})), **arrays)

    def load(self, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, arrays) of a finished cell, or None when it has not finished or its file is unreadable (it is then
        computed again, and the file replaced, with a warning naming it)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            meta, arrays = read_cell(path)
        except CORRUPT as exc:
            warnings.warn(RobustJpegWarning(f"{path} is unreadable ({exc}); computing that cell again, the finished "
                                            "cells beside it are kept"), stacklevel=2)
            return None
        if meta.get("key") != key:
            raise RunFolderError(f"{path} holds cell {meta.get('key')!r}, not {key!r}; delete it and rerun with --resume")
        return meta, arrays


def read_cell(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of one cell file; a truncated or foreign file raises one of CORRUPT."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files if name != "meta"}
        meta = json.loads(str(data["meta"]))
    if not isinstance(meta, dict):
        raise ValueError("its meta field is not a JSON object")
    return meta, arrays


def cell_metas(run_dir: Path) -> list[dict]:
    """The facts (attack, budget, passes, wall time, example statistics) of every readable finished cell of a run."""
    out = []
    for path in sorted((Path(run_dir) / "cells").glob("*.npz")):
        try:
            out.append(read_cell(path)[0])
        except CORRUPT as exc:
            warnings.warn(RobustJpegWarning(f"{path} is unreadable ({exc}); left out"), stacklevel=2)
    return out


def worst_case(cells: dict[str, np.ndarray], budgets: dict[str, tuple[str, float]]) -> dict[tuple[str, float], np.ndarray]:
    """Per (norm, eps): a sample is robust only if it is robust in every cell of that norm and budget."""
    out: dict[tuple[str, float], np.ndarray] = {}
    for key, robust in cells.items():
        budget = budgets[key]
        out[budget] = robust.copy() if budget not in out else out[budget] & robust
    return out


def write_samples(run_dir: Path, *, indices, labels, clean_correct, cells: dict[str, np.ndarray],
                  worst: dict[tuple[str, float], np.ndarray], distances: dict[str, np.ndarray]) -> None:
    """samples.npz: every per-sample outcome, so worst cases, comparisons and reports are exact."""
    n = len(labels)
    rows = lambda table: np.stack(list(table.values())).astype(bool) if table else np.zeros((0, n), bool)  # noqa: E731
    arrays = {
        "indices": np.asarray(indices, dtype=np.int64), "labels": np.asarray(labels, dtype=np.int64),
        "clean_correct": np.asarray(clean_correct, dtype=bool),
        "cell_keys": np.array(list(cells), dtype=str), "robust": rows(cells),
        "worst_keys": np.array([str(CellKey(None, *b)) for b in worst], dtype=str), "worst": rows(worst),
    }
    if distances:  # per minimum-norm attack ('attack|norm'), each sample's distance; inf where it failed
        arrays["distance_keys"] = np.array(list(distances), dtype=str)
        arrays["distances"] = np.stack([np.asarray(d, dtype=np.float32) for d in distances.values()])
    atomic_save_npz(Path(run_dir) / "samples.npz", **arrays)


def write_run(run_dir: Path, run: dict) -> None:
    atomic_write_json(Path(run_dir) / "run.json", {"schema": RUN_SCHEMA, **run})


def write_results(run_dir: Path, results: dict) -> None:
    atomic_write_json(Path(run_dir) / "results.json", {"schema": RESULTS_SCHEMA, **results})


@dataclass
class RawRun:
    """A finished run folder's files as written: run.json, results.json and the per-sample arrays.

    runs.Run is the checked view the report and compare stages use; this is the format layer under it.
    """

    folder: Path
    run: dict
    results: dict
    samples: dict[str, np.ndarray]

    def cell(self, key: str) -> np.ndarray:
        keys = list(self.samples["cell_keys"])
        if key not in keys:
            raise RunFolderError(f"{self.folder}: no cell {key!r}; it has {', '.join(keys)}")
        return self.samples["robust"][keys.index(key)]


def read_run(run_dir: Path) -> RawRun:
    """Load a finished run folder (run.json read once), naming the missing, foreign or unfinished file."""
    folder = Path(run_dir)
    run = read_json(folder / "run.json", "run file", RUN_FIX)
    if run.get("status") != "complete":
        raise RunFolderError(f"{folder / 'run.json'}: status is {run.get('status')!r}: the sweep did not finish; "
                             "rerun it with --resume")
    results = read_json(folder / "results.json", "results file", REBUILD.format("results.json"))
    for what, doc, schema in (("run.json", run, RUN_SCHEMA), ("results.json", results, RESULTS_SCHEMA)):
        if doc.get("schema") != schema:
            raise RunFolderError(f"{folder / what} has schema {doc.get('schema')!r}, expected {schema!r}")
    path = folder / "samples.npz"
    if not path.is_file():
        raise RunFolderError(f"{path} is missing; {REBUILD.format('it')}")
    try:
        with np.load(path) as data:
            samples = {name: data[name] for name in data.files}
    except CORRUPT as exc:
        raise RunFolderError(f"{path} cannot be read ({exc}); {REBUILD.format('it')}") from exc
    return RawRun(folder, run, results, samples)
