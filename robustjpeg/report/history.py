"""Run history for nightly jobs: one file per finished run, and the trend and regressions read back from them.

Appending writes one new file named by the run's finishing time and the evaluation's identity, through a temporary
file and a rename. Two runs finishing at once therefore write two different files and never touch a shared index;
the index is rebuilt by listing the folder on every read. The identity is the sweep's fingerprint (model, data,
suite, seed) with its per-sample outcomes, so one evaluation is one record: appending it again, or a rerun of a
finished benchmark, adds nothing. A record that cannot be read is skipped with a warning naming it, so one damaged
file never stops a later report or benchmark.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from robustjpeg.errors import RobustJpegWarning, RunFolderError
from robustjpeg.report.compare import paired_change, row_label, significant
from robustjpeg.report.runs import Run, load_run, record_at
from robustjpeg.utils import formatting as fmt
from robustjpeg.utils.io import atomic_write_json, config_hash

SCHEMA = "robustjpeg.history/1"


def _bits(ok: np.ndarray) -> str:
    return np.packbits(np.asarray(ok, dtype=bool)).tobytes().hex()


def _unbits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def history_record(run: Run) -> dict:
    """What the history keeps of a run: its summary plus packed per-sample outcomes for paired trends."""
    samples = config_hash([run.outcomes.indices.tolist(), run.outcomes.labels.tolist()])
    time = str(run.facts.get("finished") or run.facts.get("started") or "")
    outcomes = {"clean": _bits(run.outcomes.clean),
                "worst": [{"norm": norm, "eps": eps, "bits": _bits(ok)} for (norm, eps), ok in run.outcomes.worst.items()]}
    fingerprint = run.facts.get("fingerprint")
    identity = config_hash([fingerprint, outcomes] if fingerprint else [str(run.path.resolve()), run.facts, run.results])
    return {"schema": SCHEMA, "id": identity, "time": time, "model": run.model, "sha256": run.identity[1],
            "dataset": run.dataset, "n": run.n, "seed": run.facts.get("seed"),
            "suite": run.suite, "standard_eps": run.standard_eps, **run.verdict.to_dict(),
            "path": str(run.path.resolve()), "samples": samples, "clean": run.clean,
            "worst_case": run.results["worst_case"], "outcomes": outcomes}


def append_history(run_dir: Path, history_dir: Path) -> Path:
    """Add a finished run to the history folder as its own file, atomically; an evaluation already there is kept."""
    record = history_record(load_run(Path(run_dir)))
    folder = Path(history_dir) / "runs"
    known = sorted(folder.glob(f"[!.]*-{record['id']}.json"))
    if known and _parse_record(known[0])[1] is None:
        return known[0]
    stamp = re.sub(r"[^0-9T]", "", record["time"].split("+")[0])[:15] or "undated"
    path = known[0] if known else folder / f"{stamp}-{fmt.slug(record['model'])}-{record['id']}.json"
    atomic_write_json(path, record)  # a damaged copy of this very record is written again
    return path


RECORD_KEYS = ("id", "time", "model", "dataset", "suite", "n", "samples", "clean", "worst_case", "outcomes")


def load_history(history_dir: Path) -> list[dict]:
    """Every readable record in the history folder, oldest first (the index, rebuilt from the files on each read)."""
    folder = Path(history_dir) / "runs"
    if not folder.is_dir():
        raise RunFolderError(f"history folder {history_dir} holds no runs/ folder; add runs with "
                             f"`robustjpeg report RUN -o DIR --history {history_dir}`")
    records = [r for r in (_read_record(p) for p in sorted(folder.glob("[!.]*.json"))) if r is not None]
    return sorted(records, key=lambda r: (str(r["time"]), str(r["id"])))


def _read_record(path: Path) -> dict | None:
    """One history record, or None (with a warning naming the file) when it is unreadable or not a record."""
    record, problem = _parse_record(path)
    if problem is None:
        return record
    warnings.warn(RobustJpegWarning(f"history record {path} {problem}; skipped it: move it out of {path.parent} "
                                    "(or repair it) to silence this"), stacklevel=2)
    return None


def _parse_record(path: Path) -> tuple[dict | None, str | None]:
    """(record, None) for a readable record, (None, what is wrong) otherwise."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"is not valid JSON ({exc})"
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        return None, f"is not a {SCHEMA} record"
    missing = [k for k in RECORD_KEYS if k not in record]
    return (None, f"lacks the fields {missing}") if missing else (record, None)


