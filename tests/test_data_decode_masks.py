"""Image decoding (errors, bicubic resize) and ground-truth mask rules against hand-computed answers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from jzad.data import (
    DEFAULT_MASK_RULES,
    ImageSet,
    load_image,
    load_images,
    load_mask,
    load_masks,
    load_set_masks,
    read_dataset,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------- decoding


def test_load_image_modes(tmp_path: Path) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    im = load_image(_save(gray, tmp_path / "g.png"))
    assert im.mode == "RGB" and im.size == (8, 6)
    np.testing.assert_array_equal(np.asarray(im), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    np.testing.assert_array_equal(np.asarray(load_image(_save(rgba, tmp_path / "a.png")))[..., 0], 200)


def test_bad_files_raise_naming_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ValueError, match=r"garbage\.png"):
        load_image(garbage)
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for fmt, name in (("JPEG", "cut.jpg"), ("PNG", "cut.png")):
        buf = io.BytesIO()
        Image.fromarray(pic).save(buf, format=fmt)
        data = buf.getvalue()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            load_image(path)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            load_images([_save(pic, tmp_path / f"ok_{name}.png"), path], 16)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"garbage\.png"):
        load_masks([garbage], [1], 8, "nonzero")


def _pil_bicubic_reference(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PIL's separable bicubic (a = -0.5, support widened by the scale when downsampling, normalised
    weights, horizontal pass then vertical, uint8 rounding between passes), written from its description."""

    def cubic(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        c = -0.5
        return np.where(
            x < 1, ((c + 2) * x - (c + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * c, 0.0)
        )

    def weights(n_in: int, n_out: int) -> np.ndarray:
        scale = n_in / n_out
        fs = max(scale, 1.0)
        centre = (np.arange(n_out) + 0.5) * scale
        src = np.arange(n_in) + 0.5
        w = cubic((src[None, :] - centre[:, None]) / fs)
        return w / w.sum(1, keepdims=True)

    x = a.astype(np.float64)
    if out_w != a.shape[1]:
        x = np.clip(np.rint(np.einsum("ow,hwc->hoc", weights(a.shape[1], out_w), x)), 0, 255)
    if out_h != a.shape[0]:
        x = np.clip(np.rint(np.einsum("oh,hwc->owc", weights(a.shape[0], out_h), x)), 0, 255)
    return x.astype(np.uint8)


@pytest.mark.parametrize("shape,size", [((37, 53), (64, 48)), ((90, 70), 32), ((20, 20), 20)])
def test_load_images_bicubic(tmp_path: Path, shape: tuple[int, int], size) -> None:
    rng = np.random.default_rng(1)
    pics = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(3)]
    paths = [_save(p, tmp_path / f"{i}.png") for i, p in enumerate(pics)]
    out = load_images(paths, size)
    h, w = (size, size) if isinstance(size, int) else size
    assert out.shape == (3, h, w, 3) and out.dtype == np.uint8
    for got, pic in zip(out, pics):
        ref = _pil_bicubic_reference(pic, h, w)
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="size must be"):
        load_images(paths, (3, 4, 5))
    with pytest.raises(ValueError, match="size must be positive"):
        load_images(paths, 0)


# ---------------------------------------------------------------- masks


def test_mask_rules_upsample_known_answer(tmp_path: Path) -> None:
    # 2x2 mask with one defect pixel, upsampled to 4x4: PIL bilinear gives, per axis, weights
    # [1, 0.75, 0.25, 0] of the defect pixel, so the 4x4 values are 255 * outer(w, w).
    m = np.array([[255, 0], [0, 0]], np.uint8)
    path = _save(m, tmp_path / "m.png")
    w = np.array([1.0, 0.75, 0.25, 0.0])
    values = 255 * np.outer(w, w)
    exact = load_mask(path, 4, "exact_one")
    nonzero = load_mask(path, 4, "nonzero")
    half = load_mask(path, 4, "half")
    np.testing.assert_array_equal(exact, values >= 254.5)  # only the corner: exactly one
    np.testing.assert_array_equal(nonzero, values > 0)  # 3x3 block
    np.testing.assert_array_equal(half, values >= 127.5)  # 2x2 block (143 kept, 64 dropped)
    assert exact.sum() == 1 and nonzero.sum() == 9 and half.sum() == 4


def test_mask_rules_downsample_known_answer(tmp_path: Path) -> None:
    # 4x4 with the top-left 2x2 defect, down to 2x2: the triangle filter widened x2 gives per axis
    # weights (3/7, 3/7, 1/7) over the 3 nearest inputs, so values are 255*(6/7)^2, 255*6/49, 255/49.
    m = np.zeros((4, 4), np.uint8)
    m[:2, :2] = 255
    path = _save(m, tmp_path / "m.png")
    values = 255 * np.outer([6 / 7, 1 / 7], [6 / 7, 1 / 7])
    assert not load_mask(path, 2, "exact_one").any()  # MuSc's truncation drops the shrunken defect
    np.testing.assert_array_equal(load_mask(path, 2, "nonzero"), values >= 0.5)
    np.testing.assert_array_equal(load_mask(path, 2, "half"), values >= 127.5)
    full = _save(np.full((4, 4), 255, np.uint8), tmp_path / "full.png")
    assert load_mask(full, (3, 5), "exact_one").all()


