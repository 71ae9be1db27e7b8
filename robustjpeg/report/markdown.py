"""Turn finished run folders into report.md, its PNG figures and a RobustBench-style JSON per model."""

from __future__ import annotations

import os
import re
from functools import reduce
from pathlib import Path

import numpy as np

from robustjpeg.attacks.adapters import ATTACKS
from robustjpeg.evaluation.results import robust_record
from robustjpeg.evaluation.verdict import MASKING_CHECKS
from robustjpeg.report import plots
from robustjpeg.report.runs import Run, load_runs, model_labels, record_at, worst_case_verdict
from robustjpeg.report.tables import jpeg_section
from robustjpeg.utils import formatting as fmt
from robustjpeg.utils.io import atomic_write_json, atomic_write_text

CURVES, BARS, TREND = "accuracy-vs-budget.png", "clean-vs-robust.png", "trend.png"
SUITES = "worst-case-by-suite.png"


def write_report(run_dirs: list[Path], out: Path, history: Path | None = None) -> Path:
    """Write out/report.md with figures beside it and one RobustBench-style JSON per model; return report.md."""
    return render_report(load_runs([Path(p) for p in run_dirs]), out, history)


def render_report(runs: list[Run], out: Path, history: Path | None = None) -> Path:
    """write_report for runs already loaded (by load_runs, which labels them and gives each its verdict)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [_title(runs)]
    if runs:
        parts += _run_sections(runs, out)
    if history is not None:
        from robustjpeg.report.history import history_section

        parts.append(history_section(Path(history), out / TREND))
    report = out / "report.md"
    atomic_write_text(report, "\n\n".join(p for p in parts if p) + "\n")
    return report


def markdown_sections(runs: list[Run]) -> str:
    """The summary, accuracy-by-budget and sanity-check sections of report.md, without figures or files."""
    return "\n\n".join([_summary(runs), _by_budget(runs), _checks(runs)]) + "\n"


def _run_sections(runs: list[Run], out: Path) -> list[str]:
    plots.accuracy_curves(runs, out / CURVES)
    plots.clean_vs_robust(runs, out / BARS)
    files = [_write_robustbench(r, out) for r in runs]
    return [_warning(runs), _summary(runs), _across_seeds(runs), _across_suites(runs, out), fmt.image("Clean and robust accuracy", BARS),
            _by_budget(runs),
            fmt.image("Robust accuracy against budget", CURVES), _per_attack(runs), _checks(runs),
            jpeg_section(runs, out), _facts(runs, out), _files(files)]


def _title(runs: list[Run]) -> str:
    if not runs:
        return "# Robustness report"
    models = ", ".join(r.label for r in runs)
    data = "; ".join(sorted({f"{r.dataset} (n={r.n}, seed {r.facts.get('seed', '?')})" for r in runs}))
    suites = ", ".join(sorted({r.suite for r in runs}))
    return (f"# Robustness report\n\nModels: {models}  \nData: {data}  \nAttack suite: {suites}\n\n"
            "Accuracies are in %, with 95% Wilson intervals in brackets. A sample counts as robust at a budget "
            "only if every attack in the suite failed on it. Every number below is read from the runs' result files.")


def _warning(runs: list[Run]) -> str:
    bad = [r.label for r in runs if r.verdict.status == "unreliable"]
    over = [r.label for r in runs if r.verdict.status == "overstated"]
    lines = []
    if bad:
        lines.append(f"> **Unreliable:** {', '.join(bad)}: a sanity check of the evaluation itself FAILED (see "
                     "[Sanity checks](#sanity-checks)), so the robust accuracies of these runs cannot be trusted.")
    if over:
        lines.append(f"> **Overstated:** {', '.join(over)}: a masking check FAILED in this run or in another run of "
                     "the same model, so the per-attack figures overstate its robustness; read the worst case over "
                     "every suite instead.")
    return "\n>\n".join(lines)


def _check_summary(run: Run) -> str:
    counts = {s: sum(c.get("status") == s for c in run.checks) for s in ("PASS", "WARN", "FAIL", "SKIP")}
    text = ", ".join(f"{k} {s}" for s, k in counts.items() if k) or "no checks recorded"
    status = run.verdict.status
    return f"{status} ({text})" if status == "reliable" else f"**{status}** ({text}; {run.verdict.reason})"


def _summary(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        robust = run.robust_standard
        rows.append([run.label, run.dataset, str(run.n), fmt.acc(run.clean),
                     fmt.budget("Linf", run.standard_eps) if run.standard_eps is not None else "—",
                     fmt.acc(robust, run.n) if robust else "—", _check_summary(run)])
    header = ["model", "data", "n", "clean", "standard budget", "robust at standard budget", "sanity checks"]
    return "## Summary\n\n" + fmt.table(header, rows)


def shared_samples(runs: list[Run]) -> np.ndarray:
    """The test-set indices that every run evaluated (runs of one model may use nested subsets of different n)."""
    return reduce(np.intersect1d, [r.outcomes.indices for r in runs])


def combined_worst_case(runs: list[Run]) -> dict[tuple[str, float], dict]:
    """Per budget, the per-sample AND of the worst cases of runs of one model (all suites), on their shared samples."""
    common = shared_samples(runs)
    combined: dict[tuple[str, float], np.ndarray] = {}
    for run in runs:
        keep = np.isin(run.outcomes.indices, common)
        for (norm, eps), ok in run.outcomes.worst.items():
            key = next((k for k in combined if k[0] == norm and np.isclose(k[1], eps)), (norm, float(eps)))
            combined[key] = combined[key] & ok[keep] if key in combined else ok[keep].copy()
    return {key: {**robust_record(ok), "suites": sum(r.worst_at(*key) is not None for r in runs)}
            for key, ok in combined.items()}


def _suite_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs of each model (by identity, labelled) that was swept with several suites sharing samples."""
    labels, groups = model_labels(runs), {}
    for run in runs:
        groups.setdefault(labels[run.identity], []).append(run)
    return {m: g for m, g in groups.items() if len(g) > 1 and len(shared_samples(g)) > 0}


