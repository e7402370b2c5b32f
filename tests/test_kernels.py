"""Kernels against plain NumPy on random inputs with odd sizes; sharded == unsharded on 8 fake devices."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jzad.kernels import (
    device_mesh,
    interval_bounds,
    interval_mean,
    kcenter_greedy,
    largest_k,
    nearest_group_distance,
    pairwise_cosine_distance,
    pairwise_euclidean,
    pairwise_sq_euclidean,
    sharded_kcenter_greedy,
    sharded_nearest_group_distance,
    smallest_k,
)

SEEDS = (0, 1, 2)


def np_sq_dist(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def np_kcenter(x, k, start):
    x = x.astype(np.float64)
    dist = ((x - x[start]) ** 2).sum(1)
    dist[start] = -1.0
    picks = [start]
    for _ in range(1, k):
        j = int(np.argmax(dist))
        picks.append(j)
        dist = np.minimum(dist, ((x - x[j]) ** 2).sum(1))
        dist[j] = -1.0
    return np.array(picks)


@pytest.mark.parametrize("seed", SEEDS)
def test_pairwise_distances_match_numpy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(13, 37)).astype(np.float32)
    b = rng.normal(size=(29, 37)).astype(np.float32)
    ref = np_sq_dist(a, b)
    np.testing.assert_allclose(pairwise_sq_euclidean(a, b), ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(pairwise_euclidean(a, b), np.sqrt(ref), rtol=1e-5, atol=1e-4)
    cos = (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None, :]
    np.testing.assert_allclose(pairwise_cosine_distance(a, b), 1 - cos, atol=1e-5)
    # bf16: the GEMM's inputs rounded to bfloat16 (ml_dtypes), float32 accumulation, norms of the unrounded rows
    bf16 = np.asarray(pairwise_sq_euclidean(a, b, precision="bf16"), np.float64)
    rounded = [x.astype(ml_dtypes.bfloat16).astype(np.float64) for x in (a, b)]
    exact = (a.astype(np.float64) ** 2).sum(1)[:, None] + (b.astype(np.float64) ** 2).sum(1)[None, :]
    exact = np.maximum(exact - 2 * rounded[0] @ rounded[1].T, 0)
    np.testing.assert_allclose(bf16, exact, rtol=0, atol=1e-5 * exact.max())
    # and its distance from the fp32 answer is within the input rounding: 2 roundings of 2^-9 per product
    assert (np.abs(bf16 - ref) <= 2 * 2.0**-8 * np.abs(a) @ np.abs(b).T + 1e-4).all()


def test_distances_work_under_vmap_and_reject_bad_precision():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 5, 7)).astype(np.float32)
    b = rng.normal(size=(4, 6, 7)).astype(np.float32)
    out = jax.jit(jax.vmap(pairwise_sq_euclidean))(a, b)
    for i in range(4):
        np.testing.assert_allclose(out[i], np_sq_dist(a[i], b[i]), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="precision"):
        pairwise_sq_euclidean(a[0], b[0], precision="fp16")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tiles", [(7, 3), (1024, 8), (5, 1)])
def test_nearest_group_distance_matches_numpy(seed, tiles):
    rng = np.random.default_rng(seed)
    q, groups, m, c = 53, 11, 17, 19
    queries = rng.normal(size=(q, c)).astype(np.float32)
    refs = rng.normal(size=(groups, m, c)).astype(np.float32)
    full = np_sq_dist(queries, refs.reshape(-1, c)).reshape(q, groups, m).min(-1)
    query_tile, group_tile = tiles
    got = nearest_group_distance(queries, refs, query_tile=query_tile, group_tile=group_tile)
    np.testing.assert_allclose(got, np.sqrt(full), rtol=1e-5, atol=1e-4)
    got_sq = nearest_group_distance(queries, refs, query_tile=query_tile, group_tile=group_tile, squared=True)
    np.testing.assert_allclose(got_sq, full, rtol=1e-5, atol=1e-4)


def test_nearest_group_distance_vmaps_and_rejects_bad_shapes():
    rng = np.random.default_rng(4)
    queries = rng.normal(size=(3, 9, 5)).astype(np.float32)
    refs = rng.normal(size=(3, 4, 6, 5)).astype(np.float32)
    out = jax.vmap(lambda a, b: nearest_group_distance(a, b, query_tile=4, group_tile=3))(queries, refs)
    for i in range(3):
        ref = np.sqrt(np_sq_dist(queries[i], refs[i].reshape(-1, 5)).reshape(9, 4, 6).min(-1))
        np.testing.assert_allclose(out[i], ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="equal c"):
        nearest_group_distance(queries[0], refs[0][..., :4])


def test_nearest_group_distance_memory_is_bounded_by_tiles():
    """The full (q, R*m) distance matrix would take 256 MiB; the tiled kernel's scratch stays under 8 MiB."""
    q, groups, m, c = 4096, 64, 256, 8
    queries = jax.ShapeDtypeStruct((q, c), jnp.float32)
    refs = jax.ShapeDtypeStruct((groups, m, c), jnp.float32)
    full_matrix_bytes = q * groups * m * 4
    compiled = (
        jax.jit(lambda a, b: nearest_group_distance(a, b, query_tile=256, group_tile=8))
        .lower(queries, refs)
        .compile()
    )
    scratch = compiled.memory_analysis().temp_size_in_bytes
    assert full_matrix_bytes == 256 * 2**20
    assert scratch < 8 * 2**20, scratch
    rng = np.random.default_rng(5)
    a = rng.normal(size=(q, c)).astype(np.float32)
    b = rng.normal(size=(groups, m, c)).astype(np.float32)
    got = np.asarray(compiled(a, b))
    rows = rng.choice(q, size=16, replace=False)
    ref = np.sqrt(np_sq_dist(a[rows], b.reshape(-1, c)).reshape(16, groups, m).min(-1))
    np.testing.assert_allclose(got[rows], ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_smallest_and_largest_k_match_numpy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(7, 31, 5)).astype(np.float32)
    values, indices = smallest_k(x, 6, axis=1)
    order = np.argsort(x, axis=1, kind="stable")[:, :6, :]
    np.testing.assert_array_equal(np.asarray(indices), np.moveaxis(order, 1, -1))
    np.testing.assert_allclose(values, np.moveaxis(np.take_along_axis(x, order, 1), 1, -1))
    values, indices = largest_k(x, 4, axis=-1)
    order = np.argsort(-x, axis=-1, kind="stable")[..., :4]
    np.testing.assert_array_equal(np.asarray(indices), order)
    np.testing.assert_allclose(values, np.take_along_axis(x, order, -1))
    with pytest.raises(ValueError, match="k must be"):
        smallest_k(x, 0)


