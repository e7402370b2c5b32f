"""Image decoding: files -> RGB PIL images -> fixed-size uint8 arrays.

Formats: PNG, JPEG (and MPO, which Pillow opens through JPEG), BMP, TIFF, GIF, WebP, PPM/PGM, recognised by
content, not by extension (`DECODE_FORMATS`); the first frame of a multi-frame file is used. The EXIF
orientation tag is ignored (pixels as stored), as the reference pipelines do, so masks stay aligned with
their images.

Every Pillow mode becomes 8-bit RGB by an explicit rule (`to_rgb_array`):
- "RGB": as stored. "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV": Pillow's conversion to RGB; an alpha
  channel is dropped (colours as stored, not composited), which is what `.convert("RGB")` in the reference
  pipelines does.
- "L", "LA", "La", "1": the gray (or 0/255) channel repeated three times; alpha dropped.
- "P", "PA": the palette colours; transparency (a "transparency" entry or the PA alpha) is dropped.
- Deeper single-channel modes are scaled by their full range, value -> round(value * 255 / full), after
  clipping to [0, full] (negative values count as 0):
  "I;16", "I;16L", "I;16B", "I;16N" (16-bit): full = 65535, i.e. round(value / 257);
  "I" (32-bit integer as Pillow holds it): full = the file's declared range, never the image's own maximum:
  TIFF by its BitsPerSample b and SampleFormat (unsigned: 2^b - 1, read as unsigned even at b = 32, where
  Pillow hands the values over as signed; signed: 2^(b-1) - 1); PNG and PPM/PGM 65535 (Pillow widens PGM
  values to 16 bits); any other origin the int32 range 2^31 - 1;
  "F" (32-bit float): clipped to [0, 1], then * 255 and rounded; a NaN is an error.
  A signed 8-bit TIFF (Pillow's "L" with SampleFormat 2) is read as signed, full = 127.
- Pillow itself reduces 16-bit colour PNG/TIFF (RGB, RGBA, gray+alpha) to 8 bits by keeping the high byte
  (floor(value / 256), within 1 of the rule above); float colour, float64 and float16 TIFFs cannot be decoded
  by Pillow and are reported as errors. "LAB" and any other mode without a rule is an error.

Resizing uses PIL bicubic to a square (aspect ratio not kept), which is what the reference pipelines do
(torchvision's Resize on PIL images calls the same PIL resampler, antialiasing when downsampling).
Errors: a missing file raises `DataNotFoundError`; anything that cannot be decoded (unknown format, truncated,
corrupt, a decompression bomb, an unsupported mode, NaN) raises `DataError` naming the file. Truncated files
are errors, never padded silently.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from jzad.data.errors import DataError, DataNotFoundError

DECODE_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "GIF", "WEBP", "PPM")
"""Pillow formats `open_image` accepts (identified by the file's content; JPEG includes MPO)."""

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_TIFF_BITS, _TIFF_SAMPLE_FORMAT = 258, 339
_RGB_CONVERTIBLE = ("RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV")


def _as_hw(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """(H, W) from an int (square) or an (H, W) pair; both must be positive."""
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        vals = tuple(size)
        if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) for v in vals):
            raise ValueError(f"{name} must be an int or an (H, W) pair of ints, got {size!r}")
        hw = (int(vals[0]), int(vals[1]))
    if hw[0] < 1 or hw[1] < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return hw


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file in its own mode (first frame); the file is closed on return.

    The returned image keeps Pillow's `format` (and a TIFF's tags), which `to_rgb_array` / `gray_values`
    use to find an integer image's range. DataNotFoundError for a missing file; DataError naming the file
    for anything that cannot be decoded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        if os.path.islink(path):
            raise DataNotFoundError(f"image file is a broken symbolic link: {path} -> {os.readlink(path)}", path)
        raise DataNotFoundError(f"image file not found: {path}", path)
    try:
        with Image.open(path, formats=DECODE_FORMATS) as im:
            im.load()
    except Image.UnidentifiedImageError as err:
        raise DataError(
            f"cannot decode image {path}: not a {'/'.join(DECODE_FORMATS)} image", path
        ) from err
    except MemoryError as err:
        raise DataError(f"cannot decode image {path}: its declared size does not fit in memory", path) from err
    except Exception as err:  # Pillow raises many types on corrupt data; every one means this file is bad
        raise DataError(f"cannot decode image {path}: {type(err).__name__}: {err}", path) from err
    if im.width < 1 or im.height < 1:
        raise DataError(f"cannot decode image {path}: it has no pixels ({im.width}x{im.height})", path)
    return im