def _across_suites(runs: list[Run], out: Path) -> str:
    """For models swept with several suites: the worst case over every attack of every suite, on shared samples."""
    groups = _suite_groups(runs)
    parts, curves = [], {}
    for model, group in groups.items():
        n = len(shared_samples(group))
        combined = combined_worst_case(group)
        rows = [[fmt.budget(norm, eps), fmt.acc(rec, n), f"{rec['suites']} of {len(group)}"]
                for (norm, eps), rec in sorted(combined.items(), key=lambda kv: (kv[0][0] != "Linf", kv[0]))]
        verdict = worst_case_verdict(group)
        parts.append(f"### {model}: {', '.join(r.suite for r in group)} (n = {n})\n\n"
                     f"Verdict: **{verdict.status}** ({verdict.reason}).\n\n"
                     + fmt.table(["budget", "robust (worst over all suites)", "suites with this budget"], rows))
        curves[model] = {**{f"{r.suite} (n = {r.n})": [w for w in r.results["worst_case"] if w["norm"] == "Linf"]
                            for r in group},
                         f"every suite (n = {n})": [{"eps": eps, **rec} for (norm, eps), rec in combined.items()
                                                    if norm == "Linf"]}
    if not parts:
        return ""
    plots.suite_curves(curves, out / SUITES)
    return ("## Worst case over every suite\n\nA sample counts as robust only if no attack of any suite broke it. "
            "Runs of different sizes are combined on the samples they all evaluated (n below).\n\n"
            + "\n\n".join(parts) + "\n\n" + fmt.image("Worst case per suite and over every suite", SUITES))


SEED_NAME = re.compile(r"(?P<model>.+)-s(?P<seed>\d+)")  # bench names a seeded model NAME-sSEED


