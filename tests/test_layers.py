"""The package's import layers and error wording.

Each package imports only from itself and the packages below it in ``LAYERS`` (a strict order, so no two
packages import each other): paths, compile_cache, timing, kernels, data, backbone, weights, features, methods,
eval, progress, pipeline, reference_scores, stream, experiment, cli, weights.__main__ (the weights command line
sits above the package it drives), stream_cli, run, serve (the service builds on the command line's option
handling). ``data`` reads files into arrays and depends on nothing else in jzad;
``eval`` scores what ``data`` reads. Imports inside functions count too: a lazy import that goes upward is
still a cycle in the design. Library errors name the library's own arguments; only the command lines
(``jzad.cli``, ``jzad.run``, ``jzad.weights.__main__``) word errors as flags.
"""

import argparse
import ast
import re
from pathlib import Path

import jzad
from jzad.cli import _backbone_error, in_flag_terms
from jzad.run import main

ORDER = ("jzad.paths", "jzad.compile_cache", "jzad.timing", "jzad.kernels", "jzad.data", "jzad.backbone", "jzad.weights", "jzad.features",
         "jzad.methods", "jzad.eval", "jzad.progress", "jzad.pipeline", "jzad.reference_scores", "jzad.stream", "jzad.experiment",
         "jzad.cli", "jzad.weights.__main__", "jzad.stream_cli", "jzad.run", "jzad.serve")
LAYERS = {name: layer for layer, name in enumerate(ORDER)}
COMMAND_LINES = ("jzad.cli", "jzad.stream_cli", "jzad.run", "jzad.weights.__main__", "jzad.serve.cli")
ROOT = Path(jzad.__file__).resolve().parent


def layer_of(module: str) -> int | None:
    """The layer of a jzad module (its longest listed prefix), None for the package root and outside modules."""
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import statement in a file, absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node.lineno))
    return found


def test_every_module_respects_the_layers():
    violations = []
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        here = module_name(path)
        own = layer_of(here)
        if own is None:
            continue
        for target, line in imports_of(path):
            other = layer_of(target)
            if other is not None and other > own:
                violations.append(f"{path.relative_to(ROOT.parent)}:{line} ({here}, layer {own}) imports "
                                  f"{target} (layer {other})")
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def test_every_module_has_a_layer():
    unlisted = [module_name(p) for p in ROOT.rglob("*.py")
                if module_name(p) != "jzad" and layer_of(module_name(p)) is None]
    assert not unlisted, f"modules outside the layer table: {unlisted}"


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from jzad.weights import open_checkpoint\n")
    assert imports_of(bad) == [("jzad.weights", 2)]
    assert layer_of("jzad.weights") > layer_of("jzad.backbone.encoder")


def test_no_two_packages_import_each_other():
    edges = {}
    for path in ROOT.rglob("*.py"):
        here = layer_of(module_name(path))
        for target, _ in imports_of(path):
            there = layer_of(target)
            if here is not None and there is not None and here != there:
                edges.setdefault(here, set()).add(there)
    cycles = [(ORDER[a], ORDER[b]) for a in edges for b in edges[a] if a in edges.get(b, set()) and a < b]
    assert not cycles, f"packages importing each other: {cycles}"
    assert LAYERS["jzad.features"] not in edges.get(LAYERS["jzad.data"], set())


FLAG = re.compile(r"(?<![\w=-])--[a-z][a-z-]*")
"""A command-line flag written in a message (not an environment value such as ``XLA_FLAGS=--xla_...``)."""


