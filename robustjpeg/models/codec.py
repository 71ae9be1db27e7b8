"""The JPEG codec as pure tensor functions: JFIF colour, the batched 8x8 DCT, the soft/hard/STE quantisers, tables.

These carry the math of the JPEG-DL layer (robustjpeg.models.jpeg holds its parameters and mode) and are tested
one by one against references (a float64 formula, Pillow, scipy).
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from robustjpeg.errors import BadInput, ConfigError

MODES = ("soft", "hard", "ste")


LOGIT_FLOOR = -80.0  # softmax logits below the max are floored here: weights < 2e-35 avoid slow denormals


RANGE_TOLERANCE = 1e-5  # inputs may overshoot [0, 1] by this much (float rounding of upstream clamps)


OFFICIAL_CHROMA_OFFSET = 0.5  # the official code adds this to level-shifted Cb, Cr (0..255 units): chroma DC +4


# ITU-T T.81 Annex K.1 base tables, natural (row-major) order.
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)


# JFIF (full-range BT.601) colour conversion; chroma offsets of 128 cancel against the level shift.
RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)


YCBCR_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136286, -0.714136286),
    (1.0, 1.772, 0.0),
)


def affine_channels(x: Tensor, matrix: Tensor, bias: Tensor) -> Tensor:
    """matrix @ pixel + bias ([C, 1]) on the channel axis of NCHW, as one batched matrix product."""
    n, c, h, w = x.shape
    return torch.baddbmm(bias, matrix.expand(n, c, c), x.reshape(n, c, h * w)).view(n, c, h, w)


def _chroma_offset(like: Tensor) -> Tensor:
    return torch.tensor([[0.0], [128.0], [128.0]], dtype=like.dtype, device=like.device)


def rgb_to_ycbcr(x255: Tensor) -> Tensor:
    """RGB in 0..255 -> JFIF YCbCr in 0..255 (chroma centred on 128), as a real JPEG encoder does."""
    matrix = torch.tensor(RGB_TO_YCBCR, dtype=x255.dtype, device=x255.device)
    return affine_channels(x255, matrix, _chroma_offset(x255))


def ycbcr_to_rgb(y: Tensor) -> Tensor:
    """JFIF YCbCr in 0..255 -> RGB in 0..255 (unclamped); inverse of rgb_to_ycbcr."""
    matrix = torch.tensor(YCBCR_TO_RGB, dtype=y.dtype, device=y.device)
    return affine_channels(y, matrix, -matrix @ _chroma_offset(y))


def dct_matrix(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Orthonormal 8-point DCT-II matrix D (rows = frequencies): coefficients = D @ signal."""
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    return d.to(dtype=dtype, device=device)


@cache
def _dct64(dtype: torch.dtype, device: torch.device) -> Tensor:
    """2-D 8x8 DCT as one 64x64 matrix acting on row-major flattened blocks: kron(D, D); cached, read-only."""
    d = dct_matrix(torch.float64, device)
    return torch.kron(d, d).to(dtype)


def _blocks(x: Tensor) -> Tensor:
    """NCHW -> zero-padded 8x8 blocks [N, blocks, C, 64] (row-major pixels within a block)."""
    n, c, h, w = x.shape
    if h % 8 or w % 8:
        x = F.pad(x, (0, -w % 8, 0, -h % 8))
    hb, wb = x.shape[2] // 8, x.shape[3] // 8
    return x.reshape(n, c, hb, 8, wb, 8).permute(0, 2, 4, 1, 3, 5).reshape(n, hb * wb, c, 64)


