"""Opening a backbone family's checkpoint by name or path: a file or folder, a ported name, a catalogue name
(``jzad.weights.open_checkpoint``), else a variant whose weights ship in an installed pip package."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def is_ported(text: str, weights_dir) -> bool:
    """Whether ``text`` is a ported folder, or the name of one under the weights folder."""
    from jzad.weights import MANIFEST, weights_dir as default_dir

    path = Path(text).expanduser()
    return (path / MANIFEST).is_file() or ("/" not in text and (default_dir(weights_dir) / text / MANIFEST).is_file())


def open_family_checkpoint(name: str | Path, weights_dir, family: str, kind: str,
                           packaged: Callable[[str], tuple | None]):
    """(params, config, origin, recorded image size, recorded taps) of a ``family`` checkpoint. A name that is
    neither a path nor ported goes first to ``packaged(name) -> (params, config, origin)``, None when it names
    no packaged variant (it raises when it does but the package is missing); the rest is ``open_checkpoint``'s,
    which must find a ``family`` checkpoint (``kind`` names it in the error: "an EfficientNet")."""
    from jzad.weights import open_checkpoint

    text = str(name)
    if not Path(text).expanduser().exists() and not is_ported(text, weights_dir):
        found = packaged(text)
        if found is not None:
            return (*found, None, None)
    opened = open_checkpoint(name, weights_dir_override=weights_dir)
    if opened.family != family:
        raise ValueError(f"{text} is a {opened.family} checkpoint, not {kind}")
    return opened.params, opened.config, opened.origin, opened.image_size, opened.taps
