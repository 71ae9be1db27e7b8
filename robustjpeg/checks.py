"""The sanity checks of an evaluation (DESIGN 4, numbered 1-16): each PASS / WARN / FAIL / SKIP with its figure."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from robustjpeg.attacks import AttackSpec, Suite
from robustjpeg.jpeg import jpeg_layers

PROBE = 64  # samples a probe re-attacks (checks 1, 4, 5)
TOL = 0.02  # accuracy slack between two attacks before a check warns


def _check(id_: int, name: str, status: str, value, detail: str) -> dict:
    value = None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value
    return {"id": id_, "name": name, "status": status, "value": value, "detail": detail}


def _grade(value: float, warn: float, fail: float) -> str:
    return "PASS" if value <= warn else ("WARN" if value <= fail else "FAIL")


class Context:
    """What the checks read: the engine (to probe the model), the suite, per-sample cells and the results records."""

    def __init__(self, engine, suite: Suite, cells: dict, where: dict, results: dict, info: dict) -> None:
        self.engine, self.suite, self.cells, self.where, self.results, self.info = engine, suite, cells, where, results, info
        self.n = len(engine.y)
        self.classes = int(engine.logits.shape[1])
        self.clean_acc = float(engine.clean.float().mean())

    def acc(self, key: str) -> float:
        return float(self.cells[key].mean())

    def keys(self, keep: Callable[[AttackSpec], bool], norm: str = "Linf") -> list[str]:
        return [k for k, (spec, n, _) in self.where.items() if n == norm and keep(spec)]

    def by_eps(self, keys: list[str]) -> dict[float, list[str]]:
        out: dict[float, list[str]] = {}
        for k in keys:
            out.setdefault(self.where[k][2], []).append(k)
        return out

    def min_acc(self, keys: list[str]) -> dict[float, float]:
        return {eps: min(self.acc(k) for k in ks) for eps, ks in self.by_eps(keys).items()}

    def probe_idx(self, mask: Tensor | None = None) -> Tensor:
        pool = torch.arange(self.n, device=self.engine.device) if mask is None else mask.nonzero().flatten()
        return pool[:PROBE]

    def attack(self, spec: AttackSpec, idx: Tensor, eps: float, tag: str) -> tuple[Tensor, dict]:
        """Run one attack on idx at eps outside the grid; returns which were broken and the example statistics."""
        stats: dict = {}
        adapter, craft = spec.build(), self.engine.craft_model(spec)
        perturb = lambda chunk, seed: adapter.perturb(craft, self.engine.x[chunk], self.engine.y[chunk], eps, seed)
        return self.engine.break_samples(spec, f"check-{tag}", idx, eps, perturb, stats), stats


def _plain(spec: AttackSpec) -> bool:
    return spec.view is None and spec.source == "model" and not spec.black_box


def _iterative(spec: AttackSpec) -> bool:
    return _plain(spec) and spec.kind in ("pgd", "apgd", "autoattack")


def _first_pgd(ctx: Context, views: tuple = (None,)) -> AttackSpec:
    """The suite's first PGD run, preferring the later entries of `views` (e.g. the BPDA view when there is one)."""
    found = [s for s in ctx.suite.attacks if s.kind == "pgd" and s.source == "model" and s.view in views]
    found.sort(key=lambda s: -views.index(s.view))
    return found[0] if found else AttackSpec(name="pgd", kind="pgd", params={"steps": 20})


def eps0_equals_clean(ctx: Context) -> dict:
    zero = [k for k, (_, _, eps) in ctx.where.items() if eps == 0]
    gaps = [abs(int(ctx.cells[k].sum()) - int(ctx.engine.clean.sum())) / ctx.n for k in zero]
    idx, mismatched = ctx.probe_idx(), 0
    cheap = [s for s in ctx.suite.attacks if s.source == "model" and s.build().cheap and not s.build().minimum_distortion]
    for spec in cheap:
        broken, _ = ctx.attack(spec, idx, 0.0, f"eps0-{spec.name}")
        mismatched += int((broken != ~ctx.engine.clean[idx]).sum())
    if not zero and not cheap:
        return _check(1, "eps0_equals_clean", "SKIP", None, "no budget 0 in the grid and no cheap attack to probe at 0")
    value = max(gaps, default=0.0) + mismatched / max(1, len(idx))
    detail = f"{len(zero)} cells at eps 0 vs clean {ctx.clean_acc:.4f}; {len(cheap)} attacks re-run at eps 0 on {len(idx)} samples, {mismatched} changed"
    return _check(1, "eps0_equals_clean", "PASS" if value == 0 else "FAIL", value, detail)


