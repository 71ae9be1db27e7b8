"""Report figures: robust accuracy against budget, clean against robust bars, JPEG step tables, trends.

Figures are drawn on matplotlib's Agg canvas without pyplot, and seaborn styles are applied in a
context, so drawing a report changes no global plotting state.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, TwoSlopeNorm
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robustjpeg.report.runs import Run
from robustjpeg.utils import formatting as fmt

FAIL_RED = "#c0392b"


@contextmanager
def _figure(width: float, height: float):
    """A seaborn-styled, constrained-layout figure on the Agg canvas."""
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        yield fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor="white")
    return path


MARKERS, LINES = "osD^v<>p", ["-", "--", "-.", ":"]


def styles(labels: list[str]) -> dict[str, dict]:
    """One colour, marker and line style per model, the same in every figure, so overlapping curves stay apart."""
    import seaborn as sns

    colours = sns.color_palette("colorblind", max(len(labels), 1))
    return {label: {"color": colours[i], "marker": MARKERS[i % len(MARKERS)], "ls": LINES[i % len(LINES)]}
            for i, label in enumerate(labels)}


def _legend(fig: Figure, models: dict[str, dict]) -> None:
    """One legend under the panels naming every model, whether or not the first panel shows it."""
    handles = [Line2D([], [], ms=5, label=label, **style) for label, style in models.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles) or 1), frameon=False)


def _x(per_255: bool, eps: float) -> float:
    return eps * 255 if per_255 else eps


def _xlabel(norm: str, per_255: bool) -> str:
    name = r"$L_\infty$" if norm == "Linf" else r"$L_2$"
    return rf"budget $\varepsilon$ ({name}, in units of 1/255)" if per_255 else rf"budget $\varepsilon$ ({name})"


def _panels(runs: list[Run]) -> list[tuple[str, str, dict[str, list[dict]]]]:
    """(title, norm, {run label: records sorted by eps}) for each attack, then the worst case per norm."""
    attacks: dict[str, tuple[str, str]] = {}
    for run in runs:
        for cell in run.results["cells"]:
            attacks.setdefault(cell["attack"], (cell.get("kind", cell["attack"]), cell["norm"]))
    panels = []
    for name, (kind, norm) in attacks.items():
        title = name if kind == name else f"{name} ({kind})"
        series = {r.label: [c for c in r.results["cells"] if c["attack"] == name] for r in runs}
        panels.append((f"{title}, {norm}", norm, series))
    norms = dict.fromkeys(w["norm"] for r in runs for w in r.results["worst_case"])
    for norm in norms:
        series = {r.label: [w for w in r.results["worst_case"] if w["norm"] == norm] for r in runs}
        panels.append((f"worst case over attacks, {norm}", norm, series))
    return [(t, norm, {k: sorted(v, key=lambda c: c["eps"]) for k, v in s.items() if v}) for t, norm, s in panels]


def accuracy_curves(runs: list[Run], path: Path) -> Path:
    """Robust accuracy against budget with 95% bands: one panel per attack, then the worst case."""
    panels = _panels(runs)
    colours = styles([r.label for r in runs])
    ncols = 2 if len(panels) in (2, 4) else min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with _figure(4.3 * ncols, 3.3 * nrows + 0.8) as fig:
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=True)).ravel()
        for ax, (title, norm, series) in zip(axes, panels):
            _curve_panel(ax, title, norm, series, colours, {r.standard_eps for r in runs} - {None})
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        _legend(fig, colours)
        fig.suptitle(f"Robust accuracy against attack budget ({_data_line(runs)}); bands: 95% Wilson intervals")
        return _save(fig, path)


def suite_curves(models: dict[str, dict[str, list[dict]]], path: Path) -> Path:
    """Per model, its Linf worst case under each suite and over all of them: protocols side by side.

    models: {model: {series label: Linf worst-case records}}; a line per suite shows how much a weak protocol
    (such as the paper's 5-step PGD) overstates robustness against the strongest attacks.
    """
    labels = list(dict.fromkeys(label for series in models.values() for label in series))
    colours = styles(labels)
    ncols = min(3, len(models))
    nrows = math.ceil(len(models) / ncols)
    with _figure(4.3 * ncols, 3.3 * nrows + 0.8) as fig:
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=True)).ravel()
        for ax, (model, series) in zip(axes, models.items()):
            series = {k: sorted(v, key=lambda r: r["eps"]) for k, v in series.items()}
            _curve_panel(ax, model, "Linf", series, colours, set())
        for ax in axes[len(models):]:
            ax.set_visible(False)
        _legend(fig, colours)
        fig.suptitle("Worst case over each suite's attacks, per model (Linf); bands: 95% Wilson intervals")
        return _save(fig, path)


def _curve_panel(ax, title: str, norm: str, series: dict, colours: dict, standard: set[float]) -> None:
    budgets = sorted({r["eps"] for recs in series.values() for r in recs})
    per_255 = norm == "Linf" and all(fmt.written_per_255(e) for e in budgets if e > 0)
    for label, recs in series.items():
        xs = [_x(per_255, r["eps"]) for r in recs]
        ax.plot(xs, [100 * r["accuracy"] for r in recs], ms=5, label=label, **colours[label])
        ax.fill_between(xs, [100 * r["ci95"][0] for r in recs], [100 * r["ci95"][1] for r in recs],
                        color=colours[label]["color"], alpha=0.15, linewidth=0)
    if norm == "Linf":
        _budget_axis(ax, [_x(per_255, e) for e in budgets])
        for eps in standard:
            ax.axvline(_x(per_255, eps), color="0.4", ls=":", lw=1)
            ax.annotate("standard budget", (_x(per_255, eps), 101), fontsize=7, color="0.35", ha="right",
                        xytext=(-2, 0), textcoords="offset points", va="bottom")
    ax.set_title(title)
    ax.set_xlabel(_xlabel(norm, per_255))
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 108)
    ax.set_yticks(range(0, 101, 20))


def _budget_axis(ax, xs: list[float]) -> None:
    """Ticks at the grid's budgets; a grid spanning 16x or more gets a symlog axis so small budgets stay apart."""
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) >= 16:
        ax.set_xscale("symlog", linthresh=min(positive), linscale=0.6)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.minorticks_off()


