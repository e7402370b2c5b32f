"""Checkpoint families: what the weights store needs to know of each kind of backbone, as one table.

A family says how to read its checkpoints into Flax params and a config, how to recognise its state dicts,
how to write its config to a manifest and rebuild it, how to name its architecture and which run settings
(input size, activation, taps) may be recorded at port time. ``FAMILIES`` maps a family name to its row:
"clip" (``jzad.backbone.port``), "resnet" (torchvision / timm ResNets, ``jzad.backbone.resnet_port``) and
"efficientnet" (lukemelas-style EfficientNet-Lite state dicts, ``jzad.backbone.efficientnet_port``) and "dinov2" (DINO and
DINOv2 ViTs: torch hub state dicts, Hugging Face Dinov2 folders / files, ONNX graphs of a Hugging Face Dinov2;
``jzad.backbone.dinov2_port``).
A new backbone family is one more row here and one more loader in ``jzad.features``.

Recognising a raw checkpoint (``port FILE``, ``--weights FILE``) reads only its tensor names (a safetensors
header, a memory-mapped torch archive) and asks each family in order whether the names are its own; "clip"
comes last and takes everything else (its reader has strict checks of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jzad.backbone.clip import abstract_params, check_taps
from jzad.backbone.config import ACTIVATIONS, CLIPConfig, architecture_name, get_architecture
from jzad.backbone.port import (
    LoadedCheckpoint,
    _folder_weight_files,
    _is_torchscript,
    _unwrap,
    check_torch_file,
    import_torch,
    load_checkpoint,
    read_state_dict,
    torch_load_state,
)
from jzad.backbone.resnet import (
    ResNetConfig,
    abstract_resnet_params,
    check_resnet_taps,
    get_resnet_config,
    resnet_architecture_name,
    resnet_config_from_dict,
    resnet_config_to_dict,
)
from jzad.backbone.efficientnet import (
    EfficientNetConfig,
    check_taps as check_efficientnet_taps,
    config_from_dict,
    config_to_dict,
    get_config,
    variant_name,
)
from jzad.backbone.efficientnet import abstract_params as abstract_efficientnet_params
from jzad.backbone.efficientnet_port import claims_efficientnet, efficientnet_from_torch
from jzad.backbone.resnet_port import resnet_from_torch
from jzad.backbone.dinov2 import DinoConfig
from jzad.backbone.dinov2 import abstract_params as abstract_dino_params
from jzad.backbone.dinov2 import architecture_name as dino_architecture_name
from jzad.backbone.dinov2 import check_taps as check_dino_taps
from jzad.backbone.dinov2 import config_from_dict as dino_config_from_dict
from jzad.backbone.dinov2 import config_to_dict as dino_config_to_dict
from jzad.backbone.dinov2 import get_config as get_dino_config
from jzad.backbone.dinov2_port import claims_dino, dino_from_onnx, dino_from_torch, hf_config_heads

RESNET_STRIDE = 32
"""ResNet run sizes are multiples of the deepest stage's stride, so every tapped grid is exact."""


@dataclass(frozen=True)
class WeightsFamily:
    """One family of checkpoints (see the module docstring).

    read(path, arch) -> LoadedCheckpoint (arch: a named architecture to check the tensors against, or None to
    infer it). claims(names) -> whether a state dict with these tensor names is this family's.
    to_dict / from_dict: config <-> manifest dict. abstract_params(config) -> params tree of shapes.
    architecture_name(config) -> name or None. check_architecture(name) -> config (ValueError if unknown).
    native_image_size(config) -> int or None. check_run(config, image_size, activation, taps) -> the run
    settings to record, checked (ValueError naming the setting). describe(config) -> one line for ``port``.
    """

    name: str
    config_type: type
    read: Callable
    claims: Callable
    to_dict: Callable
    from_dict: Callable
    abstract_params: Callable
    architecture_name: Callable
    check_architecture: Callable
    native_image_size: Callable
    check_run: Callable
    describe: Callable


def _checked_size(image_size, step: int, what: str) -> int | None:
    """A run size to record: None, or a positive multiple of ``step`` (``what`` says which, for the error)."""
    if image_size is None:
        return None
    image_size = int(image_size)
    if image_size < step or image_size % step:
        raise ValueError(f"image_size {image_size} must be a positive multiple of {what} {step}")
    return image_size


def _no_activation(activation, kind: str) -> None:
    """Only CLIP records an activation: any other family refuses one."""
    if activation is not None:
        raise ValueError(f"activation {activation!r}: {kind} backbones have no activation option")


