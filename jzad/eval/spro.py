"""MVTec LOCO metrics: the saturated per-region overlap (sPRO) curve, its area, and image AUROCs.

What the official MVTec LOCO AD evaluation computes (its ``src/image.py``, ``src/metrics.py``,
``src/aggregation.py``, ``src/util.py`` and ``evaluate_experiment.py``), reproduced here:

- Ground truth: each anomalous image has one or more channels (one PNG each); a channel is one defect, its
  nonzero pixels share one value, which names the defect's entry in ``defects_config.json``.
- Saturation area of a channel of area A: ``int(saturation_threshold * A)`` when ``relative_saturation``,
  else ``min(saturation_threshold, A)``.
- At an anomaly threshold t a pixel is positive when map > t (strict). sPRO of a channel =
  min(TP area / saturation area, 1); the curve's sPRO(t) = mean over every channel of the evaluated images.
- FPR(t) = positive pixels that are defect-free in every channel / all such pixels, summed over the evaluated
  images: good images and the defect-free parts of anomalous images alike.
- The curve starts at (0, 0) (threshold above every score) and ends at (1, 1) (below every score); its
  trapezoid area up to ``max_fpr`` (sPRO interpolated linearly at max_fpr when no point lands on it) is
  divided by ``max_fpr``. Limits 0.01, 0.05, 0.1, 0.3 and 1; 0.05 is the number MVTec LOCO papers report.
- Per sub-directory: "logical_anomalies" and "structural_anomalies" are each evaluated together with all
  "good" images; "mean" is the average of the two.

One difference in how, not what: the official script picks thresholds adaptively (50 quantiles, then
refining until neighbouring curve points are within ``curve_max_distance``, 0.01 by default), so it
approximates the curve. Here every threshold is exact: with ``thresholds=None`` the curve is evaluated at
every distinct score when the set has at most ``max_thresholds`` pixels, else at the distinct values of an
evenly strided sample of ``max_thresholds`` scores (each step of the curve then holds about
pixels / max_thresholds pixels, far finer than the official refinement).

Exactness with saturation: for a channel with saturation area S, TP(t) is the number of its pixels scoring
above t, so min(TP / S, 1) = (number of its S highest-scoring pixels above t) / S. Giving each of those S
pixels the weight 1 / S (ties broken arbitrarily: whole tie groups cross a threshold together) turns the
sPRO into a weighted pixel count, which one ``np.bincount`` per image accumulates over all thresholds.

Image level (``loco_image_metrics``): AUROC of the image scores of good against logical, good against
structural (the official pair and their mean) and good against both together (the CLIP-LAD paper's number).
Ties are handled as scikit-learn does; the official script's ROC adds its point after the first member of a
tie group instead, which differs only when good and anomalous images share a score.

Streaming over images: every function reads ``maps`` one image at a time (``maps[i]``), so maps may be an
(N, H, W) array or any sequence of (H, W) maps that builds each on demand (e.g. resized to the original size
as it is read), and the truth may be one SPROTruth of the set or a sequence of one-image SPROTruths decoded on
demand. The saturated overlaps and defect-free pixels of each image land in per-threshold histograms, so with
lazy sequences host memory is one image's maps and channels plus the (thresholds,) histograms and curve,
whatever the number of images. Choosing thresholds reads the maps once more (the sample positions and the
distinct values are the same as over the stacked array, so the thresholds are identical).

Host-side NumPy, at the I/O edge, like ``jzad.eval.metrics``.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Sequence

import numpy as np

from jzad.data.spro_truth import SPROTruth
from jzad.eval.metrics import area_up_to, image_metrics

OFFICIAL_MAX_FPRS = (0.01, 0.05, 0.1, 0.3, 1.0)
"""The integration limits of the official evaluation; 0.05 is the headline number."""

LOCO_TYPES = ("good", "logical_anomalies", "structural_anomalies")

class SPROCurve(NamedTuple):
    """The FPR-sPRO curve, thresholds descending: thresholds (T,), fpr (T + 2,), spro (T + 2,) with the
    (0, 0) start and (1, 1) end points around the T threshold points."""

    thresholds: np.ndarray
    fpr: np.ndarray
    spro: np.ndarray


def _check_maps(maps) -> tuple[int, tuple[int, int]]:
    """(N, (H, W)) of an (N, H, W) array or a sequence of (H, W) maps; checks the first map only (each map
    is checked as it is read, by ``_map``)."""
    if isinstance(maps, np.ndarray) and (maps.ndim != 3 or maps.size == 0):
        raise ValueError(f"maps must be a non-empty (N, H, W) array, got shape {maps.shape}")
    if len(maps) == 0:
        raise ValueError("maps must hold at least one (H, W) map")
    first = _map(maps, 0, None)
    return len(maps), first.shape


def _map(maps, i: int, shape) -> np.ndarray:
    """maps[i], checked: a real-valued finite (H, W) array of the set's shape."""
    m = np.asarray(maps[i])
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"maps must be (N, H, W); map {i} has shape {m.shape}")
    if not np.issubdtype(m.dtype, np.floating) and not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"maps must be real-valued, got dtype {m.dtype}")
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"maps must share one size: map {i} is {m.shape}, map 0 {tuple(shape)}")
    if not np.isfinite(m).all():
        raise ValueError(f"maps contain NaN or infinite values (map {i})")
    return m


