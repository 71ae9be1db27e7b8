"""The committed JPEG-DL study is what `robustjpeg report` and `robustjpeg compare` render from its committed result
files, and its README quotes only figures those files hold: the study cannot drift from its data (training logs: `training/MODEL.jsonl`, each model's metrics.jsonl)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from robustjpeg.report.compare import compare_runs, render
from robustjpeg.report.markdown import write_report
from robustjpeg.utils.formatting import acc
from robustjpeg.utils.stats import accuracy_record

from conftest import REPO

STUDY = REPO / "reports" / "jpeg-dl-study"
RUNS = sorted((p for p in (STUDY / "runs").glob("*/*") if (p / "run.json").is_file()), key=str)  # as the shell globs
FIGURE = re.compile(r"(\d+\.\d) \[(\d+\.\d), (\d+\.\d)\]")  # '86.0 [82.3, 89.1]'
HEADER = re.compile(r"^([AB]): .* \((\S+)\)", re.M)  # 'A: baseline (reports/jpeg-dl-study/runs/baseline/paper)'


def test_the_study_commits_the_runs_of_every_model_and_suite():
    found = {(p.parent.name, p.name) for p in RUNS}
    for model in ("baseline", "jpeg-dl", "jpeg-fixed", "jpeg-dl-q50-init"):
        assert {(model, "paper"), (model, "adaptive")} <= found, f"{model}'s paper and adaptive runs are not committed"
    for p in RUNS:
        assert {f.name for f in p.iterdir()} == {"run.json", "results.json", "samples.npz"}, p
    assert {log.stem for log in (STUDY / "training").glob("*.jsonl")} == {p.parent.name for p in RUNS}


def test_the_study_report_re_renders_from_its_committed_runs(tmp_path):
    shutil.copytree(STUDY / "runs", tmp_path / "runs")  # the report names run folders relative to itself
    rendered = write_report([tmp_path / p.relative_to(STUDY) for p in RUNS], tmp_path)
    assert rendered.read_text() == (STUDY / "report.md").read_text()
    for card in tmp_path.glob("*.json"):
        assert json.loads(card.read_text()) == json.loads((STUDY / card.name).read_text()), card.name


@pytest.mark.parametrize("committed", sorted(STUDY.glob("compare-*.md")), ids=lambda p: p.stem)
def test_each_study_comparison_re_renders_from_its_committed_runs(committed, monkeypatch):
    monkeypatch.chdir(REPO)  # the comparison names its runs by the relative paths it was given
    paths = dict(HEADER.findall(committed.read_text()))
    assert render(compare_runs(paths["A"], paths["B"])) == committed.read_text()


def _final_test_accuracies() -> str:
    """Each model's clean accuracy on the whole test split after its last epoch, from its committed training log."""
    lines = []
    for log in sorted((STUDY / "training").glob("*.jsonl")):
        last = json.loads(log.read_text().splitlines()[-1])
        lines.append(f"{log.stem}: {acc(accuracy_record(last['test_correct'], last['test_n']))}")
    return "\n".join(lines)


def test_every_figure_the_study_readme_quotes_is_in_its_report_comparisons_or_training_logs():
    rendered = "\n".join([*(p.read_text() for p in [STUDY / "report.md", *STUDY.glob("compare-*.md")]),
                          _final_test_accuracies()])
    quoted = FIGURE.findall((STUDY / "README.md").read_text())
    assert quoted, "the study README quotes no accuracy with its interval"
    missing = [q for q in quoted if f"{q[0]} [{q[1]}, {q[2]}]" not in rendered]
    assert not missing, f"the README quotes figures no committed file holds: {missing}"
