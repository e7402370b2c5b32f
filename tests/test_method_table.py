"""The lazy method table (``jzad.methods.table``): ``python -m jzad.run --help`` builds its parser from it without
importing jax, flax, optax, ott, numpy or any method module, and the table equals what the method modules register
(the modules register the table's rows: one place where a method's summary and options are written), and each
choice an option offers is one its configure accepts."""

import dataclasses
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import jzad.methods
from jzad.methods import RunContext, base, get_method, get_streaming, method_entry, method_names, stream_entry, streaming_names
from jzad.methods.options import DeferredParse, OptionError
from jzad.methods.table import METHODS, STREAMS
from jzad.run import main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "jaxlib", "flax", "optax", "ott", "orbax", "torch", "transformers", "numpy", "PIL")

HELP_SCRIPT = """
import json, sys
from jzad.run import main
try:
    main(["--help"])
except SystemExit as done:
    code = done.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

REGISTERED_BY_SCRIPT = """
import importlib, json, sys
from jzad.methods import base
from jzad.methods.table import METHODS, STREAMS
found = {"methods": {}, "streams": {}}
for kind, entries, names in (("methods", METHODS, base.method_names), ("streams", STREAMS, base.streaming_names)):
    for entry in entries:
        before = set(names())
        importlib.import_module(entry.module)
        found[kind][entry.module] = sorted(set(names()) - before) + found[kind].get(entry.module, [])
print(json.dumps(found))
"""


def _python(script: str) -> dict:
    """Run ``script`` in a fresh interpreter on this checkout; its last stdout line as JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _import_every_method_module() -> None:
    """Every module of jzad.methods imported: the table's through the registry (a streaming module needs the
    methods it streams registered first), then any other, so a module registering a method missing from the
    table registers it too."""
    for entry in METHODS:
        get_method(entry.name)
    for entry in STREAMS:
        get_streaming(entry.name)
    for module in pkgutil.iter_modules(jzad.methods.__path__, "jzad.methods."):
        importlib.import_module(module.name)


def test_help_imports_no_jax_flax_optax_ott_numpy_or_method_module():
    found = _python(HELP_SCRIPT)
    assert found["code"] == 0
    modules = found["modules"]
    heavy = sorted({m.split(".")[0] for m in modules if m.split(".")[0] in HEAVY})
    assert not heavy, f"--help imported {heavy}"
    method_modules = [m for m in modules if m.startswith("jzad.methods.") and
                      m not in ("jzad.methods.options", "jzad.methods.table")]
    assert not method_modules, f"--help imported {method_modules}"


def test_help_text_is_the_same_after_every_method_is_imported(monkeypatch):
    """The parser built from the table before any method module is imported (a fresh interpreter) is the
    one built once every module is imported and registered (this process)."""
    from jzad.cli import build_parser

    _import_every_method_module()
    monkeypatch.setenv("COLUMNS", "120")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fresh = subprocess.run([sys.executable, "-m", "jzad.run", "--help"], capture_output=True, text=True, env=env,
                           timeout=300, cwd=ROOT)
    assert fresh.returncode == 0, fresh.stderr
    here = build_parser().format_help()
    assert fresh.stdout == here
    for entry in METHODS:
        assert entry.summary in " ".join(here.split())


def test_each_table_module_registers_its_rows():
    """In a fresh interpreter, importing each row's module (in table order) registers that row's name."""
    found = _python(REGISTERED_BY_SCRIPT)
    for kind, entries in (("methods", METHODS), ("streams", STREAMS)):
        for entry in entries:
            assert entry.name in found[kind][entry.module], (kind, entry.name, entry.module, found[kind])


def test_each_method_module_registers_its_table_row():
    """The modules take their summaries and options from the table (the same objects), so the lazy --help and
    the registered methods cannot differ."""
    _import_every_method_module()
    assert set(base.method_names()) == {e.name for e in METHODS}
    assert set(base.streaming_names()) == {e.name for e in STREAMS}
    for entry in METHODS:
        method = base.get_method(entry.name)
        assert method.summary is entry.summary and method.options is entry.options, entry.name
    for entry in STREAMS:
        assert base.get_streaming(entry.name).options is entry.options, entry.name


def _configure(name: str, values: dict):
    """The method's config for ``values`` with no references or one (a choice like MuSc's modes needs one or
    the other); the error of the last try when neither is accepted."""
    method = get_method(name)
    size = 240 if name.startswith("winclip") else 224
    for shots in (0, 1):
        try:
            return method.configure(values, RunContext("mvtec", size, shots))
        except OptionError as err:
            error = err
    raise error


@pytest.mark.parametrize("entry", METHODS, ids=lambda e: e.name)
def test_every_offered_choice_is_one_configure_accepts(entry):
    """Each choice --help offers reaches the method's config (the table's choices are the config's), and every
    parse function named by a DeferredParse exists in its module."""
    for option in entry.options:
        if isinstance(option.parse, DeferredParse):
            assert callable(option.parse.resolve()), option
        for choice in option.choices or ():
            config = _configure(entry.name, {option.dest: choice})
            assert choice in repr(config), (entry.name, option.flag, choice)


def test_every_offered_stream_choice_is_one_the_stream_accepts():
    for entry in STREAMS:
        streaming = get_streaming(entry.name)
        for option in entry.options:
            if isinstance(option.parse, DeferredParse):
                assert callable(option.parse.resolve()), option
            for choice in option.choices or ():
                config = streaming.configure({option.dest: choice}, _configure(entry.name, {}))
                assert choice in repr(config), (entry.name, option.flag, choice)


def test_deferred_parse_calls_the_module_function():
    parse = DeferredParse("jzad.methods.fslc", "_n_wanted")
    assert parse("otsu") == importlib.import_module("jzad.methods.fslc")._n_wanted("otsu") == "otsu"
    assert parse("12") == 12


def test_run_time_registration_joins_the_table(monkeypatch):
    extra = dataclasses.replace(get_method("musc"), name="musc-extra", summary="an extra method")
    monkeypatch.setitem(base._REGISTRY, "musc-extra", extra)
    assert method_names() == tuple(e.name for e in METHODS) + ("musc-extra",)
    assert method_entry("musc-extra").summary == "an extra method"
    assert method_entry("musc-extra").options == extra.options
    assert get_method("musc-extra") is extra
    assert streaming_names()[:len(STREAMS)] == tuple(e.name for e in STREAMS)
    assert stream_entry("winclip").options == get_streaming("winclip").options == ()


def test_unknown_names_list_every_table_method():
    with pytest.raises(ValueError, match="unknown method 'nope'; registered: clip_lad, fslc, musc, patchcore,"):
        get_method("nope")
    with pytest.raises(ValueError, match="method 'clip_lad' does not stream; methods that do: fslc, musc,"):
        get_streaming("clip_lad")


def test_streaming_a_method_without_streaming_is_a_flag_worded_error(tmp_path, capsys):
    argv = ["--method", "clip_lad", "--stream", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("python -m jzad.run: error: --method clip_lad does not stream; methods that do: fslc, musc, "
                   "patchcore, patchcore_plus, winclip, winclip_plus")