def _groups(records: list[dict]) -> dict[str, list[dict]]:
    """Records per (model, data set, suite), labelled by the model name alone where that is unambiguous."""
    keys = {(r["model"], r["dataset"], r["suite"]) for r in records}
    models = [k[0] for k in keys]
    groups: dict[str, list[dict]] = {}
    for r in records:
        label = r["model"] if models.count(r["model"]) == 1 else f"{r['model']} [{r['dataset']}, {r['suite']}]"
        groups.setdefault(label, []).append(r)
    return groups


def _paired_rows(before: dict, after: dict) -> list[dict]:
    """Paired changes between two records of the same samples: clean, then each shared worst-case budget."""
    n = after["n"]
    rows = [{"scope": "clean", "attack": None, "norm": None, "eps": None,
             **paired_change(_unbits(before["outcomes"]["clean"], n), _unbits(after["outcomes"]["clean"], n))}]
    for cell in after["outcomes"]["worst"]:
        old = record_at(before["outcomes"]["worst"], cell["norm"], cell["eps"])
        if old is not None:
            rows.append({"scope": "worst case", "attack": None, "norm": cell["norm"], "eps": cell["eps"],
                         **paired_change(_unbits(old["bits"], n), _unbits(cell["bits"], n))})
    return rows


def find_regressions(records: list[dict], points: float = 0.0) -> list[dict]:
    """Significant drops (McNemar p < 0.05, more than `points`) between consecutive runs of each model."""
    found = []
    for label, group in _groups(records).items():
        for before, after in zip(group, group[1:]):
            if before["samples"] != after["samples"]:
                continue
            for row in significant(_paired_rows(before, after), -1, points):
                found.append({"model": label, "before": before["time"], "after": after["time"], "id": after["id"],
                              **row})
    return found


def _series(records: list[dict], regressions: list[dict]) -> dict[str, list[dict]]:
    """Trend points per model: clean and standard-budget robust accuracy, flagged where they regressed."""
    series = {}
    for label, group in _groups(records).items():
        points = []
        for r in group:
            eps = r.get("standard_eps")
            robust = record_at(r["worst_case"], "Linf", eps)
            mine = [g for g in regressions if g["id"] == r["id"]]
            flagged = {"clean" for g in mine if g["scope"] == "clean"}
            flagged |= {"robust" for g in mine if robust is not None and record_at([g], "Linf", eps) is not None}
            points.append({"time": r["time"], "clean": r["clean"], "robust": robust,
                           "robust_label": fmt.budget("Linf", eps) if robust else None, "regression": flagged})
        series[label] = points
    return series


def history_section(history_dir: Path, png: Path) -> str:
    """The report's History section: the trend plot (written to `png`) and the list of regressions."""
    from robustjpeg.report import plots

    records = load_history(history_dir)
    if not records:
        return f"## History\n\nThe history folder {Path(history_dir).name} holds no runs yet."
    regressions = find_regressions(records)
    plots.trend(_series(records, regressions), png)
    models = len(_groups(records))
    span = f"{fmt.when(records[0]['time'])} to {fmt.when(records[-1]['time'])}"
    parts = [f"## History\n\n{len(records)} runs of {models} model(s), {span}.",
             f"![Accuracy across runs]({png.name})"]
    if regressions:
        rows = [[g["model"], fmt.when(g["before"]), fmt.when(g["after"]), row_label(g), fmt.acc(g["a"]),
                 fmt.acc(g["b"]), fmt.points(g["delta"]), fmt.pvalue(g["p"])] for g in regressions]
        header = ["model", "previous run", "run", "budget", "before", "after", "change (points)", "McNemar p"]
        parts.append("### Regressions\n\nSignificant drops (exact McNemar test, p < 0.05) between consecutive runs "
                     "of a model on the same samples.\n\n" + fmt.table(header, rows))
    else:
        parts.append("### Regressions\n\nNone: no significant drop between consecutive runs of any model.")
    return "\n\n".join(parts)
