"""One reliability verdict for every output (report, model card, compare, history, bench's exit code).

A run is *unreliable* when a check that tests the evaluation itself FAILed, or an invariant broke: its numbers cannot
be trusted. It is *overstated* when a masking check FAILed in it or in another run of the same model: some of its
attacks are weaker than others on this model, so its per-attack figures overstate robustness. A model's worst case
over every suite is trustworthy when no run is unreliable and, if gradient masking was found, an adaptive attack
(BPDA, transfer or black box) ran in one of its suites: that worst case already holds the attack that overcomes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from robustjpeg.evaluation import checks

# Checks whose FAIL says that some attacks of the suite are weaker than others on this model, not that the
# evaluation is broken: the suite's worst case holds the stronger attack. The gradient-masking ones (the plain
# gradients mislead every gradient attack) leave a worst case trusted only if an adaptive attack ran too; a
# disagreement between fixed-budget and minimum-norm attacks is settled inside the worst case itself.
GRADIENT_MASKING = frozenset(fn.__name__ for fn in (checks.iterative_beats_single_step,
                                                     checks.blackbox_weaker_than_whitebox, checks.bpda_not_stronger))
MASKING_CHECKS = GRADIENT_MASKING | {checks.fixed_budget_agrees_with_minimum_norm.__name__}
STATUSES = ("reliable", "overstated", "unreliable")


@dataclass(frozen=True)
class Verdict:
    """reliable / overstated / unreliable, why, and the checks that FAILed (invariants that broke)."""

    status: str
    reason: str
    failed: tuple[str, ...] = ()

    @property
    def trusted(self) -> bool:
        return self.status == "reliable"

    def to_dict(self) -> dict:
        return {"verdict": self.status, "verdict_reason": self.reason, "failed_checks": list(self.failed),
                "unreliable": not self.trusted}


def _failed(results: dict) -> list[str]:
    checks_failed = [c["name"] for c in results.get("checks", []) if c.get("status") == "FAIL"]
    return checks_failed + [f"invariant {i['name']}" for i in results.get("invariants", []) if i.get("held") is False]


def _masking(results: dict) -> list[str]:
    return [name for name in _failed(results) if name in MASKING_CHECKS]


def run_verdict(results: dict, model_results: Iterable[dict] = ()) -> Verdict:
    """The verdict of one run (results.json content), given the results of the same model's other runs."""
    failed = _failed(results)
    hard = [name for name in failed if name not in MASKING_CHECKS]
    if hard:
        return Verdict("unreliable", f"{', '.join(hard)} FAILed: the evaluation itself is in doubt", tuple(failed))
    here = _masking(results)
    if here:
        return Verdict("overstated", f"{', '.join(here)} FAILed: some attacks are weaker than others on this model; "
                       "read the worst case over every suite", tuple(failed))
    elsewhere = sorted({name for other in model_results if other is not results for name in _masking(other)})
    if elsewhere:
        return Verdict("overstated", f"another suite of this model FAILed {', '.join(elsewhere)} (masked gradients); "
                       "read the worst case over every suite", tuple(failed))
    return Verdict("reliable", "no check FAILed", tuple(failed))


def _adaptive_norms(facts: dict) -> set[str]:
    """The norms in which the run's suite holds an attack that does not rely on the model's own gradients."""
    from robustjpeg.attacks.suites import Suite

    suite = facts.get("suite") or {}
    specs = Suite.from_dict(suite).attacks if suite.get("attacks") else []
    return {s.norm for s in specs if s.view or s.source == "transfer" or (s.black_box and not s.adapter.noise_baseline)}


def _reported_norms(results: dict) -> set[str]:
    return {w["norm"] for w in results.get("worst_case", []) if w.get("eps", 0) > 0}


def model_verdict(runs: list[tuple[dict, dict]]) -> Verdict:
    """The verdict of one model's worst case over every suite, from its runs' (facts, results): with gradient
    masking found, every norm it reports needs an adaptive attack in some suite."""
    verdicts = [run_verdict(results, [r for _, r in runs]) for _, results in runs]
    bad = [v for v in verdicts if v.status == "unreliable"]
    if bad:
        return Verdict("unreliable", bad[0].reason, bad[0].failed)
    masked = sorted({name for _, results in runs for name in _masking(results) if name in GRADIENT_MASKING})
    if not masked:
        return Verdict("reliable", "no check of the evaluation FAILed in any suite, and no gradient masking was found")
    covered = set().union(*(_adaptive_norms(facts) for facts, _ in runs))
    missing = sorted(set().union(*(_reported_norms(results) for _, results in runs)) - covered)
    if not missing:
        return Verdict("reliable", f"masking found ({', '.join(masked)}) and overcome: this worst case includes "
                       f"adaptive attacks in {', '.join(sorted(covered))}", tuple(masked))
    return Verdict("overstated", f"masking found ({', '.join(masked)}) but no adaptive attack (BPDA, transfer, black "
                   f"box) ran in {', '.join(missing)}: sweep the adaptive suite too", tuple(masked))
