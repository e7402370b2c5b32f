"""PatchCore's pure functions against a PyTorch reference of the original code's literal steps."""

import jax
import numpy as np
import pytest
import torch

from benchmarks import reference_torch_patchcore as ref
from jzad.kernels import device_mesh
from jzad.methods.patchcore import (
    PATCHCORE_PRESETS,
    PatchCoreConfig,
    coreset_draws,
    coreset_select,
    coreset_size,
    fit_patchcore,
    image_scores,
    memory_bank,
    nearest_scores,
    patchcore_embed,
    patchcore_maps,
    score_patchcore,
)


def taps(rng, n, h, w, c2, c3, h3=None, w3=None):
    """Non-negative (post-ReLU-like) random taps (n, h, w, c2), (n, h3, w3, c3); layer3 on the half grid."""
    h3 = (h + 1) // 2 if h3 is None else h3
    w3 = (w + 1) // 2 if w3 is None else w3
    layer2 = np.abs(rng.normal(size=(n, h, w, c2))).astype(np.float32)
    layer3 = np.abs(rng.normal(size=(n, h3, w3, c3))).astype(np.float32)
    return layer2, layer3


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def rel(a, b):
    b = np.asarray(b)
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    "grid,channels,dim",
    [
        ((13, 10, 7, 5), (512, 1024), 1024),  # WideResNet-50-2: both closed forms
        ((9, 11, 5, 6), (48, 24), 48),  # layer2 box mean (dim = C), layer3 two bins per channel
        ((8, 7, 3, 4), (20, 33), 50),  # neither: explicit unfold + adaptive pool
    ],
)
def test_embed_matches_literal_torch_steps(grid, channels, dim):
    h, w, h3, w3 = grid
    rng = np.random.default_rng(h * 100 + dim)
    layer2, layer3 = taps(rng, 2, h, w, *channels, h3, w3)
    expected = ref.embed_reference(nchw(layer2), nchw(layer3), dim).numpy()
    out = np.asarray(patchcore_embed(layer2, layer3, dim))
    assert out.shape == (2, h * w, dim)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_embed_closed_form_known_answer():
    """Design note: dims < C2 are (zero-padded 3x3 box sum + centre) / 10 of layer2 channel j."""
    rng = np.random.default_rng(21)
    layer2, layer3 = taps(rng, 1, 6, 5, 8, 16)
    padded = np.pad(layer2[0], ((1, 1), (1, 1), (0, 0)))
    box = sum(padded[i : i + 6, j : j + 5] for i in range(3) for j in range(3))
    expected = ((box + layer2[0]) / 10).reshape(30, 8)
    out = np.asarray(patchcore_embed(layer2, layer3, 16))[0, :, :8]
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.fixture(scope="module")
def reference_features():
    rng = np.random.default_rng(33)
    return np.array(patchcore_embed(*taps(rng, 3, 12, 11, 64, 128), 128)).reshape(-1, 128)


@pytest.mark.parametrize("projection_dim", [32, None])
def test_coreset_matches_torch_sampler(reference_features, projection_dim):
    rows = reference_features.shape[0]
    projection, starts = coreset_draws(jax.random.key(5), rows, 128, projection_dim, 10)
    k = coreset_size(rows, 0.1)
    picks = np.asarray(coreset_select(reference_features, k, projection, starts))
    torch_projection = None if projection is None else torch.from_numpy(np.array(projection))
    expected = ref.coreset_reference(torch.from_numpy(reference_features), k, torch_projection, np.asarray(starts))
    np.testing.assert_array_equal(picks, expected)
    assert len(set(picks.tolist())) == k == 39


@pytest.mark.parametrize("shards", [3, 8])
def test_coreset_sharded_equals_unsharded(reference_features, shards):
    bank = memory_bank(reference_features, 0.05, seed=9)
    sharded = memory_bank(reference_features, 0.05, seed=9, mesh=device_mesh(shards))
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(bank))


def test_memory_bank_draws_and_ratios(reference_features):
    rows = reference_features.shape[0]
    projection, starts = coreset_draws(jax.random.key(2), rows, 128, 16, 10)
    bound = 1 / np.sqrt(128)
    assert projection.shape == (128, 16) and float(np.abs(np.asarray(projection)).max()) <= bound
    assert len(set(np.asarray(starts).tolist())) == 10
    assert coreset_draws(jax.random.key(2), rows, 128, 128, 10)[0] is None  # already 128-d: not projected
    assert coreset_draws(jax.random.key(2), 4, 128, 16, 10)[1].shape == (4,)
    np.testing.assert_array_equal(np.asarray(memory_bank(reference_features, 1.0)), reference_features)
    bank = np.asarray(memory_bank(reference_features, 0.1, seed=4))
    key_bank = np.asarray(jax.jit(lambda f, s: memory_bank(f, 0.1, seed=s))(reference_features, np.int32(4)))
    np.testing.assert_array_equal(bank, key_bank)
    assert bank.shape == (int(rows * 0.1), 128)
    assert {tuple(r) for r in bank} <= {tuple(r) for r in reference_features}
    with pytest.raises(ValueError, match="keeps none"):
        memory_bank(reference_features[:5], 0.1)
    with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\]"):
        memory_bank(reference_features, 1.5)
    with pytest.raises(ValueError, match="features must be"):
        memory_bank(reference_features[None], 0.1)


