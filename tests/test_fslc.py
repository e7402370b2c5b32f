"""FSLC stages against a NumPy implementation written from the paper, sharding, invariants, known answers."""

import jax
import numpy as np
import pytest

from jzad.kernels import device_mesh
from jzad.methods.fslc import (
    FSLCConfig,
    filter_scores,
    fslc_expand,
    fslc_features,
    fslc_filter,
    fslc_init,
    fslc_score,
    otsu_split,
    otsu_threshold,
    score_fslc,
)
from jzad.features.types import Features, tokens_to_grid
from jzad.methods import get_method
from jzad.pipeline import bucket_size, with_valid
from jzad.timing import StageClock

# ------------------------------------------------------------------------------------- NumPy reference


def np_kcenter(x, k, start):
    x = np.asarray(x, np.float64)
    picks = [start]
    dist = ((x - x[start]) ** 2).sum(1)
    dist[start] = -1.0
    for _ in range(1, k):
        best = int(np.argmax(dist))
        picks.append(best)
        dist = np.minimum(dist, ((x - x[best]) ** 2).sum(1))
        dist[picks] = -1.0
    return np.array(picks)


def np_init(features, embeds, s, m0, start=0):
    n, m, c = features.shape
    images = np_kcenter(embeds, s, start)
    q = features[images].reshape(s * m, c)
    local = np_kcenter(q, m0, start)
    return q[local], images, images[local // m] * m + local % m


def np_dist(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def np_expand(coreset, features, chosen, k):
    n, m, _ = features.shape
    current = np.asarray(coreset, np.float64)
    added = []
    for i in range(n):
        if i in set(chosen.tolist()):
            continue
        d = np_dist(features[i], current).min(1)
        picks = np.argsort(-d, kind="stable")[:k]
        current = np.concatenate([current, features[i][picks]])
        added.extend(i * m + picks)
    return current, np.array(added)


def np_filter_scores(coreset, features, fraction):
    n = features.shape[0]
    per_image = np.stack([np_dist(coreset, features[j]).min(1) for j in range(n)], 1)
    count = max(1, int(np.floor(fraction * n)))
    return np.sort(per_image, 1)[:, :count].sum(1)


def np_otsu(values, bins):
    v = np.asarray(values, np.float64)
    low, high = v.min(), v.max()
    if high == low:
        return high, np.ones(v.shape, bool)
    idx = np.clip(np.floor((v - low) / (high - low) * bins), 0, bins - 1).astype(int)
    width = (high - low) / bins
    centers = low + (np.arange(bins) + 0.5) * width
    hist = np.bincount(idx, minlength=bins).astype(np.float64)
    best, best_t = -1.0, 1
    for t in range(1, bins):
        w0, w1 = hist[:t].sum(), hist[t:].sum()
        if w0 == 0 or w1 == 0:
            var = 0.0
        else:
            mu0 = (hist[:t] * centers[:t]).sum() / w0
            mu1 = (hist[t:] * centers[t:]).sum() / w1
            var = (w0 / v.size) * (w1 / v.size) * (mu0 - mu1) ** 2
        if var > best:
            best, best_t = var, t
    return low + best_t * width, idx < best_t


def np_score(coreset, features, b):
    patch, image, weights = [], [], []
    for x in features:
        d = np_dist(x, coreset)
        s = d.min(1)
        top = int(np.argmax(s))
        near = np.sort(d[top])[:b]
        w = 1.0 - np.exp(near[0]) / np.exp(near).sum()
        patch.append(s)
        weights.append(w)
        image.append(s[top] * w)
    return np.array(patch), np.array(image), np.array(weights)


def auroc(scores, labels):
    """Mann-Whitney AUROC with ties counted half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


# ------------------------------------------------------------------------------------- data

N, H, C, D = 13, 5, 12, 7
M = H * H
CONFIG = FSLCConfig(
    r_list=(1,), num_init_images=3, init_coreset_size=19, expand_per_image=4, filter_fraction=0.3,
    n_wanted=31, b=5, point_tile=8, query_tile=16, group_tile=2,
)
OTSU = FSLCConfig(**{**CONFIG.__dict__, "n_wanted": "otsu", "otsu_bins": 16})


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    features = rng.standard_normal((N, M, C)).astype(np.float32)
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    embeds = rng.standard_normal((N, D)).astype(np.float32)
    return features, embeds


@pytest.fixture(scope="module")
def stages(data):
    features, embeds = data
    host = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731  (host arrays: one jit cache entry per stage)
    init = host(fslc_init(features, embeds, CONFIG))
    expanded = host(fslc_expand(features, init.coreset, init.image_indices, init.patch_indices, CONFIG))
    filtered = host(fslc_filter(features, expanded.coreset, CONFIG))
    scored = host(fslc_score(features, filtered.coreset, filtered.valid, CONFIG))
    return init, expanded, filtered, scored


# ------------------------------------------------------------------------------------- stages vs NumPy


def test_init_matches_numpy(data, stages):
    features, embeds = data
    init = stages[0]
    coreset, images, patches = np_init(features, embeds, CONFIG.num_init_images, CONFIG.init_coreset_size)
    np.testing.assert_array_equal(np.asarray(init.image_indices), images)
    np.testing.assert_array_equal(np.asarray(init.patch_indices), patches)
    np.testing.assert_allclose(np.asarray(init.coreset), coreset, rtol=0, atol=0)


def test_expand_matches_numpy(data, stages):
    features, _ = data
    init, expanded = stages[0], stages[1]
    chosen = np.asarray(init.image_indices)
    ref_coreset, ref_added = np_expand(np.asarray(init.coreset), features, chosen, CONFIG.expand_per_image)
    m0 = CONFIG.init_coreset_size
    np.testing.assert_array_equal(np.asarray(expanded.patch_indices)[m0:], ref_added)
    np.testing.assert_allclose(np.asarray(expanded.coreset), ref_coreset, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(expanded.order), [i for i in range(N) if i not in chosen])


def test_filter_matches_numpy(data, stages):
    features, _ = data
    expanded, filtered = stages[1], stages[2]
    ref = np_filter_scores(np.asarray(expanded.coreset), features, CONFIG.filter_fraction)
    np.testing.assert_allclose(np.asarray(filtered.scores), ref, rtol=2e-6)
    kept = np.argsort(ref, kind="stable")[:CONFIG.n_wanted]
    np.testing.assert_array_equal(np.asarray(filtered.kept), kept)
    np.testing.assert_array_equal(np.asarray(filtered.coreset), np.asarray(expanded.coreset)[kept])
    assert int(filtered.size) == CONFIG.n_wanted and bool(np.all(filtered.valid))


def test_filter_otsu_matches_numpy(data, stages):
    features, _ = data
    expanded = stages[1]
    filtered = fslc_filter(features, expanded.coreset, OTSU)
    scores = np.asarray(filtered.scores)
    _, low = np_otsu(scores, 16)
    size = int(filtered.size)
    assert size == int(low.sum())
    order = np.argsort(scores, kind="stable")
    np.testing.assert_array_equal(np.asarray(filtered.kept), order)
    np.testing.assert_array_equal(np.asarray(filtered.valid), np.arange(len(order)) < size)
    assert set(order[:size].tolist()) == set(np.flatnonzero(low).tolist())


@pytest.mark.parametrize("case", ["bimodal", "skewed", "constant", "two"])
def test_otsu_matches_numpy(case):
    rng = np.random.default_rng(3)
    values = {
        "bimodal": np.concatenate([rng.normal(1.0, 0.2, 301), rng.normal(4.0, 0.5, 57)]),
        "skewed": rng.exponential(1.0, 358),
        "constant": np.full(358, 2.5),
        "two": np.concatenate([np.full(357, 1.0), [3.0]]),
    }[case].astype(np.float32)
    threshold, low = otsu_split(values, 64)
    ref_threshold, ref_low = np_otsu(values, 64)
    np.testing.assert_array_equal(np.asarray(low), ref_low)
    np.testing.assert_allclose(float(threshold), ref_threshold, rtol=1e-6)
    if case == "bimodal":
        np.testing.assert_allclose(float(otsu_threshold(values, 64)), ref_threshold, rtol=1e-6)
        low = np.asarray(low)
        assert low[:301].all() and low[301:].sum() <= 1
    if case == "two":
        assert np.asarray(low).sum() == 357


def test_score_matches_numpy(data, stages):
    features, _ = data
    filtered, scored = stages[2], stages[3]
    patch, image, weights = np_score(np.asarray(filtered.coreset), features, CONFIG.b)
    np.testing.assert_allclose(np.asarray(scored.patch_scores), patch, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(scored.weights), weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(scored.image_scores), image, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(scored.top_patch), patch.argmax(1))
    assert np.all(np.asarray(scored.weights) >= 1.0 - 1.0 / CONFIG.b - 1e-6)


def test_score_masked_prefix_equals_smaller_coreset(data, stages):
    """A valid-prefix buffer (Otsu's layout) scores like the prefix alone; fewer than b valid rows is allowed."""
    features, _ = data
    coreset = np.asarray(stages[2].coreset)
    for size in (11, 3):
        valid = np.arange(len(coreset)) < size
        masked = fslc_score(features, coreset, valid, CONFIG)
        patch, image, weights = np_score(coreset[:size], features, CONFIG.b)
        np.testing.assert_allclose(np.asarray(masked.patch_scores), patch, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(masked.weights), weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(masked.image_scores), image, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- invariants


def test_coreset_invariants(data, stages):
    features, _ = data
    init, expanded, filtered = stages[0], stages[1], stages[2]
    s, m0, k = CONFIG.num_init_images, CONFIG.init_coreset_size, CONFIG.expand_per_image
    assert init.coreset.shape == (m0, C) and init.image_indices.shape == (s,)
    assert expanded.coreset.shape == (m0 + (N - s) * k, C)
    indices = np.asarray(expanded.patch_indices)
    assert len(np.unique(indices)) == len(indices)
    assert np.all(np.isin(indices[:m0] // M, np.asarray(init.image_indices)))
    added_images = indices[m0:] // M
    np.testing.assert_array_equal(added_images, np.repeat(np.asarray(expanded.order), k))
    np.testing.assert_array_equal(np.asarray(expanded.coreset), features.reshape(-1, C)[indices])
    assert filtered.coreset.shape == (CONFIG.n_wanted, C)
    assert len(np.unique(np.asarray(filtered.kept))) == CONFIG.n_wanted


def test_filter_removes_planted_outliers(stages):
    """Far points planted in a coreset of normal patches have the largest a_f, so they go first."""
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((4, C))
    features = centres[rng.integers(0, 4, (N, M))] + 0.05 * rng.standard_normal((N, M, C))
    size = stages[1].coreset.shape[0]
    planted = np.array([5, 17, 18, 40, 41, size - 1])
    coreset = features.reshape(-1, C)[rng.choice(N * M, size, replace=False)]
    coreset[planted] = 3.0 * rng.standard_normal((len(planted), C))
    features, coreset = features.astype(np.float32), coreset.astype(np.float32)
    fixed = fslc_filter(features, coreset, CONFIG)
    worst = np.argsort(-np.asarray(fixed.scores))[:len(planted)]
    assert set(worst.tolist()) == set(planted.tolist())
    assert not np.any(np.isin(planted, np.asarray(fixed.kept)))
    otsu = fslc_filter(features, coreset, OTSU)
    assert int(otsu.size) == size - len(planted)
    assert not np.any(np.isin(planted, np.asarray(otsu.kept)[:int(otsu.size)]))


# ------------------------------------------------------------------------------------- sharding and jit


def _tokens(rng, n, side, channels, anomalous=(), spots=3, clusters=3, noise=0.05):
    """CLS + (side*side) patch tokens from a few clusters; anomalous images get ``spots`` far patches."""
    centres = 4.0 * rng.standard_normal((clusters, channels))
    grid = side * side
    tokens = centres[rng.integers(0, clusters, (n, grid))] + noise * rng.standard_normal((n, grid, channels))
    masks = np.zeros((n, side * side), bool)
    for i in anomalous:
        where = rng.choice(side * side, spots, replace=False)
        tokens[i, where] = 6.0 * rng.standard_normal((spots, channels))
        masks[i, where] = True
    cls = rng.standard_normal((n, 1, channels))
    return np.concatenate([cls, tokens], axis=1).astype(np.float32), masks


@pytest.mark.parametrize("shards", [3, 8])
def test_sharded_equals_unsharded(shards):
    rng = np.random.default_rng(5)
    layers = tuple(_tokens(rng, 11, 5, 10)[0] for _ in range(2))
    embeds = rng.standard_normal((11, 6)).astype(np.float32)
    config = FSLCConfig(r_list=(1, 3), num_init_images=3, init_coreset_size=13, expand_per_image=3,
                        n_wanted="otsu", b=4, point_tile=8, query_tile=16, group_tile=2)
    single = score_fslc(layers, embeds, config, device_mesh(1))
    sharded = score_fslc(layers, embeds, config, device_mesh(shards))
    for key in ("patch_scores", "image_scores", "coreset_size", "weights", "init_images"):
        np.testing.assert_array_equal(np.asarray(getattr(sharded, key)), np.asarray(getattr(single, key)),
                                      err_msg=key)


def test_known_answer_and_no_retracing():
    """Clustered normal patches, a few far patches in anomalous images: image and patch AUROC 1.0.

    The staged run (``--profile stages``: the method's body, each stage its own jit) gives the same scores as
    the fused program. The second set has the same shapes, so no jitted function traces again.
    """
    config = FSLCConfig(r_list=(1,), num_init_images=4, init_coreset_size=40, expand_per_image=3,
                        n_wanted="otsu", b=5, point_tile=16, query_tile=32, group_tile=2, map_size=9)
    n, side = 24, 6
    anomalous = np.arange(16, 24)
    labels = np.isin(np.arange(n), anomalous).astype(int)
    jitted = (fslc_init, fslc_expand, fslc_filter, fslc_score)
    method = get_method("fslc")
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        tokens, masks = _tokens(rng, n, side, 16, anomalous)
        embeds = rng.standard_normal((n, 8)).astype(np.float32)
        result = score_fslc((tokens,), embeds, config)
        staged, _ = method.staged(config, (), Features((tokens_to_grid(tokens),), embeds), None, StageClock())
        patch, image = staged.patch_scores, staged.image_scores
        if seed == 1:
            sizes = {fn: fn._cache_size() for fn in jitted}
        np.testing.assert_allclose(np.asarray(image), np.asarray(result.image_scores), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(patch), np.asarray(result.patch_scores), rtol=1e-6, atol=1e-7)
        assert auroc(np.asarray(result.image_scores), labels) == 1.0
        assert auroc(np.asarray(result.patch_scores).reshape(-1), masks.reshape(-1).astype(int)) == 1.0
        scores = np.asarray(result.image_scores)
        assert scores[anomalous].min() > 10 * scores[labels == 0].max()
        maps, patch = np.asarray(result.maps), np.asarray(result.patch_scores)
        assert maps.shape == (n, 9, 9)
        for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            np.testing.assert_allclose(maps[(slice(None),) + corner], patch[(slice(None),) + corner], rtol=1e-6)
        assert np.all(maps.max((1, 2)) <= patch.max((1, 2)) * (1 + 1e-6))
    for fn, size in sizes.items():
        assert fn._cache_size() == size, fn


def test_per_layer_averages_the_sets():
    rng = np.random.default_rng(9)
    layers = tuple(_tokens(rng, 9, 5, 8)[0] for _ in range(2))
    embeds = rng.standard_normal((9, 5)).astype(np.float32)
    config = FSLCConfig(combine="per_layer", r_list=(1,), num_init_images=2, init_coreset_size=9, expand_per_image=2,
                        n_wanted=12, b=3, point_tile=8, query_tile=16, group_tile=2)
    result = score_fslc(layers, embeds, config)
    sets = fslc_features(layers, config)
    assert len(sets) == 2 and result.coreset_size.shape == (2,) and result.weights.shape == (2, 9)
    per_set = []
    for features in sets:
        feats = np.asarray(features)
        coreset, images, _ = np_init(feats, embeds, 2, 9)
        coreset, _ = np_expand(coreset, feats, images, 2)
        scores = np_filter_scores(coreset, feats, 0.3)
        final = coreset[np.argsort(scores, kind="stable")[:12]]
        per_set.append(np_score(final, feats, 3))
    np.testing.assert_allclose(np.asarray(result.image_scores), (per_set[0][1] + per_set[1][1]) / 2, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(result.patch_scores).reshape(9, -1), (per_set[0][0] + per_set[1][0]) / 2,
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- padded pools


def _padded_pool(grid, embeds, size, filler, rng):
    """A pool of len(grid) real images padded to ``size`` rows, as the driver pads a group to its bucket:
    "zeros" (what the driver writes) or "noise" (far, varied rows that would change every stage unmasked)."""
    extra = size - grid.shape[0]
    if filler == "zeros":
        rows, embed_rows = np.zeros((extra,) + grid.shape[1:]), np.zeros((extra, embeds.shape[1]))
    else:
        rows, embed_rows = 8.0 * rng.standard_normal((extra,) + grid.shape[1:]), 8.0 * rng.standard_normal(
            (extra, embeds.shape[1]))
    return (np.concatenate([grid, rows.astype(np.float32)]), np.concatenate([embeds, embed_rows.astype(np.float32)]))


@pytest.mark.parametrize("n_wanted", ["otsu", 20])
def test_padded_pool_scores_equal_the_unpadded_pool(n_wanted):
    """Groups of several sizes padded (with zeros, as the driver does, or with noise) to their own bucket or to a
    larger group's score their real images as the unpadded group does; 1 and 2 real images (fewer than S, and
    fewer init patches than M_0) included. Unmasked, the noise padding changes the scores (the test can fail)."""
    config = FSLCConfig(r_list=(1, 3), num_init_images=4, init_coreset_size=40, expand_per_image=3,
                        n_wanted=n_wanted, b=4, point_tile=8, query_tile=16, group_tile=2)
    method = get_method("fslc")
    rng = np.random.default_rng(21)
    for real, size in ((1, 8), (2, 8), (6, 8), (9, 10), (5, bucket_size(13))):
        grid = tokens_to_grid(_tokens(rng, real, 5, 8, anomalous=(real - 1,))[0])
        embeds = rng.standard_normal((real, 6)).astype(np.float32)
        plain, _ = method.score(config, (), Features((grid,), embeds))
        for filler in ("zeros", "noise"):
            pad_grid, pad_embeds = _padded_pool(np.asarray(grid), embeds, size, filler, rng)
            masked, _ = method.score(config, (), with_valid(Features((pad_grid,), pad_embeds), real, size))
            where = f"{real} images padded to {size} with {filler}"
            np.testing.assert_allclose(np.asarray(masked.image_scores)[:real], np.asarray(plain.image_scores),
                                       rtol=1e-6, atol=0, err_msg=where)
            np.testing.assert_allclose(np.asarray(masked.patch_scores)[:real], np.asarray(plain.patch_scores),
                                       rtol=1e-6, atol=1e-7, err_msg=where)
        if real == 9:
            unmasked, _ = method.score(config, (), Features((pad_grid,), pad_embeds))
            assert not np.allclose(np.asarray(unmasked.patch_scores)[:real], np.asarray(plain.patch_scores),
                                   rtol=1e-3)


def test_padded_stages_keep_the_unpadded_coreset_as_a_prefix(data):
    """Stage by stage on a padded set: init picks only real images, expansion's real rows (``size``) are the
    unpadded coreset and patch indices, filtering keeps the same rows; sharded over 3 devices as on one."""
    features, embeds = data
    real, size = 9, 12
    rng = np.random.default_rng(4)
    pad_features, pad_embeds = _padded_pool(features[:real], embeds[:real], size, "noise", rng)
    valid = np.arange(size) < real
    host = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    init = host(fslc_init(features[:real], embeds[:real], CONFIG))
    expanded = host(fslc_expand(features[:real], init.coreset, init.image_indices, init.patch_indices, CONFIG))
    filtered = host(fslc_filter(features[:real], expanded.coreset, CONFIG))
    for mesh in (None, device_mesh(3)):
        p_init = host(fslc_init(pad_features, pad_embeds, CONFIG, mesh, valid))
        np.testing.assert_array_equal(p_init.image_indices, init.image_indices)
        np.testing.assert_array_equal(p_init.coreset[:int(p_init.size)], init.coreset)
        p_exp = host(fslc_expand(pad_features, p_init.coreset, p_init.image_indices, p_init.patch_indices, CONFIG,
                                 mesh, valid, p_init.size))
        k = int(expanded.size)
        assert k == expanded.coreset.shape[0] and int(p_exp.size) == k
        np.testing.assert_array_equal(p_exp.coreset[:k], expanded.coreset)
        np.testing.assert_array_equal(p_exp.patch_indices[:k], expanded.patch_indices)
        assert np.all(p_exp.patch_indices[k:] == -1) and np.all(p_exp.coreset[k:] == 0)
        p_filt = host(fslc_filter(pad_features, p_exp.coreset, CONFIG, mesh, valid, p_exp.size))
        np.testing.assert_array_equal(p_filt.scores[:k], filtered.scores)
        assert np.all(np.isinf(p_filt.scores[k:]))
        np.testing.assert_array_equal(p_filt.kept, filtered.kept)
        np.testing.assert_array_equal(p_filt.coreset, filtered.coreset)


# ------------------------------------------------------------------------------------- errors


def test_bad_config_and_inputs_raise(data):
    features, embeds = data
    with pytest.raises(ValueError, match="n_wanted"):
        FSLCConfig(n_wanted="auto")
    with pytest.raises(ValueError, match="b:"):
        FSLCConfig(b=1)
    with pytest.raises(ValueError, match="combine"):
        FSLCConfig(combine="sum")
    with pytest.raises(ValueError, match="num_init_images"):
        fslc_init(features, embeds, FSLCConfig(num_init_images=N + 1))
    with pytest.raises(ValueError, match="init_coreset_size"):
        fslc_init(features, embeds, FSLCConfig(num_init_images=2, init_coreset_size=2 * M + 1))
    with pytest.raises(ValueError, match="n_wanted"):
        fslc_filter(features, features[0], FSLCConfig(n_wanted=M + 1))
    with pytest.raises(ValueError, match="features"):
        filter_scores(features[0], features[0], CONFIG)


def test_known_answer_on_synthetic_image_set():
    """Planted defects in the synthetic image set change their patches' colour statistics; FSLC on those
    weight-free features must rank the defective images first (the MuSc test on the same features gives 1.0;
    0.9 leaves a margin for FSLC's coarser coreset)."""
    from jzad.data import make_synthetic_set
    from jzad.methods.fslc import FSLCConfig, score_fslc

    images, _, labels, _ = make_synthetic_set(14, 10, size=96, seed=0)
    n, patch = images.shape[0], 8
    g = 96 // patch
    blocks = images.astype(np.float32).reshape(n, g, patch, g, patch, 3) / 255.0
    feats = np.concatenate([blocks.mean(axis=(2, 4)), blocks.std(axis=(2, 4))], axis=-1).reshape(n, g * g, 6)
    tokens = np.concatenate([np.zeros((n, 1, 6), np.float32), feats], axis=1)
    embeds = feats.mean(axis=1)
    config = FSLCConfig(r_list=(1,), num_init_images=4, init_coreset_size=200, expand_per_image=4)
    result = score_fslc((tokens,), embeds, config)
    assert auroc(np.asarray(result.image_scores), labels) >= 0.9
