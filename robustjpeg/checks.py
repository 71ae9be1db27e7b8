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
TOL = 0.02  # accuracy slack between two attacks before a check fails
Outcome = tuple[str, float | None, str]  # status, measured value, one-line detail


def _grade(value: float, warn: float, fail: float) -> str:
    return "PASS" if value <= warn else ("WARN" if value <= fail else "FAIL")


class Context:
    """What the checks read: the engine (to probe the model), the suite, per-sample cells and the results records."""

    def __init__(self, engine, suite: Suite, cells: dict, where: dict, results: dict, info: dict) -> None:
        self.engine, self.suite, self.cells, self.where = engine, suite, cells, where
        self.results, self.info = results, info
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
        """Per budget, the lowest accuracy among the cells."""
        return {eps: min(self.acc(k) for k in ks) for eps, ks in self.by_eps(keys).items()}

    def cell_of(self, spec: AttackSpec, eps: float) -> str | None:
        found = [k for k, (s, n, e) in self.where.items() if s.name == spec.name and n == "Linf" and e == eps]
        return found[0] if found else None

    def probe_idx(self, mask: Tensor | None = None) -> Tensor:
        pool = torch.arange(self.n, device=self.engine.device) if mask is None else mask.nonzero().flatten()
        return pool[:PROBE]

    def attack(self, spec: AttackSpec, idx: Tensor, eps: float, tag: str) -> Tensor:
        """Run one attack on idx at a budget outside the grid; returns which of idx it broke."""
        adapter, craft, x, y = spec.build(), self.engine.craft_model(spec), self.engine.x, self.engine.y
        perturb = lambda chunk, seed: adapter.perturb(craft, x[chunk], y[chunk], eps, seed)  # noqa: E731
        return self.engine.break_samples(spec, f"check-{tag}", idx, eps, perturb, {})


def _plain(spec: AttackSpec) -> bool:
    return spec.view is None and spec.source == "model" and not spec.black_box


def _iterative(spec: AttackSpec) -> bool:
    return _plain(spec) and spec.kind in ("pgd", "apgd", "autoattack")


def _first_pgd(ctx: Context, views: tuple = (None,)) -> AttackSpec:
    """The suite's first PGD run, preferring the later entries of `views` (e.g. the BPDA view when there is one)."""
    found = [s for s in ctx.suite.attacks if s.kind == "pgd" and s.source == "model" and s.view in views]
    found.sort(key=lambda s: -views.index(s.view))
    return found[0] if found else AttackSpec(name="pgd", kind="pgd", params={"steps": 20})


def _lead(ctx: Context, weak: Callable[[AttackSpec], bool], strong: Callable[[AttackSpec], bool]) -> float | None:
    """Largest accuracy margin by which the `strong` runs beat the `weak` ones at a shared budget (None: none shared)."""
    a, b = ctx.min_acc(ctx.keys(weak)), ctx.min_acc(ctx.keys(strong))
    common = set(a) & set(b)
    return max(a[e] - b[e] for e in common) if common else None


def _standard_eps(ctx: Context) -> float | None:
    """The suite's standard budget when a white-box run covers it."""
    eps = ctx.suite.standard_eps
    return eps if eps in ctx.min_acc(ctx.keys(lambda s: not s.black_box)) else None


def eps0_equals_clean(ctx: Context) -> Outcome:
    zero = [k for k, (_, _, eps) in ctx.where.items() if eps == 0]
    gaps = [abs(int(ctx.cells[k].sum()) - int(ctx.engine.clean.sum())) / ctx.n for k in zero]
    cheap = [s for s in ctx.suite.attacks
             if s.source == "model" and s.build().cheap and not s.build().minimum_distortion]
    if not zero and not cheap:
        return "SKIP", None, "no budget 0 in the grid and no cheap attack to probe at 0"
    idx, changed = ctx.probe_idx(), 0
    for spec in cheap:
        changed += int((ctx.attack(spec, idx, 0.0, f"eps0-{spec.name}") != ~ctx.engine.clean[idx]).sum())
    value = max(gaps, default=0.0) + changed / len(idx)
    detail = (f"{len(zero)} cells at eps 0 vs clean {ctx.clean_acc:.4f}; {len(cheap)} attacks re-run at eps 0 on "
              f"{len(idx)} samples, {changed} outcomes changed")
    return ("PASS" if value == 0 else "FAIL"), value, detail


