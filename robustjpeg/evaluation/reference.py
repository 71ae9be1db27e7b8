"""The naive reference: every attack of a suite through torchattacks at every budget on every sample, no savings.

Tests and benchmarks compare the engine with it, per sample and in passes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustjpeg.attacks.suites import AttackSpec, Suite
from robustjpeg.errors import ConfigError
from robustjpeg.evaluation.engine import PassCounter
from robustjpeg.evaluation.results import CellKey


def _plain_torchattack(model: nn.Module, spec: AttackSpec, eps: float, seed: int = 0):
    """The torchattacks object a plain loop would build for one attack at one budget (the official AutoAttack is
    not a torchattacks one: run it through pyautoattack)."""
    import torchattacks

    a = spec.build()
    if spec.kind == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if spec.kind == "pgd":
        cls = torchattacks.PGD if a.norm == "Linf" else torchattacks.PGDL2
        return cls(model, eps=eps, alpha=a.rel_stepsize * eps / a.steps, steps=a.steps, random_start=a.random_start)
    if spec.kind == "apgd" and a.targeted:
        return torchattacks.APGDT(model, norm=a.norm, eps=eps, steps=a.steps, seed=seed, n_classes=10)
    if spec.kind == "apgd":
        return torchattacks.APGD(model, norm=a.norm, eps=eps, steps=a.steps, seed=seed, loss=a.loss)
    if spec.kind == "square":
        return torchattacks.Square(model, norm=a.norm, eps=eps, n_queries=a.queries, p_init=a.p_init, seed=seed)
    raise ConfigError(f"the reference loop covers fgsm, pgd, apgd and square, not {spec.kind!r} ({spec.name})")


def reference_sweep(model: nn.Module, x: Tensor, y: Tensor, suite: Suite, *, batch_size: int = 256) -> tuple[dict, dict]:
    """The naive loop the engine's savings are measured and verified against: every attack (each restart) at every
    budget on every sample through plain torchattacks calls; outcomes then combined like the engine's (clean-wrong
    and broken at a smaller budget count as broken). Returns (cells, passes per attack name and "clean"); fgsm, pgd,
    apgd and square kinds (a minimum-norm attack runs once in both ways, so it has no naive loop and is left out)."""
    passes = {"clean": {"forward": 0, "backward": 0}}
    counted = PassCounter(model.eval(), passes["clean"])
    with torch.no_grad():
        clean = torch.cat([counted(xb).argmax(1) for xb in x.split(batch_size)]) == y
    cells = {}
    for spec in (s for s in suite.attacks if not s.adapter.minimum_norm):
        counted.tally = passes[spec.name] = {"forward": 0, "backward": 0}
        alive = clean.clone()
        for eps in suite.grid(spec.norm):
            for restart in range(spec.restarts if eps > 0 else 0):  # at eps 0 robust means clean-correct
                attack = _plain_torchattack(counted, spec, eps, seed=restart)
                for start in range(0, len(y), batch_size):
                    xb, yb = x[start:start + batch_size], y[start:start + batch_size]
                    adv = attack(xb, yb)
                    with torch.no_grad():
                        broken = counted(adv).argmax(1) != yb
                    alive[start:start + batch_size] &= ~broken
            cells[str(CellKey(spec.name, spec.norm, eps))] = alive.cpu().numpy().copy()
    return cells, passes
