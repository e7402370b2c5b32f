"""Dataset readers: folder layouts users already have -> `ImageSet` (file lists and labels, no pixels).

Supported layouts (`dataset` argument), all read in sorted, deterministic order:

- "mvtec" (MVTec AD) and "mpdd" (same layout):
  `<root>/<cat>/test/<type>/<img>`, `good` normal; masks `<root>/<cat>/ground_truth/<type>/<stem>_mask.<ext>`
  or, as in re-packaged subsets, `<stem>.<ext>` (first match in that order, ext in .png .bmp .tif .tiff
  .jpg .jpeg). split="train" reads `<cat>/train/good` (all normal) for few-shot references.
- "mpdd" also reads MPDD as commonly re-split, detected per category when `<cat>/<split>/images` exists:
  `<cat>/{train,val,test}/images/<img>` with masks `<cat>/<split>/masks/<stem>[_mask].<ext>`; an image whose
  mask has no defect pixel (binarised as for any MPDD mask) is normal ("good"), otherwise anomalous
  ("anomalous"); this reader opens each mask to label its image. Every split holds both kinds: take the
  images labelled 0 as few-shot references. An image without a mask file is an error, or normal with
  allow_missing_masks=True. Splits: those of train/val/test present.
- "btad": `<root>/{01,02,03}/test/{ok,ko}/<img>`, `ok` normal;
  masks `<root>/<cat>/ground_truth/ko/<stem>.<ext>`
  (BTAD ships .png and .bmp masks; `<stem>_mask.<ext>` is accepted too). split="train" reads `train/ok`.
- "visa": `<root>/split_csv/1cls.csv` (columns object, split, label, image, mask; label normal/anomaly;
  paths relative to root); categories are the csv's objects; defect types are the labels.
- "mtd" (Magnetic Tile Defect): `<root>/MT_<class>/Imgs/<id>.jpg` with mask `<id>.png`; MT_Free is normal,
  defect type = `<class>`. Categories: each defect class (`MT_Crack`, ...), scored against the shared normals
  by a fixed protocol (``mtd_protocol``): MT_Free's images are permuted once with seed ``MTD_SPLIT_SEED``
  (independent of any run's seed) and the first ``MTD_REFERENCE_FRACTION`` of them (rounded up) form the
  reference pool (split "train", where few-shot references are drawn), the others are the test normals of
  every class (split "test" = test normals + that class's defects), so zero-shot and few-shot runs score the
  same test images and no reference is ever scored. The pooled category "magnetic_tile" (every class and
  every normal together; option `classes` keeps some classes only; test split only) is still read when named.
- "folder": every image under `<root>/<category>` (or `<root>` when category is None or "."), recursively
  (symlinked folders followed, loops skipped), no labels, no masks (anomaly scores and maps only). Mask files
  are left out and listed in `ImageSet.skipped` with the reason:
    files under a folder named (any case) one of MASK_FOLDER_NAMES ("in mask folder");
    files whose stem ends in "_mask" (MVTec's naming; "named *_mask");
    MTD's masks: a PNG/BMP/TIFF beside a JPEG of the same stem that looks like a mask: single-channel, and
    either 0 plus at most one other value, or at least 90% of its pixels at 0 or the full-scale value
    ("mask beside its image"); two photos 001.png and 001.jpg are both kept.
  Option `infer_labels=True` gives labels from sub-folder names so a user's own folder gets metrics: images
  in a directory named good/ok/normal (any case, any depth) are normal, images in other subdirectories
  anomalous; an image directly in the folder, or a folder without normal or without anomalous images, is
  an error. Defect type = the image's parent directory relative to the folder ("." at top).

MVTec LOCO (`<cat>/test/{logical,structural}_anomalies`, masks `<cat>/ground_truth/<type>/<id>/000.png`) is
not read by mvtec/mpdd/folder: it raises a DataError saying so and naming --dataset loco.

Paths are kept as found under root: symbolic links are never resolved (name rows with `display_name`).
Image extensions: .png .jpg .jpeg .bmp .tif .tiff (any case). Hidden files and folders are ignored; a broken
symbolic link with an image extension is an error.
Errors: argument mistakes (unknown dataset, split or option) raise ValueError; problems with what is on disk
raise `DataError` (a ValueError) or `DataNotFoundError` (also a FileNotFoundError): unknown category,
missing or empty directories, LOCO layouts, bad csv rows and (unless allow_missing_masks=True) anomalous
images without a mask, each with the offending path and what was expected or what exists.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from jzad.data.choices import DATASETS
from jzad.data.decode import open_image
from jzad.data.errors import DataError, DataNotFoundError
from jzad.data.imageset import ImageSet
from jzad.data.masks import DEFAULT_MASK_THRESHOLDS, decode_mask, mask_values

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
BTAD_CATEGORIES = ("01", "02", "03")
MTD_CATEGORY = "magnetic_tile"
MTD_SPLIT_SEED = 0
MTD_REFERENCE_FRACTION = 0.2
MTD_NORMAL_CLASS = "Free"
NORMAL_FOLDER_NAMES = ("good", "ok", "normal")
MASK_FOLDER_NAMES = ("ground_truth", "ground-truth", "groundtruth", "gt", "gts", "mask", "masks")
"""Folder names (compared case-insensitively) whose files a folder read treats as masks, not images."""
LOCO_TYPE_FOLDERS = ("logical_anomalies", "structural_anomalies")
RESPLIT_SPLITS = ("train", "val", "test")
_JPEG_EXTENSIONS = (".jpg", ".jpeg")
_VISA_CSV = os.path.join("split_csv", "1cls.csv")
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def _has_image_suffix(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _check_link(path: Path) -> None:
    """A broken symbolic link with an image extension is an error naming the link and its target."""
    if path.is_symlink() and not path.exists():
        raise DataNotFoundError(f"broken symbolic link {path} -> {os.readlink(path)}", path)


def _images_in(directory: Path) -> list[Path]:
    """Image files directly in `directory` (symlinks followed), sorted by name."""
    out = []
    for p in directory.iterdir():
        if not _has_image_suffix(p.name):
            continue
        _check_link(p)
        if p.is_file():
            out.append(p)
    return sorted(out, key=lambda p: p.name)


def _subdirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        parent = path.parent
        found = _subdirs(parent) if parent.is_dir() else []
        where = f"; {parent} contains {found}" if parent.is_dir() else f"; {parent} does not exist either"
        raise DataNotFoundError(f"{what} not found: {path}{where}", path)


def _check_split(dataset: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset}: unknown split {split!r}; expected one of {tuple(allowed)}")


def _find_mask(mask_dir: Path, stem: str) -> Path | None:
    """First existing `<stem>_mask<ext>` then `<stem><ext>` in mask_dir, ext in MASK_EXTENSIONS order."""
    for name in (f"{stem}_mask", stem):
        for ext in MASK_EXTENSIONS:
            candidate = mask_dir / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _missing_mask_error(image: Path, mask_dir: Path, stem: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"no ground-truth mask for anomalous image {image}: expected {mask_dir / (stem + '_mask.png')} "
        f"or {mask_dir / (stem + '.png')} (extensions {', '.join(MASK_EXTENSIONS)} accepted); "
        "to score it without pixel ground truth, read it with allow_missing_masks=True",
        image,
    )


def _build(
    dataset: str,
    category: str,
    rows: Iterable[tuple[str, int | None, str, str | None]],
    source: str,
    pixel_truth: bool = True,
    skipped: Sequence[tuple[str, str]] = (),
) -> ImageSet:
    """ImageSet from (path, label, defect_type, mask_path) rows; an empty result is an error naming source.

    pixel_truth=False marks layouts that never carry masks (has_masks stays False).
    """
    rows = list(rows)
    if not rows:
        extra = f"; skipped {len(skipped)} mask files" if skipped else ""
        raise DataNotFoundError(
            f"{dataset}/{category}: no images found in {source} (extensions {', '.join(IMAGE_EXTENSIONS)})"
            f"{extra}",
            source,
        )
    labels = [r[1] for r in rows]
    labelled = all(v is not None for v in labels)
    complete = pixel_truth and labelled and all(r[3] is not None for r in rows if r[1] == 1)
    return ImageSet(
        dataset=dataset,
        category=category,
        paths=tuple(r[0] for r in rows),
        labels=tuple(labels) if labelled else None,
        defect_types=tuple(r[2] for r in rows),
        mask_paths=tuple(r[3] for r in rows),
        has_masks=complete,
        skipped=tuple(skipped),
    )


def _loco_evidence(cat_dir: Path) -> Path | None:
    """The first sign that `cat_dir` is an MVTec LOCO category: a test/<logical|structural>_anomalies folder,
    or a ground_truth/<type>/<id>/ folder of masks (LOCO keeps one folder of masks per image)."""
    for name in LOCO_TYPE_FOLDERS:
        if (cat_dir / "test" / name).is_dir():
            return cat_dir / "test" / name
    gt = cat_dir / "ground_truth"
    if gt.is_dir():
        for type_dir in sorted(p for p in gt.iterdir() if p.is_dir()):
            for entry in sorted(type_dir.iterdir()):
                if entry.is_dir() and not entry.name.startswith("."):
                    return entry
    return None


def _loco_error(dataset: str, where: Path, evidence: Path) -> DataError:
    return DataError(
        f"{dataset}: {where} is in the MVTec LOCO layout ({evidence} exists), which the {dataset} reader "
        "does not read (logical anomalies, one folder of masks per image); use --dataset loco",
        where,
    )


def _check_not_loco(dataset: str, cat_dir: Path) -> None:
    evidence = _loco_evidence(cat_dir)
    if evidence is not None:
        raise _loco_error(dataset, cat_dir, evidence)


def _read_type_folders(
    dataset: str,
    root: Path,
    category: str,
    split: str,
    normal: str,
    allow_missing_masks: bool,
) -> ImageSet:
    """MVTec-like layout: `<cat>/<split>/<type>/<img>` with masks in `<cat>/ground_truth/<type>/`."""
    _check_split(dataset, split, ("test", "train"))
    cat_dir = root / category
    _check_not_loco(dataset, cat_dir)
    split_dir = cat_dir / split
    if _resplit_splits(cat_dir) and not (split_dir / normal).is_dir():
        raise DataError(
            f"{dataset}: {cat_dir} holds <split>/images and <split>/masks folders (MPDD's re-split layout), "
            f"not {split}/{normal}; read it with dataset=mpdd",
            cat_dir,
        )
    _require_dir(split_dir, f"{dataset} {split} folder of category {category!r}")
    types = [normal] if split == "train" else _subdirs(split_dir)
    if split == "train":
        _require_dir(split_dir / normal, f"{dataset} train folder of normal images")
    if not types:
        raise DataNotFoundError(f"{dataset}/{category}: {split_dir} has no defect-type subfolders", split_dir)
    rows = []
    for defect in types:
        type_dir = split_dir / defect
        mask_dir = cat_dir / "ground_truth" / defect
        for image in _images_in(type_dir):
            if defect == normal:
                rows.append((str(image), 0, defect, None))
                continue
            mask = _find_mask(mask_dir, image.stem)
            if mask is None and not allow_missing_masks:
                raise _missing_mask_error(image, mask_dir, image.stem)
            rows.append((str(image), 1, defect, None if mask is None else str(mask)))
    return _build(dataset, category, rows, f"{split_dir}/{{{','.join(types)}}}")


def _resplit_splits(cat_dir: Path) -> list[str]:
    """Splits of an MPDD re-split category (`<split>/images` folders present), in RESPLIT_SPLITS order."""
    return [s for s in RESPLIT_SPLITS if (cat_dir / s / "images").is_dir()]


def _read_mpdd_resplit(root: Path, category: str, split: str, allow_missing_masks: bool) -> ImageSet:
    """MPDD re-split: `<cat>/<split>/{images,masks}`, label from the mask's content (module doc)."""
    cat_dir = root / category
    _check_split("mpdd", split, _resplit_splits(cat_dir))
    image_dir, mask_dir = cat_dir / split / "images", cat_dir / split / "masks"
    threshold = DEFAULT_MASK_THRESHOLDS["mpdd"]
    rows = []
    for image in _images_in(image_dir):
        mask = _find_mask(mask_dir, image.stem)
        if mask is None:
            if not allow_missing_masks:
                raise DataNotFoundError(
                    f"mpdd (re-split layout): no mask for image {image}: expected "
                    f"{mask_dir / (image.stem + '.png')} or {mask_dir / (image.stem + '_mask.png')} (an "
                    "empty mask marks a normal image); to read images without a mask as normal, read it with "
                    "allow_missing_masks=True",
                    image,
                )
            rows.append((str(image), 0, "good", None))
            continue
        binary, _ = decode_mask(mask, threshold)
        if binary.any():
            rows.append((str(image), 1, "anomalous", str(mask)))
        else:
            rows.append((str(image), 0, "good", None))
    return _build("mpdd", category, rows, str(image_dir))


