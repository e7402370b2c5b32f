"""k-means (jzad.kernels.kmeans) against NumPy: k-means++ replayed from the same uniforms, Lloyd from the same
init in float64, determinism per seed, weights as padding, a known-answer clustering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzad.kernels.kmeans import assign, kmeans, kmeans_plusplus, kmeans_plusplus_uniforms, lloyd


def np_plusplus(points, weights, uniforms):
    """k-means++ by inverse CDF with given uniforms, float64."""
    x = points.astype(np.float64)
    k = uniforms.shape[0]
    chosen = [int(np.searchsorted(np.cumsum(weights), uniforms[0] * weights.sum(), side="right"))]
    nearest = ((x - x[chosen[0]]) ** 2).sum(1)
    for j in range(1, k):
        mass = np.cumsum(weights * nearest)
        chosen.append(int(np.searchsorted(mass, uniforms[j] * mass[-1], side="right")))
        nearest = np.minimum(nearest, ((x - x[chosen[-1]]) ** 2).sum(1))
    return np.array(chosen)


def np_lloyd(points, init, iterations, weights):
    x = points.astype(np.float64)
    centres = init.astype(np.float64).copy()
    for _ in range(iterations):
        labels = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for c in range(centres.shape[0]):
            members = labels == c
            mass = weights[members].sum()
            if mass > 0:
                centres[c] = (weights[members, None] * x[members]).sum(0) / mass
    labels = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    inertia = (weights * ((x - centres[labels]) ** 2).sum(1)).sum()
    return centres, labels, inertia


def blobs(rng, n, k, c, spread=0.6):
    means = rng.normal(size=(k, c)) * 4.0
    which = rng.integers(0, k, n)
    return (means[which] + rng.normal(size=(n, c)) * spread).astype(np.float32)


@pytest.mark.parametrize("seed,n,k,c,weighted", [(5, 301, 7, 13, False), (23, 157, 4, 5, True)])
def test_plusplus_replays_in_numpy(seed, n, k, c, weighted):
    rng = np.random.default_rng(seed)
    x = blobs(rng, n, k, c)
    w = rng.uniform(0.2, 2.0, n).astype(np.float32) if weighted else np.ones(n, np.float32)
    key = jax.random.key(seed)
    centres, indices = kmeans_plusplus(jnp.asarray(x), k, key, jnp.asarray(w) if weighted else None)
    want = np_plusplus(x, w.astype(np.float64), np.asarray(kmeans_plusplus_uniforms(key, k), np.float64))
    np.testing.assert_array_equal(np.asarray(indices), want)
    np.testing.assert_array_equal(np.asarray(centres), x[want])


@pytest.mark.parametrize("seed,n,k,c,iterations", [(2, 233, 6, 11, 12), (31, 97, 9, 3, 25)])
def test_lloyd_matches_numpy_from_same_init(seed, n, k, c, iterations):
    rng = np.random.default_rng(seed)
    x = blobs(rng, n, k, c, spread=1.5)
    w = rng.uniform(0.5, 1.5, n)
    init, _ = kmeans_plusplus(jnp.asarray(x), k, jax.random.key(seed))
    got = lloyd(jnp.asarray(x), init, iterations, jnp.asarray(w, jnp.float32))
    centres, labels, inertia = np_lloyd(x, np.asarray(init), iterations, w)
    np.testing.assert_array_equal(np.asarray(got.labels), labels)
    np.testing.assert_allclose(np.asarray(got.centres), centres, atol=2e-5)
    assert float(got.inertia) == pytest.approx(inertia, rel=1e-5)


def test_deterministic_per_seed_and_jittable():
    rng = np.random.default_rng(8)
    x = jnp.asarray(blobs(rng, 200, 5, 6, spread=2.0))
    run = jax.jit(lambda pts, key: kmeans(pts, 5, key, iterations=10))
    a, b = run(x, jax.random.key(4)), run(x, jax.random.key(4))
    np.testing.assert_array_equal(np.asarray(a.centres), np.asarray(b.centres))
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    _, first = kmeans_plusplus(x, 5, jax.random.key(4))
    _, other = kmeans_plusplus(x, 5, jax.random.key(5))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_known_answer_and_zero_weight_padding():
    # Three tight, far-apart groups: every seed recovers them; zero-weight padding rows are never centres
    # and do not move the means.
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    which = np.repeat(np.arange(3), 40)
    x = means[which] + rng.normal(size=(120, 2)) * 0.1
    padded = np.concatenate([x, np.full((9, 2), 1e3)]).astype(np.float32)
    w = np.concatenate([np.ones(120), np.zeros(9)]).astype(np.float32)
    for seed in range(4):
        result = kmeans(jnp.asarray(padded), 3, jax.random.key(seed), iterations=5, weights=jnp.asarray(w))
        centres = np.asarray(result.centres)
        order = np.argsort(np.linalg.norm(centres - [[10.0, 0.0]], axis=1))
        np.testing.assert_allclose(centres[order[0]], x[which == 1].mean(0), atol=1e-5)
        labels = np.asarray(result.labels)[:120]
        assert len({tuple(sorted(set(labels[which == g]))) for g in range(3)}) == 3
        assert all(len(set(labels[which == g])) == 1 for g in range(3))


def test_assign_and_validation():
    x = jnp.asarray([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    labels, sq = assign(x, jnp.asarray([[1.0, 1.0], [5.0, 4.0]]))
    np.testing.assert_array_equal(np.asarray(labels), [0, 0, 1])
    np.testing.assert_allclose(np.asarray(sq), [2.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\]"):
        kmeans(x, 4, jax.random.key(0))
    with pytest.raises(ValueError, match=r"weights must be \(n,\)"):
        kmeans(x, 2, jax.random.key(0), weights=jnp.ones(2))
    with pytest.raises(ValueError, match=r"init must be \(k, 2\)"):
        lloyd(x, jnp.ones((2, 3)), 3)
