"""Any checkpoint loads safely into an eval-mode model on [0, 1] inputs, or is refused with a message naming the fix."""

from __future__ import annotations

import io
import os
import socket
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from robustjpeg.cli import main
from robustjpeg.errors import CheckpointError, ConfigError, UnknownName
from robustjpeg.models.factory import ModelSpec, build_model
from robustjpeg.models.info import ModelInfo
from robustjpeg.models.loading import check_class_count, fit_input_size, load_model, read_model_spec
from robustjpeg.models.robustbench import import_robustbench

ARCH = "torchvision:mobilenet_v3_small"
CLASSES = 7
CIFAR_MEAN, CIFAR_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def photo_batch(photos) -> torch.Tensor:
    """Two real photographs at 32x32 in [0, 1], the size of the data the suite evaluates."""
    small = [np.asarray(Image.fromarray(p).resize((32, 32), Image.BILINEAR)) for p in photos[:2]]
    return torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture
def net() -> torch.nn.Module:
    return torchvision.models.get_model(ARCH.split(":")[1], weights=None, num_classes=CLASSES).eval()


@pytest.fixture
def wrapped_file(tmp_path, net) -> Path:
    """A third-party style checkpoint: weights under 'model', DataParallel 'module.' prefixes, extra fields."""
    path = tmp_path / "third_party.pth"
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 90, "best_acc": 0.9}, path)
    return path


def predicts_like(model: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(model(x), reference(x), atol=1e-5)


def holds_weights_of(model: torch.nn.Module, reference: torch.nn.Module) -> bool:
    ours, theirs = model.state_dict(), reference.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# --- what loads ------------------------------------------------------------------------------------

def test_wrapped_prefixed_state_dict_loads_with_class_count_read_from_file(wrapped_file, net, photo_batch):
    model, info = load_model(wrapped_file, arch=ARCH)
    assert not model.training
    assert info.num_classes == CLASSES and info.format == "state_dict"
    assert len(info.sha256) == 64 and info.name == f"third_party-{info.sha256[:8]}"
    assert predicts_like(model, net, photo_batch)


def test_safetensors_file_loads_the_same_weights(tmp_path, net, photo_batch):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    model, info = load_model(path, arch=ARCH)
    assert info.format == "safetensors"
    assert predicts_like(model, net, photo_batch)


def test_torchscript_archive_loads_without_arch(tmp_path, photo_batch):
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, CLASSES)).eval()
    path = tmp_path / "scripted.pt"
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(small), path)
    model, info = load_model(path)
    assert info.arch == "torchscript"
    assert predicts_like(model, small, photo_batch)


def test_mean_std_put_normalisation_inside_the_model(wrapped_file, net, photo_batch):
    model, info = load_model(wrapped_file, arch=ARCH, mean=CIFAR_MEAN, std=CIFAR_STD)
    normalised = (photo_batch - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(photo_batch), net(normalised), atol=1e-5)
    assert info.mean == list(CIFAR_MEAN)


def test_our_training_checkpoint_brings_its_own_architecture(tmp_path):
    spec = ModelSpec(arch="smallcnn", num_classes=10, in_channels=1, mean=(0.13,), std=(0.31,), input_size=28)
    net = build_model(spec).eval()
    path = tmp_path / "checkpoint.pt"
    torch.save({"schema": "robustjpeg.checkpoint/1", "model_spec": spec.to_dict(), "state_dict": net.state_dict(),
                "complete": True, "epoch": 1}, path)
    model, info = load_model(path)
    assert info.format == "robustjpeg" and info.spec == spec.to_dict()
    assert info.input_size == [28, 28] and info.complete is True and holds_weights_of(model, net)
    with pytest.raises(ConfigError, match="drop --arch"):
        load_model(path, arch="resnet20")


def test_model_spec_toml_names_checkpoint_relative_to_itself(wrapped_file, net, tmp_path):
    spec = tmp_path / "specs" / "model.toml"
    spec.parent.mkdir()
    spec.write_text(f'name = "mobilenet-third-party"\ncheckpoint = "../{wrapped_file.name}"\narch = "{ARCH}"\n'
                    "num_classes = 7\ninput_size = [32, 32]\n")
    model, info = load_model(spec)
    assert info.name == "mobilenet-third-party" and info.input_size == [32, 32]
    assert holds_weights_of(model, net)


