"""Shared plumbing of the convolutional-network ports (ResNet, EfficientNet-Lite): a port table is a list of
(torch key, Flax path "a/0/b", transform) rows; these helpers move one array across it in either direction.

Transforms: "conv" (torch OIHW <-> Flax HWIO), "linear" (torch (out, in) <-> Flax (in, out)), "copy"."""

from __future__ import annotations

import numpy as np


def to_flax(array: np.ndarray, transform: str) -> np.ndarray:
    """A torch-layout array -> its Flax layout under ``transform``."""
    if transform == "conv":
        return array.transpose(2, 3, 1, 0)
    if transform == "linear":
        return array.T
    return array


def to_torch(array: np.ndarray, transform: str) -> np.ndarray:
    """A Flax-layout array -> its torch layout under ``transform`` (the inverse of ``to_flax``)."""
    if transform == "conv":
        return array.transpose(3, 2, 0, 1)
    if transform == "linear":
        return array.T
    return array


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
