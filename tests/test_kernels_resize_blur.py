"""Resize, blur and adaptive pool kernels against PyTorch / scipy on random inputs with odd sizes."""

import jax
import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from jzad.kernels.blur import blur_matrix, gaussian_blur, gaussian_taps
from jzad.kernels.pool import adaptive_avg_pool1d, adaptive_bins
from jzad.kernels.resize import bilinear_matrix, resize_bilinear

RESIZES = [
    ((14, 14), (28, 28)),
    ((28, 28), (224, 224)),
    ((13, 7), (5, 19)),
    ((9, 11), (9, 4)),
    ((1, 6), (3, 1)),
    ((17, 3), (17, 3)),
]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shapes", RESIZES)
def test_resize_bilinear_matches_torch(shapes, align_corners):
    (h, w), size = shapes
    rng = np.random.default_rng(h * 31 + w)
    x = rng.normal(size=(2, 3, h, w)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=align_corners).numpy()
    out = np.asarray(resize_bilinear(x, size, align_corners))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_resize_bilinear_under_jit_and_leading_axes():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5, 7)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x)[None, None], size=(10, 3), mode="bilinear").numpy()[0, 0]
    out = jax.jit(lambda a: resize_bilinear(a, (10, 3)))(x)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-6)


def test_bilinear_matrix_rows_are_convex_weights():
    matrix = bilinear_matrix(14, 28)
    np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-6)
    # align_corners=False, 14 -> 28: output 0 sits at source -0.25, clamped to 0; output 1 at 0.25.
    np.testing.assert_allclose(matrix[1, :2], [0.75, 0.25])
    with pytest.raises(ValueError, match="out_size"):
        bilinear_matrix(14, 0)
    with pytest.raises(ValueError, match="size"):
        resize_bilinear(np.zeros((3, 4), np.float32), (2, 2, 2))


@pytest.mark.parametrize("shape", [(3, 224, 224), (2, 28, 31), (2, 9, 5), (1, 40, 3)])
@pytest.mark.parametrize("sigma", [4.0, 1.3])
def test_gaussian_blur_matches_scipy(shape, sigma):
    rng = np.random.default_rng(shape[1] + shape[2])
    maps = rng.normal(size=shape).astype(np.float32)
    ref = np.stack([scipy.ndimage.gaussian_filter(m, sigma=sigma, mode="reflect") for m in maps])
    out = np.asarray(gaussian_blur(maps, sigma))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_gaussian_taps_are_scipys():
    taps = gaussian_taps(4.0)
    assert taps.shape == (33,)
    impulse = np.zeros(81)
    impulse[40] = 1.0
    np.testing.assert_allclose(taps, scipy.ndimage.gaussian_filter1d(impulse, 4.0)[24:57], atol=1e-15)
    np.testing.assert_allclose(blur_matrix(9, 4.0).sum(1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="maps must be"):
        gaussian_blur(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(np.zeros((1, 4, 4), np.float32), sigma=0.0)


@pytest.mark.parametrize("length,out", [(4608, 1024), (9216, 1024), (2048, 1024), (37, 5), (5, 17), (33, 7)])
def test_adaptive_avg_pool1d_matches_torch(length, out):
    rng = np.random.default_rng(length + out)
    x = rng.normal(size=(3, 2, length)).astype(np.float32)
    ref = F.adaptive_avg_pool1d(torch.from_numpy(x), out).numpy()
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool1d(x, out)), ref, rtol=0, atol=1e-6)


def test_adaptive_bins_known_answer():
    starts, ends = adaptive_bins(4608, 1024)
    # 4.5 entries per bin, 5-element bins overlapping by one: bins 2c and 2c + 1 stay inside channel c's 9.
    np.testing.assert_array_equal(starts[:4], [0, 4, 9, 13])
    np.testing.assert_array_equal(ends[:4], [5, 9, 14, 18])
    with pytest.raises(ValueError, match="out"):
        adaptive_avg_pool1d(np.zeros((2, 4), np.float32), 0)
