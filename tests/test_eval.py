"""`robustjpeg eval`: a third-party checkpoint and a RobustBench zoo model, loaded, swept and reported in one command."""

from __future__ import annotations

import json

import pytest
import torch
from test_loading import ZOO_NAME, no_network, robustbench  # noqa: F401  (fixtures)

from robustjpeg.cli import EXIT_CHECK_FAILED, EXIT_OK, main

pytestmark = pytest.mark.usefixtures("single_thread")
IMAGENET = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def _results(out, name: str) -> dict:
    return json.loads((out / "runs" / name / "results.json").read_text())


@pytest.mark.slow
def test_thirdparty_resnet20_on_cifar10_jpeg_sweeps_and_reports(resnet20_checkpoint, cifar_jpeg_test_tar, tmp_path):
    data = f"imagefolder:{cifar_jpeg_test_tar.parent}"
    code = main(["eval", str(resnet20_checkpoint), "--arch", "resnet20", *IMAGENET, "--dataset", data, "-n", "100",
                 "--suite", "quick", "--eps", "0,1/255,8/255", "-o", str(tmp_path), "--device", "cpu"])
    assert code in (EXIT_OK, EXIT_CHECK_FAILED)
    results = _results(tmp_path, resnet20_checkpoint.stem)
    assert results["n"] == 100
    lo, hi = results["clean"]["ci95"]
    assert lo <= 0.81 <= hi, f"clean accuracy {results['clean']['accuracy']} is far from the ~81% measured on this set"
    pgd = {c["eps"]: c["accuracy"] for c in results["cells"] if c["attack"] == "pgd"}
    assert pgd[8 / 255] < 0.05, "an undefended ResNet-20 should fall to about 0% under PGD at 8/255"
    assert "resnet20" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_robustbench_zoo_model_is_swept_offline(robustbench, no_network, tmp_path):  # noqa: F811
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    net = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")][ZOO_NAME]["model"]().eval()
    folder = tmp_path / "zoo" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict()}, folder / f"{ZOO_NAME}.pt")
    digits = tmp_path / "data"
    _cifar_like_folder(digits)
    code = main(["eval", f"robustbench:{ZOO_NAME}", "--model-dir", str(tmp_path / "zoo"), "--dataset",
                 f"imagefolder:{digits}", "-n", "10", "--suite", "quick", "--eps", "0,8/255", "-o", str(tmp_path / "out"),
                 "--device", "cpu"])
    assert code in (EXIT_OK, EXIT_CHECK_FAILED)
    assert _results(tmp_path / "out", ZOO_NAME)["n"] == 10


def _cifar_like_folder(root) -> None:
    """Ten classes of real 32x32 photo crops (scikit-image samples) in ImageFolder layout."""
    from PIL import Image
    from skimage import data

    photo = data.astronaut()
    for split in ("train", "test"):
        for c in range(10):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(2):
                y, x = 40 * c + 8 * i, 30 * c
                Image.fromarray(photo[y:y + 32, x:x + 32]).save(root / split / f"c{c}" / f"{i}.png")