def flag_worded_raises(path: Path) -> list[tuple[int, str]]:
    """(line, flag) of every flag a ``raise X("...")`` message names outside a quoted command (`python -m ...`),
    whether the message is a plain string, an f-string or strings joined across lines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            message = node.exc.args[0]
            parts = message.values if isinstance(message, ast.JoinedStr) else [message]
            text = "".join(part.value if isinstance(part, ast.Constant) and isinstance(part.value, str) else "{}"
                           for part in parts)
            text = re.sub(r"`[^`]*`", "", text)
            found += [(node.lineno, flag) for flag in FLAG.findall(text)]
    return found


def test_library_errors_do_not_name_command_line_flags():
    worded = {module_name(p): flag_worded_raises(p) for p in ROOT.rglob("*.py")}
    offenders = [f"{name}:{line}: {text}" for name, found in worded.items() for line, text in found
                 if name not in COMMAND_LINES]
    assert not offenders, "library errors worded as flags:\n" + "\n".join(offenders)
    assert any(worded[name] for name in COMMAND_LINES), "the checker sees the command lines' own flag errors"


def test_the_flag_checker_sees_f_strings_and_plain_strings(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(n):\n    raise ValueError(f"--subsets {n}: no")\n\ndef g():\n    raise KeyError("--x")\n'
                   'def h():\n    raise ValueError("subsets: fine")\n'
                   'def i(w):\n    raise ValueError(f"width {w}: "\n                     "pass --arch")\n'
                   'def j():\n    raise ValueError("run `python -m jzad.weights port F --name x`; XLA_FLAGS=--xla_n=8")\n')
    assert flag_worded_raises(bad) == [(2, "--subsets"), (5, "--x"), (9, "--arch")]


def test_the_command_line_words_library_errors_as_its_flags(tmp_path, capsys):
    assert in_flag_terms("state_dir: no checkpoint in /x") == "--stream-state: no checkpoint in /x"
    assert in_flag_terms("subsetsX: other") == "subsetsX: other"
    assert in_flag_terms("taps 1,2,4: NACLIP replaces block 4") == "--taps 1,2,4: NACLIP replaces block 4"
    # Arguments named further on are written as keyword arguments; the CLI words them as flag and value.
    assert (in_flag_terms("shots: applies to mode=few_shot or plus; give taps=BLOCKS")
            == "--shots: applies to --mode few_shot or plus; give --taps BLOCKS")
    assert in_flag_terms("k_shots=2, --shots=3, shots2=4") == "k_shots=2, --shots=3, shots2=4"
    assert in_flag_terms("r_list: expected odd sizes; or r_list=1", {"r_list": "--r-list"}) == (
        "--r-list: expected odd sizes; or --r-list 1")
    # A switch given as True is the bare flag.
    assert in_flag_terms("/w/x already exists; save with force=True to replace it", {"force": "--force"}) == (
        "/w/x already exists; save with --force to replace it")
    assert in_flag_terms("loco: no test images: score it whole with subtypes=off, or a list file (subtypes=FILE); "
                         "read it with dataset=mpdd or allow_missing_masks=True") == (
        "loco: no test images: score it whole with --loco-subtypes off, or a list file (--loco-subtypes FILE); "
        "read it with --dataset mpdd or --allow-missing-masks")
    # A backbone error names an option's flag only where the option was given (else the preset chose it).
    preset = argparse.Namespace(weights=None, backbone="net", image_size=None, taps=None, activation=None)
    given = argparse.Namespace(**{**vars(preset), "taps": (5,)})
    method = argparse.Namespace(name="musc")
    assert _backbone_error(given, method, "net", "taps: net has blocks 1..4, got 5") == (
        "--taps: net has blocks 1..4, got 5")
    assert _backbone_error(preset, method, "net", "taps: net has blocks 1..4, got 5") == (
        "--backbone: cannot load 'net': taps: net has blocks 1..4, got 5")
    assert _backbone_error(preset, method, "net", "the preset taps [5] do not fit net; give taps=BLOCKS") == (
        "--backbone: cannot load 'net': the preset taps [5] do not fit net; give --taps BLOCKS")
    # The driver rejects 99 subsets of the demo's 28 images in its own terms ("subsets: ..."); the CLI says
    # which flag asked for them.
    argv = ["--backbone", "random-tiny", "--image-size", "32", "--quiet", "--no-heatmaps", "--subsets", "99",
            "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "python -m jzad.run: error: --subsets: expected 1..28 (the category's image count), got 99"


def test_readme_module_table_lists_the_layers_in_order():
    readme = (ROOT.parent / "README.md").read_text()
    listed = re.findall(r"^\| `(jzad\.[a-z_.]+)` \|", readme, re.M)
    assert listed == list(ORDER)


def test_no_function_in_the_library_is_over_100_lines():
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "split these functions:\n" + "\n".join(long)
