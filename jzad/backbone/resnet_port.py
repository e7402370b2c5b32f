"""torchvision / timm ResNet state dicts <-> Flax params of ``jzad.backbone.resnet``: one explicit name table.

timm's ResNet family (``wide_resnet50_2``, ``resnet50``) uses torchvision's parameter names, so one table
serves both: ``conv1.weight -> conv1/kernel`` (OIHW -> HWIO), ``bn1.{weight, bias, running_mean,
running_var} -> bn1/{scale, bias, mean, var}``, ``layerS.B.convK`` / ``bnK`` -> ``layerS/B/convK`` / ``bnK``,
``layerS.0.downsample.{0, 1}`` -> ``layerS/0/downsample/{0, 1}``, ``fc.{weight, bias} -> fc/{kernel, bias}``
(ported only when the config has ``num_classes``). A leading ``module.`` (DataParallel) or ``model.``
(Lightning / timm wrappers) is stripped; ``num_batches_tracked`` buffers are ignored. The config is inferred
from tensor shapes when not given; any missing, unexpected or mis-shaped tensor is an error naming the key
and both shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from jzad.backbone.conv_port import expected_torch_shapes, table_to_flax, table_to_torch, with_batch_counters
from jzad.backbone.resnet import STAGES, ResNetConfig, abstract_resnet_params, get_resnet_config

BN_TABLE = (
    ("weight", "scale"),
    ("bias", "bias"),
    ("running_mean", "mean"),
    ("running_var", "var"),
)
"""BatchNorm2d name -> nnx.BatchNorm name."""

_PREFIXES = ("module.", "model.")
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")
_FC = re.compile(r"^fc\.")


def resnet_table(config: ResNetConfig) -> list[tuple[str, str, str]]:
    """(torch name, Flax path, transform) for every tensor of config; transform is "conv", "linear" or "copy"."""

    def conv_bn(torch_conv, torch_bn, flax_conv, flax_bn):
        rows = [(f"{torch_conv}.weight", f"{flax_conv}/kernel", "conv")]
        rows += [(f"{torch_bn}.{t}", f"{flax_bn}/{f}", "copy") for t, f in BN_TABLE]
        return rows

    rows = conv_bn("conv1", "bn1", "conv1", "bn1")
    cin = config.base_width
    for stage, blocks in enumerate(config.layers):
        name = STAGES[stage]
        for index in range(blocks):
            prefix_t, prefix_f = f"{name}.{index}", f"{name}/{index}"
            for k in (1, 2, 3):
                rows += conv_bn(f"{prefix_t}.conv{k}", f"{prefix_t}.bn{k}", f"{prefix_f}/conv{k}", f"{prefix_f}/bn{k}")
            stride = 1 if stage == 0 or index > 0 else 2
            if stride != 1 or cin != config.out_channels(stage):
                rows += conv_bn(
                    f"{prefix_t}.downsample.0", f"{prefix_t}.downsample.1",
                    f"{prefix_f}/downsample/0", f"{prefix_f}/downsample/1",
                )
            cin = config.out_channels(stage)
    if config.num_classes is not None:
        rows += [("fc.weight", "fc/kernel", "linear"), ("fc.bias", "fc/bias", "copy")]
    return rows


def _as_numpy(value, key: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    try:
        return np.asarray(value)
    except Exception as err:
        raise ValueError(f"state dict key {key!r}: cannot convert {type(value).__name__} to an array") from err


def _normalise_names(state: Mapping) -> dict[str, np.ndarray]:
    """Strip one shared ``module.`` / ``model.`` prefix; drop num_batches_tracked; arrays as numpy."""
    if not isinstance(state, Mapping) or not state:
        raise ValueError("state must be a non-empty mapping of parameter name -> array")
    names = [str(k) for k in state]
    for prefix in _PREFIXES:
        if all(name.startswith(prefix) for name in names):
            names = [name[len(prefix):] for name in names]
            break
    return {
        name: _as_numpy(value, name)
        for name, value in zip(names, state.values())
        if not _IGNORED.search(name)
    }


def _shape(state: dict, key: str, ndim: int) -> tuple:
    if key not in state:
        raise ValueError(f"state dict has no {key!r}: cannot infer the ResNet architecture")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ValueError(f"state dict key {key!r} has shape {shape}, expected {ndim} dimensions")
    return shape


def infer_resnet_config(state: Mapping, num_classes: int | None = None) -> ResNetConfig:
    """The Bottleneck ResNet a (torchvision/timm-named) state dict holds, from its tensor shapes.

    num_classes is left None (fc ignored) unless given. BasicBlock ResNets (18/34) are refused.
    """
    state = _normalise_names(state)
    base_width = _shape(state, "conv1.weight", 4)[0]
    layers = []
    for name in STAGES:
        pattern = re.compile(rf"^{name}\.(\d+)\.")
        indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
        if not indices:
            raise ValueError(f"state dict has no {name}.* tensors: not a 4-stage ResNet")
        layers.append(max(indices) + 1)
    if "layer1.0.conv3.weight" not in state:
        raise ValueError(
            "state dict has no 'layer1.0.conv3.weight': BasicBlock ResNets (resnet18/34) are not supported"
        )
    width = _shape(state, "layer1.0.conv1.weight", 4)[0]
    groups = width // _shape(state, "layer1.0.conv2.weight", 4)[1]
    width_per_group = round(width / groups * 64 / base_width)
    return ResNetConfig(
        layers=tuple(layers),
        width_per_group=width_per_group,
        groups=groups,
        base_width=base_width,
        num_classes=num_classes,
    )


def resnet_from_torch(state: Mapping, config: ResNetConfig | str | None = None) -> tuple[dict, ResNetConfig]:
    """torchvision- or timm-named state dict (name -> array or tensor) -> (Flax params, config).

    With config None the architecture is inferred from the shapes (no classifier). Every tensor the
    config needs must be present with the matching shape; unknown names are errors (``fc.*`` is skipped
    when the config has no classifier).
    """
    state = _normalise_names(state)
    config = infer_resnet_config(state) if config is None else get_resnet_config(config)
    table = resnet_table(config)
    known = {row[0] for row in table}
    for torch_name, expected in expected_torch_shapes(table, abstract_resnet_params(config)).items():
        if torch_name not in state:
            raise ValueError(f"state dict is missing key {torch_name!r} (expected shape {expected})")
        if tuple(state[torch_name].shape) != expected:
            raise ValueError(
                f"state dict key {torch_name!r} has shape {tuple(state[torch_name].shape)}, the config "
                f"expects {expected}"
            )
    unexpected = [
        k for k in state if k not in known and not (config.num_classes is None and _FC.match(k))
    ]
    if unexpected:
        raise ValueError(
            f"state dict has unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} "
            f"for {config}"
        )
    return table_to_flax(state, table), config


def resnet_to_torch(params: dict, config: ResNetConfig | str) -> dict[str, np.ndarray]:
    """Inverse of ``resnet_from_torch``: Flax params -> torchvision-named float32 numpy state dict.

    Includes ``num_batches_tracked`` (0) for every BatchNorm so the dict loads with strict=True.
    """
    return with_batch_counters(table_to_torch(params, resnet_table(get_resnet_config(config))))
