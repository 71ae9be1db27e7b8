"""Datasets: the embedded mnist5k split, stratified subsets, device augmentation and ImageFolder/tar decoding."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustjpeg.data import datasets as data
from robustjpeg.data import sources, splits
from robustjpeg.errors import BadInput, DatasetNotFound, UnknownName

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def mnist():
    return data.load_dataset("mnist5k")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTJPEG_CACHE", str(folder))
    return folder


def test_mnist5k_is_a_balanced_4000_1000_split_of_uint8_digits(mnist):
    assert mnist.train.x.shape == (4000, 1, 28, 28) and mnist.test.x.shape == (1000, 1, 28, 28)
    assert mnist.train.x.dtype == torch.uint8 and mnist.test.y.dtype == torch.int64
    assert torch.bincount(mnist.train.y).tolist() == [400] * 10
    assert torch.bincount(mnist.test.y).tolist() == [100] * 10
    assert int(mnist.test.x.max()) == 255 and mnist.classes == [str(d) for d in range(10)]


def test_mnist5k_train_and_test_share_no_image(mnist):
    train = {bytes(img.numpy()) for img in mnist.train.x}
    shared = sum(bytes(img.numpy()) in train for img in mnist.test.x)
    assert shared == 0, f"{shared} test digits also appear in the training split"


def test_mnist5k_split_is_the_same_on_every_load(mnist):
    again = data.load_dataset("mnist5k")
    assert torch.equal(again.test.x, mnist.test.x) and torch.equal(again.train.y, mnist.train.y)


def test_stratified_indices_follow_class_shares_and_the_seed(mnist):
    labels = torch.cat([mnist.test.y, torch.zeros(50, dtype=torch.int64)])  # class 0 gets 150 of 1050
    idx = data.stratified_indices(labels, 105, seed=1)
    assert torch.equal(idx, torch.sort(idx).values) and len(set(idx.tolist())) == 105
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts[0] == 15 and counts[1:].tolist() == [10] * 9
    assert torch.equal(idx, data.stratified_indices(labels, 105, seed=1))
    assert not torch.equal(idx, data.stratified_indices(labels, 105, seed=2))


def test_stratified_indices_reject_more_examples_than_the_split_holds(mnist):
    with pytest.raises(BadInput, match="between 1 and 1000"):
        data.stratified_indices(mnist.test.y, 1001, seed=0)


def test_eval_tensors_give_unit_range_floats_of_the_chosen_test_images(mnist):
    x, y, idx = data.eval_tensors(mnist, 200, seed=0)
    assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.testing.assert_close(x * 255, mnist.test.x[idx].float())
    assert torch.equal(y, mnist.test.y[idx]) and torch.bincount(y).tolist() == [20] * 10


def _tiny_photos(photos) -> torch.Tensor:
    return torch.stack([torch.from_numpy(p[:288:9, :288:9].copy()).permute(2, 0, 1) for p in photos])


def test_cifar_augmentation_returns_shifted_or_mirrored_windows_of_the_padded_image(photos):
    x = _tiny_photos(photos)
    out = data.augment(x, "cifar", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for img, src in zip(out, padded):
        windows = [src[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(img, w) or torch.equal(img, w.flip(-1)) for w in windows)


def test_augmentation_repeats_from_the_same_generator_state(photos):
    x = _tiny_photos(photos).repeat(8, 1, 1, 1)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    first = data.augment(x, "cifar", gen)
    gen.set_state(state)
    assert torch.equal(first, data.augment(x, "cifar", gen))
    assert not torch.equal(first, x), "augmentation left every image unchanged"
    assert data.augment(x, "mnist", gen) is x


def test_channel_stats_match_a_direct_float_computation(photos):
    x = _tiny_photos(photos)
    mean, std = data.channel_stats(x)
    f = x.double() / 255
    np.testing.assert_allclose(mean, f.mean(dim=(0, 2, 3)).numpy(), atol=1e-4)
    np.testing.assert_allclose(std, f.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-4)


@pytest.mark.slow
def test_cifar10_jpeg_test_tar_decodes_to_10000_images_and_is_cached(cifar_jpeg_test_tar, cache_dir):
    x, classes = sources.decode_cached(cifar_jpeg_test_tar)
    assert x.shape == (10000, 32, 32, 3) and x.dtype == np.uint8
    assert sorted(set(classes))[:2] == ["airplane", "automobile"] and classes.count("truck") == 1000
    with tarfile.open(cifar_jpeg_test_tar) as tf:
        first = next(m for m in tf if m.isfile() and m.name.endswith(".jpg"))
        direct = np.asarray(Image.open(io.BytesIO(tf.extractfile(first).read())).convert("RGB"))
    assert first.name.endswith("airplane/0000.jpg") and np.array_equal(x[0], direct)
    assert len(list(cache_dir.glob("*.npz"))) == 1
    again, _ = sources.decode_cached(cifar_jpeg_test_tar)
    assert np.array_equal(again, x)


def _write_split(tar_path: Path, root: Path, split: str, per_class: int) -> None:
    """Copy the first images of each class from the CIFAR-10 JPEG test tar into root/<split>/<class>/."""
    taken: dict[str, int] = {}
    with tarfile.open(tar_path) as tf:
        for member in tf:
            if not member.isfile():
                continue
            cls = member.name.split("/")[-2]
            if taken.get(cls, 0) < per_class:
                taken[cls] = taken.get(cls, 0) + 1
                target = root / split / cls / Path(member.name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tf.extractfile(member).read())


@pytest.fixture
def tiny_imagefolder(cifar_jpeg_test_tar, tmp_path) -> Path:
    root = tmp_path / "tiny"
    _write_split(cifar_jpeg_test_tar, root, "train", 4)
    _write_split(cifar_jpeg_test_tar, root, "test", 2)
    return root


def test_imagefolder_reads_class_folders_into_labelled_tensors(tiny_imagefolder, cache_dir):
    ds = data.training_dataset(data.load_dataset(f"imagefolder:{tiny_imagefolder}"))
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10 and ds.family == "cifar" and ds.in_channels == 3
    assert ds.train.x.shape == (40, 3, 32, 32) and torch.bincount(ds.train.y).tolist() == [4] * 10
    truck = np.asarray(Image.open(sorted((tiny_imagefolder / "test" / "truck").iterdir())[0]))
    assert np.array_equal(ds.test.x[-2].permute(1, 2, 0).numpy(), truck)
    assert all(0 < m < 1 for m in ds.mean) and all(0 < s < 0.5 for s in ds.std)


def test_imagefolder_reads_tar_gz_splits_like_folders(tiny_imagefolder, tmp_path, cache_dir):
    packed = tmp_path / "packed"
    packed.mkdir()
    for split in ("train", "test"):
        with tarfile.open(packed / f"{split}.tar.gz", "w:gz") as tf:
            tf.add(tiny_imagefolder / split, arcname=split)
    from_tar = data.training_dataset(data.load_dataset(f"imagefolder:{packed}"))
    from_dir = data.training_dataset(data.load_dataset(f"imagefolder:{tiny_imagefolder}"))
    assert torch.equal(from_tar.train.x, from_dir.train.x) and torch.equal(from_tar.test.y, from_dir.test.y)


def test_imagefolder_with_mixed_sizes_and_no_input_size_asks_for_one(tmp_path, photos, cache_dir):
    for split in ("train", "test"):
        for k, photo in enumerate(photos[:2]):
            target = tmp_path / split / f"class{k}" / "a.png"
            target.parent.mkdir(parents=True)
            Image.fromarray(photo[: 40 + 8 * k, :40]).save(target)
    ds = data.load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(BadInput, match=r"class1/a.png 48x40.*--input-size"):
        data.training_dataset(ds)
    with pytest.raises(BadInput, match=r"differ in size.*--input-size"):
        data.eval_subset(ds, None, seed=0)


def test_missing_data_sets_say_where_they_looked_and_which_flag_helps(tmp_path):
    with pytest.raises(DatasetNotFound, match="--download"):
        data.load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DatasetNotFound, match="holds no class folders"):
        data.load_dataset(f"imagefolder:{tmp_path}").test
    with pytest.raises(DatasetNotFound, match="does not exist"):
        data.load_dataset(f"imagefolder:{tmp_path / 'nothing'}")
    with pytest.raises(DatasetNotFound, match="CUB_200_2011"):
        data.load_dataset("cub200", root=tmp_path)
    with pytest.raises(UnknownName, match="mnist5k"):
        data.load_dataset("mnist6k")


def test_file_based_splits_batch_in_the_seeded_order_and_feed_eval_tensors(tiny_imagefolder):
    from torchvision import transforms

    from robustjpeg.training.batches import Batches
    from robustjpeg.training.config import TrainConfig

    files = sorted((tiny_imagefolder / "train").rglob("*.jpg"))
    labels = [sorted({f.parent.name for f in files}).index(f.parent.name) for f in files]
    split = splits.ImageSplit(files, labels, transforms.ToTensor())
    ds = data.Dataset("tiny", [str(i) for i in range(10)], sources.IMAGENET_MEAN, sources.IMAGENET_STD, "fine", split, split)
    cfg = TrainConfig(dataset="tiny", batch_size=16, workers=0).resolved("fine")
    batches = Batches(ds, cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(3))
    got = list(batches.epoch(gen))
    assert [len(y) for _, y in got] == [16, 16, 8]
    assert torch.equal(torch.cat([y for _, y in got]), split.y[order])
    assert torch.equal(got[0][0][0], transforms.ToTensor()(Image.open(files[order[0]]).convert("RGB")))
    x, y, idx = data.eval_tensors(ds, 20, seed=0)
    assert x.shape == (20, 3, 32, 32) and torch.equal(y, split.y[idx]) and torch.bincount(y).tolist() == [2] * 10
