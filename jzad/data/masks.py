"""Ground-truth masks: decode, binarise, resize to the anomaly-map size with a dataset's convention.

Pipeline for one anomalous image:
  1. decode the mask file (`mask_values`): single-channel files keep their stored values and range ("1", "L",
     "LA", 16-bit, 32-bit integer, float; ranges as in `jzad.data.decode`); palette and colour masks become
     the per-pixel maximum of R, G, B (so a pure red or blue defect colour counts as bright, which luma would
     not: pure blue has luma 29); alpha is ignored;
  2. binarise (`binarize_values`):
       two-value detection: a file whose values are 0 and one positive value v (0/1, 0/100, 0/65535, 0/0.5,
       or only v) is binarised by value > 0, whatever the threshold: such files are masks stored as class ids
       or small labels, which a threshold would erase;
       otherwise the dataset's threshold on the values scaled to 8 bits (value * 255 / full, rounded):
       defect where > threshold (default 127; VisA 0, because VisA masks store small class ids);
  3. resize to (H, W) with PIL bilinear on the 0/255 "L" image (what torchvision's Resize does on a PIL mask
     in the MuSc reference code; PIL antialiases when downsampling and rounds to uint8);
  4. apply the rule to the resized values v in [0, 255]:
       "exact_one": v == 255  (MuSc's MVTec/BTAD convention: ToTensor gives v/255 and the int cast keeps only
                    exact 1.0, so boundary pixels blended with background are dropped: masks shrink slightly);
       "nonzero":   v > 0     (MuSc's VisA convention: any defect contribution counts; masks grow slightly);
       "half":      v >= 128  (the unbiased middle, for datasets without a reference convention).
Normal images (label 0) get all-zero masks without reading any file.

`read_masks` / `read_set_masks` return the masks with a `MaskReport`: the rule and threshold used, which files
two-value detection binarised differently from the threshold, which anomalous images ended with an empty mask
(empty in the file, or emptied by the resize rule), and which masks differ in size from their images (they
are stretched onto the image grid like the image itself; `mask_size_warnings` gives one line per category).
`load_masks` / `load_set_masks` return the masks only.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from jzad.data.decode import _as_hw, gray_values, image_hw, open_image, scale_to_uint8
from jzad.data.errors import DataError
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
> 0); MPDD (both layouts) follows MVTec. MTD masks have soft anti-aliased edges and tiny blowholes that
"exact_one" erases (5 of its 257 defect masks become empty at 224x224), so MTD uses "half"."""

DEFAULT_MASK_THRESHOLDS: dict[str, int] = {
    "mvtec": 127,
    "mpdd": 127,
    "btad": 127,
    "visa": 0,
    "mtd": 127,
    "folder": 127,
}
"""Binarisation threshold per dataset (defect where the 8-bit gray value > threshold) for masks that hold
more than two values; two-valued masks are binarised by > 0 (module doc)."""

_SINGLE_CHANNEL = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
_COLOUR = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV")


def _check_rule(rule: str) -> None:
    if rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {rule!r}; expected one of {MASK_RULES}")


def _check_threshold(threshold: int) -> int:
    if not 0 <= int(threshold) <= 254:
        raise ValueError(f"mask threshold must be in [0, 254], got {threshold}")
    return int(threshold)


def mask_values(image: Image.Image, path: str | os.PathLike = "<mask>") -> tuple[np.ndarray, float]:
    """A decoded mask image -> ((H, W) values, full scale) by the step-1 rule of the module doc."""
    mode = image.mode
    if mode in _SINGLE_CHANNEL:
        return gray_values(image, path)
    if mode in ("P", "PA"):
        rgb = np.asarray(image.convert("RGBA"), dtype=np.uint8)[..., :3]
    elif mode in _COLOUR:
        rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    else:
        raise DataError(f"cannot read mask {os.fspath(path)}: Pillow mode {mode!r} has no mask rule", path)
    return rgb.max(axis=2), 255.0


def binarize_values(
    values: np.ndarray, full: float, threshold: int = 127, path: str | os.PathLike = "<mask>"
) -> tuple[np.ndarray, bool]:
    """(H, W) mask values -> (bool (H, W) defect map, whether two-value detection changed the result).

    Two-valued (0 and one positive value): defect where value > 0; otherwise defect where the value scaled
    to 8 bits exceeds threshold. The flag is True when the two-value rule kept pixels the threshold would
    have dropped (the positive value scales to <= threshold).
    """
    threshold = _check_threshold(threshold)
    values = np.asarray(values)
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return np.zeros(values.shape, dtype=bool), False
    first = nonzero.flat[0]
    if first > 0 and bool((nonzero == first).all()):
        kept_by_threshold = int(scale_to_uint8(np.asarray([first]), full, path)[0]) > threshold
        return values != 0, not kept_by_threshold
    return scale_to_uint8(values, full, path) > threshold, False