def inputs_in_unit_range(ctx: Context) -> Outcome:
    lo, hi = float(ctx.engine.x.min()), float(ctx.engine.x.max())
    value = max(0.0, -lo) + max(0.0, hi - 1)
    return ("PASS" if value == 0 else "FAIL"), value, f"inputs span [{lo:.4g}, {hi:.4g}]; normalisation lives in the model"


def adversarial_in_budget(ctx: Context) -> Outcome:
    stats = [m["stats"] for m in ctx.engine.meta.values() if m.get("stats")]
    if not stats:
        return "SKIP", None, "no adversarial example was crafted"
    excess = max(s.get("max_excess", 0.0) for s in stats)
    lo, hi = min(s["min"] for s in stats), max(s["max"] for s in stats)
    nan = sum(s["nan"] for s in stats)
    bad = excess > 1e-5 or lo < 0 or hi > 1 or nan
    detail = f"largest Linf excess over the budget {excess:.2g}, values in [{lo:.4g}, {hi:.4g}], {nan} with NaN"
    return ("FAIL" if bad else "PASS"), excess, detail


def robust_monotone_in_eps(ctx: Context) -> Outcome:
    """Stored curves never rise; and samples broken at small budgets stay broken when attacked afresh at the largest."""
    curves: dict[tuple, list[float]] = {}
    for k, (spec, norm, eps) in sorted(ctx.where.items(), key=lambda item: item[1][2]):
        curves.setdefault((spec.name, norm), []).append(ctx.acc(k))
    rise = max((b - a for accs in curves.values() for a, b in zip(accs, accs[1:])), default=0.0)
    if rise > 0:
        return "FAIL", rise, "a stored curve rises with eps (cells from different runs?)"
    spec, grid = _first_pgd(ctx), ctx.suite.eps
    below = ctx.cell_of(spec, grid[-2]) if len(grid) > 1 else None
    if below is None:
        return "PASS", 0.0, "stored curves never rise; no PGD run to re-test the nesting of budgets"
    broken_early = ctx.engine.clean & ~torch.as_tensor(ctx.cells[below], device=ctx.engine.device)
    idx = ctx.probe_idx(broken_early)
    if len(idx) == 0:
        return "PASS", 0.0, "stored curves never rise; nothing broken below the largest budget"
    survived = ~ctx.attack(spec, idx, grid[-1], "nesting")
    share = float(survived.float().mean())
    detail = (f"stored curves never rise; {spec.name} re-run at eps {grid[-1]:.4g} on {len(idx)} samples broken at "
              f"smaller budgets: {int(survived.sum())} survived")
    return _grade(share, 0.0, 0.1), share, detail


def eps1_to_chance(ctx: Context) -> Outcome:
    """The suite's strongest gradient view (BPDA when the suite has it) must reach chance with an unbounded budget."""
    spec, idx = _first_pgd(ctx, (None, "ste")), ctx.probe_idx()
    broken = ctx.attack(spec, idx, 1.0, "eps1")
    acc, chance = float((~broken & ctx.engine.clean[idx]).float().mean()), 1.0 / ctx.classes
    status = "PASS" if acc <= chance else ("WARN" if acc <= 2 * chance else "FAIL")
    return status, acc, f"{spec.name} at eps 1 on {len(idx)} samples leaves {acc:.3f} (chance {chance:.3f})"


def iterative_beats_single_step(ctx: Context) -> Outcome:
    gap = _lead(ctx, _iterative, lambda s: s.kind == "fgsm" and _plain(s))
    if gap is None:
        return "SKIP", None, "needs FGSM and an iterative white-box attack at the same budgets"
    return _grade(gap, 0.0, TOL), gap, f"largest excess of iterative over FGSM accuracy: {gap:+.4f}"


