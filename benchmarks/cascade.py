"""The standard suite with cascade, without it, and the naive way, side by side on the shared CIFAR-10 models: the
undefended ResNet-20 and the adversarially trained CNN-A, on the CIFAR-10 JPEG test images, at the suite's budgets.

The naive way is what a user without the engine would write: the official AutoAttack (pyautoattack, standard) run
directly at every budget of both norms, a torchattacks loop over every other fixed-budget attack of the suite (each
restart, every budget, every sample: FGSM, PGD, PGD-L2, APGD, APGD-T, Square) and the minimum-norm attacks once
each. Prints each way's per-sample passes (forward + backward; attacks, not the engine's checks) and wall time, the
share of the naive passes, the passes per attack, and the (sample, budget) pairs the naive way breaks that the
engine's worst case leaves robust, and the other way round; then cascade against full the same way (0 / 0 but
for Square, whose draws depend on its batch). Repetitions are interleaved; the median wall time counts.

--cache DIR keeps every finished (model, way, repetition) there and reads it back instead of running it again, so a
long benchmark can be split over invocations.

    OMP_NUM_THREADS=1 python benchmarks/cascade.py [-n 200] [--reps 1] [--threads 1] [--models resnet20,cnn_a]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path[:0] = [str(ROOT)]

from robustjpeg.attacks.adapters import NORMS  # noqa: E402
from robustjpeg.attacks.suites import load_suite  # noqa: E402
from robustjpeg.data.datasets import eval_tensors, load_dataset  # noqa: E402
from robustjpeg.evaluation.engine import PassCounter, perturbation_norm  # noqa: E402
from robustjpeg.evaluation.reference import reference_sweep  # noqa: E402
from robustjpeg.evaluation.results import CellKey, cell_metas, read_run  # noqa: E402
from robustjpeg.evaluation.sweep import SweepConfig, run_sweep  # noqa: E402
from robustjpeg.models.loading import load_model  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR = ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255))
MODELS = {"resnet20": ("ResNet-20 (undefended)", "models/cifar10/resnet20-12fca82f.th", IMAGENET),
          "cnn_a": ("CNN-A (adversarially trained)", "models/robust/cifar_cnn_a_adv.pt", CIFAR)}
WAYS = ("cascade", "full", "naive")
Outcome = dict  # {"broken": {"norm|eps": [bool per sample]}, "passes": {part: int}, "wall_s": float}


def load(name: str, n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A shared model and the first-seed class-stratified n CIFAR-10 JPEG test images, as the sweep command picks."""
    _, file, (mean, std) = MODELS[name]
    model, _ = load_model(SHARED / file, arch=name, mean=mean, std=std)
    x, y, _ = eval_tensors(load_dataset(f"imagefolder:{SHARED / 'data/cifar10-jpeg'}"), n, seed=0)
    return model.eval(), x, y


def nest(broken: dict[tuple[str, float], torch.Tensor], clean: torch.Tensor) -> dict[str, list[bool]]:
    """Per 'norm|eps' the samples broken there: clean-wrong, or broken at this or a smaller budget of the norm."""
    out, seen = {}, {}
    for norm, eps in sorted(broken):
        seen[norm] = seen.get(norm, ~clean) | broken[(norm, eps)]
        out[f"{norm}|{eps:.7g}"] = seen[norm].tolist()
    return out


def official_autoattack(counted: PassCounter, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                        seed: int = 0) -> torch.Tensor:
    """The official AutoAttack (standard) at one budget on every sample, as its README runs it: which it broke."""
    from pyautoattack import AutoAttack

    attack = AutoAttack(counted, eps=eps, norm=norm, version="standard", seed=seed, device=x.device)
    attack.verbose = False
    adv, _ = attack.run_standard_evaluation(x, y, batch_size=len(x))
    with torch.no_grad():
        return counted(adv).argmax(1) != y


