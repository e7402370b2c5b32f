"""MuSc stages against a NumPy implementation written from the paper (per-image distance loop)."""

import jax
import numpy as np
import pytest

from jzad.kernels import device_mesh
from jzad.methods.musc import (
    MuScConfig,
    lnamd,
    mutual_scores,
    rscin,
    score_musc,
)
from jzad.features.types import tokens_to_grid
from benchmarks.musc_timing import float64_rscin
from jzad.kernels.resize import resize_bilinear


def upsample(x, size):
    return resize_bilinear(x, size, align_corners=True)


def np_lnamd(grid, r):
    grid = grid.astype(np.float64)
    n, h, w, c = grid.shape
    mean = grid.reshape(n, -1).mean(1)[:, None, None, None]
    var = grid.reshape(n, -1).var(1)[:, None, None, None]
    x = (grid - mean) / np.sqrt(var + 1e-5)
    pad = r // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    pooled = np.zeros_like(x)
    for dy in range(r):
        for dx in range(r):
            pooled += padded[:, dy:dy + h, dx:dx + w, :]
    pooled /= r * r
    flat = pooled.reshape(n, h * w, c)
    return flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)


def np_mutual_scores(features, lo=0.0, hi=0.3, references=None, plus=False):
    features = features.astype(np.float64)
    n = features.shape[0]
    pool = list(features) if references is None else list(features) + list(references.astype(np.float64))
    if plus:
        pool = list(references.astype(np.float64))
    out = np.zeros(features.shape[:2])
    for i in range(n):
        per_image = []
        for j, other in enumerate(pool):
            if not plus and j == i:
                continue
            d = np.sqrt(((features[i][:, None, :] - other[None, :, :]) ** 2).sum(-1))
            per_image.append(d.min(1))
        per_image = np.sort(np.stack(per_image, 1), axis=1)
        count = per_image.shape[1]
        if plus:
            start, stop = 0, 1
        else:
            start = int(np.floor(lo * count))
            stop = max(int(np.floor(hi * count)), start + 1)
        out[i] = per_image[:, start:stop].mean(1)
    return out


def np_upsample_align_corners(x, size):
    n, h, w = x.shape
    ys = np.linspace(0, h - 1, size)
    xs = np.linspace(0, w - 1, size)
    out = np.zeros((n, size, size))
    for a, y in enumerate(ys):
        y0 = min(int(np.floor(y)), h - 2)
        fy = y - y0
        for b, xx in enumerate(xs):
            x0 = min(int(np.floor(xx)), w - 2)
            fx = xx - x0
            out[:, a, b] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x0 + 1]
                            + fy * (1 - fx) * x[:, y0 + 1, x0] + fy * fx * x[:, y0 + 1, x0 + 1])
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("r", [1, 3, 5])
def test_lnamd_matches_numpy(seed, r):
    rng = np.random.default_rng(seed)
    grid = (rng.normal(size=(3, 7, 7, 11)) * 3 + 1).astype(np.float32)
    np.testing.assert_allclose(lnamd(grid, r), np_lnamd(grid, r), atol=1e-5)


def test_lnamd_rejects_even_r_and_bad_rank():
    with pytest.raises(ValueError, match="odd"):
        lnamd(np.zeros((1, 3, 3, 2), np.float32), 2)
    with pytest.raises(ValueError, match="N, h, w, C"):
        lnamd(np.zeros((3, 3, 2), np.float32), 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 5, 11])
@pytest.mark.parametrize("schedule", ["rows", "pairs"])
def test_mutual_scores_match_per_image_loop(seed, n, schedule):
    rng = np.random.default_rng(seed)
    features = np_lnamd(rng.normal(size=(n, 5, 5, 9)), 1).astype(np.float32)
    config = MuScConfig(image_block=2, query_tile=7, group_tile=3, schedule=schedule, pair_tile=3)
    got = mutual_scores(features, config)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(got, np_mutual_scores(features), atol=1e-5)
    wide = MuScConfig(interval=(0.2, 0.9), schedule=schedule)
    np.testing.assert_allclose(mutual_scores(features, wide), np_mutual_scores(features, 0.2, 0.9), atol=1e-5)