def decode_mask(path: str | os.PathLike, threshold: int = 127) -> tuple[np.ndarray, bool]:
    """One mask file at its own size -> (bool (h, w) defect map, two-value flag) (steps 1-2)."""
    values, full = mask_values(open_image(path), path)
    return binarize_values(values, full, threshold, path)


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
    """One mask file -> bool (H, W): decode, binarise (two-value detection, else > threshold), resize, rule."""
    _check_rule(rule)
    binary, _ = decode_mask(path, threshold)
    return resize_binary_mask(binary.astype(np.uint8) * np.uint8(255), size, rule)


def _hw_text(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


@dataclass(frozen=True)
class MaskReport:
    """What reading one category's masks did, for the results to report.

    dataset, category: the set read. rule, threshold: the binarisation threshold and resize rule applied.
    size: (H, W) the masks were resized to. num_masks: anomalous images whose mask file was read.
    two_value: mask files holding 0 and one small value that two-value detection binarised by > 0 (the
        threshold would have erased them).
    empty_files: mask files of anomalous images with no defect pixel at their own size.
    emptied_by_resize: mask files whose defect pixels all vanished under the resize rule at `size`.
    size_mismatches: (mask path, mask (h, w), image (h, w)) for masks of another size than their image
        (only checked when the image paths are known).
    """

    dataset: str
    category: str
    rule: str
    threshold: int
    size: tuple[int, int]
    num_masks: int
    two_value: tuple[str, ...] = ()
    empty_files: tuple[str, ...] = ()
    emptied_by_resize: tuple[str, ...] = ()
    size_mismatches: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = ()

    @property
    def num_empty(self) -> int:
        """Anomalous images whose final mask is empty (in the file or after resizing)."""
        return len(self.empty_files) + len(self.emptied_by_resize)

    def summary(self) -> str:
        """One line: masks read, rule, and every count that is not zero."""
        line = (
            f"{self.dataset}/{self.category}: {self.num_masks} masks, threshold > {self.threshold}, "
            f"rule {self.rule} after resizing to {_hw_text(self.size)} (H x W)"
        )
        if self.two_value:
            line += f"; {len(self.two_value)} two-valued masks (0 and one small value) binarised by > 0"
        if self.empty_files:
            line += f"; {len(self.empty_files)} mask files hold no defect pixel"
        if self.emptied_by_resize:
            line += f"; {len(self.emptied_by_resize)} masks emptied by the {self.rule} rule"
        if self.size_mismatches:
            line += f"; {len(self.size_mismatches)} masks differ in size from their images"
        return line

    def size_warning(self) -> str | None:
        """One warning line naming the mismatched (mask vs image) sizes, or None when all sizes match."""
        if not self.size_mismatches:
            return None
        return _size_warning(self.dataset, self.category, self.num_masks, self.size_mismatches)


def _size_warning(dataset, category, num_masks, mismatches) -> str:
    pairs = Counter((m, i) for _, m, i in mismatches)
    first = {}
    for path, m, i in mismatches:
        first.setdefault((m, i), path)
    parts = [
        f"mask {_hw_text(m)} vs image {_hw_text(i)} in {count} file{'s' if count > 1 else ''} "
        f"(e.g. {first[(m, i)]})"
        for (m, i), count in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return (
        f"{dataset}/{category}: {len(mismatches)} of {num_masks} masks differ in size from their images "
        f"and were stretched onto them (H x W): " + "; ".join(parts)
    )


def mask_size_warnings(reports: Iterable[MaskReport]) -> list[str]:
    """One warning line per (dataset, category) whose masks differ in size from their images, in first-seen
    order; reports of the same category (e.g. several subsets) are merged."""
    merged: dict[tuple[str, str], list] = {}
    counts: dict[tuple[str, str], int] = {}
    for report in reports:
        key = (report.dataset, report.category)
        merged.setdefault(key, []).extend(report.size_mismatches)
        counts[key] = counts.get(key, 0) + report.num_masks
    return [
        _size_warning(key[0], key[1], counts[key], mismatches)
        for key, mismatches in merged.items()
        if mismatches
    ]


def read_masks(
    mask_paths: Sequence[str | os.PathLike | None],
    labels: Sequence[int] | np.ndarray,
    size: int | Sequence[int],
    rule: str,
    threshold: int = 127,
    *,
    image_paths: Sequence[str | os.PathLike] | None = None,
    dataset: str = "?",
    category: str = "?",
    geometry=None,
) -> tuple[np.ndarray, MaskReport]:
    """Ground-truth masks and what reading them did: (bool (N, H, W), MaskReport).

    labels (N,): 0 -> all-zero mask (any mask path ignored), 1 -> the mask file is required (DataError
    naming the image when its path is None). rule: "exact_one", "nonzero" or "half"; threshold: on 8-bit
    values of masks with more than two values (module doc). image_paths (N,): when given, each mask's size
    is compared with its image's (header only; an image file that does not exist is `load_images`' error
    to report, not this function's) and mismatches are reported. dataset, category: labels for
    the report. geometry: optional (h, w) of a mask file -> ((H', W') to resize to, centre-crop side or None),
    for inputs that are resized and cropped (PatchCore); by default every mask is resized to ``size``.
    """
    _check_rule(rule)
    threshold = _check_threshold(threshold)
    h, w = _as_hw(size)
    if labels is None:
        raise ValueError("load_masks needs labels (0 normal / 1 anomalous); this image set has none")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != len(mask_paths):
        raise ValueError(f"{len(mask_paths)} mask paths but {labels.shape[0]} labels")
    if image_paths is not None and len(image_paths) != len(mask_paths):
        raise ValueError(f"{len(mask_paths)} mask paths but {len(image_paths)} image paths")
    out = np.zeros((len(mask_paths), h, w), dtype=bool)
    two_value, empty_files, emptied, mismatches = [], [], [], []
    count = 0
    for i, (path, label) in enumerate(zip(mask_paths, labels)):
        if int(label) not in (0, 1):
            raise ValueError(f"label of image {i} must be 0 or 1, got {label}")
        if int(label) == 0:
            continue
        if path is None:
            image = None if image_paths is None else os.fspath(image_paths[i])
            raise DataError(
                f"image {i}{'' if image is None else ' ' + image} is anomalous but has no mask path; pixel "
                "ground truth is unavailable (read the dataset with allow_missing_masks=False to find which "
                "file is missing)",
                image,
            )
        path = os.fspath(path)
        binary, by_two_value = decode_mask(path, threshold)
        count += 1
        if by_two_value:
            two_value.append(path)
        if image_paths is not None and os.path.isfile(image_paths[i]):
            image_size = image_hw(image_paths[i])
            if binary.shape != image_size:
                mismatches.append((path, tuple(binary.shape), image_size))
        if geometry is None:
            out[i] = resize_binary_mask(binary.astype(np.uint8) * np.uint8(255), (h, w), rule)
        else:
            shape, crop = geometry(*binary.shape)
            resized = resize_binary_mask(binary.astype(np.uint8) * np.uint8(255), shape, rule)
            out[i] = resized if crop is None else _center_crop(resized, crop)
        if not binary.any():
            empty_files.append(path)
        elif not out[i].any():
            emptied.append(path)
    report = MaskReport(
        dataset=dataset,
        category=category,
        rule=rule,
        threshold=threshold,
        size=(h, w),
        num_masks=count,
        two_value=tuple(two_value),
        empty_files=tuple(empty_files),
        emptied_by_resize=tuple(emptied),
        size_mismatches=tuple(mismatches),
    )
    return out, report


def _center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """The central size x size window as torchvision's CenterCrop picks it."""
    h, w = array.shape[:2]
    if h < size or w < size:
        raise ValueError(f"center crop {size} is larger than the resized mask {h}x{w}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return array[top:top + size, left:left + size]


def load_masks(
    mask_paths: Sequence[str | os.PathLike | None],
    labels: Sequence[int] | np.ndarray,
    size: int | Sequence[int],
    rule: str,
    threshold: int = 127,
) -> np.ndarray:
    """Ground-truth masks: bool (N, H, W); `read_masks` without the report."""
    return read_masks(mask_paths, labels, size, rule, threshold)[0]


def read_set_masks(
    image_set: ImageSet,
    size: int | Sequence[int],
    rule: str | None = None,
    threshold: int | None = None,
    geometry=None,
) -> tuple[np.ndarray, MaskReport]:
    """`read_masks` for an ImageSet with its dataset's default rule and threshold, sizes checked against
    the set's images: (bool (N, H, W), MaskReport)."""
    if not image_set.has_masks:
        raise ValueError(
            f"{image_set.dataset}/{image_set.category}: pixel ground truth is not available for every image "
            "(no labels, or anomalous images without masks)"
        )
    rule = DEFAULT_MASK_RULES.get(image_set.dataset, "half") if rule is None else rule
    if threshold is None:
        threshold = DEFAULT_MASK_THRESHOLDS.get(image_set.dataset, 127)
    return read_masks(
        image_set.mask_paths,
        image_set.labels,
        size,
        rule,
        threshold,
        image_paths=image_set.paths,
        dataset=image_set.dataset,
        category=image_set.category,
        geometry=geometry,
    )


def load_set_masks(
    image_set: ImageSet,
    size: int | Sequence[int],
    rule: str | None = None,
    threshold: int | None = None,
) -> np.ndarray:
    """`read_set_masks` without the report: bool (N, H, W)."""
    return read_set_masks(image_set, size, rule, threshold)[0]
