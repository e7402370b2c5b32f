"""The ports' shared plumbing (CLIP, ResNet, EfficientNet-Lite): a port table is a list of (torch key, Flax path
"a/0/b", transform) rows; these helpers move arrays, shapes and whole state dicts across it in either direction.

Transforms: "conv" (torch OIHW <-> Flax HWIO), "linear" (torch (out, in) <-> Flax (in, out)), "copy"."""

from __future__ import annotations

import numpy as np

FLAX_AXES = {"conv": (2, 3, 1, 0), "linear": (1, 0)}
"""transform -> the torch axes in Flax order (OIHW -> HWIO, (out, in) -> (in, out)); "copy" keeps the layout."""

TORCH_AXES = {transform: tuple(int(a) for a in np.argsort(axes)) for transform, axes in FLAX_AXES.items()}
"""transform -> the Flax axes in torch order: the inverse permutations of FLAX_AXES."""


def to_flax(array: np.ndarray, transform: str) -> np.ndarray:
    """A torch-layout array -> its Flax layout under ``transform``."""
    return array.transpose(FLAX_AXES[transform]) if transform in FLAX_AXES else array


def to_torch(array: np.ndarray, transform: str) -> np.ndarray:
    """A Flax-layout array -> its torch layout under ``transform`` (the inverse of ``to_flax``)."""
    return array.transpose(TORCH_AXES[transform]) if transform in TORCH_AXES else array


def split_path(flax_path: str) -> tuple:
    """"blocks/3/bn1/scale" -> ("blocks", 3, "bn1", "scale"): digits become list/dict integer keys."""
    return tuple(int(part) if part.isdigit() else part for part in flax_path.split("/"))


def get_path(tree, path: tuple):
    """The leaf of a nested params tree at ``path``."""
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple, value) -> None:
    """Set the leaf at ``path`` in a nested dict, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def expected_torch_shapes(table, abstract: dict) -> dict[str, tuple[int, ...]]:
    """torch key -> the shape its tensor has in a checkpoint: each row's leaf shape in abstract (the model's
    params tree, e.g. of jax.ShapeDtypeStruct leaves) in the torch layout."""
    shapes = {}
    for torch_key, flax_path, transform in table:
        shape = tuple(get_path(abstract, split_path(flax_path)).shape)
        shapes[torch_key] = tuple(shape[a] for a in TORCH_AXES[transform]) if transform in TORCH_AXES else shape
    return shapes


def table_to_flax(state, table) -> dict:
    """The Flax params tree (float32, C-ordered numpy copies) of the table's tensors in state, a torch-named
    mapping of arrays that holds every row's key."""
    params: dict = {}
    for torch_key, flax_path, transform in table:
        array = np.asarray(state[torch_key], dtype=np.float32)
        set_path(params, split_path(flax_path), np.array(to_flax(array, transform), order="C"))
    return params


def table_to_torch(params: dict, table) -> dict[str, np.ndarray]:
    """The inverse of ``table_to_flax``: torch key -> float32 C-ordered numpy copy in the torch layout."""
    state = {}
    for torch_key, flax_path, transform in table:
        array = np.asarray(get_path(params, split_path(flax_path)), dtype=np.float32)
        state[torch_key] = np.array(to_torch(array, transform), order="C")
    return state


def with_batch_counters(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """state with a ``num_batches_tracked`` int64 zero after every BatchNorm's ``running_var``, as torch's
    strict loading of a BatchNorm network expects."""
    out = {}
    for key, value in state.items():
        out[key] = value
        if key.endswith(".running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out