def _across_seeds(runs: list[Run]) -> str:
    """Models trained with several seeds (NAME-s0, NAME-s1, ...): mean and seed range of clean and worst case."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        match = SEED_NAME.fullmatch(run.model)
        if match:
            groups.setdefault((match["model"], run.suite), []).append(run)
    groups = {key: group for key, group in groups.items() if len(group) > 1}
    if not groups:
        return ""
    keys = _budgets([w for g in groups.values() for r in g for w in r.results["worst_case"] if w["norm"] == "Linf"])
    rows = []
    for (model, suite), group in groups.items():
        records = [[r.clean for r in group]] + [[r.worst_at(norm, eps) for r in group] for norm, eps in keys]
        rows.append([model, suite, str(len(group))] + [_spread(recs) for recs in records])
    header = ["model", "suite", "seeds", "clean"] + [fmt.budget(norm, eps) for norm, eps in keys]
    return ("## Across seeds\n\nMean accuracy over the seeds (worst case over the suite's attacks), with the lowest "
            "and highest seed in brackets: the spread that training noise alone gives.\n\n" + fmt.table(header, rows))


def _spread(records: list[dict | None]) -> str:
    if any(r is None for r in records):
        return "—"
    values = [r["accuracy"] for r in records]
    return f"{fmt.pct(sum(values) / len(values))} [{fmt.pct(min(values))}, {fmt.pct(max(values))}]"


def _budgets(records: list[dict]) -> list[tuple[str, float]]:
    """Distinct (norm, eps) pairs in first-seen norm order, budgets ascending within a norm."""
    keys: list[tuple[str, float]] = []
    for rec in records:
        if record_at([{"norm": k[0], "eps": k[1]} for k in keys], rec["norm"], rec["eps"]) is None:
            keys.append((rec["norm"], float(rec["eps"])))
    norms = list(dict.fromkeys(k[0] for k in keys))
    return sorted(keys, key=lambda k: (norms.index(k[0]), k[1]))


def _grid(runs: list[Run], records_of, rows: list[list[str]] | None = None) -> str:
    """Budgets as rows (after any given rows), models as columns; records_of(run) gives this table's records."""
    keys = _budgets([rec for run in runs for rec in records_of(run)])
    rows = list(rows or [])
    for norm, eps in keys:
        found = [record_at(records_of(run), norm, eps) for run in runs]
        rows.append([fmt.budget(norm, eps)] + [fmt.acc(rec, run.n) if rec else "—" for rec, run in zip(found, runs)])
    return fmt.table(["budget"] + [f"{r.label} (n={r.n})" for r in runs], rows)


def _by_budget(runs: list[Run]) -> str:
    clean = [["clean"] + [fmt.acc(r.clean) for r in runs]]
    table = _grid(runs, lambda r: r.results["worst_case"], clean)
    return "## Robust accuracy by budget (worst case over attacks)\n\n" + table


def _per_attack(runs: list[Run]) -> str:
    names = list(dict.fromkeys(c["attack"] for r in runs for c in r.results["cells"]))
    parts = ["## Robust accuracy per attack"]
    cascaded = [r.label for r in runs if r.results.get("cascade")]
    if cascaded:
        parts.append(f"Cascade ({', '.join(cascaded)}): each fixed-budget attack ran only on the samples every attack "
                     "above it (of its norm) failed on at that budget, so its figure is the robust accuracy after it and "
                     "every attack above it; the worst case is the same as without cascade. Minimum-norm attacks ran first, on "
                     "every sample; a fixed-budget figure also counts what they broke within its budget.")
    for name in names:
        cells = [c for r in runs for c in r.results["cells"] if c["attack"] == name]
        kind = cells[0].get("kind", name)
        title = name if kind == name else f"{name} (attack `{kind}`)"
        parts.append(f"### {title}\n\n" + _grid(runs, lambda r: [c for c in r.results["cells"] if c["attack"] == name]))  # noqa: B023
    skipped = [f"- {r.label}: `{s.get('attack')}` was not run: {s.get('reason', 'no reason given')}"
               for r in runs for s in r.results.get("skipped", [])]
    if skipped:
        parts.append("### Attacks not run\n\n" + "\n".join(skipped))
    return "\n\n".join(parts)


def _checks(runs: list[Run]) -> str:
    parts = ["## Sanity checks\n\nA FAIL of a check of the evaluation itself marks a run unreliable; a FAIL of a "
             f"masking check ({', '.join(sorted(MASKING_CHECKS))}) marks every run of that model overstated, and its "
             "worst case over every suite is trusted only if an adaptive attack ran. Invariants are properties the "
             "code guarantees; a broken one marks the run unreliable."]
    for run in runs:
        rows = [[str(c.get("id", "")), c.get("name", ""), _status(c.get("status", "?")), fmt.number(c.get("value")),
                 str(c.get("detail", ""))] for c in run.checks]
        rows += [[str(c.get("id", "")), f"{c.get('name', '')} (invariant)", "held" if c.get("held") else "**BROKEN**",
                  fmt.number(c.get("value")), str(c.get("detail", ""))] for c in run.results.get("invariants", [])]
        parts.append(f"### {run.label}: {_check_summary(run)}\n\n"
                     + fmt.table(["#", "check", "status", "measured", "reason"], rows)
                     + _optimality_table(run))
    return "\n\n".join(parts)


