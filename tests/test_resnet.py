"""Flax ResNet / WideResNet-50-2 against a PyTorch module with torchvision's structure; port both ways."""

import numpy as np
import pytest
import torch

from benchmarks.reference_torch_resnet import TorchResNet
from jzad.backbone.resnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResNetConfig,
    abstract_resnet_params,
    encode_resnet,
    get_resnet_config,
    init_resnet,
)
from jzad.backbone.resnet_port import infer_resnet_config, resnet_from_torch, resnet_to_torch

TAPS = ("layer2", "layer3")


def torch_model(config: ResNetConfig, params) -> TorchResNet:
    model = TorchResNet(
        config.layers, config.width_per_group, config.groups, config.base_width, config.num_classes or 1000
    ).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in resnet_to_torch(params, config).items()}
    result = model.load_state_dict(state, strict=config.num_classes is not None)
    if config.num_classes is None:
        assert result.missing_keys == ["fc.weight", "fc.bias"] and not result.unexpected_keys
    return model


def relative_diffs(model, params, config, images, taps=TAPS):
    with torch.no_grad():
        ref = model.features(torch.from_numpy(images).permute(0, 3, 1, 2), taps)
    out = encode_resnet(params, images, config, taps)
    diffs = []
    for r, o in zip(ref, out):
        r = r.numpy() if r.ndim == 2 else r.permute(0, 2, 3, 1).numpy()
        assert o.shape == r.shape
        diffs.append(float(np.abs(np.asarray(o) - r).max() / np.abs(r).max()))
    return diffs


@pytest.fixture(scope="module")
def wide():
    config = get_resnet_config("wide-resnet50-2")
    params = init_resnet(config, seed=3)
    return config, params, torch_model(config, params)


@pytest.mark.parametrize("size", [(64, 64), (77, 93)])
def test_wide_resnet50_2_matches_torch(wide, size):
    config, params, model = wide
    images = np.random.default_rng(size[0]).normal(size=(1, *size, 3)).astype(np.float32)
    diffs = relative_diffs(model, params, config, images)
    assert max(diffs) <= 1e-4, diffs


def test_wide_resnet50_2_shapes_and_parameter_count(wide):
    config, params, model = wide
    torch_count = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fc."))
    flax_count = sum(
        np.prod(leaf.shape)
        for path, leaf in _leaves(abstract_resnet_params(config))
        if path[-1] in ("kernel", "scale", "bias")
    )
    assert flax_count == torch_count == 66_834_240
    out = encode_resnet(params, np.zeros((1, 224, 224, 3), np.float32), config)
    assert [o.shape for o in out] == [(1, 28, 28, 512), (1, 14, 14, 1024)]


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


@pytest.mark.parametrize(
    "config,size",
    [
        (get_resnet_config("tiny"), (37, 53)),
        (ResNetConfig(layers=(2, 1, 2, 1), width_per_group=8, groups=2, base_width=8), (45, 45)),
        (ResNetConfig(layers=(1, 1, 1, 2), width_per_group=16, base_width=4, num_classes=7), (33, 70)),
    ],
)
def test_small_resnets_match_torch_all_taps(config, size):
    params = init_resnet(config, seed=size[1])
    model = torch_model(config, params)
    taps = ("layer4", "layer1", "layer3") + (("logits",) if config.num_classes else ())
    images = np.random.default_rng(size[0]).normal(size=(3, *size, 3)).astype(np.float32)
    assert max(relative_diffs(model, params, config, images, taps)) <= 1e-5


def test_bfloat16_stays_close_to_float32():
    config = get_resnet_config("tiny")
    params = init_resnet(config, seed=8)
    images = np.random.default_rng(8).normal(size=(2, 48, 48, 3)).astype(np.float32)
    full = encode_resnet(params, images, config, TAPS)
    half = encode_resnet(params, images, config, TAPS, dtype="bfloat16")
    for f, h in zip(full, half):
        assert float(np.abs(np.asarray(f) - np.asarray(h)).max() / np.abs(np.asarray(f)).max()) < 0.05


def test_port_round_trip_and_inference_from_torchvision_names(wide):
    config, params, model = wide
    state = model.state_dict()
    assert infer_resnet_config(state) == config
    ported, inferred = resnet_from_torch(state)
    assert inferred == config
    back = resnet_to_torch(ported, config)
    assert set(back) == {k for k in state if not k.startswith("fc.")}
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key].numpy())