def _data_line(runs: list[Run]) -> str:
    data = sorted({f"{r.dataset}, n={r.n}" for r in runs})
    return "; ".join(data)


def clean_vs_robust(runs: list[Run], path: Path) -> Path:
    """Grouped bars of clean and worst-case robust accuracy at each run's standard budget, with 95% intervals."""
    with _figure(max(5.0, 1.6 * len(runs) + 2.5), 4.2) as fig:
        ax = fig.subplots()
        width = 0.38
        for i, run in enumerate(runs):
            robust = run.robust_standard
            bars = [("clean", run.clean, "#9ecae1", -width / 2)]
            if robust is not None:
                bars.append(("robust", robust, "#08519c", width / 2))
            for name, rec, colour, dx in bars:
                hatch = "///" if name == "robust" and run.unreliable else None
                _bar(ax, i + dx, width, rec, colour, name if i == 0 else None, hatch)
        ax.set_xticks(range(len(runs)), [_bar_label(r) for r in runs])
        ax.grid(axis="x", visible=False)
        for tick, run in zip(ax.get_xticklabels(), runs):
            tick.set_color(FAIL_RED if run.unreliable else "black")
        ax.set_ylim(0, 108)
        ax.set_ylabel("accuracy (%)")
        eps = sorted({fmt.budget("Linf", r.standard_eps) for r in runs if r.standard_eps is not None})
        lines = [f"Clean and robust accuracy at {', '.join(eps) or 'the standard budget'}",
                 "robust = worst case over all attacks; error bars: 95% Wilson intervals"]
        lines += ["hatched: a sanity check failed, so the robust figure is unreliable"] if any(
            r.unreliable for r in runs) else []
        ax.set_title("\n".join(lines), fontsize=10)
        fig.legend(loc="outside lower center", ncol=2, frameon=False)
        return _save(fig, path)


def _bar(ax, x: float, width: float, rec: dict, colour: str, label: str | None, hatch: str | None) -> None:
    """One bar with its 95% interval and value; hatched when the figure cannot be trusted."""
    acc = 100 * rec["accuracy"]
    lo, hi = (100 * v for v in rec["ci95"])
    ax.bar(x, acc, width, color=colour, label=label, yerr=[[acc - lo], [hi - acc]], capsize=3, ecolor="0.25",
           hatch=hatch, edgecolor="white" if hatch else None)
    ax.annotate(fmt.pct(rec["accuracy"]), (x, hi), xytext=(0, 2), textcoords="offset points", ha="center",
                va="bottom", fontsize=8)


def _bar_label(run: Run, width: int = 18) -> str:
    """The model label wrapped at hyphens to fit under its bars, flagged when a check failed."""
    lines = [""]
    for part in re.split(r"(?<=-)", run.label):
        lines[-1:] = [lines[-1] + part] if len(lines[-1] + part) <= width or not lines[-1] else [lines[-1], part]
    text = "\n".join(lines)
    return f"{text}\n(unreliable: a check failed)" if run.unreliable else text