def test_nearest_scores_match_exact_distances_and_shard():
    rng = np.random.default_rng(44)
    features = np.abs(rng.normal(size=(5, 37, 96))).astype(np.float32)
    bank = np.abs(rng.normal(size=(53, 96))).astype(np.float32)
    expected = ref.nearest_reference(torch.from_numpy(features), torch.from_numpy(bank)).numpy()
    single = np.asarray(nearest_scores(features, bank))
    assert rel(single, expected) <= 1e-5
    tiled = np.asarray(nearest_scores(features, bank, bank_tile=10))  # 6 tiles, the last one padded
    assert rel(tiled, expected) <= 1e-5
    for shards in (3, 8):
        np.testing.assert_array_equal(np.asarray(nearest_scores(features, bank, device_mesh(shards))), single)
    with pytest.raises(ValueError, match="equal C"):
        nearest_scores(features, bank[:, :10])


@pytest.mark.parametrize("b,bank_rows", [(9, 40), (3, 40), (9, 5)])
def test_image_scores_max_and_reweighting_match_torch(b, bank_rows):
    rng = np.random.default_rng(b * 7 + bank_rows)
    features = rng.normal(size=(4, 30, 24)).astype(np.float32)
    bank = rng.normal(size=(bank_rows, 24)).astype(np.float32)
    patch = nearest_scores(features, bank).reshape(4, 5, 6)
    torch_patch = torch.from_numpy(np.array(patch))
    np.testing.assert_array_equal(np.asarray(image_scores(patch)), np.asarray(patch).reshape(4, -1).max(1))
    expected = ref.image_scores_reference(torch_patch, torch.from_numpy(features), torch.from_numpy(bank), b)
    out = image_scores(patch, features, bank, b)
    np.testing.assert_allclose(np.asarray(out), expected.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="needs the patch features"):
        image_scores(patch, b=b)


@pytest.mark.parametrize("size,grid", [(224, (28, 28)), (97, (13, 9))])
def test_maps_match_interpolate_then_scipy(size, grid):
    rng = np.random.default_rng(size)
    patch = rng.uniform(0, 50, size=(2, *grid)).astype(np.float32)
    expected = ref.maps_reference(torch.from_numpy(patch), size, 4.0)
    assert rel(patchcore_maps(patch, size), expected) <= 1e-6


@pytest.mark.parametrize(
    "preset,b,grid,channels",
    [("full-shot", None, (9, 10), (512, 1024)), ("few-shot", 9, (10, 13), (48, 96))],
)
def test_whole_pipeline_matches_reference(preset, b, grid, channels):
    config = PATCHCORE_PRESETS[preset]
    config = PatchCoreConfig(dim=channels[1], coreset_ratio=config.coreset_ratio, num_neighbors=b)
    rng = np.random.default_rng(len(preset) + grid[1])
    train2, train3 = taps(rng, 3, *grid, *channels)
    test2, test3 = taps(rng, 2, *grid, *channels)
    seed = jax.random.key(17)
    bank = fit_patchcore(train2, train3, config, seed)
    rows = 3 * grid[0] * grid[1]
    projection, starts = coreset_draws(seed, rows, config.dim, 128, 10)
    torch_bank, image, patch, maps = ref.patchcore_reference(
        nchw(train2), nchw(train3), nchw(test2), nchw(test3), config.coreset_ratio,
        None if projection is None else torch.from_numpy(np.array(projection)), np.asarray(starts),
        config.dim, 224, 4.0, b,
    )
    np.testing.assert_allclose(np.asarray(bank), torch_bank.numpy(), rtol=0, atol=1e-5)
    scores = score_patchcore(test2, test3, bank, config)
    assert scores.patch.shape == (2, *grid) and scores.maps.shape == (2, 224, 224)
    assert rel(scores.patch, patch.numpy()) <= 1e-4
    assert rel(scores.image, image.numpy()) <= 1e-4
    assert rel(scores.maps, maps) <= 1e-4


def test_score_under_jit_sharded_equals_unsharded():
    rng = np.random.default_rng(61)
    config = PatchCoreConfig(dim=24, coreset_ratio=0.2, num_neighbors=4, map_size=41, image_chunk=2)
    layer2, layer3 = taps(rng, 5, 7, 9, 12, 24)
    bank = np.abs(rng.normal(size=(19, 24))).astype(np.float32)
    single = score_patchcore(layer2, layer3, bank, config)
    mesh = device_mesh(3)
    jitted = jax.jit(lambda a, b, c: score_patchcore(a, b, c, config, mesh))(layer2, layer3, bank)
    for a, s in zip(single, jitted):
        np.testing.assert_array_equal(np.asarray(s), np.asarray(a))
    features = patchcore_embed(layer2, layer3, 24)
    np.testing.assert_allclose(np.asarray(single.image), np.asarray(image_scores(single.patch, features, bank, 4)),
                               rtol=1e-6)


def test_score_validates_inputs():
    config = PatchCoreConfig(dim=16)
    layer2, layer3 = taps(np.random.default_rng(1), 2, 6, 6, 8, 16)
    with pytest.raises(ValueError, match=r"bank must be \(K, 16\)"):
        score_patchcore(layer2, layer3, np.zeros((4, 8), np.float32), config)
    with pytest.raises(ValueError, match="same images"):
        score_patchcore(layer2, layer3[:1], np.zeros((4, 16), np.float32), config)
    with pytest.raises(ValueError, match="layer2 must be"):
        patchcore_embed(layer2[0], layer3)
    with pytest.raises(ValueError, match="coreset ratio"):
        PatchCoreConfig(coreset_ratio=0.0)
    with pytest.raises(ValueError, match="precision"):
        PatchCoreConfig(precision="tf32")
