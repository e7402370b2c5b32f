"""Plain float32 PyTorch reference of MuSc and FSLC, written from the papers; the parity oracle for jzad.

It runs the way the original MuSc code runs: per-image loops, ``torch.cdist`` distances, whole-tensor ops,
on whatever device the inputs live on. Nothing here is tiled, fused or sharded, so it is slow on purpose and
the benchmark harness times it stage by stage (``StageTimer``) against the JAX code.

MuSc (Li et al., ICLR 2024):
- ``lnamd``: joint layer norm of each image's (h, w, C) token map, r x r average pool, L2 normalisation.
- ``mutual_scores`` (MSM): mean of the k smallest nearest-patch distances to the other images.
- ``musc_patch_scores``: mean MSM map over tapped layers x aggregation degrees.
- ``upsample``: bilinear, align_corners=True. ``rscin``: re-scoring over the image-embedding kNN graph.
- ``musc_reference``: the whole method with per-stage timing.

FSLC (Ni, Li, Zhao): ``kcenter_greedy``, ``fslc_init``, ``fslc_expand``, ``fslc_filter``, ``otsu_threshold``,
``fslc_score``, ``fslc_reference``. ``clip_forward_reference`` taps a transformers CLIP vision tower.

Readings of the papers where they leave room are written in each function's docstring.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

EXACT_CDIST = "donot_use_mm_for_euclid_dist"
LAYER_NORM_EPS = 1e-5
_CDIST_MODES = (EXACT_CDIST, "use_mm_for_euclid_dist_if_necessary", "use_mm_for_euclid_dist")


# --------------------------------------------------------------------------------------------- timing


class StageTimer:
    """Wall-clock seconds per named stage, accumulated over calls; CUDA is synchronised around each stage.

    ``seconds`` maps stage name -> total seconds, ``calls`` maps stage name -> number of timed blocks.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    @contextmanager
    def stage(self, name: str, device: torch.device | str | None = None):
        """Time the enclosed block as ``name``; ``device`` is the device the work runs on (synced if CUDA)."""
        _synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize(device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.calls[name] = self.calls.get(name, 0) + 1


def _synchronize(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def maybe_stage(timer: StageTimer | None, name: str, device: torch.device):
    """``timer.stage(name, device)``, or nothing when the call is not timed (timer None)."""
    if timer is None:
        yield
    else:
        with timer.stage(name, device):
            yield


# --------------------------------------------------------------------------------------------- checks


def _check_cdist_mode(cdist_mode: str) -> None:
    if cdist_mode not in _CDIST_MODES:
        raise ValueError(f"cdist_mode: expected one of {_CDIST_MODES}, got {cdist_mode!r}")


def _check_ndim(name: str, x: torch.Tensor, ndim: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != ndim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a tensor {layout}, got {shape}")


def interval_bounds(n: int, lo: float, hi: float) -> tuple[int, int]:
    """Ranks [start, stop) of the fractional interval [lo, hi) of n ascending values (Python float64 math).

    start = min(floor(lo * n), n - 1); stop = min(max(floor(hi * n), start + 1), n). The ``start + 1`` guard
    keeps at least one value where the paper's count would be 0 (MuSc with N < 5 images, k = floor(0.3 (N-1))).
    """
    if n < 1:
        raise ValueError(f"interval needs at least one value, got n={n}")
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"interval: expected 0 <= lo < hi <= 1, got ({lo}, {hi})")
    start = min(math.floor(lo * n), n - 1)
    stop = min(max(math.floor(hi * n), start + 1), n)
    return start, stop


def _first_max(values: torch.Tensor) -> int:
    """Index of the first maximum of a 1-D tensor (torch.argmax does not promise the first on ties)."""
    return int(torch.nonzero(values == values.max())[0, 0])


def _distances(a: torch.Tensor, b: torch.Tensor, cdist_mode: str) -> torch.Tensor:
    """Euclidean distances (P, C) x (R, C) -> (P, R) with torch.cdist in the given compute mode."""
    return torch.cdist(a, b, p=2.0, compute_mode=cdist_mode)


# --------------------------------------------------------------------------------------------- MuSc


def patch_grid_side(tokens: torch.Tensor) -> int:
    """Side h of the square patch grid of (N, 1 + h*h, C) tokens; raises if the grid is not square."""
    _check_ndim("tokens", tokens, 3, "(N, 1 + h*w, C) with CLS first")
    count = tokens.shape[1] - 1
    side = int(round(math.sqrt(max(count, 0))))
    if count < 1 or side * side != count:
        raise ValueError(f"tokens: expected (N, 1 + h*w, C) with a square h*w grid, got {tuple(tokens.shape)}")
    return side


@torch.no_grad()
def lnamd(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """LNAMD of one layer: (N, 1 + h*w, C) tokens (CLS first) -> (N, h*w, C) aggregated unit vectors.

    Drop CLS; reshape (N, h, w, C); layer-norm each image's whole (h, w, C) map jointly (no affine, eps 1e-5);
    r x r average pool on NCHW, stride 1, zero padding r // 2 counted in the mean (count_include_pad=True);
    L2-normalise each patch vector (F.normalize, eps 1e-12). r = 1 leaves the map unpooled.
    """
    side = patch_grid_side(tokens)
    if not isinstance(r, int) or r < 1 or r % 2 == 0:
        raise ValueError(f"lnamd: r must be an odd integer >= 1, got {r!r}")
    n, _, c = tokens.shape
    grid = tokens[:, 1:, :].float().reshape(n, side, side, c)
    grid = F.layer_norm(grid, (side, side, c), eps=LAYER_NORM_EPS)
    if r > 1:
        nchw = grid.permute(0, 3, 1, 2)
        nchw = F.avg_pool2d(nchw, kernel_size=r, stride=1, padding=r // 2, count_include_pad=True)
        grid = nchw.permute(0, 2, 3, 1)
    return F.normalize(grid.reshape(n, side * side, c), dim=-1)


@torch.no_grad()
def mutual_scores(
    features: torch.Tensor,
    interval: tuple[float, float] = (0.0, 0.3),
    cdist_mode: str = EXACT_CDIST,
    image_chunk: int | None = None,
) -> torch.Tensor:
    """MSM of one (layer, r): (N, M, C) features -> (N, M) patch scores.

    For each query image i (Python loop) and every other image j: d_j(p) = min_q ||z_ip - z_jq||_2 via
    torch.cdist, giving (M, N - 1). Sort ascending over the N - 1 images and average the values ranked in
    [start, stop) = ``interval_bounds(N - 1, *interval)``: for (0, 0.3) the k = floor(0.3 (N - 1)) smallest,
    with k >= 1 (our guard for N < 5, where the paper's k is 0).

    ``cdist_mode`` defaults to the exact difference-based distance (parity); the original MuSc code calls
    cdist with its default mode, which uses the ||a||^2 + ||b||^2 - 2ab matmul form for more than 25 rows
    (pass "use_mm_for_euclid_dist_if_necessary" to time that). ``image_chunk`` bounds memory: the other
    images are compared in groups of that many (None: all at once, (M, (N - 1) M) floats per query).
    """
    _check_ndim("features", features, 3, "(N, M, C)")
    _check_cdist_mode(cdist_mode)
    n, m, c = features.shape
    if n < 2:
        raise ValueError(f"mutual_scores: need at least 2 images, got N={n}")
    if image_chunk is not None and image_chunk < 1:
        raise ValueError(f"image_chunk: expected None or >= 1, got {image_chunk}")
    start, stop = interval_bounds(n - 1, *interval)
    features = features.float()
    chunk = n - 1 if image_chunk is None else image_chunk
    scores = torch.empty((n, m), dtype=torch.float32, device=features.device)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        per_image = []
        for first in range(0, len(others), chunk):
            group = others[first:first + chunk]
            pool = features[group].reshape(len(group) * m, c)
            d = _distances(features[i], pool, cdist_mode).reshape(m, len(group), m)
            per_image.append(d.min(dim=2).values)
        nearest = torch.cat(per_image, dim=1)
        ranked = torch.sort(nearest, dim=1).values
        scores[i] = ranked[:, start:stop].mean(dim=1)
    return scores


@torch.no_grad()
def musc_patch_scores(
    layer_tokens: Sequence[torch.Tensor],
    r_list: Sequence[int] = (1, 3, 5),
    interval: tuple[float, float] = (0.0, 0.3),
    cdist_mode: str = EXACT_CDIST,
    image_chunk: int | None = None,
    timer: StageTimer | None = None,
) -> torch.Tensor:
    """Mean of ``mutual_scores(lnamd(tokens, r))`` over tapped layers x degrees: L x (N, 1+hw, C) -> (N, hw).

    Layers are scored separately (not concatenated) and the L * len(r_list) maps averaged with equal weight
    (paper Eq. 3). ``timer`` accumulates stages "lnamd" and "msm".
    """
    if len(layer_tokens) == 0:
        raise ValueError("layer_tokens: expected at least one tapped layer (N, 1 + h*w, C)")
    if len(r_list) == 0:
        raise ValueError("r_list: expected at least one aggregation degree")
    shape = tuple(layer_tokens[0].shape)
    for index, tokens in enumerate(layer_tokens):
        if tuple(tokens.shape[:2]) != shape[:2]:
            raise ValueError(f"layer_tokens[{index}]: expected (N, 1+hw) = {shape[:2]}, got {tuple(tokens.shape)}")
    device = layer_tokens[0].device
    total = None
    for tokens in layer_tokens:
        for r in r_list:
            with maybe_stage(timer, "lnamd", device):
                features = lnamd(tokens, r)
            with maybe_stage(timer, "msm", device):
                scores = mutual_scores(features, interval, cdist_mode, image_chunk)
            total = scores if total is None else total + scores
    return total / (len(layer_tokens) * len(r_list))


@torch.no_grad()
def upsample(patch_scores: torch.Tensor, h: int, w: int, size: int | tuple[int, int]) -> torch.Tensor:
    """(N, h*w) patch scores -> (N, H, W) maps by bilinear interpolation with align_corners=True."""
    _check_ndim("patch_scores", patch_scores, 2, "(N, h*w)")
    if patch_scores.shape[1] != h * w:
        raise ValueError(f"patch_scores: expected (N, {h * w}) for a {h}x{w} grid, got {tuple(patch_scores.shape)}")
    out = (size, size) if isinstance(size, int) else tuple(size)
    grid = patch_scores.float().reshape(-1, 1, h, w)
    return F.interpolate(grid, size=out, mode="bilinear", align_corners=True)[:, 0]


@torch.no_grad()
def rscin(
    image_scores: torch.Tensor, image_embeds: torch.Tensor, windows: Sequence[int] = (1, 2, 3)
) -> torch.Tensor:
    """RsCIN re-scoring: (N,) image scores, (N, D) image embeddings -> (N,) re-scored.

    s = min-max normalised scores (all zeros when the scores are constant: there is nothing to rank);
    F = L2-normalised embeddings; W = F F^T. For each window k: keep the k largest entries of each row of W
    (self included, via topk; the rest zero), divide the row by its sum, S_k = P_k s. Result: mean over k.
    A window larger than N is clamped to N. A kept row summing to <= 0 (only possible with near-antipodal
    embeddings) raises ValueError.

    Paper reading (MuSc Eq. 5): C_hat = (sum_k D^-1 (M_k * W) C + C) / (K + 1) with windows {2, 3} (MVTec).
    With self as the 1st neighbour (W_ii = 1 is the row maximum) the k = 1 window gives P_1 s = s, so
    DESIGN's windows (1, 2, 3) averaged equal the paper's {2, 3} plus the identity term. The paper smooths
    the raw scores C; min-max normalisation is an affine map and every P_k row sums to 1, so it commutes
    with the smoothing: only the scale of the output differs, the ranking is the same.
    """
    _check_ndim("image_scores", image_scores, 1, "(N,)")
    _check_ndim("image_embeds", image_embeds, 2, "(N, D)")
    n = image_scores.shape[0]
    if image_embeds.shape[0] != n:
        raise ValueError(f"image_embeds: expected {n} rows like image_scores, got {tuple(image_embeds.shape)}")
    if len(windows) == 0 or any(int(k) < 1 for k in windows):
        raise ValueError(f"windows: expected window sizes >= 1, got {tuple(windows)}")
    s = image_scores.float()
    low, high = s.min(), s.max()
    s = (s - low) / (high - low) if bool(high > low) else torch.zeros_like(s)
    f = F.normalize(image_embeds.float(), dim=-1)
    similarity = f @ f.T
    smoothed = []
    for k in windows:
        values, indices = torch.topk(similarity, min(int(k), n), dim=1)
        kept = torch.zeros_like(similarity).scatter(1, indices, values)
        row_sum = kept.sum(dim=1, keepdim=True)
        if bool((row_sum <= 0).any()):
            raise ValueError(f"rscin: window {k} has a neighbourhood whose similarities sum to <= 0")
        smoothed.append((kept / row_sum) @ s)
    return torch.stack(smoothed).mean(dim=0)


@torch.no_grad()
def musc_reference(
    layer_tokens: Sequence[torch.Tensor],
    image_embeds: torch.Tensor,
    r_list: Sequence[int] = (1, 3, 5),
    interval: tuple[float, float] = (0.0, 0.3),
    windows: Sequence[int] = (1, 2, 3),
    image_size: int | tuple[int, int] = 518,
    cdist_mode: str = EXACT_CDIST,
    image_chunk: int | None = None,
    timer: StageTimer | None = None,
) -> dict:
    """MuSc on one set: L x (N, 1 + h*w, C) tokens and (N, D) image embeddings -> dict of results.

    Keys: patch_scores (N, h*w), maps (N, H, W), image_scores_raw (N,) = max of each upsampled map,
    image_scores (N,) = rscin(image_scores_raw), and stage_seconds (timer totals, when a timer is given).
    Stages timed: "lnamd", "msm", "upsample", "rscin" (CUDA synchronised around each).
    """
    patch = musc_patch_scores(layer_tokens, r_list, interval, cdist_mode, image_chunk, timer)
    side = patch_grid_side(layer_tokens[0])
    device = patch.device
    with maybe_stage(timer, "upsample", device):
        maps = upsample(patch, side, side, image_size)
        raw = maps.flatten(1).max(dim=1).values
    with maybe_stage(timer, "rscin", device):
        image_scores = rscin(raw, image_embeds.to(device), windows)
    result = {"patch_scores": patch, "maps": maps, "image_scores_raw": raw, "image_scores": image_scores}
    if timer is not None:
        result["stage_seconds"] = dict(timer.seconds)
    return result


# --------------------------------------------------------------------------------------------- FSLC


@torch.no_grad()
def kcenter_greedy(x: torch.Tensor, k: int, start_index: int = 0) -> torch.Tensor:
    """k-center greedy over the rows of x (n, c) -> (k,) int64 indices in pick order.

    Start at ``start_index``; keep each point's squared Euclidean distance (sum((x - center)^2), elementwise)
    to its nearest pick, add the point where it is largest (first index on ties), update with a minimum.
    Picked points are marked -1 so no index repeats even when the data holds duplicates.
    """
    _check_ndim("x", x, 2, "(n, c)")
    n = x.shape[0]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k: expected an integer in [1, {n}] for {n} points, got {k!r}")
    if not 0 <= start_index < n:
        raise ValueError(f"start_index: expected in [0, {n}), got {start_index}")
    points = x.float()
    picks = [int(start_index)]
    min_dist = ((points - points[start_index]) ** 2).sum(dim=1)
    min_dist[start_index] = -1.0
    for _ in range(1, k):
        best = _first_max(min_dist)
        picks.append(best)
        min_dist = torch.minimum(min_dist, ((points - points[best]) ** 2).sum(dim=1))
        min_dist[torch.tensor(picks, device=points.device)] = -1.0
    return torch.tensor(picks, dtype=torch.int64, device=x.device)


class CoresetInit(NamedTuple):
    """fslc_init result: coreset (M0, C), image_indices (S,) in pick order, patch_indices (M0,) into N*M rows."""

    coreset: torch.Tensor
    image_indices: torch.Tensor
    patch_indices: torch.Tensor


@torch.no_grad()
def fslc_init(
    image_embeds: torch.Tensor,
    patch_features: torch.Tensor,
    num_images: int,
    coreset_size: int,
    start_index: int = 0,
) -> CoresetInit:
    """FSLC coreset initialisation (paper Sec. 3.2): (N, D) embeds, (N, M, C) patches -> CoresetInit.

    k-center greedy over the image embeddings (used as given) picks S = ``num_images`` diverse images; their
    patches are stacked in pick order, Q = [F_k0; F_k1; ...] of (S * M, C), and k-center greedy over Q picks
    M0 = ``coreset_size`` patches. Both greedy runs start at ``start_index`` (of the images, of Q).
    ``patch_indices`` index the flattened (N * M, C) patch array.
    """
    _check_ndim("image_embeds", image_embeds, 2, "(N, D)")
    _check_ndim("patch_features", patch_features, 3, "(N, M, C)")
    n, m, c = patch_features.shape
    if image_embeds.shape[0] != n:
        raise ValueError(f"image_embeds: expected {n} rows like patch_features, got {tuple(image_embeds.shape)}")
    if not isinstance(num_images, int) or not 1 <= num_images <= n:
        raise ValueError(f"num_images: expected an integer in [1, {n}], got {num_images!r}")
    if not isinstance(coreset_size, int) or not 1 <= coreset_size <= num_images * m:
        raise ValueError(f"coreset_size: expected an integer in [1, {num_images * m}], got {coreset_size!r}")
    images = kcenter_greedy(image_embeds, num_images, start_index)
    q = patch_features.float()[images].reshape(num_images * m, c)
    local = kcenter_greedy(q, coreset_size, start_index)
    patch_indices = images[local // m] * m + local % m
    return CoresetInit(q[local], images, patch_indices)


@torch.no_grad()
def _check_coreset_inputs(coreset: torch.Tensor, patch_features: torch.Tensor, cdist_mode: str):
    """Validate a (K, C) coreset against (N, M, C) patch features; returns (N, M, C, K)."""
    _check_ndim("coreset", coreset, 2, "(K, C)")
    _check_ndim("patch_features", patch_features, 3, "(N, M, C)")
    _check_cdist_mode(cdist_mode)
    n, m, c = patch_features.shape
    if coreset.shape[1] != c:
        raise ValueError(f"coreset: expected {c} channels like patch_features, got {tuple(coreset.shape)}")
    return n, m, c, coreset.shape[0]


def fslc_expand(
    coreset: torch.Tensor,
    patch_features: torch.Tensor,
    remaining: Sequence[int] | torch.Tensor,
    per_image: int,
    cdist_mode: str = EXACT_CDIST,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FSLC coreset expansion (paper Sec. 3.3): -> (expanded coreset (M0 + R * per_image, C), added (R * per_image,)).

    Sequential, image by image in the order of ``remaining`` (the paper's M_i = M_{i-1} u argmax_{dM in F_i}
    dist(dM, M_{i-1}), upgrading M_0, M_1, ..., M_N): each image's patches are measured against the coreset
    as it stands after the previous images' additions, and the ``per_image`` patches with the largest
    distance d(f) = min_{f' in M_{i-1}} ||f - f'||_2 are appended (that set maximises the paper's
    dist(dM, M_{i-1}) = min over the set; ties keep the lower patch index). Within one image the distances
    are taken against M_{i-1} only. ``added`` holds the flattened (N * M) indices of the appended patches.
    """
    n, m, _, _ = _check_coreset_inputs(coreset, patch_features, cdist_mode)
    if not isinstance(per_image, int) or not 1 <= per_image <= m:
        raise ValueError(f"per_image: expected an integer in [1, {m}], got {per_image!r}")
    order = [int(i) for i in remaining]
    if any(not 0 <= i < n for i in order):
        raise ValueError(f"remaining: expected image indices in [0, {n}), got {order}")
    current = coreset.float()
    added = []
    for i in order:
        d = _distances(patch_features[i].float(), current, cdist_mode).min(dim=1).values
        picks = torch.sort(d, descending=True, stable=True).indices[:per_image]
        current = torch.cat([current, patch_features[i].float()[picks]], dim=0)
        added.append(i * m + picks)
    added_indices = torch.cat(added) if added else torch.empty(0, dtype=torch.int64, device=coreset.device)
    return current, added_indices


def _otsu_split(values: torch.Tensor, bins: int) -> tuple[float, torch.Tensor]:
    """(threshold, low-class mask) of Otsu's method over a ``bins``-bin histogram of 1-D values."""
    v = values.float()
    low, high = v.min(), v.max()
    if not bool(high > low):
        return float(high), torch.ones_like(v, dtype=torch.bool)
    width = (high - low) / bins
    index = torch.clamp(torch.floor((v - low) / (high - low) * bins), 0, bins - 1).long()
    counts = torch.bincount(index, minlength=bins).double()
    centers = low.double() + (torch.arange(bins, dtype=torch.float64, device=v.device) + 0.5) * width.double()
    total = counts.sum()
    w0 = torch.cumsum(counts, 0)[:-1]
    mass0 = torch.cumsum(counts * centers, 0)[:-1]
    w1 = total - w0
    mass1 = (counts * centers).sum() - mass0
    mu0 = mass0 / torch.clamp(w0, min=1.0)
    mu1 = mass1 / torch.clamp(w1, min=1.0)
    between = (w0 / total) * (w1 / total) * (mu0 - mu1) ** 2
    split = _first_max(between) + 1
    return float(low + split * width), index < split


@torch.no_grad()
def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of 1-D values: the lower edge of the first bin of the high class.

    Histogram: ``bins`` equal bins over [min, max], bin index floor((v - min) / (max - min) * bins) in
    float32, clamped to bins - 1 (so max falls in the last bin). For every split t in 1..bins-1 (low class =
    bins < t) the between-class variance w0 w1 (mu0 - mu1)^2 is computed from the bin centres; the first
    maximum wins. Returns min + t * (max - min) / bins. Constant values: no split, returns that value.
    """
    _check_ndim("values", values, 1, "(n,)")
    if values.shape[0] < 1:
        raise ValueError("values: expected at least one value")
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins: expected an integer >= 2, got {bins!r}")
    return _otsu_split(values, bins)[0]


class FilterResult(NamedTuple):
    """fslc_filter result: coreset (N_wanted, C), kept (N_wanted,) indices into the input coreset by
    ascending a_f, scores (K,) = a_f of every input coreset point."""

    coreset: torch.Tensor
    kept: torch.Tensor
    scores: torch.Tensor


@torch.no_grad()
def fslc_filter(
    coreset: torch.Tensor,
    patch_features: torch.Tensor,
    interval_fraction: float,
    n_wanted: int | str,
    bins: int = 256,
    cdist_mode: str = EXACT_CDIST,
) -> FilterResult:
    """FSLC coreset filtering (paper Eqs. 1-4): (K, C) coreset, (N, M, C) patches -> FilterResult.

    a_f^j = min_n ||f - f_j^n||_2 over every test image j = 1..N (the image a point came from included, as
    in Eq. 1, where it contributes 0); a_f = SUM (Eq. 3, not the mean the text mentions: same ranking) of the
    lowest K = |G_f| values, K = ``interval_bounds(N, 0, X)`` count = max(1, floor(X N)). Keep the
    ``n_wanted`` points with the lowest a_f (stable: ties keep the lower index). ``n_wanted="otsu"`` keeps
    Otsu's low class of a_f (``otsu_threshold`` with ``bins``).
    """
    n, m, c, size = _check_coreset_inputs(coreset, patch_features, cdist_mode)
    if not 0.0 < float(interval_fraction) <= 1.0:
        raise ValueError(f"interval_fraction: expected X in (0, 1], got {interval_fraction!r}")
    _, count = interval_bounds(n, 0.0, float(interval_fraction))
    points = coreset.float()
    per_image = torch.stack(
        [_distances(points, patch_features[j].float(), cdist_mode).min(dim=1).values for j in range(n)], dim=1
    )
    scores = torch.sort(per_image, dim=1).values[:, :count].sum(dim=1)
    if isinstance(n_wanted, str):
        if n_wanted != "otsu":
            raise ValueError(f"n_wanted: expected a positive integer or 'otsu', got {n_wanted!r}")
        wanted = int(_otsu_split(scores, bins)[1].sum())
    elif isinstance(n_wanted, int) and 1 <= n_wanted <= size:
        wanted = n_wanted
    else:
        raise ValueError(f"n_wanted: expected an integer in [1, {size}] or 'otsu', got {n_wanted!r}")
    kept = torch.sort(scores, stable=True).indices[:wanted]
    return FilterResult(points[kept], kept, scores)


class ScoreResult(NamedTuple):
    """fslc_score result: patch_scores (N, M), image_scores (N,), weights (N,) = w(I_i)."""

    patch_scores: torch.Tensor
    image_scores: torch.Tensor
    weights: torch.Tensor


@torch.no_grad()
def fslc_score(
    coreset: torch.Tensor, patch_features: torch.Tensor, b: int, cdist_mode: str = EXACT_CDIST
) -> ScoreResult:
    """FSLC scoring (paper Sec. 3.4): (K, C) final coreset, (N, M, C) patches -> ScoreResult.

    s(f) = min_{f' in M} ||f - f'||_2 is the patch score. Image score S = s(f*) * w with f* the top patch
    (first on ties) and w = 1 - exp(s(f*)) / sum_{f in N_b(f*)} exp(s(f)).

    Reading of s(f) for a coreset point f in N_b(f*): the paper mirrors PatchCore's re-weighting, so s(f) is
    the distance from the test patch f* to that coreset point, ||f* - f||. (Read literally as the point's
    own score, every coreset point's s(f) would be 0 and w = 1 - exp(s(f*)) / b could go negative.) N_b(f*)
    are the b coreset points nearest to f*, the nearest one (at distance s(f*)) included, so
    w = 1 - 1 / sum_{i<=b} exp(d_i - d_1) with d_1 <= ... <= d_b, in [1 - 1/b, 1). b must be >= 2 (b = 1
    gives w = 0 for every image).
    """
    n, m, c, size = _check_coreset_inputs(coreset, patch_features, cdist_mode)
    if not isinstance(b, int) or not 2 <= b <= size:
        raise ValueError(f"b: expected an integer in [2, {size}] (coreset size), got {b!r}")
    points = coreset.float()
    patch_scores = torch.empty((n, m), dtype=torch.float32, device=points.device)
    image_scores = torch.empty((n,), dtype=torch.float32, device=points.device)
    weights = torch.empty((n,), dtype=torch.float32, device=points.device)
    for i in range(n):
        d = _distances(patch_features[i].float(), points, cdist_mode)
        s = d.min(dim=1).values
        top = _first_max(s)
        nearest = torch.sort(d[top]).values[:b]
        w = 1.0 - 1.0 / torch.exp(nearest - nearest[0]).sum()
        patch_scores[i] = s
        weights[i] = w
        image_scores[i] = s[top] * w
    return ScoreResult(patch_scores, image_scores, weights)


@torch.no_grad()
def fslc_features(layer_tokens: Sequence[torch.Tensor], r: int = 3) -> torch.Tensor:
    """FSLC patch features: L x (N, 1 + h*w, C) tokens -> (N, h*w, L*C), ``lnamd`` per layer concatenated.

    The paper concatenates the tapped layers and r x r pools them (r is not given; 3 is our default). Each
    layer's part is a unit vector, so a concatenated row has norm sqrt(L).
    """
    if len(layer_tokens) == 0:
        raise ValueError("layer_tokens: expected at least one tapped layer (N, 1 + h*w, C)")
    return torch.cat([lnamd(tokens, r) for tokens in layer_tokens], dim=-1)


@torch.no_grad()
def fslc_reference(
    image_embeds: torch.Tensor,
    patch_features: torch.Tensor,
    num_images: int,
    coreset_size: int,
    per_image: int,
    interval_fraction: float,
    n_wanted: int | str,
    b: int,
    image_size: int | tuple[int, int] | None = None,
    start_index: int = 0,
    bins: int = 256,
    cdist_mode: str = EXACT_CDIST,
    timer: StageTimer | None = None,
) -> dict:
    """FSLC on one set: (N, D) image embeds and (N, M, C) patch features -> dict of results.

    init (S images, M0 patches) -> expand (remaining images in ascending index order, ``per_image`` each)
    -> filter (``interval_fraction`` X, ``n_wanted`` int or "otsu") -> score (b nearest coreset points).
    Keys: patch_scores (N, M), image_scores (N,), weights (N,), coreset (final), init_images (S,),
    init_patches (M0,), added_patches, filter_scores, kept; maps (N, H, W) when ``image_size`` is given
    (square grid, bilinear align_corners=True); stage_seconds when a timer is given. Stages timed: "init",
    "expand", "filter", "score", "upsample".
    """
    _check_ndim("patch_features", patch_features, 3, "(N, M, C)")
    n, m, _ = patch_features.shape
    device = patch_features.device
    with maybe_stage(timer, "init", device):
        init = fslc_init(image_embeds, patch_features, num_images, coreset_size, start_index)
    chosen = set(int(i) for i in init.image_indices)
    remaining = [i for i in range(n) if i not in chosen]
    with maybe_stage(timer, "expand", device):
        expanded, added = fslc_expand(init.coreset, patch_features, remaining, per_image, cdist_mode)
    with maybe_stage(timer, "filter", device):
        filtered = fslc_filter(expanded, patch_features, interval_fraction, n_wanted, bins, cdist_mode)
    with maybe_stage(timer, "score", device):
        scored = fslc_score(filtered.coreset, patch_features, b, cdist_mode)
    result = {
        "patch_scores": scored.patch_scores,
        "image_scores": scored.image_scores,
        "weights": scored.weights,
        "coreset": filtered.coreset,
        "init_images": init.image_indices,
        "init_patches": init.patch_indices,
        "added_patches": added,
        "filter_scores": filtered.scores,
        "kept": filtered.kept,
    }
    if image_size is not None:
        side = int(round(math.sqrt(m)))
        if side * side != m:
            raise ValueError(f"image_size: maps need a square patch grid, got M={m}")
        with maybe_stage(timer, "upsample", device):
            result["maps"] = upsample(scored.patch_scores, side, side, image_size)
    if timer is not None:
        result["stage_seconds"] = dict(timer.seconds)
    return result


# --------------------------------------------------------------------------------------------- CLIP taps


@torch.no_grad()
def clip_forward_reference(
    model,
    images: torch.Tensor,
    taps: Sequence[int],
    interpolate_pos_encoding: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Tapped residual streams and projected image embeddings of a transformers CLIP vision tower.

    model: ``CLIPModel`` or ``CLIPVisionModelWithProjection``; images (B, 3, H, W) float32, already
    normalised. Returns ([(B, 1 + h*w, C) for each tap], (B, D)).

    In transformers 5.x ``CLIPVisionModel.forward`` runs embeddings -> pre_layrnorm -> encoder layers, and
    ``output_hidden_states`` records the input of the first encoder layer and then every layer's output, so
    hidden_states[0] is after the embeddings and the pre-layernorm and hidden_states[b] is the raw residual
    stream after block b (1-based), without ln_post (CLIP is built with tie_last_hidden_states=False).
    Taps are those 1-based block indices. The embedding is visual_projection(post_layernorm(CLS of the last
    block's output)), not L2-normalised. ``interpolate_pos_encoding`` resizes the position embeddings with
    transformers' bicubic resize for inputs other than the checkpoint's size; the activation (quick_gelu vs
    exact gelu) is the model config's ``hidden_act``.
    """
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    if not isinstance(model, (CLIPModel, CLIPVisionModelWithProjection)):
        raise ValueError(
            f"model: expected a transformers CLIPModel or CLIPVisionModelWithProjection, got {type(model).__name__}"
        )
    _check_ndim("images", images, 4, "(B, 3, H, W)")
    vision = model.vision_model
    depth = len(vision.encoder.layers)
    taps = [int(t) for t in taps]
    if not taps or any(not 1 <= t <= depth for t in taps):
        raise ValueError(f"taps: expected 1-based block indices in [1, {depth}], got {taps}")
    out = vision(
        pixel_values=images.float(),
        output_hidden_states=True,
        interpolate_pos_encoding=interpolate_pos_encoding,
    )
    hidden = out.hidden_states
    if len(hidden) != depth + 1:
        raise ValueError(f"model: expected {depth + 1} hidden states (embeddings + {depth} blocks), got {len(hidden)}")
    embeds = model.visual_projection(vision.post_layernorm(hidden[-1][:, 0, :]))
    return [hidden[t] for t in taps], embeds
