"""The run history keeps one file per run, survives concurrent appends and finds regressions."""

from __future__ import annotations

import re
from concurrent.futures import ProcessPoolExecutor

import pytest

from robustjpeg.cli import EXIT_OK, main
from robustjpeg.errors import RunFolderError
from robustjpeg.report.history import append_history, find_regressions, load_history

from runfolders import ATTACKS, assert_real_png, make_run, markdown_tables

NIGHTS = [f"2026-11-{d:02d}T03:00:00+00:00" for d in range(20, 24)]


def _nightly(base, model: str, scales: list[float]) -> list:
    return [make_run(base / f"{model}-{i}", model, n=200, scale=s / 255, jitter_seed=i, finished=night,
                     attacks=ATTACKS[:2]) for i, (s, night) in enumerate(zip(scales, NIGHTS))]


def test_append_writes_one_file_per_run_and_is_idempotent(tmp_path):
    runs = _nightly(tmp_path, "resnet20", [3, 3])
    first = append_history(runs[0], tmp_path / "hist")
    assert append_history(runs[0], tmp_path / "hist") == first
    append_history(runs[1], tmp_path / "hist")
    records = load_history(tmp_path / "hist")
    assert [r["time"] for r in records] == NIGHTS[:2]
    assert len(list((tmp_path / "hist" / "runs").iterdir())) == 2


def test_concurrent_appends_keep_every_run(tmp_path):
    runs = [make_run(tmp_path / f"run{i}", f"model{i % 2}", n=50, jitter_seed=i, attacks=ATTACKS[:1])
            for i in range(8)]
    with ProcessPoolExecutor(max_workers=4) as pool:
        paths = list(pool.map(append_history, runs, [tmp_path / "hist"] * len(runs)))
    assert len(set(paths)) == 8
    assert len(load_history(tmp_path / "hist")) == 8
    assert not [p for p in (tmp_path / "hist" / "runs").iterdir() if p.name.startswith(".")], "temporary files left"


def test_regression_is_found_only_where_accuracy_dropped(tmp_path):
    for run in _nightly(tmp_path, "resnet20", [3, 3, 2, 2]):
        append_history(run, tmp_path / "hist")
    found = find_regressions(load_history(tmp_path / "hist"))
    assert found, "a planted drop from 3/255 to 2/255 radius went unnoticed"
    assert {r["after"] for r in found} == {NIGHTS[2]}
    assert all(r["delta"] < 0 and r["p"] < 0.05 for r in found)


def test_report_history_draws_trend_and_lists_regressions(tmp_path):
    runs = _nightly(tmp_path, "resnet20", [3, 3, 2]) + _nightly(tmp_path, "resnet20-jpeg", [5, 5, 5])
    for run in runs[:2] + runs[3:5]:
        append_history(run, tmp_path / "hist")
    assert main(["report", str(runs[2]), str(runs[5]), "-o", str(tmp_path / "rep"),
                 "--history", str(tmp_path / "hist")]) == EXIT_OK
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "6 runs of 2 model(s)" in text
    assert_real_png(tmp_path / "rep" / "trend.png")
    assert "trend.png" in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    table = next(t for t in markdown_tables(text) if t[0] == "Regressions")
    assert {row[0] for row in table[2]} == {"resnet20"}


def test_missing_history_folder_says_how_to_start_one(tmp_path):
    with pytest.raises(RunFolderError, match="--history"):
        load_history(tmp_path / "nowhere")


def test_one_evaluation_is_one_record_however_often_it_is_appended(tmp_path):
    """A rerun of a finished benchmark rewrites run.json (new start and finish times) but is the same evaluation."""
    import json

    run = make_run(tmp_path / "run", "resnet20", n=100, attacks=ATTACKS[:1], finished=NIGHTS[0])
    facts = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**facts, "fingerprint": "f" * 16}))
    first = append_history(run, tmp_path / "hist")
    (run / "run.json").write_text(json.dumps({**facts, "fingerprint": "f" * 16, "finished": NIGHTS[1]}))
    assert append_history(run, tmp_path / "hist") == first
    assert len(list((tmp_path / "hist" / "runs").iterdir())) == 1


def test_a_damaged_history_record_is_skipped_with_a_warning_and_the_report_still_written(tmp_path, capsys):
    runs = _nightly(tmp_path, "resnet20", [3, 3, 3])
    paths = [append_history(run, tmp_path / "hist") for run in runs[:2]]
    paths[0].write_text(paths[0].read_text()[:200])  # a record cut short by a full disk
    (paths[0].parent / "notes.json").write_text('{"todo": "look at this"}')
    assert main(["report", str(runs[2]), "-o", str(tmp_path / "rep"), "--history", str(tmp_path / "hist")]) == EXIT_OK
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 2 and all("move it out of" in line for line in warned)
    assert any(str(paths[0]) in line for line in warned) and any("notes.json" in line for line in warned)
    assert "2 runs of 1 model(s)" in (tmp_path / "rep" / "report.md").read_text()