def test_mask_threshold(tmp_path: Path) -> None:
    visa_like = np.zeros((6, 6), np.uint8)
    visa_like[1:3, 1:4] = 1  # VisA stores class ids, not 255
    path = _save(visa_like, tmp_path / "v.png")
    np.testing.assert_array_equal(load_mask(path, 6, "nonzero", threshold=0), visa_like > 0)
    # two-valued (0 and 1): binarised by > 0 whatever the threshold (issue 11: such masks used to vanish)
    np.testing.assert_array_equal(load_mask(path, 6, "nonzero", threshold=127), visa_like > 0)
    multi = visa_like.copy()
    multi[4, 4] = 2  # three values: the threshold applies again
    assert not load_mask(_save(multi, tmp_path / "v3.png"), 6, "nonzero", threshold=127).any()
    soft = np.array([[0, 100, 128, 255]], np.uint8)
    np.testing.assert_array_equal(load_mask(_save(soft, tmp_path / "s.png"), (1, 4), "half"), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="unknown mask rule"):
        load_mask(path, 6, "round")
    with pytest.raises(ValueError, match="threshold"):
        load_mask(path, 6, "half", threshold=255)


@pytest.mark.parametrize("shape,size", [((40, 30), (64, 52)), ((97, 83), (32, 24))])
def test_mask_resize_matches_torch_antialiased_bilinear(tmp_path: Path, shape, size) -> None:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    blob = ((yy - shape[0] * 0.4) ** 2 + (xx - shape[1] * 0.6) ** 2) < (0.25 * min(shape)) ** 2
    blob |= rng.random(shape) > 0.97
    path = _save(blob.astype(np.uint8) * 255, tmp_path / "b.png")
    ref = F.interpolate(
        torch.tensor(blob, dtype=torch.float64)[None, None] * 255,
        size=size,
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0, 0].numpy()
    # (rule, reference decision on the float values, band around the decision edge where uint8 rounding
    # of PIL's fixed-point result may go either way)
    for rule, test, band in (
        ("exact_one", lambda v: v > 254.999, (253.5, 254.999)),
        ("nonzero", lambda v: v > 1e-9, (1e-9, 1.5)),
        ("half", lambda v: v >= 127.5, (126.5, 128.5)),
    ):
        got = load_mask(path, size, rule)
        clear = (ref <= band[0]) | (ref >= band[1])
        assert clear.mean() > 0.8 and test(ref).any() and not test(ref).all()
        np.testing.assert_array_equal(got[clear], test(ref)[clear])


def test_load_masks_labels(tmp_path: Path) -> None:
    m = np.zeros((8, 8), np.uint8)
    m[2:6, 2:6] = 255
    path = _save(m, tmp_path / "m.png")
    out = load_masks([path, path, None], [1, 0, 0], 4, "half")
    assert out.shape == (3, 4, 4) and out.dtype == bool
    expected = np.zeros((4, 4), bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(out[0], expected)
    assert not out[1].any() and not out[2].any()  # normal images: zeros, files not needed
    with pytest.raises(ValueError, match="image 1 is anomalous but has no mask path"):
        load_masks([path, None], [1, 1], 4, "exact_one")
    with pytest.raises(ValueError, match="needs labels"):
        load_masks([None], None, 4, "exact_one")
    with pytest.raises(ValueError, match="2 mask paths but 1 labels"):
        load_masks([path, path], [1], 4, "exact_one")


def test_load_set_masks_defaults(tmp_path: Path) -> None:
    m = np.zeros((4, 4), np.uint8)
    m[:2, :2] = 255
    path = str(_save(m, tmp_path / "m.png"))
    s = ImageSet("mvtec", "c", ("a", "b"), (1, 0), ("x", "good"), (path, None), True)
    assert not load_set_masks(s, 2).any()  # mvtec -> exact_one drops the blended defect
    v = ImageSet("visa", "c", ("a", "b"), (1, 0), ("anomaly", "normal"), (path, None), True)
    assert load_set_masks(v, 2)[0].all()  # visa -> nonzero keeps every touched pixel
    assert DEFAULT_MASK_RULES["mvtec"] == "exact_one" and DEFAULT_MASK_RULES["visa"] == "nonzero"
    unlabeled = ImageSet("folder", ".", ("a",), None, (".",), (None,), False)
    with pytest.raises(ValueError, match="not available"):
        load_set_masks(unlabeled, 2)


def test_real_hazelnut_masks() -> None:
    root = SHARED / "mvtec_subset"
    if not (root / "hazelnut").is_dir():
        pytest.skip(f"real MVTec subset not present at {root}")
    s = read_dataset("mvtec", root, "hazelnut")
    masks = load_set_masks(s, 64)
    labels = np.asarray(s.labels)
    assert masks.shape == (23, 64, 64)
    assert not masks[labels == 0].any() and masks[labels == 1].any(axis=(1, 2)).all()
    full = load_masks(s.mask_paths, s.labels, 512, "exact_one")  # native size: no resize, pure binarisation
    i = int(np.flatnonzero(labels)[0])
    raw = np.asarray(Image.open(s.mask_paths[i]).convert("L"))
    np.testing.assert_array_equal(full[i], raw > 127)
    images = load_images(s.paths[:2], 64)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
