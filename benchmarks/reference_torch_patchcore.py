"""PyTorch reference of PatchCore's original steps, literally, as amazon-science/patchcore-inspection runs them.

Written from the original pipeline's description (no code copied) and kept literal on purpose, so it is the
oracle for ``jzad.methods.patchcore``'s closed forms:
- ``embed_reference``: ``F.unfold`` 3x3 (padding 1) of each layer; layer3's (C, 3, 3) entries upsampled
  channel by channel with ``F.interpolate`` (bilinear, align_corners False) to layer2's grid; each patch's
  flattened vector pooled by ``F.adaptive_avg_pool1d`` to ``dim``; both stacked and pooled again to ``dim``.
- ``coreset_reference``: ApproximateGreedyCoresetSampler: optional bias-free projection, initial distance =
  mean Euclidean distance to the start points, then ``torch.argmax`` picks and running minima.
- ``nearest_reference``: squared L2 to the nearest bank row (exact differences, as a flat L2 index).
- ``image_scores_reference``: max, or anomalib's b-nearest reweighting.
- ``maps_reference``: ``F.interpolate`` bilinear to the crop, then ``scipy.ndimage.gaussian_filter`` per map.
Inputs are channels-first torch tensors (N, C, h, w); random projections and start points are passed in so
the JAX code's draws can be replayed.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F


def _unfold_patches(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h * w, C, 3, 3): every 3x3 zero-padded neighbourhood, row-major locations."""
    n, c, h, w = features.shape
    unfolded = F.unfold(features, kernel_size=3, stride=1, padding=1, dilation=1)
    return unfolded.reshape(n, c, 3, 3, h * w).permute(0, 4, 1, 2, 3)


def embed_reference(layer2: torch.Tensor, layer3: torch.Tensor, dim: int = 1024) -> torch.Tensor:
    """layer2 (N, C2, h, w), layer3 (N, C3, h3, w3) -> (N, h * w, dim) PatchCore features."""
    n, _, h, w = layer2.shape
    _, c3, h3, w3 = layer3.shape
    first = _unfold_patches(layer2)
    second = _unfold_patches(layer3).reshape(n, h3, w3, c3, 3, 3)
    second = second.permute(0, 3, 4, 5, 1, 2).reshape(-1, h3, w3)
    second = F.interpolate(second.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
    second = second.reshape(n, c3, 3, 3, h, w).permute(0, 4, 5, 1, 2, 3).reshape(n, h * w, c3, 3, 3)
    pooled = []
    for patches in (first, second):
        flat = patches.reshape(n * h * w, 1, -1)
        pooled.append(F.adaptive_avg_pool1d(flat, dim).squeeze(1))
    stacked = torch.stack(pooled, dim=1).reshape(n * h * w, 1, -1)
    return F.adaptive_avg_pool1d(stacked, dim).reshape(n, h * w, dim)


def _euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d), (m, d) -> (n, m) Euclidean distances in the sampler's form: sqrt(clamp(a.a - 2 a.b + b.b))."""
    aa = (a * a).sum(-1, keepdim=True)
    bb = (b * b).sum(-1).unsqueeze(0)
    return (aa - 2 * a @ b.T + bb).clamp(min=0).sqrt()


def coreset_reference(
    features: torch.Tensor, k: int, projection: torch.Tensor | None, start_points
) -> np.ndarray:
    """Approximate greedy coreset: (R, C) -> (k,) picked row indices, in pick order."""
    points = features if projection is None else features @ projection
    start_points = torch.as_tensor(np.array(start_points), dtype=torch.long)
    anchor = _euclidean(points, points[start_points]).mean(dim=-1, keepdim=True)
    picks = []
    for _ in range(k):
        index = int(torch.argmax(anchor))
        picks.append(index)
        anchor = torch.cat([anchor, _euclidean(points, points[index : index + 1])], dim=-1)
        anchor = anchor.min(dim=1).values.reshape(-1, 1)
    return np.array(picks)


def memory_bank_reference(
    features: torch.Tensor, ratio: float, projection: torch.Tensor | None, start_points
) -> torch.Tensor:
    """(R, C) -> the coreset rows (ratio 1: every row), k = int(R * ratio)."""
    if ratio == 1:
        return features
    return features[coreset_reference(features, int(len(features) * ratio), projection, start_points)]


