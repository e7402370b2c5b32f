"""Dataset readers on small fixture trees of each layout, and on the real photos in shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jzad.data import DATASETS, ImageSet, list_categories, read_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _img(path: Path, value: int = 100, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 3:6] = 255
    Image.fromarray(m).save(path)
    return path


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    cat = root / "bottle"
    for name in ("000.png", "001.png"):
        _img(cat / "test" / "good" / name)
        _img(cat / "test" / "broken_large" / name)
        _mask(cat / "ground_truth" / "broken_large" / name.replace(".png", "_mask.png"))
    _img(cat / "test" / "contamination" / "000.png")
    _mask(cat / "ground_truth" / "contamination" / "000.png")  # no _mask suffix
    for i in range(3):
        _img(cat / "train" / "good" / f"{i:03d}.png")
    (cat / "test" / "good" / ".DS_Store").write_bytes(b"x")
    (cat / "test" / "good" / "notes.txt").write_text("not an image")
    _img(root / "cable" / "test" / "good" / "000.png")
    (root / "license.txt").write_text("x")
    return root


def test_mvtec_test_split(mvtec_root: Path) -> None:
    s = read_dataset("mvtec", mvtec_root, "bottle")
    cat = mvtec_root / "bottle"
    assert isinstance(s, ImageSet) and s.dataset == "mvtec" and s.category == "bottle"
    assert s.paths == tuple(
        str(cat / "test" / t / n)
        for t, n in [
            ("broken_large", "000.png"),
            ("broken_large", "001.png"),
            ("contamination", "000.png"),
            ("good", "000.png"),
            ("good", "001.png"),
        ]
    )
    assert s.labels == (1, 1, 1, 0, 0)
    assert s.defect_types == ("broken_large", "broken_large", "contamination", "good", "good")
    assert s.mask_paths == (
        str(cat / "ground_truth" / "broken_large" / "000_mask.png"),
        str(cat / "ground_truth" / "broken_large" / "001_mask.png"),
        str(cat / "ground_truth" / "contamination" / "000.png"),
        None,
        None,
    )
    assert s.has_masks and len(s) == 5 and s.num_anomalous == 3
    assert read_dataset("mvtec", mvtec_root, "bottle") == s  # deterministic


def test_mvtec_train_split_and_categories(mvtec_root: Path) -> None:
    s = read_dataset("mvtec", mvtec_root, "bottle", split="train")
    assert len(s) == 3 and s.labels == (0, 0, 0) and s.mask_paths == (None,) * 3
    assert s.paths[0].endswith(os.path.join("train", "good", "000.png"))
    assert list_categories("mvtec", mvtec_root) == ["bottle", "cable"]


def test_mvtec_missing_mask(mvtec_root: Path) -> None:
    gt = mvtec_root / "bottle" / "ground_truth" / "broken_large" / "001_mask.png"
    gt.unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_dataset("mvtec", mvtec_root, "bottle")
    msg = str(err.value)
    assert str(mvtec_root / "bottle" / "test" / "broken_large" / "001.png") in msg
    assert str(gt) in msg
    s = read_dataset("mvtec", mvtec_root, "bottle", allow_missing_masks=True)
    assert s.mask_paths[1] is None and s.labels[1] == 1 and not s.has_masks


def test_mvtec_errors(mvtec_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown category 'bottel'.*bottle.*cable"):
        read_dataset("mvtec", mvtec_root, "bottel")
    with pytest.raises(ValueError, match="category is required.*bottle"):
        read_dataset("mvtec", mvtec_root)
    with pytest.raises(ValueError, match="unknown dataset 'mvtec_ad'"):
        read_dataset("mvtec_ad", mvtec_root, "bottle")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        read_dataset("mvtec", mvtec_root, "bottle", split="val")
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        read_dataset("mvtec", tmp_path / "nowhere", "bottle")
    empty = tmp_path / "empty" / "screw" / "test" / "good"
    empty.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images found"):
        read_dataset("mvtec", tmp_path / "empty", "screw")
    with pytest.raises(FileNotFoundError, match="train folder"):
        read_dataset("mvtec", tmp_path / "empty", "screw", split="train")
    with pytest.raises(TypeError):
        read_dataset("mvtec", mvtec_root, "bottle", bogus_option=1)
    with pytest.raises(ValueError, match="classes applies to mtd only"):
        read_dataset("mvtec", mvtec_root, "bottle", classes=("a",))


def test_mpdd_jpg(tmp_path: Path) -> None:
    cat = tmp_path / "mpdd" / "tubes"
    _img(cat / "test" / "good" / "000.jpg")
    _img(cat / "test" / "anomalous" / "000.JPG")
    _mask(cat / "ground_truth" / "anomalous" / "000_mask.png")
    s = read_dataset("mpdd", tmp_path / "mpdd", "tubes")
    assert s.dataset == "mpdd" and s.labels == (1, 0)
    assert s.mask_paths[0] == str(cat / "ground_truth" / "anomalous" / "000_mask.png")


@pytest.fixture
def btad_root(tmp_path: Path) -> Path:
    root = tmp_path / "btad"
    for i in range(2):
        _img(root / "01" / "test" / "ok" / f"{i:04d}.bmp")
        _img(root / "01" / "test" / "ko" / f"{i:04d}.bmp")
        _mask(root / "01" / "ground_truth" / "ko" / f"{i:04d}.png")
        _img(root / "01" / "train" / "ok" / f"{i:04d}.bmp")
    _img(root / "02" / "test" / "ok" / "0000.png")
    _img(root / "02" / "test" / "ko" / "0000.png")
    _mask(root / "02" / "ground_truth" / "ko" / "0000.bmp")
    (root / "extra" / "test").mkdir(parents=True)
    return root


def test_btad(btad_root: Path) -> None:
    assert list_categories("btad", btad_root) == ["01", "02"]
    s = read_dataset("btad", btad_root, "01")
    assert s.labels == (1, 1, 0, 0) and s.defect_types == ("ko", "ko", "ok", "ok")
    gt = btad_root / "01" / "ground_truth" / "ko"
    assert s.mask_paths[:2] == (str(gt / "0000.png"), str(gt / "0001.png"))
    s2 = read_dataset("btad", btad_root, "02")
    assert s2.mask_paths[0] == str(btad_root / "02" / "ground_truth" / "ko" / "0000.bmp") and s2.has_masks
    tr = read_dataset("btad", btad_root, "01", split="train")
    assert len(tr) == 2 and tr.labels == (0, 0) and tr.defect_types == ("ok", "ok")
    (btad_root / "01" / "ground_truth" / "ko" / "0001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ko.0001\.bmp.*0001_mask\.png"):
        read_dataset("btad", btad_root, "01")


@pytest.fixture
def visa_root(tmp_path: Path) -> Path:
    root = tmp_path / "visa"
    lines = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        plan = [("train", "normal")] * 2 + [("test", "normal")] + [("test", "anomaly")] * 2
        for i, (split, label) in enumerate(plan):
            sub = "Normal" if label == "normal" else "Anomaly"
            image = f"{obj}/Data/Images/{sub}/{i:04d}.JPG"
            _img(root / image)
            mask = ""
            if label == "anomaly":
                mask = f"{obj}/Data/Masks/Anomaly/{i:04d}.png"
                _mask(root / mask)
            lines.append(f"{obj},{split},{label},{image},{mask}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    return root


def test_visa(visa_root: Path) -> None:
    assert list_categories("visa", visa_root) == ["candle", "pcb1"]
    s = read_dataset("visa", visa_root, "candle")
    base = visa_root / "candle" / "Data"
    assert s.paths == (
        str(base / "Images" / "Anomaly" / "0003.JPG"),
        str(base / "Images" / "Anomaly" / "0004.JPG"),
        str(base / "Images" / "Normal" / "0002.JPG"),
    )
    assert s.labels == (1, 1, 0) and s.defect_types == ("anomaly", "anomaly", "normal")
    masks = base / "Masks" / "Anomaly"
    assert s.mask_paths == (str(masks / "0003.png"), str(masks / "0004.png"), None)
    tr = read_dataset("visa", visa_root, "pcb1", split="train")
    assert len(tr) == 2 and tr.labels == (0, 0)
    with pytest.raises(ValueError, match=r"unknown category 'capsules'.*candle.*pcb1"):
        read_dataset("visa", visa_root, "capsules")
    (base / "Masks" / "Anomaly" / "0004.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"0004\.JPG.*Masks.Anomaly.0004\.png"):
        read_dataset("visa", visa_root, "candle")
    assert read_dataset("visa", visa_root, "candle", allow_missing_masks=True).mask_paths[1] is None


def test_visa_bad_csv(visa_root: Path) -> None:
    csv_file = visa_root / "split_csv" / "1cls.csv"
    text = csv_file.read_text()
    csv_file.write_text(text.replace("candle,test,anomaly", "candle,test,defect", 1))
    with pytest.raises(ValueError, match="label must be 'normal' or 'anomaly', got 'defect'"):
        read_dataset("visa", visa_root, "candle")
    csv_file.write_text(text.replace("object,split,label,image,mask", "object,split,label,image"))
    with pytest.raises(ValueError, match=r"lacks columns \['mask'\]"):
        read_dataset("visa", visa_root, "candle")
    csv_file.unlink()
    with pytest.raises(FileNotFoundError, match="1cls.csv"):
        list_categories("visa", visa_root)


@pytest.fixture
def mtd_root(tmp_path: Path) -> Path:
    root = tmp_path / "mtd"
    for cls, ids in (("Free", ("a1", "a0")), ("Crack", ("c1",)), ("Blowhole", ("b1", "b2"))):
        for i in ids:
            _img(root / f"MT_{cls}" / "Imgs" / f"{i}.jpg")
            _mask(root / f"MT_{cls}" / "Imgs" / f"{i}.png")
    (root / "README.md").write_text("x")
    return root


def test_mtd(mtd_root: Path) -> None:
    assert list_categories("mtd", mtd_root) == ["MT_Blowhole", "MT_Crack"]
    s = read_dataset("mtd", mtd_root)
    assert s.category == "magnetic_tile"
    assert [Path(p).name for p in s.paths] == ["b1.jpg", "b2.jpg", "c1.jpg", "a0.jpg", "a1.jpg"]
    assert s.labels == (1, 1, 1, 0, 0)
    assert s.defect_types == ("Blowhole", "Blowhole", "Crack", "Free", "Free")
    assert s.mask_paths[2] == str(mtd_root / "MT_Crack" / "Imgs" / "c1.png") and s.mask_paths[3] is None
    sub = read_dataset("mtd", mtd_root, "magnetic_tile", classes=("Free", "Crack"))
    assert sub.defect_types == ("Crack", "Free", "Free")
    with pytest.raises(ValueError, match=r"unknown classes \['Fray'\]"):
        read_dataset("mtd", mtd_root, classes=("Fray",))
    with pytest.raises(ValueError, match="unknown category 'tiles'.*MT_Blowhole, MT_Crack"):
        read_dataset("mtd", mtd_root, "tiles")
    with pytest.raises(ValueError, match="unknown split 'train'"):
        read_dataset("mtd", mtd_root, split="train")
    (mtd_root / "MT_Blowhole" / "Imgs" / "b2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b2\.jpg.*expected .*b2\.png"):
        read_dataset("mtd", mtd_root)


def test_folder(tmp_path: Path) -> None:
    root = tmp_path / "shots"
    _img(root / "z.png")
    _img(root / "a.jpg")
    _img(root / "line2" / "x.png")
    s = read_dataset("folder", root)
    assert [Path(p).relative_to(root).as_posix() for p in s.paths] == ["a.jpg", "line2/x.png", "z.png"]
    assert s.labels is None and not s.has_masks and s.mask_paths == (None,) * 3
    assert s.defect_types == (".", "line2", ".")
    assert list_categories("folder", root) == [".", "line2"]
    assert len(read_dataset("folder", root, "line2")) == 1
    with pytest.raises(ValueError, match="needs every image in a subfolder"):
        read_dataset("folder", root, infer_labels=True)
    with pytest.raises(ValueError, match="no splits"):
        read_dataset("folder", root, split="train")
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found under"):
        read_dataset("folder", root, "empty")


def test_folder_infer_labels(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    _img(root / "good" / "1.png")
    _img(root / "OK" / "2.png")
    _img(root / "scratch" / "3.png")
    _img(root / "scratch" / "good" / "4.png")
    s = read_dataset("folder", root, infer_labels=True)
    assert [Path(p).name for p in s.paths] == ["2.png", "1.png", "3.png", "4.png"]
    assert s.labels == (0, 0, 1, 0) and not s.has_masks
    assert s.defect_types == ("OK", "good", "scratch", "scratch/good")


def test_imageset_validation_and_select() -> None:
    s = ImageSet("mvtec", "c", ("a", "b", "c"), (1, 0, 1), ("x", "good", "y"), ("ma", None, "mc"), True)
    sub = s.select(np.array([2, 0]))
    assert sub.paths == ("c", "a") and sub.labels == (1, 1) and sub.mask_paths == ("mc", "ma")
    with pytest.raises(IndexError):
        s.select([3])
    with pytest.raises(ValueError, match="normal image b must have mask_path None"):
        ImageSet("mvtec", "c", ("a", "b"), (1, 0), ("x", "good"), ("ma", "mb"), True)
    with pytest.raises(ValueError, match="labels must be 0"):
        ImageSet("mvtec", "c", ("a",), (2,), ("x",), ("m",), True)
    with pytest.raises(ValueError, match="has_masks is True"):
        ImageSet("mvtec", "c", ("a",), (1,), ("x",), (None,), True)
    with pytest.raises(ValueError, match="one entry per image"):
        ImageSet("mvtec", "c", ("a", "b"), (1, 0), ("x",), ("m", None), True)
    assert set(DATASETS) == {"mvtec", "visa", "btad", "mpdd", "mtd", "folder"}


def test_real_mvtec_hazelnut() -> None:
    root = SHARED / "mvtec_subset"
    if not (root / "hazelnut").is_dir():
        pytest.skip(f"real MVTec subset not present at {root}")
    s = read_dataset("mvtec", root, "hazelnut")
    assert len(s) == 23 and s.num_anomalous == 17 and s.has_masks
    assert s.defect_types.count("colour") == 17 and s.defect_types.count("good") == 6
    for path, mask in zip(s.paths, s.mask_paths):
        if mask is not None:
            assert Path(mask) == root / "hazelnut" / "ground_truth" / "colour" / (Path(path).stem + ".png")
    assert len(read_dataset("mvtec", root, "hazelnut", split="train")) == 28


def test_real_mtd() -> None:
    root = SHARED / "mtd"
    if not root.is_dir():
        pytest.skip(f"MTD not present at {root}")
    s = read_dataset("mtd", root)
    counts = {t: s.defect_types.count(t) for t in set(s.defect_types)}
    assert counts == {"Free": 600, "Blowhole": 115, "Break": 85, "Crack": 57}
    assert s.num_anomalous == 257 and s.has_masks
    assert all(m.endswith(".png") and os.path.isfile(m) for m in s.mask_paths if m is not None)
    one = read_dataset("mtd", root, classes=("Free", "Blowhole"))
    assert len(one) == 715 and one.num_anomalous == 115


def test_mtd_classes_are_categories_with_a_seeded_reference_pool(tmp_path: Path) -> None:
    from jzad.data import category_sources

    root = tmp_path / "mtd"
    normals = [f"n{i:02d}" for i in range(11)]
    for cls, ids in (("Free", normals), ("Crack", ("c1", "c2")), ("Break", ("k1",))):
        for i in ids:
            _img(root / f"MT_{cls}" / "Imgs" / f"{i}.jpg")
            _mask(root / f"MT_{cls}" / "Imgs" / f"{i}.png")
    train = read_dataset("mtd", root, "MT_Crack", split="train")
    test = read_dataset("mtd", root, "MT_Crack")
    pool = {Path(p).stem for p in train.paths}
    test_normals = {Path(p).stem for p, y in zip(test.paths, test.labels) if y == 0}
    assert len(pool) == 3 and pool.isdisjoint(test_normals) and pool | test_normals == set(normals)
    assert train.labels == (0, 0, 0) and sorted(Path(p).stem for p, y in zip(test.paths, test.labels) if y) == [
        "c1", "c2"]
    assert {Path(p).stem for p in read_dataset("mtd", root, "MT_Break", split="train").paths} == pool  # shared
    assert test.category == "MT_Crack" and test.has_masks
    sources = category_sources("mtd", root, "MT_Crack", shots=2, seed=5)
    assert {Path(n).stem for n in sources.references.names} <= pool
    assert sources.protocol["reference_pool"] == 3 and sources.protocol["test_normals"] == 8
    assert len(read_dataset("mtd", root).paths) == 14  # the pooled category keeps every image
    with pytest.raises(ValueError, match="classes applies to the pooled category"):
        read_dataset("mtd", root, "MT_Crack", classes=("Crack",))
    with pytest.raises(ValueError, match="unknown category 'MT_Free'"):
        read_dataset("mtd", root, "MT_Free")
