"""The console entry point answers --help and --version and turns user errors into one line."""

import subprocess
import sys

import pytest

from robustjpeg import __version__
from robustjpeg.cli import main, parse_eps_list
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
