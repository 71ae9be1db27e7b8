"""The sanity checks of an evaluation (DESIGN 4 and the attack-strength checks 17-18): each PASS / WARN / FAIL / SKIP
with its figure. Every check declares its id; 2, 15 and 16 are invariants the code enforces, recorded apart.

Longer than 300 lines on purpose: the registry holds the protocol's eighteen checks as short functions in id order,
so the file reads like the protocol it implements; what they share (the Context over cells, worst cases, distances,
and the probes that attack a few samples again through the engine) sits at the top.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from robustjpeg.attacks.adapters import NORMS
from robustjpeg.attacks.suites import AttackSpec, Suite
from robustjpeg.evaluation import optimality as opt
from robustjpeg.evaluation.cells import perturber
from robustjpeg.evaluation.results import CellKey
from robustjpeg.models.info import ModelInfo
from robustjpeg.models.jpeg import jpeg_layers

PROBE = 64  # samples a probe re-attacks (checks 1, 4, 5)
TOL = 0.02  # accuracy slack between two attacks before a check fails
OPTIMAL = 0.9  # a minimum-norm attack whose curve area is below this share of the best-of-all gets a WARN (check 17)
AGREE = (0.01, 0.03)  # share of samples on which fixed-budget and minimum-norm attacks may disagree: WARN, FAIL (18)
Outcome = tuple[str, float | None, str]  # status, measured value, one-line detail
CHECKS: dict[int, Callable] = {}
INVARIANTS: dict[int, Callable] = {}


def check(number: int, table: dict | None = None):
    """Register a check under its DESIGN number (the id every output carries)."""
    def wrap(fn: Callable) -> Callable:
        fn.id = number
        (CHECKS if table is None else table)[number] = fn
        return fn
    return wrap


def invariant(number: int):
    """Register a property the code guarantees by construction; recorded as held or broken, not graded."""
    return check(number, INVARIANTS)


def _grade(value: float, warn: float, fail: float) -> str:
    return "PASS" if value <= warn else ("WARN" if value <= fail else "FAIL")


class Context:
    """What the checks read: the engine (to probe the model), the suite, per-sample cells and the results records."""

    def __init__(self, engine, suite: Suite, cells: dict, where: dict, results: dict, info: ModelInfo,
                 distances: dict[str, np.ndarray] | None = None) -> None:
        self.engine, self.suite, self.cells, self.where = engine, suite, cells, where
        self.results, self.info, self.distances = results, info, distances or {}
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

    def curves(self, norm: str, keep: Callable[[AttackSpec], bool]) -> dict[str, list[tuple[float, np.ndarray]]]:
        """Per attack of one norm, its nested outcomes over the grid [(eps, robust)]."""
        out: dict[str, list] = {}
        for k, (spec, n, eps) in self.where.items():
            if n == norm and keep(spec):
                out.setdefault(spec.name, []).append((eps, self.cells[k]))
        return out

    def norm_distances(self, norm: str) -> dict[str, np.ndarray]:
        """Per minimum-norm attack of one norm, each sample's distance (inf where it failed)."""
        keys = {CellKey.parse(key, "distance"): d for key, d in self.distances.items()}
        return {key.attack: d for key, d in keys.items() if key.norm == norm}

    def cell_of(self, spec: AttackSpec, eps: float) -> str | None:
        found = [k for k, (s, n, e) in self.where.items() if s.name == spec.name and n == "Linf" and e == eps]
        return found[0] if found else None

    def probe_idx(self, mask: Tensor | None = None) -> Tensor:
        pool = torch.arange(self.n, device=self.engine.device) if mask is None else mask.nonzero().flatten()
        return pool[:PROBE]

    def attack(self, spec: AttackSpec, idx: Tensor, eps: float, tag: str) -> Tensor:
        """Run one attack on idx at a budget outside the grid; returns which of idx it broke."""
        perturb = perturber(self.engine, spec, spec.build(), eps)
        return self.engine.break_samples(spec, f"check-{tag}", idx, eps, perturb, {})