def test_largest_k_breaks_ties_by_lower_index():
    values, indices = largest_k(jnp.array([1.0, 3.0, 3.0, 2.0, 3.0]), 3)
    np.testing.assert_array_equal(np.asarray(indices), [1, 2, 4])


@pytest.mark.parametrize("n,lo,hi,expected", [(10, 0.0, 0.3, (0, 3)), (2, 0.0, 0.3, (0, 1)),
                                              (1, 0.0, 0.3, (0, 1)), (9, 0.5, 1.0, (4, 9)),
                                              (199, 0.0, 0.3, (0, 59))])
def test_interval_bounds_count_rule(n, lo, hi, expected):
    assert interval_bounds(n, lo, hi) == expected


def test_interval_bounds_rejects_bad_intervals():
    with pytest.raises(ValueError, match="interval"):
        interval_bounds(5, 0.4, 0.2)
    with pytest.raises(ValueError, match="at least one"):
        interval_bounds(0, 0.0, 0.3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("interval", [(0.0, 0.3), (0.1, 0.6), (0.0, 1.0), (0.5, 0.55)])
def test_interval_mean_matches_numpy(seed, interval):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, 23, 3)).astype(np.float32)
    lo, hi = interval
    n = x.shape[1]
    start = int(np.floor(lo * n))
    stop = max(int(np.floor(hi * n)), start + 1)
    ref = np.sort(x, axis=1)[:, start:stop, :].mean(1)
    np.testing.assert_allclose(interval_mean(x, lo, hi, axis=1), ref, rtol=1e-6, atol=1e-6)


def test_interval_mean_ignores_masked_inf_values():
    x = jnp.array([[np.inf, 4.0, 1.0, 2.0, 3.0]])
    np.testing.assert_allclose(interval_mean(x, 0.0, 0.6), [2.0])


