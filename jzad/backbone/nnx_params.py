"""The plumbing every backbone's pure entry points share: params trees in, a module rebuilt inside jit.

Users hold a plain nested dict of arrays, never a module. An nnx backbone (CLIP, NACLIP, ResNet,
EfficientNet) splits an abstract instance of its module once per static configuration (``abstract_split``,
cached, nothing allocated) and, at trace time, merges a params dict into that graph (``merged_module``),
so a jitted function stays pure and retraces only when a static argument or a shape changes. Every backbone
(DINO too) computes in float32 at the highest matmul precision or in bfloat16 with params cast inside
(``COMPUTE_DTYPES``, ``check_compute_dtype``, ``cast_floats``, ``compute_precision``).
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
from flax import nnx

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
"""The compute dtypes a backbone runs in, by name (the static ``dtype`` argument of the jitted functions)."""


def check_compute_dtype(dtype) -> str:
    """The name in COMPUTE_DTYPES of dtype (a name or anything ``jnp.dtype`` reads); ValueError otherwise."""
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = jnp.dtype(dtype).name
        except TypeError:
            name = None
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(COMPUTE_DTYPES)}, got {dtype!r}")
    return name


def cast_floats(tree, dtype):
    """tree with every floating-point leaf cast to dtype; integer leaves are left as they are."""
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, tree)


def compute_precision(dtype: str):
    """The matmul precision context for a compute dtype name: "highest" for float32 (the reference numbers),
    XLA's default otherwise."""
    return jax.default_matmul_precision("highest" if dtype == "float32" else "default")


@lru_cache(maxsize=128)
def abstract_split(module_type: type, *args):
    """(graphdef, abstract state) of ``module_type(*args)`` built under ``nnx.eval_shape``: shapes only, no
    arrays allocated; cached per (module type, args), so args must be hashable (frozen configs)."""
    return nnx.split(nnx.eval_shape(lambda: module_type(*args)))


def abstract_params_of(module_type: type, *args) -> dict:
    """The params tree of ``module_type(*args)`` as a nested dict of jax.ShapeDtypeStruct leaves, without
    allocating."""
    return nnx.to_pure_dict(abstract_split(module_type, *args)[1])


def merge_params(split, params: dict):
    """The module of a split (``abstract_split``) holding params, a nested dict with its pure-dict layout."""
    graphdef, abstract = split
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def merged_module(params: dict, dtype: str, module_type: type, *args):
    """``module_type(*args)`` holding params, their floating-point leaves cast to the compute dtype named dtype
    (a key of COMPUTE_DTYPES). Meant for trace time inside jit: the graph comes from ``abstract_split``."""
    return merge_params(abstract_split(module_type, *args), cast_floats(params, COMPUTE_DTYPES[dtype]))
