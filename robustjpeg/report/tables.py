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
    rows = []
    for run in runs:
        now = np.array([t for t in (run.jpeg_tables["luma"], run.jpeg_tables.get("chroma")) if t is not None], float)
        start = (run.facts.get("model") or {}).get("jpeg_start_tables")
        start = np.asarray(start, float)[: len(now)] if start is not None else None
        hard = step_hardness(now, _layer(run))
        moved = "n/a" if start is None else f"{float(np.abs(now - start).max()):.3g}"
        share = "n/a" if start is None else f"{int((np.abs(now - start) > 0.05 * start).sum())} of {now.size}"
        soft_start = "n/a" if start is None else str(int((step_hardness(start, _layer(run)) < SOFT).sum()))
        rows.append([run.label, "learned" if _layer(run).get("trainable", True) else "fixed",
                     "n/a" if start is None else f"{float(np.median(start[0])):.3g}", f"{float(np.median(now[0])):.3g}",
                     moved, share, f"{soft_start} -> {int((hard < SOFT).sum())} of {now.size}",
                     f"{float(np.median(hard)):.3g}"])
    return (f"Steps at the start of training and as evaluated; a step is soft when alpha q^2 < {SOFT:g} (the soft "
            "quantiser's input gradient is not near zero), moved when it changed by more than 5%:\n\n"
            + fmt.table(["model", "tables", "median luma step, start", "median luma step, now", "largest change",
                         "steps moved", "soft steps, start -> now", "median alpha q^2"], rows))



def step_hardness(steps: np.ndarray, layer: dict) -> np.ndarray:
    """alpha q^2 per step: how hard the soft quantiser is there (the paper's hardness; alpha = h / q^2 when set)."""
    if layer.get("hardness") is not None:
        return np.full(steps.shape, float(layer["hardness"]))
    alpha = np.asarray(layer.get("alpha", 5.0) if layer.get("alpha") is not None else 5.0, float)
    alpha = alpha[: len(steps)] if alpha.ndim == 3 else alpha
    return alpha * steps**2



def jpeg_section(runs: list[Run], out: Path) -> str:
    """'## JPEG step tables' for the runs of JPEG models (their figures written into out), or "" without any."""
    runs = [r for r in runs if r.jpeg_tables]
    if not runs:
        return ""
    return "## JPEG step tables\n\n" + "\n\n".join([_steps_table(runs)] + [_tables_figure(r, out) for r in runs])