def _plain(spec: AttackSpec) -> bool:
    return spec.plain


def _iterative(spec: AttackSpec) -> bool:
    return spec.plain and spec.adapter.iterative


def _bpda(spec: AttackSpec) -> bool:
    return spec.view == "ste" and spec.source == "model"


def _cascaded(ctx: Context) -> str:
    return "; cascade: the share of samples only they broke" if ctx.suite.cascade else ""


def _fixed_budget(spec: AttackSpec) -> bool:
    return not spec.adapter.minimum_norm


def _first_pgd(ctx: Context, views: tuple = (None,)) -> AttackSpec:
    """The suite's first Linf PGD run, preferring the later entries of `views` (e.g. the BPDA view when there is one)."""
    found = [s for s in ctx.suite.attacks
             if s.kind == "pgd" and s.norm == "Linf" and s.source == "model" and s.view in views]
    found.sort(key=lambda s: -views.index(s.view))
    return found[0] if found else AttackSpec(name="pgd", kind="pgd", params={"steps": 20})


def _lead(ctx: Context, weak: Callable[[AttackSpec], bool], strong: Callable[[AttackSpec], bool]) -> float | None:
    """Largest accuracy margin by which the `strong` runs beat the `weak` ones at a shared budget of either norm
    (None: no budget shared)."""
    leads = []
    for norm in NORMS:
        a, b = ctx.min_acc(ctx.keys(weak, norm)), ctx.min_acc(ctx.keys(strong, norm))
        leads += [a[e] - b[e] for e in set(a) & set(b)]
    return max(leads) if leads else None


CASCADE = "cascade: per-attack curves are cumulative (robust after attacks 1..k); sweep with cascade = false to compare"


def _cascade_order(ctx: Context, weak: Callable[[AttackSpec], bool], strong: Callable[[AttackSpec], bool]) -> bool:
    """Under cascade, whether a `strong` lead over `weak` means what it says: in each norm the attacks up to the last
    `strong` one are the `weak` ones, then the `strong` ones; the lead is then the share only the `strong` broke."""
    for norm in NORMS:
        specs = list({s.name: s for s, n, _ in ctx.where.values() if n == norm and _fixed_budget(s)}.values())
        roles = "".join("w" if weak(s) else ("s" if strong(s) else "-") for s in specs)
        if "s" in roles and "w" in roles and not re.fullmatch(r"w*s+", roles[:roles.rindex("s") + 1]):
            return False
    return True


def _standard_eps(ctx: Context, norm: str = "Linf") -> float | None:
    """The suite's standard budget of one norm when a white-box run covers it."""
    eps = ctx.suite.standard(norm)
    return eps if eps is not None and eps in ctx.min_acc(ctx.keys(lambda s: not s.black_box, norm)) else None


@check(1)
def eps0_equals_clean(ctx: Context) -> Outcome:
    zero = [k for k, (_, _, eps) in ctx.where.items() if eps == 0]
    gaps = [abs(int(ctx.cells[k].sum()) - int(ctx.engine.clean.sum())) / ctx.n for k in zero]
    cheap = [s for s in ctx.suite.attacks if s.source == "model" and s.adapter.cheap and not s.adapter.minimum_norm]
    if not zero and not cheap:
        return "SKIP", None, "no budget 0 in the grid and no cheap attack to probe at 0"
    idx, changed = ctx.probe_idx(), 0
    for spec in cheap:
        changed += int((ctx.attack(spec, idx, 0.0, f"eps0-{spec.name}") != ~ctx.engine.clean[idx]).sum())
    value = max(gaps, default=0.0) + changed / len(idx)
    detail = (f"{len(zero)} cells at eps 0 vs clean {ctx.clean_acc:.4f}; {len(cheap)} attacks re-run at eps 0 on "
              f"{len(idx)} samples, {changed} outcomes changed")
    return ("PASS" if value == 0 else "FAIL"), value, detail


