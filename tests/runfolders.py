"""Write run folders laid out exactly as the sweep engine writes them, from per-sample outcomes built here.

Each sample gets a robustness radius; an attack with strength s breaks it at every budget above s * radius,
so the outcomes behave like a real sweep's (monotone in the budget, worst case = all attacks failed).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from robustjpeg.evaluation.checks import CHECKS
from robustjpeg.evaluation.results import CellKey, robust_record, worst_case, write_results, write_run, write_samples

LINF = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
L2 = [0.0, 0.25, 0.5, 1.0]
# name, registry kind, norm, how far the attack pushes compared with the sample's radius (bigger = weaker)
ATTACKS = [("fgsm", "fgsm", "Linf", 1.4), ("pgd", "pgd", "Linf", 1.0), ("square", "square", "Linf", 1.2),
           ("ddn", "ddn", "L2", 1.0)]
L2_PER_LINF = 40.0  # a sample's L2 radius relative to its Linf radius
CHECK_NAMES = {number: check.__name__ for number, check in sorted(CHECKS.items())}


def make_run(path: Path, model: str = "resnet20", *, n: int = 300, scale: float = 3 / 255, clean_rate: float = 0.8,
             sample_seed: int = 0, jitter_seed: int | None = None, attacks=ATTACKS, fail: dict | None = None,
             jpeg: bool = False, dataset: str = "cifar10", index_seed: int = 7,
             finished: str = "2026-11-26T12:01:24+00:00") -> Path:
    """Write run.json, results.json and samples.npz, through the sweep's own writers, for a synthetic sweep."""
    rng = np.random.default_rng(sample_seed)
    clean = rng.random(n) < clean_rate
    radius = rng.exponential(scale, n)
    if jitter_seed is not None:
        radius = radius * np.random.default_rng(jitter_seed).lognormal(0.0, 0.05, n)
    robust, where = {}, {}
    for name, kind, norm, strength in attacks:
        grid, unit = (LINF, 1.0) if norm == "Linf" else (L2, L2_PER_LINF)
        for eps in grid:
            key = str(CellKey(name, norm, eps))
            robust[key] = clean & (radius * unit * strength > eps) if eps > 0 else clean.copy()
            where[key] = (name, kind, norm, eps)
    worst = worst_case(robust, {key: (norm, eps) for key, (_, _, norm, eps) in where.items()})
    checks = _checks({6: _iterative_check(robust, where), **(fail or {})})
    write_results(path, _results(model, dataset, n, clean, robust, where, worst, checks))
    write_run(path, {**_facts(model, dataset, n, jpeg), "finished": finished})
    indices = np.sort(np.random.default_rng(index_seed).choice(10000, n, replace=False))
    write_samples(path, indices=indices, labels=np.arange(n) % 10, clean_correct=clean, cells=robust, worst=worst,
                  distances={"ddn|L2": np.where(clean, radius * L2_PER_LINF, 0.0)})
    return path


def _results(model, dataset, n, clean, robust, where, worst, checks) -> dict:
    clean_rec = robust_record(clean)
    cells = [{"attack": a, "kind": k, "norm": norm, "eps": eps, **robust_record(robust[key])}
             for key, (a, k, norm, eps) in where.items()]
    return {"model": model, "dataset": dataset, "n": n, "suite": "quick", "standard_eps": 8 / 255, "eps": LINF,
            "l2_eps": L2, "clean": {"correct": clean_rec.pop("robust"), **clean_rec}, "cells": cells,
            "worst_case": [{"norm": norm, "eps": eps, **robust_record(ok)} for (norm, eps), ok in worst.items()],
            "skipped": [{"attack": "transfer", "reason": "no transfer source model (pass --transfer-from CKPT)"}],
            "checks": checks}


def _iterative_check(robust: dict, where: dict) -> tuple:
    """Check 6 measured on the outcomes: how far PGD accuracy rises above FGSM's at any budget."""
    acc = {(where[key][0], where[key][3]): ok.mean() for key, ok in robust.items()}
    gap = max((acc[("pgd", eps)] - acc[("fgsm", eps)] for (a, eps) in acc if a == "pgd" and ("fgsm", eps) in acc),
              default=0.0)
    if gap > 0.01:
        return "FAIL", float(gap), f"PGD above FGSM by {100 * gap:.1f} points: gradients look masked"
    return "PASS", float(gap), "PGD at or below FGSM at every budget"


def _checks(fail: dict) -> list[dict]:
    out = []
    for i, name in CHECK_NAMES.items():
        status, value, detail = fail.get(i, ("PASS", 0.0, "within tolerance"))
        out.append({"id": i, "name": name, "status": status, "value": value, "detail": detail})
    return out


def _facts(model: str, dataset: str, n: int, jpeg: bool) -> dict:
    spec = {"arch": "resnet20", "num_classes": 10, "in_channels": 3,
            "jpeg": {"quality": 50, "alpha": 5.0, "trainable": True} if jpeg else None}
    info = {"name": model, "spec": spec, "checkpoint": f"{model}/checkpoint.pt", "sha256": "ab" * 32}
    if jpeg:
        i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
        info["jpeg_tables"] = {"luma": (2.0 + 2.5 * (i + j) + np.sin(i * j)).round(2).tolist(),
                               "chroma": (6.0 + 4.0 * np.maximum(i, j)).round(2).tolist()}
    return {"schema": "robustjpeg.run/1", "status": "complete",
            "suite": {"name": "quick", "norm": "Linf", "eps": LINF, "standard_eps": 8 / 255},
            "model": info, "dataset": dataset, "n": n, "seed": 0,
            "versions": {"python": "3.11.2", "torch": "2.4.1", "torchattacks": "3.5.1", "robustjpeg": "0.1.0"},
            "device": "cpu (x86_64, 2 cores)", "wall_time_s": 84.2, "passes": {"forward": 12000, "backward": 9000},
            "started": "2026-11-26T12:00:00+00:00", "finished": "2026-11-26T12:01:24+00:00"}


def markdown_tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(nearest heading above, header cells, body rows) for every pipe table in a Markdown text."""
    tables, heading, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[\s\-|:]+\|", lines[i + 1]):
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append(_cells(lines[j]))
                j += 1
            tables.append((heading, _cells(lines[i]), rows))
            i = j
            continue
        i += 1
    return tables


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def parse_accuracy(cell: str) -> tuple[float, float, float]:
    """'41.2 [38.1, 44.3]' -> (41.2, 38.1, 44.3)."""
    m = re.match(r"(-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\]", cell)
    assert m, f"not an accuracy with interval: {cell!r}"
    return tuple(float(g) for g in m.groups())


def assert_real_png(path: Path) -> None:
    """The file is a PNG that decodes and shows a picture, not a blank canvas."""
    assert path.is_file(), f"{path} is missing"
    with Image.open(path) as img:
        assert img.format == "PNG", f"{path} is {img.format}, not PNG"
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.2f})"
    assert (pixels < 200).mean() > 0.01, f"{path} is almost all white"