def minimum_norm_once(counted: PassCounter, spec, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A minimum-norm attack run once on every sample: each one's distance (inf where it failed)."""
    adv = spec.build().perturb(counted, x, y, None, 0).detach()
    with torch.no_grad():
        fooled = counted(adv).argmax(1) != y
    return torch.where(fooled, perturbation_norm(adv - x, spec.norm), torch.full((len(y),), float("inf")))


def naive_way(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, suite) -> Outcome:
    """Official AutoAttack at every budget, a torchattacks loop over the other fixed-budget attacks, minimum-norm
    attacks once; the per-sample union of what they broke, and the passes of each part."""
    t0 = time.perf_counter()
    loop = dataclasses.replace(suite, attacks=[a for a in suite.attacks
                                               if not a.adapter.minimum_norm and not a.adapter.official_autoattack])
    cells, parts = reference_sweep(model, x, y, loop)
    clean = torch.as_tensor(next(iter(cells.values())))  # every first cell is at eps 0: clean-correct
    broken = {(norm, eps): torch.zeros(len(y), dtype=torch.bool) for norm in NORMS for eps in suite.grid(norm)}
    for spec in loop.attacks:
        for eps in suite.grid(spec.norm):
            broken[(spec.norm, eps)] |= clean & ~torch.as_tensor(cells[str(CellKey(spec.name, spec.norm, eps))])
    for spec in suite.attacks:
        parts[spec.name] = tally = parts.get(spec.name, {"forward": 0, "backward": 0})
        counted = PassCounter(model, tally)
        if spec.adapter.official_autoattack:
            for eps in (e for e in suite.grid(spec.norm) if e > 0):
                broken[(spec.norm, eps)] |= official_autoattack(counted, x, y, spec.norm, eps)
        elif spec.adapter.minimum_norm:
            dist = minimum_norm_once(counted, spec, x, y)
            for eps in suite.grid(spec.norm):
                broken[(spec.norm, eps)] |= dist <= eps
    return {"broken": nest(broken, clean), "passes": {k: sum(p.values()) for k, p in parts.items()},
            "wall_s": time.perf_counter() - t0}


def sweep_way(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, suite, folder: Path) -> Outcome:
    """The engine's sweep: its per-sample worst case, passes per attack (attacks only, clean predictions apart)."""
    t0 = time.perf_counter()
    run_sweep(model, x, y, suite, folder, SweepConfig(progress=False, batch_size=256))
    return folder_outcome(folder, time.perf_counter() - t0)


def folder_outcome(folder: Path, wall: float) -> Outcome:
    """A finished run folder's per-sample worst case and passes per attack (clean predictions and checks apart)."""
    run = read_run(folder)
    passes: dict[str, int] = {}
    for meta in cell_metas(folder):
        passes[meta["attack"]] = passes.get(meta["attack"], 0) + sum(meta["passes"].values())
    passes["clean"] = sum(run.run["passes_attacks"].values()) - sum(passes.values())
    passes["checks (not counted)"] = sum(run.run["passes"].values()) - sum(run.run["passes_attacks"].values())
    broken = {k: (~w).tolist() for k, w in zip(run.samples["worst_keys"], run.samples["worst"])}
    return {"broken": {f"{k.split('|')[0]}|{float(k.split('|')[1]):.7g}": v for k, v in broken.items()},
            "passes": passes, "wall_s": wall}


def weaker(ours: Outcome, naive: Outcome) -> int:
    """(sample, budget) pairs the naive way breaks that `ours` leaves robust."""
    return sum(int((np.array(naive["broken"][k]) & ~np.array(ours["broken"][k])).sum()) for k in naive["broken"])


def against(ours: list[Outcome], naive: list[Outcome]) -> str:
    """'weaker / stronger': the most pairs over paired repetitions that only the naive way breaks, and that only
    `ours` breaks. Attacks with random starts draw different noise in the two ways, so both can be above 0."""
    pairs = [(o, naive[i % len(naive)]) for i, o in enumerate(ours)]
    return f"{max(weaker(o, n) for o, n in pairs)} / {max(weaker(n, o) for o, n in pairs)}"


def attack_passes(outcome: Outcome) -> int:
    return sum(v for k, v in outcome["passes"].items() if not k.startswith("checks"))


def run_way(way: str, model, x, y, suite, tmp: Path, cache: Path | None, tag: str) -> Outcome:
    """One way on one model, or its cached outcome."""
    file = cache / f"{tag}.json" if cache else None
    if file and file.is_file():
        return json.loads(file.read_text())
    suites = {"cascade": dataclasses.replace(suite, cascade=True), "full": dataclasses.replace(suite, cascade=False)}
    outcome = naive_way(model, x, y, suite) if way == "naive" else sweep_way(model, x, y, suites[way], tmp / tag)
    if file:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(outcome))
    return outcome


def report(label: str, found: dict[str, list[Outcome]]) -> None:
    """One model's table: passes, share of naive, median wall, weaker and stronger pairs; then passes per attack."""
    naive = attack_passes(found["naive"][0])
    print(f"\n{label}\n| way | passes (attacks) | share of naive | wall (median) | weaker / stronger than naive |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for way, reps in found.items():
        wall = statistics.median(r["wall_s"] for r in reps)
        print(f"| {way} | {attack_passes(reps[0]):,} | {attack_passes(reps[0]) / naive:.3f} | {wall:.1f} s | "
              f"{'-' if way == 'naive' else against(reps, found['naive'])} |")
    for way, reps in found.items():
        print(f"{way} passes per attack: " + ", ".join(f"{k} {v:,}" for k, v in reps[0]["passes"].items()))
    if "cascade" in found and "full" in found:
        print(f"cascade against full, weaker / stronger: {against(found['cascade'], found['full'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="CIFAR-10 JPEG test images")
    parser.add_argument("--reps", type=int, default=1, help="interleaved repetitions; the median wall time counts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="resnet20,cnn_a", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--ways", default=",".join(WAYS), help="comma-separated, of " + ", ".join(WAYS))
    parser.add_argument("--cache", type=Path, help="folder keeping finished ways for later invocations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite, names, ways = load_suite("standard"), args.models.split(","), args.ways.split(",")
    print(f"standard suite, {args.n} CIFAR-10 JPEG test images, Linf {[round(e * 255, 2) for e in suite.eps]}/255, "
          f"L2 {suite.l2_eps}, {args.threads} thread(s), {args.reps} repetition(s)")
    data = {name: load(name, args.n) for name in names}
    found = {name: {way: [] for way in ways} for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name in names:
                for way in ways:
                    outcome = run_way(way, *data[name], suite, Path(tmp), args.cache, f"{name}-n{args.n}-{way}-{rep}")
                    found[name][way].append(outcome)
                    print(f"{name} {way} rep {rep}: {attack_passes(outcome):,} passes, {outcome['wall_s']:.1f} s",
                          flush=True)
    for name in names:
        if "naive" in ways:
            report(MODELS[name][0], found[name])


if __name__ == "__main__":
    main()
