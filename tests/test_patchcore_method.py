"""PatchCore through the method seam: uint8 images -> ResNet family backbone -> fit / score / maps against the
literal PyTorch reference of the original code; its run preset, options and the command line."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch

from benchmarks import reference_torch_patchcore as ref
from benchmarks.reference_torch_resnet import TorchResNet, load_time_bn_update
from jzad import data as jdata
from jzad.backbone.resnet import IMAGENET_MEAN, IMAGENET_STD
from jzad.backbone.resnet_port import resnet_to_torch
from jzad.features import load_backbone
from jzad.methods import FeatureRequest, ImagePrep, OptionError, RunContext, get_method
from jzad.methods.patchcore import coreset_draws, coreset_size
from jzad.run import main
from jzad.timing import StageClock

SIZE = 64


def torch_layers(backbone, images, bn_update: bool = False):
    """The same random network in PyTorch (torchvision structure), on torchvision-normalised uint8 images;
    bn_update: after the original PatchCore code's load-time BatchNorm pass (PyTorch's own train-mode BN)."""
    config = backbone.config
    model = TorchResNet(config.layers, config.width_per_group, config.groups, config.base_width).eval()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in resnet_to_torch(backbone.params, config).items()},
                          strict=False)
    if bn_update:
        load_time_bn_update(model, backbone.image_size, "layer3")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.features(x, ("layer2", "layer3"))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("options", [{}, {"num_neighbors": 3, "coreset_ratio": 0.25}])
def test_seam_matches_the_literal_reference_from_uint8_images(options):
    method = get_method("patchcore")
    backbone = load_backbone(method.tiny_backbone, method.backbone_run("tiny-resnet"), image_size=SIZE, seed=4)
    values = {{"num_neighbors": "reweight_b"}.get(k, k): v for k, v in options.items()}
    config = method.configure(values, RunContext("mvtec", SIZE, shots=3))
    assert config.coreset_ratio == options.get("coreset_ratio", 0.05) and config.map_size == SIZE
    images, _, _, _ = jdata.make_synthetic_set(3, 3, size=SIZE, seed=1)
    refs, _, _, _ = jdata.make_synthetic_set(3, 0, size=SIZE, seed=9)
    state = method.fit(config, backbone(refs, method.request(config)), None)
    scores, _ = jax.jit(lambda q: method.score(config, state, q))(backbone(images))
    maps = method.maps(config, scores.patch_scores, (SIZE, SIZE))
    # The reference, with the coreset's random draws replayed.
    rows = 3 * (SIZE // 8) ** 2
    projection, starts = coreset_draws(jax.random.key(config.seed), rows, config.dim)
    train2, train3 = torch_layers(backbone, refs)
    test2, test3 = torch_layers(backbone, images)
    bank, image, patch, ref_maps = ref.patchcore_reference(
        train2, train3, test2, test3, config.coreset_ratio, torch.from_numpy(np.array(projection)),
        np.asarray(starts).tolist(), size=SIZE, b=config.num_neighbors)
    assert state.bank.shape == (coreset_size(rows, config.coreset_ratio), 1024) == tuple(bank.shape)
    assert rel(state.bank, bank.numpy()) <= 1e-5
    assert rel(scores.patch_scores, patch.numpy()) <= 1e-4
    assert rel(scores.image_scores, image.numpy()) <= 1e-4
    assert rel(maps, ref_maps) <= 1e-4


def test_preset_prep_and_configure():
    method = get_method("patchcore")
    assert (method.pools, method.few_shot, method.tiny_backbone) == (False, "required", "random-tiny-resnet")
    assert (method.default_backbone, method.demo_backbone) == ("wide-resnet50-2", "random-wide-resnet50-2")
    run = method.backbone_run("wide-resnet50-2")
    assert (run.image_size, run.taps) == (224, ("layer2", "layer3"))
    assert method.prep(None, 224) == ImagePrep("resize_crop", resize_to=256)
    assert method.request(None) == FeatureRequest()
    few = method.configure({}, RunContext("mvtec", 224, shots=4))
    full = method.configure({"coreset_ratio": None}, RunContext("mvtec", 224, shots=200))
    assert (few.coreset_ratio, full.coreset_ratio, few.num_neighbors) == (0.05, 0.1, None)
    chosen = method.configure({"coreset_ratio": 0.2, "reweight_b": 9, "precision": "bf16"}, RunContext("mvtec", 224, 1))
    assert (chosen.coreset_ratio, chosen.num_neighbors, chosen.precision) == (0.2, 9, "bf16")
    with pytest.raises(OptionError, match="coreset ratio must be a number in \\(0, 1\\], got 1.5"):
        method.configure({"coreset_ratio": 1.5}, RunContext("mvtec", 224, 1))
    with pytest.raises(ValueError, match=r"^references: PatchCore needs normal reference images \(K >= 1\), got none"):
        method.fit(few, None)


def test_staged_stages_are_timed():
    method = get_method("patchcore")
    backbone = load_backbone(method.tiny_backbone, method.backbone_run(None), image_size=SIZE)
    config = method.configure({}, RunContext("mvtec", SIZE, shots=2))
    images, _, _, _ = jdata.make_synthetic_set(2, 2, size=SIZE, seed=2)
    state = method.fit(config, backbone(images[:2]), None)
    clock = StageClock()
    staged, _ = method.staged(config, state, backbone(images), None, clock)
    assert set(clock.run_seconds) == {"embed", "nearest"}
    # The references' own patches are in the bank at ratio 1: their scores are 0 there.
    exact = method.configure({"coreset_ratio": 1.0}, RunContext("mvtec", SIZE, shots=2))
    own, _ = method.score(exact, method.fit(exact, backbone(images[:2]), None), backbone(images[:2]))
    np.testing.assert_allclose(np.asarray(own.patch_scores), 0.0, atol=1e-4)
    assert staged.patch_scores.shape == (4, SIZE // 8, SIZE // 8)


def test_command_line_demo_and_option_errors(tmp_path, capsys):
    base = ["--method", "patchcore", "--backbone", "random-tiny-resnet", "--image-size", str(SIZE), "--quiet",
            "--no-heatmaps"]
    assert main(base + ["--coreset-ratio", "0.5", "--reweight-b", "3", "--profile", "stages",
                        "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "method: patchcore | mode: few_shot | shots: 2" in out and "| embed " in out and "| nearest " in out
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["status"] == "complete" and results["backbone"]["family"] == "resnet"
    assert results["method_config"]["coreset_ratio"] == 0.5 and results["method_config"]["num_neighbors"] == 3
    assert results["backbone"]["taps"] == ["layer2", "layer3"]
    assert main(base + ["--coreset-ratio", "0", "--out", str(tmp_path / "b")]) == 2
    assert "coreset ratio must be a number in (0, 1], got 0.0" in capsys.readouterr().err
    assert main(base + ["--r-list", "1", "--out", str(tmp_path / "c")]) == 2
    assert "--r-list does not apply to --method patchcore" in capsys.readouterr().err
    assert main(["--method", "musc", "--reweight-b", "9", "--out", str(tmp_path / "d")]) == 2
    assert "--reweight-b does not apply to --method musc" in capsys.readouterr().err
    assert main(base + ["--activation", "gelu", "--out", str(tmp_path / "e")]) == 2
    assert "error: --activation gelu: applies to ViT backbones, and" in capsys.readouterr().err


@pytest.mark.parametrize("bn_stats", ["original", "checkpoint"])
def test_extractor_applies_the_original_load_time_batchnorm_update_once(bn_stats):
    """The extractor's features equal PyTorch's network after (original) or without (checkpoint) the original
    code's train-mode pass of a constant image; the update is computed once per backbone and leaves the
    backbone's own params (which other methods use) untouched."""
    method = get_method("patchcore")
    backbone = load_backbone(method.tiny_backbone, method.backbone_run("tiny-resnet"), image_size=SIZE, seed=4)
    before = jax.tree.map(np.array, backbone.params)
    config = method.configure({} if bn_stats == "original" else {"bn_stats": bn_stats}, RunContext("mvtec", SIZE, 2))
    assert config.bn_stats == bn_stats
    images, _, _, _ = jdata.make_synthetic_set(2, 1, size=SIZE, seed=2)
    layers = method.extractor(config, backbone)(images).layers
    expected = torch_layers(backbone, images, bn_update=bn_stats == "original")
    for got, want in zip(layers, expected):
        assert rel(got, want.permute(0, 2, 3, 1).numpy()) <= 1e-5
    unchanged = torch_layers(backbone, images)
    moved = rel(layers[1], unchanged[1].permute(0, 2, 3, 1).numpy())
    assert (moved > 1e-3) if bn_stats == "original" else moved <= 1e-5
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, backbone.params), before)
    if bn_stats == "original":
        from jzad.features.resnet import with_load_time_bn_update

        assert with_load_time_bn_update(backbone) is with_load_time_bn_update(backbone)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, with_load_time_bn_update(backbone).params[
            "layer4"]), before["layer4"])  # the original's forward stops after layer3
    # The flag is not part of the scoring programs' compile key.
    assert config == dataclasses.replace(config, bn_stats="checkpoint")
    assert hash(config) == hash(dataclasses.replace(config, bn_stats="checkpoint"))
