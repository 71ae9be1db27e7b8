"""Which attack runs on which samples: nested budgets, the cascade, minimum-norm distances, FGSM's shared gradient.

A sample broken at one budget is broken at every larger one; under cascade each attack runs only on what every
earlier attack of its norm failed on at that budget, minimum-norm attacks first (a distance d settles every budget
>= d), so the worst case is that of the full sweep while the passes approach the floor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from robustjpeg.attacks.adapters import FGSM, PGD
from robustjpeg.attacks.suites import AttackSpec, Suite
from robustjpeg.evaluation.engine import Engine, batch_seed, perturbation_norm, record_adv_stats, seeded
from robustjpeg.evaluation.results import CellKey, CellStore
from robustjpeg.models.jpeg import jpeg_layers


def _budget_cells(engine: Engine, spec: AttackSpec, grid: list[float], store: CellStore,
                  survivors: dict[float, Tensor] | None = None, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """One fixed-budget attack over its norm's grid: a sample broken at a smaller budget is not attacked again, nor
    (cascade: survivors given) one an earlier attack broke at this budget, so its cells say "robust after 1..k".
    skip: AutoAttack parts other cells run (autoattack_skip)."""
    adapter = spec.build()
    alive = engine.clean.clone()
    out, direction = {}, None

    def compute(eps: float, key: str) -> tuple[dict, dict]:
        nonlocal direction
        stats = {}
        if survivors is not None:
            torch.logical_and(alive, survivors[eps], out=alive)
        if eps > 0 and bool(alive.any()):
            if isinstance(adapter, FGSM) and direction is None:
                direction = _fgsm_direction(engine, adapter, spec)
            idx = alive.nonzero().flatten()
            perturb = perturber(engine, spec, adapter, eps, direction, skip)
            alive[idx[engine.break_samples(spec, key, idx, eps, perturb, stats)]] = False
        meta = {"attack": spec.name, "kind": spec.kind, "norm": adapter.norm, "eps": eps, "stats": stats}
        return meta, {"robust": alive.cpu().numpy().copy()}

    for eps in grid:
        key = str(CellKey(spec.name, adapter.norm, eps))
        out[key] = engine.cell(store, key, lambda: compute(eps, key))["robust"]  # noqa: B023 (called at once)
        alive = torch.tensor(out[key], device=engine.device)
    return out


def _fgsm_direction(engine: Engine, adapter: FGSM, spec: AttackSpec) -> Tensor:
    """FGSM's gradient sign for every clean-correct sample, once for the whole grid."""
    direction = torch.zeros_like(engine.x)
    idx = engine.clean.nonzero().flatten()

    def grad(chunk: Tensor) -> Tensor:
        with engine.view(spec):
            return adapter.direction(engine.craft_model(spec), engine.x[chunk], engine.y[chunk])

    if len(idx):
        direction[idx] = engine.map(idx, grad, desc=f"{spec.name} gradient")
    return direction


def perturber(engine: Engine, spec: AttackSpec, adapter, eps: float, direction: Tensor | None = None,
               skip: tuple[str, ...] = ()):
    """perturb(chunk, seed) for break_samples; PGD also gets the evaluated model's labels for its early exit, the
    official AutoAttack the parts to leave out."""
    if direction is not None:
        return lambda chunk, seed: adapter.step(engine.x[chunk], direction[chunk], eps)
    craft = engine.craft_model(spec)
    if isinstance(adapter, PGD):
        judge = _judge(engine, spec)
        return lambda chunk, seed: adapter.perturb(craft, engine.x[chunk], engine.y[chunk], eps, seed, judge=judge)
    if skip:
        return lambda chunk, seed: adapter.perturb(craft, engine.x[chunk], engine.y[chunk], eps, seed, skip=skip)
    return lambda chunk, seed: adapter.perturb(craft, engine.x[chunk], engine.y[chunk], eps, seed)


def _judge(engine: Engine, spec: AttackSpec) -> Callable[[Tensor], Tensor] | None:
    """The evaluated model's labels (its JPEG layers in the modes they have now, outside any crafting view) when an
    attack is crafted through a view or on another model; None when crafting and evaluation are one forward."""
    if spec.view is None and spec.source == "model":
        return None
    layers = jpeg_layers(engine.model)
    given = [layer.mode for layer in layers]

    def judge(adv: Tensor) -> Tensor:
        crafting = [layer.mode for layer in layers]
        _set_modes(layers, given)
        try:
            return engine.predict(adv)
        finally:
            _set_modes(layers, crafting)

    return judge


def _set_modes(layers: list, modes: list[str]) -> None:
    for layer, mode in zip(layers, modes):
        layer.mode = mode