def _truth_reader(truth, n: int, shape) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """truth: one SPROTruth of the N images, or a sequence of N one-image SPROTruths (each image_index 0) ->
    i -> (masks (C, H, W) bool, saturation (C,)) of image i, checked against the maps' size."""
    def checked(masks, i):
        if masks.shape[1:] != tuple(shape):
            raise ValueError(
                f"ground truth is {masks.shape[1:]} but maps are {tuple(shape)} (image {i}); sPRO is evaluated at "
                "the original image size (resize the maps, not the masks)"
            )
        return masks

    if isinstance(truth, SPROTruth):
        checked(truth.masks, 0)
        if len(truth) and truth.image_index.max() >= n:
            raise ValueError(f"truth refers to image {truth.image_index.max()} but there are {n} maps")
        by_image: dict[int, list[int]] = {}
        for d, i in enumerate(truth.image_index):
            by_image.setdefault(int(i), []).append(d)
        return lambda i: (truth.masks[by_image.get(i, [])], truth.saturation[by_image.get(i, [])])
    if isinstance(truth, (str, bytes)) or not hasattr(truth, "__getitem__") or not hasattr(truth, "__len__"):
        raise ValueError(f"truth must be an SPROTruth or a sequence of one-image SPROTruths, got "
                         f"{type(truth).__name__}")
    if len(truth) != n:
        raise ValueError(f"truth has {len(truth)} images but there are {n} maps")

    def read(i):
        one = truth[i]
        if not isinstance(one, SPROTruth) or (len(one) and one.image_index.max() != 0):
            raise ValueError(f"truth[{i}] must be the SPROTruth of one image (image_index 0), got "
                             f"{type(one).__name__}")
        return checked(one.masks, i), one.saturation

    return read