@invariant(2)
def inputs_in_unit_range(ctx: Context) -> Outcome:
    lo, hi = float(ctx.engine.x.min()), float(ctx.engine.x.max())
    value = max(0.0, -lo) + max(0.0, hi - 1)
    return ("PASS" if value == 0 else "FAIL"), value, f"inputs span [{lo:.4g}, {hi:.4g}]; normalisation lives in the model"


@check(3)
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


@check(4)
def robust_monotone_in_eps(ctx: Context) -> Outcome:
    """Stored curves never rise; and samples broken at small budgets stay broken when attacked afresh at the largest."""
    curves: dict[tuple, list[float]] = {}
    for k, (spec, norm, _eps) in sorted(ctx.where.items(), key=lambda item: item[1][2]):
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
    survived = int((~ctx.attack(spec, idx, grid[-1], "nesting")).sum())
    share = survived / len(idx)
    detail = (f"stored curves never rise; {spec.name} re-run at eps {grid[-1]:.4g} on {len(idx)} samples broken at "
              f"smaller budgets: {survived} survived" + (" (a noisy or masked attack there; nesting keeps the "
                                                         "reported curves monotone)" if survived else ""))
    return ("PASS" if survived == 0 else "WARN"), share, detail


@check(5)
def eps1_to_chance(ctx: Context) -> Outcome:
    """The suite's strongest gradient view (BPDA when the suite has it) must reach chance with an unbounded budget."""
    spec, idx = _first_pgd(ctx, (None, "ste")), ctx.probe_idx()
    broken = ctx.attack(spec, idx, 1.0, "eps1")
    acc, chance = float((~broken & ctx.engine.clean[idx]).float().mean()), 1.0 / ctx.classes
    status = "PASS" if acc <= chance else ("WARN" if acc <= 2 * chance else "FAIL")
    return status, acc, f"{spec.name} at eps 1 on {len(idx)} samples leaves {acc:.3f} (chance {chance:.3f})"


@check(6)
def iterative_beats_single_step(ctx: Context) -> Outcome:
    if ctx.suite.cascade:  # a later attack's cells hold every earlier attack's breaks: it can only look stronger
        return "SKIP", None, CASCADE
    gap = _lead(ctx, _iterative, lambda s: s.adapter.single_step and _plain(s))
    if gap is None:
        return "SKIP", None, "needs FGSM and an iterative white-box attack at the same budgets"
    return _grade(gap, 0.0, TOL), gap, f"largest excess of iterative over FGSM accuracy: {gap:+.4f}"


def _stronger(a: AttackSpec, b: AttackSpec) -> bool:
    """b is the same attack as a with at least as many steps and restarts, and more of one."""
    if (a.kind, a.view, a.source) != (b.kind, b.view, b.source):
        return False
    sa, sb = (a.build().strength(), a.restarts), (b.build().strength(), b.restarts)
    return sa != sb and sb[0] >= sa[0] and sb[1] >= sa[1]


@check(7)
def more_steps_never_help(ctx: Context) -> Outcome:
    if ctx.suite.cascade:
        return "SKIP", None, CASCADE
    rises = [ctx.acc(b) - ctx.acc(a) for norm in NORMS for keys in ctx.by_eps(ctx.keys(lambda s: True, norm)).values()
             for a in keys for b in keys if _stronger(ctx.where[a][0], ctx.where[b][0])]
    if not rises:
        return "SKIP", None, "no two runs of one attack that differ only in steps or restarts"
    rise = max(rises)
    return _grade(rise, 0.0, TOL), rise, f"{len(rises)} weaker/stronger pairs; largest accuracy rise {rise:+.4f}"


