"""Ported weights and caches live in the user's folders (the XDG base-directory rules on Linux), with
JZAD_WEIGHTS_DIR / JZAD_CACHE_DIR and an explicit folder winning; the catalogue ships inside the package."""

import sys
from pathlib import Path

import pytest

import jzad
from jzad.paths import cache_dir, compilation_cache_dir, weights_dir
from jzad.weights import load_catalogue

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the XDG rules are Linux's")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("JZAD_WEIGHTS_DIR", "JZAD_CACHE_DIR", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_defaults_follow_the_xdg_rules(clean_env, tmp_path):
    home = tmp_path / "home"
    assert weights_dir() == home / ".local" / "share" / "jzad" / "weights"
    assert cache_dir() == home / ".cache" / "jzad"
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights_dir() == tmp_path / "data" / "jzad" / "weights"
    assert compilation_cache_dir() == tmp_path / "cache" / "jzad" / "jax"


def test_environment_and_explicit_folders_win(clean_env, tmp_path):
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    clean_env.setenv("JZAD_WEIGHTS_DIR", str(tmp_path / "mine" / ".." / "w"))
    clean_env.setenv("JZAD_CACHE_DIR", "~/c")
    assert weights_dir() == tmp_path / "w"
    assert cache_dir() == tmp_path / "home" / "c"
    assert weights_dir(tmp_path / "given") == tmp_path / "given"


def test_nothing_defaults_into_the_package_or_the_source_tree(clean_env):
    package = Path(jzad.__file__).resolve().parent
    for folder in (weights_dir(), cache_dir()):
        assert package.parent not in folder.parents
    assert "vit-l-14-336" in load_catalogue()
