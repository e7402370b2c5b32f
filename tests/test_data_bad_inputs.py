"""Bad inputs to the data layer: each failing input built here and the exact behaviour asserted against closed
forms.

Decoding of every Pillow mode, two-value masks and the MaskReport, mask/image size mismatches, mask files in
plain folders, symlinks and display names, output names, MPDD's re-split layout and MVTec LOCO detection.
"""

from __future__ import annotations

import os
import struct
import unicodedata
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jzad.data.decode import load_image, load_images, open_image, to_rgb_array
from jzad.data.errors import DataError, DataNotFoundError
from jzad.data.imageset import ImageSet
from jzad.data.masks import mask_size_warnings, read_masks, read_set_masks
from jzad.data.names import display_name, output_names
from jzad.data.readers import list_categories, read_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _round_scale(v: np.ndarray, full: int) -> np.ndarray:
    """round(v * 255 / full) after clipping to [0, full], in exact integer arithmetic (half up)."""
    v = np.clip(np.asarray(v, dtype=object), 0, full)
    return np.array([(int(x) * 510 + full) // (2 * full) for x in v.ravel()], np.uint8).reshape(v.shape)


def _tiff(path: Path, values: np.ndarray, sample_format: int) -> Path:
    """A minimal uncompressed little-endian single-strip gray TIFF (written from the TIFF 6.0 tag list)."""
    h, w = values.shape
    data = values.astype(values.dtype.newbyteorder("<")).tobytes()
    bits = values.dtype.itemsize * 8
    tags = [(256, 4, w), (257, 4, h), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, 0),
            (277, 3, 1), (278, 4, h), (279, 4, len(data)), (339, 3, sample_format)]
    ifd_size = 2 + 12 * len(tags) + 4
    offset = 8 + ifd_size
    tags[5] = (273, 4, offset)
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    path.write_bytes(out + struct.pack("<I", 0) + data)
    return path


def _png16(path: Path, values: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG (gray 0, RGB 2, gray+alpha 4, RGBA 6) written from the PNG spec, filter 0 on every row."""
    h, w = values.shape[:2]
    raw = b"".join(b"\0" + values[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _save(array: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def _gray3(v: np.ndarray) -> np.ndarray:
    return np.repeat(v[..., None], 3, axis=2)


# ---------------------------------------------------------------- decoding per mode


def test_sixteen_bit_gray_scaled_by_257(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    v = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    v[0, :4] = [0, 128, 129, 65535]  # 128/257 < 0.5 -> 0, 129/257 > 0.5 -> 1
    expected = _round_scale(v, 65535)
    assert expected[0, :4].tolist() == [0, 0, 1, 255]
    png = _save(v, tmp_path / "g16.png")
    tif = _save(v, tmp_path / "g16.tif")
    big = tmp_path / "g16b.tif"
    Image.frombytes("I;16B", (7, 5), v.astype(">u2").tobytes()).save(big)
    for path, mode in ((png, "I;16"), (tif, "I;16"), (big, "I;16B")):
        assert open_image(path).mode == mode
        np.testing.assert_array_equal(np.asarray(load_image(path)), _gray3(expected))
    raw = _png16(tmp_path / "raw16.png", v, 0)
    np.testing.assert_array_equal(np.asarray(load_image(raw)), _gray3(expected))
    pgm = tmp_path / "g16.pgm"
    pgm.write_bytes(b"P5\n7 5\n65535\n" + v.astype(">u2").tobytes())
    assert open_image(pgm).mode == "I"  # Pillow widens PGM to 16 bits in mode I
    np.testing.assert_array_equal(np.asarray(load_image(pgm)), _gray3(expected))


def test_thirty_two_bit_integers_by_declared_range(tmp_path: Path) -> None:
    signed = np.array([[-7, 0, 1000, 2**30, 2**31 - 1]], np.int32)
    path = _save(signed, tmp_path / "i32.tif")
    assert open_image(path).mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], _round_scale(signed, 2**31 - 1))
    unsigned = np.array([[0, 2**31, 2**32 - 1, 123456789, 2**32 - 16843010]], np.uint32)
    path = _tiff(tmp_path / "u32.tif", unsigned, sample_format=1)
    assert open_image(path).mode == "I"  # Pillow hands these over as signed int32
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], _round_scale(unsigned, 2**32 - 1))
    s16 = np.array([[-300, 0, 129, 32767, 16384]], np.int16)
    path = _tiff(tmp_path / "s16.tif", s16, sample_format=2)
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], _round_scale(s16, 32767))
    s8 = np.array([[-5, 0, 64, 127]], np.int8)
    path = _tiff(tmp_path / "s8.tif", s8, sample_format=2)
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], _round_scale(s8, 127))


def test_float_clipped_to_unit_range(tmp_path: Path) -> None:
    f = np.array([[-0.5, 0.0, 0.3, 0.5, 0.999, 1.0, 7.0]], np.float32)
    path = _save(f, tmp_path / "f.tif")
    assert open_image(path).mode == "F"
    expected = np.rint(np.clip(f.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    assert expected.tolist() == [[0, 0, 77, 128, 255, 255, 255]]  # float32(0.3) * 255 = 76.500003
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], expected)
    f[0, 2] = np.nan
    bad = _save(f, tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif.*NaN"):
        load_image(bad)


def test_eight_bit_modes(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    gray = rng.integers(0, 256, (3, 5), dtype=np.uint8)
    alpha = rng.integers(0, 256, (3, 5), dtype=np.uint8)
    la = _save(np.stack([gray, alpha], -1), tmp_path / "la.png")
    assert open_image(la).mode == "LA"
    np.testing.assert_array_equal(np.asarray(load_image(la)), _gray3(gray))  # alpha dropped
    bits = rng.random((3, 9)) > 0.5
    one = _save(bits, tmp_path / "one.png")
    assert open_image(one).mode == "1"
    np.testing.assert_array_equal(np.asarray(load_image(one)), _gray3(bits.astype(np.uint8) * 255))
    rgba = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent: the stored colour is kept, not composited
    path = _save(rgba, tmp_path / "rgba.png")
    np.testing.assert_array_equal(np.asarray(load_image(path)), rgba[..., :3])
    cmyk = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    path = tmp_path / "cmyk.tif"
    Image.frombytes("CMYK", (5, 3), cmyk.tobytes()).save(path)
    c = cmyk.astype(np.int64)
    expected = ((255 - c[..., :3]) * (255 - c[..., 3:]) * 2 + 255) // 510
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected.astype(np.uint8))
    ycc = rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    path = tmp_path / "ycc.tif"
    Image.frombytes("YCbCr", (5, 3), ycc.tobytes()).save(path)
    assert open_image(path).mode == "YCbCr"
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    ref = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], -1)
    got = np.asarray(load_image(path)).astype(np.float64)
    assert np.abs(got - np.clip(ref, 0, 255)).max() <= 1.0


def test_palette_modes(tmp_path: Path) -> None:
    palette = np.random.default_rng(13).integers(0, 256, (256, 3), dtype=np.uint8)
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    p = Image.frombytes("P", (3, 2), idx.tobytes())
    p.putpalette(palette.ravel().tolist())
    plain = tmp_path / "p.png"
    p.save(plain)
    np.testing.assert_array_equal(np.asarray(load_image(plain)), palette[idx])
    trans = tmp_path / "pt.png"
    p.save(trans, transparency=1)
    assert "transparency" in open_image(trans).info
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when P+transparency goes straight to RGB
        np.testing.assert_array_equal(np.asarray(load_image(trans)), palette[idx])
    pa = Image.frombytes("PA", (3, 2), np.stack([idx, 255 - idx], -1).tobytes())
    pa.putpalette(palette.ravel().tolist())
    np.testing.assert_array_equal(to_rgb_array(pa), palette[idx])


def test_sixteen_bit_colour_is_pillows_high_byte(tmp_path: Path) -> None:
    v = np.random.default_rng(14).integers(0, 65536, (4, 3, 3), dtype=np.uint16)
    path = _png16(tmp_path / "rgb16.png", v, 2)
    got = np.asarray(load_image(path)).astype(np.int64)
    np.testing.assert_array_equal(got, v >> 8)  # documented: Pillow keeps the high byte
    assert np.abs(got - _round_scale(v, 65535).astype(np.int64)).max() <= 1


def test_unsupported_inputs_name_the_file(tmp_path: Path) -> None:
    lab = Image.frombytes("LAB", (2, 2), bytes(12))
    with pytest.raises(DataError, match="mode 'LAB'"):
        to_rgb_array(lab, "x.tif")
    pcx = tmp_path / "pic.png"
    Image.new("RGB", (4, 4)).save(pcx, format="PCX")  # a real format outside DECODE_FORMATS
    with pytest.raises(DataError, match=r"pic\.png.*not a PNG/JPEG"):
        load_image(pcx)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png"):
        load_images([empty], 8)
    with pytest.raises(DataNotFoundError, match=r"gone\.png") as err:
        load_image(tmp_path / "gone.png")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    assert err.value.path == str(tmp_path / "gone.png")


# ---------------------------------------------------------------- two-value masks, MaskReport


def _defect(shape, box) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[box] = True
    return m


def test_two_value_masks_and_report(tmp_path: Path) -> None:
    shape = (12, 10)
    truth = _defect(shape, np.s_[3:9, 2:7])
    files = {
        "u8_1.png": truth.astype(np.uint8),
        "u8_100.png": truth.astype(np.uint8) * 100,
        "u8_255.png": truth.astype(np.uint8) * 255,
        "u16_1.png": truth.astype(np.uint16),
        "u16_full.png": truth.astype(np.uint16) * 65535,
        "f_02.tif": truth.astype(np.float32) * 0.2,
        "f_05.tif": truth.astype(np.float32) * 0.5,  # 0.5 -> 128 > 127: the threshold keeps it too
    }
    paths = [str(_save(v, tmp_path / name)) for name, v in files.items()]
    colour = np.zeros((*shape, 3), np.uint8)
    colour[truth] = (0, 0, 255)  # pure blue: luma 29 would vanish at 127; the channel max is 255
    paths.append(str(_save(colour, tmp_path / "blue.png")))
    soft = truth.astype(np.uint8) * 200
    soft[0, 0] = 90  # three values: the threshold decides, 90 is dropped, 200 kept
    paths.append(str(_save(soft, tmp_path / "soft.png")))
    masks, report = read_masks(paths, [1] * len(paths), shape, "exact_one", 127, dataset="d", category="c")
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(masks[i], truth, err_msg=path)
    two = {Path(p).name for p in report.two_value}
    assert two == {"u8_1.png", "u8_100.png", "u16_1.png", "f_02.tif"}
    assert report.num_masks == len(paths) and report.num_empty == 0 and report.rule == "exact_one"
    assert report.threshold == 127 and report.size == shape
    assert "4 two-valued masks" in report.summary() and report.summary().startswith("d/c: 9 masks")
    # a 16-bit mask with three values: the threshold applies to value / 257 (30000 -> 117 dropped, 33000 ->
    # 128 kept at 127; at threshold 116 both are kept)
    soft16 = truth.astype(np.uint16) * 33000
    soft16[truth & (np.arange(shape[1]) < 4)] = 30000
    path16 = _save(soft16, tmp_path / "soft16.png")
    np.testing.assert_array_equal(read_masks([path16], [1], shape, "half", 127)[0][0], soft16 == 33000)
    np.testing.assert_array_equal(read_masks([path16], [1], shape, "half", 116)[0][0], truth)


def test_empty_masks_counted(tmp_path: Path) -> None:
    zero = _save(np.zeros((16, 16), np.uint8), tmp_path / "zero.png")
    speck = _save(_defect((16, 16), np.s_[5, 5]).astype(np.uint8) * 255, tmp_path / "speck.png")
    big = _save(_defect((16, 16), np.s_[4:12, 4:12]).astype(np.uint8) * 255, tmp_path / "big.png")
    masks, report = read_masks([zero, speck, big, None], [1, 1, 1, 0], 8, "exact_one")
    # one pixel of 16x16 down to 8x8: the triangle filter spreads it below 255 everywhere
    assert report.empty_files == (str(zero),) and report.emptied_by_resize == (str(speck),)
    assert report.num_empty == 2 and report.num_masks == 3
    assert masks[2].sum() > 0 and not masks[3].any()
    _, nonzero = read_masks([speck], [1], 8, "nonzero")
    assert nonzero.num_empty == 0
    with pytest.raises(DataError, match=r"image 1 .*b\.png is anomalous but has no mask path"):
        read_masks([big, None], [1, 1], 8, "half", image_paths=[big, tmp_path / "b.png"])


# ---------------------------------------------------------------- size mismatches


def test_mask_size_mismatch_reported_once_per_category(tmp_path: Path) -> None:
    cat = tmp_path / "mvtec" / "bottle"
    rows = []
    for i, (img_hw, mask_hw) in enumerate([((32, 40), (16, 20)), ((32, 40), (16, 20)), ((24, 24), (24, 24)),
                                           ((50, 20), (26, 10))]):
        img = _save(np.zeros((*img_hw, 3), np.uint8), cat / "test" / "crack" / f"{i:03d}.png")
        m = np.zeros(mask_hw, np.uint8)
        m[: mask_hw[0] // 2] = 255
        mask = _save(m, cat / "ground_truth" / "crack" / f"{i:03d}_mask.png")
        rows.append((img, mask, mask_hw, img_hw))
    _save(np.zeros((8, 8, 3), np.uint8), cat / "test" / "good" / "000.png")
    s = read_dataset("mvtec", tmp_path / "mvtec", "bottle")
    masks, report = read_set_masks(s, 16)
    expected = tuple((str(m), mhw, ihw) for _, m, mhw, ihw in rows if mhw != ihw)
    assert report.size_mismatches == expected
    top = np.zeros((16, 16), bool)
    top[:8] = True
    np.testing.assert_array_equal(masks[0], top)  # still stretched onto the image grid
    lines = mask_size_warnings([report, report])
    assert len(lines) == 1
    assert lines[0] == (
        "mvtec/bottle: 6 of 8 masks differ in size from their images and were stretched onto them (H x W): "
        f"mask 16x20 vs image 32x40 in 4 files (e.g. {rows[0][1]}); "
        f"mask 26x10 vs image 50x20 in 2 files (e.g. {rows[3][1]})"
    )
    assert report.size_warning().startswith("mvtec/bottle: 3 of 4 masks")
    same, rep2 = read_set_masks(s.select([2, 4]), 16)
    assert rep2.size_mismatches == () and rep2.size_warning() is None and mask_size_warnings([rep2]) == []


# ---------------------------------------------------------------- plain folders


def _photo(path: Path, seed: int, shape=(10, 12)) -> Path:
    rng = np.random.default_rng(seed)
    return _save(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), path)


def test_folder_skips_masks(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _photo(root / "test" / "good" / "000.png", 1)
    _photo(root / "test" / "crack" / "000.png", 2)
    _save(np.zeros((10, 12), np.uint8), root / "ground_truth" / "crack" / "000_mask.png")
    _save(np.zeros((10, 12), np.uint8), root / "test" / "Masks" / "x.png")
    _save(np.zeros((10, 12), np.uint8), root / "test" / "crack" / "001_mask.png")
    # MTD: a photo and its soft-edged mask beside it (97% of pixels 0 or 255)
    tile = np.random.default_rng(3).integers(0, 256, (20, 20), dtype=np.uint8)
    _save(tile, root / "tiles" / "t1.jpg")
    soft = np.zeros((20, 20), np.uint8)
    soft[5:10, 5:10] = 255
    soft[10, 5:10] = 120
    _save(soft, root / "tiles" / "t1.png")
    # two photos with the same stem are both images
    _photo(root / "tiles" / "p7.png", 4)
    _photo(root / "tiles" / "p7.jpg", 5)
    gray_photo = np.random.default_rng(6).integers(0, 256, (20, 20), dtype=np.uint8)
    _save(gray_photo, root / "tiles" / "g2.png")
    _save(gray_photo, root / "tiles" / "g2.jpg")
    s = read_dataset("folder", root)
    rel = [Path(p).relative_to(root).as_posix() for p in s.paths]
    assert rel == ["test/crack/000.png", "test/good/000.png", "tiles/g2.jpg", "tiles/g2.png", "tiles/p7.jpg",
                   "tiles/p7.png", "tiles/t1.jpg"]
    skipped = {Path(p).relative_to(root).as_posix(): why for p, why in s.skipped}
    assert skipped == {
        "ground_truth/crack/000_mask.png": "in mask folder",
        "test/Masks/x.png": "in mask folder",
        "test/crack/001_mask.png": "named *_mask",
        "tiles/t1.png": "mask beside its image",
    }
    assert s.summary() == (
        "folder/.: 7 images; skipped 4 files (2 in mask folder, 1 mask beside its image, 1 named *_mask)"
    )
    assert list_categories("folder", root) == ["test", "tiles"]


def test_folder_infer_labels_hardened(tmp_path: Path) -> None:
    cat = tmp_path / "bottle"
    _photo(cat / "train" / "good" / "000.png", 1)
    _photo(cat / "test" / "good" / "000.png", 2)
    _photo(cat / "test" / "broken" / "000.png", 3)
    _save(np.zeros((10, 12), np.uint8), cat / "ground_truth" / "broken" / "000_mask.png")
    s = read_dataset("folder", cat, infer_labels=True)
    assert [Path(p).relative_to(cat).as_posix() for p in s.paths] == [
        "test/broken/000.png", "test/good/000.png", "train/good/000.png"]
    assert s.labels == (1, 0, 0) and s.defect_types == ("test/broken", "test/good", "train/good")
    defects_only = tmp_path / "defects_only"
    _photo(defects_only / "scratch" / "1.png", 9)
    with pytest.raises(DataError, match=r"no normal images .*\['scratch'\]"):
        read_dataset("folder", defects_only, infer_labels=True)
    with pytest.raises(DataError, match=r"no anomalous images .*\['good'\]"):
        read_dataset("folder", cat / "train", infer_labels=True)



# ---------------------------------------------------------------- symlinks and display names


def test_symlinks_keep_the_names_under_root(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    _photo(outside / "real_name.png", 1)
    _photo(outside / "catdir" / "test" / "good" / "000.png", 2)
    _photo(outside / "catdir" / "test" / "hole" / "000.png", 3)
    _save(np.full((10, 12), 255, np.uint8), outside / "catdir" / "ground_truth" / "hole" / "000_mask.png")
    root = tmp_path / "data"
    (root / "shots").mkdir(parents=True)
    os.symlink(outside / "real_name.png", root / "shots" / "link.png")
    os.symlink(root / "shots", root / "shots" / "loop")  # a loop back to its own parent
    os.symlink(outside / "catdir", root / "linked_cat")
    s = read_dataset("folder", root, "shots")
    assert s.paths == (str(root / "shots" / "link.png"),)
    assert s.skipped == ((str(root / "shots" / "loop"), "symlink loop"),)
    assert display_name(s.paths[0], root) == "shots/link.png"
    m = read_dataset("mvtec", root, "linked_cat")
    assert m.paths[1] == str(root / "linked_cat" / "test" / "hole" / "000.png")
    assert [display_name(p, root) for p in m.paths] == ["linked_cat/test/good/000.png",
                                                       "linked_cat/test/hole/000.png"]
    assert read_set_masks(m, 4)[0][1].all()
    os.symlink(outside / "missing.png", root / "shots" / "dangling.png")
    with pytest.raises(DataNotFoundError, match=r"broken symbolic link .*dangling\.png -> .*missing\.png"):
        read_dataset("folder", root, "shots")


def test_display_name_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert display_name(tmp_path / "d" / "a" / ".." / "b" / "x.png", tmp_path / "d") == "b/x.png"
    assert display_name(tmp_path / "other" / "x.png", tmp_path / "d") == str(tmp_path / "other" / "x.png")
    monkeypatch.chdir(tmp_path)
    assert display_name("d/sub/x.png", tmp_path / "d") == "sub/x.png"
    assert display_name(tmp_path / "d" / "y.png", "d") == "y.png"


# ---------------------------------------------------------------- output names


def test_output_names_examples() -> None:
    names = ["test/crack/001.png", "test/crack/001.jpg", "test/crack/001.PNG", "good/ünï código.png",
             "a\x00b/c\nd.png", "../up.png", "/abs/x.png", "./dot/.hidden.png", "tail. /CON.png",
             "test/crack/001~2.png", "dir.png", "dir.png/in.png", "x:y*z?.png", "e\u0301.png", "\u00e9.png"]
    out = output_names(names)
    assert out == (
        "test/crack/001.png",
        "test/crack/001.jpg",
        "test/crack/001~3.PNG",  # 001.PNG equals 001.png ignoring case; ~2 is another input's own name
        "good/ünï código.png",
        "a_b/c_d.png",
        "__/up.png",
        "abs/x.png",
        "dot/_hidden.png",
        "tail._/_CON.png",
        "test/crack/001~2.png",
        "dir~2.png",  # a file cannot share its name with a folder that another output needs
        "dir.png/in.png",
        "x_y_z_.png",
        "é.png",
        "é~2.png",  # NFD and NFC spellings of the same name
    )


def test_output_names_properties(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    alphabet = list("abAB01./_-~ \\:*\x01\x7f") + ["é", "e\u0301", "ß", "..", "/", "\udcff", "\u2028"]
    names = ["".join(rng.choice(alphabet, size=rng.integers(1, 12))) for _ in range(400)]
    names += names[:50]
    out = output_names(names)
    assert len(out) == len(names)
    keys = [unicodedata.normalize("NFC", n).casefold() for n in out]
    assert len(set(keys)) == len(keys)
    folders = {k[:i] for k in keys for i, ch in enumerate(k) if ch == "/"}
    assert not folders & set(keys)
    base = tmp_path / "out"
    for name in out:
        for part in name.split("/"):
            assert part and not part.startswith(".") and part not in ("..",)
            assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in part)
            assert not set(part) & set('\\:*?"<>|')
        target = base / name
        assert os.path.normpath(target).startswith(str(base) + os.sep)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
    assert sum(1 for p in base.rglob("*") if p.is_file()) == len(names)


# ---------------------------------------------------------------- MPDD re-split, LOCO


def _resplit(root: Path) -> Path:
    cat = root / "connector"
    plan = {"train": [("a", False), ("b", False), ("c", True)], "val": [("d", True)],
            "test": [("e", False), ("f", True), ("g", True)]}
    for split, items in plan.items():
        for stem, defective in items:
            _photo(cat / split / "images" / f"{stem}.png", ord(stem))
            m = np.zeros((10, 12), np.uint8)
            if defective:
                m[2:4, 3:6] = 1  # stored as 0/1
            _save(m, cat / split / "masks" / f"{stem}.png")
    return cat


def test_mpdd_resplit(tmp_path: Path) -> None:
    cat = _resplit(tmp_path / "mpdd")
    _photo(tmp_path / "mpdd" / "tubes" / "test" / "good" / "000.png", 1)
    assert list_categories("mpdd", tmp_path / "mpdd") == ["connector", "tubes"]
    s = read_dataset("mpdd", tmp_path / "mpdd", "connector")
    assert [Path(p).name for p in s.paths] == ["e.png", "f.png", "g.png"]
    assert s.labels == (0, 1, 1) and s.defect_types == ("good", "anomalous", "anomalous")
    assert s.mask_paths == (None, str(cat / "test" / "masks" / "f.png"), str(cat / "test" / "masks" / "g.png"))
    assert s.dataset == "mpdd" and s.has_masks
    masks, report = read_set_masks(s, 10)
    assert masks[1:].any(axis=(1, 2)).all() and not masks[0].any() and len(report.two_value) == 2
    tr = read_dataset("mpdd", tmp_path / "mpdd", "connector", split="train")
    assert tr.labels == (0, 0, 1)
    assert read_dataset("mpdd", tmp_path / "mpdd", "connector", split="val").labels == (1,)
    with pytest.raises(ValueError, match=r"unknown split 'validation'.*'train', 'val', 'test'"):
        read_dataset("mpdd", tmp_path / "mpdd", "connector", split="validation")
    with pytest.raises(DataError, match=r"re-split layout.*dataset=mpdd"):
        read_dataset("mvtec", tmp_path / "mpdd", "connector")
    (cat / "test" / "masks" / "e.png").unlink()
    with pytest.raises(DataNotFoundError, match=r"no mask for image .*e\.png"):
        read_dataset("mpdd", tmp_path / "mpdd", "connector")
    lenient = read_dataset("mpdd", tmp_path / "mpdd", "connector", allow_missing_masks=True)
    assert lenient.labels == (0, 1, 1)


def test_loco_detected(tmp_path: Path) -> None:
    root = tmp_path / "loco"
    cat = root / "juice_bottle"
    _photo(cat / "train" / "good" / "000.png", 1)
    _photo(cat / "test" / "good" / "000.png", 2)
    _photo(cat / "test" / "logical_anomalies" / "000.png", 3)
    _save(np.zeros((10, 12), np.uint8), cat / "ground_truth" / "logical_anomalies" / "000" / "000.png")
    for dataset in ("mvtec", "mpdd"):
        with pytest.raises(DataError, match=rf"{dataset}: .*juice_bottle is in the MVTec LOCO layout "
                                            r".*logical_anomalies.*--dataset loco"):
            read_dataset(dataset, root, "juice_bottle")
        with pytest.raises(DataError, match="MVTec LOCO"):
            list_categories(dataset, root)
    for folder_root in (root, cat, cat / "test"):
        with pytest.raises(DataError, match=r"folder: .* MVTec LOCO layout .*--dataset loco"):
            read_dataset("folder", folder_root)
    # only the per-image mask folders give it away
    (cat / "test" / "logical_anomalies").rename(cat / "test" / "missing_cap")
    (cat / "ground_truth" / "logical_anomalies").rename(cat / "ground_truth" / "missing_cap")
    with pytest.raises(DataError, match=r"missing_cap.000 exists"):
        read_dataset("mvtec", root, "juice_bottle")


def test_reader_errors_are_data_errors(tmp_path: Path) -> None:
    cat = tmp_path / "mv" / "bottle"
    _photo(cat / "test" / "crack" / "000.png", 1)
    with pytest.raises(DataNotFoundError) as err:
        read_dataset("mvtec", tmp_path / "mv", "bottle")
    assert isinstance(err.value, FileNotFoundError) and err.value.path == str(cat / "test" / "crack" / "000.png")
    with pytest.raises(DataError) as err:
        read_dataset("mvtec", tmp_path / "mv", "bottel")
    assert err.value.path == str(tmp_path / "mv" / "bottel")
    with pytest.raises(DataNotFoundError):
        read_dataset("folder", tmp_path / "nowhere")
    s = ImageSet("folder", ".", ("a",), None, (".",), (None,), False, (("m.png", "named *_mask"),))
    assert s.select([0]).skipped == s.skipped and s.summary() == "folder/.: 1 images; skipped 1 files (1 named *_mask)"


# ---------------------------------------------------------------- real photos (skipped when absent)


def test_real_mtd_folder_and_mask_report() -> None:
    root = SHARED / "mtd"
    if not root.is_dir():
        pytest.skip(f"MTD not present at {root}")
    crack = read_dataset("folder", root, "MT_Crack")
    assert len(crack) == 57 and len(crack.skipped) == 57  # each photo's mask sits beside it
    assert {why for _, why in crack.skipped} == {"mask beside its image"}
    assert all(p.endswith(".jpg") for p in crack.paths)
    s = read_dataset("mtd", root)
    _, half = read_set_masks(s, 224)
    _, exact = read_set_masks(s, 224, rule="exact_one")
    # the masks.py claim behind MTD's "half" default: exact_one erases 5 of the 257 defect masks at 224
    assert half.num_masks == exact.num_masks == 257 and half.num_empty == 0
    assert len(exact.emptied_by_resize) == 5 and exact.empty_files == () and exact.size_mismatches == ()


def test_real_hazelnut_as_folder() -> None:
    cat = SHARED / "mvtec_subset" / "hazelnut"
    if not cat.is_dir():
        pytest.skip(f"real MVTec subset not present at {cat}")
    s = read_dataset("folder", cat, infer_labels=True)
    assert len(s) == 51 and s.num_anomalous == 17 and len(s.skipped) == 17
    assert all("/ground_truth/" in p for p, _ in s.skipped)
