"""Keyed noise: a sample's random draws, and so its attack, do not depend on which samples share its batch; so a
cascaded sweep, a full one and one at another batch size agree sample by sample with random-start attacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustjpeg.attacks.adapters import ATTACKS, keyed_start, start_noise
from robustjpeg.attacks.noise import keyed_rand
from robustjpeg.attacks.suites import load_suite
from robustjpeg.evaluation.results import cell_metas, read_run
from robustjpeg.evaluation.sweep import SweepConfig, run_sweep

from sweep_models import eval_set, suite_toml, trained_cnn, write_suite

pytestmark = pytest.mark.usefixtures("single_thread")


def test_a_keyed_draw_ignores_batch_mates_and_changes_with_seed_salt_and_tag():
    x, _ = eval_set(12)
    whole = keyed_rand(x, 3, "start")
    assert torch.equal(keyed_rand(x[[5, 2]], 3, "start"), whole[[5, 2]])
    assert not torch.equal(keyed_rand(x, 4, "start"), whole)
    assert not torch.equal(keyed_rand(x, 3, "other"), whole)
    tags = torch.arange(12)
    assert torch.equal(keyed_rand(x[[7]], 3, "start", tags=tags[[7]]), keyed_rand(x, 3, "start", tags=tags)[[7]])
    assert not torch.equal(keyed_rand(x, 3, "start", tags=tags), whole)
    assert not torch.equal(whole[0], whole[1])  # two images, two draws
    assert 0 <= float(whole.min()) and float(whole.max()) < 1 and abs(float(whole.mean()) - 0.5) < 0.02
    normal = keyed_rand(x, 3, "start", normal=True)
    assert abs(float(normal.mean())) < 0.03 and abs(float(normal.std()) - 1) < 0.03
    assert keyed_rand(x, 3, "r", shape=(1, 1, 1)).shape == (12, 1, 1, 1)


RANDOM = [("pgd", {"steps": 5}, 0.1), ("pgd", {"norm": "L2", "steps": 5}, 1.0), ("noise", {}, 0.3),
          ("apgd", {"steps": 10}, 0.1), ("apgd", {"norm": "L2", "targeted": True, "steps": 5}, 1.0)]


@pytest.mark.parametrize("kind, params, eps", RANDOM, ids=[f"{k}-{p.get('norm', 'Linf')}" for k, p, _ in RANDOM])
def test_a_random_attack_gives_a_sample_the_same_example_in_any_batch(kind, params, eps):
    """Random starts (ours and the official APGD's, via keyed_start) are keyed per sample, not per batch."""
    model, (x, y) = trained_cnn(), eval_set(40)
    adapter = ATTACKS.create(kind, **params)
    whole = adapter.perturb(model, x, y, eps, 11)
    part = torch.tensor([3, 17, 30, 31, 39])
    assert torch.allclose(adapter.perturb(model, x[part], y[part], eps, 11), whole[part], atol=1e-6)
    assert not torch.allclose(adapter.perturb(model, x, y, eps, 12), whole, atol=1e-6)


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 1.0)])
def test_keyed_start_builds_the_start_as_the_official_apgd_does(monkeypatch, norm, eps):
    """keyed_start rebuilds pyautoattack's start formula around keyed noise: handed that noise as its own draw, the
    unpatched official APGD makes the same example bit for bit (this fails if pyautoattack changes its start)."""
    from pyautoattack.autopgd_base import APGDAttack

    model, (x, y) = trained_cnn(), eval_set(40)
    right = model(x).argmax(1) == y
    x, y = x[right], y[right]  # APGD attacks only these: its own draw then has x's shape, in x's order
    keyed = APGDAttack(model, n_iter=5, norm=norm, eps=eps, seed=0, device=x.device)
    keyed_start(keyed, 7)
    expected = keyed.perturb(x, y)
    attack = APGDAttack(model, n_iter=5, norm=norm, eps=eps, seed=0, device=x.device)
    noise = start_noise(attack, x, 7)
    monkeypatch.setattr(torch, "rand" if norm == "Linf" else "randn", lambda *shape, **kwargs: noise.clone())
    official = attack.perturb(x, y)
    assert torch.equal(official, expected)
    assert not torch.equal(expected, x)