@pytest.mark.parametrize("seed", SEEDS)
def test_kcenter_greedy_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(97, 13)).astype(np.float32)
    start = int(rng.integers(97))
    np.testing.assert_array_equal(np.asarray(kcenter_greedy(x, 23, start)), np_kcenter(x, 23, start))


def test_kcenter_greedy_known_answer_and_no_duplicates():
    line = np.array([[0.0], [1.0], [10.0], [4.0], [-7.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(kcenter_greedy(line, 3, 1)), [1, 2, 4])
    duplicates = np.zeros((6, 2), np.float32)
    picks = np.asarray(kcenter_greedy(duplicates, 6, 0))
    assert sorted(picks.tolist()) == list(range(6))
    with pytest.raises(ValueError, match="k must be"):
        kcenter_greedy(line, 6)


@pytest.mark.parametrize("shards", [1, 3])
def test_kcenter_valid_rows_pick_as_the_valid_rows_alone(shards):
    """Rows marked invalid are never picked while a valid one is left: the picks are those of the valid rows
    alone (mapped back to their indices), then repeats of earlier picks."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(41, 7)).astype(np.float32)
    x[rng.choice(41, 9, replace=False)] *= 20.0  # far rows, picked first were they valid
    valid = rng.random(41) < 0.6
    rows = np.flatnonzero(valid)
    start = int(rows[2])
    expected = rows[np_kcenter(x[rows], len(rows), 2)]
    picks = np.asarray(sharded_kcenter_greedy(x, len(rows) + 3, device_mesh(shards), start, valid=valid))
    np.testing.assert_array_equal(picks[:len(rows)], expected)
    assert set(picks[len(rows):].tolist()) <= set(rows.tolist())
    with pytest.raises(ValueError, match="valid"):
        sharded_kcenter_greedy(x, 3, device_mesh(1), 0, valid=valid[:-1])


def test_kcenter_projection_is_deterministic_and_needs_key():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(61, 40)).astype(np.float32)
    key = jax.random.key(3)
    a = kcenter_greedy(x, 9, 0, projection_dim=8, key=key)
    b = kcenter_greedy(x, 9, 0, projection_dim=8, key=key)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(set(np.asarray(a).tolist())) == 9
    matrix = np.asarray(jax.random.normal(key, (40, 8), jnp.float32)) / np.sqrt(8)
    np.testing.assert_array_equal(np.asarray(a), np_kcenter(x @ matrix, 9, 0))
    with pytest.raises(ValueError, match="PRNG key"):
        kcenter_greedy(x, 9, 0, projection_dim=8)


@pytest.mark.parametrize("shards", [1, 3, 8])
def test_sharded_kernels_equal_unsharded(shards):
    assert len(jax.devices()) >= 8, "tests expect 8 fake CPU devices (see conftest.py)"
    rng = np.random.default_rng(7)
    mesh = device_mesh(shards)
    queries = rng.normal(size=(101, 21)).astype(np.float32)
    refs = rng.normal(size=(9, 11, 21)).astype(np.float32)
    single = nearest_group_distance(queries, refs, query_tile=16, group_tile=4)
    sharded = sharded_nearest_group_distance(queries, refs, mesh, query_tile=16, group_tile=4)
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))
    x = rng.normal(size=(203, 17)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(sharded_kcenter_greedy(x, 31, mesh, 5)), np.asarray(kcenter_greedy(x, 31, 5))
    )


def test_device_mesh_rejects_too_many_shards():
    with pytest.raises(ValueError, match="num_shards"):
        device_mesh(len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="num_shards"):
        device_mesh(0)


@pytest.mark.parametrize("seed", SEEDS)
def test_kth_smallest_and_sum_smallest_match_numpy_with_ties_negatives_and_inf(seed):
    from jzad.kernels import kth_smallest, sum_smallest

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(9, 41)).astype(np.float32)
    x[:, ::7] = np.round(x[:, ::7])
    x[0, :5] = 0.5
    x[1, 3] = np.inf
    x[2, :] = -0.0
    for k in (1, 7, 12, 41):
        ordered = np.sort(x, axis=1)
        np.testing.assert_array_equal(np.asarray(kth_smallest(x, k)), ordered[:, k - 1])
        np.testing.assert_allclose(sum_smallest(x, k)[2:], ordered[2:, :k].sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sum_smallest(x, 40)[1], np.sort(x[1])[:40].sum(), rtol=1e-5)
