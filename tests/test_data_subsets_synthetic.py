"""Stratified subsets (MuSc's divide_num) and the synthetic defect generator."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jzad.data import (
    DEFECT_KINDS,
    ImageSet,
    load_images,
    load_set_masks,
    make_synthetic_set,
    read_dataset,
    stratified_subsets,
    write_synthetic_mvtec,
)


def _set(types: list[str]) -> ImageSet:
    n = len(types)
    labels = tuple(0 if t == "good" else 1 for t in types)
    return ImageSet("mvtec", "c", tuple(f"img{i}" for i in range(n)), labels, tuple(types),
                    tuple(f"m{i}" if v else None for i, v in enumerate(labels)), True)


def test_stratified_known_answer() -> None:
    s = _set(["b", "b", "c", "b", "c", "good"])
    # sorted types b (0, 1, 3), c (2, 4), good (5) dealt round-robin into 2, carrying the slot over
    got = stratified_subsets(s, 2)
    assert [g.tolist() for g in got] == [[0, 3, 4], [1, 2, 5]]
    assert [g.tolist() for g in stratified_subsets(s, 1)] == [[0, 1, 2, 3, 4, 5]]
    assert [g.tolist() for g in stratified_subsets(s, 6)] == [[0], [1], [3], [2], [4], [5]]


@pytest.mark.parametrize("num_subsets,seed", [(2, None), (3, 0), (4, 7), (7, 1)])
def test_stratified_properties(num_subsets: int, seed) -> None:
    rng = np.random.default_rng(3)
    types = [str(t) for t in rng.choice(["good", "crack", "hole", "print"], size=41, p=[0.4, 0.3, 0.2, 0.1])]
    s = _set(types)
    subsets = stratified_subsets(s, num_subsets, seed=seed)
    assert len(subsets) == num_subsets
    allidx = np.concatenate(subsets)
    assert sorted(allidx.tolist()) == list(range(41))  # every index exactly once
    sizes = [len(x) for x in subsets]
    assert max(sizes) - min(sizes) <= 1
    for t in set(types):
        per = [sum(types[i] == t for i in x) for x in subsets]
        assert max(per) - min(per) <= 1  # the same mix in every subset
    again = stratified_subsets(s, num_subsets, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again))
    assert all(np.all(np.diff(x) > 0) for x in subsets)
    sub = s.select(subsets[0])
    assert sub.defect_types == tuple(types[i] for i in subsets[0])


def test_stratified_seed_shuffles_within_types() -> None:
    s = _set(["a"] * 10 + ["good"] * 10)
    plain = stratified_subsets(s, 2)
    shuffled = [stratified_subsets(s, 2, seed=k) for k in range(5)]
    assert any(not np.array_equal(x[0], plain[0]) for x in shuffled)
    for x in shuffled:
        assert Counter(s.defect_types[i] for i in x[0]) == Counter({"a": 5, "good": 5})


def test_stratified_errors() -> None:
    s = _set(["a", "good", "good"])
    with pytest.raises(ValueError, match=r"num_subsets must be in \[1, 3\]"):
        stratified_subsets(s, 0)
    with pytest.raises(ValueError, match=r"num_subsets must be in \[1, 3\]"):
        stratified_subsets(s, 4)
    with pytest.raises(TypeError):
        stratified_subsets(s, 2.0)


# ---------------------------------------------------------------- synthetic


def test_synthetic_shapes_determinism_consistency() -> None:
    images, masks, labels, types = make_synthetic_set(5, 7, (96, 80), seed=11)
    assert images.shape == (12, 96, 80, 3) and images.dtype == np.uint8
    assert masks.shape == (12, 96, 80) and masks.dtype == bool
    assert labels.tolist() == [0] * 5 + [1] * 7
    assert types == ("good",) * 5 + tuple(DEFECT_KINDS[i % 3] for i in range(7))
    assert not masks[:5].any() and masks[5:].any(axis=(1, 2)).all()
    again = make_synthetic_set(5, 7, (96, 80), seed=11)
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(masks, again[1])
    other = make_synthetic_set(5, 7, (96, 80), seed=12)
    assert not np.array_equal(images, other[0]) and not np.array_equal(masks, other[1])
    assert not np.array_equal(images[0], images[1])  # per-image jitter
    with pytest.raises(ValueError, match="num_normal"):
        make_synthetic_set(-1, 2, 64)
    with pytest.raises(ValueError, match="at least one image"):
        make_synthetic_set(0, 0, 64)


def test_synthetic_masks_are_exactly_the_painted_pixels() -> None:
    images, masks, labels, _ = make_synthetic_set(0, 9, 128, seed=5)
    px = images.astype(np.int32)
    for img, mask in zip(px, masks):
        colour = np.median(img[mask], axis=0)
        close = np.abs(img - colour).max(axis=-1) <= 15  # defect colour + sensor noise (sigma 3)
        assert close[mask].mean() > 0.999
        assert close[~mask].mean() == 0.0  # the product never shows the defect colour


def _weak_patch_features(images: np.ndarray, p: int) -> np.ndarray:
    """Per-patch mean and std of each channel: (N, M, 6), a deliberately weak descriptor."""
    n, h, w, _ = images.shape
    x = images.astype(np.float32).reshape(n, h // p, p, w // p, p, 3)
    return np.concatenate([x.mean((2, 4)), x.std((2, 4))], -1).reshape(n, -1, 6)


def _mutual_scores(f: np.ndarray) -> np.ndarray:
    """Plain MuSc-style mutual scoring: mean of the k = floor(0.3 (N-1)) smallest per-image NN distances."""
    n, m, _ = f.shape
    k = max(1, int(0.3 * (n - 1)))
    out = np.empty((n, m))
    for i in range(n):
        d = np.sqrt(((f[i][:, None, None, :] - f[None]) ** 2).sum(-1)).min(-1)  # (M, N)
        d = np.delete(d, i, axis=1)
        out[i] = np.sort(d, axis=1)[:, :k].mean(1)
    return out


def test_synthetic_defects_found_by_weak_nearest_neighbour() -> None:
    images, masks, labels, _ = make_synthetic_set(8, 8, 96, seed=2)
    p = 8
    scores = _mutual_scores(_weak_patch_features(images, p))
    n, g = len(images), 96 // p
    assert roc_auc_score(labels, scores.max(1)) >= 0.95
    patch_gt = masks.reshape(n, g, p, g, p).any(axis=(2, 4)).reshape(-1)
    assert roc_auc_score(patch_gt, scores.reshape(-1)) >= 0.95


def test_write_synthetic_mvtec_roundtrip(tmp_path: Path) -> None:
    cat_dir = write_synthetic_mvtec(
        tmp_path, "widget", num_normal=3, num_anomalous=4, num_train=2, size=64, seed=9
    )
    assert cat_dir == tmp_path / "widget"
    s = read_dataset("mvtec", tmp_path, "widget")
    images, masks, labels, types = make_synthetic_set(5, 4, 64, seed=9)
    order = np.argsort(np.array(types[2:]), kind="stable") + 2  # the reader sorts by type then name
    assert s.labels == tuple(labels[order].tolist()) and s.defect_types == tuple(types[i] for i in order)
    np.testing.assert_array_equal(load_images(s.paths, 64), images[order])  # lossless PNG
    np.testing.assert_array_equal(load_set_masks(s, 64), masks[order])
    assert Path(s.mask_paths[3]).name == "000_mask.png" and s.mask_paths[:3] == (None,) * 3
    train = read_dataset("mvtec", tmp_path, "widget", split="train")
    np.testing.assert_array_equal(load_images(train.paths, 64), images[:2])
    with pytest.raises(FileExistsError, match="widget"):
        write_synthetic_mvtec(tmp_path, "widget", size=64)
