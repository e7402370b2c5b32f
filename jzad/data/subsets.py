"""MuSc's `divide_num`: split a test set into s subsets with the same mix of defect types.

MuSc scores each subset independently (fewer images per mutual-scoring pool, less compute). Within each
defect type the images are dealt round-robin into the s subsets, so every subset gets the same share of each
type. Unlike the reference code, which restarts the deal at subset 0 for every type, the deal here carries on
from where the previous type stopped, so subset sizes differ by at most one (equal shapes under jit).
"""

from __future__ import annotations

import numpy as np

from jzad.data.imageset import ImageSet


def stratified_subsets(
    image_set: ImageSet, num_subsets: int, seed: int | None = None
) -> list[np.ndarray]:
    """Indices of `num_subsets` disjoint subsets covering every image exactly once: list of int64 (n_k,).

    Types are visited in sorted order; within a type images go in set order (seed None) or in an order
    shuffled by np.random.default_rng(seed), then are dealt round-robin. Each returned array is sorted.
    Subset sizes differ by at most one, and so do the per-subset counts of each defect type.
    """
    n = len(image_set)
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, (int, np.integer)):
        raise TypeError(f"num_subsets must be an int, got {num_subsets!r}")
    if not 1 <= num_subsets <= n:
        raise ValueError(f"num_subsets must be in [1, {n}] (the number of images), got {num_subsets}")
    rng = None if seed is None else np.random.default_rng(seed)
    types = np.asarray(image_set.defect_types)
    buckets: list[list[int]] = [[] for _ in range(num_subsets)]
    slot = 0
    for defect in sorted(set(image_set.defect_types)):
        members = np.flatnonzero(types == defect)
        if rng is not None:
            members = rng.permutation(members)
        for index in members:
            buckets[slot].append(int(index))
            slot = (slot + 1) % num_subsets
    return [np.sort(np.asarray(b, dtype=np.int64)) for b in buckets]
