"""jzad.features: backbones turned into the features a method asks for (uint8 images in, ``Features`` out).

``load_backbone(name, run, ...)`` loads a backbone by name ("random-<arch>" for random weights of the real
shapes, a ported or catalogue name, a checkpoint file) at a method's run preset; ``extract`` runs it over
batches of one compiled shape. Sits above ``jzad.weights`` (it finds checkpoints) and below ``jzad.methods``:
methods never load weights themselves. The loaders are imported lazily (they pull in orbax), so importing the
types here stays cheap.

Backbone families ("clip": ``jzad.features.clip``; "resnet": ``jzad.features.resnet``; "efficientnet":
``jzad.features.efficientnet``; "dinov2": DINO and DINOv2 ViTs, ``jzad.features.dinov2``) are rows of
``BACKBONE_FAMILIES``: which random architectures each knows, and its ``FamilyLoader`` (``jzad.features.loading``:
the loading steps every family shares, with the family's own random init, checkpoint opening, taps and size
resolution and error words plugged in). ``load_backbone`` gathers its arguments into a ``BackboneRequest`` and
picks the row from the "random-<arch>" name, else from the checkpoint's family (``jzad.weights.checkpoint_family``:
the manifest, the catalogue entry or the file's tensor names). A new family is one more row and one more
``FamilyLoader``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jzad.features.backbone import Backbone, extract, normalize_pixels
from jzad.features.types import (
    RANDOM_PREFIX, BackboneRequest, BackboneRun, FeatureRequest, Features, ImagePrep, random_architecture
)

_LAZY = {"check_image_size": "clip", "load_clip": "clip", "load_image_encoder": "clip"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"jzad.features.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'jzad.features' has no attribute {name!r}")


def _clip_knows(arch: str) -> bool:
    from jzad.backbone.config import get_architecture

    try:
        get_architecture(arch)
    except ValueError:
        return False
    return True


def _clip_architecture(arch: str) -> str | None:
    from jzad.backbone.config import architecture_name, get_architecture

    return architecture_name(get_architecture(arch))


def _resnet_knows(arch: str) -> bool:
    from jzad.backbone.resnet import RESNET_ARCHITECTURES

    return arch in RESNET_ARCHITECTURES


def _efficientnet_knows(arch: str) -> bool:
    from jzad.backbone.efficientnet import CONFIGS

    return arch in CONFIGS


def _dino_knows(arch: str) -> bool:
    from jzad.backbone.dinov2 import ARCHITECTURES

    return arch.lower() in ARCHITECTURES


@dataclass(frozen=True)
class BackboneFamily:
    """One family of backbones: knows(arch) -> whether "random-<arch>" is one of its architectures;
    architecture(arch) -> the canonical name of such an architecture; loader: "module:NAME" of its
    ``FamilyLoader`` in jzad.features, imported on the first load (it pulls in the family's model code)."""

    name: str
    knows: Callable[[str], bool]
    architecture: Callable[[str], str | None]
    loader: str

    def load(self, request: BackboneRequest) -> Backbone:
        """The Backbone of request, loaded by this family's ``FamilyLoader``."""
        import importlib

        module, attribute = self.loader.split(":")
        return getattr(importlib.import_module(f"jzad.features.{module}"), attribute).load(request)


BACKBONE_FAMILIES = {
    "clip": BackboneFamily("clip", _clip_knows, _clip_architecture, "clip:CLIP_LOADER"),
    "resnet": BackboneFamily("resnet", _resnet_knows, lambda arch: arch, "resnet:RESNET_LOADER"),
    "efficientnet": BackboneFamily("efficientnet", _efficientnet_knows, lambda arch: arch,
                                   "efficientnet:EFFICIENTNET_LOADER"),
    "dinov2": BackboneFamily("dinov2", _dino_knows, lambda arch: arch.lower(), "dinov2:DINO_LOADER"),
}
"""Family name -> row; ``random-<arch>`` goes to the first family that knows arch."""


def _random_family(arch: str) -> BackboneFamily:
    for family in BACKBONE_FAMILIES.values():
        if family.knows(arch):
            return family
    from jzad.backbone.config import ARCHITECTURES
    from jzad.backbone.efficientnet import CONFIGS
    from jzad.backbone.dinov2 import ARCHITECTURES as DINO_ARCHITECTURES
    from jzad.backbone.resnet import RESNET_ARCHITECTURES

    known = ", ".join(RANDOM_PREFIX + a.lower()
                      for a in (*ARCHITECTURES, *RESNET_ARCHITECTURES, *CONFIGS, *DINO_ARCHITECTURES))
    raise ValueError(f"unknown architecture {arch!r} in {RANDOM_PREFIX}{arch}; known: {known}")


def backbone_family(name: str | Path, weights_dir: str | Path | None = None) -> BackboneFamily:
    """The family that loads name: "random-<arch>" by its architecture, anything else by its checkpoint."""
    arch = random_architecture(name)
    if arch is not None:
        return _random_family(arch)
    from jzad.weights import checkpoint_family

    return BACKBONE_FAMILIES[checkpoint_family(name, weights_dir)]


def backbone_architecture(name: str | Path) -> str | None:
    """The architecture a method's preset is chosen by: that of a "random-<arch>" name, of a ported folder or
    name (its manifest) or of a catalogue entry; None for other names and raw checkpoint files (the method's
    default run applies)."""
    arch = random_architecture(name)
    if arch is not None:
        return _random_family(arch).architecture(arch)
    text = str(name)
    from jzad.weights import MANIFEST, load_catalogue, read_manifest, weights_dir

    path = Path(text).expanduser()
    for folder in (path, weights_dir(None) / text if "/" not in text else None):
        if folder is not None and folder.is_dir() and (folder / MANIFEST).is_file():
            return read_manifest(folder)["architecture"]
    entry = load_catalogue().get(text.lower())
    return entry.architecture if entry else None


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
    """A Backbone by name or path at the given run preset (explicit arguments override it), loaded by its
    family (``BACKBONE_FAMILIES``); with_text keeps a CLIP text tower for methods that embed prompts. The
    arguments are those of ``BackboneRequest``."""
    request = BackboneRequest(name, run, image_size, taps, activation, dtype, seed, weights_dir, with_text)
    return backbone_family(name, weights_dir).load(request)


__all__ = [
    "BACKBONE_FAMILIES",
    "Backbone",
    "BackboneFamily",
    "BackboneRequest",
    "BackboneRun",
    "FeatureRequest",
    "Features",
    "ImagePrep",
    "backbone_architecture",
    "backbone_family",
    "check_image_size",
    "extract",
    "load_backbone",
    "load_clip",
    "load_image_encoder",
    "normalize_pixels",
]
