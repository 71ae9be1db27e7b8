"""Command line: parses arguments and hands them to the stages; no stage imports this module.

Longer than 300 lines on purpose: the six commands' flags sit side by side in one file so that shared flags
(-o, --seed, --device, -n, --suite, --eps, the model-source group) are declared once and read alike; the file
holds no logic beyond parsing, calling a stage and mapping errors to exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

from robustjpeg import __version__
from robustjpeg.attacks.budgets import parse_budget, parse_eps_list
from robustjpeg.data.preprocess import INTERPOLATIONS
from robustjpeg.errors import ConfigError, RobustJpegError, RobustJpegWarning
from robustjpeg.evaluation.verdict import run_verdict

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_REGRESSION, EXIT_CHECK_FAILED = 0, 1, 2, 3, 4
# What to do after Ctrl-C, per command (train, sweep and eval take --resume; bench resumes by itself).
INTERRUPTED = {"train": "finished epochs are saved; rerun with --resume",
               "sweep": "finished cells are saved; rerun with --resume",
               "eval": "finished cells are saved; rerun with --resume",
               "bench": "finished work is saved; rerun the same command and it continues where it stopped"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, so the project's own messages (e.g. from --eps) reach the user as written."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag(parse):
    """An argparse type from one of our parsers: its ConfigError message becomes the flag's error, unchanged."""
    def typed(text: str):
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    return typed


