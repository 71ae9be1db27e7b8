"""The README's quoted figures are those of the committed sample report, so the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"(\d+\.\d)% \[(\d+\.\d), (\d+\.\d)\]")  # '86.0% [82.3, 89.1]' in prose
SECTION = "## What the default benchmark shows"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def test_every_accuracy_the_readme_quotes_from_the_sample_report_is_in_that_report():
    quoted = FIGURE.findall(_section((REPO / "README.md").read_text(), SECTION))
    report = (REPO / "reports" / "quick-mnist5k" / "report.md").read_text()
    assert quoted, "the README's sample-report section quotes no accuracy with its interval"
    for acc, lo, hi in quoted:
        assert f"{acc} [{lo}, {hi}]" in report, f"README quotes {acc}% [{lo}, {hi}], absent from the sample report"

