"""The JPEG-DL layer: real-codec agreement (Pillow), gradients, modes, initialisations and input checks."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.func import functional_call

from robustjpeg.errors import BadInput, ConfigError, UnknownName
from robustjpeg.models.codec import (
    block_dct,
    block_idct,
    matched_quality,
    rgb_to_ycbcr,
    soft_quantize,
    standard_tables,
    ycbcr_to_rgb,
)
from robustjpeg.models.jpeg import JpegLayer, init_abs_avg, init_sensitivity, jpeg_layers, jpeg_mode

SIZE = 256
CODEC_BITS = 12  # a baseline JPEG's full index range; the paper's 8 bits saturate bright/dark DC at q >= ~80


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return x[0].detach().permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


def pillow_round_trip(img: np.ndarray, **save_kw) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", subsampling=0, **save_kw)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="module")
def crops(photos) -> list[np.ndarray]:
    return [p[:SIZE, :SIZE] for p in photos]


def reference_soft_quantize(z, q, alpha, window=5, bits=8):
    """Q_d written directly from its definition with torch.softmax over an explicit window axis."""
    limit = 2 ** (bits - 1) - 1
    start = torch.ceil(z / q - window / 2).clamp(-limit, limit - window + 1).detach()
    recon = (start.unsqueeze(-1) + torch.arange(window, dtype=z.dtype)) * q.unsqueeze(-1)
    weights = torch.softmax(-alpha.unsqueeze(-1) * (recon - z.unsqueeze(-1)) ** 2, dim=-1)
    return (weights * recon).sum(-1)


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_hard_mode_with_standard_tables_matches_pillow_jpeg(crops, quality, record_property):
    layer = JpegLayer(quality=quality, mode="hard", bits=CODEC_BITS)
    figures = [psnr(to_uint8(layer(to_tensor(c))), pillow_round_trip(c, quality=quality)) for c in crops]
    record_property(f"psnr_db_q{quality}", [round(f, 2) for f in figures])
    print(f"q={quality}: PSNR layer vs Pillow (dB) = {[round(f, 2) for f in figures]}")
    assert min(figures) >= 42, f"hard-mode layer differs from Pillow at q={quality}: PSNR {figures}"


@pytest.mark.parametrize("quality", [10, 50, 75, 90, 100])
def test_standard_tables_equal_the_tables_pillow_writes(crops, quality):
    buf = io.BytesIO()
    Image.fromarray(crops[0][:16, :16]).save(buf, "JPEG", quality=quality, subsampling=0)
    written = Image.open(io.BytesIO(buf.getvalue())).quantization
    ours = standard_tables(quality).to(torch.int64)
    assert [list(written[i]) for i in range(2)] == [t.flatten().tolist() for t in ours]


def test_exported_tables_in_pillow_decode_close_to_hard_mode(crops):
    layer = JpegLayer(mode="hard", bits=CODEC_BITS)
    with torch.no_grad():  # a non-standard, fractional table, as training would leave it
        layer.tables.copy_(standard_tables(60) * 1.3 + 0.4)
    exported = layer.export_qtables()
    with torch.no_grad():  # deployment rounds the steps; the layer's hard mode then is the codec
        layer.tables.copy_(torch.tensor(exported, dtype=torch.float32).view(2, 8, 8))
    for c in crops:
        decoded = pillow_round_trip(c, qtables=exported)
        figure = psnr(decoded, to_uint8(layer(to_tensor(c))))
        assert figure >= 42, f"Pillow with exported tables is {figure:.2f} dB from the layer"


def test_exported_tables_are_integers_1_to_255_in_luma_chroma_order():
    layer = JpegLayer(init="constant", constant=0.4)
    with torch.no_grad():
        layer.tables[1].fill_(254.7)
    luma, chroma = layer.export_qtables()
    assert luma == [1] * 64 and chroma == [255] * 64


def test_paper_8bit_indices_clip_dark_blocks_at_high_quality():
    dark = np.full((16, 16, 3), 10, dtype=np.uint8)
    hard8 = to_uint8(JpegLayer(quality=90, mode="hard", bits=8)(to_tensor(dark)))
    hard12 = to_uint8(JpegLayer(quality=90, mode="hard", bits=CODEC_BITS)(to_tensor(dark)))
    assert np.abs(hard12.astype(int) - 10).max() <= 1
    assert hard8.mean() > 40, "8-bit indices should saturate the DC of a near-black block at q=90"


def test_soft_quantize_matches_its_softmax_definition_with_gradients():
    z = (torch.randn(2, 3, 5, 64, dtype=torch.float64) * 40).requires_grad_()
    q = (torch.rand(3, 1, 64, dtype=torch.float64) * 6 + 0.3).requires_grad_()
    alpha = (torch.rand(3, 1, 64, dtype=torch.float64) + 0.05).requires_grad_()
    ours, ref = soft_quantize(z, q, alpha), reference_soft_quantize(z, q, alpha)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (z, q, alpha), g), torch.autograd.grad(ref, (z, q, alpha), g)):
        torch.testing.assert_close(a, b)


def test_soft_mode_gradcheck_input_and_steps_float64():
    layer = JpegLayer(init="constant", constant=3.0).double()
    x = (torch.rand(1, 3, 8, 8, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()

    def run(x, tables):
        return functional_call(layer, {"tables": tables}, (x,))

    tables = (layer.tables.detach() + torch.rand(2, 8, 8, dtype=torch.float64)).requires_grad_()
    # fast mode (random projections of the Jacobian) keeps this quick on a busy CPU; the full Jacobian of the
    # quantiser itself is checked below
    assert torch.autograd.gradcheck(run, (x, tables), eps=1e-6, atol=1e-5, fast_mode=True)


def test_soft_quantize_full_gradcheck_float64():
    z = (torch.randn(2, 64, dtype=torch.float64) * 20).requires_grad_()
    q = (torch.rand(64, dtype=torch.float64) * 4 + 0.5).requires_grad_()
    alpha = (torch.rand(64, dtype=torch.float64) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(soft_quantize, (z, q, alpha), eps=1e-6, atol=1e-5)


def test_hardness_mode_gradcheck_steps_float64():
    layer = JpegLayer(channels=1, hardness=0.75).double()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)

    def run(tables):
        return functional_call(layer, {"tables": tables}, (x,))

    tables = (standard_tables(80)[:1].double() + torch.rand(1, 8, 8, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(run, (tables,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kw", [{"hardness": 0.75}, {"init": "constant", "constant": 1.0}])
def test_every_one_of_128_steps_receives_a_gradient(crops, kw):
    layer = JpegLayer(**kw)
    x = to_tensor(crops[1][:64, :64])
    (layer(x) * torch.randn_like(x)).sum().backward()
    grad = layer.tables.grad
    assert grad.shape == (2, 8, 8) and bool((grad != 0).all()), f"{int((grad == 0).sum())} steps got no gradient"


def test_soft_output_converges_to_hard_as_alpha_grows(crops):
    x = to_tensor(crops[2][:64, :64])
    hard = JpegLayer(quality=75, mode="hard")(x)
    errors = [(JpegLayer(quality=75, hardness=h)(x) - hard).abs().mean().item() for h in (1, 10, 100, 1000)]
    assert all(a > b for a, b in zip(errors, errors[1:])), f"soft-hard error not decreasing: {errors}"
    assert errors[-1] < 1e-4, f"soft output still {errors[-1]:.2e} from hard at alpha q^2 = 1000"


def test_ste_forward_equals_hard_and_input_gradient_is_identity(crops):
    x = to_tensor(crops[0][:40, :48]).requires_grad_()
    layer = JpegLayer(quality=50, mode="ste")
    out = layer(x)
    torch.testing.assert_close(out, JpegLayer(quality=50, mode="hard")(x), rtol=0, atol=0)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(grad, g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["soft", "hard", "ste"])
def test_tiny_steps_return_the_input(crops, mode):
    layer = JpegLayer(init="constant", constant=1e-4, bits=32, mode=mode)
    x = to_tensor(crops[1][:32, :32])
    assert (layer(x) - x).abs().max().item() <= 1e-5


def test_mode_switches_on_a_trained_layer_and_jpeg_mode_restores(crops):
    model = nn.Sequential(JpegLayer(quality=50, hardness=0.75), nn.Identity())
    x = to_tensor(crops[0][:16, :16])
    soft = model(x)
    with jpeg_mode(model, "hard"):
        assert [m.mode for m in jpeg_layers(model)] == ["hard"]
        hard = model(x)
    assert jpeg_layers(model)[0].mode == "soft"
    torch.testing.assert_close(model(x), soft)
    assert not torch.equal(soft, hard)


def test_gray_input_uses_one_luma_table(photos):
    gray = torch.from_numpy(photos[0][:32, :32].mean(axis=2)).float()[None, None] / 255
    layer = JpegLayer(channels=1, quality=75)
    out = layer(gray)
    assert out.shape == gray.shape and layer.tables.shape == (1, 8, 8)
    assert len(layer.export_qtables()) == 1
    assert (out - gray).abs().mean() < 0.02


def test_odd_sizes_keep_their_shape(crops):
    x = to_tensor(crops[0][:30, :45])
    assert JpegLayer(quality=75)(x).shape == (1, 3, 30, 45)


def test_block_dct_is_orthonormal_and_inverts():
    x = torch.rand(2, 3, 13, 21, dtype=torch.float64)
    z = block_dct(x)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 3))
    torch.testing.assert_close(z.square().sum(), padded.square().sum())
    torch.testing.assert_close(block_idct(z, 13, 21), x)


def test_fused_encode_decode_equal_colour_conversion_then_block_dct(crops):
    x = to_tensor(crops[0][:24, :40]).double()
    layer = JpegLayer().double()
    reference = block_dct(rgb_to_ycbcr(x * 255) - 128)
    torch.testing.assert_close(layer.encode(x), reference)
    torch.testing.assert_close(layer.decode(reference, 24, 40), ycbcr_to_rgb(block_idct(reference, 24, 40) + 128) / 255)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x)


W_R, W_G, W_B = 0.299, 0.587, 0.114  # BT.601 luma weights, from which the official code derives its colour maps


def official_layer_reference(x: torch.Tensor, tables: torch.Tensor, alpha: float) -> torch.Tensor:
    """The official JPEG_layer's forward written from its formulas: level shift in RGB, YCbCr with +0.5 on Cb and Cr,
    zero-padded 8x8 blocks through the cosine-defined DCT, Q_d over round(z/q) - 2 .. + 2 (indices within +-127),
    inverse DCT, -0.5 on Cb and Cr, RGB, +128, /255."""
    r, g, b = (x * 255 - 128).unbind(1)
    luma = W_R * r + W_G * g + W_B * b
    ycc = torch.stack([luma, (b - luma) / (2 * (1 - W_B)) + 0.5, (r - luma) / (2 * (1 - W_R)) + 0.5], 1)
    n, c, h, w = ycc.shape
    blocks = F.pad(ycc, (0, -w % 8, 0, -h % 8)).unfold(2, 8, 8).unfold(3, 8, 8)  # [n, c, rows, cols, 8, 8]
    k = torch.arange(8, dtype=x.dtype)
    scale = torch.full((8, 1), (2 / 8) ** 0.5, dtype=x.dtype)
    scale[0] = (1 / 8) ** 0.5
    basis = scale * torch.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16)  # [frequency, position]
    z = basis @ blocks @ basis.T
    q = tables[[0, 1, 1]].view(1, 3, 1, 1, 8, 8)
    first = (torch.round(z / q) - 2).clamp(-127, 127 - 4).detach()
    recon = (first.unsqueeze(-1) + torch.arange(5, dtype=x.dtype)) * q.unsqueeze(-1)
    weights = torch.softmax(-alpha * (recon - z.unsqueeze(-1)) ** 2, dim=-1)
    pixels = basis.T @ (weights * recon).sum(-1) @ basis
    rows, cols = blocks.shape[2] * 8, blocks.shape[3] * 8
    luma, cb, cr = pixels.permute(0, 1, 2, 4, 3, 5).reshape(n, c, rows, cols)[:, :, :h, :w].unbind(1)
    cb, cr = cb - 0.5, cr - 0.5
    rgb = torch.stack([luma + 2 * (1 - W_R) * cr,
                       luma - 2 * (1 - W_R) * W_R / W_G * cr - 2 * (1 - W_B) * W_B / W_G * cb,
                       luma + 2 * (1 - W_B) * cb], 1)
    return (rgb + 128) / 255


def test_chroma_offset_reproduces_the_official_layer_outputs_and_gradients_in_float64(crops):
    x = to_tensor(crops[1][100:122, 60:97]).double().requires_grad_()  # 22 x 37: padded blocks on both axes
    steps = standard_tables(90).double() + torch.rand(2, 8, 8, dtype=torch.float64)  # steps 2..11: soft and hard
    layers = {flag: JpegLayer(alpha=5.0, chroma_offset=flag).double() for flag in (True, False)}
    for layer in layers.values():
        layer.tables.data.copy_(steps)
    tables = steps.clone().requires_grad_()
    reference = official_layer_reference(x, tables, 5.0)
    ours = layers[True](x)
    # Our colour constants carry 9 digits (equal to the derived ones in float32); in float64 they differ by ~3e-10,
    # which the near-hard steps amplify in the input gradient to about 1e-6 of its largest entry.
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-8)
    upstream = torch.randn_like(reference)
    ref_grads = torch.autograd.grad((reference * upstream).sum(), (x, tables))
    our_grads = torch.autograd.grad((ours * upstream).sum(), (x, layers[True].tables))
    for mine, theirs, name in zip(our_grads, ref_grads, ("input", "tables")):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()),
                                   msg=f"the {name} gradient differs from the official formula's")
    gap = float((layers[False](x) - reference).abs().max())
    assert gap > 1e-4, f"without the offset the layer should differ from the official one, max gap {gap:.2e}"
    assert layers[True].config()["chroma_offset"] and not layers[False].config()["chroma_offset"]


def test_block_dct_matches_scipy_dctn():
    fft = pytest.importorskip("scipy.fft")
    x = torch.rand(1, 1, 8, 16, dtype=torch.float64)
    ours = block_dct(x)[0, 1, 0].view(8, 8).numpy()
    np.testing.assert_allclose(ours, fft.dctn(x[0, 0, :, 8:].numpy(), norm="ortho"), atol=1e-12)


def test_frozen_layer_has_no_trainable_tables_and_config_rebuilds():
    layer = JpegLayer(quality=80, alpha=[[2.0] * 8] * 8, trainable=False, mode="hard")
    assert not layer.tables.requires_grad
    assert "tables" in layer.state_dict()
    again = JpegLayer(**layer.config())
    again.load_state_dict(layer.state_dict())
    assert again.config() == layer.config()
    torch.testing.assert_close(again.steps(), layer.steps())


def test_abs_avg_init_sets_steps_from_coefficient_magnitudes(crops):
    layer = JpegLayer()
    x = torch.cat([to_tensor(c[:64, :64]) for c in crops])
    init_abs_avg(layer, x)
    z = layer.encode(x)
    expected_luma = 2 * z[:, :, 0].abs().mean(dim=(0, 1)).view(8, 8) / 128**0.5
    torch.testing.assert_close(layer.steps()[0], expected_luma.clamp(1e-5, 255))
    assert layer.steps()[0, 0, 0] > layer.steps()[0, 7, 7], "DC should get a larger step than the top frequency"


def test_sensitivity_init_scales_largest_luma_step_to_q_max(crops):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    x = torch.cat([to_tensor(c[:32, :32]) for c in crops])
    layer = JpegLayer()
    init_sensitivity(layer, model, x, torch.tensor([0, 1, 2]), q_max=10.0)
    steps = layer.steps()
    assert steps[0].max().item() == pytest.approx(10.0, rel=1e-5)
    assert layer.init == "sensitivity" and bool((steps > 0).all())
    assert model.training, "init_sensitivity must restore the model's train/eval mode"


@pytest.mark.parametrize(
    "x, fix",
    [
        (torch.rand(1, 4, 8, 8), "convert to RGB or grayscale"),
        (torch.rand(1, 1, 8, 8), "JpegLayer(channels=1)"),
        (torch.randint(0, 255, (1, 3, 8, 8)), "x.float()"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.rand(1, 3, 8, 8) * 255, "divide uint8 images by 255"),
        (torch.rand(3, 8, 8), "unsqueeze"),
    ],
    ids=["four-channels", "gray-into-rgb-layer", "integer", "nan", "0-255-range", "no-batch-axis"],
)
def test_bad_input_raises_a_message_naming_the_fix(x, fix):
    with pytest.raises(BadInput, match=re.escape(fix)):
        JpegLayer()(x)


def test_float_rounding_overshoot_is_tolerated():
    x = torch.rand(1, 3, 8, 8)
    x[0, 0, 0, 0] = 1 + 5e-6
    assert JpegLayer()(x).shape == x.shape


def test_bad_configuration_is_rejected():
    with pytest.raises(ConfigError, match="mode"):
        JpegLayer().mode = "fuzzy"
    with pytest.raises(UnknownName, match="standard"):
        JpegLayer(init="zigzag")
    with pytest.raises(ConfigError, match="quality"):
        JpegLayer(quality=0)
    with pytest.raises(ConfigError, match="alpha"):
        JpegLayer(alpha=torch.ones(4, 4))
    with pytest.raises(ConfigError, match="hardness"):
        JpegLayer(hardness=0.0)
    with pytest.raises(ConfigError, match="chroma_offset"):
        JpegLayer(channels=1, chroma_offset=True)


def test_matched_quality_recovers_every_distinct_standard_table_and_refuses_bad_tables():
    seen = {}
    for q in range(1, 101):
        seen.setdefault(tuple(standard_tables(q).flatten().tolist()), q)  # equal tables: the first quality wins
    for table, q in seen.items():
        assert matched_quality(torch.tensor(table).view(2, 8, 8)) == q
    # IJG scaling: 80% of the quality-50 tables is quality 60 (200 - 2q = 80); 120% lies between 41 and 42 (5000 / q)
    assert matched_quality(standard_tables(50) * 0.8) == 60 and matched_quality(standard_tables(50) * 1.2) in (41, 42)
    for bad in (torch.zeros(2, 8, 8), torch.full((2, 8, 8), float("nan")), torch.ones(3, 8, 8)):
        with pytest.raises(BadInput):
            matched_quality(bad)