def jpeg_tables(run: Run, standard: np.ndarray, quality: int, whose: str, path: Path) -> Path:
    """Heat maps of the model's luma/chroma step tables (`whose`: learned, fixed), the standard ones, and the change."""
    tables = run.jpeg_tables
    rows = [("luma (Y)", np.asarray(tables["luma"], dtype=float), standard[0])]
    if tables.get("chroma") is not None:
        rows.append(("chroma (Cb, Cr)", np.asarray(tables["chroma"], dtype=float), standard[1]))
    steps = [t for _, mine, ref in rows for t in (mine, ref)]
    norm = LogNorm(vmin=max(min(t.min() for t in steps), 1e-3), vmax=max(t.max() for t in steps))
    reach = max(float(np.abs(mine - ref).max()) for _, mine, ref in rows) or 1.0
    change = TwoSlopeNorm(vcenter=0.0, vmin=-reach, vmax=reach)
    with _figure(13.5, 4.2 * len(rows) + 0.4) as fig:
        axes = fig.subplots(len(rows), 3, squeeze=False)
        for (name, mine, ref), (ax_mine, ax_ref, ax_diff) in zip(rows, axes):
            _heat(ax_mine, mine, f"{name}: {whose}", norm=norm, cmap="viridis")
            _heat(ax_ref, ref, f"{name}: standard JPEG, quality {quality}", norm=norm, cmap="viridis")
            _heat(ax_diff, mine - ref, f"{name}: {whose} minus standard", norm=change, cmap="RdBu_r")
        bar = fig.colorbar(axes[0, 0].collections[0], ax=axes[:, :2], shrink=0.7, label="quantisation step (log scale)")
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200) if norm.vmin <= t <= norm.vmax]
        bar.set_ticks(ticks, labels=[str(t) for t in ticks])
        bar.minorticks_off()
        fig.colorbar(axes[0, 2].collections[0], ax=axes[:, 2], shrink=0.7, label="change of step (red: coarser)")
        fig.suptitle(f"{run.label}: JPEG quantisation steps (larger step = coarser; DC at top left)")
        return _save(fig, path)


def _heat(ax, table: np.ndarray, title: str, **colour) -> None:
    import seaborn as sns

    sns.heatmap(table, ax=ax, annot=True, fmt=_annot_fmt(table), annot_kws={"fontsize": 7}, square=True, cbar=False,
                linewidths=0.4, linecolor="white", **colour)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("horizontal frequency u")
    ax.set_ylabel("vertical frequency v")
    ax.tick_params(axis="y", labelrotation=0)


def _annot_fmt(table: np.ndarray) -> str:
    """Whole tables as integers; others with 1 to 3 decimals, enough to show their largest entry to 2 digits."""
    if np.allclose(table, np.round(table)):
        return ".0f"
    largest = float(np.abs(table).max())
    return f".{min(3, max(1, 1 - math.floor(math.log10(largest))))}f"


def trend(series: dict[str, list[dict]], path: Path) -> Path:
    """Clean and robust accuracy per model across history runs; regressions circled in red.

    `series` maps a model label to its points {time, clean, robust, robust_label, regression} in time order.
    """
    colours = styles(list(series))
    with _figure(11.0, 4.4) as fig:
        axes = fig.subplots(1, 2, sharey=True)
        for ax, field, title in zip(axes, ("clean", "robust"), ("clean accuracy", "robust accuracy (worst case)")):
            for label, points in series.items():
                _trend_line(ax, label, [p for p in points if p.get(field)], field, colours[label])
            ax.set_title(title + ("" if field == "clean" else f" at {_robust_budgets(series)}"))
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(-3, 105)
            locator = AutoDateLocator(minticks=3, maxticks=7)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        _legend(fig, colours)
        fig.suptitle("Accuracy across runs (error bars: 95% Wilson intervals; red circles: significant drops)")
        return _save(fig, path)


def _trend_line(ax, label: str, points: list[dict], field: str, colour: dict) -> None:
    times = [datetime.fromisoformat(p["time"]) for p in points]
    accs = np.array([100 * p[field]["accuracy"] for p in points])
    lo = np.array([100 * p[field]["ci95"][0] for p in points])
    hi = np.array([100 * p[field]["ci95"][1] for p in points])
    ax.errorbar(times, accs, yerr=[accs - lo, hi - accs], ms=5, capsize=3, label=label, **colour)
    bad = [(t, a) for t, a, p in zip(times, accs, points) if field in p.get("regression", ())]
    if bad:
        ax.scatter(*zip(*bad), s=160, facecolors="none", edgecolors=FAIL_RED, linewidths=1.8, zorder=5)


def _robust_budgets(series: dict[str, list[dict]]) -> str:
    labels = sorted({p["robust_label"] for points in series.values() for p in points if p.get("robust_label")})
    return ", ".join(labels) or "the standard budget"
