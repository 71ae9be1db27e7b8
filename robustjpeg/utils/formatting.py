"""The one place that turns stored numbers into text, so every report, table and plot label agrees."""

from __future__ import annotations

import math
import re

DIGITS = 1  # percentage points shown in tables: 0.1 points resolves n = 1000


def pct(x: float, digits: int = DIGITS) -> str:
    """Fraction in [0, 1] -> percent text ('0.412' -> '41.2'); NaN -> 'n/a'."""
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}"


def acc(record: dict, n: int | None = None) -> str:
    """Accuracy record -> '41.2 [38.1, 44.3]', adding '(n=…)' when its n differs from the run's n."""
    lo, hi = record["ci95"]
    text = f"{pct(record['accuracy'])} [{pct(lo)}, {pct(hi)}]"
    return text if n is None or int(record["n"]) == n else f"{text} (n={record['n']})"


def points(delta: float) -> str:
    """Signed change in percentage points: '+1.2', '-5.0'."""
    return f"{100 * delta:+.{DIGITS}f}"


def written_per_255(eps: float) -> bool:
    """Linf budgets people write as k/255: whole k (8/255) or half k below 1/255 (0.5/255), unless a short
    decimal says the same (0.2, not 51/255)."""
    k2 = eps * 510
    short = abs(eps * 1000 - round(eps * 1000)) < 1e-6
    return not short and abs(k2 - round(k2)) < 1e-3 and (round(k2) % 2 == 0 or eps < 1 / 255)


def eps_text(norm: str, eps: float) -> str:
    """A budget without its norm: '8/255' for Linf budgets written per 255, else a decimal ('0.3', '0.5')."""
    if norm == "Linf" and written_per_255(eps):
        return f"{round(eps * 510) / 2:g}/255"
    return f"{eps:.4g}"


def budget(norm: str, eps: float) -> str:
    """A budget with its norm: 'Linf 8/255', 'L2 0.5'."""
    return f"{norm} {eps_text(norm, eps)}"


def pvalue(p: float) -> str:
    """Two significant digits, small values in scientific notation."""
    return f"{p:.2g}"


def when(iso: str | None) -> str:
    """An ISO 8601 time cut to minutes: '2026-11-22T03:00:00+00:00' -> '2026-11-22 03:00'."""
    return "n/a" if not iso else str(iso)[:16].replace("T", " ")


def seconds(s: float | None) -> str:
    """Wall time as '1 h 02 min', '3 min 05 s' or '12.3 s'."""
    if s is None:
        return "n/a"
    if s >= 3600:
        return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    if s >= 60:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{s:.1f} s"


def number(value) -> str:
    """A measured figure of any type: floats to four significant digits, None to a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def count(k: int | None) -> str:
    """Integers with thousands separators: 12,000."""
    return "n/a" if k is None else f"{int(k):,}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table padded so its columns also line up in a terminal."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def slug(label: str) -> str:
    """A file-name-safe form of a model label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "model"


def image(alt: str, name: str) -> str:
    """A Markdown image of a file beside the report."""
    return f"![{alt}]({name})"
