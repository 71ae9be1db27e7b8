"""robustjpeg.evaluate(): an in-memory model evaluated in three lines, the same per-sample outcomes as the CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
from torch import nn

import robustjpeg
from robustjpeg.cli import main
from robustjpeg.errors import RobustJpegError
from robustjpeg.evaluation.results import read_run
from robustjpeg.evaluation.verdict import run_verdict

from sweep_models import eval_set, trained_cnn

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.slow
def test_evaluate_in_three_lines_matches_the_sweep_command_sample_by_sample(mnist_baseline_run, tmp_path,
                                                                            monkeypatch):
    checkpoint = mnist_baseline_run["checkpoint"]
    monkeypatch.chdir(tmp_path)
    model, _ = robustjpeg.load_model(checkpoint)
    run = robustjpeg.evaluate(model, "mnist5k", "quick", n=40)
    assert os.listdir(tmp_path) == [], "out=None must write nothing into the working directory"
    assert main(["sweep", str(checkpoint), "--dataset", "mnist5k", "-n", "40", "-o", str(tmp_path / "cli")]) in (0, 4)
    ours, cli = read_run(run.path), read_run(tmp_path / "cli")
    assert list(ours.samples["cell_keys"]) == list(cli.samples["cell_keys"])
    assert np.array_equal(ours.samples["robust"], cli.samples["robust"])
    assert run.at(0.3) == next(w for w in cli.results["worst_case"] if w["norm"] == "Linf" and w["eps"] == 0.3)
    assert run.verdict == run_verdict(cli.results) and run.checks == cli.results["checks"]
    frame = run.to_frame()
    assert len(frame) == len(cli.results["cells"]) + len(cli.results["worst_case"])
    assert "## Sanity checks" in run.to_markdown()


def test_evaluate_runs_on_the_models_own_device_and_takes_tensors(tmp_path):
    x, y = eval_set(24)
    run = robustjpeg.evaluate(trained_cnn(), (x, y), "quick", eps=[0.0, 0.1], standard_eps=0.1, out=tmp_path / "run")
    assert run.run.facts["device"].startswith("cpu") and run.run.n == 24
    assert run.path == tmp_path / "run" and (tmp_path / "run" / "results.json").is_file()


def test_a_model_with_the_wrong_class_count_gets_a_one_line_error_not_a_traceback(tmp_path):
    seven = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 7))
    with pytest.raises(RobustJpegError) as err:
        robustjpeg.evaluate(seven, "mnist5k", "quick", n=20, out=tmp_path / "run")
    assert "\n" not in str(err.value) and "7" in str(err.value) and "10" in str(err.value), str(err.value)


def test_every_public_name_resolves_to_what_its_stage_defines():
    from robustjpeg.models.jpeg import JpegLayer
    from robustjpeg.report.compare import compare_runs
    from robustjpeg.training.loop import train

    for name in robustjpeg.__all__:
        assert getattr(robustjpeg, name) is not None, name
    assert robustjpeg.compare is compare_runs and robustjpeg.train is train and robustjpeg.JpegLayer is JpegLayer
    with pytest.raises(AttributeError, match="no attribute 'sweep_everything'"):
        robustjpeg.sweep_everything
