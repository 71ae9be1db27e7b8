"""The console entry point answers --help and --version and turns user errors into one line."""

import re
import subprocess
import sys

import pytest
import torch

from robustjpeg import __version__
from robustjpeg.attacks.budgets import FAMILY_BUDGETS, choose_budgets
from robustjpeg.cli import COMMANDS, EXIT_USAGE, build_parser, main, parse_eps_list
from robustjpeg.errors import ConfigError


def test_version_flag_prints_package_version():
    out = subprocess.run([sys.executable, "-m", "robustjpeg", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"robustjpeg {__version__}"


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "robustjpeg", "--help"], capture_output=True, text=True, check=True)
    for command in ["train", "sweep", "eval", "report", "compare", "bench"]:
        assert command in out.stdout


def test_eps_list_accepts_fractions():
    assert parse_eps_list("0,1/255,0.3") == pytest.approx([0.0, 1 / 255, 0.3])


@pytest.mark.parametrize("text", ["8", "-1/255", "0,2"])
def test_eps_outside_unit_range_is_refused_with_hint(text):
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        parse_eps_list(text)


@pytest.mark.parametrize("flags, says", [
    (["--eps", "8"], "write 8/255, not 8"),
    (["--standard-eps", "8"], "write 8/255, not 8"),
    (["--mean", "0.5,x"], "--mean takes numbers such as 0.485,0.456,0.406 or 0.485 0.456 0.406"),
])
def test_errors_of_our_own_flag_parsers_reach_the_user_as_one_line(flags, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "model.pt", "--dataset", "mnist5k", *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == EXIT_USAGE
    assert len(err.strip().splitlines()) == 1 and says in err and "usage:" not in err, err


REQUIRED = {"sweep": ["--dataset", "mnist5k"], "eval": ["--dataset", "mnist5k"], "compare": ["a", "b"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_ctrl_c_message_names_only_flags_the_command_takes(command, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    add, _, help_ = COMMANDS[command]
    monkeypatch.setitem(COMMANDS, command, (add, interrupted, help_))
    assert main([command, *REQUIRED.get(command, [])]) == 130
    named = re.findall(r"--[a-z][a-z-]*", capsys.readouterr().err)
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    takes = {flag for action in sub._actions for flag in action.option_strings}
    assert set(named) <= takes, f"`{command}` is told to use {set(named) - takes}, which it does not take"


def test_torch_runs_on_one_thread_unless_threads_is_given(monkeypatch):
    seen = []
    add, _, help_ = COMMANDS["train"]
    monkeypatch.setitem(COMMANDS, "train", (add, lambda args: seen.append(torch.get_num_threads()) or 0, help_))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    assert main(["train"]) == main(["train", "--threads", "2"]) == 0
    assert seen == [1, 2] and torch.get_num_threads() == before, "the thread count leaked out of the command"
    assert main(["train", "--threads", "0"]) == EXIT_USAGE


CIFAR_GRID, CIFAR_STANDARD = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255], 8 / 255


@pytest.mark.parametrize("family, shipped, flags, grid, standard", [
    ("mnist", True, {}, FAMILY_BUDGETS["mnist"][0], 0.3),
    ("mnist", True, {"eps": [0.0, 0.1, 0.3]}, [0.0, 0.1, 0.3], 0.3),
    ("mnist", True, {"eps": [0.0, 0.1], "standard_eps": 0.1}, [0.0, 0.1], 0.1),
    ("mnist", True, {"standard_eps": 0.1}, FAMILY_BUDGETS["mnist"][0], 0.1),
    ("mnist", False, {}, CIFAR_GRID, CIFAR_STANDARD),
    ("cifar", True, {}, CIFAR_GRID, CIFAR_STANDARD),
    ("cifar", True, {"eps": [0.0, 8 / 255, 16 / 255]}, [0.0, 8 / 255, 16 / 255], CIFAR_STANDARD),
])
def test_budgets_come_from_the_flags_then_the_data_then_the_suite(family, shipped, flags, grid, standard):
    assert choose_budgets(CIFAR_GRID, CIFAR_STANDARD, family, shipped=shipped, **flags) == (grid, standard)


def test_a_standard_budget_outside_the_grid_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--standard-eps"):
        choose_budgets(CIFAR_GRID, CIFAR_STANDARD, "cifar", shipped=True, eps=[0.0, 0.1])
    assert main(["sweep", str(tmp_path / "m.pt"), "--dataset", "mnist5k", "--eps", "0,0.1", "--standard-eps", "0.2",
                 "-o", str(tmp_path / "run")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "the standard budget 0.2 is not in the budget grid 0, 0.1" in err


def test_sweep_defended_flag_reaches_run_json_and_check_13_expects_no_collapse(mnist_baseline_run, tmp_path):
    import json

    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\neps = ["0", "0.3"]\nstandard_eps = "0.3"\n\n[[attacks]]\nname = "fgsm"\nkind = "fgsm"\n')
    for flags, name in (([], "plain"), (["--defended"], "defended")):
        assert main(["sweep", str(mnist_baseline_run["checkpoint"]), "--dataset", "mnist5k", "-n", "20",
                     "--suite", str(suite), "-o", str(tmp_path / name), "--device", "cpu", *flags]) in (0, 4)
    run = {n: json.loads((tmp_path / n / "run.json").read_text()) for n in ("plain", "defended")}
    checks = {n: {c["id"]: c for c in json.loads((tmp_path / n / "results.json").read_text())["checks"]} for n in run}
    assert run["defended"]["model"]["defended"] is True and run["plain"]["model"]["defended"] is False
    assert checks["defended"][13]["status"] == "SKIP" and checks["plain"][13]["status"] != "SKIP"
