"""The trainable JPEG layer of JPEG-DL (arXiv 2410.07081): the JpegLayer module over the codec in models.codec.

Pipeline (DESIGN.md §3): x in [0, 1] -> x255 -> JFIF full-range YCbCr (Y only for one channel) -> level shift
-128 -> zero-pad to a multiple of 8 -> orthonormal 8x8 DCT-II -> quantiser -> inverse DCT -> crop -> RGB -> /255.
No chroma subsampling; the output is not clamped (as in the original code). The official code also adds 0.5 to
the level-shifted Cb and Cr (a +4 shift of their DC coefficients before quantisation) and removes it after decoding;
JpegLayer(chroma_offset=True) does the same, for outputs equal to the official layer's.

Example::

    layer = JpegLayer(quality=75)            # soft quantiser, trainable Annex K tables at quality 75
    y = layer(x)                             # x: float NCHW in [0, 1], 1 or 3 channels
    layer.mode = "hard"                      # real JPEG quantiser; "ste" = hard forward, identity backward
    with jpeg_mode(model, "ste"): ...        # switch every JpegLayer inside a model for a BPDA attack
    Image.fromarray(img).save(f, "JPEG", qtables=layer.export_qtables(), subsampling=0)

Quantiser index range: `bits` clamps the indices to |i| <= 2**(bits-1) - 1 in every mode. The paper's bits=8
saturates at +-127 steps, so once the DC step drops below 8 (standard tables above quality ~75) very bright or
dark blocks are clipped, unlike a real codec; bits=12 covers a baseline JPEG's whole coefficient range.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustjpeg.errors import ConfigError, UnknownName
from robustjpeg.models.codec import (
    MODES,
    OFFICIAL_CHROMA_OFFSET,
    affine_channels,
    block_dct,
    block_idct,
    colour_maps,
    hard_quantize,
    soft_quantize,
    standard_tables,
    ste_quantize,
    validate_images,
)

INITS = ("standard", "constant", "abs_avg", "sensitivity")
STEP_MIN, STEP_MAX = 1e-5, 255.0


def _alpha_table(alpha: float | Sequence | Tensor, tables: int) -> Tensor:
    """Scalar alpha -> 0-d tensor; an 8x8 or [T,8,8] table -> [T, 64] to broadcast over blocks."""
    a = torch.as_tensor(alpha, dtype=torch.float32)
    if a.dim() == 0:
        return a
    if a.shape == (8, 8):
        a = a.expand(tables, 8, 8)
    if a.shape != (tables, 8, 8):
        raise ConfigError(f"alpha must be a scalar, an 8x8 table or {tables}x8x8 tables, got shape {tuple(a.shape)}")
    return a.reshape(tables, 64).clone()


class JpegLayer(nn.Module):
    """Trainable JPEG codec: YCbCr -> 8x8 DCT -> Q_d -> IDCT -> RGB. Input and output in [0, 1].

    `tables` (state dict key) holds the step tables [T, 8, 8]: T=2 (luma, chroma shared by Cb/Cr) for RGB,
    T=1 for one channel. Steps are clamped to [1e-5, 255] in every forward. alpha is a scalar or a
    per-coefficient table; with `hardness` h set, alpha = h / q^2 instead. `mode` in {"soft","hard","ste"} may
    be changed at any time. init "abs_avg"/"sensitivity" start from standard tables; fill them with
    init_abs_avg / init_sensitivity. chroma_offset=True emulates the official code's +0.5 on Cb and Cr.
    Inputs must be float NCHW in [0, 1] (overshoot up to 1e-5 tolerated).
    """

    def __init__(
        self,
        channels: int = 3,
        alpha: float | Sequence | Tensor = 5.0,
        hardness: float | None = None,
        window: int = 5,
        bits: int = 8,
        mode: str = "soft",
        init: str = "standard",
        quality: int = 50,
        constant: float | None = None,
        trainable: bool = True,
        chroma_offset: bool = False,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ConfigError(f"JpegLayer supports 1 or 3 channels, got channels={channels}")
        if chroma_offset and channels == 1:
            raise ConfigError("chroma_offset shifts Cb and Cr, which a one-channel layer does not have; drop it")
        if not isinstance(window, int) or window < 1 or not isinstance(bits, int) or bits < 2:
            raise ConfigError(f"window must be an integer >= 1 and bits >= 2, got window={window}, bits={bits}")
        self.channels, self.window, self.bits = channels, window, bits
        self.hardness, self.init, self.quality, self.constant = hardness, init, quality, constant
        self.chroma_offset = bool(chroma_offset)
        n_tables = 1 if channels == 1 else 2
        self.tables = nn.Parameter(_initial_tables(init, quality, constant)[:n_tables], requires_grad=trainable)
        if hardness is not None and not float(hardness) > 0:
            raise ConfigError(f"hardness must be positive (the paper uses 0.7-0.8), got {hardness!r}")
        self._alpha_config = torch.as_tensor(alpha, dtype=torch.float64).tolist()
        self.register_buffer("alpha", _alpha_table(alpha, n_tables))
        self.register_buffer("table_of_channel", torch.tensor([0, 1, 1][:channels]), persistent=False)
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ConfigError(f"unknown JPEG layer mode {value!r}; choose one of {', '.join(MODES)}")
        self._mode = value

    def steps(self) -> Tensor:
        """Quantisation steps clamped to [1e-5, 255]: Tensor[T, 8, 8]."""
        return self.tables.clamp(STEP_MIN, STEP_MAX)

    def encode(self, x: Tensor) -> Tensor:
        """Images in [0, 1] -> level-shifted YCbCr DCT coefficients [N, blocks, C, 64]."""
        matrix, bias, _, _ = colour_maps(self.channels, x.dtype, x.device, self._offset())
        return block_dct(affine_channels(x, matrix, bias))

    def decode(self, coeffs: Tensor, h: int, w: int) -> Tensor:
        """DCT coefficients [N, blocks, C, 64] -> images in [0, 1] scale (unclamped); inverse of encode."""
        _, _, matrix, bias = colour_maps(self.channels, coeffs.dtype, coeffs.device, self._offset())
        return affine_channels(block_idct(coeffs, h, w), matrix, bias)

    def _offset(self) -> float:
        return OFFICIAL_CHROMA_OFFSET if self.chroma_offset else 0.0

    def channel_steps(self, dtype: torch.dtype) -> Tensor:
        """Per-channel steps [C, 64] broadcasting over [N, blocks, C, 64]."""
        return self.steps().to(dtype).reshape(-1, 64)[self.table_of_channel]

    def quantize(self, z: Tensor) -> Tensor:
        """Apply the current mode's quantiser to coefficients [N, blocks, C, 64]."""
        q = self.channel_steps(z.dtype)
        if self.mode == "hard":
            return hard_quantize(z, q, self.bits)
        if self.mode == "ste":
            return ste_quantize(z, q, self.bits)
        if self.hardness is not None:
            alpha = self.hardness / q.square()
        else:
            alpha = self.alpha.to(z.dtype)
            alpha = alpha[self.table_of_channel] if alpha.dim() else alpha
        return soft_quantize(z, q, alpha, self.window, self.bits)

    def forward(self, x: Tensor) -> Tensor:
        """Values are checked except in CUDA training steps, whose inputs come from uint8 data and would stall."""
        validate_images(x, self.channels, values=not (self.training and x.is_cuda))
        return self.decode(self.quantize(self.encode(x)), x.shape[2], x.shape[3])

    def export_qtables(self) -> list[list[int]]:
        """Integer step tables (rounded, 1..255) in Pillow's `qtables=` order: [luma, chroma], 64 row-major each."""
        tables = self.steps().detach().round().clamp(1, 255).to(torch.int64).cpu()
        return [t.flatten().tolist() for t in tables]

    def config(self) -> dict:
        """JSON-safe constructor kwargs to rebuild the layer (learned tables live in the state dict)."""
        return {
            "channels": self.channels, "alpha": self._alpha_config, "hardness": self.hardness,
            "window": self.window, "bits": self.bits, "mode": self.mode, "init": self.init,
            "quality": self.quality, "constant": self.constant, "trainable": self.tables.requires_grad,
            "chroma_offset": self.chroma_offset,
        }

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}, init={self.init!r}, quality={self.quality}"


