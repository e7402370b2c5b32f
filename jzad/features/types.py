"""Types shared by the features layer and the methods above it: what a method asks of a backbone, how
images become model inputs, and the features a backbone returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import jax

from jzad.data.prep import PREP_KINDS, ImagePrep

__all__ = ["PREP_KINDS", "RANDOM_PREFIX", "VALID", "BackboneRequest", "BackboneRun", "FeatureRequest", "Features",
           "ImagePrep", "first_given", "random_architecture", "tokens_to_grid"]

RANDOM_PREFIX = "random-"
"""A backbone name "random-<arch>" asks for random weights of that architecture's real shapes."""


def random_architecture(name) -> str | None:
    """The <arch> of a backbone name "random-<arch>", else None (the name is a checkpoint)."""
    text = str(name)
    return text[len(RANDOM_PREFIX):] if text.startswith(RANDOM_PREFIX) else None

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
class BackboneRequest:
    """Everything ``jzad.features.load_backbone`` was asked, as one value every family loader reads.

    name: "random-<arch>", a ported or catalogue name, or a checkpoint path. run: the method's preset.
    image_size / taps / activation: explicit settings (None: not given) that override the settings recorded
    at port time, which override the preset, which overrides the family default (``resolve``). dtype: the
    compute dtype. seed: draws random weights. weights_dir: where ported weights live (None: the default
    folder). with_text: the method embeds text prompts, so the backbone must keep a text tower.
    """

    name: str | Path
    run: BackboneRun = BackboneRun()
    image_size: int | None = None
    taps: Any = None
    activation: str | None = None
    dtype: Any = "float32"
    seed: int = 0
    weights_dir: str | Path | None = None
    with_text: bool = False

    @property
    def text(self) -> str:
        """The name as a string, as errors and ``Backbone.name`` show it."""
        return str(self.name)

    @property
    def random_architecture(self) -> str | None:
        """The <arch> of a "random-<arch>" name, else None (the name is a checkpoint)."""
        return random_architecture(self.name)

    @property
    def size_word(self) -> str:
        """How a size error names the size: "image_size" when the caller gave it, else "image size" (it came
        from the checkpoint, the preset or the default, so the caller should not look for an argument)."""
        return "image_size" if self.image_size is not None else "image size"

    def resolve(self, setting: str, recorded, default):
        """The value of setting ("image_size", "taps" or "activation"): the explicit argument, else the one
        recorded at port time (that field of ``recorded``, an opened checkpoint; None for random weights),
        else the method's preset, else default."""
        return first_given(getattr(self, setting), getattr(recorded, setting, None), getattr(self.run, setting),
                           default)

    def input_side(self, recorded, default, multiple: int, rule: str) -> int:
        """The resolved image size (``resolve``), which must be a positive multiple of ``multiple``; else
        ValueError "<size_word> <size>: <rule>", rule being the family's own sentence for it."""
        size = self.resolve("image_size", recorded, default)
        if isinstance(size, bool) or not isinstance(size, int) or size < multiple or size % multiple:
            raise ValueError(f"{self.size_word} {size!r}: {rule}")
        return size


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
