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

``write_synthetic_loco`` writes an MVTec LOCO-like tree instead (``write_synthetic_loco`` docstring): coloured
parts on a tray, logical anomalies (a missing part, an extra part, a wrong colour), structural ones
(scratches), several ground-truth files per image and a ``defects_config.json``.
"""

from __future__ import annotations

import json
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


# ----------------------------------------------------------------------------------- MVTec LOCO-like tree

LOCO_LOGICAL_KINDS = ("missing_part", "extra_part", "wrong_colour")
LOCO_SYNTHETIC_DEFECTS = (
    {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "extra_part", "pixel_value": 254, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "wrong_colour", "pixel_value": 253, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 252, "saturation_threshold": 60, "relative_saturation": False},
)
"""The tree's defects_config.json: one entry per defect kind (pixel value 255 down to 252)."""

_LOCO_BACKGROUND = np.array([38.0, 40.0, 46.0], np.float32)
_LOCO_TRAY = np.array([200.0, 200.0, 190.0], np.float32)
_LOCO_COLOURS = {"red": (200.0, 35.0, 35.0), "green": (40.0, 160.0, 60.0), "blue": (40.0, 70.0, 210.0)}
_LOCO_PARTS = (("red", "disc"), ("red", "disc"), ("green", "bar"), ("blue", "square"))
_LOCO_SLOTS = 6  # part places on the tray: 2 rows x 3 columns


def _loco_part(kind: str, cy: float, cx: float, h: int, w: int) -> np.ndarray:
    """bool (h, w) footprint of a part centred at (cy, cx) pixels: disc (radius 0.09 h), bar (0.1 h x 0.3 h)
    or square (side 0.18 h)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    if kind == "disc":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= (0.09 * h) ** 2
    half_h, half_w = (0.05 * h, 0.15 * h) if kind == "bar" else (0.09 * h, 0.09 * h)
    return (np.abs(yy - cy) <= half_h) & (np.abs(xx - cx) <= half_w)


def _loco_scratch(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """bool (h, w): a straight segment about 1.5 px wide across the tray."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    ay, ax = rng.uniform(0.25 * h, 0.75 * h), rng.uniform(0.2 * w, 0.45 * w)
    theta = rng.uniform(-0.6, 0.6)
    length = rng.uniform(0.25, 0.4) * w
    by, bx = ay + np.sin(theta) * length, ax + np.cos(theta) * length
    vy, vx = by - ay, bx - ax
    t = np.clip(((yy - ay) * vy + (xx - ax) * vx) / (vy * vy + vx * vx), 0.0, 1.0)
    return (yy - ay - t * vy) ** 2 + (xx - ax - t * vx) ** 2 <= 0.75**2