def test_a_model_is_marked_defended_by_its_spec_or_by_the_caller(wrapped_file, tmp_path):
    spec = tmp_path / "robust.toml"
    spec.write_text(f'checkpoint = "{wrapped_file.name}"\narch = "{ARCH}"\nnum_classes = 7\ndefended = true\n')
    assert load_model(spec)[1].defended is True
    assert load_model(wrapped_file, arch=ARCH)[1].defended is False
    assert load_model(wrapped_file, arch=ARCH, defended=True)[1].defended is True
    spec.write_text(f'checkpoint = "{wrapped_file.name}"\narch = "{ARCH}"\ndefended = "yes"\n')
    with pytest.raises(ConfigError, match="defended"):
        load_model(spec)


def test_flags_win_over_the_model_spec(wrapped_file, tmp_path):
    spec = tmp_path / "model.toml"
    spec.write_text(f'checkpoint = "{wrapped_file.name}"\narch = "{ARCH}"\n')
    with pytest.raises(CheckpointError, match=r"classifier.3.weight: file \(7, 1024\) vs model \(10, 1024\)"):
        load_model(spec, num_classes=10)


def test_model_spec_cannot_grant_trust(tmp_path):
    spec = tmp_path / "model.toml"
    spec.write_text('checkpoint = "x.pt"\ntrust = true\n')
    with pytest.raises(ConfigError, match="--trust-checkpoint"):
        read_model_spec(spec)


def test_model_spec_with_wrong_type_names_the_key(tmp_path):
    spec = tmp_path / "model.toml"
    spec.write_text('checkpoint = "x.pt"\nnum_classes = "ten"\n')
    with pytest.raises(ConfigError, match="wrong type for num_classes = 'ten'"):
        read_model_spec(spec)


def test_resnet20_third_party_checkpoint_loads_and_classifies_cifar_jpegs(resnet20_checkpoint, cifar_jpeg_test_tar):
    model, info = load_model(resnet20_checkpoint, arch="resnet20", mean=CIFAR_MEAN, std=CIFAR_STD)
    assert info.num_classes == 10 and info.in_channels == 3
    x, y = cifar_jpegs(cifar_jpeg_test_tar, per_class=20)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    # Reported: 91.78% on lossless CIFAR-10, about 81% on this JPEG set; random or misloaded weights give ~10%.
    assert accuracy > 0.65, f"accuracy {accuracy:.2f} on 200 CIFAR-10 JPEG test images: keys or normalisation wrong"


