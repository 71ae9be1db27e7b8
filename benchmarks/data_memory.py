"""Peak memory of evaluating n images of a large ImageFolder: it grows with n, not with the folder.

Builds a folder of real photos from the shared Flowers-102 test split (6,149 JPEGs of differing sizes, shorter side
176), repeated through hard links up to --images files in 102 class folders (50,000 by default: an ImageNet
validation set's count). Each measurement runs in a fresh process and prints its peak resident memory:

- data: robustjpeg.data.datasets.eval_subset alone (list the folder, draw the class-stratified subset, decode the n images
  with resize 256 + centre crop 224), for several n and folder sizes; also the peak after imports alone;
- eval: the whole `robustjpeg eval` command at n = 500 (a random-weight torchvision mobilenet_v3_small at 224 px,
  FGSM at two budgets, the sanity checks, the report).

    python benchmarks/data_memory.py [--images 50000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUSTJPEG_SHARED", ROOT.parent / "shared"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
PROBE = """
import json, sys, time
from robustjpeg.data import datasets as data
from robustjpeg.data.preprocess import Preprocess
imports = data.peak_rss_mb()
t0 = time.perf_counter()
ds = data.load_dataset("imagefolder:" + sys.argv[1])
subset = data.eval_subset(ds, int(sys.argv[2]), 0, Preprocess(input_size=224, crop_pct=0.875), workers=int(sys.argv[3]))
print(json.dumps({"imports_mb": imports, "wall_s": round(time.perf_counter() - t0, 2), **subset.facts}))
"""


def build_folder(target: Path, images: int) -> Path:
    """Flowers-102 test photos in 102 class folders, hard-linked (symlinked where links fail) up to `images` files."""
    source = target / "flowers-test"
    with tarfile.open(SHARED / "data" / "flowers102" / "test.tar") as tf:
        tf.extractall(source, filter="data")
    photos = sorted(source.rglob("*.jpg"))
    folder = target / f"large-{images}"
    for k in range(images):
        photo = photos[k % len(photos)]
        link = folder / photo.parent.name / f"{k // len(photos)}-{photo.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(photo, link)
        except OSError:
            link.symlink_to(photo)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50000, help="files in the large folder")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        large = build_folder(Path(tmp), args.images)
        small = Path(tmp) / "flowers-test" / "test"
        print(f"built {large} ({args.images} files) in {time.perf_counter() - t0:.1f} s")
        print("| folder | n | peak RSS (MiB) | after imports (MiB) | decoded-tensor MiB | wall s |")
        for folder, n in ((small, 100), (small, 500), (large, 100), (large, 500), (large, 2000)):
            out = subprocess.run([sys.executable, "-c", PROBE, str(folder), str(n), str(args.workers)], cwd=ROOT,
                                 env=ENV, capture_output=True, text=True, check=True).stdout
            facts = json.loads(out)
            print(f"| {facts['split_size']} files | {n} | {facts['peak_rss_mb']:.0f} | {facts['imports_mb']:.0f} | "
                  f"{facts['tensor_mb']:.0f} | {facts['wall_s']} |")
        print(f"whole folder decoded at 224x224 (arithmetic, not run): {args.images * 3 * 224 * 224 / 2**30:.1f} GiB "
              f"as uint8, {args.images * 3 * 224 * 224 * 4 / 2**30:.1f} GiB as float32")
        eval_peak(Path(tmp), large, args.workers)


def eval_peak(tmp: Path, folder: Path, workers: int) -> None:
    """`robustjpeg eval` at n = 500 on the large folder, in a fresh process; its peak RSS from run.json and wait4."""
    import torch
    import torchvision

    torch.save(torchvision.models.mobilenet_v3_small(num_classes=102).state_dict(), tmp / "mobilenet.pt")
    suite = tmp / "suite.toml"
    suite.write_text('name = "fgsm"\nstandard_eps = "1/255"\neps = ["0", "1/255"]\n[[attacks]]\nname = "fgsm"\n'
                     'kind = "fgsm"\n')
    cmd = [sys.executable, "-m", "robustjpeg", "eval", str(tmp / "mobilenet.pt"), "--arch",
           "torchvision:mobilenet_v3_small", "--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225",
           "--input-size", "224", "--crop-pct", "0.875", "--dataset", f"imagefolder:{folder}", "-n", "500",
           "--suite", str(suite), "--workers", str(workers), "--batch-size", "100", "-o", str(tmp / "out"),
           "--device", "cpu", "--name", "mobilenet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": str(workers)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"robustjpeg eval failed: {proc.stderr.read().decode()}")
    run = json.loads((tmp / "out" / "runs" / "mobilenet" / "run.json").read_text())
    print(f"robustjpeg eval, n = 500 of {run['data']['split_size']} files, mobilenet_v3_small at 224, FGSM x 2 "
          f"budgets: peak RSS {usage.ru_maxrss / 1024:.0f} MiB (after decoding: {run['data']['peak_rss_mb']:.0f} MiB), "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