def _initial_tables(init: str, quality: int, constant: float | None) -> Tensor:
    """Starting tables [2, 8, 8]; data-driven inits start from the standard tables until filled."""
    if init not in INITS:
        raise UnknownName(f"unknown JPEG table init {init!r}; known: {', '.join(INITS)}")
    if init == "constant":
        if constant is None or not STEP_MIN <= float(constant) <= STEP_MAX:
            raise ConfigError(f"init='constant' needs constant in [{STEP_MIN}, {STEP_MAX}], got {constant!r}")
        return torch.full((2, 8, 8), float(constant))
    return standard_tables(quality)


def _per_table_mean(values: Tensor, layer: JpegLayer) -> Tensor:
    """Average [N, blocks, C, 64] over images, blocks and the channels sharing a table -> [T, 8, 8]."""
    per_channel = values.mean(dim=(0, 1))
    tables = torch.zeros(layer.tables.shape[0], 64, dtype=values.dtype, device=values.device)
    tables.index_add_(0, layer.table_of_channel, per_channel)
    counts = torch.bincount(layer.table_of_channel, minlength=tables.shape[0]).to(values.dtype)
    return (tables / counts.unsqueeze(1)).reshape(-1, 8, 8)


def _set_tables(layer: JpegLayer, tables: Tensor) -> None:
    with torch.no_grad():
        layer.tables.copy_(tables.clamp(STEP_MIN, STEP_MAX))


