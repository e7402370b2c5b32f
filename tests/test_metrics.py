"""jzad.eval.metrics against scikit-learn and slow, obviously-correct AUPRO implementations written here."""

import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from jzad.eval import metrics


def sklearn_metrics(scores, labels) -> dict:
    """AUROC, AP and F1-max the way MuSc's compute_metrics takes them from scikit-learn."""
    y, s = np.ravel(labels).astype(int), np.ravel(scores)
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return {"auroc": roc_auc_score(y, s), "ap": average_precision_score(y, s), "f1_max": np.max(f1[np.isfinite(f1)])}


def flood_fill_regions(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """8-connected components of one (H, W) bool mask by a stack flood fill: list of (ys, xs) index arrays."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, pixels = [(y0, x0)], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        ys, xs = zip(*pixels)
        regions.append((np.array(ys), np.array(xs)))
    return regions


def all_regions(masks: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    return [(i, ys, xs) for i, m in enumerate(masks) for ys, xs in flood_fill_regions(m)]


def pro_and_fpr(binary: np.ndarray, masks: np.ndarray, regions) -> tuple[float, float]:
    """Mean per-region overlap and false positive rate of one binary prediction (N, H, W)."""
    pro = np.mean([binary[i, ys, xs].mean() for i, ys, xs in regions])
    normal = ~masks
    return float(pro), float((binary & normal).sum() / normal.sum())


def slow_aupro_mvtec(maps, masks, max_fpr=0.3) -> float:
    """Official MVTec definition: curve at every distinct threshold (map >= t), (0,0) and (1,1) added,
    trapezoids up to max_fpr with linear interpolation at max_fpr, divided by max_fpr."""
    regions = all_regions(masks)
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pro, fpr = pro_and_fpr(maps >= t, masks, regions)
        points.append((fpr, pro))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= max_fpr:
            break
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_at) / 2
            break
    return area / max_fpr


def slow_aupro_musc(maps, masks, max_fpr=0.3, steps=200) -> float:
    """MuSc's cal_pro_score: np.arange(min, max, (max - min) / 200) thresholds, map > t, keep FPR < max_fpr,
    min-max rescale the kept FPRs, sklearn.metrics.auc."""
    regions = all_regions(masks)
    lo, hi = maps.min(), maps.max()
    pros, fprs = [], []
    for t in np.arange(lo, hi, (hi - lo) / steps):
        pro, fpr = pro_and_fpr(maps > t, masks, regions)
        pros.append(pro)
        fprs.append(fpr)
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < max_fpr
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return auc(f, pros[keep])


def random_masks(rng, n, h, w) -> np.ndarray:
    """Blobs and specks (8-connected diagonals included) in all but the first image."""
    masks = rng.random((n, h, w)) < 0.08
    for i in range(1, n):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        masks[i, y:y + rng.integers(2, 5), x:x + rng.integers(2, 6)] = True
    masks[0] = False
    return masks


def random_maps(rng, masks, dtype, levels=None) -> np.ndarray:
    maps = rng.random(masks.shape) + masks * rng.uniform(0.2, 1.0)
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(dtype)


# ---------------------------------------------------------------- image and pixel metrics vs scikit-learn


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, 7])
def test_image_metrics_match_sklearn(seed, levels):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 90))
    labels = rng.random(n) < 0.4
    labels[:2] = [True, False]
    scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
    if levels is not None:
        scores = np.round(scores * levels / 4) / levels  # heavy ties
    got = metrics.image_metrics(scores, labels.astype(np.int64))
    want = sklearn_metrics(scores, labels)
    for key in ("auroc", "ap", "f1_max"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_match_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    masks = random_masks(rng, 5, 17, 23)
    maps = random_maps(rng, masks, np.float32, levels=[None, 30, 5][seed])
    got = metrics.pixel_metrics(maps, masks)
    want = sklearn_metrics(maps, masks)
    for key in ("auroc", "ap", "f1_max"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_constant_scores_match_sklearn():
    labels = np.array([0, 1, 1, 0, 0, 1, 0])
    got = metrics.image_metrics(np.full(7, 0.25), labels)
    want = sklearn_metrics(np.full(7, 0.25), labels)
    assert got["auroc"] == 0.5
    assert got["ap"] == pytest.approx(want["ap"]) and got["ap"] == pytest.approx(3 / 7)
    assert got["f1_max"] == pytest.approx(want["f1_max"]) and got["f1_max"] == pytest.approx(2 * 3 / (3 + 7))


def test_inputs_from_jax_and_bool_scores():
    import jax.numpy as jnp

    labels = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.8, 0.3, 0.3, 0.9, 0.2], np.float32)
    got = metrics.image_metrics(jnp.asarray(scores), jnp.asarray(labels))
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    as_bool = metrics.image_metrics(scores > 0.5, labels.astype(bool))
    assert as_bool["auroc"] == pytest.approx(roc_auc_score(labels, scores > 0.5))


def test_single_class_gives_nan_with_warning():
    scores = np.array([0.1, 0.4, 0.3])
    with pytest.warns(RuntimeWarning) as record:
        got = metrics.image_metrics(scores, np.zeros(3, int))
    assert all(np.isnan(v) for v in got.values())
    assert [str(w.message).split(": ")[1].split(" is")[0] for w in record] == ["AUROC", "AP", "F1-max"]
    assert all(w.filename == __file__ for w in record)  # attributed to the caller
    with pytest.warns(RuntimeWarning, match="AUROC is undefined") as record:
        got = metrics.image_metrics(scores, np.ones(3, int))
    assert len(record) == 1 and np.isnan(got["auroc"])
    assert got["ap"] == 1.0 and got["f1_max"] == 1.0  # all positive: defined, as scikit-learn
    with pytest.warns(RuntimeWarning) as record:
        got = metrics.pixel_metrics(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4), bool))
    assert len(record) == 3 and all(str(w.message).startswith("pixel_metrics: ") for w in record)
    assert np.isnan(got["auroc"]) and np.isnan(got["ap"]) and np.isnan(got["f1_max"])


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        (np.zeros(3), np.array([0, 1]), "labels: expected shape"),
        (np.zeros(3), np.array([0, 2, 1]), "only the values 0 and 1"),
        (np.array([0.1, np.nan, 0.2]), np.array([0, 1, 0]), "NaN or infinite"),
        (np.zeros((3, 1)), np.zeros((3, 1)), "expected a 1-D array"),
        (np.zeros(0), np.zeros(0), "non-empty"),
        (np.array(["a", "b"]), np.array([0, 1]), "real-valued"),
    ],
)
def test_image_metrics_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.image_metrics(scores, labels)


def test_pixel_metrics_bad_input():
    with pytest.raises(ValueError, match=r"masks: expected shape \(2, 4, 4\)"):
        metrics.pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="maps: expected a 3-D array"):
        metrics.pixel_metrics(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="binarise masks"):
        metrics.pixel_metrics(np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.5))


# ---------------------------------------------------------------- regions and AUPRO


@pytest.mark.parametrize("seed", range(3))
def test_label_regions_matches_flood_fill(seed):
    rng = np.random.default_rng(200 + seed)
    masks = rng.random((4, 13, 11)) < 0.3
    masks[1, 0, :] = True
    masks[2, -1, :] = True  # regions on the image edges must not connect across images
    regions, count = metrics.label_regions(masks)
    assert regions.shape == masks.shape and regions.dtype == np.int32
    assert np.array_equal(regions > 0, masks)
    expected = all_regions(masks)
    assert count == len(expected) == regions.max()
    assert sorted(np.unique(regions[regions > 0]).tolist()) == list(range(1, count + 1))
    for i, ys, xs in expected:
        ids = regions[i, ys, xs]
        assert np.all(ids == ids[0])
        assert np.count_nonzero(regions == ids[0]) == ys.size  # exactly this component, nothing else


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aupro_mvtec_matches_slow_reference(seed, dtype):
    rng = np.random.default_rng(300 + seed)
    masks = random_masks(rng, 4, 12, 14)
    maps = random_maps(rng, masks, dtype, levels=[None, 40, 8, None, 15][seed])
    for max_fpr in (0.3, 0.05, 1.0):
        got = metrics.aupro(maps, masks, max_fpr=max_fpr)
        assert got == pytest.approx(slow_aupro_mvtec(maps, masks, max_fpr), abs=1e-9), max_fpr


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aupro_musc_matches_slow_reference(seed, dtype):
    rng = np.random.default_rng(400 + seed)
    masks = random_masks(rng, 4, 12, 14)
    maps = random_maps(rng, masks, dtype, levels=[None, 40, 8, None, 15][seed])
    got = metrics.aupro(maps, masks, convention="musc")
    assert got == pytest.approx(slow_aupro_musc(maps, masks), abs=1e-9)
    assert metrics.aupro(maps, masks, max_fpr=0.5, convention="musc") == pytest.approx(
        slow_aupro_musc(maps, masks, max_fpr=0.5), abs=1e-9)


def test_aupro_musc_keeps_numpy_arange_extra_threshold():
    """np.arange(min, max, step) sometimes yields 201 thresholds; MuSc's numbers include the extra one."""
    rng = np.random.default_rng(5)
    found = 0
    while found < 2:
        masks = rng.random((2, 8, 8)) < 0.2
        maps = rng.random((2, 8, 8))
        lo, hi = maps.min(), maps.max()
        if len(np.arange(lo, hi, (hi - lo) / 200)) != 201:
            continue
        masks[np.unravel_index(np.argmax(maps), maps.shape)] = True  # the maximum is anomalous
        normal = tuple(np.argwhere(~masks)[0])
        maps[normal] = hi - (hi - lo) / 400  # a normal pixel between the 200th and 201st thresholds
        if len(np.arange(lo, hi, (hi - lo) / 200)) != 201:
            continue
        want = slow_aupro_musc(maps, masks)
        assert metrics.aupro(maps, masks, convention="musc") == pytest.approx(want, abs=1e-12)
        # The 201st threshold matters here: 200 evenly spaced thresholds give a different number.
        regions = all_regions(masks)
        pts = np.array([pro_and_fpr(maps > lo + i * (hi - lo) / 200, masks, regions) for i in range(200)])
        keep = pts[:, 1] < 0.3
        f = pts[keep, 1]
        assert abs(auc((f - f.min()) / (f.max() - f.min()), pts[keep, 0]) - want) > 1e-4
        found += 1


def test_aupro_known_answers():
    # One image, 5 pixels, a 2-pixel region; curve (0,0) (0,.5) (1/3,.5) (2/3,.5) (2/3,1) (1,1) (1,1).
    maps = np.array([[[0.5, 0.9, 0.3, 0.7, 0.1]]])
    masks = np.array([[[0, 1, 1, 0, 0]]])
    assert metrics.aupro(maps, masks) == pytest.approx(0.5)
    assert metrics.aupro(maps, masks, max_fpr=0.5) == pytest.approx(0.5)
    assert metrics.aupro(maps, masks, max_fpr=1.0) == pytest.approx(2 / 3)
    rng = np.random.default_rng(7)
    masks = random_masks(rng, 3, 9, 9)
    # Constant maps: one point (1, 1), so the curve is the diagonal: 0.3^2 / 2 / 0.3 = 0.15.
    assert metrics.aupro(np.full(masks.shape, 2.0), masks) == pytest.approx(0.15)
    # Perfect maps reach PRO 1 at FPR 0.
    assert metrics.aupro(masks.astype(np.float32), masks) == pytest.approx(1.0)
    # Inverted perfect maps: PRO stays 0 until FPR 1.
    assert metrics.aupro(1.0 - masks, masks) == pytest.approx(0.0)


def test_aupro_undefined_cases_warn():
    rng = np.random.default_rng(8)
    masks = random_masks(rng, 3, 9, 9)
    with pytest.warns(RuntimeWarning, match="no anomalous pixel"):
        assert np.isnan(metrics.aupro(rng.random((2, 5, 5)), np.zeros((2, 5, 5), bool)))
    with pytest.warns(RuntimeWarning, match="no normal pixel"):
        assert np.isnan(metrics.aupro(rng.random((2, 5, 5)), np.ones((2, 5, 5), bool)))
    with pytest.warns(RuntimeWarning, match="constant maps") as record:
        assert np.isnan(metrics.aupro(np.ones(masks.shape), masks, convention="musc"))
    assert record[0].filename == __file__
    with pytest.warns(RuntimeWarning, match="fewer than two distinct FPR"):
        assert np.isnan(metrics.aupro(masks.astype(float), masks, convention="musc"))


def test_aupro_bad_arguments():
    maps, masks = np.zeros((1, 3, 3)), np.eye(3, dtype=bool)[None]
    with pytest.raises(ValueError, match="convention"):
        metrics.aupro(maps, masks, convention="official")
    with pytest.raises(ValueError, match="max_fpr"):
        metrics.aupro(maps, masks, max_fpr=0.0)
    with pytest.raises(ValueError, match="max_fpr"):
        metrics.aupro(maps, masks, max_fpr=1.5)
    with pytest.raises(ValueError, match="masks: expected shape"):
        metrics.aupro(maps, masks[:, :2])


# ---------------------------------------------------------------- realistic size: 100 x 256 x 256 pixels


def level_reference(levels: np.ndarray, masks: np.ndarray, regions: np.ndarray, n_regions: int, values):
    """Metrics of maps whose pixels take the values ``values[levels]`` (ascending), from per-level histograms:
    no sort, so it checks the sorted/cumulative-count code independently (ties everywhere)."""
    k = len(values)
    pos = np.bincount(levels[masks], minlength=k).astype(np.float64)
    neg = np.bincount(levels[~masks], minlength=k).astype(np.float64)
    # Predicted positive at threshold values[j] (>=): levels >= j -> suffix sums.
    tp, fp = np.cumsum(pos[::-1])[::-1], np.cumsum(neg[::-1])[::-1]
    n_pos, n_neg = tp[0], fp[0]
    tpr, fpr = np.append(tp, 0)[::-1] / n_pos, np.append(fp, 0)[::-1] / n_neg
    roc = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    present = (pos + neg) > 0
    prec, rec = tp[present] / (tp + fp)[present], tp[present] / n_pos
    ap = np.sum(-np.diff(np.append(rec, 0)) * prec)
    f1 = np.max(2 * prec * rec / (prec + rec))
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)
    per_region = np.zeros((n_regions + 1, k))
    np.add.at(per_region, (regions[masks], levels[masks]), 1.0)
    overlap_at_least = np.cumsum(per_region[1:, ::-1], axis=1)[:, ::-1] / sizes[1:, None]
    return {"auroc": roc, "ap": ap, "f1_max": f1}, overlap_at_least.mean(axis=0), fp / n_neg


