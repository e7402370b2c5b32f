"""Reports the command line prints and writes: markdown tables, results JSON, per-image score CSV, environment.

I/O edge only: plain Python and NumPy values in, text and files out. Missing or undefined metrics are
``nan`` inside jzad; tables print them as ``nan`` and the JSON writes them as ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import platform
from importlib import metadata
from numbers import Integral, Real
from pathlib import Path

import numpy as np


def _is_number(v) -> bool:
    """True for real numbers (Python or NumPy), False for bools and everything else."""
    return isinstance(v, (Real, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _cell(v, digits: int) -> str:
    """Text of one table cell: ints as is, floats with ``digits`` decimals, None as '-', '|' escaped."""
    if v is None:
        return "-"
    if _is_number(v):
        if isinstance(v, (Integral, np.integer)):
            return str(int(v))
        f = float(v)
        return "nan" if math.isnan(f) else f"{f:.{digits}f}"
    return str(v).replace("|", "\\|")


def format_table(rows: list[dict], columns, title: str | None = None, mean_row: bool = True,
                 digits: int = 4) -> str:
    """A markdown table of ``rows`` (one dict per row) restricted to ``columns``, in that order.

    Numeric columns (every value a real number; ints print as ints, floats with ``digits`` decimals) are
    right-aligned, others left-aligned; cells are padded so the table also reads well in a terminal.
    With ``mean_row`` (and at least one row) a last row holds 'mean' in the first column and, in every other
    numeric column, the mean over rows ignoring nan (nan when no row has a value), like the results JSON.
    ``title`` becomes a '### title' heading followed by a blank line. A row missing a column raises.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("columns: expected at least one column name")
    if digits < 0:
        raise ValueError(f"digits: expected a non-negative integer, got {digits}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"rows[{i}]: expected a dict, got {type(row).__name__}")
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"rows[{i}]: missing column(s) {missing}; the row has {sorted(row)}")
    numeric = [bool(rows) and all(_is_number(row[c]) for row in rows) for c in columns]
    body = [[_cell(row[c], digits) for c in columns] for row in rows]
    if mean_row and rows:
        mean = ["mean"]
        for c, is_num in zip(columns[1:], numeric[1:]):
            if is_num:
                values = np.array([float(row[c]) for row in rows], dtype=np.float64)
                finite = values[~np.isnan(values)]
                mean.append(_cell(float(finite.mean()) if finite.size else float("nan"), digits))
            else:
                mean.append("")
        body.append(mean)
    header = [str(c).replace("|", "\\|") for c in columns]
    widths = [max([len(header[j])] + [len(r[j]) for r in body] + [4]) for j in range(len(columns))]

    def line(cells: list[str]) -> str:
        padded = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(cells, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if num else ":" + "-" * (w - 1) for w, num in zip(widths, numeric)]
    lines = [] if title is None else [f"### {title}", ""]
    lines += [line(header), "| " + " | ".join(rule) + " |"] + [line(r) for r in body]
    return "\n".join(lines)


def to_jsonable(obj, where: str = "payload"):
    """``obj`` as plain JSON types: NumPy/JAX scalars and arrays -> numbers and lists, tuples -> lists,
    Paths -> strings, dataclasses -> dicts, non-finite floats (nan, +-inf) -> None. Dict keys become strings.

    Anything else raises TypeError naming where in ``obj`` it sits (``where`` is the name of ``obj``).
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (Integral, np.integer)):
        return int(obj)
    if isinstance(obj, (Real, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), where)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, Integral, Real, np.integer, np.floating, np.bool_)):
                raise TypeError(f"{where}: dict key {k!r} of type {type(k).__name__} cannot be a JSON key")
            key = str(to_jsonable(k, where)) if not isinstance(k, str) else k
            out[key] = to_jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        arr = np.asarray(obj)
        if arr.dtype.kind not in "biufU":
            raise TypeError(f"{where}: array of dtype {arr.dtype} cannot be written to JSON")
        return to_jsonable(arr.tolist(), where)
    raise TypeError(f"{where}: value of type {type(obj).__name__} cannot be written to JSON")


def write_results_json(path, payload) -> Path:
    """Write ``payload`` (nested dicts/lists of numbers, strings, arrays) as indented JSON; nan -> null.

    Conversions as ``to_jsonable``; the output is strict JSON (no NaN/Infinity tokens). Creates the parent
    folder; returns the path.
    """
    path = Path(path)
    text = json.dumps(to_jsonable(payload), indent=2, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    return path


SCORE_COLUMNS = ("name", "defect_type", "label", "score")


def write_scores_csv(path, names, labels, scores, defect_types=None) -> Path:
    """One CSV row per image: name, defect_type, label, score (header ``SCORE_COLUMNS``).

    names: N strings; labels: N values in {0, 1} or None (unlabelled: empty cells); scores: (N,) real;
    defect_types: N strings or None (empty cells). Scores are written with ``repr`` so they read back
    bit-exactly as float64 (float32 inputs are widened exactly). Creates the parent folder; returns the path.
    """
    names = [str(n) for n in names]
    n = len(names)
    s = np.asarray(scores)
    if s.ndim != 1 or s.shape[0] != n:
        raise ValueError(f"scores: expected shape ({n},) (one per name), got {s.shape}")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"scores: expected real values, got dtype {s.dtype}")
    label_cells = [""] * n
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (n,):
            raise ValueError(f"labels: expected shape ({n},) (one per name), got {y.shape}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels: expected only the values 0 and 1")
        label_cells = [str(int(v)) for v in y]
    type_cells = [""] * n
    if defect_types is not None:
        type_cells = [str(t) for t in defect_types]
        if len(type_cells) != n:
            raise ValueError(f"defect_types: expected {n} entries (one per name), got {len(type_cells)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SCORE_COLUMNS)
        for name, kind, label, score in zip(names, type_cells, label_cells, s.tolist()):
            writer.writerow((name, kind, label, repr(float(score))))
    return path


def environment_info() -> dict:
    """Versions and devices a result depends on: python, platform, jax/jaxlib/flax/numpy/jzad versions,
    JAX backend, device kind and count (``jax.devices()``), process count."""
    import jax

    import jzad

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "jaxlib": metadata.version("jaxlib"),
        "flax": metadata.version("flax"),
        "numpy": np.__version__,
        "jzad": jzad.__version__,
        "backend": jax.default_backend(),
        "device_kind": kinds[0] if len(kinds) == 1 else ", ".join(kinds),
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }
