"""The sanity checks flag what they are meant to flag: masked gradients, probabilities, randomness, weak attacks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robustjpeg.attacks.suites import load_suite
from robustjpeg.evaluation.sweep import SweepConfig, run_sweep

from sweep_models import eval_set, suite_toml, trained_cnn, write_suite

pytestmark = pytest.mark.usefixtures("single_thread")

FGSM = {"name": "fgsm", "kind": "fgsm"}
PGD = {"name": "pgd", "kind": "pgd", "steps": 10, "random_start": False}
PGD_SQUARE = suite_toml(["0", "0.1", "0.3"], FGSM, PGD, {"name": "square", "kind": "square", "queries": 200})


def sweep_checks(tmp_path, model, text: str, n: int = 40, **settings) -> dict[int, dict]:
    """Checks and invariants of one sweep by id (an invariant's record has 'held' instead of 'status')."""
    suite = load_suite(write_suite(tmp_path, text))
    results = run_sweep(model, *eval_set(n), suite, tmp_path / "run", SweepConfig(progress=False, **settings))
    return {c["id"]: c for c in results["checks"] + results["invariants"]}


class Staircase(nn.Module):
    """Rounds its input to 5 grey levels before the classifier: zero input gradient, the textbook masking."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


def test_sound_sweep_passes_the_checks_that_apply_and_skips_the_rest_with_reasons(tmp_path):
    checks = sweep_checks(tmp_path, trained_cnn(), PGD_SQUARE)
    for i in (1, 3, 4, 5, 6, 9, 10, 14):
        assert checks[i]["status"] == "PASS", checks[i]
    assert all(checks[i]["held"] for i in (2, 15, 16)), "invariants the engine guarantees"
    assert checks[11]["status"] == "SKIP" and "no JPEG layer" in checks[11]["detail"]
    assert checks[7]["status"] == "SKIP" and checks[7]["detail"]
    assert checks[8]["status"] in ("PASS", "WARN") and checks[8]["value"] <= 0.05


def test_masked_gradients_are_flagged_by_gradient_health_and_black_box_lead(tmp_path):
    checks = sweep_checks(tmp_path, Staircase(trained_cnn()), PGD_SQUARE)
    assert checks[9]["status"] == "FAIL" and checks[9]["value"] == 1.0, checks[9]
    assert checks[8]["status"] in ("WARN", "FAIL") and checks[8]["value"] > 0, checks[8]


def test_model_that_outputs_probabilities_fails_check_14(tmp_path):
    model = nn.Sequential(trained_cnn(), nn.Softmax(dim=1))
    checks = sweep_checks(tmp_path, model, suite_toml(["0", "0.1"], FGSM), n=20)
    assert checks[14]["status"] == "FAIL" and "softmax" in checks[14]["detail"]


class NoisyLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        return logits + 20 * torch.randn_like(logits)


def test_randomised_model_fails_determinism(tmp_path):
    checks = sweep_checks(tmp_path, NoisyLogits(trained_cnn()), suite_toml(["0", "0.1"], FGSM), n=20)
    assert checks[10]["status"] == "FAIL" and checks[10]["value"] > 0


def test_pgd_weaker_than_fgsm_is_flagged(tmp_path):
    body = suite_toml(["0", "0.1", "0.2"], FGSM, {**PGD, "steps": 2, "rel_stepsize": 0.1})
    checks = sweep_checks(tmp_path, trained_cnn(), body)
    assert checks[6]["status"] == "FAIL" and checks[6]["value"] > 0.02, checks[6]


def test_more_pgd_steps_never_raise_accuracy(tmp_path):
    body = suite_toml(["0", "0.05", "0.1"], {"name": "pgd-2", "kind": "pgd", "steps": 2},
                      {"name": "pgd-10", "kind": "pgd", "steps": 10, "restarts": 2})
    checks = sweep_checks(tmp_path, trained_cnn(), body)
    assert checks[7]["status"] == "PASS" and checks[7]["value"] <= 0, checks[7]


def test_hard_jpeg_masks_plain_pgd_and_bpda_check_flags_it(tmp_path):
    """A JPEG layer deployed with the hard quantiser: zero gradients stop plain PGD, the straight-through view does not."""
    from robustjpeg.models.jpeg import JpegLayer

    layer = JpegLayer(channels=1, quality=50, mode="soft")
    suite = load_suite(write_suite(tmp_path, suite_toml(["0", "0.1", "0.2"], PGD, {**PGD, "name": "pgd-bpda", "view": "ste"})))
    results = run_sweep(nn.Sequential(layer, trained_cnn()), *eval_set(40), suite, tmp_path / "run", SweepConfig(progress=False, jpeg_mode="hard"))
    acc = {(c["attack"], c["eps"]): c["accuracy"] for c in results["cells"]}
    assert acc["pgd", 0.2] >= results["clean"]["accuracy"] - 0.1 and acc["pgd-bpda", 0.2] <= 0.1, acc
    checks = {c["id"]: c for c in results["checks"]}
    assert checks[11]["status"] == "FAIL" and checks[11]["value"] > 0.5, checks[11]
    assert checks[9]["status"] == "FAIL", checks[9]
    assert checks[5]["status"] == "PASS" and "pgd-bpda" in checks[5]["detail"], checks[5]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["deploy_mode"] == "hard" and layer.mode == "soft", "the deployment mode must be undone after the sweep"
    assert len(run["model"]["jpeg_tables"]["luma"]) == 8 and run["model"]["jpeg_tables"]["chroma"] is None


def test_trained_jpeg_dl_model_deployed_hard_is_flagged_and_bpda_reaches_chance(tmp_path, mnist_jpeg_run):
    """The mnist5k JPEG-DL model of the training tests, deployed with the hard quantiser, under PGD and BPDA-PGD."""
    from robustjpeg.models.checkpoints import load_trained

    model = load_trained(mnist_jpeg_run["checkpoint"])[0]
    checks = sweep_checks(tmp_path, model, suite_toml(["0", "0.1", "0.2"], PGD, {**PGD, "name": "pgd-bpda", "view": "ste"}),
                          n=60, jpeg_mode="hard")
    assert checks[11]["status"] == "FAIL", checks[11]
    assert checks[5]["status"] == "PASS" and "pgd-bpda" in checks[5]["detail"], checks[5]