def inputs_in_unit_range(ctx: Context) -> dict:
    x = ctx.engine.x
    value = max(0.0, -float(x.min())) + max(0.0, float(x.max()) - 1)
    detail = f"inputs span [{float(x.min()):.4g}, {float(x.max()):.4g}]; normalisation lives inside the model"
    return _check(2, "inputs_in_unit_range", "PASS" if value == 0 else "FAIL", value, detail)


def adversarial_in_budget(ctx: Context) -> dict:
    stats = [m.get("stats", {}) for m in ctx.engine.meta.values()]
    if not any(stats):
        return _check(3, "adversarial_in_budget", "SKIP", None, "no adversarial example was crafted")
    excess = max(s.get("max_excess", 0.0) for s in stats)
    lo, hi = min(s.get("min", 0.0) for s in stats), max(s.get("max", 1.0) for s in stats)
    nan = sum(s.get("nan", 0) for s in stats)
    bad = excess > 1e-5 or lo < 0 or hi > 1 or nan
    detail = f"largest Linf excess over the budget {excess:.2g}, values in [{lo:.4g}, {hi:.4g}], {nan} with NaN"
    return _check(3, "adversarial_in_budget", "FAIL" if bad else "PASS", excess, detail)


def robust_monotone_in_eps(ctx: Context) -> dict:
    rises = []
    for keys in _curves(ctx).values():
        accs = [ctx.acc(k) for k in sorted(keys, key=lambda k: ctx.where[k][2])]
        rises += [b - a for a, b in zip(accs, accs[1:])]
    if max(rises, default=0.0) > 0:
        return _check(4, "robust_monotone_in_eps", "FAIL", max(rises), "a stored curve rises with eps (inconsistent cells)")
    spec, grid = _first_pgd(ctx), ctx.suite.eps
    key = cell_key_of(ctx, spec, grid[0]) if len(grid) > 1 else None
    if key is None:
        return _check(4, "robust_monotone_in_eps", "PASS", 0.0, "stored curves never rise; no iterative run to re-test nesting")
    broken_early = ctx.engine.clean & ~torch.as_tensor(ctx.cells[cell_key_of(ctx, spec, grid[-2])], device=ctx.engine.device)
    idx = ctx.probe_idx(broken_early)
    if len(idx) == 0:
        return _check(4, "robust_monotone_in_eps", "PASS", 0.0, "stored curves never rise; nothing broken below the largest budget")
    broken, _ = ctx.attack(spec, idx, grid[-1], "nesting")
    share = float((~broken).float().mean())
    detail = (f"stored curves never rise; {spec.name} re-run at eps {grid[-1]:.4g} on {len(idx)} samples broken at smaller "
              f"budgets: {int((~broken).sum())} survived")
    return _check(4, "robust_monotone_in_eps", _grade(share, 0.0, 0.1), share, detail)


def cell_key_of(ctx: Context, spec: AttackSpec, eps: float) -> str | None:
    found = [k for k, (s, n, e) in ctx.where.items() if s.name == spec.name and n == "Linf" and e == eps]
    return found[0] if found else None


def _curves(ctx: Context) -> dict[tuple, list[str]]:
    out: dict[tuple, list[str]] = {}
    for k, (spec, norm, _) in ctx.where.items():
        out.setdefault((spec.name, norm), []).append(k)
    return out


def eps1_to_chance(ctx: Context) -> dict:
    """The suite's strongest gradient view (BPDA when the suite has it) must reach chance when the budget is unbounded."""
    spec, idx = _first_pgd(ctx, (None, "ste")), ctx.probe_idx()
    broken, _ = ctx.attack(spec, idx, 1.0, "eps1")
    acc, chance = float((~broken & ctx.engine.clean[idx]).float().mean()), 1.0 / ctx.classes
    detail = f"{spec.name} at eps 1 on {len(idx)} samples leaves {acc:.3f} (chance {chance:.3f})"
    return _check(5, "eps1_to_chance", "PASS" if acc <= chance else ("WARN" if acc <= 2 * chance else "FAIL"), acc, detail)


def _lead(ctx: Context, weak: Callable[[AttackSpec], bool], strong: Callable[[AttackSpec], bool]) -> tuple[float, int] | None:
    """Largest accuracy margin by which the `strong` runs beat the `weak` ones at a shared budget (None: none shared)."""
    a, b = ctx.min_acc(ctx.keys(weak)), ctx.min_acc(ctx.keys(strong))
    common = set(a) & set(b)
    return (max(a[e] - b[e] for e in common), len(common)) if common else None


def iterative_beats_single_step(ctx: Context) -> dict:
    found = _lead(ctx, _iterative, lambda s: s.kind == "fgsm" and _plain(s))
    if found is None:
        return _check(6, "iterative_beats_single_step", "SKIP", None, "needs FGSM and an iterative white-box attack")
    gap, budgets = found
    detail = f"largest excess of iterative over FGSM accuracy across {budgets} budgets: {gap:+.4f}"
    return _check(6, "iterative_beats_single_step", _grade(gap, 0.0, TOL), gap, detail)


