"""PGD with per-sample early exit and best-iterate tracking: the loop the suite owns.

A sample leaves the batch at the first iterate inside the budget that the judging model misclassifies, and that
iterate is what the attack returns. This breaks every sample torchattacks' last-iterate PGD breaks with the same
steps, start and step size (the last iterate is one of the iterates), for fewer passes; torchattacks' PGD runs every
step on the whole batch and returns the last iterate, which may have stepped back out of the misclassified region.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from robustjpeg.attacks.noise import keyed_rand


def early_exit_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int, alpha: float,
                   norm: str = "Linf", random_start: bool = True, seed: int | None = None,
                   judge: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """PGD returning, per sample, its first misclassified iterate inside the budget (else the last one).

    Not torchattacks' PGD/PGDL2: those judge only the last iterate and keep every sample in the batch for every step.
    Here a sample counts as broken as soon as any iterate is misclassified, and then leaves the batch. The step rule,
    projection and clamp to [0, 1] are torchattacks'; with seed None the start is drawn from the global RNG exactly as
    torchattacks draws it, so from the same global seed the iterates are theirs until a sample leaves: it breaks every
    sample their PGD breaks, for at most their passes. With a seed (the suite's way) each sample's start is keyed by
    the seed and the image (attacks.noise), so a sample's attack does not depend on its batch. judge: the evaluated
    model's labels for an iterate, where gradients come from another view or model (BPDA, transfer); None = the
    argmax of the forward that gives the gradient.
    """
    adv = _pgd_start(x, eps, norm, seed) if random_start else x.clone()
    out, alive = adv.clone(), torch.arange(len(x), device=x.device)
    for _ in range(steps):
        current = adv[alive].requires_grad_(True)
        logits = model(current)
        labels = logits.argmax(1) if judge is None else judge(current.detach())
        broken = labels != y[alive]
        out[alive[broken]] = current.detach()[broken]
        keep = ~broken
        if not bool(keep.any()):
            return out
        loss = nn.functional.cross_entropy(logits[keep], y[alive[keep]], reduction="sum")
        grad = torch.autograd.grad(loss, current)[0][keep]
        alive = alive[keep]
        adv[alive] = _pgd_step(x[alive], current.detach()[keep], grad, eps, alpha, norm)
    out[alive] = adv[alive]
    return out


def _pgd_start(x: Tensor, eps: float, norm: str, seed: int | None) -> Tensor:
    """torchattacks' random start: uniform in the Linf ball, or a normal direction at a uniform radius in L2; from
    the global RNG as torchattacks draws it (seed None) or keyed per sample."""
    if norm == "Linf":
        if seed is None:
            return torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), min=0, max=1)
        return torch.clamp(x + eps * (2 * keyed_rand(x, seed, "pgd-start") - 1), min=0, max=1)
    if seed is None:
        delta = torch.empty_like(x).normal_()
        r = torch.zeros(len(x), 1, 1, 1, device=x.device, dtype=x.dtype).uniform_(0, 1)
    else:
        delta = keyed_rand(x, seed, "pgd-direction", normal=True)
        r = keyed_rand(x, seed, "pgd-radius", shape=(1, 1, 1))
    n = delta.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1)
    return torch.clamp(x + delta * (r / n * eps), min=0, max=1)


def _pgd_step(x: Tensor, adv: Tensor, grad: Tensor, eps: float, alpha: float, norm: str) -> Tensor:
    """One torchattacks step: signed (Linf) or normalised (L2) gradient ascent, projection onto the ball, clamp."""
    if norm == "Linf":
        delta = torch.clamp(adv + alpha * grad.sign() - x, min=-eps, max=eps)
    else:
        grad = grad / (grad.flatten(1).norm(p=2, dim=1) + 1e-10).view(-1, 1, 1, 1)
        delta = adv + alpha * grad - x
        size = delta.flatten(1).norm(p=2, dim=1)
        delta = delta * torch.min(eps / size, torch.ones_like(size)).view(-1, 1, 1, 1)
    return torch.clamp(x + delta, min=0, max=1)