@check(8)
def blackbox_weaker_than_whitebox(ctx: Context) -> Outcome:
    white, black = (lambda s: not s.black_box), (lambda s: s.black_box and not s.adapter.noise_baseline)
    if ctx.suite.cascade and not _cascade_order(ctx, white, black):
        return "SKIP", None, CASCADE + " (or list the black-box and transfer attacks after the white-box ones)"
    lead = _lead(ctx, white, black)
    if lead is None:
        return "SKIP", None, "no black-box (Square) or transfer run beside a white-box one"
    detail = (f"largest lead of black-box/transfer over the best white-box attack: {lead:+.4f} (a lead means masking)"
              + _cascaded(ctx))
    return _grade(lead, 0.0, TOL), lead, detail


def _gradient_flags(engine, chunk: Tensor) -> Tensor:
    """Per sample: [input gradient of the logit margin all zero, any NaN/inf]."""
    x = engine.x[chunk].clone().requires_grad_(True)
    logits, y = engine.model(x), engine.y[chunk]
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -float("inf")).amax(1)
    grad = torch.autograd.grad((other - true).sum(), x)[0].flatten(1)
    return torch.stack([(grad == 0).all(1), (~torch.isfinite(grad)).any(1)], 1)


@check(9)
def gradient_health(ctx: Context) -> Outcome:
    idx = torch.arange(min(ctx.n, 256), device=ctx.engine.device)
    zero, bad = ctx.engine.map(idx, lambda chunk: _gradient_flags(ctx.engine, chunk)).float().mean(0).tolist()
    status = "FAIL" if bad > 0 or zero > 0.5 else _grade(zero, 0.01, 1.0)
    return status, zero + bad, f"margin-loss input gradient on {len(idx)} samples: {zero:.1%} all zero, {bad:.1%} NaN/inf"


@check(10)
def deterministic(ctx: Context) -> Outcome:
    idx = torch.arange(min(ctx.n, 256), device=ctx.engine.device)
    a, b = (ctx.engine.map(idx, lambda chunk: ctx.engine.predict_logits(ctx.engine.x[chunk])) for _ in range(2))
    diff, flips = float((a - b).abs().max()), int((a.argmax(1) != b.argmax(1)).sum())
    status = "PASS" if diff == 0 else ("FAIL" if flips else "WARN")
    return status, diff, f"largest logit change between two identical passes {diff:.3g}, {flips} labels changed"


@check(11)
def bpda_not_stronger(ctx: Context) -> Outcome:
    if not jpeg_layers(ctx.engine.model):
        return "SKIP", None, "the model has no JPEG layer"
    if ctx.suite.cascade and not _cascade_order(ctx, _plain, _bpda):
        return "SKIP", None, CASCADE + " (or list the BPDA attacks right after the plain ones)"
    lead = _lead(ctx, _plain, _bpda)
    if lead is None:
        return "WARN", None, "JPEG model without a BPDA (view = ste) run; sweep the adaptive suite too"
    detail = (f"largest lead of BPDA over plain white-box accuracy: {lead:+.4f} (a lead means masked plain gradients)"
              + _cascaded(ctx))
    return _grade(lead, 0.01, 0.05), lead, detail


@check(12)
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


@check(13)
def undefended_to_zero(ctx: Context) -> Outcome:
    """At each norm's standard budget an undefended model keeps about nothing; the worse norm is the figure."""
    if jpeg_layers(ctx.engine.model) or ctx.info.defended:
        return "SKIP", None, "the model is a defended one (JPEG layer, or marked defended)"
    kept = {norm: ctx.min_acc(ctx.keys(lambda s: not s.black_box, norm))[eps]
            for norm in NORMS if (eps := _standard_eps(ctx, norm)) is not None}
    if not kept:
        return "SKIP", None, f"no white-box run at the standard budget {ctx.suite.standard_eps:.4g}; add it to --eps"
    acc = max(kept.values())
    parts = [f"{acc_n:.4f} at {norm} {ctx.suite.standard(norm):.4g}" for norm, acc_n in kept.items()]
    detail = f"keeps {', '.join(parts)} (expected about 0; mark adversarially trained models defended)"
    return _grade(acc, 0.05, 1.0), acc, detail