def more_steps_never_help(ctx: Context) -> dict:
    rises = []
    for eps, keys in ctx.by_eps(ctx.keys(lambda s: not s.build().minimum_distortion)).items():
        for a in keys:
            for b in keys:
                sa, sb = ctx.where[a][0], ctx.where[b][0]
                same = (sa.kind, sa.view, sa.source) == (sb.kind, sb.view, sb.source)
                more = (sb.build().strength(), sb.restarts), (sa.build().strength(), sa.restarts)
                stronger = more[0] != more[1] and all(b_ >= a_ for b_, a_ in zip(*more))
                if same and stronger:
                    rises.append(ctx.acc(b) - ctx.acc(a))
    if not rises:
        return _check(7, "more_steps_never_help", "SKIP", None, "no two runs of one attack that differ only in steps or restarts")
    rise = max(rises)
    return _check(7, "more_steps_never_help", _grade(rise, 0.0, TOL), rise,
                  f"{len(rises)} weaker/stronger pairs; largest accuracy rise with more steps or restarts {rise:+.4f}")


def blackbox_weaker(ctx: Context) -> dict:
    found = _lead(ctx, lambda s: not s.black_box, lambda s: s.black_box and s.kind != "noise")
    if found is None:
        return _check(8, "blackbox_weaker_than_whitebox", "SKIP", None, "no black-box (Square) or transfer run beside a white-box one")
    lead = found[0]
    detail = f"largest lead of black-box/transfer over the best white-box attack: {lead:+.4f} (a lead suggests gradient masking)"
    return _check(8, "blackbox_weaker_than_whitebox", _grade(lead, 0.0, TOL), lead, detail)


def _gradient_flags(engine, chunk: Tensor) -> Tensor:
    """Per sample: [input gradient of the logit margin all zero, any NaN/inf]."""
    x = engine.x[chunk].clone().requires_grad_(True)
    logits, y = engine.model(x), engine.y[chunk]
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -float("inf")).amax(1)
    grad = torch.autograd.grad((other - true).sum(), x)[0].flatten(1)
    return torch.stack([(grad == 0).all(1), (~torch.isfinite(grad)).any(1)], 1)


def gradient_health(ctx: Context) -> dict:
    idx = torch.arange(min(ctx.n, 256), device=ctx.engine.device)
    flags = ctx.engine.map(idx, lambda chunk: _gradient_flags(ctx.engine, chunk)).float().mean(0)
    zero, bad = float(flags[0]), float(flags[1])
    detail = f"margin-loss input gradient on {len(idx)} samples: {zero:.1%} all zero, {bad:.1%} NaN or inf"
    status = "FAIL" if bad > 0 or zero > 0.5 else _grade(zero, 0.01, 1.0)
    return _check(9, "gradient_health", status, zero + bad, detail)


def deterministic(ctx: Context) -> dict:
    idx = torch.arange(min(ctx.n, 256), device=ctx.engine.device)
    a, b = (ctx.engine.map(idx, lambda chunk: ctx.engine.predict_logits(ctx.engine.x[chunk])) for _ in range(2))
    diff = float((a - b).abs().max())
    flips = int((a.argmax(1) != b.argmax(1)).sum())
    status = "PASS" if diff == 0 else ("FAIL" if flips else "WARN")
    return _check(10, "deterministic", status, diff, f"largest logit change between two identical passes {diff:.3g}, {flips} labels changed")


def bpda_not_stronger(ctx: Context) -> dict:
    if not jpeg_layers(ctx.engine.model):
        return _check(11, "bpda_not_stronger", "SKIP", None, "the model has no JPEG layer")
    found = _lead(ctx, _plain, lambda s: s.view == "ste" and s.source == "model")
    if found is None:
        return _check(11, "bpda_not_stronger", "WARN", None, "JPEG model without a BPDA (view = ste) run; sweep the adaptive suite too")
    lead = found[0]
    detail = f"largest lead of BPDA over plain white-box accuracy: {lead:+.4f}; a lead means the plain gradients are masked"
    return _check(11, "bpda_not_stronger", _grade(lead, 0.01, 0.05), lead, detail)


def _reference_eps(ctx: Context) -> float | None:
    eps = ctx.suite.standard_eps
    return eps if any(abs(e - eps) < 1e-12 for e in ctx.suite.eps) else None