def _common(p: argparse.ArgumentParser, evaluates: bool = False, suite: bool = False) -> None:
    p.add_argument("-o", "--out", type=Path, default=None, help="folder to write into")
    p.add_argument("--seed", type=int, default=0, help="seed for data order, subsets, init and attacks (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    if evaluates:
        p.add_argument("-n", "--num-examples", type=int, default=None, help="evaluate a fixed class-stratified subset of N test images")
    if suite:
        p.add_argument("--suite", default=None, help="attack suite: a TOML file or a shipped name (quick, standard, adaptive)")
        p.add_argument("--eps", type=_flag(parse_eps_list), default=None,
                       help="override the Linf budgets, e.g. 0,1/255,8/255 (default: the suite's, or for a shipped "
                            "suite the data's: 0..0.3 on MNIST)")
        p.add_argument("--standard-eps", type=_flag(parse_budget), default=None, metavar="EPS",
                       help="the standard budget of the headline figure and checks 12-13, one of the grid "
                            "(default: the data's or the suite's, e.g. 8/255; 0.3 on MNIST)")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default 1, or OMP_NUM_THREADS when set: more threads than idle cores "
                        "make training many times slower; attack outcomes do not depend on N)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustjpeg", description="Adversarial-robustness benchmarks for classifiers with a trainable JPEG layer.")
    parser.add_argument("--version", action="version", version=f"robustjpeg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _run, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


# --- train ---------------------------------------------------------------------------------------

def _comma_list(cast: type, example: str):
    """An argparse type for comma-separated values ('150,180,210'), with an error that shows an example."""
    def parse(text: str) -> tuple:
        try:
            return tuple(cast(part) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise ConfigError(f"{text!r} is not a comma-separated list such as {example}") from exc
    return _flag(parse)


class _Numbers(argparse.Action):
    """Per-channel numbers as 0.485,0.456,0.406 or 0.485 0.456 0.406 (the form timm and torchvision scripts use)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        tokens = " ".join(values).replace(",", " ").split()
        bad = [t for t in tokens if not _is_number(t)]
        if bad:
            parser.error(f"{option_string} takes numbers such as 0.485,0.456,0.406 or 0.485 0.456 0.406, not {bad[0]!r}"
                         " (put CHECKPOINT before the flags)")
        setattr(namespace, self.dest, tuple(float(t) for t in tokens))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """How images are read (train, sweep and eval share these)."""
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="read every image grey (1) or in colour (3); default: grey only when every image is grey")


def _add_preprocess_args(g) -> None:
    """The resize and centre crop of timm's eval (train, sweep and eval share these)."""
    g.add_argument("--resize", type=int, default=None, metavar="PIXELS",
                   help="shorter side before the centre crop (default floor(max(H, W) / crop-pct); 0: crop only)")
    g.add_argument("--crop-pct", type=float, default=None, help="fraction the centre crop keeps, e.g. 0.875 (default 1)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default=None, help="resize filter (default bilinear)")


def _add_train(p: argparse.ArgumentParser) -> None:
    _common(p)
    _add_threads(p)
    p.add_argument("--dataset", default="mnist5k",
                   help="mnist5k (default, offline: 5,000 digits of MNIST's training split, fixed 4,000/1,000 split), "
                   "cifar10, cifar100, flowers102, pets, cars, aircraft, cub200, or imagefolder:PATH (a folder with "
                   "train/ and test/ (or val/) in ImageFolder layout, folders or .tar / .tar.gz)")
    p.add_argument("--recipe", choices=["mnist", "cifar", "fine"], default=None,
                   help="recipe family (default: from the data: grey up to 32 px mnist, up to 64 px cifar, else fine)")
    p.add_argument("--input-size", default=None, help="crop size N or H,W (default: the images' size, or 224 for "
                   "fine-grained sets); images of several sizes need it")
    _add_preprocess_args(p)
    _add_data_args(p)
    p.add_argument("--arch", default=None, help="backbone (ours, torchvision:NAME or timm:NAME; default per dataset: smallcnn, resnet20, torchvision:resnet18)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--jpeg", action="store_true", help="JPEG-DL: a trainable JPEG layer in front of the backbone")
    kind.add_argument("--jpeg-fixed", type=int, default=None, metavar="QUALITY",
                      help="control: a frozen standard-JPEG layer at QUALITY in front")
    soft = p.add_mutually_exclusive_group()
    soft.add_argument("--alpha", type=float, default=None, help="quantiser softness alpha (default 5)")
    soft.add_argument("--hardness", type=float, default=None, help="per-coefficient alpha = h / q^2 instead of --alpha")
    p.add_argument("--jpeg-init", default="standard",
                   help="table start: standard, constant, abs_avg, sensitivity (with --jpeg-fixed too: frozen tables)")
    p.add_argument("--jpeg-quality", type=int, default=None, help="quality of the standard tables for --jpeg (default 50)")
    p.add_argument("--jpeg-constant", type=float, default=None, help="step for --jpeg-init constant")
    p.add_argument("--init-from", default=None, metavar="CKPT", help="trained baseline checkpoint for --jpeg-init sensitivity")
    p.add_argument("--q-max", type=float, default=None,
                   help="largest luma step of the sensitivity tables (default 10, the paper's CIFAR setting; 5 for fine-grained)")
    p.add_argument("--official-chroma-offset", action="store_true",
                   help="add the official code's +0.5 to Cb and Cr before the DCT (removed after), as its JPEG layer does")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="backbone SGD learning rate")
    p.add_argument("--jpeg-lr", type=float, default=None, help="Adam learning rate of the JPEG tables (default 3e-3)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--milestones", type=_comma_list(int, "150,180,210"), default=None, help="epochs where the lr drops 10x, e.g. 150,180,210")
    p.add_argument("--train-subset", type=int, default=None, metavar="N", help="train on a fixed stratified subset of N images")
    p.add_argument("--data-root", default=None, help="folder holding torchvision data sets")
    p.add_argument("--download", action="store_true", help="allow torchvision to download the data set")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=4, help="data-loader workers for file-based data sets")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def _train_config(args: argparse.Namespace):
    from robustjpeg.training.config import TrainConfig

    if args.jpeg_fixed is not None and args.jpeg_quality is not None:
        raise ConfigError("--jpeg-fixed QUALITY already sets the quality; drop --jpeg-quality")
    if args.jpeg_quality is not None and not args.jpeg:
        raise ConfigError("--jpeg-quality sets the trainable tables' start; it needs --jpeg")
    if args.jpeg_lr is not None and not args.jpeg:
        raise ConfigError("--jpeg-lr sets the trainable JPEG tables' optimiser; it needs --jpeg")
    variant = "jpeg" if args.jpeg else "jpeg-fixed" if args.jpeg_fixed is not None else "baseline"
    quality = next(q for q in (args.jpeg_fixed, args.jpeg_quality, TrainConfig.jpeg_quality) if q is not None)
    return TrainConfig(
        dataset=args.dataset, arch=args.arch, variant=variant, jpeg_alpha=args.alpha, jpeg_hardness=args.hardness,
        jpeg_init=args.jpeg_init, jpeg_quality=quality, jpeg_constant=args.jpeg_constant, init_from=args.init_from,
        q_max=args.q_max, chroma_offset=args.official_chroma_offset,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        milestones=args.milestones, jpeg_lr=TrainConfig.jpeg_lr if args.jpeg_lr is None else args.jpeg_lr,
        seed=args.seed, train_subset=args.train_subset, data_root=args.data_root, download=args.download,
        compile=args.compile, device=args.device, workers=args.workers, recipe=args.recipe, input_size=args.input_size or None,
        resize=args.resize, crop_pct=args.crop_pct, interpolation=args.interpolation, channels=args.channels)


def _run_train(args: argparse.Namespace) -> int:
    from robustjpeg.training.loop import train
    from robustjpeg.utils.distributed import is_main, launch

    launch()  # under torchrun: join the process group and pick this rank's GPU before anything touches CUDA
    cfg = _train_config(args)
    out = args.out or Path("runs") / f"train-{cfg.dataset.replace(':', '_').replace('/', '_')}-{cfg.variant}-s{cfg.seed}"
    summary = train(cfg, out, resume=args.resume)
    test = summary["test"]
    lo, hi = test["ci95"]
    if is_main():
        print(f"test accuracy {test['accuracy']:.4f} (n={test['n']}, 95% CI {lo:.4f}-{hi:.4f}); checkpoint {summary['checkpoint']}")
    return EXIT_OK


# --- sweep and eval ------------------------------------------------------------------------------

def _add_model_source_args(p: argparse.ArgumentParser) -> None:
    """Flags saying how to build and load a model that is not one of ours (eval and sweep share them)."""
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CHECKPOINT",
                   help="checkpoint file (.pt/.pth/.th, safetensors, TorchScript), model-spec .toml, or robustbench:NAME")
    g = p.add_argument_group("model source")
    g.add_argument("--name", default=None, help="the model's label in reports and history (default: a spec's name, "
                   "else the file stem plus the start of its content hash)")
    g.add_argument("--arch", default=None, help="architecture of a weights-only file: ours (e.g. resnet20), torchvision:NAME or timm:NAME")
    g.add_argument("--num-classes", type=int, default=None, help="classes of the model (default: read from the file)")
    g.add_argument("--mean", nargs="+", action=_Numbers, default=None, help="normalise inputs inside the model, e.g. 0.485,0.456,0.406 or 0.485 0.456 0.406 (with --std)")
    g.add_argument("--std", nargs="+", action=_Numbers, default=None, help="per-channel std, e.g. 0.229,0.224,0.225 (with --mean)")
    g.add_argument("--input-size", default=None, help="input size the model expects, N or H,W; data of one other size are resized inside the model, images of several sizes resized and centre-cropped")
    _add_preprocess_args(g)
    g.add_argument("--defended", action="store_true", default=None,
                   help="the model is meant to be robust (adversarially trained): check 13 then expects no collapse")
    g.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that runs pickled Python code on load (only for files you trust)")
    g.add_argument("--threat-model", default=None, help="RobustBench threat model for robustbench:NAME (Linf, L2, corruptions; default Linf)")
    g.add_argument("--model-dir", type=Path, default=None, help="RobustBench model folder holding <dataset>/<threat>/<NAME>.pt (default ./models)")
    g.add_argument("--spec", type=Path, default=None, help="model-spec TOML naming the checkpoint and all of the above; flags win over it")


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    _common(p, evaluates=True, suite=True)
    _add_threads(p)
    _add_model_source_args(p)
    p.add_argument("--dataset", required=True, help="evaluation data, e.g. mnist5k, cifar10, flowers102, imagefolder:PATH "
                   "(a folder of class folders or a tar of one; or a folder with test/ or val/)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding the data set files")
    _add_data_args(p)
    p.add_argument("--workers", type=int, default=None, help="threads that decode the evaluation images (default: CPUs, at most 8)")
    p.add_argument("--download", action="store_true", help="allow downloading the data set or a missing RobustBench checkpoint")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep, redoing nothing that finished")
    p.add_argument("--transfer-from", default=None, metavar="CKPT", help="source model for transfer attacks (adaptive suite)")
    p.add_argument("--jpeg-mode", choices=["soft", "hard", "ste"], default=None,
                   help="evaluate the model with every JPEG layer in this mode (hard = a deployed codec)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per attack batch (default: 256 on a CPU, what half the free memory holds on a GPU); "
                        "halves itself on GPU out-of-memory")


