"""Backbones by name, and the model every stage handles: [0, 1] input -> JPEG layer -> normalisation -> backbone."""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustjpeg.errors import ConfigError, UnknownName
from robustjpeg.models.jpeg import JpegLayer
from robustjpeg.utils.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
# baseline: no JPEG layer; jpeg: JPEG-DL, trainable tables; jpeg-fixed: the control, frozen tables (standard ones
# at a chosen quality, or JPEG-DL's sensitivity start) with the same soft quantiser (switch modes with
# jpeg.jpeg_mode for plain hard JPEG).
VARIANTS = ("baseline", "jpeg", "jpeg-fixed")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """An untrained backbone (no normalisation, no JPEG layer): ours by name, ``torchvision:NAME`` or ``timm:NAME``;
    a bare name that is not ours is looked up in torchvision, then timm. Training and loading both resolve names here.
    """
    library, _, model_name = name.rpartition(":")
    if not library and model_name in MODELS:
        return MODELS.create(model_name, num_classes=num_classes, in_channels=in_channels)
    if library in ("", "torchvision"):
        import torchvision

        if model_name in torchvision.models.list_models(module=torchvision.models):
            if in_channels != 3:
                raise ConfigError(f"torchvision:{model_name} takes RGB input; use it with a 3-channel dataset")
            return torchvision.models.get_model(model_name, weights=None, num_classes=num_classes)
    if library in ("", "timm") and importlib.util.find_spec("timm") is not None:
        import timm

        if timm.is_model(model_name):
            return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    raise UnknownName(f"unknown architecture {name!r}; ours: {', '.join(MODELS.names())}; "
                      "or torchvision:NAME / timm:NAME")


# --- CIFAR ResNet-20/32/44/56 (He et al. 2016, option-A shortcuts) ---------------------------------

class _ShortcutA(nn.Module):
    """Parameter-free shortcut: take every second pixel and zero-pad the channels by planes // 4 on each side."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes) if shortcut == "A" else nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs; key names (conv1, bn1, layerK.i.*, linear) match the common CIFAR checkpoints."""

    def __init__(self, blocks: list[int], widths: list[int], num_classes: int, in_channels: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for k, (n, planes) in enumerate(zip(blocks, widths), start=1):
            strides = [1 if k == 1 else 2] + [1] * (n - 1)
            layers = []
            for s in strides:
                layers.append(_BasicBlock(in_planes, planes, s, shortcut))
                in_planes = planes
            setattr(self, f"layer{k}", nn.Sequential(*layers))
        self.depth = len(blocks)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for k in range(1, self.depth + 1):
            out = getattr(self, f"layer{k}")(out)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _register_cifar_resnet(depth: int) -> None:
    n = (depth - 2) // 6

    @MODELS.register(f"resnet{depth}")
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet([n, n, n], [16, 32, 64], num_classes, in_channels, shortcut="A")


for _depth in (20, 32, 44, 56):
    _register_cifar_resnet(_depth)


@MODELS.register("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stem, no max-pool, four stages of 2 blocks, 1x1-conv shortcuts."""
    return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels, shortcut="B")


# --- VGG-13 and MobileNetV2 for CIFAR ------------------------------------------------------------

@MODELS.register("vgg13")
def vgg13(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-13 with batch norm for 32x32 inputs (five pools to 1x1, one linear classifier)."""
    layers: list[nn.Module] = []
    for width in (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's MobileNetV2 with a stride-1 stem, the usual change for 32x32 inputs."""
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(num_classes=num_classes)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    return net


# --- a small CNN for mnist5k on a CPU ------------------------------------------------------------

@MODELS.register("smallcnn")
def smallcnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Two strided conv blocks and a linear head: >= 95% on mnist5k within seconds of CPU time."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(32 * 49, num_classes))


@MODELS.register("cnn_a")
def cnn_a(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """CNN-A of the SDP-FO verification paper (Dathathri et al. 2020): two strided 4x4 convolutions and two linear
    layers; the architecture of the adversarially trained third-party models the attack tests run against."""
    side = input_size // 4
    return nn.Sequential(nn.Conv2d(in_channels, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * side * side, 100), nn.ReLU(), nn.Linear(100, num_classes))


# --- the model wrapper ---------------------------------------------------------------------------

class Normalize(nn.Module):
    """(x - mean) / std per channel, inside the model so attacks and budgets stay in [0, 1] units."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class JpegModel(nn.Module):
    """backbone(normalize(jpeg(x))) for x in [0, 1]; the JPEG layer always runs in float32 (no autocast)."""

    def __init__(self, jpeg: JpegLayer | nn.Module | None, backbone: nn.Module, mean, std) -> None:
        super().__init__()
        self.jpeg = jpeg
        self.normalize = Normalize(mean, std)
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        if self.jpeg is not None:
            with _no_autocast(x):
                x = self.jpeg(x.float())
        return self.backbone(self.normalize(x))

    def jpeg_parameters(self) -> list[nn.Parameter]:
        return [] if self.jpeg is None else [p for p in self.jpeg.parameters() if p.requires_grad]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]


def _no_autocast(x: Tensor):
    if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model from a checkpoint: backbone, data shape, stats and JPEG config.

    input_size is a side (or [H, W]); preprocess is the resize its test images had ({resize, crop_pct,
    interpolation, input_size}, see robustjpeg.data.preprocess), None when they were used as they are.
    """

    arch: str
    num_classes: int
    in_channels: int
    mean: tuple
    std: tuple
    input_size: int | list
    jpeg: dict | None = None
    extra: dict = field(default_factory=dict)
    preprocess: dict | None = None

    @property
    def variant(self) -> str:
        if self.jpeg is None:
            return "baseline"
        return "jpeg" if self.jpeg.get("trainable", True) else "jpeg-fixed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {k: d[k] for k in ("arch", "num_classes", "in_channels", "mean", "std", "input_size") if k in d}
        missing = {"arch", "num_classes", "in_channels", "mean", "std"} - set(known)
        if missing:
            raise ConfigError(f"model spec lacks {', '.join(sorted(missing))}")
        known["mean"], known["std"] = tuple(known["mean"]), tuple(known["std"])
        return cls(**{"input_size": 32, **known}, jpeg=d.get("jpeg"), extra=dict(d.get("extra") or {}),
                   preprocess=d.get("preprocess"))


def build_model(spec: ModelSpec) -> JpegModel:
    """Backbone from the registry, with the spec's JPEG layer (frozen when not trainable) in front."""
    backbone = create_model(spec.arch, num_classes=spec.num_classes, in_channels=spec.in_channels)
    jpeg = None
    if spec.jpeg is not None:
        jpeg = JpegLayer(**spec.jpeg)
    return JpegModel(jpeg, backbone, spec.mean, spec.std)


# Wrapper prefixes: DataParallel/DDP, RobustBench-style wrappers, torch.compile.
PREFIXES = ("module.", "model.", "_orig_mod.")


def strip_prefixes(state: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop wrapper prefixes that every key of `state` carries and the architecture's keys (`expected`) do not."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in expected):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state
