"""Image decoding: files -> RGB PIL images -> fixed-size uint8 arrays.

Resizing uses PIL bicubic to a square (aspect ratio not kept), which is what the reference pipelines do
(torchvision's Resize on PIL images calls the same PIL resampler, antialiasing when downsampling).
Decoding errors are raised with the file named; truncated files are errors, never padded silently.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError


def _as_hw(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """(H, W) from an int (square) or an (H, W) pair; both must be positive."""
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        vals = tuple(size)
        if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) for v in vals):
            raise ValueError(f"{name} must be an int or an (H, W) pair of ints, got {size!r}")
        hw = (int(vals[0]), int(vals[1]))
    if hw[0] < 1 or hw[1] < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return hw


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file in its own mode; errors name the file.

    FileNotFoundError for a missing file; ValueError for a file PIL cannot identify or decode (garbage,
    truncated, corrupt chunks).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except UnidentifiedImageError as err:
        raise ValueError(f"cannot decode image {path}: not a recognised image format ({err})") from err
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode one image file to an RGB PIL image (grayscale and palette images are expanded)."""
    im = open_image(path)
    return im if im.mode == "RGB" else im.convert("RGB")


def resize_rgb(image: Image.Image, size: int | Sequence[int]) -> np.ndarray:
    """RGB PIL image -> uint8 (H, W, 3) resized with PIL bicubic; size int (square) or (H, W)."""
    h, w = _as_hw(size)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (w, h):
        image = image.resize((w, h), resample=Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def load_images(paths: Sequence[str | os.PathLike], size: int | Sequence[int]) -> np.ndarray:
    """Decode and resize images: uint8 (N, H, W, 3), PIL bicubic, aspect ratio not kept.

    size: int for square (size, size) output or an (H, W) pair. The same array serves as backbone input
    (after the backbone's own normalisation) and as the background of heat-map overlays.
    """
    h, w = _as_hw(size)
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = resize_rgb(load_image(path), (h, w))
    return out
