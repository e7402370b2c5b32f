"""jzad.eval.heatmaps: jet scale against its anchor definition, overlays against plain arithmetic, PNG panels
read back pixel-exactly, contours against scipy erosion, names and shape errors."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jzad.eval import heatmaps

# Jet through its anchor points (x, r, g, b): dark blue, blue, cyan, yellow, red, dark red.
JET_ANCHORS = np.array([
    [0.0, 0.0, 0.0, 0.5],
    [0.125, 0.0, 0.0, 1.0],
    [0.375, 0.0, 1.0, 1.0],
    [0.625, 1.0, 1.0, 0.0],
    [0.875, 1.0, 0.0, 0.0],
    [1.0, 0.5, 0.0, 0.0],
])


def jet_reference(x: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation through the anchors, channel by channel."""
    return np.stack([np.interp(x, JET_ANCHORS[:, 0], JET_ANCHORS[:, c]) for c in (1, 2, 3)], axis=-1)


def colorize_reference(maps, lo, hi) -> np.ndarray:
    x = np.clip((maps.astype(np.float64) - lo) / (hi - lo), 0, 1)
    return np.rint(jet_reference(x) * 255).astype(np.uint8)


def test_jet_matches_anchor_interpolation():
    x = np.concatenate([JET_ANCHORS[:, 0], np.random.default_rng(0).random(500)])
    np.testing.assert_allclose(heatmaps.jet(x), jet_reference(x), atol=1e-6)
    np.testing.assert_allclose(heatmaps.jet(np.array([-3.0, 7.0])), jet_reference(np.array([0.0, 1.0])), atol=0)


def test_colorize_normalises_over_the_whole_set():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 9, 11)).astype(np.float32) * np.array([1.0, 0.5, 3.0], np.float32)[:, None, None]
    got = heatmaps.colorize(maps)
    assert got.dtype == np.uint8 and got.shape == (3, 9, 11, 3)
    want = colorize_reference(maps, maps.min(), maps.max())
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float32 vs float64 rounding at .5
    # The low-valued second map is not stretched to the full scale on its own.
    per_image = colorize_reference(maps[1:2], maps[1].min(), maps[1].max())[0]
    assert np.abs(got[1].astype(int) - per_image.astype(int)).max() > 50


def test_colorize_explicit_range_clips_and_constant_maps():
    maps = np.array([[[-1.0, 0.0, 0.5, 1.0, 2.0]]])
    got = heatmaps.colorize(maps, vmin=0.0, vmax=1.0)[0, 0]
    assert got.tolist() == [[0, 0, 128], [0, 0, 128], [128, 255, 128], [128, 0, 0], [128, 0, 0]]
    constant = heatmaps.colorize(np.full((2, 3, 3), 4.2))
    assert (constant == np.array([0, 0, 128], np.uint8)).all()
    with pytest.raises(ValueError, match="vmin <= vmax"):
        heatmaps.colorize(maps, vmin=1.0, vmax=0.0)
    with pytest.raises(ValueError, match="NaN"):
        heatmaps.colorize(np.full((1, 2, 2), np.nan))
    with pytest.raises(ValueError, match=r"maps: expected an \(N, H, W\) array"):
        heatmaps.colorize(np.zeros((4, 4)))


def test_overlay_is_the_alpha_blend():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 6, 7, 3), dtype=np.uint8)
    maps = rng.normal(size=(2, 6, 7)).astype(np.float32)
    colour = heatmaps.colorize(maps)
    assert np.array_equal(heatmaps.overlay(images, maps, alpha=0.0), images)
    assert np.array_equal(heatmaps.overlay(images, maps, alpha=1.0), colour)
    half = np.rint((images.astype(np.float64) + colour) / 2).astype(np.uint8)
    assert np.array_equal(heatmaps.overlay(images, maps), half)
    quarter = np.rint(0.75 * images.astype(np.float64) + 0.25 * colour)
    assert np.abs(heatmaps.overlay(images, maps, alpha=0.25).astype(int) - quarter).max() <= 1


@pytest.mark.parametrize(
    "images, maps, match",
    [
        (np.zeros((2, 6, 7), np.uint8), np.zeros((2, 6, 7)), r"\(N, H, W, 3\)"),
        (np.zeros((2, 6, 7, 3), np.float32), np.zeros((2, 6, 7)), "uint8"),
        (np.zeros((2, 6, 7, 3), np.uint8), np.zeros((3, 6, 7)), "does not match the maps"),
        (np.zeros((2, 6, 7, 3), np.uint8), np.zeros((2, 7, 6)), "does not match the maps"),
    ],
)
def test_overlay_shape_errors(images, maps, match):
    with pytest.raises(ValueError, match=match):
        heatmaps.overlay(images, maps)