@check(14)
def logits_not_probabilities(ctx: Context) -> Outcome:
    logits = ctx.engine.logits
    gap = float((logits.sum(1) - 1).abs().max())
    if bool((logits >= 0).all()) and gap < 1e-3:
        return "FAIL", gap, "outputs are probabilities (rows sum to 1); attacks need logits: drop the softmax"
    if bool((logits <= 0).all()) and float(torch.logsumexp(logits, 1).abs().max()) < 1e-3:
        return "WARN", gap, "outputs look like log-probabilities; cross-entropy still works, margins shrink"
    return "PASS", gap, f"outputs are logits ({ctx.classes} classes, largest |row sum - 1| {gap:.3g})"


@invariant(15)
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


@invariant(16)
def accuracy_has_ci(ctx: Context) -> Outcome:
    records = [ctx.results["clean"], *ctx.results["cells"], *ctx.results["worst_case"]]
    missing = sum(not _has_interval(r) for r in records)
    width = max(r["ci95"][1] - r["ci95"][0] for r in records if _has_interval(r))
    detail = f"{len(records)} accuracies, {missing} without n or a Wilson 95% interval; widest {width:.3f} (n = {ctx.n})"
    return ("PASS" if missing == 0 else "FAIL"), width, detail


def _optimality(ctx: Context, norm: str) -> list[dict]:
    """Each minimum-norm attack of one norm against the best of every attack of that norm (per-sample reference)."""
    distances = ctx.norm_distances(norm)
    if not distances:
        return []
    bounds = [opt.first_break(curve) for curve in ctx.curves(norm, _fixed_budget).values()]
    best, upper = opt.best_distance(distances, bounds), max(ctx.suite.grid(norm))
    clean = ctx.engine.clean.cpu().numpy()
    return [{"attack": name, "norm": norm, "optimality": round(opt.optimality(d, best, upper), 4),
             "found": float(np.isfinite(d[clean]).mean()) if clean.any() else 0.0,
             "median_distance": float(np.median(d[clean])) if clean.any() else None, "upper": upper}
            for name, d in distances.items()]


def optimality_records(ctx: Context) -> list[dict]:
    return [r for norm in NORMS for r in _optimality(ctx, norm)]


@check(17)
def minimum_norm_optimality(ctx: Context) -> Outcome:
    """No minimum-norm attack is far from the best-of-all curve (AttackBench's optimality, area ratio)."""
    records = optimality_records(ctx)
    if not records:
        return "SKIP", None, "no minimum-norm attack in the suite"
    worst = min(records, key=lambda r: r["optimality"])
    weak = [f"{r['attack']} ({r['norm']}) {r['optimality']:.3f}" for r in records if r["optimality"] < OPTIMAL]
    text = ", ".join(f"{r['attack']} {r['norm']} {r['optimality']:.3f}" for r in records)
    detail = f"optimality against the best of all attacks: {text}" + (f"; far from the best: {', '.join(weak)}"
                                                                       if weak else "")
    return ("WARN" if weak else "PASS"), worst["optimality"], detail


def _disagreements(ctx: Context, norm: str) -> tuple[int, int, float, int] | None:
    """Over the grid of one norm, the largest counts of (fixed-budget breaks every minimum-norm attack missed, the
    reverse), the budget where they peak, and how many samples the reverse count is out of; None without both
    families. Under cascade the fixed-budget attacks never see what a minimum-norm attack broke, so the reverse
    count comes from a probe (_fixed_misses)."""
    distances = list(ctx.norm_distances(norm).values())
    curves = ctx.curves(norm, _fixed_budget)
    if not distances or not curves:
        return None
    per_eps = {eps: opt.disagreement(~np.logical_and.reduce([r for c in curves.values() for e, r in c if e == eps]),
                                     distances, eps) for eps in ctx.suite.grid(norm)}
    out_of = ctx.n
    if ctx.suite.cascade:
        misses, out_of = _fixed_misses(ctx, norm, np.minimum.reduce(distances), list(curves))
        per_eps = {eps: (a, misses.get(eps, 0)) for eps, (a, _) in per_eps.items()}
    peak = max(per_eps, key=lambda e: max(per_eps[e]))
    return max(a for a, _ in per_eps.values()), max(b for _, b in per_eps.values()), peak, out_of


