"""The features layer: a CLIP Backbone's features equal the model's taps, prompts embed as the full-context text
tower does, run presets resolve in order, bad image sizes are refused."""

import numpy as np
import pytest

from jzad.backbone import CLIP_MEAN, CLIP_STD, encode_image, encode_text, init_clip
from jzad.backbone.config import get_architecture
from jzad.features import check_image_size, load_backbone
from jzad.methods import BackboneRun, FeatureRequest


def test_backbone_features_are_the_normalised_forward_without_the_class_token():
    backbone = load_backbone("random-tiny", image_size=40, taps=(2, 4), seed=3)
    images = np.random.default_rng(1).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    got = backbone(images, FeatureRequest(embedding=True))
    pixels = ((images.astype(np.float32) / 255.0 - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)).astype(np.float32)
    config = get_architecture("tiny").replace(text=None)
    config = config.replace(vision=type(config.vision)(**{**config.vision.__dict__, "image_size": 40}))
    taps, embeds = encode_image(init_clip(config, 3), pixels, config, (2, 4))
    for grid, tokens in zip(got.layers, taps):
        np.testing.assert_allclose(np.asarray(grid), np.asarray(tokens)[:, 1:].reshape(3, 5, 5, -1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.embeds), np.asarray(embeds), atol=1e-5)
    assert backbone(images, FeatureRequest(embedding=False)).embeds is None


def test_prompts_cut_after_the_end_token_equal_the_full_context():
    backbone = load_backbone("random-tiny-text", with_text=True, seed=2)
    prompts = ["a photo of a flawless bottle.", "a cropped photo of the damaged metal_plate with a scratch", "x"]
    full = encode_text(init_clip(get_architecture("tiny-text"), 2), prompts, get_architecture("tiny-text"))
    np.testing.assert_allclose(np.asarray(backbone.encode_prompts(prompts)), np.asarray(full), atol=2e-6)


def test_run_settings_resolve_explicit_then_preset_then_native():
    preset = BackboneRun(image_size=48, activation="gelu", taps=(1, 3))
    assert load_backbone("random-tiny", preset).image_size == 48
    assert load_backbone("random-tiny", preset).taps == (1, 3)
    assert load_backbone("random-tiny", preset, image_size=24, taps=(4,)).taps == (4,)
    native = load_backbone("random-tiny")
    assert (native.image_size, native.taps, native.info["activation"]) == (32, (1, 2, 3, 4), "quick_gelu")


def test_image_sizes_must_be_positive_multiples_of_the_patch():
    assert check_image_size(48, 8) == 48
    with pytest.raises(ValueError, match="use 48 or 56"):
        check_image_size(50, 8)
    with pytest.raises(ValueError, match="positive multiple"):
        check_image_size(0, 8)