def _load(args: argparse.Namespace, device):
    """The model named by CHECKPOINT / --spec and the model-source flags, as (model, info)."""
    from robustjpeg.models.loading import load_model

    if args.checkpoint and args.spec:
        raise ConfigError(f"give CHECKPOINT or --spec, not both (the spec names its checkpoint): {args.checkpoint}, {args.spec}")
    if not (args.checkpoint or args.spec):
        raise ConfigError("name the model: CHECKPOINT (a file or robustbench:NAME) or --spec FILE.toml")
    return load_model(str(args.checkpoint or args.spec), device=device, download=args.download, arch=args.arch,
                      num_classes=args.num_classes, mean=args.mean, std=args.std, input_size=args.input_size,
                      trust=args.trust_checkpoint, threat_model=args.threat_model, model_dir=args.model_dir,
                      name=args.name, resize=args.resize, crop_pct=args.crop_pct,
                      interpolation=args.interpolation, defended=args.defended)


def _sweep(args: argparse.Namespace, place) -> tuple[dict, Path]:
    """Load the model and the evaluation subset, check they fit, and sweep the suite into place(model info);
    returns the results and that run folder."""
    from robustjpeg.data.datasets import load_dataset
    from robustjpeg.models.loading import load_model
    from robustjpeg.pipeline import fitted_suite, headline, prepare
    from robustjpeg.utils.distributed import is_main, launch
    from robustjpeg.utils.io import resolve_device

    launch()  # under torchrun: join the process group and pick this rank's GPU before anything touches CUDA
    data = load_dataset(args.dataset, args.data_root, args.download, args.channels)
    suite = fitted_suite(args.suite or "quick", data, args.eps, args.standard_eps)  # before the model loads
    device = resolve_device(args.device)
    model, info = _load(args, device)
    source = load_model(args.transfer_from, device=device)[0] if args.transfer_from else None
    ready = prepare(model, info, data, n=args.num_examples, seed=args.seed, device=device, workers=args.workers)
    run_dir = place(info)
    results = ready.sweep(suite, run_dir, info, source, seed=args.seed, device=device, resume=args.resume,
                          batch_size=args.batch_size, dataset=args.dataset, jpeg_mode=args.jpeg_mode)
    if is_main():
        verdict = run_verdict(results)
        print(f"{run_dir}: clean {results['clean']['accuracy']:.4f}{headline(results, suite)}; "
              f"checks failed: {results['checks_failed']}; "
              f"verdict: {verdict.status}" + ("" if verdict.trusted else f" ({verdict.reason})"))
    return results, run_dir


