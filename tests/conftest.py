"""Shared fixtures: real images from installed packages, and the offline data in ../shared when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUSTJPEG_SHARED", REPO.parent / "shared"))


def shared_file(relative: str) -> Path:
    """Path of a file under the shared data folder, or skip the test saying what is missing."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (set ROBUSTJPEG_SHARED to the folder holding data/ and models/)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Real RGB photographs (uint8 HWC) shipped inside scikit-image."""
    data = pytest.importorskip("skimage.data")
    return [data.astronaut(), data.coffee(), data.chelsea()]


@pytest.fixture(scope="session")
def cifar_jpeg_test_tar() -> Path:
    return shared_file("data/cifar10-jpeg/test.tar.gz")


@pytest.fixture(scope="session")
def resnet20_checkpoint() -> Path:
    return shared_file("models/cifar10/resnet20-12fca82f.th")