def nearest_reference(features: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(N, M, C), (K, C) -> (N, M) squared L2 distance to the nearest bank row (float64 differences)."""
    out = []
    bank64 = bank.double()
    for image in features.double():
        out.append(torch.cdist(image, bank64, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values ** 2)
    return torch.stack(out).float()


def image_scores_reference(
    patch: torch.Tensor, features: torch.Tensor | None = None, bank: torch.Tensor | None = None, b: int | None = None
) -> torch.Tensor:
    """(N, h, w) patch scores -> (N,): max, or with b >= 2 anomalib's w * s* (Euclidean softmax weight)."""
    flat = patch.reshape(len(patch), -1)
    if b is None or b == 1:
        return flat.max(dim=1).values
    scores = []
    for i in range(len(flat)):
        star = int(torch.argmax(flat[i]))
        f_star = features[i, star : star + 1]
        nearest = int(torch.cdist(f_star, bank).argmin())
        support = torch.cdist(bank[nearest : nearest + 1], bank).topk(min(b, len(bank)), largest=False).indices[0]
        distances = torch.cdist(f_star, bank[support])[0]
        weight = 1 - torch.softmax(distances, dim=0)[0]
        scores.append(weight * flat[i, star])
    return torch.stack(scores)


def maps_reference(patch: torch.Tensor, size: int = 224, sigma: float = 4.0) -> np.ndarray:
    """(N, h, w) -> (N, size, size): bilinear (align_corners False) then scipy Gaussian per map (float32)."""
    up = F.interpolate(patch.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return np.stack([scipy.ndimage.gaussian_filter(m, sigma=sigma) for m in up.numpy()])


def patchcore_reference(
    train2: torch.Tensor,
    train3: torch.Tensor,
    test2: torch.Tensor,
    test3: torch.Tensor,
    ratio: float,
    projection: torch.Tensor | None,
    start_points,
    dim: int = 1024,
    size: int = 224,
    sigma: float = 4.0,
    b: int | None = None,
):
    """The whole method: -> (bank (K, dim), image scores (N,), patch scores (N, h, w), maps (N, size, size))."""
    bank = memory_bank_reference(embed_reference(train2, train3, dim).reshape(-1, dim), ratio, projection, start_points)
    features = embed_reference(test2, test3, dim)
    patch = nearest_reference(features, bank).reshape(len(test2), *test2.shape[-2:])
    image = image_scores_reference(patch, features, bank, b)
    return bank, image, patch, maps_reference(patch, size, sigma)


def patchcore_plus_reference(
    train2: torch.Tensor,
    train3: torch.Tensor,
    test2: torch.Tensor,
    test3: torch.Tensor,
    ratio: float,
    projection: torch.Tensor | None,
    start_points,
    dim: int = 1024,
    size: int = 224,
    sigma: float = 4.0,
    online_images: int = 0,
    **refine,
):
    """PatchCore+ (FastRef on PatchCore), one query at a time: PatchCore's bank as the prototypes, each query's
    features refined by ``reference_torch_fastref.refine_reference`` (keyword arguments: RefineConfig's field
    names) and scored against its refined prototypes; image score = max; PatchCore's maps.

    online_images K > 0: Online PatchCore+, the refined prototypes of the K previous queries (in order) join
    the bank. Returns (bank (n, dim), image scores (N,), patch scores (N, h, w), maps (N, size, size)).
    """
    from benchmarks.reference_torch_fastref import refine_reference

    bank = memory_bank_reference(embed_reference(train2, train3, dim).reshape(-1, dim), ratio, projection, start_points)
    features = embed_reference(test2, test3, dim)
    recent, patches = [], []
    for f in features:
        prototypes = torch.cat([bank, *recent[-online_images:]]) if online_images and recent else bank
        scores, _, _, refined = refine_reference(f, prototypes, **refine)
        recent.append(refined)
        patches.append(scores)
    patch = torch.stack(patches).reshape(len(test2), *test2.shape[-2:])
    image = patch.reshape(len(test2), -1).max(dim=1).values
    return bank, image, patch, maps_reference(patch, size, sigma)
