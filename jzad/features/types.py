"""Types shared by the features layer and the methods above it: what a method asks of a backbone, how
images become model inputs, and the features a backbone returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import jax

PREP_KINDS = ("square", "square_float", "resize_crop")
VALID = "valid"
"""The ``Features.extras`` key of a (N,) bool mask of real images in a set padded to a bucket size."""


class Features(NamedTuple):
    """Backbone outputs for N images, as a method asked for them.

    layers: tuple of (N, h, w, C) patch grids, one per tapped layer (ViT tokens without the class token).
    embeds: (N, D) image embeddings, or None when the method does not use them.
    extras: further per-image arrays (leading axis N) a method's own extractor adds (e.g. WinCLIP's window
    embeddings); empty for the plain backbone features.
    """

    layers: tuple
    embeds: Any = None
    extras: dict = {}

    @property
    def num_images(self) -> int:
        """N, the number of images."""
        return int(self.layers[0].shape[0])


@dataclass(frozen=True)
class FeatureRequest:
    """What a method asks of a backbone: its tapped layers as grids, and optionally the image embedding."""

    embedding: bool = False


@dataclass(frozen=True)
class BackboneRun:
    """How a method runs a backbone architecture: input side, MLP activation (ViTs) and the tapped layers.

    None fields take the backbone's own defaults (native size, its activation, each quarter of the depth).
    align: put every tap on the finest tap's grid (CNN taps have different strides; ViT taps share one grid),
    for methods that score layers on one grid; False keeps each tap's own grid.
    """

    image_size: int | None = None
    activation: str | None = None
    taps: tuple | None = None
    align: bool = False


@dataclass(frozen=True)
class ImagePrep:
    """How decoded images become model inputs on the host (method-specific and parity-critical).

    kind: "square" (PIL bicubic of the uint8 image straight to size x size, aspect not kept: MuSc, FSLC),
    "square_float" (the image as float32, each channel resized straight to size x size by PIL's antialiased
    bicubic on mode "F" and kept as float32 in [0, 255], not rounded: anomalib's WinCLIP transform, which
    resizes the float [0, 1] tensor; PIL agrees with torch's antialiased bicubic to 1e-5 on [0, 1]) or
    "resize_crop" (PIL bilinear resize of the shorter side to resize_to, then a centre crop of size: PatchCore).
    """

    kind: str = "square"
    resize_to: int | None = None

    def __post_init__(self):
        if self.kind not in PREP_KINDS:
            raise ValueError(f"ImagePrep.kind: expected one of {PREP_KINDS}, got {self.kind!r}")
        if self.kind == "resize_crop" and (self.resize_to is None or self.resize_to < 1):
            raise ValueError(f"ImagePrep.resize_to: 'resize_crop' needs a positive size, got {self.resize_to!r}")

    @property
    def square(self) -> bool:
        """Whether the whole image is resized straight to the model square (no crop)."""
        return self.kind != "resize_crop"

    @property
    def float_pixels(self) -> bool:
        """Whether decoded model inputs are float32 [0, 255] (else uint8)."""
        return self.kind == "square_float"


def tokens_to_grid(tokens: jax.Array) -> jax.Array:
    """(N, 1 + h*w, C) ViT tokens with CLS first -> (N, h, w, C) patch grid (square grids only)."""
    n, count, c = tokens.shape
    side = int(round((count - 1) ** 0.5))
    if side * side != count - 1:
        raise ValueError(f"tokens: expected (N, 1 + h*w, C) with a square h*w grid, got {tokens.shape}")
    return tokens[:, 1:, :].reshape(n, side, side, c)
