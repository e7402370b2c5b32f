"""Heatmap images of anomaly maps: a jet colour scale, alpha overlays on the inputs, side-by-side PNG panels.

Host-side NumPy at the output edge (PIL only to encode PNGs). Normalisation: by default ``vmin``/``vmax``
are the minimum and maximum over the WHOLE set of maps passed in, not per image, so colours mean the same
score in every picture of a set and a normal image stays blue next to a defective one. Pass ``vmin``/``vmax``
to fix the scale yourself (for example to compare two methods); values outside are clipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from jzad.eval.metrics import as_binary_labels

_GAP = 4
_CONTOUR_RGB = (0, 255, 0)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _as_maps(maps, name: str = "maps") -> np.ndarray:
    """Validate (N, H, W) real finite maps and return them as float32."""
    m = np.asarray(maps)
    if m.ndim != 3:
        raise ValueError(f"{name}: expected an (N, H, W) array, got shape {m.shape}")
    if not (np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer) or m.dtype == np.bool_):
        raise ValueError(f"{name}: expected real values, got dtype {m.dtype}")
    m = m.astype(np.float32, copy=False)
    if not np.isfinite(m).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return m


def _as_images(images, shape: tuple) -> np.ndarray:
    """Validate uint8 (N, H, W, 3) images matching maps of ``shape`` (N, H, W)."""
    im = np.asarray(images)
    if im.dtype != np.uint8:
        raise ValueError(f"images: expected dtype uint8 (0..255 RGB), got {im.dtype}")
    if im.ndim != 4 or im.shape[-1] != 3:
        raise ValueError(f"images: expected an (N, H, W, 3) RGB array, got shape {im.shape}")
    if im.shape[:3] != tuple(shape):
        raise ValueError(f"images: shape {im.shape} does not match the maps: expected {tuple(shape) + (3,)}")
    return im


def value_range(maps, vmin: float | None = None, vmax: float | None = None) -> tuple[float, float]:
    """The (vmin, vmax) colour scale: given values, or else the min / max over the whole set of maps (N, H, W)."""
    m = _as_maps(maps)
    lo = float(m.min()) if vmin is None else float(vmin)
    hi = float(m.max()) if vmax is None else float(vmax)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"vmin/vmax: expected finite values, got {lo}, {hi}")
    if lo > hi:
        raise ValueError(f"vmin/vmax: expected vmin <= vmax, got vmin={lo} > vmax={hi}")
    return lo, hi


def jet(x) -> np.ndarray:
    """Jet colour scale: x in [0, 1] (any shape S) -> float32 RGB in [0, 1], shape S + (3,).

    Each channel is a tent clipped to [0, 1]: r = 1.5 - |4x - 3|, g = 1.5 - |4x - 2|, b = 1.5 - |4x - 1|,
    so 0 is dark blue (0, 0, 0.5), 0.5 green-ish (0.5, 1, 0.5) and 1 dark red (0.5, 0, 0). x is clipped first.
    """
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)
    return np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)


def colorize(maps, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Anomaly maps (N, H, W) -> uint8 jet images (N, H, W, 3).

    Values are scaled to [0, 1] by (map - vmin) / (vmax - vmin) and clipped; vmin/vmax default to the min /
    max over the whole set (see the module docstring). With a zero range (vmin == vmax, e.g. constant maps)
    values <= vmin get the lowest colour and values above it the highest.
    """
    m = _as_maps(maps)
    lo, hi = value_range(m, vmin, vmax)
    if hi > lo:
        scaled = (m - np.float32(lo)) / np.float32(hi - lo)
    else:
        scaled = (m > np.float32(hi)).astype(np.float32)
    return np.rint(jet(scaled) * 255.0).astype(np.uint8)


