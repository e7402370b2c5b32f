"""Detection and segmentation metrics: AUROC, AP, F1-max (image and pixel level) and AUPRO.

Host-side NumPy: these run once per evaluation at the I/O edge, on arrays already pulled off the device.
Everything is exact and vectorised (one sort, cumulative sums, no per-threshold loops over pixels). Measured
on 100 x 256 x 256 = 6.5M float32 pixels (2-core CPU): ``pixel_metrics`` about 2 s and 50 bytes per pixel of
peak extra host memory, ``aupro`` about 2 s / 40 bytes per pixel ("mvtec") and 0.4 s / 16 bytes per pixel
("musc"), so a set of 200 x 518 x 518 = 54M pixels needs under 3 GB.

Undefined metrics return ``nan`` and emit a ``RuntimeWarning`` naming the reason, instead of raising, so a
report over many categories still completes:

- AUROC with a single class in ``labels``/``masks``;
- AP and F1-max with no positive;
- AUPRO with no anomalous pixel (no ground-truth region) or no normal pixel, and, for the ``"musc"``
  convention, when fewer than two thresholds with distinct FPR below ``max_fpr`` remain (the min-max
  rescale of the FPRs divides by zero, e.g. for perfect or constant maps).
"""

from __future__ import annotations

import warnings

import numpy as np

_CONVENTIONS = ("mvtec", "musc")
_MUSC_STEPS = 200
_CHUNK_PIXELS = 1 << 22


def _as_scores(x, name: str, ndim: int) -> np.ndarray:
    """Validate a float score array of rank ``ndim``; float32/float64 are kept, anything else -> float64."""
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {a.shape}")
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    elif a.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{name}: expected a real-valued array, got dtype {a.dtype}")
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def as_binary_labels(x, name: str, shape: tuple) -> np.ndarray:
    """Validate a {0, 1} label array of the given shape and return it as bool."""
    a = np.asarray(x)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (matching the scores), got {a.shape}")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected bool or 0/1 values, got dtype {a.dtype}")
    b = a != 0
    if not np.all(a[b] == 1):
        raise ValueError(f"{name}: expected only the values 0 and 1 (binarise masks before evaluation)")
    return b


def _threshold_counts(scores: np.ndarray, labels: np.ndarray):
    """True/false positive counts at every distinct threshold, thresholds descending.

    A sample is predicted positive at threshold t when score >= t (scikit-learn's convention), so a group
    of tied scores enters the positive set all at once. Returns (tps, fps), int64 arrays of length
    (number of distinct scores,).
    """
    scores = scores.ravel()
    order = np.argsort(scores)[::-1]
    s = scores[order]
    y = labels.ravel()[order]
    del order
    tps = np.cumsum(y, dtype=np.int64)
    del y
    ends = np.flatnonzero(s[1:] != s[:-1])
    del s
    ends = np.append(ends, tps.size - 1)
    tps = tps[ends]
    fps = ends + 1 - tps
    return tps, fps


def _warn(msg: str, depth: int) -> float:
    """Emit a RuntimeWarning attributed to the user's call site and return nan.

    depth: how many frames below the public function the caller of ``_warn`` is (0 = the public function).
    """
    warnings.warn(msg, RuntimeWarning, stacklevel=3 + depth)
    return float("nan")