def _read_visa(root: Path, category: str, split: str, allow_missing_masks: bool, csv_path: str) -> ImageSet:
    rows_all = _visa_rows(root, csv_path)
    _check_split("visa", split, sorted({r["split"] for r in rows_all}))
    objects = sorted({r["object"] for r in rows_all})
    if category not in objects:
        raise DataError(f"visa: unknown category {category!r}; {root / csv_path} lists {objects}",
                        root / csv_path)
    rows = []
    for r in rows_all:
        if r["object"] != category or r["split"] != split:
            continue
        image = root / r["image"]
        _check_link(image)
        if not image.is_file():
            raise DataNotFoundError(f"visa: image listed in {root / csv_path} not found: {image}", image)
        label = r["label"]
        if label == "normal":
            rows.append((str(image), 0, label, None))
            continue
        mask = root / r["mask"] if r["mask"] else None
        if mask is None or not mask.is_file():
            if not allow_missing_masks:
                shown = mask if mask is not None else "(empty mask column)"
                raise DataNotFoundError(
                    f"visa: no ground-truth mask for anomalous image {image}: expected {shown} "
                    f"as listed in {root / csv_path}; to score it without pixel ground truth, read it with "
                    "allow_missing_masks=True",
                    image,
                )
            mask = None
        rows.append((str(image), 1, label, None if mask is None else str(mask)))
    rows.sort(key=lambda r: r[0])
    return _build("visa", category, rows, f"{root / csv_path} (object={category}, split={split})")