def cifar_jpegs(tar_path: Path, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first per_class test images of each class, read straight from the ImageFolder tarball."""
    images, labels, counts = [], [], {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or counts.get(parts[1], 0) >= per_class:
                continue
            counts[parts[1]] = counts.get(parts[1], 0) + 1
            images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
            labels.append(parts[1])
    classes = sorted(set(labels))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor([classes.index(c) for c in labels])


# --- refusals --------------------------------------------------------------------------------------

class WritesMarker:
    """A pickle payload: unpickling it opens (creates) a marker file, the way a malicious checkpoint runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker, path = tmp_path / "code-ran", tmp_path / "evil.pt"
    torch.save({"state_dict": WritesMarker(marker)}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as refused:
        load_model(path, arch=ARCH)
    assert "asks to run Python code when loaded, io.open" in str(refused.value)
    assert not marker.exists(), "the pickled code ran although the file was refused"
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(path, arch=ARCH, trust=True)
    assert marker.exists(), "with trust=True the payload runs: the refusal above is what protected the user"


class RunsShell:
    """A real malicious payload: unpickling it runs a shell command through os.system (here: touch a marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _save_zip(obj, path: Path) -> None:
    torch.save(obj, path)


def _save_legacy(obj, path: Path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _save_pickle4(obj, path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps(obj, protocol=4))


@pytest.mark.parametrize("save", [_save_zip, _save_legacy, _save_pickle4], ids=["torch-zip", "torch-legacy", "pickle-4"])
def test_a_pickle_that_runs_a_shell_command_is_named_as_code_execution_and_never_runs(tmp_path, save, capsys):
    marker, path = tmp_path / "code-ran", tmp_path / "evil.pt"
    save({"state_dict": RunsShell(marker)}, path)
    assert main(["sweep", str(path), "--arch", "resnet20", "--dataset", "mnist5k", "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    system = f"{os.system.__module__}.system"  # posix.system on Linux and macOS, nt.system on Windows
    assert len(err.strip().splitlines()) == 1, err
    for said in ("asks to run Python code when loaded", system, "most likely malicious", "--trust-checkpoint",
                 "only for files you trust"):
        assert said in err, f"{said!r} missing from: {err}"
    assert not marker.exists(), "the payload ran although the file was refused"


def test_html_page_saved_as_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        load_model(path, arch=ARCH)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_model(path, arch=ARCH)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_checkpoint_is_refused(tmp_path, net, zip_format):
    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    torch.save(net.state_dict(), full, _use_new_zipfile_serialization=zip_format)
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(cut, arch=ARCH)


@pytest.mark.parametrize("content", [[1, 2, 3], {"epoch": 3, "lr": 0.1}], ids=["list", "dict-without-tensors"])
def test_file_without_weights_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "model.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(path, arch=ARCH)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(path, arch=ARCH)


def test_missing_and_unexpected_keys_are_named(tmp_path, net):
    state = net.state_dict()
    state["head.extra.weight"] = state.pop("classifier.3.bias")
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as refused:
        load_model(path, arch=ARCH)
    assert "missing keys (1): classifier.3.bias" in str(refused.value)
    assert "unexpected keys (1): head.extra.weight" in str(refused.value)


def test_wrong_architecture_lists_its_mismatches(wrapped_file):
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): .*unexpected keys"):
        load_model(wrapped_file, arch="torchvision:mnasnet0_5")


def test_shape_mismatch_names_keys_and_shapes(wrapped_file):
    with pytest.raises(CheckpointError, match=r"shape mismatches \(2\): classifier.3.weight: file \(7, 1024\) vs model \(10, 1024\)"):
        load_model(wrapped_file, arch=ARCH, num_classes=10)


def test_class_count_not_matching_the_data_is_refused(wrapped_file, photo_batch):
    model, _ = load_model(wrapped_file, arch=ARCH)
    check_class_count(model, photo_batch, CLASSES, "photos")
    with pytest.raises(CheckpointError, match="outputs shape \\(2, 7\\) but cifar10 has 10 classes"):
        check_class_count(model, photo_batch, 10, "cifar10")


def test_declared_input_size_resizes_data_inside_the_model(wrapped_file, net, photo_batch):
    model, info = load_model(wrapped_file, arch=ARCH, input_size="48")
    fitted = fit_input_size(model, info, photo_batch)
    assert info.resized_from == [32, 32]
    with torch.no_grad():
        expected = net(torch.nn.functional.interpolate(photo_batch, size=(48, 48), mode="bilinear"))
        assert torch.allclose(fitted(photo_batch), expected, atol=1e-5)
    assert fit_input_size(model, ModelInfo("net", input_size=[32, 32]), photo_batch) is model


def test_weights_without_arch_ask_for_arch(wrapped_file):
    with pytest.raises(ConfigError, match="--arch"):
        load_model(wrapped_file)


def test_unknown_architecture_is_named(wrapped_file):
    with pytest.raises(UnknownName, match="unknown architecture 'no_such_net'"):
        load_model(wrapped_file, arch="no_such_net")


def test_mean_without_std_is_refused(wrapped_file):
    with pytest.raises(ConfigError, match="--mean and --std go together"):
        load_model(wrapped_file, arch=ARCH, mean=CIFAR_MEAN)


def test_eval_command_refuses_bad_checkpoint_in_one_line(tmp_path, capsys):
    page = tmp_path / "model.pt"
    page.write_text("<html><body>Quota exceeded</body></html>")
    code = main(["eval", str(page), "--arch", ARCH, "--dataset", "mnist5k", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "HTML page" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_eval_command_needs_a_checkpoint_or_a_spec(tmp_path, capsys):
    assert main(["eval", "--dataset", "mnist5k", "-o", str(tmp_path)]) == 2
    assert "CHECKPOINT" in capsys.readouterr().err


# --- RobustBench ---------------------------------------------------------------------------------

ZOO_NAME = "Addepalli2021Towards_RN18"  # a ResNet-18: the smallest CIFAR-10 Linf zoo entry to build


@pytest.fixture
def robustbench():
    """The real robustbench 1.1.1; the test environment (tox -e test) must provide it, elsewhere skip."""
    try:
        return import_robustbench()
    except ConfigError as exc:
        if os.environ.get("ROBUSTJPEG_REQUIRE_ROBUSTBENCH"):
            raise
        pytest.skip(f"robustbench is not usable in this environment: {exc}")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_robustbench_zoo_model_loads_offline_from_model_dir(robustbench, no_network, tmp_path, photo_batch):
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    net = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")][ZOO_NAME]["model"]().eval()
    folder = tmp_path / "zoo" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, folder / f"{ZOO_NAME}.pt")
    model, info = load_model(f"robustbench:{ZOO_NAME}", threat_model="Linf", model_dir=tmp_path / "zoo")
    assert info.format == "robustbench" and info.name == ZOO_NAME
    assert predicts_like(model, net, photo_batch)


def test_robustbench_missing_checkpoint_is_not_downloaded(robustbench, no_network, tmp_path):
    with pytest.raises(CheckpointError, match="--download"):
        load_model("robustbench:Standard", model_dir=tmp_path)


def test_robustbench_html_page_in_model_dir_is_refused(robustbench, no_network, tmp_path):
    page = tmp_path / "cifar10" / "Linf" / f"{ZOO_NAME}.pt"
    page.parent.mkdir(parents=True)
    page.write_text("<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        load_model(f"robustbench:{ZOO_NAME}", model_dir=tmp_path)


def test_robustbench_model_served_by_timm_is_not_fetched(robustbench, no_network, tmp_path):
    with pytest.raises(CheckpointError, match="through timm .*--download"):
        load_model("robustbench:Debenedetti2022Light_XCiT-S12", model_dir=tmp_path)


def test_robustbench_unknown_name_lists_known(robustbench, tmp_path):
    with pytest.raises(UnknownName, match="Carmon2019Unlabeled"):
        load_model("robustbench:NoSuchModel2099", model_dir=tmp_path)


def fake_robustbench(root: Path, recorded: str, on_disk: str) -> None:
    """An installed-looking robustbench whose files on disk may differ from what its install record says."""
    import base64
    import hashlib

    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded.encode()).digest()).rstrip(b"=").decode()
    (root / "robustbench").mkdir()
    (root / "robustbench-1.1.1.dist-info").mkdir()
    (root / "robustbench-1.1.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: robustbench\nVersion: 1.1.1\n")
    (root / "robustbench-1.1.1.dist-info" / "RECORD").write_text(
        f"robustbench/__init__.py,sha256={digest},{len(recorded)}\nrobustbench/utils.py,sha256={digest},{len(recorded)}\n")
    for name in ("__init__.py", "utils.py"):
        (root / "robustbench" / name).write_text(on_disk)


def test_robustbench_overwritten_by_torchattacks_copy_is_named(tmp_path, monkeypatch):
    fake_robustbench(tmp_path, recorded="load_model = None\n", on_disk="# old copy shipped by another wheel\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "robustbench.utils", raising=False)
    with pytest.raises(ConfigError, match="overwritten .*--force-reinstall robustbench==1.1.1"):
        import_robustbench()


@pytest.fixture
def fresh_autoattack_names():
    yield
    for name in [n for n in sys.modules if n == "autoattack" or n.startswith("autoattack.")]:
        del sys.modules[name]


def test_autoattack_is_served_by_pyautoattack(fresh_autoattack_names):
    from robustjpeg.models.robustbench import alias_autoattack

    if "autoattack" not in sys.modules and __import__("importlib.util").util.find_spec("autoattack") is not None:
        pytest.skip("a real autoattack package is installed; no alias is needed")
    alias_autoattack()
    from autoattack import AutoAttack
    from autoattack.state import EvaluationState
    from pyautoattack import AutoAttack as Official
    from pyautoattack.state import EvaluationState as OfficialState

    assert AutoAttack is Official and EvaluationState is OfficialState
