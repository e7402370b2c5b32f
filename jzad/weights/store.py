"""Ported checkpoints on disk: weights/<name>/{params/ (orbax), manifest.json, tokenizer/}.

The params are saved at the source's native image size and activation-free (activation is only a forward
option); the manifest records the checkpoint family ("clip", "resnet": ``jzad.weights.families``; manifests
written before families existed are CLIP's), the architecture, the source files with their sha256, and the
default run settings (image size, activation, taps). Loading re-hashes every params file against the manifest and
restores into the tree the manifest's config implies, so a tampered file or a wrong tree is an error.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

import jzad
from jzad.backbone.port import LoadedCheckpoint
from jzad.backbone.tokenizer import TOKENIZER_FILES
from jzad.weights.catalogue import read_json
from jzad.weights.families import family_of, get_family

MANIFEST = "manifest.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _tree_shapes(tree) -> dict[str, list[int]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): list(np.shape(leaf))
        for path, leaf in leaves
    }


def _hash_tree(folder: Path) -> dict[str, str]:
    return {
        str(file.relative_to(folder)): sha256_file(file) for file in sorted(folder.rglob("*")) if file.is_file()
    }


@dataclass(frozen=True)
class PortedCheckpoint:
    """A verified ported checkpoint: native config (the family's: CLIPConfig, ResNetConfig) and params,
    manifest, tokenizer folder (or None)."""

    config: object
    params: dict
    manifest: dict
    path: Path
    tokenizer_dir: Path | None

    @property
    def family(self) -> str:
        """The checkpoint family ("clip", "resnet")."""
        return manifest_family(self.manifest)

    @property
    def image_size(self) -> int | None:
        """Run image size chosen at port time (None: not chosen; the method's preset or the native size)."""
        value = self.manifest["image_size"]
        return None if value is None else int(value)

    @property
    def activation(self) -> str | None:
        """Run activation chosen at port time (None: not chosen)."""
        return self.manifest["activation"]

    @property
    def taps(self) -> tuple | None:
        """Taps chosen at port time (CLIP: 1-based blocks; ResNet: stage names; None: not chosen)."""
        value = self.manifest["taps"]
        return None if value is None else tuple(value)


def save_ported(
    checkpoint: LoadedCheckpoint,
    name: str,
    weights_dir: Path,
    image_size: int | None = None,
    activation: str | None = None,
    taps=None,
    source: str | None = None,
    force: bool = False,
) -> Path:
    """Write weights_dir/name/{params, manifest.json, tokenizer} and return that folder (absolute).

    image_size / activation / taps: run settings recorded in the manifest, which override a method's preset
    when this checkpoint is run (None: not recorded). force replaces an existing folder; otherwise an
    existing one is an error.
    """
    import orbax.checkpoint as ocp

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"checkpoint name must be a plain folder name, got {name!r}")
    config = checkpoint.config
    family = family_of(config)
    target = (Path(weights_dir) / name).resolve()
    if target.exists():
        if not force:
            raise FileExistsError(f"{target} already exists; save with force=True to replace it")
        shutil.rmtree(target)
    image_size, activation, taps = family.check_run(config, image_size, activation, taps)
    target.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target / PARAMS_DIR, checkpoint.params)
    checkpointer.wait_until_finished()
    tokenizer = None
    if checkpoint.tokenizer_dir is not None:
        (target / TOKENIZER_DIR).mkdir()
        for file_name in TOKENIZER_FILES:
            if (checkpoint.tokenizer_dir / file_name).is_file():
                shutil.copy2(checkpoint.tokenizer_dir / file_name, target / TOKENIZER_DIR / file_name)
        tokenizer = TOKENIZER_DIR
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "family": family.name,
        "architecture": family.architecture_name(config),
        "config": family.to_dict(config),
        "source": {
            "path": str(source if source is not None else checkpoint.files[0]),
            "format": checkpoint.source_format,
            "files": [{"path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size} for f in checkpoint.files],
            "activation": checkpoint.source_activation,
        },
        "source_sha256": sha256_file(checkpoint.files[0]) if len(checkpoint.files) == 1 else None,
        "activation": activation,
        "image_size": image_size,
        "native_image_size": family.native_image_size(config),
        "taps": None if taps is None else list(taps),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jzad_version": jzad.__version__,
        "params": {
            "dir": PARAMS_DIR,
            "files": _hash_tree(target / PARAMS_DIR),
            "tree": _tree_shapes(checkpoint.params),
        },
        "tokenizer": tokenizer,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def manifest_family(manifest: dict) -> str:
    """The family a manifest records ("clip" for manifests written before families were recorded)."""
    return manifest.get("family", "clip")


def read_manifest(folder: Path) -> dict:
    """The manifest.json of a ported checkpoint folder (FileNotFoundError / ValueError if absent or bad)."""
    path = Path(folder) / MANIFEST
    manifest = read_json(path, "manifest", f"{path} not found: {folder} is not a ported checkpoint")
    for key in ("format_version", "config", "params", "activation", "image_size", "taps"):
        if key not in manifest:
            raise ValueError(f"{path} lacks {key!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {manifest['format_version']}, expected {FORMAT_VERSION}")
    try:
        get_family(manifest_family(manifest))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return manifest


def load_ported(folder: str | Path, verify: bool = True) -> PortedCheckpoint:
    """Load a ported checkpoint folder: check sha256 of every params file, restore the params tree.

    Raises ValueError naming the file whose hash differs from the manifest, or the tree mismatch.
    """
    import orbax.checkpoint as ocp

    folder = Path(folder).expanduser().resolve()
    manifest = read_manifest(folder)
    family = get_family(manifest_family(manifest))
    config = family.from_dict(manifest["config"])
    params_dir = folder / manifest["params"]["dir"]
    recorded = manifest["params"]["files"]
    if verify:
        present = {str(f.relative_to(params_dir)) for f in params_dir.rglob("*") if f.is_file()}
        missing = sorted(set(recorded) - present)
        extra = sorted(present - set(recorded))
        if missing or extra:
            raise ValueError(f"{params_dir}: files differ from {folder / MANIFEST}: missing {missing}, extra {extra}")
        for rel, digest in recorded.items():
            actual = sha256_file(params_dir / rel)
            if actual != digest:
                raise ValueError(
                    f"{params_dir / rel}: sha256 {actual} does not match the manifest ({digest}); "
                    "the ported checkpoint was modified or damaged, port it again"
                )
    abstract = family.abstract_params(config)
    expected_tree = _tree_shapes(abstract)
    if expected_tree != manifest["params"]["tree"]:
        ours = {(k, tuple(v)) for k, v in expected_tree.items()}
        theirs = {(k, tuple(v)) for k, v in manifest["params"]["tree"].items()}
        differing = sorted(ours ^ theirs)
        raise ValueError(f"{folder / MANIFEST}: params tree does not match its config: {differing[:6]}")
    try:
        params = ocp.StandardCheckpointer().restore(params_dir, abstract)
    except Exception as err:
        raise ValueError(f"cannot restore params from {params_dir}: {err}") from err
    if _tree_shapes(params) != expected_tree:
        raise ValueError(f"{params_dir}: restored params tree differs from the manifest's")
    tokenizer = folder / manifest["tokenizer"] if manifest.get("tokenizer") else None
    return PortedCheckpoint(config=config, params=params, manifest=manifest, path=folder, tokenizer_dir=tokenizer)


def list_ported(weights_dir: Path) -> dict[str, dict]:
    """name -> manifest of every ported checkpoint folder under weights_dir (unverified)."""
    found = {}
    if Path(weights_dir).is_dir():
        for folder in sorted(Path(weights_dir).iterdir()):
            if (folder / MANIFEST).is_file():
                found[folder.name] = read_manifest(folder)
    return found
