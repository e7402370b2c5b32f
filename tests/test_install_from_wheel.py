"""jzad installed from its wheel (not editable, not the source tree) runs the demo and lists its weights
catalogue from another folder: the package data (catalogue, BPE vocabulary) travel in the wheel and nothing
defaults to a folder beside the source.

The wheel is built from a copy of the sources without build isolation and installed with --no-deps into a
fresh venv that sees this interpreter's site-packages through a .pth line, so the test needs no network.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(command, cwd, env, timeout=600):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding jzad from its wheel, an environment without this checkout on it)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "jzad", source / "jzad", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(base / "dist"), str(source)], base, env)
    (wheel,) = (base / "dist").glob("jzad-*.whl")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base, env)
                .strip())
    (site / "parent_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         str(wheel)], base, env)
    env.update(JZAD_WEIGHTS_DIR=str(base / "weights"), JZAD_CACHE_DIR=str(base / "cache"))
    return python, env, site


def test_wheel_install_runs_the_demo_and_lists_weights_from_another_folder(installed, tmp_path):
    python, env, site = installed
    where = run([str(python), "-c", "import jzad; print(jzad.__file__)"], tmp_path, env).strip()
    assert Path(where).parent == site / "jzad"
    listing = run([str(python), "-m", "jzad.weights", "list"], tmp_path, env)
    assert "vit-l-14-336" in listing and "efficientnet-lite0" in listing
    assert listing.splitlines()[0] == f"weights folder: {env['JZAD_WEIGHTS_DIR']}"
    user = {k: v for k, v in env.items() if k != "JZAD_WEIGHTS_DIR"}
    user["XDG_DATA_HOME"] = str(tmp_path / "data")
    listing = run([str(python), "-m", "jzad.weights", "list"], tmp_path, user)
    assert listing.splitlines()[0] == f"weights folder: {tmp_path / 'data' / 'jzad' / 'weights'}"
    out = tmp_path / "demo"
    printed = run([str(python), "-m", "jzad.run", "--backbone", "random-tiny", "--image-size", "32", "--quiet",
                   "--heatmap-size", "32", "--out", str(out)], tmp_path, env)
    assert "method: musc" in printed and (out / "results.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["heatmaps", "results.json", "scores_synthetic.csv",
                                                     "summary_synthetic.png"]