def _add_sweep(p: argparse.ArgumentParser) -> None:
    _add_sweep_args(p)


def _run_sweep(args: argparse.Namespace) -> int:
    if args.out is None:
        raise ConfigError("sweep needs -o/--out RUN_DIR, the folder the results go to")
    results, _ = _sweep(args, lambda info: args.out)
    return EXIT_OK if run_verdict(results).trusted else EXIT_CHECK_FAILED


def _add_eval(p: argparse.ArgumentParser) -> None:
    _add_sweep_args(p)


def _run_eval(args: argparse.Namespace) -> int:
    from robustjpeg.report.markdown import write_report
    from robustjpeg.utils.distributed import is_main
    from robustjpeg.utils.formatting import slug

    if args.out is None:
        raise ConfigError("eval needs -o/--out DIR for the run folder and the report")
    results, run_dir = _sweep(args, lambda info: args.out / "runs" / slug(info.name))
    if is_main():  # under torchrun every rank sweeps its shard; rank 0 alone writes the report
        print(write_report([run_dir], args.out))
    return EXIT_OK if run_verdict(results).trusted else EXIT_CHECK_FAILED


# --- report --------------------------------------------------------------------------------------

def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN", help="run folders written by `robustjpeg sweep`")
    _common(p)
    p.add_argument("--history", type=Path, default=None, metavar="DIR",
                   help="history folder: append these runs to it, then draw the trend and list regressions")


