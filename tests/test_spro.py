"""sPRO (jzad.eval.spro) against hand-computed curves and a slow per-threshold reference written here the way
the official MVTec LOCO evaluation computes it (binary maps per threshold, per-channel saturation, FPR over
pixels free of every channel, its trapezoid with interpolation at max_fpr)."""

import json
from bisect import bisect
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jzad.data.spro_truth import DefectConfig, SPROTruth, parse_defects_config, saturation_area, truth_from_channels
from jzad.eval.spro import OFFICIAL_MAX_FPRS, auc_spro, choose_thresholds, loco_image_metrics, loco_localization, spro_curve

CONFIGS = Path("/work/shared/data/mvtec_loco_configs")

DEFECTS = (
    DefectConfig("missing_part", 255, 1.0, True),
    DefectConfig("extra_part", 254, 7, False),
    DefectConfig("scratch", 253, 0.5, True),
    DefectConfig("dent", 252, 30, False),
)


# ------------------------------------------------------------------------------- slow official-style reference


def ref_trapz(x, y, x_max):
    x, y = np.asarray(x, float), np.asarray(y, float)
    correction = 0.0
    if x_max not in x:
        ins = bisect(x, x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def ref_curve(maps, channels_per_image, images, thresholds):
    """channels_per_image[i]: list of (bool mask, saturation area). Thresholds descending, with the official
    max + eps and min - eps ends."""
    fprs, spros = [], []
    for t in thresholds:
        fp = tn = 0
        values = []
        for i in images:
            positive = maps[i] > t
            union = np.zeros(maps[i].shape, bool)
            for mask, sat in channels_per_image[i]:
                values.append(min(np.sum(positive & mask) / sat, 1.0))
                union |= mask
            fp += np.sum(positive & ~union)
            tn += np.sum(~positive & ~union)
        fprs.append(fp / (fp + tn))
        spros.append(np.mean(values))
    return np.array(fprs), np.array(spros)


def ref_thresholds(maps, inner=None):
    inner = np.unique(maps) if inner is None else np.unique(inner)
    return np.concatenate(([maps.max() + 1e-6], inner[::-1], [maps.min() - 1e-6]))


def random_case(seed, n=9, h=11, w=13):
    rng = np.random.default_rng(seed)
    types = ["good"] * 3 + ["logical_anomalies"] * 3 + ["structural_anomalies"] * 3
    rng.shuffle(types)
    maps = np.round(rng.normal(size=(n, h, w)), 1).astype(np.float32)  # ties on purpose
    channels = []
    for i, kind in enumerate(types):
        image_channels = []
        for _ in range(0 if kind == "good" else int(rng.integers(1, 3))):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            ry, rx = rng.integers(1, 4), rng.integers(1, 5)
            yy, xx = np.mgrid[:h, :w]
            blob = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            defect = DEFECTS[int(rng.integers(0, len(DEFECTS)))]
            image_channels.append(np.where(blob, defect.pixel_value, 0).astype(np.uint8))
            maps[i][blob] += 0.8  # defects score higher on average
        channels.append(image_channels)
    return maps, types, channels


def as_reference(channels):
    by_value = {d.pixel_value: d for d in DEFECTS}
    return [
        [(c > 0, saturation_area(int((c > 0).sum()), by_value[int(c.max())])) for c in image]
        for image in channels
    ]


# ------------------------------------------------------------------------------------------------- tests


def test_hand_computed_curve_and_areas():
    # Image 0 good; image 1 has one defect on pixels 1, 2 (scores 0.9, 0.6), relative saturation 1 -> 2 px.
    maps = np.array([[[0.1, 0.7, 0.3, 0.4]], [[0.5, 0.9, 0.6, 0.2]]], np.float32)
    channel = np.array([[0, 255, 255, 0]], np.uint8)
    truth = truth_from_channels([[], [channel]], DEFECTS)
    curve = spro_curve(maps, truth)
    np.testing.assert_allclose(curve.fpr, [0, 0, 0, 1 / 6, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    np.testing.assert_allclose(curve.spro, [0, 0, 0.5, 0.5, 1, 1, 1, 1, 1, 1])
    assert auc_spro(curve, 0.05) == pytest.approx(0.5)
    assert auc_spro(curve, 0.3) == pytest.approx((0.5 / 6 + (0.3 - 1 / 6)) / 0.3)
    assert auc_spro(curve, 1.0) == pytest.approx(0.5 / 6 + 5 / 6)


def test_hand_computed_saturation_and_overlap():
    # A ("extra_part", absolute 7 px, area 3 -> saturation 3) and B ("scratch", relative 0.5 of 2 px -> 1)
    # overlap on pixel (0, 1); only pixels outside both count for the FPR.
    maps = np.array([[[0.8, 0.4, 0.1], [0.6, 0.3, 0.2]]], np.float32)
    a = np.array([[254, 254, 0], [254, 0, 0]], np.uint8)
    b = np.array([[0, 253, 0], [0, 253, 0]], np.uint8)
    truth = truth_from_channels([[a, b]], DEFECTS)
    np.testing.assert_array_equal(truth.saturation, [3, 1])
    assert truth.names == ("extra_part", "scratch")
    curve = spro_curve(maps, truth)
    np.testing.assert_allclose(curve.thresholds, [0.8, 0.6, 0.4, 0.3, 0.2, 0.1], rtol=1e-7)
    # t=0.8: nothing; 0.6: A 1/3; 0.4: A 2/3; 0.3: A 1, B 1; 0.2: same; 0.1: + normal 0.2 -> FPR 1/2.
    np.testing.assert_allclose(curve.spro, [0, 0, 1 / 6, 1 / 3, 1, 1, 1, 1])
    np.testing.assert_allclose(curve.fpr, [0, 0, 0, 0, 0, 0, 0.5, 1])
    assert saturation_area(3, DefectConfig("x", 9, 2, False)) == 2  # absolute below the area saturates early


@pytest.mark.parametrize("seed", [4, 17])
def test_matches_slow_reference(seed):
    maps, types, channels = random_case(seed)
    truth = truth_from_channels(channels, DEFECTS)
    got = loco_localization(maps, truth, types)
    reference = as_reference(channels)
    goods = [i for i, t in enumerate(types) if t == "good"]
    for name in ("logical_anomalies", "structural_anomalies"):
        images = goods + [i for i, t in enumerate(types) if t == name]
        fpr, spro = ref_curve(maps, reference, images, ref_thresholds(maps))
        for max_fpr in OFFICIAL_MAX_FPRS:
            want = ref_trapz(fpr, spro, max_fpr) / max_fpr
            assert got[name][max_fpr] == pytest.approx(want, abs=1e-12)
    for max_fpr in OFFICIAL_MAX_FPRS:
        mean = 0.5 * (got["logical_anomalies"][max_fpr] + got["structural_anomalies"][max_fpr])
        assert got["mean"][max_fpr] == mean
    # The whole set's curve, point by point.
    curve = spro_curve(maps, truth)
    fpr, spro = ref_curve(maps, reference, range(len(types)), ref_thresholds(maps))
    np.testing.assert_allclose(curve.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(curve.spro, spro, atol=1e-12)


def test_explicit_and_sampled_thresholds_are_exact_at_their_points():
    maps, types, channels = random_case(29, n=9, h=17, w=19)
    truth = truth_from_channels(channels, DEFECTS)
    reference = as_reference(channels)
    chosen = np.random.default_rng(3).uniform(maps.min(), maps.max(), 23)
    curve = spro_curve(maps, truth, thresholds=chosen)
    fpr, spro = ref_curve(maps, reference, range(9), ref_thresholds(maps, chosen.astype(np.float64)))
    np.testing.assert_allclose(curve.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(curve.spro, spro, atol=1e-12)
    # A strided sample of 500 thresholds gives a curve whose areas stay close to the exact ones.
    sampled = choose_thresholds(maps, max_thresholds=500)
    assert sampled.size <= 502 and sampled[0] == maps.min() and sampled[-1] == maps.max()
    exact = spro_curve(maps, truth)
    approx = spro_curve(maps, truth, max_thresholds=500)
    for max_fpr in (0.05, 0.3, 1.0):
        assert auc_spro(approx, max_fpr) == pytest.approx(auc_spro(exact, max_fpr), abs=0.02)


def test_image_metrics_against_sklearn():
    rng = np.random.default_rng(12)
    types = np.array(["good"] * 11 + ["logical_anomalies"] * 7 + ["structural_anomalies"] * 9)
    scores = np.round(rng.normal(size=types.size) + (types != "good") * 0.7, 1)
    got = loco_image_metrics(scores, types)
    for name in ("logical_anomalies", "structural_anomalies"):
        keep = (types == "good") | (types == name)
        assert got[name] == pytest.approx(roc_auc_score(types[keep] == name, scores[keep]))
    assert got["all"] == pytest.approx(roc_auc_score(types != "good", scores))
    assert got["mean"] == pytest.approx(0.5 * (got["logical_anomalies"] + got["structural_anomalies"]))


def test_perfect_maps_and_undefined_cases():
    maps, types, channels = random_case(5)
    truth = truth_from_channels(channels, DEFECTS)
    perfect = np.zeros_like(maps)
    for mask, i in zip(truth.masks, truth.image_index):
        perfect[i][mask] = 1.0
    result = loco_localization(perfect, truth, types)
    assert all(v == pytest.approx(1.0) for group in result.values() for v in group.values())
    only_good = [t if t != "structural_anomalies" else "good" for t in types]
    keep = [i for i, t in enumerate(types) if t != "structural_anomalies"]
    sub_channels = [channels[i] for i in keep]
    sub = truth_from_channels(sub_channels, DEFECTS)
    with pytest.warns(RuntimeWarning, match="no structural_anomalies images"):
        result = loco_localization(maps[keep], sub, [only_good[i] for i in keep])
    assert np.isnan(result["structural_anomalies"][0.05]) and np.isnan(result["mean"][0.05])
    assert not np.isnan(result["logical_anomalies"][0.05])


def test_validation_errors():
    maps, types, channels = random_case(8)
    truth = truth_from_channels(channels, DEFECTS)
    with pytest.raises(ValueError, match="original image size"):
        loco_localization(maps[:, :5], truth, types)
    flipped = ["logical_anomalies" if t == "good" else t for t in types]
    with pytest.raises(ValueError, match="have no ground-truth channel"):
        loco_localization(maps, truth, flipped)
    with pytest.raises(ValueError, match="defect_types must be among"):
        loco_localization(maps, truth, ["bad"] * len(types))
    with pytest.raises(ValueError, match="exactly one positive defect value"):
        truth_from_channels([[np.array([[0, 255, 254]], np.uint8)]], DEFECTS)
    with pytest.raises(ValueError, match="pixel value 9 is not in the defects config"):
        truth_from_channels([[np.array([[0, 9]], np.uint8)]], DEFECTS)
    with pytest.raises(ValueError, match="saturation area 0"):
        truth_from_channels([[np.array([[0, 253]], np.uint8)]], DEFECTS)  # int(0.5 * 1) = 0
    with pytest.raises(ValueError, match="max_fpr must be in"):
        auc_spro(spro_curve(maps, truth), 0.0)


def test_parse_defects_config():
    entries = [
        {"defect_name": "a", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
        {"defect_name": "b", "pixel_value": 254, "saturation_threshold": 6300, "relative_saturation": False},
    ]
    parsed = parse_defects_config(entries)
    assert parsed == (DefectConfig("a", 255, 1.0, True), DefectConfig("b", 254, 6300, False))
    with pytest.raises(ValueError, match=r"cfg.json: entry 1 lacks \['relative_saturation'\]"):
        no_flag = {k: v for k, v in entries[1].items() if k != "relative_saturation"}
        parse_defects_config([entries[0], no_flag], "cfg.json")
    with pytest.raises(ValueError, match="pixel values \\[255\\] name more than one defect"):
        parse_defects_config([entries[0], {**entries[1], "pixel_value": 255}])
    with pytest.raises(ValueError, match="relative saturation_threshold must be in \\(0, 1\\]"):
        parse_defects_config([{**entries[0], "saturation_threshold": 1.5}])
    with pytest.raises(ValueError, match="whole pixel count"):
        parse_defects_config([{**entries[1], "saturation_threshold": 10.5}])


@pytest.mark.skipif(not CONFIGS.is_dir(), reason="the real MVTec LOCO defects_config.json files are not here")
def test_real_configs_parse():
    counts = {}
    for category in ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"):
        with open(CONFIGS / category / "defects_config.json") as f:
            counts[category] = len(parse_defects_config(json.load(f), category))
    assert counts["breakfast_box"] == 22 and counts["juice_bottle"] == 18 and counts["pushpins"] == 8


# ------------------------------------------------------------------------------------------ streaming

def one_image_truths(channels):
    """Per image, its own one-image SPROTruth (what a lazy reader yields)."""
    shape = next(c.shape for image in channels for c in image)
    return [truth_from_channels([image], DEFECTS, shape) for image in channels]


@pytest.mark.parametrize("seed", [4, 17])
def test_streamed_images_give_the_stacked_result(seed):
    maps, types, channels = random_case(seed)
    truth = truth_from_channels(channels, DEFECTS)
    for max_thresholds in (1 << 20, 40):
        whole = loco_localization(maps, truth, types, max_thresholds=max_thresholds)
        streamed = loco_localization(list(maps), one_image_truths(channels), types, max_thresholds=max_thresholds)
        for name in whole:
            for limit in whole[name]:
                assert streamed[name][limit] == pytest.approx(whole[name][limit], abs=1e-9)
    # The strided sample, image by image, hits the stacked array's positions: the thresholds are identical.
    flat = maps.reshape(-1)
    for max_thresholds in (40, 97, 500):
        stride = -(-flat.size // max_thresholds)
        want = np.unique(np.concatenate([flat[::stride], [flat.min(), flat.max()]]))
        np.testing.assert_array_equal(choose_thresholds(list(maps), max_thresholds), want)
    np.testing.assert_array_equal(choose_thresholds(list(maps)), np.unique(flat))
    curve = spro_curve(list(maps), one_image_truths(channels))
    np.testing.assert_array_equal(curve.spro, spro_curve(maps, truth).spro)
    with pytest.raises(ValueError, match="truth has 8 images but there are 9 maps"):
        loco_localization(list(maps), one_image_truths(channels)[:8], types)
    with pytest.raises(ValueError, match=r"maps must share one size: map 1 is \(11, 12\)"):
        loco_localization([maps[0], maps[1][:, :12]] + list(maps[2:]), truth, types)
    bad = list(maps)
    bad[5] = np.where(bad[5] > 0, np.nan, bad[5])
    with pytest.raises(ValueError, match=r"NaN or infinite values \(map 5\)"):
        loco_localization(bad, truth, types)


class LazyMaps:
    """N maps of H x W built when read: 0 outside, 1 on each anomalous image's defect rectangle."""

    def __init__(self, n, h, w, anomalous):
        self.n, self.h, self.w, self.anomalous = n, h, w, anomalous

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        out = np.zeros((self.h, self.w), np.float32)
        if i in self.anomalous:
            out[100:300, 200 + i:600 + i] = 1.0
        return out


class LazyTruths(LazyMaps):
    def __getitem__(self, i):
        if i not in self.anomalous:
            return SPROTruth(np.zeros((0, self.h, self.w), bool), np.zeros(0, np.int64), np.zeros(0, np.int64), ())
        return SPROTruth(super().__getitem__(i)[None] > 0, [0], [20000], ("missing_part",))


def test_streaming_memory_is_one_image_not_the_category():
    """100 maps of 800 x 1600 float32 (LOCO's size): 512 MB stacked, plus 128 MB of masks. Streamed, the peak
    is a few copies of one image (5 MB each) and the histograms."""
    n, h, w = 100, 800, 1600
    types = ["good" if i % 2 else ("logical_anomalies" if i % 4 else "structural_anomalies") for i in range(n)]
    anomalous = {i for i, t in enumerate(types) if t != "good"}
    assert n * h * w * 4 > 500e6
    tracemalloc.start()
    try:
        result = loco_localization(LazyMaps(n, h, w, anomalous), LazyTruths(n, h, w, anomalous), types, (0.05, 0.3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 80e6, f"peak {peak / 1e6:.0f} MB"
    # Known answer: every defect pixel scores 1 and every other pixel 0, so sPRO is 1 from FPR 0.
    for name in ("logical_anomalies", "structural_anomalies", "mean"):
        assert result[name] == {0.05: pytest.approx(1.0, abs=1e-9), 0.3: pytest.approx(1.0, abs=1e-9)}
