"""Shared fixtures: real images from installed packages, and the offline data in ../shared when present."""

from __future__ import annotations

import contextlib
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


# --- training fixtures (data, models, train) -----------------------------------------------------
# One mnist5k run per variant and session with the default recipe (4 epochs), shared by every test that needs a
# trained model. Training runs on one thread: on a shared 2-core machine two threads are many times slower.


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread inside the block, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread():
    with one_thread():
        yield


class Killed(Exception):
    """Stands in for the process being killed in the middle of a sweep."""


@pytest.fixture
def kill_pgd_after(monkeypatch):
    """kill_pgd_after(k): the k-th PGD call raises Killed; kill_pgd_after(None) puts PGD back (the rerun)."""
    from robustjpeg.attacks.adapters import PGD

    original = PGD.perturb

    def arm(k: int | None) -> None:
        calls = []

        def dies(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == k:
                raise Killed
            return original(self, *args, **kwargs)

        monkeypatch.setattr(PGD, "perturb", original if k is None else dies)

    return arm


def _train_mnist(tmp_path_factory, variant: str) -> dict:
    from robustjpeg.training.config import TrainConfig
    from robustjpeg.training.loop import train

    cfg = TrainConfig(dataset="mnist5k", variant=variant, device="cpu", progress=False)
    with one_thread():
        return train(cfg, tmp_path_factory.mktemp(f"mnist-{variant}"))


@pytest.fixture(scope="session")
def mnist_baseline_run(tmp_path_factory) -> dict:
    """Summary of a baseline smallcnn trained on mnist5k (CPU, seed 0); its checkpoint path is summary['checkpoint']."""
    return _train_mnist(tmp_path_factory, "baseline")


@pytest.fixture(scope="session")
def mnist_jpeg_run(tmp_path_factory) -> dict:
    """Summary of a JPEG-DL smallcnn trained on mnist5k with the same recipe as mnist_baseline_run."""
    return _train_mnist(tmp_path_factory, "jpeg")


@pytest.fixture(scope="session")
def cifar_jpeg_test_set(cifar_jpeg_test_tar, tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The CIFAR-10 JPEG test set decoded once per session: (uint8 NCHW [10000,3,32,32], labels, class names)."""
    from robustjpeg.data import sources

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUSTJPEG_CACHE", str(tmp_path_factory.mktemp("decoded")))
        pixels, names = sources.decode_cached(cifar_jpeg_test_tar)
    classes = sorted(set(names))
    labels = torch.tensor([classes.index(n) for n in names])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), labels, classes