def noise_weaker_than_attack(ctx: Context) -> dict:
    eps = _reference_eps(ctx)
    if eps is None:
        return _check(12, "noise_weaker_than_attack", "SKIP", None, "the standard budget is not on the --eps grid")
    spec = AttackSpec(name="noise", kind="noise")
    idx = ctx.engine.clean.nonzero().flatten()
    broken, _ = ctx.attack(spec, idx, eps, "noise")
    noise_drop = int(broken.sum()) / ctx.n
    white = ctx.min_acc(ctx.keys(lambda s: not s.black_box))
    if eps not in white:
        return _check(12, "noise_weaker_than_attack", "SKIP", None, "no white-box run at the standard budget")
    attack_drop = ctx.clean_acc - white[eps]
    if attack_drop <= 0:
        return _check(12, "noise_weaker_than_attack", "WARN", None, f"the attacks did not lower accuracy at eps {eps:.4g}")
    ratio = noise_drop / attack_drop
    detail = f"at eps {eps:.4g} noise costs {noise_drop:.4f} accuracy, the attacks {attack_drop:.4f} (ratio {ratio:.3f})"
    return _check(12, "noise_weaker_than_attack", _grade(ratio, 0.5, 0.9), ratio, detail)


def undefended_to_zero(ctx: Context) -> dict:
    if jpeg_layers(ctx.engine.model) or ctx.info.get("defended"):
        return _check(13, "undefended_to_zero", "SKIP", None, "the model is a defended one (JPEG layer or marked defended)")
    eps = _reference_eps(ctx)
    accs = ctx.min_acc(ctx.keys(lambda s: not s.black_box))
    if eps is None or eps not in accs:
        return _check(13, "undefended_to_zero", "SKIP", None, "the standard budget is not on the --eps grid")
    acc = accs[eps]
    detail = f"undefended model keeps {acc:.4f} at the standard budget {eps:.4g} (expected about 0; if it is adversarially trained, mark it defended)"
    return _check(13, "undefended_to_zero", _grade(acc, 0.05, 1.0), acc, detail)


def logits_not_probabilities(ctx: Context) -> dict:
    logits = ctx.engine.logits
    gap = float((logits.sum(1) - 1).abs().max())
    if bool((logits >= 0).all()) and gap < 1e-3:
        return _check(14, "logits_not_probabilities", "FAIL", gap, "outputs are probabilities (rows sum to 1); attacks need logits: drop the softmax")
    lse = float(torch.logsumexp(logits, 1).abs().max())
    if bool((logits <= 0).all()) and lse < 1e-3:
        return _check(14, "logits_not_probabilities", "WARN", gap, "outputs look like log-probabilities; cross-entropy still works, margins shrink")
    return _check(14, "logits_not_probabilities", "PASS", gap, f"outputs are logits ({ctx.classes} classes, largest |row sum - 1| {gap:.3g})")


def worst_is_per_sample(ctx: Context) -> dict:
    wrong = 0
    for norm in ("Linf", "L2"):
        for eps, keys in ctx.by_eps(ctx.keys(lambda s: True, norm)).items():
            expect = int(np.logical_and.reduce([ctx.cells[k] for k in keys]).sum())
            record = [w for w in ctx.results["worst_case"] if w["norm"] == norm and w["eps"] == eps]
            wrong += int(not record or record[0]["robust"] != expect or expect > min(int(ctx.cells[k].sum()) for k in keys))
    return _check(15, "worst_is_per_sample", "PASS" if wrong == 0 else "FAIL", wrong,
                  f"{len(ctx.results['worst_case'])} worst-case budgets; {wrong} differ from the per-sample AND over attacks")


def accuracy_has_ci(ctx: Context) -> dict:
    records = [ctx.results["clean"], *ctx.results["cells"], *ctx.results["worst_case"]]
    missing = sum(not (r.get("n") and len(r.get("ci95", [])) == 2 and r["ci95"][0] <= r["accuracy"] + 1e-9 <= r["ci95"][1] + 2e-9)
                  for r in records)
    width = max(r["ci95"][1] - r["ci95"][0] for r in records if len(r.get("ci95", [])) == 2)
    detail = f"{len(records)} accuracies, {missing} without n or a Wilson 95% interval; widest interval {width:.3f} (n = {ctx.n})"
    return _check(16, "accuracy_has_ci", "PASS" if missing == 0 else "FAIL", width, detail)


CHECKS = [eps0_equals_clean, inputs_in_unit_range, adversarial_in_budget, robust_monotone_in_eps, eps1_to_chance,
          iterative_beats_single_step, more_steps_never_help, blackbox_weaker, gradient_health, deterministic,
          bpda_not_stronger, noise_weaker_than_attack, undefended_to_zero, logits_not_probabilities,
          worst_is_per_sample, accuracy_has_ci]


def run_checks(engine, suite: Suite, cells: dict, where: dict, results: dict, info: dict) -> list[dict]:
    """All sixteen checks, in DESIGN order; probes run through the engine so their passes are counted."""
    ctx = Context(engine, suite, cells, where, results, info)
    return [check(ctx) for check in CHECKS]
