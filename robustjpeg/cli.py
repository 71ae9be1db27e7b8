"""Command line: parses arguments and hands them to the stages; no stage imports this module."""

from __future__ import annotations

import argparse
import sys
import traceback
from fractions import Fraction
from pathlib import Path

from robustjpeg import __version__
from robustjpeg.errors import ConfigError, RobustJpegError

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_REGRESSION, EXIT_CHECK_FAILED = 0, 1, 2, 3, 4


def parse_fraction(text: str) -> float:
    """'8/255' or '0.03' -> float; the CLI and suite files share this."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"{text!r} is not a number or fraction such as 8/255") from exc


def parse_eps_list(text: str) -> list[float]:
    """'0,1/255,0.3' -> [0.0, 0.0039..., 0.3], each checked to lie in [0, 1]."""
    values = [parse_fraction(part) for part in text.split(",") if part.strip()]
    if not values:
        raise ConfigError("--eps needs at least one budget, e.g. --eps 0,2/255,8/255")
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise ConfigError(f"--eps budgets must lie in [0, 1] (image range), got {bad}; write 8/255, not 8")
    return values


def _common(p: argparse.ArgumentParser, evaluates: bool = False, suite: bool = False) -> None:
    p.add_argument("-o", "--out", type=Path, default=None, help="folder to write into")
    p.add_argument("--seed", type=int, default=0, help="seed for data order, subsets, init and attacks (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    if evaluates:
        p.add_argument("-n", "--num-examples", type=int, default=None, help="evaluate a fixed class-stratified subset of N test images")
    if suite:
        p.add_argument("--suite", default=None, help="attack suite: a TOML file or a shipped name (quick, standard, adaptive)")
        p.add_argument("--eps", type=parse_eps_list, default=None, help="override the Linf budgets, e.g. 0,1/255,8/255")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustjpeg", description="Adversarial-robustness benchmarks for classifiers with a trainable JPEG layer.")
    parser.add_argument("--version", action="version", version=f"robustjpeg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _run, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


# --- train ---------------------------------------------------------------------------------------

def _add_train(p: argparse.ArgumentParser) -> None:
    _common(p)


def _run_train(args: argparse.Namespace) -> int:
    raise ConfigError("train is not available yet")


# --- sweep ---------------------------------------------------------------------------------------

def _add_sweep(p: argparse.ArgumentParser) -> None:
    _common(p, evaluates=True, suite=True)


def _run_sweep(args: argparse.Namespace) -> int:
    raise ConfigError("sweep is not available yet")


# --- eval ----------------------------------------------------------------------------------------

def _add_eval(p: argparse.ArgumentParser) -> None:
    _common(p, evaluates=True, suite=True)


def _run_eval(args: argparse.Namespace) -> int:
    raise ConfigError("eval is not available yet")


# --- report --------------------------------------------------------------------------------------

def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN", help="run folders written by `robustjpeg sweep`")
    _common(p)
    p.add_argument("--history", type=Path, default=None, metavar="DIR",
                   help="history folder: append these runs to it, then draw the trend and list regressions")


def _run_report(args: argparse.Namespace) -> int:
    from robustjpeg.history import append_history
    from robustjpeg.report import write_report

    if not args.runs and args.history is None:
        raise ConfigError("report needs at least one RUN folder, or --history DIR for the trend alone")
    if args.out is None:
        raise ConfigError("report needs -o/--out DIR, the folder to write report.md and its figures into")
    for run in args.runs if args.history is not None else []:
        append_history(run, args.history)
    print(write_report(args.runs, args.out, history=args.history))
    return EXIT_OK


# --- compare -------------------------------------------------------------------------------------

def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="the reference run folder (e.g. last night's)")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="the run folder to judge against RUN_A")
    _common(p)
    p.add_argument("--fail-on-drop", type=float, default=None, metavar="POINTS",
                   help=f"exit {EXIT_REGRESSION} when clean or worst-case robust accuracy drops by more than POINTS "
                        "percentage points with McNemar p < 0.05")


def _run_compare(args: argparse.Namespace) -> int:
    from robustjpeg.compare import compare_runs, regressions, render, write_compare

    if args.fail_on_drop is not None and args.fail_on_drop < 0:
        raise ConfigError(f"--fail-on-drop takes a non-negative number of points, not {args.fail_on_drop}")
    result = compare_runs(args.run_a, args.run_b)
    print(render(result))
    if args.out is not None:
        print(write_compare(result, args.out))
    if args.fail_on_drop is not None and regressions(result, args.fail_on_drop):
        print(f"robustjpeg compare: accuracy dropped by more than {args.fail_on_drop:g} points (p < 0.05)",
              file=sys.stderr)
        return EXIT_REGRESSION
    return EXIT_OK


# --- bench ---------------------------------------------------------------------------------------

def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", type=Path, default=None, metavar="FILE",
                   help="benchmark TOML file (default: the embedded quick benchmark on mnist5k)")
    _common(p, evaluates=True, suite=True)
    p.set_defaults(seed=None)
    p.add_argument("--history", type=Path, default=None, metavar="DIR", help="history folder (overrides the file)")
    p.add_argument("--fail-on-drop", type=float, default=None, metavar="POINTS",
                   help=f"exit {EXIT_REGRESSION} when a robust or clean accuracy drops by more than POINTS "
                        "against the previous run in the history (McNemar p < 0.05)")
    p.epilog = (f"exit codes: {EXIT_OK} all well, {EXIT_CRASH} crash, {EXIT_USAGE} bad input, "
                f"{EXIT_REGRESSION} regression against the history, {EXIT_CHECK_FAILED} a sanity check failed")


def _run_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from robustjpeg.bench import load_benchmark, run_benchmark

    bench = load_benchmark(args.file)
    overrides = {"seed": args.seed, "num_examples": args.num_examples, "history": args.history,
                 "fail_on_drop": args.fail_on_drop}
    bench = replace(bench, **{k: v for k, v in overrides.items() if v is not None})
    out = args.out or bench.out or Path("runs") / bench.name
    suites = [args.suite] if args.suite else None
    outcome = run_benchmark(bench, out, device=args.device, suites=suites, eps=args.eps)
    print(outcome.report)
    for r in outcome.regressions:
        print(f"regression: {r['model']} {r['scope']} {r.get('norm') or ''} {r.get('eps') or ''}: "
              f"{100 * r['delta']:+.1f} points (p = {r['p']:.3g})", file=sys.stderr)
    for name in outcome.failed_checks:
        print(f"failed sanity check: {name}", file=sys.stderr)
    if outcome.regressions:
        return EXIT_REGRESSION
    return EXIT_CHECK_FAILED if outcome.failed_checks else EXIT_OK


COMMANDS = {
    "train": (_add_train, _run_train, "train a baseline or JPEG-DL model"),
    "sweep": (_add_sweep, _run_sweep, "attack a model over a grid of budgets and store per-sample outcomes"),
    "eval": (_add_eval, _run_eval, "load any checkpoint, sweep it and write its report"),
    "report": (_add_report, _run_report, "turn sweep results into plots and a Markdown report"),
    "compare": (_add_compare, _run_compare, "paired comparison of two runs on the same samples"),
    "bench": (_add_bench, _run_bench, "run the whole benchmark (train, sweep, report, compare) from one file"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `robustjpeg` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command][1](args)
    except RobustJpegError as exc:
        print(f"robustjpeg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"robustjpeg {args.command}: interrupted; finished work is saved, rerun with --resume", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"robustjpeg {args.command}: crashed (a bug, please report it with the traceback above)", file=sys.stderr)
        return EXIT_CRASH