def test_overlay_alpha_range():
    with pytest.raises(ValueError, match="alpha"):
        heatmaps.overlay(np.zeros((1, 2, 2, 3), np.uint8), np.zeros((1, 2, 2)), alpha=1.5)


def test_mask_contour_matches_scipy_erosion():
    rng = np.random.default_rng(3)
    masks = rng.random((3, 15, 12)) < 0.5
    masks[0] = False
    masks[0, 3:9, 2:12] = True  # touches the right border
    cross = ndimage.generate_binary_structure(2, 1)
    want = np.stack([m & ~ndimage.binary_erosion(m, cross, border_value=0) for m in masks])
    assert np.array_equal(heatmaps.mask_contour(masks), want)
    assert heatmaps.mask_contour(masks)[0, 5, 11] and not heatmaps.mask_contour(masks)[0, 5, 6]


@pytest.mark.parametrize(
    "name, want",
    [
        ("broken_large/000.png", "broken_large_000.png"),
        ("000", "000.png"),
        ("../../etc/passwd", "etc_passwd.png"),
        ("a b?*.JPG", "a_b.png"),
        ("ok/Image 7.tiff", "ok_Image_7.png"),
        (".hidden.bmp", "hidden.png"),
        ("v1.2_final", "v1.2_final.png"),
    ],
)
def test_sanitize_name(name, want):
    assert heatmaps.sanitize_name(name) == want


@pytest.mark.parametrize("name", ["", "...", "//", "?.png"])
def test_sanitize_name_rejects_empty(name):
    with pytest.raises(ValueError, match="no usable characters"):
        heatmaps.sanitize_name(name)


def test_save_overlays_writes_panels_read_back_exactly(tmp_path):
    rng = np.random.default_rng(4)
    n, h, w = 3, 10, 13
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    maps = rng.random((n, h, w)).astype(np.float32) * np.array([1.0, 0.2, 2.0], np.float32)[:, None, None]
    masks = np.zeros((n, h, w), bool)
    masks[1, 2:6, 3:9] = True
    names = ["good/000.png", "crack/001.png", "crack/002.png"]
    paths = heatmaps.save_overlays(tmp_path / "out" / "bottle", names, images, maps, masks)
    assert [p.name for p in paths] == ["good_000.png", "crack_001.png", "crack_002.png"]
    lo, hi = float(maps.min()), float(maps.max())
    for i, path in enumerate(paths):
        png = np.asarray(Image.open(path).convert("RGB"))
        assert png.shape == (h, 3 * w + 2 * 4, 3)
        assert np.array_equal(png[:, :w], images[i])
        assert (png[:, w:w + 4] == 255).all() and (png[:, 2 * w + 4:2 * w + 8] == 255).all()
        colour = colorize_reference(maps[i], lo, hi)  # set-wide scale, not per image
        half = np.rint((images[i].astype(np.float64) + colour) / 2)
        assert np.abs(png[:, w + 4:2 * w + 4].astype(int) - half).max() <= 1
        right = png[:, 2 * w + 8:]
        edge = masks[i] & ~ndimage.binary_erosion(masks[i], border_value=0)
        assert (right[edge] == [0, 255, 0]).all()
        assert np.array_equal(right[~edge], images[i][~edge])
    assert np.count_nonzero(np.all(np.asarray(Image.open(paths[1]))[:, 2 * w + 8:] == [0, 255, 0], -1)) == 16


def test_save_overlays_without_masks_and_fixed_scale(tmp_path):
    images = np.zeros((2, 4, 5, 3), np.uint8)
    maps = np.stack([np.zeros((4, 5)), np.ones((4, 5))])
    paths = heatmaps.save_overlays(tmp_path, ["a", "b"], images, maps, vmin=0.0, vmax=2.0, alpha=1.0)
    png = np.asarray(Image.open(paths[1]))
    assert png.shape == (4, 2 * 5 + 4, 3)
    assert (png[:, 9:] == [128, 255, 128]).all()  # 1.0 on a 0..2 scale is the middle of jet


def test_save_overlays_errors(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="expected 2 names"):
        heatmaps.save_overlays(tmp_path, ["a"], images, maps)
    with pytest.raises(ValueError, match="both become the file name 'x_y.png'"):
        heatmaps.save_overlays(tmp_path, ["x/y.png", "x_y"], images, maps)
    with pytest.raises(ValueError, match="masks: shape"):
        heatmaps.save_overlays(tmp_path, ["a", "b"], images, maps, masks=np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match="0 and 1"):
        heatmaps.save_overlays(tmp_path, ["a", "b"], images, maps, masks=np.full((2, 4, 4), 0.5))
    assert list(tmp_path.iterdir()) == []  # nothing written before validation passed
