"""The report's JPEG section: each JPEG model's steps against its start and the standard tables, and heat maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustjpeg.report import plots
from robustjpeg.report.runs import Run
from robustjpeg.utils import formatting as fmt

SOFT = 20.0  # alpha q^2 below this: a soft step, whose quantiser passes a gradient (hard steps mask it)


def _layer(run: Run) -> dict:
    return ((run.facts.get("model") or {}).get("spec") or {}).get("jpeg") or {}


def _tables_figure(run: Run, out: Path) -> str:
    from robustjpeg.models.codec import standard_tables

    layer = _layer(run)
    quality = int(layer.get("quality") or 50)
    whose = "learned" if layer.get("trainable", True) else "fixed (not trained)"
    name = f"jpeg-tables-{fmt.slug(run.label)}.png"
    plots.jpeg_tables(run, np.asarray(standard_tables(quality), dtype=float), quality, whose, out / name)
    return fmt.image(f"{run.label}: {whose} JPEG step tables beside the standard ones", name)


def _steps_table(runs: list[Run]) -> str:
    """Per JPEG model: its steps against the ones its training started from, and how many stay soft."""
    return (f"Steps at the start of training and as evaluated; a step is soft when alpha q^2 < {SOFT:g} (the soft "
            "quantiser's input gradient is not near zero), moved when it changed by more than 5%:\n\n"
            + fmt.table(["model", "tables", "median luma step, start", "median luma step, now", "largest change",
                         "steps moved", "soft steps, start -> now", "median alpha q^2"], [_steps_row(r) for r in runs]))


def _steps_row(run: Run) -> list[str]:
    layer, tables = _layer(run), run.jpeg_tables
    now = np.array([t for t in (tables["luma"], tables.get("chroma")) if t is not None], float)
    hard = step_hardness(now, layer)
    soft_now = f"{int((hard < SOFT).sum())} of {now.size}"
    start = (run.facts.get("model") or {}).get("jpeg_start_tables")
    if start is None:
        moved = ["n/a", "n/a", f"n/a -> {soft_now}"]
        first = "n/a"
    else:
        start = np.asarray(start, float)[: len(now)]
        change = np.abs(now - start)
        soft_start = int((step_hardness(start, layer) < SOFT).sum())
        moved = [f"{float(change.max()):.3g}", f"{int((change > 0.05 * start).sum())} of {now.size}",
                 f"{soft_start} -> {soft_now}"]
        first = f"{float(np.median(start[0])):.3g}"
    return [run.label, "learned" if layer.get("trainable", True) else "fixed", first,
            f"{float(np.median(now[0])):.3g}", *moved, f"{float(np.median(hard)):.3g}"]


def step_hardness(steps: np.ndarray, layer: dict) -> np.ndarray:
    """alpha q^2 per step: how hard the soft quantiser is there (the paper's hardness; alpha = h / q^2 when set)."""
    if layer.get("hardness") is not None:
        return np.full(steps.shape, float(layer["hardness"]))
    alpha = np.asarray(layer["alpha"], float)  # a layer's config always records its alpha: scalar, 8x8 or [T][8][8]
    return (alpha[: len(steps)] if alpha.ndim == 3 else alpha) * steps**2


def jpeg_section(runs: list[Run], out: Path) -> str:
    """'## JPEG step tables' for the runs of JPEG models (their figures written into out), or "" without any."""
    runs = [r for r in runs if r.jpeg_tables]
    if not runs:
        return ""
    return "## JPEG step tables\n\n" + "\n\n".join([_steps_table(runs)] + [_tables_figure(r, out) for r in runs])