def _curve_metrics(tps: np.ndarray, fps: np.ndarray, where: str) -> dict:
    """AUROC, AP and F1-max from the counts of ``_threshold_counts`` (scikit-learn's definitions).

    AUROC: trapezoid area under (FPR, TPR) from (0, 0), computed in exact integer arithmetic.
    AP: sum over thresholds of (R_k - R_{k-1}) * P_k (no interpolation), as ``average_precision_score``.
    F1-max: max over thresholds of 2PR / (P + R) = 2 TP / (n_pos + TP + FP).
    """
    n_pos = int(tps[-1])
    n_neg = int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        auroc = _warn(f"{where}: AUROC is undefined with a single class (positives {n_pos}, negatives {n_neg})", 1)
    else:
        t0 = np.concatenate(([0], tps[:-1]))
        f0 = np.concatenate(([0], fps[:-1]))
        twice_area = int(np.sum((fps - f0) * (tps + t0)))
        auroc = twice_area / (2.0 * n_pos * n_neg)
    if n_pos == 0:
        ap = _warn(f"{where}: AP is undefined without positives", 1)
        f1 = _warn(f"{where}: F1-max is undefined without positives", 1)
    else:
        t0 = np.concatenate(([0], tps[:-1]))
        precision = tps / (tps + fps)
        ap = float(np.sum((tps - t0) / n_pos * precision))
        f1 = float(np.max(2.0 * tps / (n_pos + tps + fps)))
    return {"auroc": float(auroc), "ap": ap, "f1_max": f1}


def image_metrics(scores, labels) -> dict:
    """Image-level AUROC, AP and F1-max.

    scores: (N,) anomaly scores (higher = more anomalous); labels: (N,) with 1 = anomalous, 0 = normal.
    Ties are handled exactly as scikit-learn's ``roc_auc_score``, ``average_precision_score`` and
    ``precision_recall_curve``. Returns ``{"auroc": float, "ap": float, "f1_max": float}``.
    """
    s = _as_scores(scores, "scores", 1)
    y = as_binary_labels(labels, "labels", s.shape)
    return _curve_metrics(*_threshold_counts(s, y), "image_metrics")


def roc_pr_curves(scores, labels) -> dict:
    """ROC and precision-recall curve points of image scores (N,) and 0/1 labels (N,), thresholds descending.

    Returns fpr and tpr starting at (0, 0), and precision and recall (one point per distinct score), each
    float64, computed from the same counts as ``image_metrics``.
    """
    s = _as_scores(scores, "scores", 1)
    y = as_binary_labels(labels, "labels", s.shape)
    tps, fps = _threshold_counts(s, y)
    n_pos, n_neg = max(int(tps[-1]), 1), max(int(fps[-1]), 1)
    return {
        "fpr": np.concatenate(([0.0], fps / n_neg)),
        "tpr": np.concatenate(([0.0], tps / n_pos)),
        "precision": tps / (tps + fps),
        "recall": tps / n_pos,
    }


def pixel_metrics(maps, masks) -> dict:
    """Pixel-level AUROC, AP and F1-max pooled over every pixel of a set.

    maps: (N, H, W) anomaly maps; masks: (N, H, W) ground truth, True/1 = anomalous pixel.
    Same definitions and tie handling as ``image_metrics``. Returns ``{"auroc", "ap", "f1_max"}``.
    """
    m = _as_scores(maps, "maps", 3)
    g = as_binary_labels(masks, "masks", m.shape)
    return _curve_metrics(*_threshold_counts(m, g), "pixel_metrics")


def label_regions(masks) -> tuple[np.ndarray, int]:
    """Connected components of ground-truth masks, labelled per image.

    masks: (N, H, W) bool. Returns (regions (N, H, W) int32 with 0 = normal and 1..R = region ids unique
    over the whole set, R). 8-connectivity (3 x 3 all-ones structure), as the official MVTec AD evaluation
    (scipy.ndimage.label) and MuSc (skimage.measure.label, full connectivity) both use; regions never
    connect across images.
    """
    from scipy import ndimage

    g = np.asarray(masks, dtype=bool)
    if g.ndim != 3:
        raise ValueError(f"masks: expected (N, H, W), got shape {g.shape}")
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    regions, n = ndimage.label(g, structure=structure)
    return regions.astype(np.int32, copy=False), int(n)


def _max_count_within(max_fpr: float, n_normal: int) -> int:
    """Largest integer K with K / n_normal <= max_fpr, evaluated in float64 like the FPR curve itself."""
    k = int(np.floor(max_fpr * n_normal))
    while k + 1 <= n_normal and (k + 1) / n_normal <= max_fpr:
        k += 1
    while k > 0 and k / n_normal > max_fpr:
        k -= 1
    return k


