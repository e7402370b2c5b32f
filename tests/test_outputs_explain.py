"""Heatmaps that explain themselves and map files where the official evaluation scripts look (issue 26)."""

from pathlib import Path

import numpy as np
import pytest

from jzad.data import category_sources
from jzad.eval.outputs import (
    HeatmapStyle,
    caption,
    captioned_panel,
    colour_bar,
    evaluation_names,
    save_map_tiffs,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _dark_columns(picture: np.ndarray) -> int:
    return int((picture.min(axis=(0, 2)) < 100).sum())


def test_colour_bar_carries_its_label():
    plain = colour_bar(200, 0.0, 1.0)
    labelled = colour_bar(200, 0.0, 1.0, "pixel anomaly score")
    assert labelled.shape[1] > plain.shape[1]
    assert _dark_columns(labelled[:, plain.shape[1]:]) > 3  # the label's ink beside the numbers


def test_bar_label_names_units_and_raw_range_when_normalised():
    assert HeatmapStyle("squared L2 distance").bar_label(1.0, 2.0) == "pixel squared L2 distance"
    label = HeatmapStyle("squared L2 distance", normalised=True).bar_label(12.5, 6.412e4)
    assert "0-1 over the category" in label and "6.41e+04" in label and "12.5" in label


def test_caption_names_the_image_score_and_the_verdict():
    text = caption("grid/test/bent/000.png", 0.961, 1, "bent", normalised=0.71, flagged=True)
    assert "image score 0.961" in text and "verdict anomalous (0.71, threshold 0.5)" in text
    assert "truth: anomalous (bent)" in text
    assert "verdict" not in caption("x.png", 0.2)


def test_normalised_display_shows_0_to_1_and_same_colours():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    amap = rng.random((64, 64)).astype(np.float32) * 6.4e4
    raw = captioned_panel(image, amap, None, "a", 0.0, 6.4e4, HeatmapStyle("distance"))
    shown = captioned_panel(image, amap, None, "a", 0.0, 6.4e4, HeatmapStyle("distance", normalised=True))
    body = slice(16, 16 + 64), slice(0, 64 * 2 + 4)
    np.testing.assert_array_equal(raw[body], shown[body])  # the overlay colours do not change
    assert not np.array_equal(raw[:, 64 * 2 + 8:], shown[:, 64 * 2 + 8:])  # the bar's numbers and label do


def test_random_weights_mark():
    image = np.zeros((48, 48, 3), np.uint8)
    amap = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
    marked = captioned_panel(image, amap, None, "a", 0.0, 1.0, HeatmapStyle(random_weights=True))
    plain = captioned_panel(image, amap, None, "a", 0.0, 1.0, HeatmapStyle())
    red = lambda p: int(((p[..., 0] > 150) & (p[..., 1] < 60) & (p[..., 2] < 60)).sum())  # noqa: E731
    assert red(marked[16:32]) > 20 and red(marked[:16]) == 0 and red(plain[:16]) == 0
    assert marked.shape[0] == plain.shape[0] + 16


def test_map_tiffs_where_the_official_evaluation_reads_them(tmp_path):
    """The MVTec AD / MVTec LOCO evaluation scripts read <maps root>/<category>/test/<type>/<id>.tiff."""
    mvtec = ["grid/test/bent/000.png", "grid/test/good/001.png"]
    loco = ["test/logical_anomalies/000.png", "test/good/000.png"]
    maps = np.zeros((2, 4, 4), np.float32)
    written = save_map_tiffs(tmp_path, evaluation_names(mvtec, "grid"), maps)
    written += save_map_tiffs(tmp_path, evaluation_names(loco, "juice_bottle"), maps)
    expected = {"grid/test/bent/000.tiff", "grid/test/good/001.tiff",
                "juice_bottle/test/logical_anomalies/000.tiff", "juice_bottle/test/good/000.tiff"}
    assert {p.relative_to(tmp_path).as_posix() for p in written} == expected
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tiff")} == expected


def test_real_mvtec_names_do_not_repeat_the_category(tmp_path):
    root = SHARED / "mvtec_subset"
    if not (root / "hazelnut").is_dir():
        pytest.skip(f"the MVTec subset is not at {root}")
    sources = category_sources("mvtec", root, "hazelnut")
    names = evaluation_names(sources.source.names, sources.maps_folder)
    assert all(n.startswith("hazelnut/test/") and not n.startswith("hazelnut/hazelnut") for n in names)
    assert "hazelnut/test/colour/00.jpg" in names
