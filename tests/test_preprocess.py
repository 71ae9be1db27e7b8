"""Preprocessing: timm's eval geometry, where resizing happens, the flags and spec keys that set it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from robustjpeg.data import datasets as data
from robustjpeg.data.preprocess import Preprocess, eval_transform, parse_input_size, timm_defaults
from robustjpeg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("size, crop_pct, interpolation", [(224, 0.875, "bicubic"), (160, 0.95, "bilinear"),
                                                           (96, 1.0, "lanczos")])
def test_eval_geometry_is_timms_eval_transform(photos, size, crop_pct, interpolation):
    from timm.data.transforms_factory import transforms_imagenet_eval

    photo = Image.fromarray(photos[1])  # coffee, 400x600
    theirs = transforms_imagenet_eval(img_size=size, crop_pct=crop_pct, interpolation=interpolation, normalize=False)
    ours = eval_transform(Preprocess((size, size), crop_pct=crop_pct, interpolation=interpolation).complete())
    assert torch.equal((ours(photo) * 255).round().to(torch.uint8), theirs(photo))


def test_complete_fills_crop_pct_1_bilinear_and_the_resize_timm_derives():
    assert Preprocess(input_size=32).complete() == Preprocess((32, 32), 32, 1.0, "bilinear")
    assert Preprocess(input_size=224, crop_pct=0.875).complete().resize == 256
    assert Preprocess(input_size=(224, 320), crop_pct=0.875).complete().resize == 365  # the longer side decides
    assert Preprocess(input_size=224, resize=0).complete().resize == 0


@pytest.mark.parametrize("fields, flag", [({"crop_pct": 0.0}, "--crop-pct"), ({"crop_pct": 1.5}, "--crop-pct"),
                                          ({"resize": -1}, "--resize"), ({"interpolation": "cubic"}, "--interpolation"),
                                          ({"input_size": "big"}, "input size")])
def test_bad_preprocessing_values_name_their_flag(fields, flag):
    with pytest.raises(ConfigError, match=flag):
        Preprocess(**fields)


def test_input_size_reads_every_common_spelling():
    assert {parse_input_size(v) for v in (32, "32", "32x32", "32,32", "32 32", [32, 32])} == {(32, 32)}
    assert parse_input_size("224,320") == (224, 320)


def test_timm_architecture_brings_its_pretrained_cfg_as_preprocessing_defaults(tmp_path):
    timm = pytest.importorskip("timm")
    from robustjpeg.models.loading import load_model

    net = timm.create_model("resnet18", pretrained=False, num_classes=10)
    cfg = net.pretrained_cfg
    assert timm_defaults(net) == Preprocess(cfg["input_size"][1:], None, cfg["crop_pct"], cfg["interpolation"])
    torch.save(net.state_dict(), tmp_path / "net.pt")
    _, info = load_model(tmp_path / "net.pt", arch="timm:resnet18", crop_pct=1.0)
    assert info.preprocess_defaults == {"input_size": [224, 224], "crop_pct": 0.95, "interpolation": "bicubic"}
    assert info.preprocess == {"crop_pct": 1.0} and info.input_size is None


def test_spec_toml_carries_the_resize_and_flags_win(tmp_path, resnet20_checkpoint):
    from robustjpeg.models.loading import load_model

    spec = tmp_path / "model.toml"
    spec.write_text(f'checkpoint = "{resnet20_checkpoint}"\narch = "resnet20"\ninput_size = 32\nresize = 36\n'
                    'crop_pct = 0.875\ninterpolation = "bicubic"\n')
    _, info = load_model(spec)
    assert info.preprocess == {"input_size": [32, 32], "resize": 36, "crop_pct": 0.875, "interpolation": "bicubic"}
    _, info = load_model(spec, interpolation="bilinear", resize=0)
    assert info.preprocess["interpolation"] == "bilinear" and info.preprocess["resize"] == 0


def test_one_size_data_stay_as_they_are_unless_a_resize_is_asked_for():
    ds = data.load_dataset("mnist5k")
    declared = data.eval_subset(ds, 20, seed=0, request=Preprocess(input_size=32))
    assert declared.x.shape == (20, 1, 28, 28) and declared.facts["resized_in_data"] is None  # the model resizes
    asked = data.eval_subset(ds, 20, seed=0, request=Preprocess(input_size=32, interpolation="bicubic"))
    assert asked.x.shape == (20, 1, 32, 32) and asked.facts["resized_in_data"]["resize"] == 32
    assert torch.equal(asked.y, declared.y)
    timm_like = data.eval_subset(ds, 20, seed=0, defaults=Preprocess(input_size=224, crop_pct=0.9))
    assert timm_like.x.shape == (20, 1, 28, 28), "a model's own defaults must not resize data of one size"


@pytest.mark.parametrize("argv", [["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"],
                                  ["--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"],
                                  ["--mean", "0.485, 0.456, 0.406", "--std", "0.229 0.224 0.225"]])
def test_mean_and_std_take_commas_or_spaces(argv):
    from robustjpeg.cli import build_parser

    args = build_parser().parse_args(["eval", "model.pt", *argv, "--dataset", "mnist5k"])
    assert args.mean == (0.485, 0.456, 0.406) and args.std == (0.229, 0.224, 0.225)


def test_mean_followed_by_the_checkpoint_says_where_the_checkpoint_goes(capsys):
    from robustjpeg.cli import build_parser

    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["eval", "--mean", "0.5", "0.5", "0.5", "model.pt", "--dataset", "mnist5k"])
    assert caught.value.code == 2 and "put CHECKPOINT before the flags" in capsys.readouterr().err