def test_official_autoattack_without_its_square_gives_a_sample_the_same_example_in_any_batch():
    """APGD-CE and APGD-T start from keyed noise and FAB-T (one restart) draws nothing."""
    model, (x, y) = trained_cnn(), eval_set(24)
    attack = ATTACKS.create("autoattack")
    whole = attack.perturb(model, x, y, 0.08, 5, skip=("square",))
    broken = (model(whole).argmax(1) != y).nonzero().flatten()
    assert 0 < len(broken) < len(y)  # some samples resist, so the later parts run
    part = torch.tensor([0, 5, 6, 13, 23])
    assert torch.allclose(attack.perturb(model, x[part], y[part], 0.08, 5, skip=("square",)), whole[part], atol=1e-6)


RANDOM_SUITE = suite_toml(["0", "8/255", "24/255", "48/255"], {"name": "fgsm", "kind": "fgsm"},
                          {"name": "pgd-5", "kind": "pgd", "steps": 5},
                          {"name": "pgd", "kind": "pgd", "steps": 10, "restarts": 2},
                          {"name": "apgd", "kind": "apgd", "steps": 20},
                          {"name": "pgd-l2", "kind": "pgd", "norm": "L2", "steps": 5},
                          {"name": "apgd-t-l2", "kind": "apgd", "norm": "L2", "targeted": True, "steps": 10},
                          l2_eps=[0.0, 0.5, 1.0, 2.0])


def _sweep(tmp_path, name: str, cascade: bool, batch_size: int):
    text = RANDOM_SUITE.replace("eps = [", "cascade = true\neps = [", 1) if cascade else RANDOM_SUITE
    (tmp_path / name).mkdir()
    suite = load_suite(write_suite(tmp_path / name, text))
    model, (x, y) = trained_cnn(), eval_set(60)
    run_sweep(model, x, y, suite, tmp_path / name / "run", SweepConfig(batch_size=batch_size, progress=False))
    return read_run(tmp_path / name / "run")


def test_cascade_equals_the_full_sweep_sample_by_sample_with_random_starts_at_any_batch_size(tmp_path):
    """With random-start PGD and the official APGD, each cascaded cell is the AND of the full sweep's cells of that
    attack and the ones above it, exactly; a full sweep at another batch size is the same sweep; fewer passes."""
    full, other, cascade = (_sweep(tmp_path, "full", False, 16), _sweep(tmp_path, "other", False, 64),
                            _sweep(tmp_path, "cascade", True, 16))
    for key in full.samples["cell_keys"]:
        assert np.array_equal(other.cell(key), full.cell(key)), f"{key}: batch size changed a sample's outcome"
    assert np.array_equal(cascade.samples["worst"], full.samples["worst"])
    for attacks in (["fgsm", "pgd-5", "pgd", "apgd"], ["pgd-l2", "apgd-t-l2"]):  # Linf, then L2
        for key in (k for k in full.samples["cell_keys"] if k.split("|")[0] in attacks):
            attack, budget = key.split("|", 1)
            above = attacks[:attacks.index(attack) + 1]
            expected = np.logical_and.reduce([full.cell(f"{a}|{budget}") for a in above])
            assert np.array_equal(cascade.cell(key), expected), f"{key}: not 'robust after {' .. '.join(above)}'"
    worst = full.samples["worst"]
    assert 0 < worst.sum() < worst.size  # the budgets leave something to break and something robust
    spent = {name: sum(sum(m["passes"].values()) for m in cell_metas(run.folder))
             for name, run in (("full", full), ("cascade", cascade))}
    assert spent["cascade"] < spent["full"], spent
