"""Summarise <label>-baseline / <label>-jpeg training runs: images/s, test accuracy, JPEG step-time overhead."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def images_per_second(run: Path) -> float:
    """Median training throughput over the epochs after the first (which pays for warm-up and compilation)."""
    rates = [json.loads(line)["images_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[1:] or rates)


def describe(run: Path) -> tuple[float, str]:
    summary = json.loads((run / "summary.json").read_text())
    test = summary["test"]
    lo, hi = test["ci95"]
    rate = images_per_second(run)
    line = (f"{run.name:<22} {summary['device']:<28} {rate:>10.0f} img/s   test acc {test['accuracy']:.4f} "
            f"(n={test['n']}, 95% CI {lo:.4f}-{hi:.4f})   {summary['wall_time_s']:.0f}s")
    return rate, line


def main(out: Path) -> int:
    labels = sorted({p.name.rsplit("-", 1)[0] for p in out.glob("*-baseline") if (p / "summary.json").is_file()})
    if not labels:
        print(f"no finished <label>-baseline runs under {out}", file=sys.stderr)
        return 1
    for label in labels:
        base_rate, base_line = describe(out / f"{label}-baseline")
        print(base_line)
        jpeg = out / f"{label}-jpeg"
        if not (jpeg / "summary.json").is_file():
            print(f"{jpeg.name}: no finished run")
            continue
        rate, line = describe(jpeg)
        print(line)
        overhead = base_rate / rate - 1
        verdict = "within" if overhead <= 0.05 else "over"
        print(f"{label}: JPEG-DL step time vs baseline {1 + overhead:.3f}x ({overhead:+.1%}; {verdict} the 5% goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu_train")))