def test_mutual_scores_identical_images_score_zero():
    rng = np.random.default_rng(3)
    one = np_lnamd(rng.normal(size=(1, 4, 4, 6)), 1).astype(np.float32)
    features = np.concatenate([one, one, np_lnamd(rng.normal(size=(1, 4, 4, 6)), 1).astype(np.float32)])
    got = np.asarray(mutual_scores(features))
    assert np.all(got[:2] == 0.0)  # exactly: squared distances within their rounding error are set to 0
    assert got[2].min() > 0.1


def test_few_shot_and_plus_modes_match_numpy():
    rng = np.random.default_rng(4)
    features = np_lnamd(rng.normal(size=(4, 4, 4, 8)), 1).astype(np.float32)
    references = np_lnamd(rng.normal(size=(3, 4, 4, 8)), 1).astype(np.float32)
    few = mutual_scores(features, MuScConfig(mode="few_shot"), None, references)
    np.testing.assert_allclose(few, np_mutual_scores(features, references=references), atol=1e-5)
    plus = mutual_scores(features, MuScConfig(mode="plus"), None, references)
    np.testing.assert_allclose(plus, np_mutual_scores(features, references=references, plus=True), atol=1e-5)
    with pytest.raises(ValueError, match="references"):
        mutual_scores(features, MuScConfig(mode="plus"))


def test_auto_schedule_falls_back_to_rows_when_the_pair_buffer_is_too_big():
    from jzad.methods.musc import resolve_schedule

    assert resolve_schedule(MuScConfig(), 200, 1369) == "pairs"
    assert resolve_schedule(MuScConfig(), 2000, 1369) == "rows"
    assert resolve_schedule(MuScConfig(mode="few_shot"), 10, 9) == "rows"
    with pytest.raises(ValueError, match="zero_shot"):
        resolve_schedule(MuScConfig(mode="plus", schedule="pairs"), 10, 9)


def test_mutual_scores_need_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        mutual_scores(np.ones((1, 4, 3), np.float32))


@pytest.mark.parametrize("shards", [3, 8])
@pytest.mark.parametrize("schedule", ["rows", "pairs"])
def test_mutual_scores_sharded_equal_unsharded(shards, schedule):
    rng = np.random.default_rng(5)
    features = np_lnamd(rng.normal(size=(13, 3, 3, 7)), 1).astype(np.float32)
    config = MuScConfig(image_block=2, schedule=schedule)
    single = np.asarray(mutual_scores(features, config, device_mesh(1)))
    sharded = np.asarray(mutual_scores(features, config, device_mesh(shards)))
    np.testing.assert_array_equal(sharded, single)


@pytest.mark.parametrize("windows", [(1,), (1, 2, 3), (1, 8, 9)])
def test_rscin_matches_numpy(windows):
    rng = np.random.default_rng(6)
    scores = rng.random(10).astype(np.float32)
    embeds = rng.normal(size=(10, 12)).astype(np.float32)
    np.testing.assert_allclose(rscin(scores, embeds, windows), float64_rscin(scores, embeds, windows), atol=1e-6)


@pytest.mark.parametrize("block", [1, 3, 4, 64])
def test_rscin_in_row_blocks_matches_numpy(block):
    rng = np.random.default_rng(8)
    scores = rng.random(11).astype(np.float32)
    embeds = rng.normal(size=(11, 6)).astype(np.float32)
    got = rscin(scores, embeds, (1, 8, 9), block=block)
    np.testing.assert_allclose(got, float64_rscin(scores, embeds, (1, 8, 9)), atol=1e-6)