def _optimality_table(run: Run) -> str:
    """Each minimum-norm attack against the best of all attacks (check 17), when the run has any."""
    records = run.results.get("optimality", [])
    if not records:
        return ""
    rows = [[r["attack"], r["norm"], fmt.number(r["optimality"]), fmt.pct(r["found"]),
             fmt.number(r.get("median_distance"))] for r in records]
    return ("\n\nMinimum-norm attacks against the per-sample best of all attacks (AttackBench optimality: area under "
            "the best-of-all robust-accuracy curve over the attack's own, 1 = the best; up to each norm's largest "
            "budget):\n\n" + fmt.table(["attack", "norm", "optimality", "found (%)", "median distance"], rows))


def _status(status: str) -> str:
    return f"**{status}**" if status == "FAIL" else status


def _facts(runs: list[Run], out: Path) -> str:
    rows = [["run folder"] + [os.path.relpath(r.path.resolve(), out.resolve()) for r in runs],
            ["data"] + [f"{r.dataset}, n={r.n}" for r in runs],
            ["attack suite"] + [r.suite for r in runs],
            ["seed"] + [str(r.facts.get("seed", "n/a")) for r in runs],
            ["device"] + [str(r.facts.get("device", "n/a")) for r in runs],
            ["wall time"] + [fmt.seconds(r.facts.get("wall_time_s")) for r in runs],
            ["forward passes"] + [fmt.count((r.facts.get("passes") or {}).get("forward")) for r in runs],
            ["backward passes"] + [fmt.count((r.facts.get("passes") or {}).get("backward")) for r in runs],
            ["started"] + [fmt.when(r.facts.get("started")) for r in runs],
            ["finished"] + [fmt.when(r.facts.get("finished")) for r in runs],
            ["checkpoint sha256"] + [str((r.facts.get("model") or {}).get("sha256", "n/a"))[:16] for r in runs]]
    libraries = list(dict.fromkeys(k for r in runs for k in (r.facts.get("versions") or {})))
    rows += [[lib] + [str((r.facts.get("versions") or {}).get(lib, "n/a")) for r in runs] for lib in libraries]
    return "## Run facts\n\n" + fmt.table([""] + [r.label for r in runs], rows)


def _official_autoattack(kind: str | None) -> bool:
    """Whether a cell's attack is the official AutoAttack (pyautoattack; torchattacks' 10-step copy is not), as its
    adapter class declares."""
    return kind in ATTACKS and ATTACKS.get(kind).official_autoattack


def robustbench_entry(run: Run) -> dict:
    """RobustBench-style model card: percentages as strings with two decimals, plus our reliability fields."""
    entry = {"name": run.label, "model": run.model, "dataset": run.dataset, "threat_model": "Linf",
             "eps": fmt.eps_text("Linf", run.standard_eps) if run.standard_eps is not None else None,
             **_card_accuracy("clean_acc", run.clean), "n": run.n, "suite": run.suite, "seed": run.facts.get("seed"),
             **run.verdict.to_dict()}
    if run.robust_standard is not None:
        entry.update(_card_accuracy("robust_acc", run.robust_standard))
    auto = record_at([c for c in run.results["cells"] if _official_autoattack(c.get("kind"))], "Linf", run.standard_eps)
    if auto is not None:
        entry.update(_card_accuracy("autoattack_acc", auto))
    return entry


def _card_accuracy(name: str, record: dict) -> dict:
    return {name: fmt.pct(record["accuracy"], 2), f"{name}_ci95": [fmt.pct(v, 2) for v in record["ci95"]]}


def _write_robustbench(run: Run, out: Path) -> str:
    name = f"{fmt.slug(run.label)}.json"
    atomic_write_json(out / name, robustbench_entry(run))
    return name


def _files(names: list[str]) -> str:
    links = ", ".join(f"[{n}]({n})" for n in names)
    return f"## Files\n\nRobustBench-style summary per model: {links}"
