"""MVTec LOCO AD: the folder reader, its multi-channel ground truth, and the juice/cable sub-types.

Layout (one category):
  <root>/<cat>/defects_config.json
  <root>/<cat>/{train/good, validation/good}/<id>.png                      normal images
  <root>/<cat>/test/{good, logical_anomalies, structural_anomalies}/<id>.png
  <root>/<cat>/ground_truth/{logical_anomalies, structural_anomalies}/<id>/000.png[, 001.png, ...]
Each ground-truth PNG is one channel (one defect): 0 = defect-free, one gray value naming the defect's entry of
``defects_config.json``. An image's mask is the union of its channels; the sPRO metric keeps them apart
(``jzad.eval.spro``). Images are not square (e.g. 800 x 1600) and are read at their own size.

``read_loco`` returns a ``LocoSet``: the usual ``ImageSet`` (labels 0/1, defect types "good" /
"logical_anomalies" / "structural_anomalies", mask_paths None and has_masks False, since one file per image
cannot describe a LOCO mask) plus the channel files of every image and the parsed defects config.
``load_loco_truth`` decodes the channels at full size for sPRO, ``load_loco_masks`` the resized unions for
pixel AUROC / AUPRO.

Sub-types. juice_bottle (banana / cherry / orange juice) and splicing_connectors (yellow / blue / red cable)
each hold three products; CLIP-LAD's benchmark scores each sub-type as its own category. MVTec ships no
sub-type labels, so ``assign_subtypes`` derives them with a rule per category (``SUBTYPE_RULES``), or reads
them from an explicit list file (``read_subtype_list``) where labels are known.

- juice_bottle (``LiquidRule``, validated): the liquid decides. The bottle is located in the image, the
  brightness normalised by the image's own label paper, and the body's pixels vote by the liquid colours
  measured on 40 hand-labelled real photos (orange juice: saturated yellow; banana: pale cream; cherry: dark
  red). Labels never vote, so a wrong, moved or missing label leaves the vote to the liquid; a mixed image
  (wrong_juice_type) joins its liquid's sub-type, whose normal images disagree with its icon.
- splicing_connectors (``HueRule``, unverified on real photos): the dominant hue of the saturated pixels in a
  fixed central region (the cable between the connectors), from the cables' known colours.

A vote that is not clear-cut (an empty bottle, two liquids, no bottle found) gives no sub-type: the image is
reported (name, votes, reason) and scored in none, never guessed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from jzad.data.decode import _as_hw, load_image, open_image
from jzad.data.imageset import ImageSet
from jzad.data.masks import MASK_RULES, resize_binary_mask
from jzad.data.spro_truth import DefectConfig, SPROTruth, parse_defects_config, truth_from_channels

LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
LOCO_SPLITS = ("train", "validation", "test")
LOCO_TEST_TYPES = ("good", "logical_anomalies", "structural_anomalies")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class LocoSet:
    """One LOCO category and split.

    images: ImageSet (dataset "loco"); mask_files: per image, its ground-truth channel PNGs in file order
    (empty for normal images, and for anomalous ones read with allow_missing_masks); defects: the category's
    defects config (empty when the file is absent and the split has no anomalies).
    """

    images: ImageSet
    mask_files: tuple[tuple[str, ...], ...]
    defects: tuple[DefectConfig, ...]

    def __post_init__(self):
        files = tuple(tuple(str(f) for f in group) for group in self.mask_files)
        if len(files) != len(self.images):
            raise ValueError(f"LocoSet has {len(self.images)} images but {len(files)} mask file groups")
        object.__setattr__(self, "mask_files", files)
        object.__setattr__(self, "defects", tuple(self.defects))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_truth(self) -> bool:
        """True when every anomalous image has at least one channel file (sPRO can be computed)."""
        labels = self.images.labels or ()
        return all(files for label, files in zip(labels, self.mask_files) if label == 1)

    def select(self, indices: Sequence[int] | np.ndarray) -> "LocoSet":
        """The images at indices, in that order."""
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        return LocoSet(self.images.select(idx), tuple(self.mask_files[i] for i in idx), self.defects)


def read_defects_config(path: str | os.PathLike) -> tuple[DefectConfig, ...]:
    """Parse a ``defects_config.json`` file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"defects config not found: {path}")
    try:
        with open(path) as f:
            entries = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return parse_defects_config(entries, str(path))