def test_rscin_window_one_is_normalised_scores_and_constant_scores_are_finite():
    rng = np.random.default_rng(7)
    scores = rng.random(6).astype(np.float32)
    embeds = rng.normal(size=(6, 4)).astype(np.float32)
    expected = (scores - scores.min()) / (scores.max() - scores.min())
    np.testing.assert_allclose(rscin(scores, embeds, (1,)), expected, atol=1e-6)
    flat = np.asarray(rscin(np.ones(6, np.float32), embeds, (1, 2)))
    np.testing.assert_array_equal(flat, 0.0)


def test_upsample_matches_align_corners_bilinear():
    rng = np.random.default_rng(8)
    x = rng.random((2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(upsample(x, 17), np_upsample_align_corners(x, 17), atol=1e-6)


def test_score_musc_end_to_end_matches_numpy_and_has_no_retrace():
    rng = np.random.default_rng(9)
    layers = tuple(rng.normal(size=(5, 1 + 16, 8)).astype(np.float32) for _ in range(2))
    embeds = rng.normal(size=(5, 6)).astype(np.float32)
    config = MuScConfig(r_list=(1, 3), map_size=9)
    result = score_musc(layers, embeds, config)
    expected = np.mean(
        [np_mutual_scores(np_lnamd(np.asarray(tokens_to_grid(t)), r)) for t in layers for r in (1, 3)], 0
    ).reshape(5, 4, 4)
    np.testing.assert_allclose(result.patch_scores, expected, atol=1e-5)
    raw = np_upsample_align_corners(expected, 9).max(axis=(1, 2))
    np.testing.assert_allclose(result.image_scores_raw, raw, atol=1e-5)
    np.testing.assert_allclose(result.image_scores, float64_rscin(raw, embeds, (1, 2, 3)), atol=1e-5)
    from jzad.methods.base import _fused

    before = _fused._cache_size()
    score_musc(tuple(t + 1 for t in layers), embeds, config)
    assert _fused._cache_size() == before


def test_jit_embeds_the_scorer():
    rng = np.random.default_rng(10)
    layers = (rng.normal(size=(3, 10, 4)).astype(np.float32),)
    config = MuScConfig(r_list=(1,))
    out = jax.jit(lambda t: score_musc(t, None, config).image_scores)(layers)
    patches = np_mutual_scores(np_lnamd(np.asarray(tokens_to_grid(layers[0])), 1)).reshape(3, 3, 3)
    # no embeddings: no RsCIN, so the image score is the map's max, which is the patch grid's max (an
    # align-corners bilinear upsample only interpolates between grid values)
    np.testing.assert_allclose(out, patches.max(axis=(1, 2)), atol=1e-5)


def patch_colour_tokens(images: np.ndarray, patch: int) -> np.ndarray:
    """Weight-free tokens: per-patch RGB mean and std, (N, 1 + g*g, 6) with a zero CLS token first."""
    n, size, _, _ = images.shape
    g = size // patch
    blocks = images.astype(np.float32).reshape(n, g, patch, g, patch, 3) / 255.0
    feats = np.concatenate([blocks.mean(axis=(2, 4)), blocks.std(axis=(2, 4))], axis=-1).reshape(n, g * g, 6)
    return np.concatenate([np.zeros((n, 1, 6), np.float32), feats], axis=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_known_answer_on_synthetic_defects(seed):
    """Planted defects change the colour statistics of their patches; MuSc on those features must find them.

    Thresholds: the data tests measured image AUROC 1.0 and patch AUROC >= 0.999 for such features; 0.95
    (image) and 0.9 (pixel, where upsampled patch maps blur defect borders) leave a margin.
    """
    from jzad.data import make_synthetic_set
    from jzad.eval.metrics import image_metrics, pixel_metrics

    images, masks, labels, _ = make_synthetic_set(12, 10, size=96, seed=seed)
    tokens = patch_colour_tokens(images, 8)
    result = score_musc((tokens,), None, MuScConfig(r_list=(1, 3), map_size=96))
    assert image_metrics(np.asarray(result.image_scores), labels)["auroc"] >= 0.95
    maps = np.asarray(upsample(result.patch_scores, 96))
    assert pixel_metrics(maps, masks)["auroc"] >= 0.9
