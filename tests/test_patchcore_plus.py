"""PatchCore+ through the method seam: parity with the PyTorch reference (PatchCore's literal steps + the FastRef
reference) from uint8 images, the online variant, chunked/sharded refinement, options and the command line, and
the known answer the refinement exists for: a global shift the few references lack."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import reference_torch_patchcore as ref
from jzad import data as jdata
from jzad.eval.metrics import image_metrics
from jzad.features import load_backbone
from jzad.kernels import device_mesh
from jzad.methods import Features, OptionError, RunContext, get_method
from jzad.methods.patchcore import coreset_draws
from jzad.methods.patchcore_plus import refine_images
from jzad.methods.refine import refined_patch_scores
from jzad.run import main
from test_patchcore_method import rel, torch_layers

SIZE = 64


def tiny(options: dict, shots: int = 2):
    method = get_method("patchcore_plus")
    backbone = load_backbone(method.tiny_backbone, method.backbone_run(None), image_size=SIZE, seed=6)
    config = method.configure(options, RunContext("mvtec", SIZE, shots=shots))
    return method, backbone, config


def reference(backbone, config, refs, images, **extra):
    rows = len(refs) * (SIZE // 8) ** 2
    projection, starts = coreset_draws(jax.random.key(config.patchcore.seed), rows, config.patchcore.dim)
    train2, train3 = torch_layers(backbone, refs)
    test2, test3 = torch_layers(backbone, images)
    fields = {f.name: getattr(config.refine, f.name) for f in dataclasses.fields(config.refine)}
    return ref.patchcore_plus_reference(train2, train3, test2, test3, config.patchcore.coreset_ratio,
                                        torch.from_numpy(np.array(projection)), np.asarray(starts).tolist(),
                                        size=SIZE, **extra, **fields)


@pytest.mark.parametrize("options", [{}, {"em_update": "closed", "em_iterations": 2, "score": "residual",
                                          "coreset_ratio": 0.2, "lam": 0.5, "plan_scale": "row"}])
def test_seam_matches_the_pytorch_reference_from_uint8_images(options):
    method, backbone, config = tiny(options)
    assert config.refine.lam == options.get("lam", 0.3) and config.patchcore.coreset_ratio == options.get(
        "coreset_ratio", 0.05)
    images, _, _, _ = jdata.make_synthetic_set(2, 2, size=SIZE, seed=3)
    refs, _, _, _ = jdata.make_synthetic_set(2, 0, size=SIZE, seed=8)
    state = method.fit(config, backbone(refs), None)
    scores, _ = method.score(config, state, backbone(images))
    maps = method.maps(config, scores.patch_scores, (SIZE, SIZE))
    bank, image, patch, ref_maps = reference(backbone, config, refs, images)
    assert rel(state.bank, bank.numpy()) <= 1e-5
    assert rel(scores.patch_scores, patch.numpy()) <= 1e-4
    assert rel(scores.image_scores, image.numpy()) <= 1e-4
    assert rel(maps, ref_maps) <= 1e-4


def test_online_memory_matches_the_reference_and_carries_over_batches():
    # Row plan scaling moves the prototypes far enough for the online memory's effect to show (line below).
    method, backbone, config = tiny({"online": 1, "em_iterations": 3, "plan_scale": "row"})
    images, _, _, _ = jdata.make_synthetic_set(2, 2, size=SIZE, seed=4)
    refs, _, _, _ = jdata.make_synthetic_set(2, 0, size=SIZE, seed=9)
    state = method.fit(config, backbone(refs), None)
    assert state.memory.ring.shape == ((SIZE // 8) ** 2, 1024) and not bool(state.memory.filled.any())
    whole, _ = method.score(config, state, backbone(images))
    first, state2 = method.score(config, state, backbone(images[:3]))
    rest, state3 = method.score(config, state2, backbone(images[3:]))
    np.testing.assert_allclose(np.concatenate([first.image_scores, rest.image_scores]), whole.image_scores,
                               rtol=1e-6)
    assert bool(state3.memory.filled.all())
    _, image, patch, _ = reference(backbone, config, refs, images, online_images=1)
    assert rel(whole.patch_scores, patch.numpy()) <= 1e-4 and rel(whole.image_scores, image.numpy()) <= 1e-4
    plain, _ = method.score(dataclasses.replace(config, online_images=0), state, backbone(images))
    # The first image sees the coreset alone, as without the online memory; the others see more prototypes.
    np.testing.assert_allclose(np.asarray(plain.patch_scores[0]), np.asarray(whole.patch_scores[0]), rtol=1e-5)
    assert np.abs(np.asarray(plain.patch_scores[1:]) - np.asarray(whole.patch_scores[1:])).max() > 1e-3


@pytest.mark.parametrize("chunk,shards", [(1, 3), (4, 2), (3, 8)])
def test_chunked_sharded_refinement_equals_the_per_image_refinement(chunk, shards):
    rng = np.random.default_rng(chunk)
    features = jnp.asarray(np.abs(rng.normal(size=(7, 12, 20))).astype(np.float32))
    bank = jnp.asarray(np.abs(rng.normal(size=(5, 20))).astype(np.float32))
    config = dataclasses.replace(get_method("patchcore_plus").configure({}, RunContext("mvtec", 32, 1)), chunk=chunk)
    one = refine_images(features, bank, config)
    many = jax.jit(lambda f: refine_images(f, bank, config, device_mesh(shards)))(features)
    np.testing.assert_array_equal(np.asarray(many), np.asarray(one))
    for b in range(7):
        np.testing.assert_allclose(np.asarray(one[b]), np.asarray(refined_patch_scores(features[b], bank,
                                                                                         config.refine)),
                                   rtol=2e-5, atol=1e-6)


def test_configure_and_command_line(tmp_path, capsys):
    method = get_method("patchcore_plus")
    config = method.configure({"em_update": "closed", "em_iterations": 2, "lam": 0.1, "plan_scale": "printed",
                               "score": "residual", "online": 3, "precision": "bf16"},
                              RunContext("mvtec", 224, shots=1))
    assert (config.refine.em_update, config.refine.iterations, config.refine.lam) == ("closed", 2, 0.1)
    assert (config.refine.plan_scale, config.refine.score, config.online_images) == ("printed", "residual", 3)
    assert config.refine.precision == config.patchcore.precision == "bf16" and config.patchcore.map_size == 224
    with pytest.raises(OptionError, match="lam: expected lambda >= 0"):
        method.configure({"lam": -1.0}, RunContext("mvtec", 224, 1))
    with pytest.raises(OptionError, match="coreset ratio"):
        method.configure({"coreset_ratio": 2.0}, RunContext("mvtec", 224, 1))
    base = ["--method", "patchcore_plus", "--backbone", "random-tiny-resnet", "--image-size", str(SIZE), "--quiet",
            "--no-heatmaps"]
    assert main(base + ["--em-update", "closed", "--em-iterations", "2", "--profile", "stages",
                        "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "method: patchcore_plus | mode: few_shot | shots: 2" in out and "| refine " in out
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["status"] == "complete" and results["method_config"]["refine"]["em_update"] == "closed"
    with pytest.raises(SystemExit) as caught:
        main(base + ["--online=-1", "--out", str(tmp_path / "b")])
    assert caught.value.code == 2 and "--online: expected an integer >= 0, got '-1'" in capsys.readouterr().err
    assert main(["--method", "patchcore", "--lam", "0.3", "--out", str(tmp_path / "c")]) == 2
    assert "--lam does not apply to --method patchcore" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- known answer

GRID_STRIDE, C2, C3 = 8, 32, 64
_rng = np.random.default_rng(1234)
W2 = (_rng.normal(size=(GRID_STRIDE * GRID_STRIDE * 3, C2)) / np.sqrt(GRID_STRIDE * GRID_STRIDE * 3)).astype(np.float32)
W3 = (_rng.normal(size=(4 * C2, C3)) / np.sqrt(4 * C2)).astype(np.float32)


def weight_free_features(images: np.ndarray) -> Features:
    """A fixed random two-stage patch extractor: layer2 = ReLU of a random projection of each 8 x 8 RGB patch,
    layer3 = ReLU of a random projection of each 2 x 2 block of layer2 (strides 8 and 16, like a ResNet's).
    Positively homogeneous, as ReLU networks without biases are: a global gain on the image scales every
    feature by the same factor."""
    x = images.astype(np.float32) / 255.0
    n, h, w, _ = x.shape
    s = GRID_STRIDE
    patches = x.reshape(n, h // s, s, w // s, s, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // s, w // s, -1)
    layer2 = np.maximum(patches @ W2, 0.0)
    blocks = layer2.reshape(n, h // 16, 2, w // 16, 2, C2).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 16, w // 16, -1)
    return Features((jnp.asarray(layer2), jnp.asarray(np.maximum(blocks @ W3, 0.0))))


def shifted_set(seed: int, gain: float, size: int = 128, shots: int = 2):
    """The synthetic product (16 normal + 16 with planted defects) under a global brightness gain 1 + gain * t,
    t ~ U(0, 1) per query image independently of its label; the references are unshifted normal images."""
    images, _, labels, _ = jdata.make_synthetic_set(16, 16, size=size, seed=seed)
    refs, _, _, _ = jdata.make_synthetic_set(shots, 0, size=size, seed=seed + 1000)
    t = np.random.default_rng(seed + 7).uniform(0.0, 1.0, len(images))
    shifted = np.clip(images.astype(np.float32) * (1.0 + gain * t)[:, None, None, None], 0, 255).round()
    return refs, shifted.astype(np.uint8), labels


@functools.lru_cache(maxsize=None)
def image_auroc(name: str, seed: int, gain: float) -> float:
    method = get_method(name)
    config = method.configure({"coreset_ratio": 0.1}, RunContext("synthetic", 128, shots=2))
    refs, queries, labels = shifted_set(seed, gain)
    state = method.fit(config, weight_free_features(refs))
    scores, _ = method.score(config, state, weight_free_features(queries))
    return image_metrics(np.asarray(scores.image_scores), labels)["auroc"]


# Measured image AUROCs, seeds 0-9 (coreset ratio 0.1 of 2 x 256 reference patches = 51 prototypes; default
# PatchCore+: gradient M-step, 10 rounds, lambda 0.3, "row" plan):
#   no shift   PatchCore  1.000 0.996 1.000 1.000 1.000 1.000 1.000 1.000 0.992 0.996  (mean 0.998)
#              PatchCore+ 1.000 in every seed                                          (mean 1.000)
#   gain 0.6   PatchCore  0.645 0.680 0.660 0.492 0.730 0.828 0.641 0.516 0.516 0.520  (mean 0.623)
#              PatchCore+ 0.949 0.992 0.961 0.918 0.973 0.969 0.934 0.938 0.922 0.953  (mean 0.951)
# The shift costs PatchCore 0.38 on average (0.34 over seeds 0-2) and PatchCore+ recovers 87 % of it (91 % over
# seeds 0-2; 82 % in the worst single seed). The thresholds leave that margin: a drop of at least 0.2 and a
# recovery of at least 75 % of it over seeds 0-2; without the shift, PatchCore+ within 0.02 of PatchCore.
SEEDS = (0, 1, 2)


def test_refinement_recovers_the_auroc_a_global_shift_takes_from_patchcore():
    clean = np.mean([image_auroc("patchcore", s, 0.0) for s in SEEDS])
    shifted = np.mean([image_auroc("patchcore", s, 0.6) for s in SEEDS])
    plus = np.mean([image_auroc("patchcore_plus", s, 0.6) for s in SEEDS])
    assert clean >= 0.98 and shifted <= clean - 0.2, (clean, shifted)
    assert plus - shifted >= 0.75 * (clean - shifted), (clean, shifted, plus)


def test_without_a_shift_patchcore_plus_is_not_worse():
    for seed in SEEDS:
        assert image_auroc("patchcore_plus", seed, 0.0) >= image_auroc("patchcore", seed, 0.0) - 0.02