def _visa_rows(root: Path, csv_path: str) -> list[dict[str, str]]:
    path = root / csv_path
    if not path.is_file():
        raise DataNotFoundError(f"visa: split file not found: {path} (expected <root>/{_VISA_CSV})", path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in _VISA_COLUMNS if c not in fields]
            if missing:
                raise DataError(f"visa: {path} lacks columns {missing}; it has {fields}", path)
            rows = []
            for line, raw in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                if row["label"] not in ("normal", "anomaly"):
                    raise DataError(
                        f"visa: {path} line {line}: label must be 'normal' or 'anomaly', got {row['label']!r}",
                        path,
                    )
                rows.append(row)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"visa: cannot parse {path}: {err}", path) from err
    if not rows:
        raise DataError(f"visa: {path} has no rows", path)
    return rows


def _mtd_classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataNotFoundError(f"mtd: dataset root not found: {root}", root)
    return [d[3:] for d in _subdirs(root) if d.startswith("MT_") and (root / d / "Imgs").is_dir()]


def mtd_protocol(num_normals: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference pool, test normals): sorted indices into MT_Free's sorted images (module docstring)."""
    order = np.random.default_rng(MTD_SPLIT_SEED).permutation(num_normals)
    pool = int(np.ceil(MTD_REFERENCE_FRACTION * num_normals))
    return np.sort(order[:pool]), np.sort(order[pool:])