def distance_key(attack: str, norm: str) -> str:
    """'attack|norm|distances': the cell holding a minimum-norm attack's per-sample distances."""
    return f"{CellKey(attack, norm)}|distances"


def _distance_cells(engine: Engine, spec: AttackSpec, grid: list[float], store: CellStore) -> tuple[dict, np.ndarray]:
    """A minimum-norm attack run once on every clean-correct sample; robust at budget e iff its distance exceeds e."""
    adapter = spec.build()

    def compute() -> tuple[dict, dict]:
        stats = {}
        dist = _distances(engine, spec, adapter, stats)
        return {"attack": spec.name, "kind": spec.kind, "norm": adapter.norm, "stats": stats}, {"distance": dist}

    dist = engine.cell(store, distance_key(spec.name, adapter.norm), compute)["distance"]
    clean = engine.clean.cpu().numpy()
    return {str(CellKey(spec.name, adapter.norm, eps)): clean & (dist > eps) for eps in grid}, dist


def _distances(engine: Engine, spec: AttackSpec, adapter, stats: dict) -> np.ndarray:
    """Each sample's distance (in the attack's norm) to its adversarial example; inf where the attack failed, 0 where
    the clean prediction is already wrong (those samples are not attacked)."""
    craft = engine.craft_model(spec)
    dist = torch.zeros(len(engine.x), device=engine.device)
    idx = engine.clean.nonzero().flatten()

    def attack(chunk: Tensor) -> Tensor:
        seed = batch_seed(engine.seed, spec.name, int(engine.ids[int(chunk[0])]))
        with engine.view(spec), seeded(seed, engine.device):
            adv = adapter.perturb(craft, engine.x[chunk], engine.y[chunk], None, seed).detach()
        record_adv_stats(stats, adv, engine.x[chunk], None)
        d = perturbation_norm(adv - engine.x[chunk], adapter.norm)
        return torch.where(engine.predict(adv) != engine.y[chunk], d, torch.full_like(d, float("inf")))

    if len(idx):
        dist[idx] = engine.map(idx, attack, desc=f"{spec.name} (once)")
    return dist.cpu().numpy().astype(np.float32)


def autoattack_skip(suite: Suite, spec: AttackSpec) -> tuple[str, ...]:
    """Under cascade, the parts of an official AutoAttack entry that other entries of its norm, crafted the same way,
    run with AutoAttack's own settings as cells of their own: it leaves them out, so no part runs twice on a sample
    (AutoAttack is the cascade of its parts, and those cells run them on the same survivors)."""
    if not (suite.cascade and spec.adapter.official_autoattack):
        return ()
    return tuple(part for s in suite.attacks if s is not spec and (s.norm, s.view, s.source, s.restarts) ==
                 (spec.norm, spec.view, spec.source, 1) and (part := s.build().autoattack_part()))


def all_cells(engine: Engine, suite: Suite, store: CellStore):
    """Run (or load) every cell, fixed-budget attacks in the suite's order (cascade: minimum-norm attacks first, then
    each fixed-budget attack only on what they and the earlier ones of its norm left robust at that budget; without
    cascade every attack on every clean-correct sample); returns per-sample outcomes and each cell's spec and budget
    (both in the suite's order), skipped attacks, and the per-sample distances of every minimum-norm attack
    ({'attack|norm': array})."""
    found, skipped, distances = {}, [], {}
    survivors: dict[str, dict[float, Tensor]] = {}  # cascade: per norm and budget, what every earlier attack failed on
    order = sorted(suite.attacks, key=lambda s: not s.adapter.minimum_norm) if suite.cascade else suite.attacks
    for spec in order:
        if spec.source == "transfer" and engine.source is None:
            skipped.append({"attack": spec.name, "reason": "no transfer source model (pass --transfer-from CKPT)"})
            continue
        norm = spec.norm
        grid = suite.grid(norm)
        if spec.adapter.minimum_norm:
            found[spec.name], distances[str(CellKey(spec.name, norm))] = _distance_cells(engine, spec, grid, store)
        else:
            found[spec.name] = _budget_cells(engine, spec, grid, store, survivors.get(norm),
                                             autoattack_skip(suite, spec))
        if suite.cascade:
            before = survivors.get(norm, {})
            survivors[norm] = {e: torch.as_tensor(r, device=engine.device) & before.get(e, True)
                               for e, r in zip(grid, found[spec.name].values())}
    cells, where = {}, {}
    for spec in (s for s in suite.attacks if s.name in found):
        cells.update(found[spec.name])
        where.update({key: (spec, spec.norm, eps) for key, eps in zip(found[spec.name], suite.grid(spec.norm))})
    return cells, where, skipped, distances