def image_hw(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding pixels; errors as `open_image`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataNotFoundError(f"image file not found: {path}", path)
    try:
        with Image.open(path, formats=DECODE_FORMATS) as im:
            return im.height, im.width
    except Exception as err:
        raise DataError(f"cannot read the size of image {path}: {type(err).__name__}: {err}", path) from err


def _tiff_tag(image: Image.Image, tag: int) -> int | None:
    tags = getattr(image, "tag_v2", None)
    value = None if tags is None else tags.get(tag)
    if isinstance(value, tuple):
        value = value[0] if value else None
    return None if value is None else int(value)


def integer_full_scale(image: Image.Image) -> int:
    """The value that maps to 255 for an integer single-channel image (module doc: rules per mode/file)."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        return 65535
    if mode in ("L", "LA", "La"):
        signed = image.format == "TIFF" and _tiff_tag(image, _TIFF_SAMPLE_FORMAT) == 2 and mode == "L"
        return 127 if signed else 255
    if mode == "1":
        return 1
    if mode != "I":
        raise ValueError(f"integer_full_scale: mode {mode!r} is not an integer single-channel mode")
    if image.format == "TIFF":
        bits = _tiff_tag(image, _TIFF_BITS) or 32
        signed = _tiff_tag(image, _TIFF_SAMPLE_FORMAT) == 2
        return 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    if image.format in ("PNG", "PPM"):
        return 65535
    return 2**31 - 1


def gray_values(image: Image.Image, path: str | os.PathLike = "<image>") -> tuple[np.ndarray, float]:
    """A single-channel image's values as stored and their full scale: ((H, W) array, full).

    full is the value that maps to 255 (`integer_full_scale`), or 1.0 for "F" images. Values keep their
    type (uint8, uint16, int64 for 32-bit integers read as unsigned when the file says so, float32); alpha
    channels are dropped; "1" gives 0/1. Only for modes "1", "L", "LA", "La", "I;16*", "I", "F".
    """
    mode = image.mode
    if mode == "F":
        return np.asarray(image, dtype=np.float32), 1.0
    full = integer_full_scale(image)
    values = np.asarray(image)
    if mode in ("LA", "La"):
        values = values[..., 0]
    if mode == "1":
        values = values.astype(np.uint8)
    elif mode == "L" and full == 127:
        values = values.view(np.int8)
    elif mode == "I" and full > 2**31 - 1:
        values = values.astype(np.int32).view(np.uint32).astype(np.int64)
    elif mode in SIXTEEN_BIT_MODES:
        values = values.astype(np.uint16)
    return values, float(full)


def scale_to_uint8(values: np.ndarray, full: float, path: str | os.PathLike = "<image>") -> np.ndarray:
    """Values in [0, full] -> uint8 round(value * 255 / full), clipped first; NaN raises DataError."""
    values = np.asarray(values)
    if values.dtype == np.uint8 and full == 255:
        return values
    v = values.astype(np.float64)
    if np.isnan(v).any():
        raise DataError(f"cannot decode image {os.fspath(path)}: it holds NaN values", path)
    return np.rint(np.clip(v, 0.0, full) * (255.0 / full)).astype(np.uint8)


def to_rgb_array(image: Image.Image, path: str | os.PathLike = "<image>") -> np.ndarray:
    """Any supported Pillow mode -> uint8 (H, W, 3) by the per-mode rules in the module doc."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("1", "L", "LA", "La", "I", "F") or mode in SIXTEEN_BIT_MODES:
        values, full = gray_values(image, path)
        gray = scale_to_uint8(values, full, path)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in image.info:
            return np.asarray(image.convert("RGBA"), dtype=np.uint8)[..., :3].copy()
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode in _RGB_CONVERTIBLE:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    raise DataError(f"cannot decode image {os.fspath(path)}: Pillow mode {mode!r} has no RGB rule", path)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode one image file to an RGB PIL image (every mode by the rules in the module doc)."""
    im = open_image(path)
    return im if im.mode == "RGB" else Image.fromarray(to_rgb_array(im, path))


def resize_rgb(image: Image.Image, size: int | Sequence[int]) -> np.ndarray:
    """PIL image -> uint8 (H, W, 3) resized with PIL bicubic; size int (square) or (H, W)."""
    h, w = _as_hw(size)
    if image.mode != "RGB":
        image = Image.fromarray(to_rgb_array(image))
    if image.size != (w, h):
        image = image.resize((w, h), resample=Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def load_images(paths: Sequence[str | os.PathLike], size: int | Sequence[int]) -> np.ndarray:
    """Decode and resize images: uint8 (N, H, W, 3), PIL bicubic, aspect ratio not kept.

    size: int for square (size, size) output or an (H, W) pair. The same array serves as backbone input
    (after the backbone's own normalisation) and as the background of heat-map overlays.
    """
    h, w = _as_hw(size)
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = resize_rgb(load_image(path), (h, w))
    return out
