"""Synthetic industrial images with planted defects and exact masks, for tests and the built-in demo.

Every image shows the same "product": a warm-gray woven texture (two crossed sinusoids plus a diagonal
weave) with a lighter disk in the middle, under a smooth illumination gradient and Gaussian sensor noise.
Each image jitters the texture phase, the brightness and the disk position slightly, so normal images are
alike but never identical. Anomalous images carry one defect, painted with a flat colour far from the
product's colours (so even weak patch features separate it):
  "scratch": a thin straight segment (width about 1.6-2.8 % of the image side, length 25-40 %);
  "spot":    a round stain (radius 3.5-6 % of the side);
  "missing": a missing-piece blob, the union of three overlapping discs (radii 3-5.5 %) showing a flat
             hole colour.
The mask is exactly the set of painted pixels. Everything is vectorised over images with NumPy and
deterministic given the seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from jzad.data.decode import _as_hw

DEFECT_KINDS = ("scratch", "spot", "missing")
_PALETTE = np.array(
    [
        [205, 40, 35],  # rust red
        [25, 25, 30],  # black
        [245, 240, 225],  # bright white
        [35, 150, 60],  # green
        [45, 65, 210],  # blue
        [230, 200, 30],  # yellow
    ],
    dtype=np.float32,
)
_BASE = np.array([118.0, 108.0, 92.0], dtype=np.float32)
_DISK_TINT = np.array([22.0, 18.0, 10.0], dtype=np.float32)


def _product(num: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Defect-free images before noise: float32 (num, h, w, 3)."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h
    x = (np.arange(w, dtype=np.float32) + 0.5) / w
    yy, xx = y[None, :, None], x[None, None, :]
    phase = rng.uniform(0.0, 1.0, size=(num, 3, 1, 1)).astype(np.float32)
    shift = rng.uniform(-0.02, 0.02, size=(num, 2, 1, 1)).astype(np.float32)
    bright = rng.normal(0.0, 4.0, size=(num, 1, 1, 1)).astype(np.float32)
    two_pi = np.float32(2.0 * np.pi)
    freq = np.float32(6.0)
    weave = 12.0 * np.sin(two_pi * (freq * xx + phase[:, 0])) * np.sin(two_pi * (freq * yy + phase[:, 1]))
    weave = weave + 6.0 * np.sin(two_pi * (2.5 * freq * (xx + yy) + phase[:, 2]))
    gradient = 14.0 * (xx - 0.5) - 10.0 * (yy - 0.5)
    dist = np.sqrt((xx - 0.5 - shift[:, 0]) ** 2 + (yy - 0.5 - shift[:, 1]) ** 2)
    ramp = 2.0 / min(h, w)
    disk = np.clip((0.36 - dist) / ramp + 0.5, 0.0, 1.0)
    img = _BASE + (weave + gradient)[..., None] + disk[..., None] * _DISK_TINT + bright
    return img.astype(np.float32)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of the shorter side: (1, h, 1), (1, 1, w)."""
    side = np.float32(min(h, w))
    y = (np.arange(h, dtype=np.float32) + 0.5) / side
    x = (np.arange(w, dtype=np.float32) + 0.5) / side
    return y[None, :, None], x[None, None, :]


