"""The package's import layers: each module imports only from its own layer or the layers below it.

kernels < backbone < weights < features < methods < data, eval < pipeline < run (DESIGN.md). Imports inside
functions count too: a lazy import that goes upward is still a cycle in the design.
"""

import ast
from pathlib import Path

import jzad

LAYERS = {
    "jzad.timing": 0, "jzad.kernels": 0, "jzad.compile_cache": 0,
    "jzad.backbone": 1,
    "jzad.weights": 2,
    "jzad.features": 3,
    "jzad.methods": 4,
    "jzad.data": 5, "jzad.eval": 5,
    "jzad.progress": 6, "jzad.pipeline": 6, "jzad.stream": 6, "jzad.experiment": 6,
    "jzad.cli": 7, "jzad.run": 7,
}
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