def _loco_scene(kind: str, h: int, w: int, tray, rng: np.random.Generator):
    """(uint8 (h, w, 3) image, [bool (h, w) channel per defect]) of one image of ``kind`` ("good", a
    LOCO_LOGICAL_KINDS entry, "scratch" or "scratch2": two scratches, two channels)."""
    image = np.empty((h, w, 3), np.float32)
    image[:] = _LOCO_BACKGROUND
    top, bottom, left, right = int(0.12 * h), int(0.88 * h), int(0.1 * w), int(0.9 * w)
    image[top:bottom, left:right] = tray
    rows, cols = (0.33 * h, 0.67 * h), tuple(left + (right - left) * f for f in (1 / 6, 1 / 2, 5 / 6))
    slots = rng.permutation(_LOCO_SLOTS)
    parts = [list(p) for p in _LOCO_PARTS]
    channels = []
    if kind == "extra_part":
        parts.append(["red", "disc"])
    missing = int(rng.integers(len(parts))) if kind == "missing_part" else -1
    if kind == "wrong_colour":
        parts[2][0] = "blue"
    jitter = rng.uniform(-0.03, 0.03, (len(parts), 2)) * h
    for index, ((colour, shape), slot) in enumerate(zip(parts, slots)):
        cy = rows[slot // 3] + jitter[index, 0]
        cx = cols[slot % 3] + jitter[index, 1]
        footprint = _loco_part(shape, cy, cx, h, w)
        if index == missing:
            channels.append(footprint)
            continue
        image[footprint] = _LOCO_COLOURS[colour]
        if (kind == "extra_part" and index == len(parts) - 1) or (kind == "wrong_colour" and index == 2):
            channels.append(footprint)
    if kind.startswith("scratch"):
        for _ in range(2 if kind == "scratch2" else 1):
            line = _loco_scratch(h, w, rng)
            image[line] = (15.0, 15.0, 15.0)
            channels.append(line)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(3.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), channels


def write_synthetic_loco(
    root: str | os.PathLike,
    category: str = "parts_tray",
    num_train: int = 4,
    num_validation: int = 4,
    num_good: int = 4,
    num_logical: int = 3,
    num_structural: int = 2,
    size: Sequence[int] = (48, 96),
    seed: int = 0,
    subtypes: dict[str, Sequence[float]] | None = None,
) -> dict:
    """Write an MVTec LOCO-like category under <root>/<category> (read it with ``jzad.data.read_loco``).

    A tray (light gray, or per sub-type the colour ``subtypes[name]`` (R, G, B)) on a dark background holds
    two red discs, a green bar and a blue square in 4 of 6 jittered places. Logical anomalies cycle through
    LOCO_LOGICAL_KINDS: a part left out (its channel: where it would be), an extra red disc (its footprint),
    the green bar painted blue (the bar). Structural anomalies are dark scratches; every second image has
    two, each its own ground-truth file. Layout: train/good, validation/good, test/{good, logical_anomalies,
    structural_anomalies}/NNN.png, ground_truth/<type>/NNN/000.png[, 001.png] (0 or the defect's pixel
    value), defects_config.json (``LOCO_SYNTHETIC_DEFECTS``). size: (H, W), not square like LOCO's photos.

    subtypes: each count is per sub-type and the images cycle through them. Returns {"category": folder,
    "kinds": {path relative to root: kind}, "subtypes": {path relative to root: sub-type} (empty without)}.
    """
    for name, value in (("num_train", num_train), ("num_validation", num_validation), ("num_good", num_good),
                        ("num_logical", num_logical), ("num_structural", num_structural)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    h, w = _as_hw(size)
    if min(h, w) < 24:
        raise ValueError(f"synthetic LOCO images need a side of at least 24 pixels, got {size!r}")
    cat_dir = Path(root) / category
    if cat_dir.exists() and any(cat_dir.iterdir()):
        raise FileExistsError(f"{cat_dir} exists and is not empty")
    rng = np.random.default_rng(seed)
    trays = {None: _LOCO_TRAY} if not subtypes else {k: np.asarray(v, np.float32) for k, v in subtypes.items()}
    plan = [("train", "good", "good", num_train), ("validation", "good", "good", num_validation),
            ("test", "good", "good", num_good), ("test", "logical_anomalies", None, num_logical),
            ("test", "structural_anomalies", None, num_structural)]
    pixel_values = {d["defect_name"]: d["pixel_value"] for d in LOCO_SYNTHETIC_DEFECTS}
    kinds, names = {}, {}
    for split, folder, fixed, count in plan:
        for index in range(count * len(trays)):
            subtype = list(trays)[index % len(trays)]
            number = index // len(trays)
            kind = fixed or (LOCO_LOGICAL_KINDS[number % 3] if folder == "logical_anomalies"
                             else ("scratch", "scratch2")[number % 2])
            image, channels = _loco_scene(kind, h, w, trays[subtype], rng)
            relative = Path(category) / split / folder / f"{index:03d}.png"
            path = Path(root) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            value = pixel_values.get("scratch" if kind.startswith("scratch") else kind, 0)
            for j, channel in enumerate(channels):
                gt = cat_dir / "ground_truth" / folder / f"{index:03d}" / f"{j:03d}.png"
                gt.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.where(channel, value, 0).astype(np.uint8)).save(gt)
            kinds[relative.as_posix()] = kind
            if subtype is not None:
                names[relative.as_posix()] = subtype
    (cat_dir / "defects_config.json").write_text(json.dumps(list(LOCO_SYNTHETIC_DEFECTS), indent=1))
    return {"category": cat_dir, "kinds": kinds, "subtypes": names}
