"""PatchCore's image preprocessing: torchvision Resize(256) + CenterCrop(224) on PIL images, ImageNet mean/std.

The original code (``transforms.Resize(resize)``, ``CenterCrop(imagesize)``, ``ToTensor``, ``Normalize``)
resizes the uint8 RGB image with PIL's bilinear filter so its shorter side is ``resize`` (the longer side
int(resize * long / short)), keeps a uint8 result, and crops the centre at top = round((H - crop) / 2),
left = round((W - crop) / 2) (Python's round, halves to even). ``resize_center_crop`` does that on the host
and returns uint8, so decoding stays at the edges; ``normalize_imagenet`` is the jit-side /255 and mean/std.
Resizing straight to 224 (or with bicubic) changes PatchCore scores by ~25% (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jzad.backbone.preprocess import to_rgb_image
from jzad.backbone.resnet import IMAGENET_MEAN, IMAGENET_STD


def resized_shape(height: int, width: int, resize: int) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(int): shorter side -> resize, longer scaled and floored."""
    if width <= height:
        return int(resize * height / width), resize
    return resize, int(resize * width / height)


def center_crop_box(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop(crop) on a (height, width) image."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def resize_center_crop(images: Sequence, resize: int = 256, crop: int = 224) -> np.ndarray:
    """PIL images or uint8 arrays -> (N, crop, crop, 3) uint8: RGB, bilinear shorter side to resize, centre crop."""
    for name, value in (("resize", resize), ("crop", crop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
    if isinstance(images, (Image.Image, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    if len(images) == 0:
        raise ValueError("resize_center_crop needs at least one image")
    out = np.empty((len(images), crop, crop, 3), np.uint8)
    for index, image in enumerate(images):
        rgb = to_rgb_image(image, index)
        height, width = resized_shape(rgb.height, rgb.width, int(resize))
        resized = np.asarray(rgb.resize((width, height), resample=Image.Resampling.BILINEAR))
        top, left = center_crop_box(height, width, int(crop))
        out[index] = resized[top : top + crop, left : left + crop]
    return out


@jax.jit
def normalize_imagenet(images: jax.Array) -> jax.Array:
    """uint8 (N, H, W, 3) -> float32 (x / 255 - IMAGENET_MEAN) / IMAGENET_STD, as ToTensor + Normalize."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