def _fixed_misses(ctx: Context, norm: str, distance: np.ndarray, names: list[str]) -> tuple[dict[float, int], int]:
    """Up to PROBE clean-correct samples a minimum-norm attack broke, attacked over the grid as the fixed-budget
    attacks of the norm would attack them without cascade (in the suite's order, each on the survivors of the ones
    above, none again once broken), from the smallest budget the minimum-norm distance reaches: per budget, how many
    they left robust there, and the number probed."""
    specs = [s for s in ctx.suite.attacks if s.name in names]
    pool = np.flatnonzero(ctx.engine.clean.cpu().numpy() & np.isfinite(distance))[:PROBE]
    alive, misses = torch.as_tensor(pool, device=ctx.engine.device), {}
    for eps in (e for e in ctx.suite.grid(norm) if e > 0):
        idx = alive[torch.as_tensor(distance[alive.cpu().numpy()] <= eps, device=alive.device)]
        for spec in specs:
            if len(idx):
                idx = idx[~ctx.attack(spec, idx, eps, f"agree-{spec.name}")]
        misses[eps] = len(idx)
        reached = torch.as_tensor(distance[alive.cpu().numpy()] <= eps, device=alive.device)
        alive = alive[~reached | torch.isin(alive, idx)]
    return misses, len(pool)


@check(18)
def fixed_budget_agrees_with_minimum_norm(ctx: Context) -> Outcome:
    """Samples that one family of attacks breaks at a budget while the other calls them robust there: a share above
    AGREE[1] means that family is too weak on this model and data."""
    found = {norm: d for norm in NORMS if (d := _disagreements(ctx, norm)) is not None}
    if not found:
        return "SKIP", None, "needs a minimum-norm and a fixed-budget attack of the same norm"
    share = max(max(a / ctx.n, b / max(m, 1)) for a, b, _, m in found.values())
    parts = [f"{norm}: {a} broken only by fixed-budget attacks (minimum-norm too weak), {b}"
             + (f" of {m} probed" if m != ctx.n else "") + " only by minimum-norm attacks (fixed-budget too weak), "
             f"most at eps {e:.4g}" for norm, (a, b, e, m) in found.items()]
    detail = f"largest share {share:.3f} of {ctx.n} samples; " + "; ".join(parts)
    return _grade(share, *AGREE), share, detail


def run_checks(engine, suite: Suite, cells: dict, where: dict, results: dict, info: ModelInfo,
               distances: dict[str, np.ndarray] | None = None) -> dict:
    """Every check by id ({id, name, status, value, detail}), the invariants (held or not) and each minimum-norm
    attack's optimality; probes count as passes."""
    ctx = Context(engine, suite, cells, where, results, info, distances)
    checks = [_record(number, fn, ctx) for number, fn in sorted(CHECKS.items())]
    invariants = [_held(_record(number, fn, ctx)) for number, fn in sorted(INVARIANTS.items())]
    return {"checks": checks, "invariants": invariants, "optimality": optimality_records(ctx)}


def _held(record: dict) -> dict:
    """An invariant's record: held (True/False) instead of a grade."""
    status = record.pop("status")
    return {**record, "held": status == "PASS"}


def _record(number: int, fn: Callable, ctx: Context) -> dict:
    status, value, detail = fn(ctx)
    value = None if value is None or not math.isfinite(value) else value
    return {"id": number, "name": fn.__name__, "status": status, "value": value, "detail": detail}
