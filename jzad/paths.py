"""Where jzad keeps files of its own: ported weights and caches, in the user's folders (``platformdirs``: on
Linux $XDG_DATA_HOME/jzad and $XDG_CACHE_HOME/jzad, else ~/.local/share/jzad and ~/.cache/jzad; the
platform's usual places on macOS and Windows), never inside the installed package or the source tree.

An environment variable wins over the default: ``JZAD_WEIGHTS_DIR`` (ported checkpoints) and
``JZAD_CACHE_DIR`` (caches, e.g. the JAX compilation cache under ``jax/``).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "jzad"
WEIGHTS_ENV = "JZAD_WEIGHTS_DIR"
CACHE_ENV = "JZAD_CACHE_DIR"


def _from_env(variable: str) -> Path | None:
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser().resolve() if value else None


def weights_dir(override: str | os.PathLike | None = None) -> Path:
    """Where ported checkpoints live: ``override``, else $JZAD_WEIGHTS_DIR, else <user data folder>/weights
    (absolute; not created here)."""
    if override is not None:
        return Path(override).expanduser().resolve()
    return _from_env(WEIGHTS_ENV) or Path(platformdirs.user_data_dir(APP)) / "weights"


def cache_dir() -> Path:
    """Where jzad's caches live: $JZAD_CACHE_DIR, else the user cache folder (absolute; not created here)."""
    return _from_env(CACHE_ENV) or Path(platformdirs.user_cache_dir(APP))


def compilation_cache_dir() -> Path:
    """The folder of JAX's persistent compilation cache for jzad's command lines."""
    return cache_dir() / "jax"
