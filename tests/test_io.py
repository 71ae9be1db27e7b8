"""Atomic writes leave files as readable as the umask says, like any other file the user writes; a run names the CPU
kernels it ran on."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from robustjpeg.utils.io import (
    atomic_save_npz,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    device_description,
)


@pytest.fixture
def umask():
    def set_to(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0o022)
    yield set_to
    os.umask(before)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_every_atomic_write_gets_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    writers = {"report.md": lambda p: atomic_write_text(p, "# report\n"),
               "results.json": lambda p: atomic_write_json(p, {"n": 1}),
               "samples.npz": lambda p: atomic_save_npz(p, ok=np.ones(3, bool)),
               "checkpoint.pt": lambda p: atomic_torch_save({"w": torch.ones(2)}, p)}
    for name, write in writers.items():
        write(tmp_path / name)
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, f"{name} under umask {mask:03o}"


def test_a_cpu_run_names_the_vector_kernels_torch_picked():
    """AVX2 and AVX512 kernels round differently, so the same training gives other weights: the run says which ran."""
    assert f"{torch.backends.cpu.get_cpu_capability()} kernels)" in device_description("cpu")
    code = "from robustjpeg.utils.io import device_description as d; print(d('cpu'))"
    scalar = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ATEN_CPU_CAPABILITY": "default"},
                            capture_output=True, text=True, check=True)
    assert scalar.stdout.strip().endswith("DEFAULT kernels)"), scalar.stdout