def _read_states(path: Path) -> tuple[dict, str | None, list[Path]]:
    """(state dict, source format, files) of a checkpoint file, or of every weight file of a folder merged."""
    files = _folder_weight_files(path) if path.is_dir() else [path]
    state, fmt = {}, None
    for file in files:
        part, fmt = read_state_dict(file)
        state.update(part)
    return state, fmt, files


# ------------------------------------------------------------------------------------------ clip


def _clip_run(config: CLIPConfig, image_size, activation, taps):
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    image_size = _checked_size(image_size, config.vision.patch_size, "the patch size")
    taps = check_taps(taps, config.vision.layers) if taps is not None else None
    return image_size, activation, taps


def _clip_describe(config: CLIPConfig) -> str:
    vision = config.vision
    return (
        f"width {vision.width}, layers {vision.layers}, heads {vision.heads}, patch {vision.patch_size}, native "
        f"{vision.image_size}px, embed {config.embed_dim}, text tower {'yes' if config.text else 'no'}"
    )


# ------------------------------------------------------------------------------------------ resnet

_WRAPPERS = ("module.", "model.")


def _resnet_claims(names: frozenset) -> bool:
    """torchvision / timm ResNet names (optionally under one ``module.`` / ``model.`` prefix)."""
    for prefix in ("",) + _WRAPPERS:
        if {f"{prefix}conv1.weight", f"{prefix}layer1.0.conv1.weight"} <= names:
            return True
    return False


def _resnet_read(path: Path, arch=None) -> LoadedCheckpoint:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state, fmt, files = _read_states(path)
    try:
        params, config = resnet_from_torch(state, arch)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return LoadedCheckpoint(config=config, params=params, source_format=fmt, files=tuple(files),
                            tokenizer_dir=None, source_activation=None)


def _resnet_run(config: ResNetConfig, image_size, activation, taps):
    _no_activation(activation, "ResNet")
    image_size = _checked_size(image_size, RESNET_STRIDE, "a ResNet's deepest stride")
    taps = check_resnet_taps(taps, config) if taps is not None else None
    return image_size, activation, taps


def _resnet_describe(config: ResNetConfig) -> str:
    channels = "/".join(str(config.out_channels(s)) for s in range(4))
    return (
        f"blocks {list(config.layers)}, width_per_group {config.width_per_group}, groups {config.groups}, "
        f"stem {config.base_width}, stage channels {channels}"
    )


# ------------------------------------------------------------------------------------------ efficientnet


def _efficientnet_read(path: Path, arch=None) -> LoadedCheckpoint:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (an EfficientNet checkpoint is one file)")
    state, fmt = read_state_dict(path)
    try:
        params, config = efficientnet_from_torch(state, arch)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return LoadedCheckpoint(config=config, params=params, source_format=fmt, files=(path,), tokenizer_dir=None,
                            source_activation=None)


def _efficientnet_run(config: EfficientNetConfig, image_size, activation, taps):
    _no_activation(activation, "EfficientNet")
    taps = check_efficientnet_taps(taps, config) if taps is not None else None
    coarsest = max(config.tap_stride(t) for t in taps or ("stride16",))
    return _checked_size(image_size, coarsest, "the coarsest tap's stride"), activation, taps


def _efficientnet_describe(config: EfficientNetConfig) -> str:
    return (f"{len(config.blocks)} MBConv blocks, width x{config.width_multiplier}, depth x{config.depth_multiplier}, "
            f"stem {config.stem_channels}, head {config.head_channels}, native {config.image_size}px, "
            f"{config.num_classes} classes")


# ------------------------------------------------------------------------------------------ dinov2


def _dino_read(path: Path, arch=None) -> LoadedCheckpoint:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".onnx":
            params, config = dino_from_onnx(path, arch)
            return LoadedCheckpoint(config=config, params=params, source_format="onnx", files=(path,),
                                    tokenizer_dir=None, source_activation=None)
        state, fmt, files = _read_states(path)
        heads = hf_config_heads(path) if path.is_dir() else None
        params, config = dino_from_torch(state, arch, heads)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return LoadedCheckpoint(config=config, params=params, source_format=fmt, files=tuple(files), tokenizer_dir=None,
                            source_activation=None)


def _dino_run(config: DinoConfig, image_size, activation, taps):
    _no_activation(activation, "DINO / DINOv2")
    image_size = _checked_size(image_size, config.patch_size, "the patch size")
    taps = check_dino_taps(taps, config.depth) if taps is not None else None
    return image_size, activation, taps


def _dino_describe(config: DinoConfig) -> str:
    return (f"{config.version}, width {config.width}, blocks {config.depth}, heads {config.heads}, patch "
            f"{config.patch_size}, {config.ffn} {config.mlp_dim}, registers {config.registers}, native "
            f"{config.image_size}px, position resize offset {config.interpolate_offset}"
            f"{' antialiased' if config.interpolate_antialias else ''}")


