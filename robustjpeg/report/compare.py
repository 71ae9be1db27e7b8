"""Paired comparison of two runs on the same samples: accuracy change, its interval and an exact McNemar test."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from robustjpeg.errors import RunFolderError
from robustjpeg.report.runs import Run, find, load_run
from robustjpeg.utils import formatting as fmt
from robustjpeg.utils.io import atomic_write_json, atomic_write_text
from robustjpeg.utils.stats import accuracy_record, mcnemar_exact, wilson

ALPHA = 0.05
GATED = ("clean", "worst case")  # the rows a regression gate looks at; single attacks only inform


def paired_change(a: np.ndarray, b: np.ndarray) -> dict:
    """Change from A to B in the share of samples kept correct: Newcombe's paired 95% interval and McNemar's p."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = a.size
    both, a_only, b_only = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    neither = n - both - a_only - b_only
    rec_a, rec_b = accuracy_record(both + a_only, n), accuracy_record(both + b_only, n)
    delta = rec_b["accuracy"] - rec_a["accuracy"]
    return {"n": n, "a": rec_a, "b": rec_b, "delta": delta, "ci95": _newcombe(both, a_only, b_only, neither),
            "a_only": a_only, "b_only": b_only, "p": mcnemar_exact(a_only, b_only)}


def _newcombe(both: int, a_only: int, b_only: int, neither: int) -> list[float]:
    """Newcombe's (1998, method 10) interval for the paired difference B - A, built from Wilson intervals."""
    n = both + a_only + b_only + neither
    k_a, k_b = both + a_only, both + b_only
    p_a, p_b = k_a / n, k_b / n
    (l_a, u_a), (l_b, u_b) = wilson(k_a, n), wilson(k_b, n)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = (both * neither - a_only * b_only) / math.sqrt(margins) if margins else 0.0
    down = math.sqrt(max(0.0, (p_b - l_b) ** 2 - 2 * phi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2))
    up = math.sqrt(max(0.0, (u_b - p_b) ** 2 - 2 * phi * (u_b - p_b) * (p_a - l_a) + (p_a - l_a) ** 2))
    delta = p_b - p_a
    return [max(-1.0, delta - down), min(1.0, delta + up)]


def same_samples(a: Run, b: Run) -> None:
    """Refuse to pair runs that did not evaluate the very same samples."""
    facts = [f"{r.dataset}, n={r.n}, seed {r.facts.get('seed', '?')}" for r in (a, b)]
    same = (a.dataset == b.dataset and a.n == b.n
            and np.array_equal(a.outcomes.indices, b.outcomes.indices)
            and np.array_equal(a.outcomes.labels, b.outcomes.labels))
    if not same:
        raise RunFolderError(f"{a.path} and {b.path} were evaluated on different samples ({facts[0]} vs {facts[1]}); "
                             "a paired comparison needs the same data set, -n and --seed: rerun one of them")


def compare_runs(run_a: Path, run_b: Path) -> dict:
    """Pair two runs sample by sample at every budget both ran; the dict is what compare.json holds."""
    a, b = load_run(run_a), load_run(run_b)
    same_samples(a, b)
    rows = [{"scope": "clean", "attack": None, "norm": None, "eps": None,
             **paired_change(a.outcomes.clean, b.outcomes.clean)}]
    for (norm, eps), ok in a.outcomes.worst.items():
        other = find(b.outcomes.worst, norm, eps)
        if other is not None:
            rows.append({"scope": "worst case", "attack": None, "norm": norm, "eps": eps, **paired_change(ok, other)})
    for (attack, norm, eps), ok in a.outcomes.cells.items():
        other = find(b.outcomes.cells, attack, norm, eps)
        if other is not None:
            rows.append({"scope": "attack", "attack": attack, "norm": norm, "eps": eps, **paired_change(ok, other)})
    if len(rows) == 1:
        raise RunFolderError(f"{a.path} and {b.path} share no attack budget; run both with the same suite and --eps")
    side = {"a": a, "b": b}
    return {"schema": "robustjpeg.compare/1", "dataset": a.dataset, "n": a.n, "alpha": ALPHA,
            **{k: {"path": str(r.path), "model": r.model, "suite": r.suite, **r.verdict.to_dict()}
               for k, r in side.items()},
            "rows": rows, "verdict": verdict(rows)}


def row_label(row: dict) -> str:
    """'clean', 'Linf 8/255' or 'pgd Linf 8/255'."""
    if row["scope"] == "clean":
        return "clean"
    text = fmt.budget(row["norm"], row["eps"])
    return text if row["attack"] is None else f"{row['attack']} {text}"


def significant(rows: list[dict], sign: int, points: float = 0.0) -> list[dict]:
    """Gated rows that moved in direction sign (-1 drop, +1 gain) by more than `points` with p < ALPHA."""
    return [r for r in rows if r["scope"] in GATED and sign * 100 * r["delta"] > points and r["p"] < ALPHA]


def regressions(result: dict, points: float) -> list[dict]:
    """Drops of more than `points` percentage points in clean or worst-case accuracy that are significant."""
    return significant(result["rows"], -1, points)


def verdict(rows: list[dict]) -> str:
    """One line: where B is significantly worse or better than A, or that nothing changed significantly."""
    parts = []
    for sign, word in ((-1, "worse"), (1, "better")):
        moved = significant(rows, sign)
        if moved:
            where = ", ".join(f"{row_label(r)} ({fmt.points(r['delta'])} points, p={fmt.pvalue(r['p'])})"
                              for r in moved)
            parts.append(f"B is significantly {word} than A at {where}")
    return "; ".join(parts) + "." if parts else f"No significant change (McNemar p >= {ALPHA} at every budget)."


def render(result: dict) -> str:
    """compare.md: the two runs, the verdict, then one paired table for clean/worst case and one per attack."""
    a, b = result["a"], result["b"]
    header = ["budget", "A", "B", "change B - A [95% CI]", "only A right", "only B right", "McNemar p"]
    parts = [f"# Paired comparison\n\nA: {a['model']} ({a['path']})  \nB: {b['model']} ({b['path']})  \n"
             f"Samples: {result['dataset']}, n={result['n']}, the same for both runs.\n\n"
             f"**Verdict:** {result['verdict']}"]
    for title, scopes in (("Clean and worst case over attacks", GATED), ("Per attack", ("attack",))):
        rows = [_render_row(r) for r in result["rows"] if r["scope"] in scopes]
        if rows:
            parts.append(f"## {title}\n\n" + fmt.table(header, rows))
    flags = [f"{s['model']} ({k.upper()}): {s['verdict']}, {s['verdict_reason']}" for k, s in (("a", a), ("b", b))
             if s["unreliable"]]
    if flags:
        parts.append(f"> **Not reliable:** {'; '.join(flags)}. Read these numbers with care.")
    return "\n\n".join(parts) + "\n"


def _render_row(row: dict) -> list[str]:
    lo, hi = row["ci95"]
    change = f"{fmt.points(row['delta'])} [{fmt.points(lo)}, {fmt.points(hi)}]"
    return [row_label(row), fmt.acc(row["a"]), fmt.acc(row["b"]), change, str(row["a_only"]), str(row["b_only"]),
            fmt.pvalue(row["p"])]


def write_compare(result: dict, out: Path) -> Path:
    """Write out/compare.md and out/compare.json; return the Markdown file."""
    out = Path(out)
    atomic_write_json(out / "compare.json", result)
    atomic_write_text(out / "compare.md", render(result))
    return out / "compare.md"