def _images_in(directory: Path) -> list[Path]:
    return sorted(
        (p for p in directory.iterdir()
         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )


def _subdirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def loco_categories(root: str | os.PathLike) -> list[str]:
    """Category folders under root that hold a test folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"loco: dataset root not found: {root}")
    found = [d for d in _subdirs(root) if (root / d / "test").is_dir()]
    if not found:
        raise FileNotFoundError(f"loco: no <category>/test folders in {root}; it contains {_subdirs(root)}")
    return found


def read_loco(
    root: str | os.PathLike, category: str, split: str = "test", allow_missing_masks: bool = False
) -> LocoSet:
    """List one LOCO category's split (see the module docstring) in sorted order.

    split: "train" or "validation" (normal images only) or "test". The test split reads its good,
    logical_anomalies and structural_anomalies folders (any other subfolder is an error) and requires
    ``defects_config.json``; every anomalous image needs a non-empty ground-truth folder of .png channels
    unless allow_missing_masks.
    """
    if split not in LOCO_SPLITS:
        raise ValueError(f"loco: unknown split {split!r}; expected one of {LOCO_SPLITS}")
    root = Path(root)
    cat_dir = root / category
    if not cat_dir.is_dir():
        found = _subdirs(root) if root.is_dir() else []
        raise FileNotFoundError(f"loco: category folder not found: {cat_dir}; {root} contains {found}")
    config_path = cat_dir / "defects_config.json"
    if split == "test" or config_path.is_file():
        defects = read_defects_config(config_path)
    else:
        defects = ()
    split_dir = cat_dir / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"loco: {split} folder not found: {split_dir}; {cat_dir} contains {_subdirs(cat_dir)}")
    found_types = _subdirs(split_dir)
    allowed = LOCO_TEST_TYPES if split == "test" else ("good",)
    unexpected = [t for t in found_types if t not in allowed]
    if unexpected:
        raise ValueError(f"loco: {split_dir} has unexpected folders {unexpected}; expected {allowed}")
    if "good" not in found_types:
        raise FileNotFoundError(f"loco: {split_dir / 'good'} not found")
    paths, labels, types, mask_files = [], [], [], []
    for defect_type in (t for t in allowed if t in found_types):
        for image in _images_in(split_dir / defect_type):
            files: tuple[str, ...] = ()
            if defect_type != "good":
                gt_dir = cat_dir / "ground_truth" / defect_type / image.stem
                files = tuple(str(p) for p in sorted(gt_dir.glob("*.png"))) if gt_dir.is_dir() else ()
                if not files and not allow_missing_masks:
                    raise FileNotFoundError(
                        f"loco: no ground-truth channels for {image}: expected {gt_dir}/000.png (one .png per "
                        "defect); to read it without pixel ground truth, pass allow_missing_masks=True"
                    )
            paths.append(str(image))
            labels.append(0 if defect_type == "good" else 1)
            types.append(defect_type)
            mask_files.append(files)
    if not paths:
        raise FileNotFoundError(f"loco/{category}: no images in {split_dir}/{{{','.join(found_types)}}}")
    images = ImageSet(
        dataset="loco",
        category=category,
        paths=tuple(paths),
        labels=tuple(labels),
        defect_types=tuple(types),
        mask_paths=(None,) * len(paths),
        has_masks=False,
    )
    return LocoSet(images, tuple(mask_files), defects)


def _read_channel(path: str) -> np.ndarray:
    array = np.asarray(open_image(path))
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"ground-truth channel {path} must be a single-channel integer PNG, got {array.dtype} {array.shape}"
        )
    return array


def _image_size(path: str) -> tuple[int, int]:
    im = open_image(path)
    return im.height, im.width


def load_loco_truth(loco: LocoSet) -> SPROTruth:
    """Every image's channels at full resolution as an SPROTruth (for ``jzad.eval.spro``)."""
    if not loco.has_truth:
        raise ValueError(f"loco/{loco.images.category}: some anomalous images have no ground-truth channels")
    channels = [[_read_channel(f) for f in files] for files in loco.mask_files]
    shape = None if any(channels) else _image_size(loco.images.paths[0])
    return truth_from_channels(channels, loco.defects, shape, sources=loco.mask_files)


class LocoTruths:
    """The ground truth of a LOCO set as a sequence of one-image SPROTruths, each decoded when it is read (for
    sPRO in bounded memory: ``jzad.eval.spro`` streams over it)."""

    def __init__(self, loco: LocoSet):
        if not loco.has_truth:
            raise ValueError(f"loco/{loco.images.category}: some anomalous images have no ground-truth channels")
        self.loco = loco
        self._shape = None

    def __len__(self) -> int:
        return len(self.loco)

    def __getitem__(self, i: int) -> SPROTruth:
        files = self.loco.mask_files[i]
        if not files and self._shape is None:
            self._shape = _image_size(self.loco.images.paths[i])
        return truth_from_channels([[_read_channel(f) for f in files]], self.loco.defects, self._shape,
                                   sources=[files])


def load_loco_masks(loco: LocoSet, size: int | Sequence[int], rule: str = "half") -> np.ndarray:
    """Union of each image's channels, resized: bool (N, H, W), for pixel AUROC / AUPRO at the map size.

    The union (0/255) is resized with PIL bilinear and thresholded by rule ("exact_one", "nonzero", "half"),
    as ``jzad.data.masks`` does for single-file masks.
    """
    if rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {rule!r}; expected one of {MASK_RULES}")
    if not loco.has_truth:
        raise ValueError(f"loco/{loco.images.category}: some anomalous images have no ground-truth channels")
    h, w = _as_hw(size)
    out = np.zeros((len(loco), h, w), bool)
    for i, files in enumerate(loco.mask_files):
        if files:
            out[i] = resize_binary_mask(np.where(union_mask(files), 255, 0).astype(np.uint8), (h, w), rule)
    return out


def union_mask(files: Sequence[str]) -> np.ndarray:
    """bool (H, W): the union of one image's ground-truth channel files at full resolution."""
    return np.logical_or.reduce([_read_channel(f) > 0 for f in files])


# ------------------------------------------------------------------------------------------- sub-types


@dataclass(frozen=True)
class SubtypeVote:
    """One image's sub-type evidence: name (None when the votes are not clear-cut), votes (pixels per
    sub-type), and reason (why it is not clear-cut; empty when it is)."""

    name: str | None
    votes: dict[str, int]
    reason: str = ""


def _decide(votes: dict[str, int], needed: int, min_share: float) -> SubtypeVote:
    """The sub-type holding at least min_share of all votes and at least needed votes, else None with why."""
    total = sum(votes.values())
    best = max(votes, key=lambda name: votes[name])
    if votes[best] < needed:
        return SubtypeVote(None, votes, f"too few deciding pixels: {best} has {votes[best]}, needs {needed}")
    share = votes[best] / total
    if share < min_share:
        return SubtypeVote(None, votes, f"split vote: {best} holds {share:.2f} of the votes, needs {min_share:.2f}")
    return SubtypeVote(best, votes)


@dataclass(frozen=True)
class LiquidRule:
    """juice_bottle: find the bottle, then vote with the colour of the liquid inside it.

    The bottle is the widest bright object on the dark background: pixels brighter than ``foreground`` times
    the image's 99.5th-percentile value (a brightness reference, so exposure changes cancel) form column and
    row profiles; the bottle's columns are where the column profile reaches half its peak, its body the rows
    where at least ``body_rows`` of those columns are bright. Votes come from the body's central columns
    (``column_margin`` of the width dropped each side, where the glass edges reflect). A pixel votes for a
    liquid when its hue, saturation and normalised value fall in that liquid's ranges: (name, hue start,
    hue stop [degrees, read modulo 360], min saturation, max saturation, min value). Pixels at or above
    ``max_value`` of the reference are the labels' white-yellow paper and highlights, and never vote, so a
    label (right, wrong, moved or missing) barely moves the vote: the liquid decides. Clear-cut: the winner
    holds ``min_share`` of the votes and covers ``min_fraction`` of the body region; otherwise (an empty
    bottle, two liquids, no bottle found) the image is ambiguous.

    The ranges were read from the liquid pixels of the 40 hand-labelled real photos in
    ``../shared/data/mvtec_loco_sample/juice_bottle``: orange juice is a saturated yellow (hue about 48,
    saturation about 0.5-0.67, value about 0.55 of the label paper), banana juice a pale cream of the same hue
    (saturation about 0.2-0.32), cherry juice a dark red (hue about 10, saturation about 0.55-0.7, value about
    0.28).
    """

    liquids: tuple[tuple[str, float, float, float, float, float], ...]
    foreground: float = 0.12
    body_rows: float = 0.6
    column_margin: float = 0.15
    max_value: float = 0.8
    min_share: float = 0.65
    min_fraction: float = 0.12
    validated_on_real_photos: bool = True

    def __post_init__(self):
        if not self.liquids:
            raise ValueError("LiquidRule.liquids must name at least one liquid")
        if not (0.0 < self.min_share <= 1.0 and 0.0 <= self.min_fraction < 1.0):
            raise ValueError(f"LiquidRule: min_share in (0, 1] and min_fraction in [0, 1), got "
                             f"{self.min_share}, {self.min_fraction}")

    @property
    def names(self) -> tuple[str, ...]:
        """Sub-type names in first-appearance order."""
        return tuple(dict.fromkeys(entry[0] for entry in self.liquids))

    def describe(self) -> str:
        """One line naming the rule, for results.json and the log."""
        ranges = "; ".join(f"{name}: hue {a:g}-{b:g}, saturation {s0:g}-{s1:g}, value >= {v:g}"
                           for name, a, b, s0, s1, v in self.liquids)
        return (f"liquid colour inside the located bottle (brightness-normalised; label paper >= {self.max_value:g} "
                f"ignored; clear-cut at {self.min_share:g} of the votes and {self.min_fraction:g} of the body): "
                f"{ranges}")

    def body(self, image: np.ndarray) -> tuple[int, int, int, int] | None:
        """(top, bottom, left, right) pixel bounds of the bottle's body, or None when no bottle is found."""
        value = _checked_rgb(image).max(-1)
        return self._body(value, float(np.percentile(value, 99.5)))

    def _body(self, value: np.ndarray, reference: float) -> tuple[int, int, int, int] | None:
        if reference <= 0.0 or np.median(value) > 0.5 * reference:
            return None  # no bright object on a darker background
        bright = value > self.foreground * reference
        columns = bright.mean(0)
        peak = int(np.argmax(columns))
        inside = columns >= 0.5 * columns[peak]
        left = peak - int(np.argmin(inside[peak::-1])) + 1 if not inside[:peak + 1].all() else 0
        right = peak + int(np.argmin(inside[peak:])) if not inside[peak:].all() else len(columns)
        rows = np.flatnonzero(bright[:, left:right].mean(1) >= self.body_rows)
        if right - left < 3 or len(rows) < 3:
            return None
        return int(rows[0]), int(rows[-1]) + 1, left, right

    def decide(self, image: np.ndarray) -> SubtypeVote:
        """The image's votes and, when clear-cut, its sub-type."""
        image = _checked_rgb(image)
        value = image.max(-1)  # HSV value, in uint8 units
        reference = float(np.percentile(value, 99.5))
        votes = dict.fromkeys(self.names, 0)
        bounds = self._body(value, reference)
        if bounds is None:
            return SubtypeVote(None, votes, "no bottle found (no bright object on a dark background)")
        top, bottom, left, right = bounds
        margin = int(self.column_margin * (right - left))
        hue, saturation, value = hsv(image[top:bottom, left + margin:right - margin])
        value = value * (255.0 / reference)
        below_paper = value < self.max_value
        for name, start, stop, low, high, darkest in self.liquids:
            chosen = (below_paper & _in_range(hue, start, stop) & (saturation >= low) & (saturation < high)
                      & (value >= darkest))
            votes[name] += int(np.sum(chosen))
        return _decide(votes, int(np.ceil(self.min_fraction * hue.size)), self.min_share)


@dataclass(frozen=True)
class HueRule:
    """Dominant-hue rule: which sub-type's hue range holds most qualifying pixels of a fixed region.

    region: (top, bottom, left, right) as fractions of the image height/width. hues: (name, start, stop)
    in degrees, the range [start, stop) read modulo 360 (start > stop wraps through red; one name may own
    several ranges). A pixel qualifies when its HSV saturation >= min_saturation and value >= min_value
    (both in [0, 1]). Clear-cut: the winner has min_pixels votes and min_share of all votes.
    """

    region: tuple[float, float, float, float]
    hues: tuple[tuple[str, float, float], ...]
    min_saturation: float = 0.25
    min_value: float = 0.15
    min_pixels: int = 50
    min_share: float = 0.65
    validated_on_real_photos: bool = False

    def __post_init__(self):
        top, bottom, left, right = (float(v) for v in self.region)
        if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
            raise ValueError(f"HueRule.region must be fractions with top < bottom and left < right, got {self.region}")
        if not self.hues:
            raise ValueError("HueRule.hues must name at least one hue range")

    @property
    def names(self) -> tuple[str, ...]:
        """Sub-type names in first-appearance order."""
        return tuple(dict.fromkeys(name for name, _, _ in self.hues))

    def describe(self) -> str:
        """One line naming the rule, for results.json and the log."""
        ranges = "; ".join(f"{name}: hue {a:g}-{b:g}" for name, a, b in self.hues)
        return (f"dominant hue in the fixed region {self.region} (saturation >= {self.min_saturation:g}, value >= "
                f"{self.min_value:g}; clear-cut at {self.min_share:g} of the votes and {self.min_pixels} pixels): "
                f"{ranges}")

    def decide(self, image: np.ndarray) -> SubtypeVote:
        """The image's votes and, when clear-cut, its sub-type."""
        return _decide(subtype_votes(image, self), self.min_pixels, self.min_share)


SUBTYPE_RULES: dict[str, LiquidRule | HueRule] = {
    "juice_bottle": LiquidRule(
        liquids=(
            ("cherry", 340.0, 25.0, 0.35, 1.01, 0.12),
            ("orange", 35.0, 70.0, 0.40, 1.01, 0.30),
            ("banana", 30.0, 75.0, 0.08, 0.35, 0.30),
        ),
    ),
    # Unverified: no real splicing_connectors photo was available to check it. The cable spans the middle
    # between the two connectors; the connectors' orange levers (about 20-35 degrees) fall between the red and
    # yellow ranges and are ignored. Use a list file (--loco-subtypes FILE) where this matters.
    "splicing_connectors": HueRule(
        region=(0.15, 0.85, 0.35, 0.65),
        hues=(("red", 345.0, 15.0), ("yellow", 40.0, 75.0), ("blue", 180.0, 260.0)),
    ),
}
"""The default rule per category with sub-types (names as in the CLIP-LAD benchmark)."""

SUBTYPES = {category: rule.names for category, rule in SUBTYPE_RULES.items()}


def hsv(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) RGB -> (hue in degrees [0, 360), saturation [0, 1], value [0, 1]), float64."""
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = rgb.max(-1)
    span = top - rgb.min(-1)
    safe = np.where(span > 0, span, 1.0)
    hue = np.where(top == r, ((g - b) / safe) % 6.0, np.where(top == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(span > 0, hue * 60.0, 0.0) % 360.0
    saturation = np.where(top > 0, span / np.where(top > 0, top, 1.0), 0.0)
    return hue, saturation, top


def _in_range(hue: np.ndarray, start: float, stop: float) -> np.ndarray:
    start, stop = start % 360.0, stop % 360.0
    if start <= stop:
        return (hue >= start) & (hue < stop)
    return (hue >= start) | (hue < stop)


def _checked_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    return image


def subtype_votes(image: np.ndarray, rule: HueRule) -> dict[str, int]:
    """Qualifying pixels per sub-type inside a HueRule's region of a uint8 (H, W, 3) RGB image."""
    image = _checked_rgb(image)
    h, w = image.shape[:2]
    top, bottom, left, right = rule.region
    y0, x0 = int(top * h), int(left * w)
    crop = image[y0:max(int(bottom * h), y0 + 1), x0:max(int(right * w), x0 + 1)]
    hue, saturation, value = hsv(crop)
    qualifies = (saturation >= rule.min_saturation) & (value >= rule.min_value)
    votes = dict.fromkeys(rule.names, 0)
    for name, start, stop in rule.hues:
        votes[name] += int(np.sum(qualifies & _in_range(hue, start, stop)))
    return votes


def subtype_of(image: np.ndarray, rule: LiquidRule | HueRule) -> str:
    """The image's sub-type; ValueError with the votes when the rule's vote is not clear-cut."""
    vote = rule.decide(image)
    if vote.name is None:
        raise ValueError(f"no clear-cut sub-type ({vote.reason}); votes {vote.votes}")
    return vote.name


def subtype_list_entries(path: str | os.PathLike, form: str) -> Iterator[tuple[str, str, str]]:
    """(where, image path, sub-type) of each entry of a sub-type list file, one "<image path> <sub-type>" per line
    (``form`` spells the line for errors); blank lines and '#' comments are skipped; where is "FILE line N"."""
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 2:
                raise ValueError(f"{path} line {number}: expected '{form}', got {text!r}")
            yield f"{path} line {number}", Path(parts[0]).as_posix(), parts[1]


def read_subtype_list(path: str | os.PathLike, names: Sequence[str]) -> dict[str, str]:
    """An explicit sub-type list: one "<path relative to the category folder> <sub-type>" per line, e.g.
    "test/good/000.png banana"; blank lines and '#' comments are skipped. names: the allowed sub-types."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sub-type list not found: {path}")
    out = {}
    for where, key, name in subtype_list_entries(path, "<relative image path> <sub-type>"):
        if name not in names:
            raise ValueError(f"{where}: unknown sub-type {name!r}; expected one of {tuple(names)}")
        if key in out:
            raise ValueError(f"{where}: {key} is listed twice")
        out[key] = name
    return out


@dataclass(frozen=True)
class SubtypeAssignment:
    """The sub-types of one split's images. names: per image, its sub-type or None (ambiguous, scored in no
    sub-type); ambiguous: per ambiguous image {"image": path relative to the category folder, "votes", "reason"};
    rule: what decided (the rule's description, or the list file); validated_on_real_photos: whether that rule
    was checked on real photos (None for a list file)."""

    names: tuple[str | None, ...]
    ambiguous: tuple[dict, ...]
    rule: str
    validated_on_real_photos: bool | None


def listed_subtypes(loco: LocoSet, base: str | os.PathLike, listed: dict[str, str], list_file,
                    where: str | None = None) -> SubtypeAssignment:
    """The sub-types a list file gives ``loco``'s images: ``listed`` maps each image's path relative to ``base``
    to its sub-type, and every image must be in it (the error names the list as ``where``, default the file)."""
    out = []
    for image in loco.images.paths:
        key = Path(image).relative_to(base).as_posix()
        if key not in listed:
            raise ValueError(f"{where or list_file}: no sub-type listed for {key}")
        out.append(listed[key])
    return SubtypeAssignment(tuple(out), (), f"list file {list_file}", None)


def assign_subtypes(
    loco: LocoSet,
    root: str | os.PathLike,
    rule: LiquidRule | HueRule | None = None,
    list_file: str | os.PathLike | None = None,
) -> SubtypeAssignment:
    """The sub-type of every image of a juice_bottle or splicing_connectors set.

    list_file given: looked up there by path relative to <root>/<category> (every image must be listed).
    Otherwise the rule (default ``SUBTYPE_RULES[category]``) runs on each decoded image; an image whose vote is
    not clear-cut gets None and is listed in ``ambiguous`` with its votes.
    """
    category = loco.images.category
    base = Path(root) / category
    if rule is None:
        if category not in SUBTYPE_RULES:
            raise ValueError(f"loco/{category} has no sub-types; categories with sub-types: {tuple(SUBTYPE_RULES)}")
        rule = SUBTYPE_RULES[category]
    if list_file is not None:
        return listed_subtypes(loco, base, read_subtype_list(list_file, rule.names), list_file)
    names, ambiguous = [], []
    for image in loco.images.paths:
        vote = rule.decide(np.asarray(load_image(image)))
        names.append(vote.name)
        if vote.name is None:
            ambiguous.append({"image": Path(image).relative_to(base).as_posix(), "votes": dict(vote.votes),
                              "reason": vote.reason})
    return SubtypeAssignment(tuple(names), tuple(ambiguous), rule.describe(), rule.validated_on_real_photos)


def select_subtype(loco: LocoSet, subtypes: Sequence[str | None], name: str) -> LocoSet:
    """The images of one sub-type (None entries, the ambiguous images, belong to none), as a set whose
    category is renamed "<category>-<name>"."""
    if len(subtypes) != len(loco):
        raise ValueError(f"{len(subtypes)} sub-types for {len(loco)} images")
    idx = [i for i, s in enumerate(subtypes) if s == name]
    if not idx:
        raise ValueError(f"no image of sub-type {name!r}; found {sorted({s for s in subtypes if s is not None})}")
    chosen = loco.select(idx)
    images = chosen.images
    renamed = ImageSet(
        dataset=images.dataset,
        category=f"{images.category}-{name}",
        paths=images.paths,
        labels=images.labels,
        defect_types=images.defect_types,
        mask_paths=images.mask_paths,
        has_masks=images.has_masks,
    )
    return LocoSet(renamed, chosen.mask_files, chosen.defects)
