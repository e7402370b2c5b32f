"""Weights: the catalogue, porting PyTorch checkpoints (CLIP, torchvision/timm ResNets) to orbax folders, and
finding them again.

- ``port(src, name, ...)``: a local file/folder (or a Hugging Face id when the hub is reachable) ->
  <weights folder>/<name>/ (``jzad.paths.weights_dir``) with params, manifest.json and tokenizer files. Also ``python -m jzad.weights port``.
  The checkpoint family (``jzad.weights.families``) comes from the catalogue entry of ``name``, else from
  the source's tensor names, and is recorded in the manifest.
- ``open_checkpoint(name_or_path)``: what ``jzad.features`` (and so the run command) uses: a ported
  folder, a ported name under the weights folder, a catalogue name (ported on first use from the hub
  when reachable), a raw checkpoint file/folder (ported in memory) or a Hugging Face id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jzad.backbone.port import LoadedCheckpoint
from jzad.weights.catalogue import (
    WEIGHTS_ENV,
    CatalogueEntry,
    catalogue_entry,
    load_catalogue,
    weights_dir,
)
from jzad.weights.families import FAMILIES, WeightsFamily, detect_family, family_of, get_family, read_checkpoint
from jzad.weights.hub import HubUnavailableError, download_hf, hub_offline, looks_like_hf_id
from jzad.weights.store import (
    MANIFEST,
    PortedCheckpoint,
    list_ported,
    load_ported,
    manifest_family,
    read_manifest,
    save_ported,
    sha256_file,
)

__all__ = [
    "WEIGHTS_ENV",
    "CatalogueEntry",
    "FAMILIES",
    "HubUnavailableError",
    "OpenedCheckpoint",
    "PortedCheckpoint",
    "catalogue_entry",
    "checkpoint_family",
    "detect_family",
    "download_hf",
    "family_of",
    "get_family",
    "hub_offline",
    "list_ported",
    "load_catalogue",
    "load_ported",
    "open_checkpoint",
    "port",
    "read_checkpoint",
    "read_manifest",
    "save_ported",
    "sha256_file",
    "weights_dir",
    "WeightsFamily",
]


def _catalogue_or_none(name: str) -> CatalogueEntry | None:
    catalogue = load_catalogue()
    return catalogue.get(name.lower())


def _read_source(src: str | Path, arch, port_hint: str | None,
                 family: str | None = None) -> tuple[LoadedCheckpoint, str]:
    path = Path(src).expanduser()
    if path.exists():
        return read_checkpoint(path, arch, family), str(path.resolve())
    if isinstance(src, str) and looks_like_hf_id(src):
        folder = download_hf(src, port_hint=port_hint)
        return read_checkpoint(folder, arch, family), src
    raise FileNotFoundError(
        f"{src} is neither an existing checkpoint file/folder nor a Hugging Face model id (owner/name)"
    )


def port(
    src: str | Path,
    name: str,
    arch=None,
    activation: str | None = None,
    image_size: int | None = None,
    taps=None,
    weights_dir_override: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Port src to <weights dir>/<name>/ and return that folder.

    src: an OpenAI .pt, an OpenCLIP/HF state dict file, a Hugging Face folder, a torchvision or timm ResNet
    state dict (.pth / .safetensors), or a Hugging Face id (downloaded only when the hub is reachable). For a
    catalogue name, arch and the family default to the catalogue's (checked tensor by tensor). image_size /
    activation / taps, when given, are recorded as this checkpoint's run settings (they override a method's
    preset). The params are stored at the native size.
    """
    entry = _catalogue_or_none(name)
    if arch is None and entry is not None:
        arch = entry.architecture
    checkpoint, source = _read_source(src, arch, entry.port_hint() if entry else None,
                                      entry.family if entry else None)
    return save_ported(
        checkpoint,
        name,
        weights_dir(weights_dir_override),
        image_size=image_size,
        activation=activation,
        taps=taps,
        source=source,
        force=force,
    )


@dataclass(frozen=True, eq=False)
class OpenedCheckpoint:
    """Native config + params of a checkpoint, wherever it came from, and the run settings recorded when it was
    ported (None where none were recorded: a method's preset or the native value applies). family: "clip"
    (config a CLIPConfig, taps 1-based blocks) or "resnet" (a ResNetConfig, taps stage names)."""

    config: object
    params: dict
    image_size: int | None
    activation: str | None
    taps: tuple | None
    tokenizer_dir: Path | None
    origin: str
    family: str = "clip"


def _from_ported(ported: PortedCheckpoint) -> OpenedCheckpoint:
    family = get_family(ported.family)
    _, _, taps = family.check_run(ported.config, None, None, ported.taps)
    return OpenedCheckpoint(
        ported.config, ported.params, ported.image_size, ported.activation, taps, ported.tokenizer_dir,
        str(ported.path), family.name,
    )


def _from_loaded(loaded: LoadedCheckpoint, origin: str) -> OpenedCheckpoint:
    return OpenedCheckpoint(loaded.config, loaded.params, None, None, None, loaded.tokenizer_dir, origin,
                            family_of(loaded.config).name)


def checkpoint_family(name_or_path: str | Path, weights_dir_override: str | Path | None = None) -> str:
    """The family ("clip", "resnet") of what ``open_checkpoint`` would open, found cheaply: a ported folder's
    manifest, a raw file's tensor names, a catalogue entry; anything else (a Hugging Face id, an unknown name)
    is "clip", whose loader reports what is wrong with it."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() and (path / MANIFEST).is_file():
            return manifest_family(read_manifest(path))
        return detect_family(path).name
    folder = weights_dir(weights_dir_override)
    if "/" not in text and (folder / text / MANIFEST).is_file():
        return manifest_family(read_manifest(folder / text))
    entry = _catalogue_or_none(text) if "/" not in text else None
    return entry.family if entry is not None else "clip"


def open_checkpoint(
    name_or_path: str | Path, arch=None, weights_dir_override: str | Path | None = None
) -> OpenedCheckpoint:
    """Find and load a checkpoint by name or path (see the module docstring for the order).

    A catalogue name that is not ported yet is fetched from its Hugging Face id and ported into the
    weights folder when the hub is reachable; offline this raises HubUnavailableError (a ConnectionError
    and FileNotFoundError) with the command that
    ports a local file. Unknown names raise ValueError listing catalogue and ported names.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() and (path / MANIFEST).is_file():
            return _from_ported(load_ported(path))
        return _from_loaded(read_checkpoint(path, arch), str(path.resolve()))
    folder = weights_dir(weights_dir_override)
    if "/" not in text and (folder / text / MANIFEST).is_file():
        return _from_ported(load_ported(folder / text))
    entry = _catalogue_or_none(text) if "/" not in text else None
    if entry is not None:
        if (folder / entry.name / MANIFEST).is_file():
            return _from_ported(load_ported(folder / entry.name))
        if entry.hf_id is None:
            raise FileNotFoundError(
                f"{entry.name} is not ported in {folder} and has no Hugging Face source; port it with "
                f"`{entry.port_hint()}`"
            )
        target = port(entry.hf_id, entry.name, weights_dir_override=folder)
        return _from_ported(load_ported(target))
    if looks_like_hf_id(text):
        loaded, source = _read_source(text, arch, None)
        return _from_loaded(loaded, source)
    ported = ", ".join(list_ported(folder)) or "none"
    raise ValueError(
        f"unknown checkpoint {text!r}: not a file or folder, not ported in {folder} (ported: {ported}), "
        f"not in the catalogue ({', '.join(load_catalogue())}) and not a Hugging Face id"
    )
