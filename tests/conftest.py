"""Test session set-up: 8 fake CPU devices for sharding tests, no network for Hugging Face."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JZAD_CACHE_DIR", tempfile.mkdtemp(prefix="jzad-test-compile-cache-"))