def _centres(num: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Defect centres inside the disk (within 0.2 of the image centre): (num, 2) as (y, x) in side units."""
    side = min(h, w)
    angle = rng.uniform(0.0, 2.0 * np.pi, num)
    radius = 0.2 * np.sqrt(rng.uniform(0.0, 1.0, num))
    cy = 0.5 * h / side + radius * np.sin(angle)
    cx = 0.5 * w / side + radius * np.cos(angle)
    return np.stack([cy, cx], axis=1).astype(np.float32)


def _scratch_masks(num: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """bool (num, h, w): pixels within half-width of a random segment."""
    yy, xx = _grid(h, w)
    c = _centres(num, h, w, rng)
    theta = rng.uniform(0.0, np.pi, num).astype(np.float32)
    half_len = 0.5 * rng.uniform(0.25, 0.40, num).astype(np.float32)
    half_width = 0.5 * rng.uniform(0.016, 0.028, num).astype(np.float32)
    dy, dx = np.sin(theta) * half_len, np.cos(theta) * half_len
    ay, ax = (c[:, 0] - dy)[:, None, None], (c[:, 1] - dx)[:, None, None]
    by, bx = (c[:, 0] + dy)[:, None, None], (c[:, 1] + dx)[:, None, None]
    vy, vx = by - ay, bx - ax
    t = np.clip(((yy - ay) * vy + (xx - ax) * vx) / (vy * vy + vx * vx), 0.0, 1.0)
    d2 = (yy - ay - t * vy) ** 2 + (xx - ax - t * vx) ** 2
    return d2 <= (half_width**2)[:, None, None]


def _spot_masks(num: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """bool (num, h, w): a disc of radius 3.5-6 % of the side."""
    yy, xx = _grid(h, w)
    c = _centres(num, h, w, rng)
    r = rng.uniform(0.035, 0.06, num).astype(np.float32)
    d2 = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2
    return d2 <= (r**2)[:, None, None]


def _missing_masks(num: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """bool (num, h, w): union of three overlapping discs around a centre (an irregular blob)."""
    yy, xx = _grid(h, w)
    c = _centres(num, h, w, rng)
    offsets = rng.uniform(-0.035, 0.035, size=(num, 3, 2)).astype(np.float32)
    r = rng.uniform(0.03, 0.055, size=(num, 3)).astype(np.float32)
    cy = (c[:, None, 0] + offsets[..., 0])[..., None, None]
    cx = (c[:, None, 1] + offsets[..., 1])[..., None, None]
    d2 = (yy[:, None] - cy) ** 2 + (xx[:, None] - cx) ** 2
    return np.any(d2 <= (r**2)[..., None, None], axis=1)


_MASK_MAKERS = {"scratch": _scratch_masks, "spot": _spot_masks, "missing": _missing_masks}


def make_synthetic_set(
    num_normal: int,
    num_anomalous: int,
    size: int | Sequence[int] = 224,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Synthetic product images: normals first, then anomalous ones cycling scratch, spot, missing.

    Returns images uint8 (N, H, W, 3), masks bool (N, H, W) (exactly the painted defect pixels, all False
    for normals), labels int64 (N,) (1 anomalous) and defect_types (N,) ("good" for normals).
    size: int (square) or (H, W). Deterministic given seed.
    """
    for name, value in (("num_normal", num_normal), ("num_anomalous", num_anomalous)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    n = int(num_normal) + int(num_anomalous)
    if n == 0:
        raise ValueError("make_synthetic_set needs at least one image (num_normal + num_anomalous > 0)")
    h, w = _as_hw(size)
    if min(h, w) < 16:
        raise ValueError(f"synthetic images need a side of at least 16 pixels, got {size!r}")
    rng = np.random.default_rng(seed)
    images = _product(n, h, w, rng)
    masks = np.zeros((n, h, w), dtype=bool)
    kinds = [DEFECT_KINDS[i % len(DEFECT_KINDS)] for i in range(int(num_anomalous))]
    for kind in DEFECT_KINDS:
        rows = int(num_normal) + np.flatnonzero(np.asarray([k == kind for k in kinds], dtype=bool))
        if rows.size == 0:
            continue
        kind_masks = _MASK_MAKERS[kind](rows.size, h, w, rng)
        colours = _PALETTE[rng.integers(0, len(_PALETTE), rows.size)]
        masks[rows] = kind_masks
        images[rows] = np.where(kind_masks[..., None], colours[:, None, None, :], images[rows])
    images += rng.standard_normal(images.shape, dtype=np.float32) * np.float32(3.0)
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    labels = np.concatenate([np.zeros(int(num_normal), np.int64), np.ones(int(num_anomalous), np.int64)])
    defect_types = tuple(["good"] * int(num_normal) + kinds)
    return images, masks, labels, defect_types


def write_synthetic_mvtec(
    root: str | os.PathLike,
    category: str = "synthetic",
    num_normal: int = 10,
    num_anomalous: int = 12,
    num_train: int = 4,
    size: int | Sequence[int] = 224,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic set as an MVTec AD tree under `<root>/<category>` and return that folder.

    Layout: test/good/NNN.png, test/<kind>/NNN.png, ground_truth/<kind>/NNN_mask.png (0/255),
    train/good/NNN.png (num_train extra normal images from the same product). Read it back with
    read_dataset("mvtec", root, category). Refuses to write into a non-empty folder unless overwrite=True.
    """
    if isinstance(num_train, bool) or not isinstance(num_train, (int, np.integer)) or num_train < 0:
        raise ValueError(f"num_train must be a non-negative int, got {num_train!r}")
    cat_dir = Path(root) / category
    if cat_dir.exists() and any(cat_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{cat_dir} exists and is not empty; pass overwrite=True to write into it")
    images, masks, labels, types = make_synthetic_set(num_normal + num_train, num_anomalous, size, seed)
    counters: dict[tuple[str, str], int] = {}

    def save(array: np.ndarray, folder: Path, stem: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"{stem}.png")

    for i in range(len(labels)):
        split = "train" if i < num_train else "test"
        key = (split, types[i])
        index = counters.get(key, 0)
        counters[key] = index + 1
        stem = f"{index:03d}"
        save(images[i], cat_dir / split / types[i], stem)
        if labels[i] == 1:
            save(masks[i].astype(np.uint8) * 255, cat_dir / "ground_truth" / types[i], f"{stem}_mask")
    return cat_dir
