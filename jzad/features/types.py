"""Types shared by the features layer and the methods above it: what a method asks of a backbone, how
images become model inputs, and the features a backbone returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import jax

from jzad.data.prep import PREP_KINDS, ImagePrep

__all__ = ["PREP_KINDS", "VALID", "BackboneRun", "FeatureRequest", "Features", "ImagePrep", "first_given", "tokens_to_grid"]

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


def tokens_to_grid(tokens: jax.Array) -> jax.Array:
    """(N, 1 + h*w, C) ViT tokens with CLS first -> (N, h, w, C) patch grid (square grids only)."""
    n, count, c = tokens.shape
    side = int(round((count - 1) ** 0.5))
    if side * side != count - 1:
        raise ValueError(f"tokens: expected (N, 1 + h*w, C) with a square h*w grid, got {tokens.shape}")
    return tokens[:, 1:, :].reshape(n, side, side, c)


def first_given(*values):
    """The first value that is not None (None if all are): how a loader picks each setting from the explicit
    argument, the checkpoint's recorded run, the method's preset and the family default, in that order."""
    for value in values:
        if value is not None:
            return value
    return None
