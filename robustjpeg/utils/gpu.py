"""The GPU's fast path, shared by training and sweeps: channels-last layout, cuDNN autotuning, batches sized to memory.

Every function is a no-op on a CPU, where channels-last convolutions are slower and memory is not the limit.
Attacks stay in float32 on every device (a bf16 input gradient weakens them); only training uses autocast.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CPU_BATCH = 256  # attack batch off a GPU: large enough to amortise the per-call cost, small enough for caches
MAX_BATCH = 4096  # beyond this a larger batch gains nothing and delays the first finished cell
MEMORY_SHARE = 0.5  # of the free memory, for one batch's activations; the rest for attack state and fragmentation


def fast_layout(model: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA: weights in channels-last and cuDNN autotuning on (fixed input shapes, the fastest kernels)."""
    if device.type != "cuda":
        return model
    torch.backends.cudnn.benchmark = True
    return model.to(memory_format=torch.channels_last)


class ChannelsLastInput(nn.Module):
    """Feeds a model in fast_layout channels-last images, whatever layout its callers (attacks) keep."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(channels_last(x))


def channels_last(x: Tensor) -> Tensor:
    """A batch of images in channels-last memory (anything but a 4-d batch unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def fast_input(x: Tensor, device: torch.device) -> Tensor:
    """Images in the layout fast_layout's weights expect (channels-last on CUDA, unchanged elsewhere)."""
    return channels_last(x) if device.type == "cuda" else x


def for_attacks(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as attacks call it: on the device, in float32 (never bf16), in eval mode and its fast layout; on
    CUDA wrapped to take channels-last input."""
    model = fast_layout(model.to(device, torch.float32).eval(), device)
    return ChannelsLastInput(model) if device.type == "cuda" else model


def fit_batch(free_bytes: int, per_sample_bytes: float, n: int, share: float = MEMORY_SHARE) -> int:
    """The largest batch whose activations fill `share` of the free memory, within 1..min(n, MAX_BATCH)."""
    fits = int(share * free_bytes // max(per_sample_bytes, 1.0))
    return max(1, min(n, MAX_BATCH, fits))


def attack_batch_size(model: nn.Module, x: Tensor, device: torch.device) -> int:
    """CPU_BATCH off a GPU; on CUDA the batch that half the free memory holds, from the peak memory of one
    input-gradient pass (what every gradient attack repeats) on a probe of up to 16 images."""
    if device.type != "cuda":
        return CPU_BATCH
    net, probe = for_attacks(model, device), x[:16].to(device, torch.float32).requires_grad_()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    torch.autograd.grad(net(probe).float().logsumexp(1).sum(), probe)
    per_sample = (torch.cuda.max_memory_allocated(device) - base) / len(probe)
    free, _ = torch.cuda.mem_get_info(device)
    return fit_batch(free, per_sample, len(x))
