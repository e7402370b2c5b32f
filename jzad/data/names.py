"""Names of images as the user sees them, and unique, filesystem-safe output names derived from them.

`display_name(path, root)`: the path relative to the --data root, '/'-separated, computed on the paths as
given (made absolute and normalised lexically, symbolic links never resolved), so a symlinked image or
category folder keeps the name it has under the root, wherever it points. A path outside the root (a VisA csv
entry with an absolute path, say) is shown as its absolute, normalised path. Use it for CSV rows and as the
input of `output_names`.

`output_names(display_names)`: one relative output name per image that keeps the relative path and the
extension (`test/crack/001.png` -> `test/crack/001.png`, so `001.png` and `001.jpg` stay apart; callers add
their own suffix, e.g. `name + ".png"` for a heat map). Rules, per path component:
- Unicode is normalised to NFC and kept (UTF-8 file names are fine);
- control characters (Unicode category Cc), line/paragraph separators, unpaired surrogates (from file names
  that are not valid UTF-8) and the characters \\ : * ? " < > | become "_";
- empty and "." components are dropped, ".." becomes "__", a leading "." becomes "_" (no hidden outputs), a
  trailing "." or " " becomes "_" (Windows would strip it), Windows device names (CON, NUL, COM1, ...) get a
  "_" prefix, and a component longer than 200 UTF-8 bytes is shortened (its extension kept);
- names are made unique ignoring case (outputs may land on a case-insensitive filesystem): a later name that
  equals an earlier one, or a folder another name needs, gets "~2", "~3", ... before its extension, never
  taking a name that another input produces itself.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Iterable

_MAX_COMPONENT_BYTES = 200
_RESERVED_CHARS = set('\\:*?"<>|')
_WINDOWS_DEVICES = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


def display_name(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """`path` relative to `root` as the user sees it ('/'-separated, symlinks not resolved); module doc."""
    full = os.path.abspath(os.fspath(path))
    base = os.path.abspath(os.fspath(root))
    try:
        rel = os.path.relpath(full, base)
    except ValueError:  # another drive (Windows)
        rel = full
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        rel = full
    return rel.replace(os.sep, "/")


def _safe_char(ch: str) -> str:
    if ch in _RESERVED_CHARS or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
        return "_"
    return ch


def _shorten(component: str) -> str:
    if len(component.encode("utf-8")) <= _MAX_COMPONENT_BYTES:
        return component
    stem, dot, ext = component.rpartition(".")
    if not dot or len(ext) > 16:
        stem, ext = component, ""
    keep = _MAX_COMPONENT_BYTES - len(ext.encode("utf-8")) - (1 if ext else 0)
    while len(stem.encode("utf-8")) > keep:
        stem = stem[:-1]
    return f"{stem}.{ext}" if ext else stem


def _safe_component(part: str) -> str | None:
    part = unicodedata.normalize("NFC", part)
    part = "".join(_safe_char(ch) for ch in part)
    if part in ("", "."):
        return None
    if part == "..":
        return "__"
    if part.startswith("."):
        part = "_" + part[1:]
    if part.endswith((".", " ")):
        part = part[:-1] + "_"
    if _WINDOWS_DEVICES.match(part):
        part = "_" + part
    return _shorten(part)


def safe_relative_name(name: str) -> str:
    """One display name -> a safe relative '/'-separated name (the per-component rules of the module doc)."""
    if not isinstance(name, str):
        raise TypeError(f"names must be strings, got {type(name).__name__} {name!r}")
    parts = [p for p in (_safe_component(c) for c in name.split("/")) if p is not None]
    return "/".join(parts) or "_"


def _key(name: str) -> str:
    return name.casefold()


def _with_counter(name: str, k: int) -> str:
    head, slash, last = name.rpartition("/")
    stem, dot, ext = last.rpartition(".")
    if not dot or not stem:
        stem, ext = last, ""
    last = f"{stem}~{k}.{ext}" if ext else f"{stem}~{k}"
    return f"{head}{slash}{last}"


def output_names(display_names: Iterable[str]) -> tuple[str, ...]:
    """Unique, filesystem-safe relative output names, one per display name, in order (module doc)."""
    names = [safe_relative_name(n) for n in display_names]
    wanted = {_key(n) for n in names}
    folders = {_key(n[:i]) for n in names for i, ch in enumerate(n) if ch == "/"}
    used: set[str] = set()
    out = []
    for name in names:
        chosen = name
        if _key(name) in used or _key(name) in folders:
            k = 2
            while True:
                chosen = _with_counter(name, k)
                key = _key(chosen)
                if key not in used and key not in wanted and key not in folders:
                    break
                k += 1
        used.add(_key(chosen))
        out.append(chosen)
    return tuple(out)
