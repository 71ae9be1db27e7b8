"""compare pairs two runs sample by sample, tests with exact McNemar, and gates on significant drops."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from robustjpeg.cli import EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, main
from robustjpeg.errors import RunFolderError
from robustjpeg.evaluation.results import CellKey
from robustjpeg.report.compare import compare_runs, paired_change, regressions

from runfolders import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {"ref": make_run(base / "ref", scale=3 / 255),
            "same": make_run(base / "same", scale=3 / 255, jitter_seed=1),
            "drop": make_run(base / "drop", scale=2 / 255, jitter_seed=2)}


def _discordant(path_a, path_b, key) -> tuple[int, int]:
    """Counts (A right B wrong, A wrong B right) read straight from the two samples.npz files."""
    rows = []
    for path in (path_a, path_b):
        with np.load(path / "samples.npz") as npz:
            keys = [str(k) for k in npz["worst_keys"]]
            rows.append(npz["clean_correct"] if key == "clean" else npz["worst"][keys.index(key)])
    a, b = rows
    return int((a & ~b).sum()), int((~a & b).sum())


def _scipy_p(b: int, c: int) -> float:
    return 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue


def test_p_values_match_scipy_binomtest_on_known_outcomes():
    a = np.array([1] * 40 + [1] * 12 + [0] * 3 + [0] * 25, dtype=bool)
    b = np.array([1] * 40 + [0] * 12 + [1] * 3 + [0] * 25, dtype=bool)
    row = paired_change(a, b)
    assert (row["a_only"], row["b_only"]) == (12, 3)
    assert row["p"] == pytest.approx(binomtest(3, 15, 0.5).pvalue, rel=1e-9)
    assert row["delta"] == pytest.approx(-9 / 80)
    assert row["ci95"][0] < row["delta"] < row["ci95"][1] < 0


def test_run_comparison_p_values_match_scipy_per_budget(runs):
    result = compare_runs(runs["ref"], runs["drop"])
    gated = [r for r in result["rows"] if r["scope"] != "attack"]
    assert len(gated) == 10  # clean + 5 Linf + 4 L2 worst-case budgets
    for row in gated:
        key = "clean" if row["scope"] == "clean" else str(CellKey(None, row["norm"], row["eps"]))
        b, c = _discordant(runs["ref"], runs["drop"], key)
        assert (row["a_only"], row["b_only"]) == (b, c)
        assert row["p"] == pytest.approx(_scipy_p(b, c), rel=1e-9)


def test_planted_drop_is_a_regression_and_noise_is_not(runs):
    dropped = compare_runs(runs["ref"], runs["drop"])
    assert regressions(dropped, 1.0) and "significantly worse" in dropped["verdict"]
    assert all(r["ci95"][1] < 0 for r in regressions(dropped, 1.0))
    assert not regressions(dropped, 50.0)
    steady = compare_runs(runs["ref"], runs["same"])
    assert not regressions(steady, 0.0) and steady["verdict"].startswith("No significant change")


def test_fail_on_drop_exit_codes(runs, tmp_path, capsys):
    ref, drop, same = (str(runs[k]) for k in ("ref", "drop", "same"))
    assert main(["compare", ref, drop, "--fail-on-drop", "1", "-o", str(tmp_path)]) == EXIT_REGRESSION
    assert "dropped" in capsys.readouterr().err
    assert json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert "**Verdict:** B is significantly worse" in (tmp_path / "compare.md").read_text()
    assert main(["compare", ref, same, "--fail-on-drop", "1"]) == EXIT_OK
    assert main(["compare", ref, drop]) == EXIT_OK


def test_runs_on_different_samples_are_refused(runs, tmp_path, capsys):
    other = make_run(tmp_path / "other", index_seed=8)
    with pytest.raises(RunFolderError, match="different samples"):
        compare_runs(runs["ref"], other)
    mnist = make_run(tmp_path / "mnist", dataset="mnist5k")
    assert main(["compare", str(runs["ref"]), str(mnist)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "different samples" in err and "mnist5k" in err and "Traceback" not in err


def test_missing_samples_file_is_named(runs, tmp_path):
    broken = make_run(tmp_path / "broken")
    (broken / "samples.npz").unlink()
    with pytest.raises(RunFolderError, match="samples.npz"):
        compare_runs(runs["ref"], broken)
