"""Models are probed on clean images before any attack: broken outputs stop the run, a poor fit is named."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from robustjpeg.cli import EXIT_USAGE, main
from robustjpeg.data.datasets import stratified_indices
from robustjpeg.errors import RobustJpegWarning
from robustjpeg.models.info import ModelInfo
from robustjpeg.models.loading import load_model
from robustjpeg.models.probe import probe_model

from sweep_models import eval_set, tiny_cnn, trained_cnn

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _sweep(model_file, tmp_path, *extra: str) -> int:
    return main(["sweep", str(model_file), "--dataset", "mnist5k", "-n", "40", "-o", str(tmp_path / "run"),
                 "--device", "cpu", *extra])


def _nothing_swept(tmp_path) -> bool:
    return not list(tmp_path.glob("run/cells/*"))


def test_a_checkpoint_with_nan_weights_is_refused_before_any_cell_naming_the_weights(mnist_baseline_run, tmp_path,
                                                                                    capsys):
    checkpoint = torch.load(mnist_baseline_run["checkpoint"], weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.endswith("weight"))
    checkpoint["state_dict"][name][0] = float("nan")  # what a diverged training run leaves behind
    torch.save(checkpoint, tmp_path / "diverged.pt")
    assert _sweep(tmp_path / "diverged.pt", tmp_path) == EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "NaN or inf scores" in err and name in err, err
    assert _nothing_swept(tmp_path), "the sweep started on a model that returns NaN"


def test_a_model_that_returns_probabilities_is_refused_before_any_cell(tmp_path, capsys):
    x, _ = eval_set(2)
    torch.jit.trace(nn.Sequential(trained_cnn(), nn.Softmax(dim=1)), x).save(str(tmp_path / "softmax.pt"))
    assert _sweep(tmp_path / "softmax.pt", tmp_path) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "returns probabilities" in err and "remove its final softmax" in err, err
    assert _nothing_swept(tmp_path), "the sweep started on a model that returns probabilities"


def test_an_untrained_model_is_warned_about_as_near_chance(tmp_path):
    torch.manual_seed(0)
    x, y = eval_set(200)
    model = torch.jit.trace(tiny_cnn().eval(), x[:2])
    with pytest.warns(RobustJpegWarning, match=r"near chance \(10\.0% for 10 classes\).*--mean/--std"):
        probe_model(model, ModelInfo("untrained", format="torchscript"), x, y, 10, "mnist5k", CPU)


def test_a_trained_model_passes_the_probe_silently(mnist_baseline_run):
    model, info = load_model(mnist_baseline_run["checkpoint"])
    x, y = eval_set(200)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RobustJpegWarning)
        probe_model(model, info, x, y, 10, "mnist5k", CPU)


@pytest.fixture(scope="module")
def cifar_probe_images(cifar_jpeg_test_set):
    pixels, labels, _ = cifar_jpeg_test_set
    idx = stratified_indices(labels, 256, 0)
    return pixels[idx].float() / 255, labels[idx]


def test_resnet20_without_its_normalisation_is_warned_about_naming_mean_and_std(resnet20_checkpoint,
                                                                               cifar_probe_images):
    """The third-party CIFAR-10 ResNet-20 fits the data (about 81% on the JPEG test set) only with its mean/std."""
    x, y = cifar_probe_images
    model, info = load_model(resnet20_checkpoint, arch="resnet20")
    with pytest.warns(RobustJpegWarning, match=r"as given, but .* normalised .* pass --mean \S+ --std \S+") as seen:
        probe_model(model, info, x, y, 10, "cifar10-jpeg", CPU)
    assert len(seen) == 1
    model, info = load_model(resnet20_checkpoint, arch="resnet20", **IMAGENET)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RobustJpegWarning)
        probe_model(model, info, x, y, 10, "cifar10-jpeg", CPU)