def test_realistic_size_matches_histogram_reference_in_bounded_memory():
    rng = np.random.default_rng(11)
    n, h, w, k = 100, 256, 256, 256
    masks = np.zeros((n, h, w), bool)
    yy, xx = np.ogrid[:h, :w]
    for i in range(50):
        for _ in range(int(rng.integers(1, 4))):
            cy, cx, r = rng.integers(20, 236), rng.integers(20, 236), rng.integers(3, 25)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    levels = np.clip(rng.normal(100, 40, (n, h, w)) + masks * rng.uniform(20, 80), 0, k - 1).astype(np.int64)
    values = np.linspace(0.0, 1.0, k).astype(np.float32)
    maps = values[levels]
    regions, n_regions = metrics.label_regions(masks)
    want, pro_per_level, fpr_per_level = level_reference(levels, masks, regions, n_regions, values)

    tracemalloc.start()
    got = metrics.pixel_metrics(maps, masks)
    _, peak_pixel = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    got_mvtec = metrics.aupro(maps, masks)
    _, peak_mvtec = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    got_musc = metrics.aupro(maps, masks, convention="musc")
    _, peak_musc = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for peak in (peak_pixel, peak_mvtec, peak_musc):
        assert peak < 64 * maps.size, f"peak {peak / maps.size:.1f} bytes per pixel"

    for key in ("auroc", "ap", "f1_max"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    # MVTec: curve points at every level (>=), descending thresholds.
    x = np.concatenate(([0.0], fpr_per_level[::-1], [1.0]))
    y = np.concatenate(([0.0], pro_per_level[::-1], [1.0]))
    cut = np.searchsorted(x, 0.3, side="right")
    y_at = np.interp(0.3, x[cut - 1:cut + 1], y[cut - 1:cut + 1])
    xs, ys = np.append(x[:cut], 0.3), np.append(y[:cut], y_at)
    assert got_mvtec == pytest.approx(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2) / 0.3, abs=1e-9)
    # MuSc: map > t is level >= (first level whose value exceeds t).
    lo, hi = maps.min(), maps.max()
    thresholds = np.arange(lo, hi, (hi - lo) / 200)
    first = np.searchsorted(values.astype(np.float64), thresholds, side="right")
    fprs, pros = fpr_per_level[first], pro_per_level[first]
    keep = fprs < 0.3
    f = fprs[keep]
    assert got_musc == pytest.approx(auc((f - f.min()) / (f.max() - f.min()), pros[keep]), abs=1e-9)
    assert 0.3 < got_musc < 0.99 and 0.3 < got_mvtec < 0.99 and 0.6 < got["auroc"] < 0.99


def test_warnings_filter_stays_clean():
    """Defined metrics emit no warning at all (no stray divide-by-zero from NumPy either)."""
    rng = np.random.default_rng(12)
    masks = random_masks(rng, 3, 10, 10)
    maps = random_maps(rng, masks, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.pixel_metrics(maps, masks)
        metrics.aupro(maps, masks)
        metrics.aupro(maps, masks, convention="musc")
        metrics.image_metrics(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)))
