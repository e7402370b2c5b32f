"""JAX's persistent compilation cache, on by default for the command line.

A compiled program is written to a folder keyed by its HLO, backend and flags, so a second run of the same
shapes (another category, another invocation) loads it instead of compiling again. The folder is the user's
cache folder: ``$JZAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/jzad/jax``, else ``~/.cache/jzad/jax``.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir(environ=os.environ) -> Path:
    """The user cache folder for compiled programs (see the module docstring)."""
    if environ.get("JZAD_CACHE_DIR"):
        return Path(environ["JZAD_CACHE_DIR"]).expanduser()
    base = Path(environ["XDG_CACHE_HOME"]).expanduser() if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "jzad" / "jax"


def enable_compile_cache(folder: Path | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in ``folder`` (default: ``default_cache_dir()``), caching
    every program whatever its compile time; returns the folder. An unusable folder raises ValueError naming it."""
    import jax

    folder = Path(folder) if folder is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"compilation cache folder {folder}: cannot create it ({err}); set JZAD_CACHE_DIR or "
                         "pass --no-compile-cache") from err
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder.absolute()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _reset()
    return folder


def disable_compile_cache() -> None:
    """Turn JAX's persistent compilation cache off for this process (``--no-compile-cache``)."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    _reset()


def _reset() -> None:
    """Make JAX re-read the cache settings (it remembers whether the cache is used after the first compile)."""
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