def init_abs_avg(layer: JpegLayer, x: Tensor) -> None:
    """Set steps to 2 E|z| / sqrt(2**(bits-1)) per frequency from a batch (sqrt(128) at 8 bits), in place."""
    validate_images(x, layer.channels)
    with torch.no_grad():
        z = layer.encode(x.to(layer.tables.device))
        _set_tables(layer, 2 * _per_table_mean(z.abs(), layer) / math.sqrt(2 ** (layer.bits - 1)))
    layer.init = "abs_avg"


def init_sensitivity(
    layer: JpegLayer, model: nn.Module, x: Tensor, y: Tensor, q_max: float = 10.0, batch_size: int = 256
) -> None:
    """Set steps proportional to 1 / mean squared loss-gradient w.r.t. each DCT coefficient, largest luma = q_max.

    The model (a trained baseline taking [0, 1] images) is run in eval mode on the unquantised reconstruction.
    """
    validate_images(x, layer.channels)
    was_training = model.training
    model.eval()
    total = None
    try:
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            total = _add(total, _squared_coefficient_grads(layer, model, xb, yb))
    finally:
        model.train(was_training)
    sensitivity = total / len(x)
    sensitivity = sensitivity.clamp_min(sensitivity.max() * 1e-12 + 1e-30)
    steps = 1 / sensitivity
    _set_tables(layer, steps * (q_max / steps[0].max()))
    layer.init = "sensitivity"


def _add(total: Tensor | None, value: Tensor) -> Tensor:
    return value if total is None else total + value


def _squared_coefficient_grads(layer: JpegLayer, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Sum over images of per-table mean squared gradient of the loss w.r.t. the DCT coefficients: [T, 8, 8]."""
    with torch.enable_grad():
        z = layer.encode(x).detach().requires_grad_(True)
        loss = F.cross_entropy(model(layer.decode(z, x.shape[2], x.shape[3])), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, z)
    return _per_table_mean(grad.square(), layer) * len(x)


def jpeg_layers(model: nn.Module) -> list[JpegLayer]:
    """All JpegLayer submodules of a model (the model itself included)."""
    return [m for m in model.modules() if isinstance(m, JpegLayer)]


@contextmanager
def jpeg_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily switch every JpegLayer in `model` to `mode` (e.g. "ste" for BPDA); restores on exit."""
    if mode not in MODES:
        raise ConfigError(f"unknown JPEG layer mode {mode!r}; choose one of {', '.join(MODES)}")
    layers = jpeg_layers(model)
    saved = [layer.mode for layer in layers]
    for layer in layers:
        layer.mode = mode
    try:
        yield model
    finally:
        for layer, old in zip(layers, saved):
            layer.mode = old
