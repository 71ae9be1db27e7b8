"""The default `robustjpeg bench` (no file) end to end, and its quick-suite sweeps against the naive way on the same
trained models and images: per-sample passes (forward + backward of the attacks), wall time, and the (sample,
budget) pairs only the naive way breaks, and those only the bench breaks. The quick suite's PGD and APGD start
from random points, drawn differently in the two ways, so both counts can be above 0; FGSM and DDN must agree.

The naive way is benchmarks/cascade.py's: a torchattacks loop over FGSM, PGD and APGD at every budget on every
sample, and DDN once. The adaptive-quick suite (the straight-through view, transfer from the baseline, noise) has
no plain torchattacks loop, so only the engine's figures are printed for it. Repetitions are interleaved (a whole
bench in a fresh folder, then the naive way on its models); medians count.

    OMP_NUM_THREADS=1 python benchmarks/default_bench.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from cascade import against, attack_passes, folder_outcome, naive_way  # noqa: E402

from robustjpeg.bench import Log, load_entry, train_models  # noqa: E402
from robustjpeg.benchfile import load_benchmark  # noqa: E402
from robustjpeg.data.datasets import load_dataset  # noqa: E402
from robustjpeg.pipeline import fitted_suite, prepare  # noqa: E402


def bench_command(out: Path) -> float:
    """`robustjpeg bench -o OUT` in a fresh process, as a user types it; its wall time (log in OUT/bench.log)."""
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    with open(out / "bench.log", "w") as log:
        subprocess.run([sys.executable, "-m", "robustjpeg", "bench", "-o", str(out)], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log)
    return time.perf_counter() - t0


def engine_outcomes(out: Path) -> dict[str, dict]:
    """Per 'MODEL/SUITE' run of the bench: its outcome with the attacks' wall time (checks apart)."""
    found = {}
    for run_json in sorted(out.glob("runs/*/*/*/run.json")):
        run = json.loads(run_json.read_text())
        folder = run_json.parent
        found[f"{folder.parents[1].name}/{folder.name}"] = folder_outcome(
            folder, run["wall_time_s"] - run["wall_time_checks_s"])
    return found


def naive_outcomes(out: Path) -> dict[str, dict]:
    """The naive way on every model the bench swept with the quick suite, on the images it swept."""
    bench = load_benchmark(None)
    checkpoints = train_models(bench, out, "cpu", Log(stream=None))  # all trained already: reused, not retrained
    data = load_dataset(bench.dataset)
    suite = fitted_suite("quick", data, bench.eps, bench.standard_eps, bench.l2_eps, bench.standard_l2_eps)
    found = {}
    for entry in (e for e in bench.models if "quick" in (e.suites or bench.suites)):
        model, info = load_entry(bench, entry, checkpoints, "cpu")
        prepared = prepare(model, info, data, n=bench.examples("quick"), seed=bench.seed, device=torch.device("cpu"))
        found[f"{entry.name}/quick"] = naive_way(prepared.model, prepared.x, prepared.y, suite)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions; medians count")
    args = parser.parse_args()
    torch.set_num_threads(1)
    commands, engine, naive = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            out = Path(tmp) / f"bench-{rep}"
            commands.append(bench_command(out))
            for key, outcome in engine_outcomes(out).items():
                engine.setdefault(key, []).append(outcome)
            for key, outcome in naive_outcomes(out).items():
                naive.setdefault(key, []).append(outcome)
            print(f"rep {rep}: bench command {commands[-1]:.1f} s", flush=True)
    print(f"\nwhole `robustjpeg bench` command: median {statistics.median(commands):.1f} s over {args.reps} "
          f"(each: {', '.join(f'{c:.1f}' for c in commands)} s)")
    print("| run | way | passes (attacks) | share of naive | wall, attacks (median) | weaker / stronger than naive |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for key, reps in engine.items():
        wall = statistics.median(r["wall_s"] for r in reps)
        if key not in naive:
            print(f"| {key} | engine | {attack_passes(reps[0]):,} | - | {wall:.1f} s | - |")
            continue
        ref = naive[key]
        share = attack_passes(reps[0]) / attack_passes(ref[0])
        print(f"| {key} | engine | {attack_passes(reps[0]):,} | {share:.3f} | {wall:.1f} s | {against(reps, ref)} |")
        print(f"| {key} | naive | {attack_passes(ref[0]):,} | 1.000 | "
              f"{statistics.median(r['wall_s'] for r in ref):.1f} s | - |")


if __name__ == "__main__":
    main()
