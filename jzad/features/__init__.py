"""jzad.features: backbones turned into the features a method asks for (uint8 images in, ``Features`` out).

``load_backbone(name, run, ...)`` loads a backbone by name ("random-<arch>" for random weights of the real
shapes, a ported or catalogue name, a checkpoint file) at a method's run preset; ``extract`` runs it over
batches of one compiled shape. Sits above ``jzad.weights`` (it finds checkpoints) and below ``jzad.methods``:
methods never load weights themselves. The loaders are imported lazily (they pull in orbax), so importing the
types here stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from jzad.features.backbone import Backbone, extract, normalize_pixels
from jzad.features.types import BackboneRun, FeatureRequest, Features, ImagePrep

_LAZY = {"check_image_size", "load_clip", "load_clip_backbone", "load_image_encoder"}


def __getattr__(name: str):
    if name in _LAZY:
        from jzad.features import clip

        return getattr(clip, name)
    raise AttributeError(f"module 'jzad.features' has no attribute {name!r}")


def load_backbone(
    name: str | Path,
    run: BackboneRun = BackboneRun(),
    image_size: int | None = None,
    taps=None,
    activation: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
    weights_dir: str | Path | None = None,
    with_text: bool = False,
) -> Backbone:
    """A Backbone by name or path at the given run preset (explicit arguments override it); with_text keeps a
    CLIP text tower for methods that embed prompts."""
    from jzad.features.clip import load_clip_backbone

    return load_clip_backbone(name, run, image_size, taps, activation, dtype, seed, weights_dir, with_text)


__all__ = [
    "Backbone",
    "BackboneRun",
    "FeatureRequest",
    "Features",
    "ImagePrep",
    "check_image_size",
    "extract",
    "load_backbone",
    "load_clip",
    "load_clip_backbone",
    "load_image_encoder",
    "normalize_pixels",
]