def choose_thresholds(maps, max_thresholds: int = 1 << 20) -> np.ndarray:
    """Ascending distinct thresholds: every distinct score, or those of an evenly strided sample of
    ``max_thresholds`` scores (global min and max included) when the maps hold more pixels. The sample is
    taken image by image at the positions the stacked array's stride would hit."""
    if max_thresholds < 2:
        raise ValueError(f"max_thresholds must be >= 2, got {max_thresholds}")
    n, shape = _check_maps(maps)
    pixels = shape[0] * shape[1]
    total = n * pixels
    stride = 1 if total <= max_thresholds else -(-total // max_thresholds)
    parts, low, high = [], None, None
    for i in range(n):
        flat = _map(maps, i, shape).reshape(-1)
        if stride == 1:
            parts.append(np.unique(flat))
            continue
        parts.append(flat[(-i * pixels) % stride::stride].copy())  # a copy: a view would keep the map alive
        low = flat.min() if low is None else min(low, flat.min())
        high = flat.max() if high is None else max(high, flat.max())
    if stride > 1:
        parts.append(np.asarray([low, high], dtype=parts[0].dtype))
    return np.unique(np.concatenate(parts))


def _group_histograms(maps, truth_of, groups, num_groups, thresholds, check=None):
    """Per group g: (normal pixel counts per bin (g, T + 1), sPRO weight per bin (g, T + 1), normal pixels (g,),
    channels (g,)). Bin b holds pixels with exactly b thresholds strictly below their score. Reads one image's
    map and channels at a time; check(i, channels) may reject an image."""
    n, shape = len(maps), None
    bins_total = thresholds.size + 1
    normal_hist = np.zeros((num_groups, bins_total), np.int64)
    spro_hist = np.zeros((num_groups, bins_total), np.float64)
    normal_count = np.zeros(num_groups, np.int64)
    channel_count = np.zeros(num_groups, np.int64)
    for i in range(n):
        g = int(groups[i])
        if g < 0:
            continue
        scores = _map(maps, i, shape)
        shape = scores.shape
        scores = scores.reshape(-1)
        masks, saturation = truth_of(i)
        if check is not None:
            check(i, len(masks))
        bins = np.searchsorted(thresholds, scores, side="left")
        if len(masks):
            weight = np.zeros(scores.size, np.float64)
            defect = np.zeros(scores.size, bool)
            for mask, sat in zip(masks, saturation):
                pixels = np.flatnonzero(mask.reshape(-1))
                sat = int(sat)
                top = pixels[np.argsort(-scores[pixels], kind="stable")[:sat]]
                weight[top] += 1.0 / sat
                defect[pixels] = True
            normal = ~defect
            spro_hist[g] += np.bincount(bins[defect], weights=weight[defect], minlength=bins_total)
            channel_count[g] += len(masks)
        else:
            normal = np.ones(scores.size, bool)
        normal_hist[g] += np.bincount(bins[normal], minlength=bins_total)
        normal_count[g] += int(normal.sum())
    return normal_hist, spro_hist, normal_count, channel_count


def _curve(normal_hist, spro_hist, normal_count, channel_count, thresholds, where: str) -> SPROCurve | None:
    """Curve of one (summed) group; None with a RuntimeWarning when FPR or sPRO is undefined."""
    if normal_count == 0:
        warnings.warn(f"{where}: no defect-free pixel, FPR is undefined", RuntimeWarning, stacklevel=3)
        return None
    if channel_count == 0:
        warnings.warn(f"{where}: no ground-truth defect, sPRO is undefined", RuntimeWarning, stacklevel=3)
        return None
    # Positives at threshold j (ascending index) are the pixels in bins > j: suffix sums from bin j + 1.
    normal_pos = np.cumsum(normal_hist[::-1])[::-1][1:]
    spro_pos = np.cumsum(spro_hist[::-1])[::-1][1:]
    fpr = normal_pos[::-1] / normal_count
    spro = np.minimum(spro_pos[::-1] / channel_count, 1.0)
    return SPROCurve(
        thresholds[::-1].copy(),
        np.concatenate(([0.0], fpr, [1.0])),
        np.concatenate(([0.0], spro, [1.0])),
    )


def _resolve_thresholds(maps, thresholds, max_thresholds) -> np.ndarray:
    if thresholds is None:
        return choose_thresholds(maps, max_thresholds)
    t = np.unique(np.asarray(thresholds, dtype=np.float64).reshape(-1))
    if t.size == 0 or not np.isfinite(t).all():
        raise ValueError("thresholds must be a non-empty array of finite values")
    return t


def spro_curve(maps, truth: SPROTruth, thresholds=None, max_thresholds: int = 1 << 20) -> SPROCurve | None:
    """The FPR-sPRO curve of all N images together (see the module docstring).

    maps: (N, H, W) anomaly maps at the ground truth's size, or a sequence of N (H, W) maps; truth: their
    SPROTruth or a sequence of one-image SPROTruths. thresholds: explicit anomaly thresholds (any order,
    deduplicated), else chosen by ``choose_thresholds(maps, max_thresholds)``. Returns None with a
    RuntimeWarning when there is no defect-free pixel or no defect.
    """
    n, shape = _check_maps(maps)
    truth_of = _truth_reader(truth, n, shape)
    t = _resolve_thresholds(maps, thresholds, max_thresholds)
    hists = _group_histograms(maps, truth_of, np.zeros(n, np.int64), 1, t)
    return _curve(*(h[0] for h in hists), t, "spro_curve")


def auc_spro(curve: SPROCurve, max_fpr: float) -> float:
    """Area under the curve from FPR 0 to ``max_fpr``, divided by max_fpr (the official normalisation)."""
    if not 0.0 < float(max_fpr) <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    return area_up_to(np.asarray(curve.fpr), np.asarray(curve.spro), float(max_fpr)) / float(max_fpr)


def _check_types(defect_types, n: int) -> np.ndarray:
    types = np.asarray([str(t) for t in defect_types])
    if types.shape != (n,):
        raise ValueError(f"defect_types must have one entry per image ({n}), got {types.shape[0]}")
    unknown = sorted(set(types.tolist()) - set(LOCO_TYPES))
    if unknown:
        raise ValueError(f"defect_types must be among {LOCO_TYPES}, got {unknown}")
    return types


def loco_localization(
    maps,
    truth: SPROTruth,
    defect_types: Sequence[str],
    max_fprs: Sequence[float] = OFFICIAL_MAX_FPRS,
    thresholds=None,
    max_thresholds: int = 1 << 20,
) -> dict:
    """AUC-sPRO as the official script reports it: {"logical_anomalies": {max_fpr: auc}, "structural_anomalies":
    {...}, "mean": {...}}, each anomaly type evaluated together with all good images.

    maps: (N, H, W) at the original image size, or a sequence of N (H, W) maps built on demand; truth:
    SPROTruth of the N images, or a sequence of N one-image SPROTruths read on demand (module docstring:
    streaming); defect_types: (N,) among ``LOCO_TYPES``. Good images must have no channel and anomalous
    images at least one. A type without images gives nan entries (and so does "mean") with a RuntimeWarning.
    """
    n, shape = _check_maps(maps)
    truth_of = _truth_reader(truth, n, shape)
    types = _check_types(defect_types, n)
    limits = tuple(float(f) for f in max_fprs)
    if not limits or any(not 0.0 < f <= 1.0 for f in limits):
        raise ValueError(f"max_fprs must be values in (0, 1], got {tuple(max_fprs)}")
    if isinstance(truth, SPROTruth):  # every channel is at hand: report all offenders at once
        has_channel = np.zeros(n, bool)
        has_channel[truth.image_index] = True
        good = types == "good"
        if np.any(good & has_channel):
            raise ValueError(f"good images {np.flatnonzero(good & has_channel).tolist()} have ground-truth channels")
        if np.any(~good & ~has_channel):
            missing = np.flatnonzero(~good & ~has_channel).tolist()
            raise ValueError(f"anomalous images {missing} have no ground-truth channel")

    def check(i: int, channels: int) -> None:
        if types[i] == "good" and channels:
            raise ValueError(f"good images [{i}] have ground-truth channels")
        if types[i] != "good" and not channels:
            raise ValueError(f"anomalous images [{i}] have no ground-truth channel")

    t = _resolve_thresholds(maps, thresholds, max_thresholds)
    groups = np.array([LOCO_TYPES.index(x) for x in types])
    normal_hist, spro_hist, normal_count, channel_count = _group_histograms(maps, truth_of, groups, 3, t, check)
    results = {}
    for g, name in ((1, "logical_anomalies"), (2, "structural_anomalies")):
        curve = None
        if channel_count[g]:
            curve = _curve(
                normal_hist[0] + normal_hist[g], spro_hist[0] + spro_hist[g],
                normal_count[0] + normal_count[g], channel_count[g], t, f"loco_localization({name})",
            )
        else:
            warnings.warn(f"loco_localization: no {name} images; AUC-sPRO is nan", RuntimeWarning, stacklevel=2)
        results[name] = {f: (float("nan") if curve is None else auc_spro(curve, f)) for f in limits}
    results["mean"] = {
        f: 0.5 * (results["logical_anomalies"][f] + results["structural_anomalies"][f]) for f in limits
    }
    return results


def loco_image_metrics(scores, defect_types: Sequence[str]) -> dict:
    """Image AUROCs: {"logical_anomalies", "structural_anomalies", "mean" (of those two, official), "all"
    (good against logical and structural together, the CLIP-LAD paper's number)}.

    scores: (N,) image anomaly scores; defect_types: (N,) among ``LOCO_TYPES``. Missing types give nan with
    a RuntimeWarning (from ``image_metrics``).
    """
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be (N,), got shape {s.shape}")
    types = _check_types(defect_types, s.shape[0])
    good = types == "good"
    out = {}
    for name in ("logical_anomalies", "structural_anomalies"):
        keep = good | (types == name)
        out[name] = image_metrics(s[keep], (types[keep] == name).astype(np.int64))["auroc"]
    out["mean"] = 0.5 * (out["logical_anomalies"] + out["structural_anomalies"])
    out["all"] = image_metrics(s, (~good).astype(np.int64))["auroc"]
    return out
