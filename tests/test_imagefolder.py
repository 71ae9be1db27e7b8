"""imagefolder: split folders and tars for evaluation, mixed sizes, grey folders, flowers102 and refused layouts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustjpeg.data import datasets as data
from robustjpeg.data import sources, splits
from robustjpeg.data.imagefiles import ImageFiles
from robustjpeg.data.preprocess import Preprocess
from robustjpeg.errors import BadInput, DatasetNotFound

from conftest import shared_file
from sweep_models import suite_toml, write_suite

pytestmark = pytest.mark.usefixtures("single_thread")
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTJPEG_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def cifar_members(cifar_jpeg_test_tar) -> list[tuple[str, str, bytes]]:
    """The first 50 CIFAR-10 JPEG test images of each class: (class, file name, JPEG bytes)."""
    taken: dict[str, int] = {}
    members = []
    with tarfile.open(cifar_jpeg_test_tar) as tf:
        for member in tf:
            cls = member.name.split("/")[-2] if member.isfile() else None
            if cls and taken.get(cls, 0) < 50:
                taken[cls] = taken.get(cls, 0) + 1
                members.append((cls, Path(member.name).name, tf.extractfile(member).read()))
    return members


@pytest.fixture(scope="module")
def resnet20(resnet20_checkpoint):
    from robustjpeg.models.loading import load_model

    return load_model(resnet20_checkpoint, arch="resnet20", **IMAGENET)[0]


def _write(root: Path, members, per_class: int, image=None) -> Path:
    """root/<class>/<name> for the first per_class members of each class (bytes as they are, or image(bytes, k))."""
    count: dict[str, int] = {}
    for k, (cls, name, blob) in enumerate(members):
        count[cls] = count.get(cls, 0) + 1
        if count[cls] <= per_class:
            target = root / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if image is None:
                target.write_bytes(blob)
            else:
                image(blob, k).save(target.with_suffix(".png"), compress_level=1)
    return root


def _tar(folder: Path, target: Path, arcname: str) -> Path:
    with tarfile.open(target, "w:gz" if target.name.endswith(".gz") else "w") as tf:
        tf.add(folder, arcname=arcname)
    return target


def _accuracy(model, subset: data.EvalData) -> float:
    with torch.no_grad():
        return float((model(subset.x).argmax(1) == subset.y).float().mean())


def test_test_only_folder_and_its_tars_give_the_clean_accuracy_of_the_train_test_layout(cifar_members, resnet20,
                                                                                         tmp_path):
    layout = tmp_path / "layout"
    _write(layout / "train", cifar_members, 2)
    _write(layout / "test", cifar_members, 20)
    sources = {"train/test layout": layout, "test folder": layout / "test",
               "tar with its split folder": _tar(layout / "test", tmp_path / "test.tar", "test"),
               "tar.gz of class folders": _tar(layout / "test", tmp_path / "classes.tar.gz", ".")}
    runs = {what: data.eval_subset(data.load_dataset(f"imagefolder:{src}"), 100, seed=0) for what, src in sources.items()}
    reference = runs["train/test layout"]
    accuracy = _accuracy(resnet20, reference)
    assert 0.6 < accuracy, f"ResNet-20 scored {accuracy:.2f} on 100 CIFAR-10 test images: labels do not match classes"
    for what, run in runs.items():
        assert torch.equal(run.x, reference.x) and torch.equal(run.y, reference.y), f"{what} read other images"
        assert _accuracy(resnet20, run) == accuracy and run.facts["decoded"] == 100


def test_eval_decodes_its_subset_alone_and_never_touches_the_training_split(cifar_members, tmp_path, monkeypatch):
    root = tmp_path / "sets"
    _write(root / "train", cifar_members, 3)
    _write(root / "test", cifar_members, 20)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    opened = []
    real_open = splits.open_image
    monkeypatch.setattr(splits, "open_image", lambda blob, where, channels=None: opened.append(where) or
                        real_open(blob, where, channels))
    ds = data.load_dataset(f"imagefolder:{root}")
    subset = data.eval_subset(ds, 30, seed=0)
    assert len(opened) == 30 and all("/test/" in w for w in opened), f"eval decoded {len(opened)} images"
    assert subset.facts["decoded"] == 30 and subset.facts["split_size"] == 200 and subset.facts["peak_rss_mb"] > 0
    with pytest.raises(BadInput, match="broken.jpg cannot be decoded"):
        data.training_dataset(ds)


def _bicubic_copy(blob: bytes, k: int) -> Image.Image:
    """A copy at one of several sizes and aspect ratios: the photo enlarged (Pillow's default bicubic filter) to a
    square side, widened or heightened by mirrored borders where the aspect ratio is not 1."""
    side, border = [(40, 0), (48, 0), (64, 0), (96, 0), (64, 8), (48, -6), (96, 16), (64, -12)][k % 8]
    pixels = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB").resize((side, side), Image.BICUBIC))
    pad = ((0, 0), (border, border), (0, 0)) if border > 0 else ((-border, -border), (0, 0), (0, 0))
    return Image.fromarray(np.pad(pixels, pad, mode="reflect"))


def test_mixed_size_copies_with_input_size_32_score_within_one_point_of_the_originals(cifar_members, resnet20,
                                                                                      tmp_path):
    originals = data.load_dataset(f"imagefolder:{_write(tmp_path / 'orig', cifar_members, 50)}")
    copies = data.load_dataset(f"imagefolder:{_write(tmp_path / 'mixed', cifar_members, 50, _bicubic_copy)}")
    with pytest.raises(BadInput, match="differ in size"):
        data.eval_subset(copies, 10, seed=0)
    reference = data.eval_subset(originals, None, seed=0)
    resized = data.eval_subset(copies, None, seed=0, request=Preprocess(input_size=32))
    sizes = {Image.open(f).size for f in (tmp_path / "mixed").rglob("*.png")}
    assert len(sizes) == 8 and resized.x.shape == reference.x.shape == (500, 3, 32, 32)
    assert resized.facts["resized_in_data"] == {"input_size": [32, 32], "resize": 32, "crop_pct": 1.0,
                                                "interpolation": "bilinear"}
    gap = 100 * abs(_accuracy(resnet20, resized) - _accuracy(resnet20, reference))
    assert gap <= 1.0, f"the resized copies score {gap:.1f} points away from the 32-pixel originals"


def _grey_digits(root: Path, per_class: int = 6) -> Path:
    mnist = data.load_dataset("mnist5k").test
    for digit in range(3):
        folder = root / str(digit)
        folder.mkdir(parents=True)
        for k, i in enumerate(torch.nonzero(mnist.y == digit).flatten()[:per_class].tolist()):
            Image.fromarray(mnist.x[i, 0].numpy()).save(folder / f"{k}.png")
    return root


def test_grey_folder_is_read_as_one_channel_and_trains_with_the_mnist_recipe(tmp_path):
    _grey_digits(tmp_path / "digits" / "train")
    _grey_digits(tmp_path / "digits" / "test", 2)
    ds = data.load_dataset(f"imagefolder:{tmp_path / 'digits'}")
    assert data.eval_subset(ds, None, seed=0).x.shape == (6, 1, 28, 28)
    trained = data.training_dataset(ds)
    assert trained.family == "mnist" and trained.in_channels == 1 and trained.train.x.shape == (18, 1, 28, 28)
    assert data.training_dataset(ds, recipe="cifar").family == "cifar"
    assert data.training_dataset(ds, Preprocess(input_size=48)).family == "cifar"
    assert data.training_dataset(ds, Preprocess(input_size=96)).family == "fine"


@pytest.fixture(scope="module")
def flower_members() -> list[tuple[str, str, bytes]]:
    """Ten real Flowers-102 training photos of each of the first two classes (shorter side 176, sizes differ)."""
    files = ImageFiles.scan(shared_file("data/flowers102/train.tar"))
    idx = [i for i, c in enumerate(files.classes_of) if c in ("001", "002")]
    return [(files.classes_of[i], Path(files.names[i]).name, blob) for i, blob in zip(idx, files.read_many(idx, 1))]


def test_large_photos_train_on_random_resized_crops_and_test_on_a_centre_crop(flower_members, tmp_path):
    _write(tmp_path / "flowers" / "train", flower_members, 10)
    _write(tmp_path / "flowers" / "test", flower_members, 3)
    ds = data.training_dataset(data.load_dataset(f"imagefolder:{tmp_path / 'flowers'}"), Preprocess(input_size=96))
    assert ds.family == "fine" and isinstance(ds.train, splits.ImageSplit) and ds.input_size == 96
    torch.manual_seed(0)
    first, again = ds.train[0][0], ds.train[0][0]
    assert first.shape == (3, 96, 96) and not torch.equal(first, again), "training crops should differ per draw"
    assert torch.equal(ds.test[0][0], ds.test[0][0]) and ds.test[0][0].shape == (3, 96, 96)
    assert ds.applied == Preprocess((96, 96), 96, 1.0, "bilinear") and len(ds.mean) == 3
    cifar = data.training_dataset(data.load_dataset(f"imagefolder:{tmp_path / 'flowers'}"), Preprocess(input_size=48),
                                  recipe="cifar")
    assert isinstance(cifar.train, data.TensorSplit) and cifar.train.x.shape == (20, 3, 48, 48)


def test_flowers102_loads_the_official_1020_1020_6149_split_with_102_classes():
    shared_file("data/flowers102/test.tar")
    ds = data.load_dataset("flowers102")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1020, 1020, 6149)
    assert len(ds.classes) == 102 and ds.classes[0] == "pink primrose" and ds.family == "fine"
    assert torch.bincount(ds.train.y).tolist() == [10] * 102 and torch.bincount(ds.val.y).tolist() == [10] * 102
    assert len(torch.unique(ds.test.y)) == 102
    subset = data.eval_subset(ds, 12, seed=0)
    assert subset.x.shape == (12, 3, 224, 224) and subset.facts["resized_in_data"]["resize"] == 256


def test_flowers102_reads_torchvision_original_files(flower_members, tmp_path, monkeypatch):
    from scipy.io import savemat
    from torchvision.datasets import Flowers102

    base = tmp_path / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    chosen = flower_members[:3] + flower_members[-3:]  # three of class 001, three of class 002
    for k, (_, _, blob) in enumerate(chosen, 1):
        (base / "jpg" / f"image_{k:05d}.jpg").write_bytes(blob)
    savemat(base / "imagelabels.mat", {"labels": np.array([int(c) for c, _, _ in chosen])})
    savemat(base / "setid.mat", {"trnid": np.array([1, 4]), "valid": np.array([2, 5]), "tstid": np.array([3, 6])})
    # the official .mat files are md5-checked; the ones written here cannot match, so the check is waived
    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)
    ds = data.load_dataset("flowers102", root=tmp_path)
    assert ds.train.y.tolist() == ds.val.y.tolist() == ds.test.y.tolist() == [0, 1]
    assert ds.classes[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    subset = data.eval_subset(ds, None, seed=0)
    from_tar = data.eval_subset(data.Dataset("tar", ds.classes, None, None, "fine", None, splits.ImageSplit(
        ImageFiles(tmp_path, [f"flowers-102/jpg/image_0000{k}.jpg" for k in (3, 6)], ["001", "002"]), [0, 1]),
        preprocess=sources.FINE_PREPROCESS), None, seed=0)
    assert subset.x.shape == (2, 3, 224, 224) and torch.equal(subset.x, from_tar.x)


def test_flowers102_missing_names_both_layouts_and_the_flags(tmp_path):
    with pytest.raises(DatasetNotFound, match=r"flowers102/\{train,val,test\}.tar.*flowers-102/.*--data-root.*--download"):
        data.load_dataset("flowers102", root=tmp_path)


# --- refused inputs ------------------------------------------------------------------------------

def _loose_image(root: Path) -> str:
    next(root.rglob("*.jpg")).rename(root / "loose.jpg")
    return "loose.jpg is not inside a class folder; put each image in <split>/<class>/"


def _empty_class(root: Path) -> str:
    (root / "zebra").mkdir()
    return "class folder .*zebra holds no images; add images or remove the folder"


def _text_file(root: Path) -> str:
    (root / "cat" / "notes.txt").write_text("labels checked")
    return "cat/notes.txt is not an image .*move it out of the class folders"


def _garbage_jpeg(root: Path) -> str:
    (root / "cat" / "0001.jpg").write_bytes(b"<html>quota exceeded</html>")
    return "cat/0001.jpg cannot be decoded .*replace or remove it"


def _truncated_jpeg(root: Path) -> str:
    path = root / "cat" / "0001.jpg"
    path.write_bytes(path.read_bytes()[:700])
    return "cat/0001.jpg cannot be decoded .*truncated.*replace or remove it"


def _grey_among_colour(root: Path) -> str:
    path = root / "cat" / "0001.jpg"
    Image.open(path).convert("L").save(path)
    return "cat/0001.jpg is grey but .* is colour; read every image one way with --channels 3"


REFUSED = [_loose_image, _empty_class, _text_file, _garbage_jpeg, _truncated_jpeg, _grey_among_colour]


@pytest.mark.parametrize("breach", REFUSED, ids=[f.__name__.strip("_") for f in REFUSED])
def test_bad_split_is_refused_in_one_line_naming_the_file_and_the_fix(breach, cifar_members, tmp_path):
    root = _write(tmp_path / "split", [m for m in cifar_members if m[0] in ("cat", "dog")], 3)
    message = breach(root)
    with pytest.raises(BadInput, match=message) as caught:
        data.eval_subset(data.load_dataset(f"imagefolder:{root}"), None, seed=0)
    assert "\n" not in str(caught.value)


def test_a_truncated_archive_is_refused_in_one_line_naming_it(cifar_members, tmp_path):
    archive = _tar(_write(tmp_path / "split", cifar_members, 5), tmp_path / "split.tar.gz", "test")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BadInput, match=r"split.tar.gz is truncated or not a tar archive .*; check the file"):
        data.load_dataset(f"imagefolder:{archive}").test


def test_grey_among_colour_is_read_in_colour_with_channels_3(cifar_members, tmp_path):
    root = _write(tmp_path / "split", [m for m in cifar_members if m[0] in ("cat", "dog")], 3)
    _grey_among_colour(root)
    subset = data.eval_subset(data.load_dataset(f"imagefolder:{root}", channels=3), None, seed=0)
    assert subset.x.shape == (6, 3, 32, 32)
    grey = subset.x[1]  # cat/0001.jpg
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_input_size_beyond_the_images_with_resizing_forbidden_names_the_file_and_the_fix(cifar_members, tmp_path):
    root = _write(tmp_path / "split", cifar_members[:3], 3)
    ds = data.load_dataset(f"imagefolder:{root}")
    with pytest.raises(BadInput, match=r"airplane/0000.jpg is 32x32 \(--resize 0 forbids resizing\), smaller than the "
                                       r"input size 40x40; lower --input-size"):
        data.eval_subset(ds, None, seed=0, request=Preprocess(input_size=40, resize=0))
    cropped = data.eval_subset(ds, None, seed=0, request=Preprocess(input_size=24, resize=0))
    full = data.eval_subset(ds, None, seed=0)
    assert torch.equal(cropped.x, full.x[:, :, 4:28, 4:28]), "--resize 0 should cut out the centre, not resize"


def test_training_on_a_split_folder_and_evaluating_a_train_only_folder_say_what_is_missing(cifar_members, tmp_path):
    split = _write(tmp_path / "split", cifar_members, 1)
    with pytest.raises(DatasetNotFound, match="has no train split .*DIR/train/<class>/<image>"):
        data.load_dataset(f"imagefolder:{split}").train
    _write(tmp_path / "only-train" / "train", cifar_members, 1)
    with pytest.raises(DatasetNotFound, match="has train/ but no test/ or val/ split"):
        data.load_dataset(f"imagefolder:{tmp_path / 'only-train'}").test


def test_eval_cli_turns_a_corrupt_image_into_one_line_and_exit_code_2(cifar_members, resnet20_checkpoint, tmp_path,
                                                                     capsys):
    from robustjpeg.cli import EXIT_USAGE, main

    root = _write(tmp_path / "split", [m for m in cifar_members if m[0] in ("cat", "dog")], 3)
    _garbage_jpeg(root)
    code = main(["eval", str(resnet20_checkpoint), "--arch", "resnet20", "--dataset", f"imagefolder:{root}",
                 "-o", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE and len(err.splitlines()) == 1 and "cat/0001.jpg cannot be decoded" in err


def test_eval_cli_resizes_mixed_photos_and_records_it_in_run_json(cifar_members, resnet20_checkpoint, tmp_path):
    from robustjpeg.cli import EXIT_CHECK_FAILED, EXIT_OK, main

    root = _write(tmp_path / "mixed", cifar_members, 3, _bicubic_copy)
    suite = write_suite(tmp_path, suite_toml(["0", "1/255"], {"name": "fgsm", "kind": "fgsm"}, standard_eps="1/255"))
    code = main(["eval", str(resnet20_checkpoint), "--arch", "resnet20", "--mean", "0.485", "0.456", "0.406",
                 "--std", "0.229 0.224 0.225", "--input-size", "32", "--dataset", f"imagefolder:{root}", "-n", "20",
                 "--suite", str(suite), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert code in (EXIT_OK, EXIT_CHECK_FAILED)
    run = json.loads((tmp_path / "out" / "runs" / resnet20_checkpoint.stem / "run.json").read_text())
    assert run["data"]["decoded"] == 20 and run["data"]["resized_in_data"]["input_size"] == [32, 32]
    assert run["model"]["mean"] == [0.485, 0.456, 0.406] and run["model"]["preprocess"] == {"input_size": [32, 32]}


def test_a_model_trained_on_mixed_sizes_stores_its_test_resize_and_eval_reuses_it(cifar_members, tmp_path):
    from robustjpeg.models.loading import load_model
    from robustjpeg.training.config import TrainConfig
    from robustjpeg.training.loop import train

    root = tmp_path / "mixed"
    _write(root / "train", cifar_members, 4, _bicubic_copy)
    _write(root / "test", cifar_members[::5], 2, _bicubic_copy)
    cfg = TrainConfig(dataset=f"imagefolder:{root}", arch="resnet20", epochs=1, input_size=(32, 32), crop_pct=0.875,
                      device="cpu", progress=False, workers=0)
    summary = train(cfg, tmp_path / "run")
    expected = {"input_size": [32, 32], "resize": 36, "crop_pct": 0.875, "interpolation": "bilinear"}
    assert summary["model_spec"]["preprocess"] == expected and summary["train_config"]["recipe"] is None
    _, info = load_model(summary["checkpoint"])
    subset = data.eval_subset(data.load_dataset(f"imagefolder:{root}"), None, 0, Preprocess.from_dict(info.preprocess))
    assert subset.facts["resized_in_data"] == expected and subset.x.shape[1:] == (3, 32, 32)


def test_bench_sweeps_a_model_trained_on_mixed_sizes_at_its_own_crop(cifar_members, tmp_path):
    """The Flowers-102 study's path in miniature: train at a chosen crop in a benchmark, sweep at that crop."""
    from robustjpeg.cli import main

    root = tmp_path / "mixed"
    _write(root / "train", cifar_members, 4, _bicubic_copy)
    _write(root / "test", cifar_members[::5], 2, _bicubic_copy)
    bench = tmp_path / "bench.toml"
    bench.write_text(f'[benchmark]\nname = "crop"\nnum_examples = 10\nsuites = ["paper"]\n\n'
                     f'[data]\ndataset = "imagefolder:{root.as_posix()}"\n\n[[models]]\nname = "small"\n'
                     'train = { arch = "resnet20", epochs = 1, input_size = 24, resize = 28, workers = 0 }\n')
    assert main(["bench", str(bench), "-o", str(tmp_path / "out"), "--device", "cpu"]) in (0, 4)
    (run,) = (tmp_path / "out" / "runs").glob("small/*/paper/run.json")
    facts = json.loads(run.read_text())["data"]
    assert facts["shape"] == [3, 24, 24] and facts["resized_in_data"]["resize"] == 28, facts
