"""Test session set-up: 8 fake CPU devices for sharding tests, no network for Hugging Face, and JAX's
persistent compilation cache in the checkout (git-ignored .pytest_cache/), so programs compiled once -- by an
earlier test, a subprocess or an earlier run -- are read back instead of compiled again."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JZAD_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jzad"))
