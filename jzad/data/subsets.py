"""MuSc's `divide_num`: split a test set into s subsets with the same mix of defect types.

MuSc scores each subset independently (fewer images per mutual-scoring pool, less compute).
- ``official_subsets`` (the default of the command line) reproduces the official MuSc reader exactly: per
  type a seeded Python shuffle, then every s-th image; each type's deal restarts at subset 0.
- ``stratified_subsets`` ("balanced") carries the round-robin deal on from type to type, so subset sizes
  differ by at most one (fewer distinct shapes to compile).
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


def official_subsets(defect_types, num_subsets: int) -> list[np.ndarray]:
    """MuSc's ``divide_num`` exactly as the official reader deals it: list of int64 index arrays.

    Indices are grouped by defect type, types in sorted order, indices ascending within a type (the reader
    lists types sorted and files sorted). For subset j: ``random.seed(42)``, then for each type in order
    ``random.shuffle(ids_of_type)`` (Python's Mersenne Twister), cut the shuffled list into consecutive chunks
    of num_subsets and take element j of every chunk that has one. The same seed restarts every subset, so
    the shuffles agree and the subsets partition the set; every type's deal restarts at subset 0, so subset
    sizes can differ by more than one. Each array lists the subset in the official order (type by type, in
    shuffled order).
    """
    import random

    types = [str(t) for t in defect_types]
    n = len(types)
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, (int, np.integer)):
        raise TypeError(f"num_subsets must be an int, got {num_subsets!r}")
    if not 1 <= num_subsets <= n:
        raise ValueError(f"num_subsets must be in [1, {n}] (the number of images), got {num_subsets}")
    groups = [[i for i in range(n) if types[i] == t] for t in sorted(set(types))]
    subsets = []
    for j in range(num_subsets):
        random.seed(42)
        picked = []
        for ids in groups:
            shuffled = list(ids)
            random.shuffle(shuffled)
            picked.extend(shuffled[j::num_subsets])
        subsets.append(np.asarray(picked, dtype=np.int64))
    return subsets


def reference_draw(available: int, shots: int, seed: int) -> np.ndarray:
    """Which of ``available`` normal train images serve as the ``shots`` few-shot references: all of them, in
    order, when shots == available; otherwise ``shots`` distinct indices drawn by
    ``np.random.default_rng(seed).choice(available, shots, replace=False)``, sorted. int64 (shots,)."""
    if not 1 <= shots <= available:
        raise ValueError(f"shots: expected 1..{available} (the normal train images), got {shots}")
    if shots == available:
        return np.arange(available, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(available, shots, replace=False)).astype(np.int64)