def mtd_protocol_record(root: str | os.PathLike) -> dict:
    """What a results file records about the MTD split of the normals under root."""
    normals = [p for p in _images_in(Path(root) / f"MT_{MTD_NORMAL_CLASS}" / "Imgs") if p.suffix.lower() == ".jpg"]
    pool, test = mtd_protocol(len(normals))
    return {"rule": f"MT_{MTD_NORMAL_CLASS} permuted with seed {MTD_SPLIT_SEED}; the first "
                    f"{MTD_REFERENCE_FRACTION:g} (rounded up) are the reference pool, the rest test normals",
            "split_seed": MTD_SPLIT_SEED, "reference_pool": len(pool), "test_normals": len(test)}


def _mtd_rows(root: Path, cls: str, allow_missing_masks: bool) -> list:
    rows = []
    img_dir = root / f"MT_{cls}" / "Imgs"
    for image in _images_in(img_dir):
        if image.suffix.lower() != ".jpg":
            continue
        if cls == MTD_NORMAL_CLASS:
            rows.append((str(image), 0, cls, None))
            continue
        mask = img_dir / f"{image.stem}.png"
        if not mask.is_file():
            if not allow_missing_masks:
                raise DataNotFoundError(
                    f"mtd: no ground-truth mask for anomalous image {image}: expected {mask}; "
                    "to score it without pixel ground truth, read it with allow_missing_masks=True",
                    image,
                )
            mask = None
        rows.append((str(image), 1, cls, None if mask is None else str(mask)))
    return rows


