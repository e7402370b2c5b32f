"""Ground-truth masks: decode, binarise, resize to the anomaly-map size with a dataset's convention.

Pipeline for one anomalous image:
  1. decode the mask file as 8-bit grayscale (PIL "L");
  2. binarise: defect where value > threshold (default 127; VisA 0, because VisA masks store small class
     ids such as 1, which look black and would vanish at 127); the result is a 0/255 uint8 image;
  3. resize to (H, W) with PIL bilinear on that 0/255 "L" image (what torchvision's Resize does on a PIL mask
     in the MuSc reference code; PIL antialiases when downsampling and rounds to uint8);
  4. apply the rule to the resized values v in [0, 255]:
       "exact_one": v == 255  (MuSc's MVTec/BTAD convention: ToTensor gives v/255 and the int cast keeps only
                    exact 1.0, so boundary pixels blended with background are dropped: masks shrink slightly);
       "nonzero":   v > 0     (MuSc's VisA convention: any defect contribution counts; masks grow slightly);
       "half":      v >= 128  (the unbiased middle, for datasets without a reference convention).
Normal images (label 0) get all-zero masks without reading any file.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from jzad.data.decode import _as_hw, open_image
from jzad.data.imageset import ImageSet

MASK_RULES = ("exact_one", "nonzero", "half")

DEFAULT_MASK_RULES: dict[str, str] = {
    "mvtec": "exact_one",
    "mpdd": "exact_one",
    "btad": "exact_one",
    "visa": "nonzero",
    "mtd": "half",
    "folder": "half",
}
"""Rule per dataset: MuSc's conventions where it has one (MVTec AD and BTAD truncate to exact 1.0, VisA keeps
> 0); MPDD follows its MVTec layout. MTD masks have soft anti-aliased edges and tiny blowholes that
"exact_one" erases (5 of its 257 defect masks become empty at 224x224), so MTD uses "half"."""

DEFAULT_MASK_THRESHOLDS: dict[str, int] = {
    "mvtec": 127,
    "mpdd": 127,
    "btad": 127,
    "visa": 0,
    "mtd": 127,
    "folder": 127,
}
"""Binarisation threshold per dataset (defect where the decoded gray value > threshold)."""


def _check_rule(rule: str) -> None:
    if rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {rule!r}; expected one of {MASK_RULES}")


def binarize_mask(gray: np.ndarray, threshold: int = 127) -> np.ndarray:
    """uint8 (H, W) gray mask -> uint8 (H, W) with 255 where gray > threshold, else 0."""
    if not 0 <= int(threshold) <= 254:
        raise ValueError(f"mask threshold must be in [0, 254], got {threshold}")
    return np.where(np.asarray(gray) > int(threshold), np.uint8(255), np.uint8(0))


def resize_binary_mask(
    binary: np.ndarray, size: int | Sequence[int], rule: str
) -> np.ndarray:
    """0/255 uint8 (h, w) -> bool (H, W): PIL bilinear resize of the "L" image, then the rule (module doc)."""
    _check_rule(rule)
    h, w = _as_hw(size)
    binary = np.asarray(binary)
    if binary.dtype != np.uint8 or binary.ndim != 2:
        raise ValueError(f"binary mask must be uint8 (h, w), got {binary.dtype} {binary.shape}")
    if binary.shape == (h, w):
        values = binary
    else:
        values = np.asarray(
            Image.fromarray(binary).resize((w, h), resample=Image.Resampling.BILINEAR)
        )
    if rule == "exact_one":
        return values == 255
    if rule == "nonzero":
        return values > 0
    return values >= 128


def load_mask(
    path: str | os.PathLike, size: int | Sequence[int], rule: str, threshold: int = 127
) -> np.ndarray:
    """One mask file -> bool (H, W): decode as grayscale, binarise (> threshold), resize, apply rule."""
    _check_rule(rule)
    im = open_image(path)
    gray = np.asarray(im.convert("L"), dtype=np.uint8)
    return resize_binary_mask(binarize_mask(gray, threshold), size, rule)


def load_masks(
    mask_paths: Sequence[str | os.PathLike | None],
    labels: Sequence[int] | np.ndarray,
    size: int | Sequence[int],
    rule: str,
    threshold: int = 127,
) -> np.ndarray:
    """Ground-truth masks: bool (N, H, W); size int (square) or (H, W).

    labels (N,): 0 -> all-zero mask (any mask path ignored), 1 -> the mask file is required (ValueError
    naming the image index when its path is None). rule: "exact_one", "nonzero" or "half" (module doc);
    threshold: binarisation threshold on the decoded gray values.
    """
    _check_rule(rule)
    h, w = _as_hw(size)
    if labels is None:
        raise ValueError("load_masks needs labels (0 normal / 1 anomalous); this image set has none")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != len(mask_paths):
        raise ValueError(f"{len(mask_paths)} mask paths but {labels.shape[0]} labels")
    out = np.zeros((len(mask_paths), h, w), dtype=bool)
    for i, (path, label) in enumerate(zip(mask_paths, labels)):
        if int(label) not in (0, 1):
            raise ValueError(f"label of image {i} must be 0 or 1, got {label}")
        if int(label) == 0:
            continue
        if path is None:
            raise ValueError(
                f"image {i} is anomalous but has no mask path; pixel ground truth is unavailable "
                "(read the dataset with allow_missing_masks=False to find which file is missing)"
            )
        out[i] = load_mask(path, (h, w), rule, threshold)
    return out


def load_set_masks(
    image_set: ImageSet,
    size: int | Sequence[int],
    rule: str | None = None,
    threshold: int | None = None,
) -> np.ndarray:
    """`load_masks` for an ImageSet with its dataset's default rule and threshold: bool (N, H, W)."""
    if not image_set.has_masks:
        raise ValueError(
            f"{image_set.dataset}/{image_set.category}: pixel ground truth is not available for every image "
            "(no labels, or anomalous images without masks)"
        )
    rule = DEFAULT_MASK_RULES.get(image_set.dataset, "half") if rule is None else rule
    if threshold is None:
        threshold = DEFAULT_MASK_THRESHOLDS.get(image_set.dataset, 127)
    return load_masks(image_set.mask_paths, image_set.labels, size, rule, threshold)