def _stronger(a: AttackSpec, b: AttackSpec) -> bool:
    """b is the same attack as a with at least as many steps and restarts, and more of one."""
    if (a.kind, a.view, a.source) != (b.kind, b.view, b.source):
        return False
    sa, sb = (a.build().strength(), a.restarts), (b.build().strength(), b.restarts)
    return sa != sb and sb[0] >= sa[0] and sb[1] >= sa[1]


def more_steps_never_help(ctx: Context) -> Outcome:
    rises = [ctx.acc(b) - ctx.acc(a) for keys in ctx.by_eps(ctx.keys(lambda s: True)).values()
             for a in keys for b in keys if _stronger(ctx.where[a][0], ctx.where[b][0])]
    if not rises:
        return "SKIP", None, "no two runs of one attack that differ only in steps or restarts"
    rise = max(rises)
    return _grade(rise, 0.0, TOL), rise, f"{len(rises)} weaker/stronger pairs; largest accuracy rise {rise:+.4f}"


def blackbox_weaker_than_whitebox(ctx: Context) -> Outcome:
    lead = _lead(ctx, lambda s: not s.black_box, lambda s: s.black_box and s.kind != "noise")
    if lead is None:
        return "SKIP", None, "no black-box (Square) or transfer run beside a white-box one"
    detail = f"largest lead of black-box/transfer over the best white-box attack: {lead:+.4f} (a lead means masking)"
    return _grade(lead, 0.0, TOL), lead, detail


def _gradient_flags(engine, chunk: Tensor) -> Tensor:
    """Per sample: [input gradient of the logit margin all zero, any NaN/inf]."""
    x = engine.x[chunk].clone().requires_grad_(True)
    logits, y = engine.model(x), engine.y[chunk]
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -float("inf")).amax(1)
    grad = torch.autograd.grad((other - true).sum(), x)[0].flatten(1)
    return torch.stack([(grad == 0).all(1), (~torch.isfinite(grad)).any(1)], 1)


def gradient_health(ctx: Context) -> Outcome:
    idx = torch.arange(min(ctx.n, 256), device=ctx.engine.device)
    zero, bad = ctx.engine.map(idx, lambda chunk: _gradient_flags(ctx.engine, chunk)).float().mean(0).tolist()
    status = "FAIL" if bad > 0 or zero > 0.5 else _grade(zero, 0.01, 1.0)
    return status, zero + bad, f"margin-loss input gradient on {len(idx)} samples: {zero:.1%} all zero, {bad:.1%} NaN/inf"


def deterministic(ctx: Context) -> Outcome:
    idx = torch.arange(min(ctx.n, 256), device=ctx.engine.device)
    a, b = (ctx.engine.map(idx, lambda chunk: ctx.engine.predict_logits(ctx.engine.x[chunk])) for _ in range(2))
    diff, flips = float((a - b).abs().max()), int((a.argmax(1) != b.argmax(1)).sum())
    status = "PASS" if diff == 0 else ("FAIL" if flips else "WARN")
    return status, diff, f"largest logit change between two identical passes {diff:.3g}, {flips} labels changed"


def bpda_not_stronger(ctx: Context) -> Outcome:
    if not jpeg_layers(ctx.engine.model):
        return "SKIP", None, "the model has no JPEG layer"
    lead = _lead(ctx, _plain, lambda s: s.view == "ste" and s.source == "model")
    if lead is None:
        return "WARN", None, "JPEG model without a BPDA (view = ste) run; sweep the adaptive suite too"
    detail = f"largest lead of BPDA over plain white-box accuracy: {lead:+.4f} (a lead means masked plain gradients)"
    return _grade(lead, 0.01, 0.05), lead, detail


def noise_weaker_than_attack(ctx: Context) -> Outcome:
    eps = _standard_eps(ctx)
    if eps is None:
        return "SKIP", None, f"no white-box run at the standard budget {ctx.suite.standard_eps:.4g}; add it to --eps"
    attack_drop = ctx.clean_acc - ctx.min_acc(ctx.keys(lambda s: not s.black_box))[eps]
    if attack_drop <= 0:
        return "WARN", None, f"the attacks did not lower accuracy at eps {eps:.4g}"
    broken = ctx.attack(AttackSpec(name="noise", kind="noise"), ctx.engine.clean.nonzero().flatten(), eps, "noise")
    ratio = int(broken.sum()) / ctx.n / attack_drop
    return _grade(ratio, 0.5, 0.9), ratio, f"at eps {eps:.4g} uniform noise does {ratio:.3f} of the attacks' damage"