def _read_mtd(
    root: Path, category: str, split: str, allow_missing_masks: bool, classes: Sequence[str] | None
) -> ImageSet:
    found = _mtd_classes(root)
    if not found:
        raise DataNotFoundError(f"mtd: no MT_<class>/Imgs folders in {root}; it contains {_subdirs(root)}",
                                root)
    defects = [c for c in found if c != MTD_NORMAL_CLASS]
    if category != MTD_CATEGORY:
        if not category.startswith("MT_") or category[3:] not in defects:
            raise ValueError(f"mtd: unknown category {category!r}; {root} has "
                             f"{', '.join('MT_' + c for c in defects)} (each against the shared normals) and "
                             f"{MTD_CATEGORY!r} (every class pooled)")
        if classes is not None:
            raise ValueError(f"mtd: option classes applies to the pooled category {MTD_CATEGORY!r} only")
        _check_split("mtd", split, ("train", "test"))
        if MTD_NORMAL_CLASS not in found:
            raise DataNotFoundError(f"mtd: no MT_{MTD_NORMAL_CLASS}/Imgs folder (the normal images) in {root}",
                                    root / f"MT_{MTD_NORMAL_CLASS}")
        normals = _mtd_rows(root, MTD_NORMAL_CLASS, allow_missing_masks)
        pool, test = mtd_protocol(len(normals))
        if split == "train":
            rows = [normals[i] for i in pool]
        else:
            rows = _mtd_rows(root, category[3:], allow_missing_masks) + [normals[i] for i in test]
        return _build("mtd", category, rows, f"{root}/MT_{{{category[3:]},{MTD_NORMAL_CLASS}}}/Imgs/*.jpg")
    _check_split("mtd", split, ("test",))
    if classes is None:
        chosen = found
    else:
        chosen = list(classes)
        unknown = [c for c in chosen if c not in found]
        if unknown or not chosen:
            raise DataError(f"mtd: unknown classes {unknown or chosen}; {root} has {found}", root)
    rows = []
    for cls in sorted(set(chosen)):
        rows += _mtd_rows(root, cls, allow_missing_masks)
    return _build("mtd", category, rows, f"{root}/MT_{{{','.join(sorted(set(chosen)))}}}/Imgs/*.jpg")


def _folder_dir(root: Path, category: str | None) -> Path:
    return root if category in (None, "", ".") else root / category


def _looks_like_mask(path: Path) -> bool:
    """Single-channel, and 0 plus at most one other value or >= 90% of pixels at 0 or full scale."""
    image = open_image(path)
    if image.mode not in ("1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N", "P"):
        return False
    if image.mode == "P":
        rgb = np.asarray(image.convert("RGB"))
        if not (rgb[..., 0] == rgb[..., 1]).all() or not (rgb[..., 1] == rgb[..., 2]).all():
            return False
    values, full = mask_values(image, path)
    nonzero = values[values != 0]
    if nonzero.size == 0 or bool((nonzero == nonzero.flat[0]).all()):
        return True
    return float(np.mean((values == 0) | (values == full))) >= 0.9