FAMILIES: dict[str, WeightsFamily] = {
    "resnet": WeightsFamily(
        name="resnet",
        config_type=ResNetConfig,
        read=_resnet_read,
        claims=_resnet_claims,
        to_dict=resnet_config_to_dict,
        from_dict=resnet_config_from_dict,
        abstract_params=abstract_resnet_params,
        architecture_name=resnet_architecture_name,
        check_architecture=get_resnet_config,
        native_image_size=lambda config: None,
        check_run=_resnet_run,
        describe=_resnet_describe,
    ),
    "efficientnet": WeightsFamily(
        name="efficientnet",
        config_type=EfficientNetConfig,
        read=_efficientnet_read,
        claims=claims_efficientnet,
        to_dict=config_to_dict,
        from_dict=config_from_dict,
        abstract_params=abstract_efficientnet_params,
        architecture_name=variant_name,
        check_architecture=get_config,
        native_image_size=lambda config: config.image_size,
        check_run=_efficientnet_run,
        describe=_efficientnet_describe,
    ),
    "dinov2": WeightsFamily(
        name="dinov2",
        config_type=DinoConfig,
        read=_dino_read,
        claims=claims_dino,
        to_dict=dino_config_to_dict,
        from_dict=dino_config_from_dict,
        abstract_params=abstract_dino_params,
        architecture_name=dino_architecture_name,
        check_architecture=get_dino_config,
        native_image_size=lambda config: config.image_size,
        check_run=_dino_run,
        describe=_dino_describe,
    ),
    "clip": WeightsFamily(
        name="clip",
        config_type=CLIPConfig,
        read=lambda path, arch=None: load_checkpoint(path, arch=arch),
        claims=lambda names: True,
        to_dict=lambda config: config.to_dict(),
        from_dict=CLIPConfig.from_dict,
        abstract_params=abstract_params,
        architecture_name=architecture_name,
        check_architecture=get_architecture,
        native_image_size=lambda config: config.vision.image_size,
        check_run=_clip_run,
        describe=_clip_describe,
    ),
}
"""Family name -> row, in the order ``detect_family`` asks them (clip, the catch-all, last)."""


def get_family(name: str) -> WeightsFamily:
    """The family called name; unknown names raise ValueError listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown checkpoint family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(config) -> WeightsFamily:
    """The family whose config type config is."""
    for family in FAMILIES.values():
        if isinstance(config, family.config_type):
            return family
    raise ValueError(f"no checkpoint family has configs of type {type(config).__name__}")


def tensor_names(path: str | Path) -> frozenset:
    """The tensor names of a checkpoint file or Hugging Face folder, read without loading the tensors where
    the format allows (safetensors header; torch zip archives memory-mapped). TorchScript archives (OpenAI
    CLIP) give the empty set. Unreadable files raise ValueError naming the file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    file = _folder_weight_files(path)[0] if path.is_dir() else path
    if file.suffix == ".json":
        return frozenset()
    if file.suffix == ".onnx":
        from jzad.backbone.dinov2_port import onnx_state

        return frozenset(onnx_state(file))
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), "np") as handle:
                return frozenset(handle.keys())
        except Exception as err:
            raise ValueError(f"cannot read safetensors file {file} (damaged or truncated?): {err}") from err
    if _is_torchscript(file):
        return frozenset()
    check_torch_file(file)
    torch = import_torch(f"reading the PyTorch checkpoint {file}")
    try:
        raw = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy pickles cannot be memory-mapped: a plain load, which names what is wrong
        raw = torch_load_state(file, torch)
    return frozenset(str(k) for k in _unwrap(raw if isinstance(raw, dict) else dict(raw), file))


def detect_family(path: str | Path, arch=None) -> WeightsFamily:
    """The family of a raw checkpoint: the family of ``arch`` when it is a config or a name one family knows,
    else the first family that claims the file's tensor names."""
    if arch is not None and not isinstance(arch, str):
        return family_of(arch)
    if arch is not None:
        known = []
        for family in FAMILIES.values():
            try:
                family.check_architecture(arch)
                known.append(family)
            except ValueError:
                continue
        if len(known) == 1:
            return known[0]
    names = tensor_names(path)
    for family in FAMILIES.values():
        if family.claims(names):
            return family
    raise ValueError(f"{path}: no checkpoint family recognises its tensors")


def read_checkpoint(path: str | Path, arch=None, family: str | None = None) -> LoadedCheckpoint:
    """A local checkpoint file or folder -> LoadedCheckpoint, read by ``family`` (None: ``detect_family``)."""
    chosen = get_family(family) if family is not None else detect_family(path, arch)
    return chosen.read(Path(path).expanduser(), arch)
