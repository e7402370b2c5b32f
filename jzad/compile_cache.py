"""JAX's persistent compilation cache, on by default for the command line.

A compiled program is written to a folder keyed by its HLO, backend and flags, so a second run of the same
shapes (another category, another invocation) loads it instead of compiling again. The folder is the user's
cache folder (``default_cache_dir``): ``$JAX_COMPILATION_CACHE_DIR`` when set, else ``$JZAD_CACHE_DIR/jax``, else
the platform's user cache folder (``~/.cache/jzad/jax`` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """The folder for compiled programs: the one the user set for JAX (``JAX_COMPILATION_CACHE_DIR``), else
    jzad's user cache folder's ``jax/`` (``jzad.paths.compilation_cache_dir``: $JZAD_CACHE_DIR/jax, else the
    platform's cache folder)."""
    from jzad.paths import compilation_cache_dir

    given = os.environ.get("JAX_COMPILATION_CACHE_DIR", "").strip()
    return Path(given).expanduser() if given else compilation_cache_dir()


class CompileCacheError(ValueError):
    """The compilation cache folder cannot be made: the command line adds how to run without the cache."""


def enable_compile_cache(folder: Path | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in ``folder`` (default: ``default_cache_dir()``), caching
    every program whatever its compile time; returns the folder. An unusable folder raises CompileCacheError
    naming it."""
    import jax

    folder = Path(folder) if folder is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CompileCacheError(f"compilation cache folder {folder}: cannot create it ({err}); set JZAD_CACHE_DIR "
                                "to a folder this user can write") from err
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