def overlay(images, maps, alpha: float = 0.5, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Blend jet-coloured maps onto images: (1 - alpha) image + alpha colour, uint8 (N, H, W, 3).

    images: uint8 (N, H, W, 3) RGB; maps: (N, H, W) scores; alpha in [0, 1]; vmin/vmax as in ``colorize``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    m = _as_maps(maps)
    im = _as_images(images, m.shape)
    colour = colorize(m, vmin, vmax).astype(np.float32)
    mixed = (1.0 - float(alpha)) * im.astype(np.float32) + float(alpha) * colour
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def mask_contour(masks) -> np.ndarray:
    """Boundary pixels of binary masks (N, H, W) -> bool (N, H, W).

    A mask pixel is on the boundary when one of its 4 neighbours is outside the mask or outside the image
    (so a region touching the border is closed by the border).
    """
    g = _as_masks(masks)
    padded = np.pad(g, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    interior = (padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:])
    return g & ~interior


def _as_masks(masks, shape: tuple | None = None) -> np.ndarray:
    """Validate binary masks ((N, H, W), bool or 0/1 values, optionally of a given shape) -> bool."""
    g = np.asarray(masks)
    if g.ndim != 3:
        raise ValueError(f"masks: expected an (N, H, W) array, got shape {g.shape}")
    if shape is not None and g.shape != tuple(shape):
        raise ValueError(f"masks: shape {g.shape} does not match maps {tuple(shape)}")
    return as_binary_labels(g, "masks", g.shape)


def sanitize_name(name: str) -> str:
    """A safe PNG file name for an image name such as 'broken_large/000.png' -> 'broken_large_000.png'.

    Drops a trailing image suffix, replaces every run of characters outside [A-Za-z0-9._-] (path separators
    included) by '_', strips leading dots and underscores (no hidden files, no '..'), and appends '.png'.
    """
    if not isinstance(name, str):
        raise ValueError(f"names: expected strings, got {type(name).__name__} {name!r}")
    stem = name
    if stem.lower().endswith(_IMAGE_SUFFIXES):
        stem = stem[: stem.rfind(".")]
    stem = _UNSAFE.sub("_", stem).lstrip("._").rstrip("_")
    if not stem:
        raise ValueError(f"names: {name!r} has no usable characters for a file name")
    return stem + ".png"


def panels(images, maps, masks=None, alpha: float = 0.5, vmin: float | None = None,
           vmax: float | None = None) -> np.ndarray:
    """Side-by-side panels: image | overlay | image with the mask contour (third panel only with masks).

    images uint8 (N, H, W, 3); maps (N, H, W); masks (N, H, W) binary or None. Panels are separated by a
    white gap of 4 pixels. Returns uint8 (N, H, P W + (P - 1) 4, 3) with P = 2 or 3 panels.
    """
    m = _as_maps(maps)
    im = _as_images(images, m.shape)
    parts = [im, overlay(im, m, alpha, vmin, vmax)]
    if masks is not None:
        edge = mask_contour(_as_masks(masks, m.shape))
        outlined = im.copy()
        outlined[edge] = _CONTOUR_RGB
        parts.append(outlined)
    n, h = m.shape[:2]
    gap = np.full((n, h, _GAP, 3), 255, dtype=np.uint8)
    pieces = [parts[0]]
    for part in parts[1:]:
        pieces += [gap, part]
    return np.concatenate(pieces, axis=2)


def save_overlays(out_dir, names, images, maps, masks=None, vmin: float | None = None,
                  vmax: float | None = None, alpha: float = 0.5) -> list[Path]:
    """Write one PNG per image (``panels``: image | overlay | mask contour) into ``out_dir``.

    names: N image names, sanitised into file names by ``sanitize_name`` (two names that collide after
    sanitising raise instead of overwriting each other); images uint8 (N, H, W, 3); maps (N, H, W);
    masks (N, H, W) binary or None. The colour scale is shared by the whole set: vmin/vmax default to the
    min / max over all N maps. PNGs use zlib level 1 (fast). Creates ``out_dir`` as needed; returns the
    written paths in input order.
    """
    from PIL import Image

    m = _as_maps(maps)
    im = _as_images(images, m.shape)
    g = None if masks is None else _as_masks(masks, m.shape)
    names = list(names)
    if len(names) != m.shape[0]:
        raise ValueError(f"names: expected {m.shape[0]} names (one per map), got {len(names)}")
    files = [sanitize_name(n) for n in names]
    seen: dict[str, str] = {}
    for name, file in zip(names, files):
        if file in seen:
            raise ValueError(f"names: {seen[file]!r} and {name!r} both become the file name {file!r}")
        seen[file] = name
    lo, hi = value_range(m, vmin, vmax)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, file in enumerate(files):
        one = panels(im[i:i + 1], m[i:i + 1], None if g is None else g[i:i + 1], alpha, lo, hi)[0]
        path = out / file
        Image.fromarray(one).save(path, compress_level=1)
        paths.append(path)
    return paths
