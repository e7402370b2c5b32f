"""Dataset readers: folder layouts users already have -> `ImageSet` (file lists and labels, no pixels).

Supported layouts (`dataset` argument), all read in sorted, deterministic order:

- "mvtec" (MVTec AD) and "mpdd" (same layout):
  `<root>/<cat>/test/<type>/<img>`, `good` normal; masks `<root>/<cat>/ground_truth/<type>/<stem>_mask.<ext>`
  or, as in re-packaged subsets, `<stem>.<ext>` (first match in that order, ext in .png .bmp .tif .tiff
  .jpg .jpeg). split="train" reads `<cat>/train/good` (all normal) for few-shot references.
- "btad": `<root>/{01,02,03}/test/{ok,ko}/<img>`, `ok` normal;
  masks `<root>/<cat>/ground_truth/ko/<stem>.<ext>`
  (BTAD ships .png and .bmp masks; `<stem>_mask.<ext>` is accepted too). split="train" reads `train/ok`.
- "visa": `<root>/split_csv/1cls.csv` (columns object, split, label, image, mask; label normal/anomaly;
  paths relative to root); categories are the csv's objects; defect types are the labels.
- "mtd" (Magnetic Tile Defect): `<root>/MT_<class>/Imgs/<id>.jpg` with mask `<id>.png`. One category,
  "magnetic_tile"; defect type = `<class>`; MT_Free is normal. Option `classes` keeps some classes only.
  Test split only.
- "folder": every image under `<root>/<category>` (or `<root>` when category is None or "."), recursively,
  no labels, no masks (anomaly scores and maps only). Option `infer_labels=True`: images in a directory
  named good/ok/normal (any depth) are normal, images in other subdirectories anomalous, images directly
  in the folder an error. Defect type = the image's parent directory relative to the folder ("." at top).

Image extensions: .png .jpg .jpeg .bmp .tif .tiff (any case). Hidden files are ignored.
Errors: unknown dataset or category, missing or empty directories, and (unless allow_missing_masks=True)
anomalous images without a mask raise with the offending path and what was expected or what exists.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

from jzad.data.imageset import ImageSet

DATASETS = ("mvtec", "visa", "btad", "mpdd", "mtd", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
BTAD_CATEGORIES = ("01", "02", "03")
MTD_CATEGORY = "magnetic_tile"
NORMAL_FOLDER_NAMES = ("good", "ok", "normal")
_VISA_CSV = os.path.join("split_csv", "1cls.csv")
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(directory: Path) -> list[Path]:
    """Image files directly in `directory`, sorted by name."""
    return sorted((p for p in directory.iterdir() if _is_image(p)), key=lambda p: p.name)


def _subdirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        parent = path.parent
        found = _subdirs(parent) if parent.is_dir() else []
        where = f"; {parent} contains {found}" if parent.is_dir() else f"; {parent} does not exist either"
        raise FileNotFoundError(f"{what} not found: {path}{where}")


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


def _missing_mask_error(image: Path, mask_dir: Path, stem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no ground-truth mask for anomalous image {image}: expected {mask_dir / (stem + '_mask.png')} "
        f"or {mask_dir / (stem + '.png')} (extensions {', '.join(MASK_EXTENSIONS)} accepted); "
        "pass allow_missing_masks=True to read it without pixel ground truth"
    )


def _build(
    dataset: str,
    category: str,
    rows: Iterable[tuple[str, int | None, str, str | None]],
    source: str,
    pixel_truth: bool = True,
) -> ImageSet:
    """ImageSet from (path, label, defect_type, mask_path) rows; an empty result is an error naming source.

    pixel_truth=False marks layouts that never carry masks (has_masks stays False).
    """
    rows = list(rows)
    if not rows:
        raise FileNotFoundError(
            f"{dataset}/{category}: no images found in {source} (extensions {', '.join(IMAGE_EXTENSIONS)})"
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
    )


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
    split_dir = cat_dir / split
    _require_dir(split_dir, f"{dataset} {split} folder of category {category!r}")
    types = [normal] if split == "train" else _subdirs(split_dir)
    if split == "train":
        _require_dir(split_dir / normal, f"{dataset} train folder of normal images")
    if not types:
        raise FileNotFoundError(f"{dataset}/{category}: {split_dir} has no defect-type subfolders")
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


def _read_visa(root: Path, category: str, split: str, allow_missing_masks: bool, csv_path: str) -> ImageSet:
    rows_all = _visa_rows(root, csv_path)
    _check_split("visa", split, sorted({r["split"] for r in rows_all}))
    objects = sorted({r["object"] for r in rows_all})
    if category not in objects:
        raise ValueError(f"visa: unknown category {category!r}; {root / csv_path} lists {objects}")
    rows = []
    for r in rows_all:
        if r["object"] != category or r["split"] != split:
            continue
        image = root / r["image"]
        if not image.is_file():
            raise FileNotFoundError(f"visa: image listed in {root / csv_path} not found: {image}")
        label = r["label"]
        if label == "normal":
            rows.append((str(image), 0, label, None))
            continue
        mask = root / r["mask"] if r["mask"] else None
        if mask is None or not mask.is_file():
            if not allow_missing_masks:
                shown = mask if mask is not None else "(empty mask column)"
                raise FileNotFoundError(
                    f"visa: no ground-truth mask for anomalous image {image}: expected {shown} "
                    f"as listed in {root / csv_path}; pass allow_missing_masks=True to read it without "
                    "pixel ground truth"
                )
            mask = None
        rows.append((str(image), 1, label, None if mask is None else str(mask)))
    rows.sort(key=lambda r: r[0])
    return _build("visa", category, rows, f"{root / csv_path} (object={category}, split={split})")


def _visa_rows(root: Path, csv_path: str) -> list[dict[str, str]]:
    path = root / csv_path
    if not path.is_file():
        raise FileNotFoundError(f"visa: split file not found: {path} (expected <root>/{_VISA_CSV})")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in _VISA_COLUMNS if c not in fields]
        if missing:
            raise ValueError(f"visa: {path} lacks columns {missing}; it has {fields}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if row["label"] not in ("normal", "anomaly"):
                raise ValueError(
                    f"visa: {path} line {line}: label must be 'normal' or 'anomaly', got {row['label']!r}"
                )
            rows.append(row)
    if not rows:
        raise ValueError(f"visa: {path} has no rows")
    return rows


def _mtd_classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"mtd: dataset root not found: {root}")
    return [d[3:] for d in _subdirs(root) if d.startswith("MT_") and (root / d / "Imgs").is_dir()]


def _read_mtd(
    root: Path, category: str, split: str, allow_missing_masks: bool, classes: Sequence[str] | None
) -> ImageSet:
    if category != MTD_CATEGORY:
        raise ValueError(f"mtd: unknown category {category!r}; MTD has one category, {MTD_CATEGORY!r}")
    _check_split("mtd", split, ("test",))
    found = _mtd_classes(root)
    if not found:
        raise FileNotFoundError(f"mtd: no MT_<class>/Imgs folders in {root}; it contains {_subdirs(root)}")
    if classes is None:
        chosen = found
    else:
        chosen = list(classes)
        unknown = [c for c in chosen if c not in found]
        if unknown or not chosen:
            raise ValueError(f"mtd: unknown classes {unknown or chosen}; {root} has {found}")
    rows = []
    for cls in sorted(set(chosen)):
        img_dir = root / f"MT_{cls}" / "Imgs"
        for image in _images_in(img_dir):
            if image.suffix.lower() != ".jpg":
                continue
            if cls == "Free":
                rows.append((str(image), 0, cls, None))
                continue
            mask = img_dir / f"{image.stem}.png"
            if not mask.is_file():
                if not allow_missing_masks:
                    raise FileNotFoundError(
                        f"mtd: no ground-truth mask for anomalous image {image}: expected {mask}; "
                        "pass allow_missing_masks=True to read it without pixel ground truth"
                    )
                mask = None
            rows.append((str(image), 1, cls, None if mask is None else str(mask)))
    return _build("mtd", category, rows, f"{root}/MT_{{{','.join(sorted(set(chosen)))}}}/Imgs/*.jpg")


def _folder_dir(root: Path, category: str | None) -> Path:
    return root if category in (None, "", ".") else root / category


def _read_folder(root: Path, category: str | None, split: str, infer_labels: bool) -> ImageSet:
    if split != "test":
        raise ValueError(
            f"folder: a plain folder has no splits (got split={split!r}); pass the folder of the images "
            "you want (e.g. normal references) as root"
        )
    folder = _folder_dir(root, category)
    _require_dir(folder, "image folder")
    images = sorted(
        (p for p in folder.rglob("*") if _is_image(p) and not _hidden(p.relative_to(folder))),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not images:
        raise FileNotFoundError(
            f"folder: no images found under {folder} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
            f"it contains {sorted(p.name for p in folder.iterdir())[:20]}"
        )
    rows = []
    for image in images:
        parts = image.parent.relative_to(folder).parts
        label = None
        if infer_labels:
            if not parts:
                raise ValueError(
                    f"folder: infer_labels=True needs every image in a subfolder (normal ones in one named "
                    f"{'/'.join(NORMAL_FOLDER_NAMES)}), but {image} lies directly in {folder}"
                )
            label = 0 if any(p.lower() in NORMAL_FOLDER_NAMES for p in parts) else 1
        rows.append((str(image), label, "/".join(parts) or ".", None))
    name = "." if category in (None, "") else category
    return _build("folder", name, rows, str(folder), pixel_truth=False)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def list_categories(dataset: str, root: str | os.PathLike) -> list[str]:
    """Categories available under `root` for `dataset`, sorted.

    mvtec/mpdd: subfolders with a `test` folder; btad: those of 01/02/03 present; visa: the csv's objects;
    mtd: ["magnetic_tile"]; folder: "." when root holds images directly, plus each subfolder holding images.
    """
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: dataset root not found: {root}")
    if dataset in ("mvtec", "mpdd", "btad"):
        cats = [d for d in _subdirs(root) if (root / d / "test").is_dir()]
        if dataset == "btad":
            cats = [c for c in cats if c in BTAD_CATEGORIES]
        if not cats:
            raise FileNotFoundError(
                f"{dataset}: no <category>/test folders in {root}; it contains {_subdirs(root)}"
            )
        return cats
    if dataset == "visa":
        return sorted({r["object"] for r in _visa_rows(root, _VISA_CSV)})
    if dataset == "mtd":
        if not _mtd_classes(root):
            raise FileNotFoundError(
                f"mtd: no MT_<class>/Imgs folders in {root}; it contains {_subdirs(root)}"
            )
        return [MTD_CATEGORY]
    cats = ["."] if _images_in(root) else []
    for d in _subdirs(root):
        if any(_is_image(p) for p in (root / d).rglob("*")):
            cats.append(d)
    if not cats:
        raise FileNotFoundError(f"folder: no images under {root}")
    return cats


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
    optional for mtd (its only category) and folder (a subfolder of root, or root itself when None).
    split: "test" (default) or "train" (mvtec/mpdd/btad normal references; visa per its csv).
    allow_missing_masks: read anomalous images lacking a mask (mask_path None, has_masks False) instead of
    raising. classes: mtd only, e.g. ("Free", "Blowhole"). infer_labels: folder only. csv_path: visa only,
    relative to root.
    """
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: dataset root not found: {root}")
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
        raise ValueError(f"{dataset}: unknown category {category!r}; {root} has {available}")
    normal = "ok" if dataset == "btad" else "good"
    return _read_type_folders(dataset, root, category, split, normal, allow_missing_masks)