def undefended_to_zero(ctx: Context) -> Outcome:
    if jpeg_layers(ctx.engine.model) or ctx.info.get("defended"):
        return "SKIP", None, "the model is a defended one (JPEG layer, or marked defended)"
    eps = _standard_eps(ctx)
    if eps is None:
        return "SKIP", None, f"no white-box run at the standard budget {ctx.suite.standard_eps:.4g}; add it to --eps"
    acc = ctx.min_acc(ctx.keys(lambda s: not s.black_box))[eps]
    detail = f"keeps {acc:.4f} at the standard budget {eps:.4g} (expected about 0; mark adversarially trained models defended)"
    return _grade(acc, 0.05, 1.0), acc, detail


def logits_not_probabilities(ctx: Context) -> Outcome:
    logits = ctx.engine.logits
    gap = float((logits.sum(1) - 1).abs().max())
    if bool((logits >= 0).all()) and gap < 1e-3:
        return "FAIL", gap, "outputs are probabilities (rows sum to 1); attacks need logits: drop the softmax"
    if bool((logits <= 0).all()) and float(torch.logsumexp(logits, 1).abs().max()) < 1e-3:
        return "WARN", gap, "outputs look like log-probabilities; cross-entropy still works, margins shrink"
    return "PASS", gap, f"outputs are logits ({ctx.classes} classes, largest |row sum - 1| {gap:.3g})"


def worst_is_per_sample(ctx: Context) -> Outcome:
    wrong = 0
    for norm in ("Linf", "L2"):
        for eps, keys in ctx.by_eps(ctx.keys(lambda s: True, norm)).items():
            expect = int(np.logical_and.reduce([ctx.cells[k] for k in keys]).sum())
            record = [w["robust"] for w in ctx.results["worst_case"] if (w["norm"], w["eps"]) == (norm, eps)]
            wrong += record != [expect] or expect > min(int(ctx.cells[k].sum()) for k in keys)
    detail = f"{len(ctx.results['worst_case'])} worst-case budgets; {wrong} differ from the per-sample AND over attacks"
    return ("PASS" if wrong == 0 else "FAIL"), wrong, detail


def _has_interval(record: dict) -> bool:
    ci = record.get("ci95", [])
    return bool(record.get("n")) and len(ci) == 2 and ci[0] - 1e-6 <= record["accuracy"] <= ci[1] + 1e-6


def accuracy_has_ci(ctx: Context) -> Outcome:
    records = [ctx.results["clean"], *ctx.results["cells"], *ctx.results["worst_case"]]
    missing = sum(not _has_interval(r) for r in records)
    width = max(r["ci95"][1] - r["ci95"][0] for r in records if _has_interval(r))
    detail = f"{len(records)} accuracies, {missing} without n or a Wilson 95% interval; widest {width:.3f} (n = {ctx.n})"
    return ("PASS" if missing == 0 else "FAIL"), width, detail


CHECKS = [eps0_equals_clean, inputs_in_unit_range, adversarial_in_budget, robust_monotone_in_eps, eps1_to_chance,
          iterative_beats_single_step, more_steps_never_help, blackbox_weaker_than_whitebox, gradient_health,
          deterministic, bpda_not_stronger, noise_weaker_than_attack, undefended_to_zero, logits_not_probabilities,
          worst_is_per_sample, accuracy_has_ci]


def run_checks(engine, suite: Suite, cells: dict, where: dict, results: dict, info: dict) -> list[dict]:
    """All sixteen checks in DESIGN order, as {id, name, status, value, detail}; probes count as passes."""
    ctx = Context(engine, suite, cells, where, results, info)
    out = []
    for number, check in enumerate(CHECKS, start=1):
        status, value, detail = check(ctx)
        value = None if value is None or not math.isfinite(value) else value
        out.append({"id": number, "name": check.__name__, "status": status, "value": value, "detail": detail})
    return out