def _mask_reason(path: Path, siblings: dict[str, list[str]]) -> str | None:
    """Why a file in a plain folder is a mask, or None for an image (the folder rules of the module doc)."""
    stem, ext = os.path.splitext(path.name)
    if stem.lower().endswith("_mask"):
        return "named *_mask"
    if ext.lower() not in _JPEG_EXTENSIONS:
        exts = siblings.get(stem, [])
        if any(e.lower() in _JPEG_EXTENSIONS for e in exts) and _looks_like_mask(path):
            return "mask beside its image"
    return None


def _walk_folder(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Images under `folder` (sorted by relative path) and skipped (path, reason) pairs.

    Symlinked folders are followed, except one that leads back into a folder on the current path (a loop);
    a folder named like a LOCO defect type raises.
    """
    images: list[tuple[str, Path]] = []
    skipped: list[tuple[str, str]] = []

    def skip_all(directory: Path, reason: str, ancestors: frozenset) -> None:
        for entry in sorted(directory.iterdir(), key=lambda p: p.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                real = os.path.realpath(entry)
                if real not in ancestors:
                    skip_all(entry, reason, ancestors | {real})
            elif _has_image_suffix(entry.name):
                skipped.append((str(entry), reason))

    def visit(directory: Path, rel: str, ancestors: frozenset) -> None:
        entries = sorted((p for p in directory.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
        siblings: dict[str, list[str]] = {}
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            siblings.setdefault(stem, []).append(ext)
        for entry in entries:
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir():
                name = entry.name.lower()
                if name in LOCO_TYPE_FOLDERS:
                    raise _loco_error("folder", folder, entry)
                real = os.path.realpath(entry)
                if real in ancestors:
                    skipped.append((str(entry), "symlink loop"))
                elif name in MASK_FOLDER_NAMES:
                    skip_all(entry, "in mask folder", ancestors | {real})
                else:
                    visit(entry, child_rel, ancestors | {real})
                continue
            if not _has_image_suffix(entry.name):
                continue
            _check_link(entry)
            if not entry.is_file():
                continue
            reason = _mask_reason(entry, siblings)
            if reason is None:
                images.append((child_rel, entry))
            else:
                skipped.append((str(entry), reason))

    visit(folder, "", frozenset({os.path.realpath(folder)}))
    images.sort(key=lambda item: item[0])
    return [p for _, p in images], skipped


def _read_folder(root: Path, category: str | None, split: str, infer_labels: bool) -> ImageSet:
    if split != "test":
        raise ValueError(
            f"folder: a plain folder has no splits (got split={split!r}); pass the folder of the images "
            "you want (e.g. normal references) as root"
        )
    folder = _folder_dir(root, category)
    _require_dir(folder, "image folder")
    images, skipped = _walk_folder(folder)
    if not images:
        extra = f"; skipped {len(skipped)} mask files" if skipped else ""
        raise DataNotFoundError(
            f"folder: no images found under {folder} (extensions {', '.join(IMAGE_EXTENSIONS)}){extra}; "
            f"it contains {sorted(p.name for p in folder.iterdir())[:20]}",
            folder,
        )
    rows = []
    for image in images:
        parts = image.parent.relative_to(folder).parts
        label = None
        if infer_labels:
            if not parts:
                raise DataError(
                    f"folder: infer_labels=True needs every image in a subfolder (normal ones in one named "
                    f"{'/'.join(NORMAL_FOLDER_NAMES)}), but {image} lies directly in {folder}",
                    image,
                )
            label = 0 if any(p.lower() in NORMAL_FOLDER_NAMES for p in parts) else 1
        rows.append((str(image), label, "/".join(parts) or ".", None))
    if infer_labels:
        found = sorted({r[2] for r in rows})
        for wanted, what in ((0, f"normal images (a folder named {'/'.join(NORMAL_FOLDER_NAMES)})"),
                             (1, "anomalous images (a folder with another name)")):
            if not any(r[1] == wanted for r in rows):
                raise DataError(
                    f"folder: infer_labels=True found no {what} under {folder}, so no metric can be "
                    f"computed; image folders found: {found}",
                    folder,
                )
    name = "." if category in (None, "") else category
    return _build("folder", name, rows, str(folder), pixel_truth=False, skipped=skipped)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def list_categories(dataset: str, root: str | os.PathLike) -> list[str]:
    """Categories available under `root` for `dataset`, sorted.

    mvtec/mpdd: subfolders with a `test` folder (mpdd: or a `<split>/images` folder); btad: those of
    01/02/03 present; visa: the csv's objects; mtd: its defect classes ("MT_Crack", ...); folder: "." when root
    holds images directly, plus each subfolder holding images (mask folders excluded). A LOCO category raises DataError.
    """
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"{dataset}: dataset root not found: {root}", root)
    if dataset in ("mvtec", "mpdd", "btad"):
        cats = [
            d for d in _subdirs(root)
            if (root / d / "test").is_dir() or (dataset == "mpdd" and _resplit_splits(root / d))
        ]
        if dataset == "btad":
            cats = [c for c in cats if c in BTAD_CATEGORIES]
        else:
            for cat in cats:
                _check_not_loco(dataset, root / cat)
        if not cats:
            raise DataNotFoundError(
                f"{dataset}: no <category>/test folders in {root}; it contains {_subdirs(root)}", root
            )
        return cats
    if dataset == "visa":
        return sorted({r["object"] for r in _visa_rows(root, _VISA_CSV)})
    if dataset == "mtd":
        if not _mtd_classes(root):
            raise DataNotFoundError(
                f"mtd: no MT_<class>/Imgs folders in {root}; it contains {_subdirs(root)}", root
            )
        return ["MT_" + c for c in _mtd_classes(root) if c != MTD_NORMAL_CLASS]
    images, _ = _walk_folder(root)
    if not images:
        raise DataNotFoundError(f"folder: no images under {root}", root)
    tops = {image.relative_to(root).parts[0] if len(image.relative_to(root).parts) > 1 else "."
            for image in images}
    return sorted(tops, key=lambda c: (c != ".", c))


def read_dataset(
    dataset: str,
    root: str | os.PathLike,
    category: str | None = None,
    split: str = "test",
    *,
    allow_missing_masks: bool = False,
    classes: Sequence[str] | None = None,
    infer_labels: bool = False,
    csv_path: str = _VISA_CSV,
) -> ImageSet:
    """Read one category/split of a dataset into an ImageSet (layouts in the module doc).

    dataset: one of DATASETS. root: the dataset root folder. category: required for mvtec/mpdd/btad/visa;
    optional for mtd (None: the pooled "magnetic_tile") and folder (a subfolder of root, or root itself when None).
    split: "test" (default) or "train" (mvtec/mpdd/btad normal references; visa per its csv; MPDD re-split
    also "val"). allow_missing_masks: read anomalous images lacking a mask (mask_path None, has_masks False)
    instead of raising (MPDD re-split: images without a mask are normal). classes: mtd only, e.g.
    ("Free", "Blowhole"). infer_labels: folder only. csv_path: visa only, relative to root.
    """
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"{dataset}: dataset root not found: {root}", root)
    if classes is not None and dataset != "mtd":
        raise ValueError(f"option classes applies to mtd only, not {dataset}")
    if infer_labels and dataset != "folder":
        raise ValueError(f"option infer_labels applies to folder only, not {dataset}")
    if csv_path != _VISA_CSV and dataset != "visa":
        raise ValueError(f"option csv_path applies to visa only, not {dataset}")
    if dataset == "folder":
        return _read_folder(root, category, split, infer_labels)
    if dataset == "mtd":
        return _read_mtd(root, MTD_CATEGORY if category is None else category, split,
                         allow_missing_masks, classes)
    if category is None:
        raise ValueError(f"{dataset}: category is required; {root} has {list_categories(dataset, root)}")
    if dataset == "visa":
        return _read_visa(root, category, split, allow_missing_masks, csv_path)
    available = list_categories(dataset, root)
    if category not in available:
        raise DataError(f"{dataset}: unknown category {category!r}; {root} has {available}", root / category)
    if dataset == "mpdd" and _resplit_splits(root / category) and not (root / category / "test" / "good").is_dir():
        return _read_mpdd_resplit(root, category, split, allow_missing_masks)
    normal = "ok" if dataset == "btad" else "good"
    return _read_type_folders(dataset, root, category, split, normal, allow_missing_masks)
