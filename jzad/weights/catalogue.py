"""The catalogue of supported checkpoints (``catalogue.json``, shipped inside this package); ported weights live
in ``jzad.paths.weights_dir()`` (the user's data folder, or $JZAD_WEIGHTS_DIR).

Each entry names its family ("clip" when absent, "resnet"), its source (OpenAI name and file, Hugging Face id,
OpenCLIP name + pretrained tag, or a torchvision file), its architecture, its native input size and (CLIP)
activation. How a method runs a backbone (input size, taps) is the
method's preset (``jzad.methods``), not the catalogue's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jzad.backbone.config import ACTIVATIONS
from jzad.paths import WEIGHTS_ENV, weights_dir
from jzad.weights.families import get_family

CATALOGUE = Path(__file__).resolve().parent / "catalogue.json"
"""The catalogue shipped with the package (package data, so it is there in a wheel install too)."""
__all__ = ["CATALOGUE", "WEIGHTS_ENV", "CatalogueEntry", "catalogue_entry", "load_catalogue", "weights_dir"]


@dataclass(frozen=True)
class CatalogueEntry:
    """One supported checkpoint: source, architecture, native input size, activation (None: a family without
    one) and family ("clip", "resnet")."""

    name: str
    architecture: str
    source: dict
    native_image_size: int
    activation: str | None
    notes: str = ""
    family: str = "clip"

    @property
    def hf_id(self) -> str | None:
        """The Hugging Face model id of the source, if it has one."""
        return self.source.get("hf_id")

    def port_hint(self) -> str:
        """How to port this checkpoint from a local file: the copy the OpenAI ``clip`` package keeps in
        ~/.cache/clip when it is there, else a placeholder path."""
        file = (self.source.get("openai_file") or self.source.get("openclip_file") or self.source.get("file")
                or f"{self.source.get('openclip_name', self.name)}.bin")
        arch = "" if self.source.get("kind") in ("openai", "torchvision") else f" --arch {self.architecture}"
        local = Path("~/.cache/clip").expanduser() / file
        where = local if self.source.get("openai_file") and local.is_file() else f"/path/to/{file}"
        return f"python -m jzad.weights port {where} --name {self.name}{arch}"


def _entry(name: str, data: dict, path: Path) -> CatalogueEntry:
    try:
        entry = CatalogueEntry(
            name=name,
            architecture=data["architecture"],
            source=dict(data["source"]),
            native_image_size=int(data["native_image_size"]),
            activation=data.get("activation"),
            notes=data.get("notes", ""),
            family=data.get("family", "clip"),
        )
        family = get_family(entry.family)
        arch = family.check_architecture(entry.architecture)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: catalogue entry {name!r} is malformed ({err!r})") from err
    native = family.native_image_size(arch)
    if native is not None and entry.native_image_size != native:
        raise ValueError(f"{path}: {name!r} native_image_size differs from {entry.architecture}'s")
    if family.name == "clip" and entry.activation not in ACTIVATIONS:
        raise ValueError(f"{path}: {name!r} activation must be in {ACTIVATIONS}")
    return entry


def load_catalogue(path: str | Path | None = None) -> dict[str, CatalogueEntry]:
    """name -> CatalogueEntry from a catalogue file (default: the package's ``CATALOGUE``)."""
    path = Path(path) if path is not None else CATALOGUE
    data = read_json(path, "weights catalogue", f"weights catalogue {path} not found")
    return {name: _entry(name, entry, path) for name, entry in data.items()}


def read_json(path: Path, what: str, missing: str):
    """The parsed JSON file at ``path``; FileNotFoundError(``missing``) when there is none, ValueError naming
    ``what`` and the file when it does not parse."""
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"cannot parse {what} {path}: {err}") from err


def catalogue_entry(name: str, catalogue: dict[str, CatalogueEntry] | None = None) -> CatalogueEntry:
    """The catalogue entry called name (case-insensitive); unknown names raise ValueError listing the known."""
    catalogue = load_catalogue() if catalogue is None else catalogue
    key = name.lower()
    if key not in catalogue:
        raise ValueError(f"unknown checkpoint name {name!r}; the catalogue has: {', '.join(catalogue)}")
    return catalogue[key]
