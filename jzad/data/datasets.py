"""Datasets as the command line sees them: the categories of a dataset and the image sources of one category.

``dataset_categories`` lists what ``--category`` names; ``category_sources`` returns one category's test images,
few-shot references and calibration images as pipeline sources, so the CLI's core loop is the same for every
layout:

- MTD: each defect class is a category; its train split is the reference pool of the fixed, seeded split of
  the normals (``jzad.data.readers.mtd_protocol``, recorded in ``CategorySources.protocol``).
- MVTec AD, VisA, BTAD, MPDD, MTD and plain folders (``jzad.data.readers``): the category's test images; the
  references drawn by ``reference_draw`` from its labelled-normal train images; calibration images (for methods
  that fit statistics on held-out normals) are the normal train images not drawn as references, since these
  layouts have no validation split.
- MVTec LOCO ("loco", ``jzad.data.loco``): test/{good, logical_anomalies, structural_anomalies} as a
  ``LocoImages`` source (each image's mask is the union of its ground-truth files; the per-defect channels go
  to the sPRO metric), references drawn from train/good, calibration = validation/good. Image names are paths
  relative to the category folder (test/good/000.png), so map TIFFs land where the official MVTec LOCO
  evaluation reads them: maps/<category>/test/<type>/000.tiff.

LOCO sub-types (``subtypes``): "rule" (default) splits juice_bottle and splicing_connectors into their three
sub-types, each scored as a category "<category>-<sub-type>" with its own references and calibration images
(``jzad.data.loco.SUBTYPE_RULES`` decides; each split's images are decoded once per process to find them); an
image whose vote is not clear-cut is scored in no sub-type and reported (name, votes, reason) in the summary
line and in ``CategorySources.subtypes`` (which results.json keeps, with the rule used and whether it was
validated on real photos); a sub-type with no image in a split it needs is an error naming the fix;
"off" keeps the categories whole; any other value is a list file with one "<category>/<path relative to the
category folder> <sub-type>" per line (e.g. "juice_bottle/test/good/000.png banana") covering every image of
the categories it names. The map TIFFs of a sub-type go to its category's folder (maps/juice_bottle/...), so
the three sub-type runs together fill the folder the official evaluation reads.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jzad.data.errors import DataError, DataNotFoundError
from jzad.data.loco import (
    SUBTYPE_RULES,
    LocoSet,
    SubtypeAssignment,
    assign_subtypes,
    listed_subtypes,
    LocoTruths,
    load_loco_truth,
    loco_categories,
    read_loco,
    select_subtype,
    subtype_list_entries,
    union_mask,
)
from jzad.data.masks import resize_binary_mask
from jzad.data.prep import ImagePrep
from jzad.data.readers import MTD_CATEGORY, list_categories, mtd_protocol_record, read_dataset
from jzad.data.sources import FileImages, center_crop, resized_shape
from jzad.data.spro_truth import SPROTruth
from jzad.data.subsets import reference_draw

SUBTYPE_MODES = ("rule", "off")
LOCO_MASK_RULE = "half"


@dataclass(frozen=True)
class CategorySources:
    """One category as the pipeline takes it: source (test images), references (few-shot normals or None),
    calibration (held-out normals or None), maps_folder (the folder under maps/ its TIFFs go to), summary (a
    line saying what was read), subtypes (LOCO sub-type categories: the rule used, whether it was validated on
    real photos, and per split the images per sub-type and the ambiguous images with their votes; else None),
    protocol (how a dataset without a train split was split into reference pool and test images, for the results
    file; None where the dataset defines its splits)."""

    source: Any
    references: Any
    calibration: Any
    maps_folder: str
    summary: str
    subtypes: dict | None = None
    protocol: dict | None = None


class LocoImages(FileImages):
    """A LOCO test split on disk: ``FileImages`` whose masks are the union of each image's ground-truth files,
    and whose per-defect channels ``truth()`` gives to sPRO. root: the category folder (names test/...)."""

    def __init__(self, loco: LocoSet, root: str | os.PathLike):
        super().__init__(loco.images, root=root)
        self.loco = loco

    @property
    def has_masks(self) -> bool:
        """Whether every anomalous image has ground-truth files."""
        return self.loco.has_truth

    def masks(self, prep: ImagePrep, size: int) -> tuple[np.ndarray, dict]:
        """bool (N, S, S) unions at the model input geometry (resized with PIL bilinear, kept where >= 128,
        then centre-cropped for "resize_crop") and what reading them did."""
        out = np.zeros((len(self), size, size), bool)
        files = empty = 0
        for i, channels in enumerate(self.loco.mask_files):
            if not channels:
                continue
            union = union_mask(channels)
            h, w = union.shape
            mask = resize_binary_mask(np.where(union, 255, 0).astype(np.uint8), resized_shape(w, h, prep, size),
                                      LOCO_MASK_RULE)
            out[i] = mask if prep.kind == "square" else center_crop(mask, size)
            files += len(channels)
            empty += int(not out[i].any())
        anomalous = sum(1 for c in self.loco.mask_files if c)
        summary = (f"{files} ground-truth files of {anomalous} anomalous images (one mask per image: the union of "
                   f"its files, resized with rule '{LOCO_MASK_RULE}'); {empty} empty after resizing")
        return out, {"rule": LOCO_MASK_RULE, "threshold": None, "masks_read": files, "empty_anomalous": empty,
                     "summary": summary, "warning": None}

    def truth(self) -> SPROTruth:
        """Every defect channel at full resolution, for ``jzad.eval.spro``."""
        return load_loco_truth(self.loco)

    def image_truths(self) -> LocoTruths:
        """The same channels one image at a time, decoded as read (sPRO in bounded memory)."""
        return LocoTruths(self.loco)


def check_subtypes(subtypes: str) -> str:
    """"rule", "off" or an existing list file; ValueError naming ``subtypes`` otherwise."""
    if subtypes in SUBTYPE_MODES or Path(subtypes).is_file():
        return subtypes
    raise ValueError(f"subtypes: expected rule, off or a sub-type list file; {subtypes!r} is not a file")


@functools.lru_cache(maxsize=4)
def read_subtype_listing(path: str) -> dict[str, dict[str, str]]:
    """A root-relative sub-type list file -> {category: {path relative to the category folder: sub-type}}.
    Lines "<category>/<relative path> <sub-type>"; blank lines and '#' comments skipped; errors name the line."""
    form = "<category>/<path in the category> <sub-type>"
    listing: dict[str, dict[str, str]] = {}
    for where, image, name in subtype_list_entries(path, form):
        category, _, key = image.partition("/")
        if not key:
            raise ValueError(f"{where}: expected '{form}', got {image!r} {name!r}")
        if category not in SUBTYPE_RULES:
            raise ValueError(f"{where}: {category!r} has no sub-types; categories with sub-types: "
                             f"{tuple(SUBTYPE_RULES)}")
        names = SUBTYPE_RULES[category].names
        if name not in names:
            raise ValueError(f"{where}: unknown {category} sub-type {name!r}; expected one of {names}")
        if key in listing.setdefault(category, {}):
            raise ValueError(f"{where}: {category}/{key} is listed twice")
        listing[category][key] = name
    return listing


@functools.lru_cache(maxsize=16)
def _rule_subtypes(loco: LocoSet, root: str) -> SubtypeAssignment:
    return assign_subtypes(loco, root)


def loco_subtypes(loco: LocoSet, root: str | os.PathLike, subtypes: str) -> SubtypeAssignment:
    """The sub-type of every image of a juice_bottle / splicing_connectors split, by the rule (decoded once per
    process; ambiguous images get None) or from the list file."""
    if subtypes == "rule":
        return _rule_subtypes(loco, str(root))
    category = loco.images.category
    listed = {f"{category}/{key}": name for key, name in read_subtype_listing(str(subtypes)).get(category, {}).items()}
    return listed_subtypes(loco, root, listed, subtypes, f"subtypes {subtypes}")


def _loco_name(root: Path, category: str, subtypes: str) -> tuple[str, str | None]:
    """(category folder, sub-type or None) of a LOCO category name, checked against root."""
    found = loco_categories(root)
    base, _, sub = category.partition("-")
    if base not in found:
        raise DataNotFoundError(f"loco: unknown category {category!r}; {root} has {found}", root / base)
    if not sub:
        return base, None
    if subtypes == "off" or base not in SUBTYPE_RULES or sub not in SUBTYPE_RULES[base].names:
        known = SUBTYPE_RULES[base].names if base in SUBTYPE_RULES else ()
        raise DataError(f"loco: {category!r} is not a sub-type category (sub-types of {base}: {known}; "
                        f"subtypes={subtypes})", root / base)
    return base, sub


def dataset_categories(dataset: str, root: str | os.PathLike, category: str = "all",
                       subtypes: str = "rule") -> list[str]:
    """The categories a run scores: every one ("all") or the one named; LOCO categories with sub-types expand
    to "<category>-<sub-type>" unless subtypes is "off" (a sub-type named directly is kept)."""
    if dataset != "loco":
        return list_categories(dataset, root) if category == "all" else [category]
    root = Path(root)
    if category == "all":
        names = loco_categories(root)
    else:
        base, sub = _loco_name(root, category, subtypes)
        if sub is not None:
            return [category]
        names = [base]
    out = []
    for name in names:
        split = subtypes != "off" and name in SUBTYPE_RULES
        out += [f"{name}-{s}" for s in SUBTYPE_RULES[name].names] if split else [name]
    return out


def _loco_sources(root: Path, category: str, shots: int, seed: int, calibration: str | None,
                  subtypes: str, allow_missing_masks: bool) -> CategorySources:
    base, sub = _loco_name(root, category, subtypes)
    cat_dir = root / base
    report: dict | None = None
    notes: list[str] = []

    def read(split: str) -> LocoSet:
        nonlocal report
        loco = read_loco(root, base, split, allow_missing_masks)
        if sub is None:
            return loco
        assignment = loco_subtypes(loco, root, subtypes)
        counts = {name: assignment.names.count(name) for name in SUBTYPE_RULES[base].names}
        if report is None:
            report = {"rule": assignment.rule, "validated_on_real_photos": assignment.validated_on_real_photos,
                      "splits": {}}
        report["splits"][split] = {"counts": counts, "ambiguous": [dict(a) for a in assignment.ambiguous]}
        if assignment.ambiguous:
            listed = "; ".join(f"{a['image']} votes {a['votes']} ({a['reason']})" for a in assignment.ambiguous)
            notes.append(f"{len(assignment.ambiguous)} {split} images of {base} are ambiguous and scored in no "
                         f"sub-type: {listed}")
        if not counts[sub]:
            raise DataError(f"loco: sub-type {category!r} has no {split} images ({base} {split} per sub-type: "
                            f"{counts}, {len(assignment.ambiguous)} ambiguous; by {assignment.rule}): score "
                            f"{base} whole with subtypes=off, or give the sub-types in a list file "
                            f"(subtypes=FILE)", cat_dir / split)
        return select_subtype(loco, assignment.names, sub)

    test = read("test")
    references = cal = None
    if shots:
        train = read("train")
        if len(train) < shots:
            raise ValueError(f"shots {shots}: {category} has only {len(train)} train images")
        references = FileImages(train.images.select(reference_draw(len(train), shots, seed)), root=cat_dir)
    if calibration is not None:
        cal = FileImages(read(calibration).images, root=cat_dir)
    anomalous = sum(test.images.labels)
    summary = (f"loco/{category}: {len(test)} test images ({anomalous} anomalous)"
               + (f", {len(cal)} {calibration} images" if cal is not None else "")
               + "".join(f"\nwarning: loco/{category}: {note}" for note in notes))
    return CategorySources(LocoImages(test, cat_dir), references, cal, base, summary, subtypes=report)


def category_sources(dataset: str, root: str | os.PathLike, category: str, shots: int = 0, seed: int = 0,
                     calibration: str | None = None, subtypes: str = "rule", infer_labels: bool = False,
                     allow_missing_masks: bool = False) -> CategorySources:
    """One category of a dataset under root as sources (module docstring): ``shots`` references drawn with
    ``seed``; calibration: the split of held-out normals the method calibrates on (e.g. "validation"), or None.
    allow_missing_masks: read anomalous test images without ground truth (no pixel metrics then)."""
    root = Path(root)
    if dataset == "loco":
        return _loco_sources(root, category, shots, seed, calibration, subtypes, allow_missing_masks)
    options = {"infer_labels": True} if infer_labels else {}
    if allow_missing_masks:
        options["allow_missing_masks"] = True
    image_set = read_dataset(dataset, root, category, **options)
    references = cal = None
    if shots or calibration is not None:
        train = read_dataset(dataset, root, category, split="train", **options)
        normal = np.asarray([i for i in range(len(train)) if train.labels is None or train.labels[i] == 0], np.int64)
        if len(normal) < shots:
            raise ValueError(f"shots {shots}: {category} has only {len(normal)} normal train images")
        picked = normal[reference_draw(len(normal), shots, seed)] if shots else normal[:0]
        if shots:
            references = FileImages(train.select(picked), root=root)
        if calibration is not None:
            rest = np.setdiff1d(normal, picked)
            if len(rest) < 2:
                raise ValueError(f"{category}: calibration needs at least 2 normal train images besides the "
                                 f"{shots} references ({dataset} has no {calibration} split), found {len(rest)}")
            cal = FileImages(train.select(rest), root=root)
    summary = image_set.summary() + (f"; calibration on {len(cal)} normal train images" if cal is not None else "")
    protocol = mtd_protocol_record(root) if dataset == "mtd" and category != MTD_CATEGORY else None
    return CategorySources(FileImages(image_set, root=root), references, cal, category, summary, protocol=protocol)