def _run_report(args: argparse.Namespace) -> int:
    from robustjpeg.report.history import append_history
    from robustjpeg.report.markdown import write_report

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
    from robustjpeg.report.compare import compare_runs, regressions, render, write_compare

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
    _add_threads(p)
    p.set_defaults(seed=None)
    p.add_argument("--history", type=Path, default=None, metavar="DIR", help="history folder (overrides the file)")
    p.add_argument("--fail-on-drop", type=float, default=None, metavar="POINTS",
                   help=f"exit {EXIT_REGRESSION} when a robust or clean accuracy drops by more than POINTS "
                        "against the previous run in the history (McNemar p < 0.05)")
    p.epilog = (f"exit codes: {EXIT_OK} all well, {EXIT_CRASH} crash, {EXIT_USAGE} bad input, "
                f"{EXIT_REGRESSION} regression against the history, {EXIT_CHECK_FAILED} a sanity check failed")


def _run_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from robustjpeg.bench import run_benchmark
    from robustjpeg.benchfile import load_benchmark

    bench = load_benchmark(args.file)
    overrides = {"seed": args.seed, "num_examples": args.num_examples, "history": args.history,
                 "fail_on_drop": args.fail_on_drop, "standard_eps": args.standard_eps}
    bench = replace(bench, **{k: v for k, v in overrides.items() if v is not None})
    out = args.out or bench.out or Path("runs") / bench.name
    suites = [args.suite] if args.suite else None
    outcome = run_benchmark(bench, out, device=args.device, suites=suites, eps=args.eps)
    print(outcome.report)
    for r in outcome.regressions:
        print(f"regression: {r['model']} {r['scope']} {r.get('norm') or ''} {r.get('eps') or ''}: "
              f"{100 * r['delta']:+.1f} points (p = {r['p']:.3g})", file=sys.stderr)
    for line in outcome.untrusted:
        print(f"worst case not trustworthy: {line}", file=sys.stderr)
    if outcome.regressions:
        return EXIT_REGRESSION
    return EXIT_CHECK_FAILED if outcome.untrusted else EXIT_OK


COMMANDS = {
    "train": (_add_train, _run_train, "train a baseline or JPEG-DL model"),
    "sweep": (_add_sweep, _run_sweep, "attack a model over a grid of budgets and store per-sample outcomes"),
    "eval": (_add_eval, _run_eval, "load any checkpoint, sweep it and write its report"),
    "report": (_add_report, _run_report, "turn sweep results into plots and a Markdown report"),
    "compare": (_add_compare, _run_compare, "paired comparison of two runs on the same samples"),
    "bench": (_add_bench, _run_bench, "run the whole benchmark (train, sweep, report, compare) from one file"),
}


@contextmanager
def _threads(args: argparse.Namespace):
    """torch on --threads N CPU threads (default 1 unless OMP_NUM_THREADS is set) for the command, restored after.

    torch's default, one thread per core, collapses on a shared machine: on 2 cores with 2 other busy processes, a
    one-epoch mnist5k training run took 26.6 s with 2 threads against 4.1 s with 1 (idle: 2.2 s against 2.6 s).
    """
    if not hasattr(args, "threads") or (args.threads is None and "OMP_NUM_THREADS" in os.environ):
        yield
        return
    import torch

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads takes a positive number of CPU threads, not {args.threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _one_line_warnings(command: str):
    """Our warnings as one line each on stderr, like our errors; others as Python prints them."""
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RobustJpegWarning):
            print(f"robustjpeg {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", RobustJpegWarning)
        warnings.showwarning = one_line
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `robustjpeg` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        with _threads(args), _one_line_warnings(args.command):
            return COMMANDS[args.command][1](args)
    except RobustJpegError as exc:
        print(f"robustjpeg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"robustjpeg {args.command}: interrupted; {INTERRUPTED.get(args.command, 'rerun the same command')}",
              file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"robustjpeg {args.command}: crashed (a bug, please report it with the traceback above)", file=sys.stderr)
        return EXIT_CRASH