def test_port_accepts_wrapped_timm_style_names_and_classifier():
    config = ResNetConfig(layers=(1, 2, 1, 1), width_per_group=16, base_width=8, num_classes=5)
    params = init_resnet(config, seed=4)
    state = resnet_to_torch(params, config)
    for prefix in ("module.", "model."):
        wrapped = {prefix + k: v for k, v in state.items()}
        ported, inferred = resnet_from_torch(wrapped, config)
        assert inferred == config
        np.testing.assert_array_equal(ported["fc"]["kernel"], np.asarray(params["fc"]["kernel"]))
    # Without a classifier in the config, fc.* is skipped and the architecture is inferred.
    _, inferred = resnet_from_torch(state)
    assert inferred == config.replace(num_classes=None)


def test_port_errors_name_the_key_and_shapes():
    config = get_resnet_config("tiny")
    state = resnet_to_torch(init_resnet(config, seed=1), config)
    missing = {k: v for k, v in state.items() if k != "layer2.1.bn2.running_var"}
    with pytest.raises(ValueError, match=r"missing key 'layer2\.1\.bn2\.running_var' \(expected shape \(4,\)\)"):
        resnet_from_torch(missing, config)
    wrong = dict(state, **{"layer3.0.conv2.weight": np.zeros((8, 8, 1, 3), np.float32)})
    with pytest.raises(ValueError, match=r"'layer3\.0\.conv2\.weight' has shape \(8, 8, 1, 3\).*\(8, 8, 3, 3\)"):
        resnet_from_torch(wrong, config)
    extra = dict(state, **{"layer2.0.se.fc.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="unexpected keys.*layer2.0.se.fc.weight"):
        resnet_from_torch(extra, config)
    basic = {k: v for k, v in state.items() if "conv3" not in k and "bn3" not in k}
    with pytest.raises(ValueError, match="BasicBlock"):
        resnet_from_torch(basic)
    no_stem = {k: v for k, v in state.items() if k != "conv1.weight"}
    with pytest.raises(ValueError, match="no 'conv1.weight'"):
        resnet_from_torch(no_stem)
    with pytest.raises(ValueError, match=r"missing key 'conv1.weight' \(expected shape \(8, 3, 7, 7\)\)"):
        resnet_from_torch(no_stem, config)


def test_encode_validates_inputs():
    config = get_resnet_config("tiny")
    params = init_resnet(config)
    with pytest.raises(ValueError, match="images must be"):
        encode_resnet(params, np.zeros((2, 32, 32), np.float32), config)
    with pytest.raises(ValueError, match="taps must be names"):
        encode_resnet(params, np.zeros((1, 32, 32, 3), np.float32), config, taps=("layer5",))
    with pytest.raises(ValueError, match="logits"):
        encode_resnet(params, np.zeros((1, 32, 32, 3), np.float32), config, taps=("logits",))
    with pytest.raises(ValueError, match="dtype"):
        encode_resnet(params, np.zeros((1, 32, 32, 3), np.float32), config, dtype="float16")
    with pytest.raises(ValueError, match="unknown ResNet config"):
        get_resnet_config("resnet18")
    with pytest.raises(ValueError, match="layers"):
        ResNetConfig(layers=(3, 4, 6))
    assert len(IMAGENET_MEAN) == len(IMAGENET_STD) == 3


def test_patchcore_preprocessing_geometry_and_normalisation():
    from PIL import Image

    from jzad.backbone.imagenet import center_crop_box, normalize_imagenet, resize_center_crop, resized_shape

    assert resized_shape(300, 411, 256) == (256, 350)  # int(256 * 411 / 300) = int(350.72)
    assert resized_shape(900, 700, 256) == (329, 256)  # int(256 * 900 / 700) = int(329.14)
    assert center_crop_box(256, 350, 224) == (16, 63)
    assert center_crop_box(256, 341, 224) == (16, 58)  # (341 - 224) / 2 = 58.5 rounds half to even
    rng = np.random.default_rng(12)
    image = rng.integers(0, 256, size=(300, 411, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((350, 256), Image.Resampling.BILINEAR))[16:240, 63:287]
    out = resize_center_crop([image, Image.fromarray(image)])
    assert out.dtype == np.uint8 and out.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[1], expected)
    normalised = np.asarray(normalize_imagenet(out[:1]))
    manual = (out[:1].astype(np.float64) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(normalised, manual, atol=1e-5)
    with pytest.raises(ValueError, match="crop"):
        resize_center_crop([image], resize=200, crop=224)