def area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) for x in [x[0], x_max]; x non-decreasing with x[-1] >= x_max.

    When x_max is not a curve point, y is linearly interpolated at x_max between its two neighbours.
    """
    ins = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:ins], y[:ins]
    area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
    if ins < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


def _aupro_mvtec(maps: np.ndarray, regions: np.ndarray, n_regions: int, max_fpr: float) -> float:
    """Official MVTec AD convention; see ``aupro``."""
    scores = maps.ravel()
    lab = regions.ravel()
    sizes = np.bincount(lab, minlength=n_regions + 1)
    n_normal = int(sizes[0])
    n = scores.size
    order = np.argsort(scores)
    ascending = scores[order]
    order = order[::-1]
    lab_desc = lab[order]
    del order
    normal_cum = np.cumsum(lab_desc == 0, dtype=np.int64)
    # Only the curve up to the first distinct threshold with FPR > max_fpr is needed: cut after that
    # threshold's whole tie group.
    first_over = int(np.searchsorted(normal_cum, _max_count_within(max_fpr, n_normal), side="right"))
    if first_over < n:
        value = ascending[n - 1 - first_over]
        keep = n - int(np.searchsorted(ascending, value, side="left"))
    else:
        keep = n
    desc = ascending[::-1][:keep]
    lab_desc = lab_desc[:keep]
    normal_cum = normal_cum[:keep]
    inv_size = 1.0 / np.maximum(sizes, 1)
    inv_size[0] = 0.0
    pro_cum = np.cumsum(inv_size[lab_desc])
    ends = np.append(np.flatnonzero(desc[1:] != desc[:-1]), keep - 1)
    fpr = np.minimum(normal_cum[ends] / n_normal, 1.0)
    pro = np.minimum(pro_cum[ends] / n_regions, 1.0)
    x = np.concatenate(([0.0], fpr, [1.0]))
    y = np.concatenate(([0.0], pro, [1.0]))
    return area_up_to(x, y, max_fpr) / max_fpr


def _musc_thresholds(maps: np.ndarray) -> np.ndarray:
    """MuSc's thresholds ``np.arange(min, max, (max - min) / 200)``, reproduced bit for bit.

    min, max and the step are computed in the maps' own dtype (float32 maps: a float32 step) and np.arange
    returns float64. Its length is ceil((max - min) / step) in floating point: 200, or 201 when the rounded
    step is slightly below the exact one (about 5% of random inputs). That extra threshold, just below the
    maximum, can change the min-max rescale of the FPRs, so it is kept for parity with MuSc's numbers.
    An empty array means no usable range (constant maps, or a step that underflows to 0).
    """
    lo, hi = maps.min(), maps.max()
    step = (hi - lo) / _MUSC_STEPS
    if not hi > lo or not step > 0:
        return np.zeros(0)
    return np.arange(lo, hi, step)


def _aupro_musc(maps: np.ndarray, regions: np.ndarray, n_regions: int, n_normal: int, max_fpr: float) -> float:
    """MuSc code convention; see ``aupro``."""
    thresholds = _musc_thresholds(maps)
    if thresholds.size == 0:
        return _warn("aupro(convention='musc'): constant maps leave no threshold range; returning nan", 1)
    steps = thresholds.size
    inv_size = 1.0 / np.maximum(np.bincount(regions.ravel(), minlength=n_regions + 1), 1)
    inv_size[0] = 0.0
    normal_hist = np.zeros(steps + 1, dtype=np.int64)
    overlap_hist = np.zeros(steps + 1, dtype=np.float64)
    flat_maps = maps.reshape(-1)
    flat_regions = regions.reshape(-1)
    for start in range(0, flat_maps.size, _CHUNK_PIXELS):
        s = flat_maps[start:start + _CHUNK_PIXELS]
        r = flat_regions[start:start + _CHUNK_PIXELS]
        # below[p] = number of thresholds strictly below the score: pixel p is positive (score > t_i)
        # exactly for i < below[p].
        below = np.searchsorted(thresholds, s.astype(np.float64), side="left")
        normal = r == 0
        normal_hist += np.bincount(below[normal], minlength=steps + 1)
        overlap_hist += np.bincount(below[~normal], weights=inv_size[r[~normal]], minlength=steps + 1)
    # Positives at threshold i: pixels with below > i, i.e. the suffix sum from bin i + 1.
    fp = np.cumsum(normal_hist[::-1])[::-1][1:]
    overlap = np.cumsum(overlap_hist[::-1])[::-1][1:]
    fpr = fp / n_normal
    pro = overlap / n_regions
    kept = fpr < max_fpr
    # Thresholds descending -> FPR non-decreasing (the order sklearn.metrics.auc integrates MuSc's curve in).
    f = fpr[kept][::-1]
    p = pro[kept][::-1]
    if f.size < 2 or f[-1] == f[0]:
        return _warn(
            f"aupro(convention='musc'): fewer than two distinct FPR values below max_fpr={max_fpr} "
            "(the min-max rescale of FPR is undefined); returning nan",
            1,
        )
    f = (f - f[0]) / (f[-1] - f[0])
    return float(np.sum(0.5 * (p[1:] + p[:-1]) * np.diff(f)))


def aupro(maps, masks, max_fpr: float = 0.3, convention: str = "mvtec") -> float:
    """Area under the per-region-overlap (PRO) curve up to a false positive rate ``max_fpr``.

    maps: (N, H, W) anomaly maps (higher = more anomalous); masks: (N, H, W) bool ground truth.
    Regions are the 8-connected components of each image's mask (``label_regions``). At a threshold t,
    PRO(t) = mean over all regions of the set of |region & (map > or >= t)| / |region|, and
    FPR(t) = (normal pixels predicted anomalous) / (all normal pixels of the set).

    convention="mvtec" (default; the official MVTec AD evaluation script): a pixel is positive when
    map >= t; the curve is evaluated at every distinct map value, with (0, 0) prepended and (1, 1)
    appended; the trapezoid area from FPR 0 to exactly ``max_fpr`` (PRO linearly interpolated at
    ``max_fpr`` when no threshold hits it) is divided by ``max_fpr``. Perfect maps give 1.0.

    convention="musc" (MuSc's ``cal_pro_score``): with lo/hi the min/max over all maps of the set, the
    thresholds are ``np.arange(lo, hi, (hi - lo) / 200)`` exactly as MuSc computes them (200 of them, or 201
    when floating-point rounding of the step adds one just below hi; see ``_musc_thresholds``), a pixel is
    positive when map > t; points with FPR < max_fpr (strict) are kept, their FPRs min-max rescaled to
    [0, 1], and PRO integrated over them with the trapezoid rule in order of decreasing threshold (the
    result is not divided by anything). Undefined (nan) when fewer than two distinct FPR values are kept,
    which includes perfect maps (every kept FPR is 0).

    Returns a float; nan with a RuntimeWarning when there is no region or no normal pixel.
    """
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention: expected one of {_CONVENTIONS}, got {convention!r}")
    if not 0.0 < float(max_fpr) <= 1.0:
        raise ValueError(f"max_fpr: expected a value in (0, 1], got {max_fpr}")
    max_fpr = float(max_fpr)
    m = _as_scores(maps, "maps", 3)
    g = as_binary_labels(masks, "masks", m.shape)
    regions, n_regions = label_regions(g)
    n_normal = int(g.size - np.count_nonzero(g))
    if n_regions == 0:
        return _warn("aupro: masks contain no anomalous pixel, PRO is undefined; returning nan", 0)
    if n_normal == 0:
        return _warn("aupro: masks contain no normal pixel, FPR is undefined; returning nan", 0)
    if convention == "mvtec":
        return _aupro_mvtec(m, regions, n_regions, max_fpr)
    return _aupro_musc(m, regions, n_regions, n_normal, max_fpr)
