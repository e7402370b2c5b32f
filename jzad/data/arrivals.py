"""Images in arrival order, for streaming: a folder by modification time, a list file, or paths on stdin.

Each arrival is (name, path): the name is what the scores CSV shows (relative to the folder, or the line as
written), the path is what is decoded. Sources are iterated lazily, so an arrival on standard input is
yielded as soon as its line is read.
- folder: every image file below it (``IMAGE_EXTENSIONS``, hidden files skipped), oldest modification time
  first (ties: by name); the folder is listed once, when the source is made.
- list file: one path per line (blank lines and lines starting with "#" skipped); relative paths are relative
  to the list file's folder.
- "-": one path per line on standard input (relative to the current folder), until end of input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

from jzad.data.errors import DataError, DataNotFoundError
from jzad.data.names import display_name
from jzad.data.readers import IMAGE_EXTENSIONS


def folder_arrivals(folder: str | os.PathLike) -> Iterator[tuple[str, Path]]:
    """The images below ``folder`` as (name relative to it, path), oldest modification time first."""
    root = Path(folder)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) below {root}", root)
    keyed = sorted((p.stat().st_mtime_ns, display_name(p, root), p) for p in files)
    return iter([(name, path) for _, name, path in keyed])


def _line_arrivals(lines, base: Path | None) -> Iterator[tuple[str, Path]]:
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text)
        yield text, path if path.is_absolute() or base is None else base / path


def list_arrivals(list_file: str | os.PathLike) -> Iterator[tuple[str, Path]]:
    """The paths listed in ``list_file`` (one per line, relative to its folder) as (line, path)."""
    path = Path(list_file)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read the image list {path}: {err.strerror or err}", path) from err
    with handle:
        yield from _line_arrivals(handle, path.parent)


def stdin_arrivals(stream: TextIO | None = None) -> Iterator[tuple[str, Path]]:
    """Paths read line by line from ``stream`` (standard input by default) as (line, path)."""
    yield from _line_arrivals(sys.stdin if stream is None else stream, None)


def arrivals(spec: str | os.PathLike, stdin: TextIO | None = None) -> Iterator[tuple[str, Path]]:
    """Arrivals from "-" (standard input), a folder or a list file (see the module docstring)."""
    if str(spec) == "-":
        return stdin_arrivals(stdin)
    path = Path(spec)
    if path.is_dir():
        return folder_arrivals(path)
    if path.is_file():
        return list_arrivals(path)
    raise DataNotFoundError(f"expected a folder of images, a file listing image paths, or - (standard input), "
                            f"got {spec}", path)


def _strip_anchor(path: Path) -> str:
    return Path(*path.parts[1:]).as_posix() if path.is_absolute() and len(path.parts) > 1 else path.as_posix()


def output_namer(spec: str | os.PathLike, cwd: str | os.PathLike | None = None):
    """name -> the relative path a stream's outputs (map TIFFs, heatmaps) use for an arrival of ``spec``.

    A folder's names are already relative to it. A list file's paths are named relative to the common root of
    every path it lists (read once, here). Standard input cannot be known ahead: its paths are named relative
    to the current folder (``cwd``) when below it, else by their absolute path without its leading "/". So
    outputs never mirror an absolute input path under the output folder when the inputs share a root."""
    text = str(spec)
    if text != "-" and Path(text).is_dir():
        return lambda name: str(name)
    if text == "-":
        here = Path(cwd or os.getcwd()).absolute()

        def from_stdin(name: str) -> str:
            path = Path(name)
            full = path if path.is_absolute() else here / path
            try:
                return full.relative_to(here).as_posix()
            except ValueError:
                return _strip_anchor(full)

        return from_stdin
    listed = {name: Path(os.path.abspath(path)) for name, path in list_arrivals(text)}
    if not listed:
        return lambda name: str(name)
    root = Path(os.path.commonpath([str(p.parent) for p in listed.values()]))

    def from_list(name: str) -> str:
        full = listed.get(str(name))
        if full is None:
            return _strip_anchor(Path(os.path.abspath(Path(text).parent / name)))
        return full.relative_to(root).as_posix()

    return from_list
