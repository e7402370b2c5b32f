"""Fuzz the decoders: random bytes and corrupted real PNG/JPEG/TIFF/BMP files either decode or raise DataError
naming the file (never another exception type, never a silent partial image of the wrong shape)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jzad.data.decode import load_image, load_images
from jzad.data.errors import DataError
from jzad.data.masks import read_masks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"II*\x00", b"MM\x00*", b"GIF89a", b"P5\n", b"")


def _encoded(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Small generated images in several formats and modes, plus real files from shared/data if present."""
    out = []
    for k in range(6):
        h, w = int(rng.integers(9, 40)), int(rng.integers(9, 40))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        gray16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        for fmt, ext, image in (
            ("PNG", "png", Image.fromarray(rgb)),
            ("PNG", "png", Image.fromarray(gray16)),
            ("PNG", "png", Image.fromarray(rgb).convert("P")),
            ("JPEG", "jpg", Image.fromarray(rgb)),
            ("JPEG", "jpg", Image.fromarray(rgb[..., 0])),
            ("TIFF", "tif", Image.fromarray(gray16)),
            ("BMP", "bmp", Image.fromarray(rgb)),
        ):
            buf = io.BytesIO()
            image.save(buf, format=fmt)
            out.append((f"gen{k}.{ext}", buf.getvalue()))
    for pattern in ("mvtec_subset/hazelnut/test/colour/0*.jpg", "mvtec_subset/hazelnut/ground_truth/colour/0*.png",
                    "mtd/MT_Crack/Imgs/*.png", "mtd/MT_Crack/Imgs/*.jpg"):
        for path in sorted(SHARED.glob(pattern))[:3]:
            out.append((f"real_{path.name}", path.read_bytes()))
    return out


def _corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: flipped bytes, truncation, an inserted or zeroed run, or a duplicated run."""
    b = bytearray(data)
    kind = int(rng.integers(0, 5))
    n = len(b)
    if kind == 0:
        for i in rng.integers(0, n, size=int(rng.integers(1, 8))):
            b[int(i)] ^= int(rng.integers(1, 256))
    elif kind == 1:
        del b[int(rng.integers(0, n)):]
    elif kind == 2:
        at = int(rng.integers(0, n))
        b[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 3:
        at = int(rng.integers(0, n))
        b[at:at + int(rng.integers(1, 256))] = bytes(min(255, n - at))
    else:
        at, length = int(rng.integers(0, n)), int(rng.integers(1, 128))
        b[at:at] = b[at:at + length]
    return bytes(b)


def _check(path: Path) -> str:
    """'ok' if it decodes to a consistent RGB image, 'error' if it raises DataError naming the file."""
    try:
        image = load_image(path)
    except DataError as err:
        assert str(path) in str(err) and err.path == str(path)
        return "error"
    assert image.mode == "RGB" and image.width > 0 and image.height > 0
    assert np.asarray(image).shape == (image.height, image.width, 3)
    assert load_images([path], (7, 5)).shape == (1, 7, 5, 3)
    return "ok"


@pytest.fixture(autouse=True)
def _small_bomb_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # a corrupt header may claim a huge size: keep Pillow's decompression-bomb error well below test memory
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)


def test_random_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(20251122)
    outcomes = []
    for i in range(50):
        body = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        path = tmp_path / f"rand_{i:02d}.png"
        path.write_bytes(MAGICS[i % len(MAGICS)] + body)
        outcomes.append(_check(path))
    assert outcomes.count("error") >= 45  # random bytes are almost never an image


def test_corrupted_real_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    sources = _encoded(rng)
    outcomes = []
    for i in range(50):
        name, data = sources[int(rng.integers(0, len(sources)))]
        path = tmp_path / f"bad_{i:02d}_{name}"
        path.write_bytes(_corrupt(data, rng))
        outcome = _check(path)
        outcomes.append(outcome)
        if outcome == "error":
            continue
        # a decoded corrupt mask also goes through the mask path without another exception type
        try:
            masks, report = read_masks([path], [1], 6, "half")
        except DataError as err:
            assert str(path) in str(err)
        else:
            assert masks.shape == (1, 6, 6) and report.num_masks == 1
    assert "error" in outcomes
    for name, data in sources:  # the uncorrupted sources all decode
        path = tmp_path / f"clean_{name}"
        path.write_bytes(data)
        assert _check(path) == "ok"
