"""Test session set-up: 8 fake CPU devices for sharding tests, no network for Hugging Face, and JAX's
persistent compilation cache in the checkout (git-ignored .pytest_cache/), so programs compiled once -- by an
earlier test, a subprocess or an earlier run -- are read back instead of compiled again. A test that must see
a cold process (it counts compilations, or clears JAX's caches) is marked ``cold_process``: it runs in a new
Python process with the persistent cache off, so nothing it does reaches the tests after it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JZAD_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jzad"))


COLD_PROCESS = "JZAD_TEST_COLD_PROCESS"
"""Set, to the test's node id, in the process a ``cold_process`` test runs in."""


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run a ``cold_process`` test in a new Python process (empty jit caches, persistent cache off) and pass
    or fail with it; inside that process the test runs as any other."""
    if pyfuncitem.get_closest_marker("cold_process") is None or os.environ.get(COLD_PROCESS) == pyfuncitem.nodeid:
        return None
    env = {**os.environ, COLD_PROCESS: pyfuncitem.nodeid, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", pyfuncitem.nodeid]
    done = subprocess.run(command, cwd=pyfuncitem.config.rootpath, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (f"{pyfuncitem.nodeid} failed in a cold process:\n{done.stdout[-6000:]}"
                                  f"{done.stderr[-2000:]}")
    return True
