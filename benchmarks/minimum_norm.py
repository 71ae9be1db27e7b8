"""Minimum-norm attacks the AttackBench way (Cina et al. 2024): per model, each attack's per-sample distances, its
optimality against the per-sample best of all attacks, its share of samples broken, and its wall time.

Models: the shared third-party ResNet-20 (undefended) and the adversarially trained CNN-A (Linf 2/255), on CIFAR-10
JPEG test images (every k-th, so all classes appear). The fixed-c CW row reproduces the settings the suites shipped
before (c = 10, lr = 0.1, no binary search) to show what a weak minimum-norm attack does to the curve.

    python benchmarks/minimum_norm.py [-n 100] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustjpeg.attacks.adapters import ATTACKS  # noqa: E402
from robustjpeg.data.datasets import decode_cached  # noqa: E402
from robustjpeg.evaluation import optimality as opt  # noqa: E402
from robustjpeg.evaluation.engine import perturbation_norm  # noqa: E402
from robustjpeg.models.loading import load_model  # noqa: E402

MODELS = {  # name: (file under shared/models, architecture, mean, std)
    "resnet20 (undefended)": ("cifar10/resnet20-12fca82f.th", "resnet20", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cnn-a adv (robust)": ("robust/cifar_cnn_a_adv.pt", "cnn_a", (125.3 / 255, 123.0 / 255, 113.9 / 255),
                           (63.0 / 255, 62.1 / 255, 66.7 / 255)),
}
ATTACK_SET = [("fmn-l2", "fmn", {"norm": "L2"}), ("ddn", "ddn", {}), ("alma", "alma", {}),
              ("cw (search)", "cw", {}), ("cw (c=10, lr=0.1, fixed)", "cw", {"c": 10.0, "lr": 0.1, "search_steps": 1}),
              ("fmn-linf", "fmn", {"norm": "Linf"})]
UPPER = {"L2": 3.0, "Linf": 16 / 255}  # right end of the curve area: the suites' largest budgets


def distances(model, x, y, kind: str, params: dict) -> tuple[np.ndarray, str, float]:
    """Per-sample distance to the attack's adversarial example (inf where it failed), its norm, and seconds."""
    attack = ATTACKS.create(kind, **params)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    adv = attack.perturb(model, x, y, None, 0).detach()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        broken = model(adv).argmax(1) != y
    d = perturbation_norm(adv - x, attack.norm)
    return torch.where(broken, d, torch.full_like(d, float("inf"))).numpy(), attack.norm, seconds


def report(name: str, model, x, y) -> None:
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    rows = {label: distances(model, x, y, kind, params) for label, kind, params in ATTACK_SET}
    print(f"\n{name}: {int(correct.sum())} of {len(correct)} clean-correct images attacked")
    print(f"{'attack':<28} {'norm':<5} {'optimality':>10} {'found':>7} {'median':>8} {'robust@std':>10} {'seconds':>8}")
    for norm, std in (("L2", 0.5), ("Linf", 8 / 255)):
        group = {k: v for k, v in rows.items() if v[1] == norm}
        best = opt.best_distance({k: v[0] for k, v in group.items()}, [])
        for label, (d, _, seconds) in group.items():
            print(f"{label:<28} {norm:<5} {opt.optimality(d, best, UPPER[norm]):>10.3f} {np.isfinite(d).mean():>7.1%} "
                  f"{np.median(d):>8.4f} {(d > std).mean() * correct.float().mean().item():>10.1%} {seconds:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="test images per model")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="folder with data/ and models/")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pixels, names = decode_cached(args.shared / "data/cifar10-jpeg/test.tar.gz")
    classes = sorted(set(names))
    pick = np.arange(0, len(names), len(names) // args.n)[: args.n]
    x = torch.from_numpy(pixels[pick]).permute(0, 3, 1, 2).contiguous().float() / 255
    y = torch.tensor([classes.index(names[i]) for i in pick])
    print(f"CIFAR-10 JPEG test images: {len(y)}; torch {torch.__version__}, {args.threads} thread(s); "
          f"robust@std: share of all images with distance > the standard budget (L2 0.5, Linf 8/255)")
    for name, (file, arch, mean, std) in MODELS.items():
        model, _ = load_model(args.shared / "models" / file, arch=arch, mean=mean, std=std)
        report(name, model.eval(), x, y)


if __name__ == "__main__":
    main()
