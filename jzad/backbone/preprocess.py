"""CLIP image preprocessing: PIL bicubic resize to a square (aspect not kept), CLIP mean/std, NHWC float32.

This is what MuSc does (resize to 518 x 518, no centre crop), not OpenAI's resize-shorter-side + crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb_image(image, index: int) -> Image.Image:
    """A PIL image or a uint8 gray / gray+1 / RGB / RGBA array -> an RGB PIL image; ``index`` names the image in
    the error raised for any other dtype or shape."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image {index}: arrays must be uint8 (H, W), (H, W, 1) or (H, W, 3), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return Image.fromarray(array).convert("RGB")
    if array.ndim == 3 and array.shape[-1] == 3:
        return Image.fromarray(array)
    if array.ndim == 3 and array.shape[-1] == 4:
        return Image.fromarray(array).convert("RGB")
    raise ValueError(f"image {index}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8, got {array.shape}")


def preprocess_images(images: Sequence, size: int) -> np.ndarray:
    """PIL images or uint8 arrays -> (N, size, size, 3) float32, bicubic-resized and CLIP-normalised.

    Each image is converted to RGB, resized with PIL's bicubic filter to exactly (size, size), scaled to
    [0, 1] and normalised with the CLIP mean and std per channel.
    """
    return resize_and_normalise(images, size, CLIP_MEAN, CLIP_STD, "preprocess_images")


def resize_and_normalise(images: Sequence, size: int, mean, std, caller: str) -> np.ndarray:
    """The square-resize preprocessing of CLIP and EfficientNet-Lite (their mean and std differ): one image or a
    sequence (PIL images or uint8 arrays; a 4-D array is a batch) -> (N, size, size, 3) float32, each converted to RGB, resized with PIL's
    bicubic filter to exactly (size, size), scaled to [0, 1] and normalised with the per-channel mean and
    std. caller names the public function in the error raised for an empty input."""
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(images, (Image.Image, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    if len(images) == 0:
        raise ValueError(f"{caller} needs at least one image")
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    out = np.empty((len(images), size, size, 3), dtype=np.float32)
    for index, image in enumerate(images):
        rgb = to_rgb_image(image, index).resize((int(size), int(size)), resample=Image.Resampling.BICUBIC)
        out[index] = (np.asarray(rgb, dtype=np.float32) / 255.0 - mean) / std
    return out
