"""Nearest-neighbour distances between large-norm vectors against float64 NumPy: the GEMM form's cancellation.

Features from a ResNet (post-ReLU, non-negative) share a large common offset: norms of about 250 at nearest
distances of about 25. The form ||a||^2 + ||b||^2 - 2 a.b rounds at the scale of the norms, so in float32 it
keeps only a few digits of such distances; measuring the winner directly as ||a - b||^2 keeps float32's.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzad.kernels import device_mesh
from jzad.kernels.nearest import (
    _nearest_members,
    first_argmin,
    nearest_group_distance,
    sharded_nearest_group_distance,
)
from jzad.methods.patchcore import nearest_scores

CHANNELS = 1024


def large_norm_rows(rng, offset, rows):
    """(rows, C) float32 around a shared non-negative offset (norm ~250), spread ~0.6 per channel (distances ~25)."""
    return np.abs(offset + rng.normal(scale=0.6, size=(rows, CHANNELS))).astype(np.float32)


def exact_nearest(queries, refs):
    """float64 squared distance from each query (q, C) to its nearest ref (m, C), by direct differences -> (q,)."""
    q64, r64 = queries.astype(np.float64), refs.astype(np.float64)
    return np.stack([((r64 - row) ** 2).sum(axis=1).min() for row in q64])


@pytest.fixture(scope="module")
def offset_data():
    """Queries (96, C) and 3 reference groups (3, 60, C): each group holds a perturbed copy of every query's base
    row (nearest distances 2-90, so no near-ties for the form to decide) and 12 unrelated rows."""
    rng = np.random.default_rng(2021)
    offset = rng.uniform(0.0, 15.0, size=CHANNELS)
    base = large_norm_rows(rng, offset, 48)
    groups = np.stack([np.concatenate([base + rng.normal(scale=0.05, size=base.shape), large_norm_rows(rng, offset, 12)])
                       for _ in range(3)]).astype(np.float32)
    scales = rng.uniform(0.05, 0.3, size=(96, 1))
    queries = (base[np.arange(96) % 48] + scales * rng.normal(size=(96, CHANNELS))).astype(np.float32)
    return queries, groups


def rel(got, expected):
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / np.abs(expected).max())


def test_refined_winner_is_exact_where_the_gemm_form_is_not(offset_data):
    queries, groups = offset_data
    assert np.linalg.norm(queries, axis=1).min() > 200
    expected = exact_nearest(queries, groups.reshape(-1, CHANNELS))
    per_group = np.stack([exact_nearest(queries, g) for g in groups], axis=1)
    refined = nearest_group_distance(queries, groups, query_tile=40, group_tile=2, squared=True, refine_winner=True)
    form = nearest_group_distance(queries, groups, query_tile=40, group_tile=2, squared=True)
    assert rel(refined, per_group) <= 1e-6
    assert rel(form, per_group) > 2e-5  # the expansion alone: its rounding at the scale of the norms
    euclidean = nearest_group_distance(queries, groups, query_tile=40, group_tile=2, refine_winner=True)
    np.testing.assert_allclose(np.asarray(euclidean), np.sqrt(per_group), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(refined).min(axis=1), expected, rtol=1e-6)


def test_patchcore_nearest_scores_are_exact_on_large_norm_features(offset_data):
    queries, groups = offset_data
    bank = groups.reshape(-1, CHANNELS)
    features = queries.reshape(4, 24, CHANNELS)
    expected = exact_nearest(queries, bank).reshape(4, 24)
    for tile in (4096, 64):  # one GEMM tile; 3 tiles, the last padded
        assert rel(nearest_scores(features, bank, bank_tile=tile), expected) <= 1e-6


def test_refined_kernel_shards_vmaps_and_jits(offset_data):
    queries, groups = offset_data
    single = np.asarray(nearest_group_distance(queries, groups, query_tile=32, group_tile=3, refine_winner=True))
    sharded = sharded_nearest_group_distance(queries, groups, device_mesh(min(8, len(jax.devices()))),
                                             query_tile=32, group_tile=3, refine_winner=True)
    np.testing.assert_array_equal(np.asarray(sharded), single)
    batched = jax.vmap(lambda q, r: nearest_group_distance(q, r, query_tile=16, group_tile=2, refine_winner=True))(
        queries.reshape(2, 48, CHANNELS), np.stack([groups, groups[::-1]]))
    expected = [np.stack([np.sqrt(exact_nearest(q, g)) for g in r], axis=1)
                for q, r in zip(queries.reshape(2, 48, CHANNELS), np.stack([groups, groups[::-1]]))]
    np.testing.assert_allclose(np.asarray(batched), np.stack(expected), rtol=1e-6)


def test_first_argmin_equals_argmin_with_ties():
    rng = np.random.default_rng(7)
    values = rng.integers(0, 5, size=(6, 9, 33)).astype(np.float32)  # many ties: the first index must win
    values[0, 0, :] = 1.0
    got = jax.jit(first_argmin)(jnp.asarray(values))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.argmin(values, axis=-1))



@pytest.mark.parametrize("m", [61, 100, 784])  # no blocks (prime), blocks of 50, blocks of 56
def test_nearest_members_are_the_first_minima_with_ties(m):
    # Small integers make the GEMM form exact in float32, so ties are real and the first member must win.
    rng = np.random.default_rng(m)
    queries = rng.integers(0, 3, size=(20, 16)).astype(np.float32)
    members = rng.integers(0, 3, size=(3 * m, 16)).astype(np.float32)
    query_norms, member_norms = (queries**2).sum(1), (members**2).sum(1)
    cross = queries @ members.T
    sq = (query_norms[:, None] + member_norms[None] - 2 * cross).reshape(20, 3, m)
    assert (sq == sq.min(-1, keepdims=True)).sum(-1).max() > 1  # ties present
    got = jax.jit(_nearest_members)(query_norms, member_norms, cross, sq)
    np.testing.assert_array_equal(np.asarray(got), np.argmin(sq, axis=-1))
    refined = nearest_group_distance(queries, members.reshape(3, m, 16), query_tile=8, group_tile=2, squared=True,
                                     refine_winner=True)
    np.testing.assert_array_equal(np.asarray(refined), sq.min(-1))
