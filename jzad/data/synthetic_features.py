"""Synthetic patch features with a global shift and planted local defects, for the prototype refinement.

A "product" is a fixed layout of parts on an h x w patch grid (horizontal bands, each band cut into two
halves); part k has a centroid mu_k (non-negative, like post-ReLU CNN features) and two directions of
natural variation U_k. A normal patch of part k is mu_k + U_k z + sigma e, z ~ N(0, variation^2 I_2),
e ~ N(0, I_c). Reference ("support") images are normal and unshifted. Each query image gets a global shift
of random strength t ~ U(0, 1), the same on every patch: f -> (1 + scale t) f + t offset d, with d a fixed
positive combination of the part centroids scaled to the mean centroid norm (a change of lighting or
material moves every feature the same way, inside the span of normal features). Anomalous queries carry
1 to ``max_defects`` defect patches of two kinds: "foreign" (probability 1 - ``blend``) moves the patch by
``defect`` times the mean centroid norm along its own random unit direction, mostly outside the span of the
normal features; "blend" replaces the patch by the mean of two other parts' centroids (a texture no normal
patch has, yet a linear combination of normal features, so a projection onto the prototypes' span
reconstructs it and only the OT term can keep it anomalous). Shift strength is drawn independently of the label,
so plain nearest-prototype scoring confuses strongly shifted normal images with weakly shifted defects.
Deterministic given the seed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ShiftedFeatureSet(NamedTuple):
    """references (k, m, c) normal support features; queries (N, m, c); labels (N,) int 1 = anomalous;
    defects (N, m) bool, the defect patches; shifts (N,) the shift strengths t."""

    references: np.ndarray
    queries: np.ndarray
    labels: np.ndarray
    defects: np.ndarray
    shifts: np.ndarray


def make_shifted_feature_set(
    seed: int,
    *,
    shots: int = 2,
    grid: tuple[int, int] = (7, 7),
    channels: int = 48,
    parts: int = 6,
    num_normal: int = 24,
    num_anomalous: int = 24,
    variation: float = 0.1,
    noise: float = 0.1,
    scale: float = 0.6,
    offset: float = 0.6,
    defect: float = 0.35,
    blend: float = 0.0,
    max_defects: int = 3,
) -> ShiftedFeatureSet:
    """Build the set (see the module docstring); sizes and strengths are relative to the centroid norm."""
    h, w = grid
    if min(shots, h, w, channels, parts, num_normal, num_anomalous, max_defects) < 1:
        raise ValueError("shots, grid, channels, parts, num_normal, num_anomalous, max_defects: expected >= 1")
    if parts < 3:
        raise ValueError(f"parts: expected >= 3 (a blend defect mixes two other parts), got {parts}")
    rng = np.random.default_rng(seed)
    m = h * w
    centroids = np.abs(rng.normal(size=(parts, channels))) + 0.2
    norm = float(np.linalg.norm(centroids, axis=1).mean())
    directions = rng.normal(size=(parts, 2, channels))
    directions *= norm / np.linalg.norm(directions, axis=2, keepdims=True)
    rows = np.arange(h)[:, None] * parts // (2 * h) * 2
    layout = ((rows + (np.arange(w)[None, :] >= w // 2)) % parts).reshape(m)

    def normal_images(count: int) -> np.ndarray:
        z = rng.normal(scale=variation, size=(count, m, 2))
        var = np.einsum("nmk,mkc->nmc", z, directions[layout])
        return centroids[layout][None] + var + noise * norm / np.sqrt(channels) * rng.normal(size=(count, m, channels))

    references = normal_images(shots)
    total = num_normal + num_anomalous
    queries = normal_images(total)
    labels = np.r_[np.zeros(num_normal, int), np.ones(num_anomalous, int)]
    mix = rng.uniform(0.5, 1.5, size=parts)
    d = mix @ centroids
    d *= norm / np.linalg.norm(d)
    t = rng.uniform(0.0, 1.0, size=total)
    queries = (1.0 + scale * t)[:, None, None] * queries + (offset * t)[:, None, None] * d
    defects = np.zeros((total, m), bool)
    for i in range(num_normal, total):
        spots = rng.choice(m, size=rng.integers(1, max_defects + 1), replace=False)
        for j in spots:
            if rng.uniform() < blend:
                a, b = rng.choice(np.delete(np.arange(parts), layout[j]), size=2, replace=False)
                queries[i, j] = (1.0 + scale * t[i]) * 0.5 * (centroids[a] + centroids[b]) + offset * t[i] * d
            else:
                v = rng.normal(size=channels)
                queries[i, j] += defect * norm * v / np.linalg.norm(v)
        defects[i, spots] = True
    return ShiftedFeatureSet(references.astype(np.float32), queries.astype(np.float32), labels, defects,
                             t.astype(np.float32))