def _unblocks(rows: Tensor, h: int, w: int) -> Tensor:
    """Inverse of _blocks: blocks [N, blocks, C, 64] -> NCHW image cropped back to h x w."""
    n, c = rows.shape[0], rows.shape[2]
    hb, wb = -(-h // 8), -(-w // 8)
    img = rows.reshape(n, hb, wb, c, 8, 8).permute(0, 3, 1, 4, 2, 5).reshape(n, c, hb * 8, wb * 8)
    return img[:, :, :h, :w]


def block_dct(x: Tensor) -> Tensor:
    """NCHW -> DCT coefficients [N, blocks, C, 64] of zero-padded 8x8 blocks (row-major frequencies)."""
    return _blocks(x) @ _dct64(x.dtype, x.device).T


def block_idct(coeffs: Tensor, h: int, w: int) -> Tensor:
    """Inverse of block_dct: coefficients [N, blocks, C, 64] -> NCHW image cropped back to h x w."""
    return _unblocks(coeffs @ _dct64(coeffs.dtype, coeffs.device), h, w)


@cache
def colour_maps(channels: int, dtype: torch.dtype, device: torch.device,
                 chroma_offset: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Affine (matrix, bias) pairs: [0, 1] pixels -> level-shifted YCbCr in 0..255 units, and back.

    x255, the JFIF matrix and the -128 level shift fold into one batched matrix product per direction (the chroma
    offsets of +128 cancel against the shift). `chroma_offset` is added to Cb and Cr before the DCT and removed
    after the inverse (the official code's 0.5). Cached per dtype and device; treat as read-only.
    """
    rgb = channels == 3
    to_ycc = torch.tensor(RGB_TO_YCBCR if rgb else ((1.0,),), dtype=torch.float64) * 255
    to_rgb = torch.tensor(YCBCR_TO_RGB if rgb else ((1.0,),), dtype=torch.float64) / 255
    enc_bias = torch.zeros(channels, 1, dtype=torch.float64)
    enc_bias[1:] = chroma_offset
    dec_bias = 128 / 255 - to_rgb @ enc_bias
    enc_bias[0] = -128
    return tuple(m.to(dtype=dtype, device=device) for m in (to_ycc, enc_bias, to_rgb, dec_bias))


def _index_limit(bits: int) -> float:
    return float(2 ** (bits - 1) - 1)


def _window(z: Tensor, q: Tensor, window: int, bits: int) -> Tensor:
    """First of the `window` integers nearest z/q, shifted to stay inside |i| <= 2**(bits-1)-1 (no gradient)."""
    limit = _index_limit(bits)
    return (z / q).sub_(window / 2).ceil_().clamp_(-limit, limit - window + 1)


def _distances(z: Tensor, q: Tensor, start: Tensor, window: int) -> Tensor:
    """d_k = (start + k) q - z for the window slots, stacked on a leading axis: [window, *z.shape]."""
    slots = torch.arange(window, dtype=z.dtype, device=z.device).view(-1, *([1] * z.dim()))
    return (start * q - z).unsqueeze(0) + slots * q


class _SoftQuantize(torch.autograd.Function):
    """Q_d over a leading window axis with in-place steps: few kernels, memory of a few window-sized tensors.

    With distances d_k = (start + k) q - z and weights w_k = softmax_k(-alpha d_k^2), Q = sum_k w_k (start + k) q,
    dQ/dz = 2 alpha S, dQ/dq = Q/q - 2 alpha sum_k t_k (start + k), dQ/dalpha = -sum_k t_k d_k,
    where t_k = w_k (d_k - (Q - z)) d_k and S = sum_k t_k = Var_w(reconstruction).
    """

    @staticmethod
    def forward(ctx, z: Tensor, q: Tensor, alpha: Tensor, window: int, bits: int) -> Tensor:
        start = _window(z, q, window, bits)
        weights = _distances(z, q, start, window).square_().mul_(-alpha)
        weights.sub_(weights.amax(dim=0)).clamp_(min=LOGIT_FLOOR).exp_()
        weights.div_(weights.sum(dim=0))
        slots = torch.arange(window, dtype=z.dtype, device=z.device)
        out = (slots @ weights.reshape(window, -1)).reshape(z.shape).add_(start).mul_(q)
        ctx.save_for_backward(z, q, alpha, start, out, weights)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, q, alpha, start, out, weights = ctx.saved_tensors
        needs = ctx.needs_input_grad
        window = weights.shape[0]
        dist = _distances(z, q, start, window)
        t = (dist - (out - z)).mul_(weights).mul_(dist)
        s0 = t.sum(dim=0)
        grad_z = grad * 2 * alpha * s0 if needs[0] else None
        grad_q = grad_alpha = None
        if needs[1]:
            slots = torch.arange(window, dtype=z.dtype, device=z.device)
            s1 = (slots @ t.reshape(window, -1)).reshape(z.shape).addcmul_(start, s0)
            grad_q = (out / q - 2 * alpha * s1).mul_(grad).sum_to_size(q.shape)
        if needs[2]:
            grad_alpha = t.mul_(dist).sum(dim=0).mul_(grad).neg_().sum_to_size(alpha.shape)
        return grad_z, grad_q, grad_alpha, None, None


def soft_quantize(z: Tensor, q: Tensor, alpha: Tensor | float, window: int = 5, bits: int = 8) -> Tensor:
    """Differentiable soft quantiser Q_d: expected reconstruction i*q under softmax(-alpha (i q - z)^2).

    The `window` integers nearest z/q (kept inside |i| <= 2**(bits-1)-1) are the candidates; they carry no
    gradient. q and alpha broadcast against z; gradients flow to z, q and alpha.
    """
    alpha = torch.as_tensor(alpha, dtype=z.dtype, device=z.device)
    return _SoftQuantize.apply(z, q, alpha, window, bits)


def hard_quantize(z: Tensor, q: Tensor, bits: int = 8) -> Tensor:
    """Real JPEG quantiser q * round(z / q), indices clamped to |i| <= 2**(bits-1)-1; no gradient to z."""
    limit = _index_limit(bits)
    return torch.round(z / q).clamp(-limit, limit) * q


def ste_quantize(z: Tensor, q: Tensor, bits: int = 8) -> Tensor:
    """Hard quantiser forward, identity backward w.r.t. z (straight-through / BPDA); no gradient to q."""
    return z + (hard_quantize(z, q, bits) - z).detach()


def standard_tables(quality: int) -> Tensor:
    """Annex K luma/chroma tables scaled to a quality factor 1..100 with IJG's formula -> float Tensor[2, 8, 8]."""
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor([LUMA_TABLE, CHROMA_TABLE], dtype=torch.int64)
    return ((base * scale + 50) // 100).clamp(1, 255).to(torch.float32)


def matched_quality(steps: Tensor) -> int:
    """The IJG quality (1..100) whose standard tables are closest to `steps` [T, 8, 8] in mean |log ratio|.

    Used to build a fixed-JPEG control that compresses about as hard as a set of learned tables; the log
    distance weighs a step that doubled the same whether it was 2 or 100.
    """
    steps = torch.as_tensor(steps, dtype=torch.float64).detach().cpu()
    if steps.ndim != 3 or steps.shape[1:] != (8, 8) or steps.shape[0] not in (1, 2):
        raise BadInput(f"expected step tables of shape [1 or 2, 8, 8], got {tuple(steps.shape)}")
    if not bool(torch.isfinite(steps).all()) or bool((steps <= 0).any()):
        raise BadInput("step tables must be finite and positive to match a JPEG quality")
    log_steps = steps.log()
    distances = [float((standard_tables(q)[: len(steps)].double().log() - log_steps).abs().mean())
                 for q in range(1, 101)]
    return 1 + min(range(100), key=distances.__getitem__)


def validate_images(x: Tensor, channels: int, values: bool = True) -> None:
    """Raise BadInput unless x is a float NCHW tensor with `channels` channels, finite, in [0, 1] (+-tolerance).

    values=False checks shape and dtype only: reading the values back forces a GPU synchronisation.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise BadInput(f"JPEG layer expects a 4-D NCHW tensor, got {shape}; add a batch axis with x.unsqueeze(0)")
    if x.shape[1] != channels:
        fix = f"build JpegLayer(channels={x.shape[1]})" if x.shape[1] in (1, 3) else "convert to RGB or grayscale"
        raise BadInput(f"JPEG layer built for {channels} channel(s) got {x.shape[1]}; {fix}")
    if not x.is_floating_point():
        raise BadInput(f"JPEG layer expects float images in [0, 1], got {x.dtype}; use x.float() / 255")
    if x.numel() == 0:
        raise BadInput(f"JPEG layer got an empty batch of shape {tuple(x.shape)}")
    if not values:
        return
    lo, hi = torch.aminmax(x.detach())
    if not (lo >= -RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):
        if torch.isnan(x).any():
            raise BadInput("JPEG layer got NaN values; check the preceding computation")
        raise BadInput(
            f"JPEG layer expects values in [0, 1], got [{lo.item():.4g}, {hi.item():.4g}]; "
            "divide uint8 images by 255 and keep normalisation inside the model"
        )
