"""PyTorch CLIP checkpoints -> Flax params: explicit name tables, shape inference, strict key checks.

Two tables, both invertible and tested both ways:
- ``openai_flax_table``: OpenAI names (also OpenCLIP's) <-> Flax paths in ``jzad.backbone.clip.CLIP``,
  one tensor each, with a layout transform ("copy", "linear": transpose, "conv": OIHW -> HWIO).
- ``HF_VISION_TABLE`` / ``HF_TEXT_TABLE`` / ``HF_BLOCK_TABLE``: Hugging Face CLIP names <-> OpenAI names;
  HF's separate q/k/v projections are stacked into OpenAI's in_proj (rows q, k, v).

Readers (local files only; torch and safetensors imported lazily): Hugging Face folders (config.json +
model.safetensors / pytorch_model.bin, sharded or not), OpenAI's TorchScript .pt archives, plain state
dicts (.pt/.pth/.bin/.safetensors) with OpenAI or HF names, ``module.`` prefixes and ``{"state_dict": ...}``
wrappers. The architecture is inferred from tensor shapes (heads = width // 64 unless a config says
otherwise); a named architecture is checked tensor by tensor; missing or unexpected keys are errors.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jzad.backbone.config import (
    ARCHITECTURES,
    CLIPConfig,
    TextConfig,
    VisionConfig,
    architecture_name,
    get_architecture,
)
from jzad.backbone.conv_port import expected_torch_shapes, table_to_flax, table_to_torch

# ---------------------------------------------------------------- OpenAI <-> Flax

OPENAI_BLOCK_TABLE = (
    ("ln_1.weight", "ln_1/scale", "copy"),
    ("ln_1.bias", "ln_1/bias", "copy"),
    ("attn.in_proj_weight", "attn/qkv/kernel", "linear"),
    ("attn.in_proj_bias", "attn/qkv/bias", "copy"),
    ("attn.out_proj.weight", "attn/out/kernel", "linear"),
    ("attn.out_proj.bias", "attn/out/bias", "copy"),
    ("ln_2.weight", "ln_2/scale", "copy"),
    ("ln_2.bias", "ln_2/bias", "copy"),
    ("mlp.c_fc.weight", "mlp/c_fc/kernel", "linear"),
    ("mlp.c_fc.bias", "mlp/c_fc/bias", "copy"),
    ("mlp.c_proj.weight", "mlp/c_proj/kernel", "linear"),
    ("mlp.c_proj.bias", "mlp/c_proj/bias", "copy"),
)
"""One residual block: OpenAI name suffix, Flax path suffix, transform."""

OPENAI_VISION_TABLE = (
    ("visual.conv1.weight", "visual/conv1/kernel", "conv"),
    ("visual.class_embedding", "visual/class_embedding", "copy"),
    ("visual.positional_embedding", "visual/positional_embedding", "copy"),
    ("visual.ln_pre.weight", "visual/ln_pre/scale", "copy"),
    ("visual.ln_pre.bias", "visual/ln_pre/bias", "copy"),
    ("visual.transformer.resblocks.{i}.", "visual/blocks/{i}/", OPENAI_BLOCK_TABLE),
    ("visual.ln_post.weight", "visual/ln_post/scale", "copy"),
    ("visual.ln_post.bias", "visual/ln_post/bias", "copy"),
    ("visual.proj", "visual/proj", "copy"),
)

OPENAI_TEXT_TABLE = (
    ("token_embedding.weight", "text/token_embedding/embedding", "copy"),
    ("positional_embedding", "text/positional_embedding", "copy"),
    ("transformer.resblocks.{i}.", "text/blocks/{i}/", OPENAI_BLOCK_TABLE),
    ("ln_final.weight", "text/ln_final/scale", "copy"),
    ("ln_final.bias", "text/ln_final/bias", "copy"),
    ("text_projection", "text/text_projection", "copy"),
    ("logit_scale", "logit_scale", "copy"),
)

IGNORED_KEYS = re.compile(
    r"^(input_resolution|context_length|vocab_size|attn_mask|text\.attn_mask|"
    r"(vision_model\.|text_model\.)?embeddings\.position_ids)$"
)
"""Entries that are not weights: OpenAI's TorchScript metadata, OpenCLIP's causal mask buffer, HF buffers."""


def _expand(table, layers: int, include) -> list[tuple[str, str, str]]:
    rows = []
    for torch_name, flax_path, transform in table:
        if isinstance(transform, tuple):
            for i in range(layers):
                for sub_torch, sub_flax, sub_transform in transform:
                    rows.append((torch_name.format(i=i) + sub_torch, flax_path.format(i=i) + sub_flax, sub_transform))
        elif include(torch_name):
            rows.append((torch_name, flax_path, transform))
    return rows


def openai_flax_table(config: CLIPConfig) -> list[tuple[str, str, str]]:
    """The full (OpenAI name, Flax path, transform) table of config, blocks expanded."""
    has_proj = config.embed_dim is not None
    rows = _expand(OPENAI_VISION_TABLE, config.vision.layers, lambda n: has_proj or n != "visual.proj")
    if config.text is not None:
        rows += _expand(OPENAI_TEXT_TABLE, config.text.layers, lambda n: has_proj or n != "text_projection")
    return rows


def _expected_torch_shapes(config: CLIPConfig) -> dict[str, tuple]:
    from jzad.backbone.clip import abstract_params

    return expected_torch_shapes(openai_flax_table(config), abstract_params(config))


def _check_keys(state: dict, expected: list[str], what: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in set(expected) and not IGNORED_KEYS.match(k)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:12]}{' ...' if len(missing) > 12 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:12]}{' ...' if len(unexpected) > 12 else ''}")
        raise ValueError(f"{what}: " + "; ".join(parts) + f" ({len(missing)} missing, {len(unexpected)} unexpected)")


def openai_to_flax(state: dict, config: CLIPConfig, what: str = "checkpoint") -> dict:
    """OpenAI-named state dict (name -> array) -> Flax params tree of config (float32 numpy).

    Every tensor of the table must be present with the shape config implies; anything else that is not a
    known non-weight buffer is an error. Errors name the key and both shapes.
    """
    table = openai_flax_table(config)
    expected = _expected_torch_shapes(config)
    for torch_name, _, _ in table:
        if torch_name in state and tuple(np.shape(state[torch_name])) != expected[torch_name]:
            raise ValueError(
                f"{what}: key {torch_name!r} has shape {tuple(np.shape(state[torch_name]))}, the architecture "
                f"expects {expected[torch_name]}"
            )
    _check_keys(state, [row[0] for row in table], what)
    return table_to_flax(state, table)


def flax_to_openai(params: dict, config: CLIPConfig) -> dict[str, np.ndarray]:
    """Inverse of ``openai_to_flax``: Flax params tree -> OpenAI-named state dict (float32 numpy)."""
    return table_to_torch(params, openai_flax_table(config))


# ---------------------------------------------------------------- Hugging Face <-> OpenAI

HF_BLOCK_TABLE = (
    ("layer_norm1.weight", "ln_1.weight"),
    ("layer_norm1.bias", "ln_1.bias"),
    (("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "attn.in_proj_weight"),
    (("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), "attn.in_proj_bias"),
    ("self_attn.out_proj.weight", "attn.out_proj.weight"),
    ("self_attn.out_proj.bias", "attn.out_proj.bias"),
    ("layer_norm2.weight", "ln_2.weight"),
    ("layer_norm2.bias", "ln_2.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"),
    ("mlp.fc1.bias", "mlp.c_fc.bias"),
    ("mlp.fc2.weight", "mlp.c_proj.weight"),
    ("mlp.fc2.bias", "mlp.c_proj.bias"),
)
"""One encoder layer: HF name suffix (a q, k, v triple is stacked on rows) -> OpenAI name suffix."""

HF_VISION_TABLE = (
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight", "copy"),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding", "copy"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding", "copy"),
    ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight", "copy"),
    ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias", "copy"),
    ("vision_model.encoder.layers.{i}.", "visual.transformer.resblocks.{i}.", HF_BLOCK_TABLE),
    ("vision_model.post_layernorm.weight", "visual.ln_post.weight", "copy"),
    ("vision_model.post_layernorm.bias", "visual.ln_post.bias", "copy"),
    ("visual_projection.weight", "visual.proj", "transpose"),
)

HF_TEXT_TABLE = (
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight", "copy"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding", "copy"),
    ("text_model.encoder.layers.{i}.", "transformer.resblocks.{i}.", HF_BLOCK_TABLE),
    ("text_model.final_layer_norm.weight", "ln_final.weight", "copy"),
    ("text_model.final_layer_norm.bias", "ln_final.bias", "copy"),
    ("text_projection.weight", "text_projection", "transpose"),
    ("logit_scale", "logit_scale", "copy"),
)

_HF_VISION_ONLY_PREFIXES = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
_HF_OPTIONAL = ("visual_projection.weight", "text_projection.weight", "logit_scale")
"""HF tensors a checkpoint may lack (vision-only models carry no projection or temperature)."""


def _hf_rows(layers: dict[str, int], with_text: bool):
    """The HF tables with their blocks expanded, for both directions: (HF keys, OpenAI key, transform,
    in_block) per tensor, vision first. HF keys is one key, or the q, k, v triple stacked into an in_proj;
    transform is "copy" or "transpose"; layers holds the block count of each tower ("vision", "text")."""
    towers = (("vision", HF_VISION_TABLE), ("text", HF_TEXT_TABLE))
    for tower, table in towers if with_text else towers[:1]:
        for hf_name, openai_name, transform in table:
            if not isinstance(transform, tuple):
                yield (hf_name,), openai_name, transform, False
                continue
            for i in range(layers[tower]):
                for hf_sub, openai_sub in transform:
                    subs = hf_sub if isinstance(hf_sub, tuple) else (hf_sub,)
                    hf_keys = tuple(hf_name.format(i=i) + sub for sub in subs)
                    yield hf_keys, openai_name.format(i=i) + openai_sub, "copy", True


def _layer_count(names, pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for n in names if (m := regex.match(n))}
    if indices and indices != set(range(len(indices))):
        raise ValueError(f"block indices matching {pattern!r} are not 0..n-1: {sorted(indices)}")
    return len(indices)


def is_hf_state(state: dict) -> bool:
    """Whether a state dict uses Hugging Face CLIP names."""
    return any(
        k.startswith(("vision_model.", "text_model.")) or k.startswith("embeddings.patch_embedding") for k in state
    )


def _normalise_hf_prefix(state: dict) -> dict:
    """CLIPVisionModel (transformers 5) saves keys without ``vision_model.``; add it back."""
    if any(k.startswith("vision_model.") for k in state):
        return state
    return {("vision_model." + k if k.startswith(_HF_VISION_ONLY_PREFIXES) else k): v for k, v in state.items()}


def hf_to_openai(state: dict, what: str = "checkpoint") -> dict:
    """HF CLIP state dict -> OpenAI-named state dict (numpy). Unknown HF keys are errors."""
    state = _normalise_hf_prefix(state)
    names = list(state)
    layers = {
        "vision": _layer_count(names, r"^vision_model\.encoder\.layers\.(\d+)\."),
        "text": _layer_count(names, r"^text_model\.encoder\.layers\.(\d+)\."),
    }
    out, used = {}, set()
    missing = []
    with_text = any(k.startswith("text_model.") for k in names)
    for hf_keys, openai_name, transform, _ in _hf_rows(layers, with_text):
        absent = [k for k in hf_keys if k not in state]
        if absent:
            if hf_keys[0] not in _HF_OPTIONAL:
                missing += absent
            continue
        used.update(hf_keys)
        arrays = [np.asarray(state[k]) for k in hf_keys]
        array = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
        out[openai_name] = array.T if transform == "transpose" else array
    unexpected = [k for k in names if k not in used and not IGNORED_KEYS.match(k)]
    if missing or unexpected:
        raise ValueError(
            f"{what}: Hugging Face CLIP keys do not match: missing {missing[:12]}, unexpected {unexpected[:12]}"
        )
    return out


def openai_to_hf(state: dict, vision_only_prefix: bool = True) -> dict:
    """OpenAI-named state dict -> HF CLIPModel names (inverse of ``hf_to_openai``; numpy arrays).

    vision_only_prefix=False drops ``vision_model.`` (transformers 5 CLIPVisionModel layout; text absent).
    """
    names = list(state)
    layers = {
        "vision": _layer_count(names, r"^visual\.transformer\.resblocks\.(\d+)\."),
        "text": _layer_count(names, r"^transformer\.resblocks\.(\d+)\."),
    }
    out = {}
    for hf_keys, openai_name, transform, in_block in _hf_rows(layers, "token_embedding.weight" in state):
        if not in_block and openai_name not in state:
            continue
        array = np.asarray(state[openai_name])
        array = array.T if transform == "transpose" else array
        out.update(zip(hf_keys, np.split(array, 3, axis=0) if len(hf_keys) > 1 else (array,)))
    if not vision_only_prefix:
        out = {k.removeprefix("vision_model."): v for k, v in out.items()}
    return {k: np.array(v, order="C") for k, v in out.items()}


# ---------------------------------------------------------------- shape inference


def _heads(width: int, given: int | None, key: str) -> int:
    if given is not None:
        return int(given)
    if width % 64:
        raise ValueError(
            f"cannot infer the attention heads of width {width} (from {key!r}): CLIP uses 64-wide heads but "
            f"{width} is not a multiple of 64; pass the architecture (arch=...)"
        )
    return width // 64


def infer_config(
    state: dict,
    activation: str = "quick_gelu",
    vision_heads: int | None = None,
    text_heads: int | None = None,
    text_pooling: str = "argmax",
    eos_token_id: int = 49407,
    layer_norm_eps: float = 1e-5,
    what: str = "checkpoint",
) -> CLIPConfig:
    """A CLIPConfig read off an OpenAI-named state dict's tensor shapes (heads = width // 64 unless given)."""
    if "visual.conv1.weight" not in state or "visual.positional_embedding" not in state:
        raise ValueError(f"{what}: no CLIP vision tower (visual.conv1.weight / visual.positional_embedding missing)")
    names = list(state)
    conv = np.shape(state["visual.conv1.weight"])
    if len(conv) != 4 or conv[1] != 3 or conv[2] != conv[3]:
        raise ValueError(f"{what}: key 'visual.conv1.weight' has shape {conv}, expected (width, 3, p, p)")
    width, patch = conv[0], conv[2]
    rows = np.shape(state["visual.positional_embedding"])[0] - 1
    grid = int(round(rows**0.5))
    if grid * grid != rows:
        raise ValueError(f"{what}: visual.positional_embedding has {rows + 1} rows, not 1 + a square grid")
    layers = _layer_count(names, r"^visual\.transformer\.resblocks\.(\d+)\.")
    if layers == 0:
        raise ValueError(f"{what}: no vision blocks (visual.transformer.resblocks.*)")
    mlp_key = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    if mlp_key not in state:
        raise ValueError(f"{what}: missing keys ['{mlp_key}']")
    vision = VisionConfig(
        width=int(width),
        layers=layers,
        heads=_heads(int(width), vision_heads, "visual.conv1.weight"),
        patch_size=int(patch),
        image_size=int(grid * patch),
        mlp_dim=int(np.shape(state[mlp_key])[0]),
    )
    embed_dim = int(np.shape(state["visual.proj"])[1]) if "visual.proj" in state else None
    text = None
    if "token_embedding.weight" in state:
        vocab, text_width = np.shape(state["token_embedding.weight"])
        text_mlp = "transformer.resblocks.0.mlp.c_fc.weight"
        if text_mlp not in state or "positional_embedding" not in state:
            raise ValueError(f"{what}: text tower incomplete (missing {text_mlp!r} or 'positional_embedding')")
        text = TextConfig(
            width=int(text_width),
            layers=_layer_count(names, r"^transformer\.resblocks\.(\d+)\."),
            heads=_heads(int(text_width), text_heads, "token_embedding.weight"),
            context_length=int(np.shape(state["positional_embedding"])[0]),
            vocab_size=int(vocab),
            mlp_dim=int(np.shape(state[text_mlp])[0]),
            pooling=text_pooling,
            eos_token_id=int(eos_token_id),
        )
        if "text_projection" in state:
            text_embed = int(np.shape(state["text_projection"])[1])
            if embed_dim is not None and text_embed != embed_dim:
                raise ValueError(
                    f"{what}: visual.proj projects to {embed_dim} but text_projection to {text_embed}"
                )
            embed_dim = text_embed if embed_dim is None else embed_dim
    return CLIPConfig(
        vision=vision, text=text, embed_dim=embed_dim, activation=activation, layer_norm_eps=layer_norm_eps
    )


# ---------------------------------------------------------------- file readers


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A ported checkpoint: config, Flax params (float32 numpy tree) and where it came from."""

    config: CLIPConfig
    params: dict
    source_format: str
    files: tuple[Path, ...]
    tokenizer_dir: Path | None = None
    source_activation: str = "quick_gelu"
    notes: tuple[str, ...] = field(default_factory=tuple)


def _to_numpy(value, key: str, path: Path) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
    raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in archive.namelist())


def _unwrap(obj, path: Path) -> dict:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


TORCH_INSTALL = ("pip install torch==2.13.0 (the CPU build; or the project's extra: pip install -e '.[port]' from "
                 "a clone of jzad)")
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL = 0x80


class MissingDependencyError(ImportError):
    """An optional package a step needs is not installed; the message says what to install."""


def import_torch(purpose: str):
    """The torch module, or MissingDependencyError saying that ``purpose`` needs PyTorch and how to install it."""
    try:
        import torch
    except ImportError as err:
        raise MissingDependencyError(f"{purpose} needs PyTorch, which is not installed here: {TORCH_INSTALL}") from err
    return torch


def check_torch_file(path: Path) -> None:
    """Refuse, naming the file, what cannot be a PyTorch checkpoint: an empty file, or one that is neither a zip
    archive (torch.save since 1.6, TorchScript) nor a pickle (the legacy torch.save format)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ValueError(f"{path} is not a checkpoint: the file is empty")
    if head != ZIP_MAGIC and head[0] != PICKLE_PROTOCOL:
        raise ValueError(f"{path} is not a checkpoint: not a PyTorch (.pt/.pth/.bin), TorchScript or safetensors "
                         f"file (it starts with {head!r})")


def torch_load_state(path: Path, torch):
    """``torch.load(weights_only=True)`` of a state-dict file. A file holding Python objects besides tensors is
    refused as not a state dict (never loaded with arbitrary unpickling, and torch's advice to do so is not
    repeated); other failures name the file as damaged or not a checkpoint."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        if "weights_only" in text or "Weights only" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" (it contains {found.group(1)})" if found else ""
            raise ValueError(
                f"{path} is not a state dict of tensors{what}: jzad reads only tensors and plain containers; save "
                "the weights with torch.save(model.state_dict(), path)"
            ) from None
        reason = f": {type(err).__name__} {text.splitlines()[0] if text else ''}".rstrip()
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (damaged, truncated or another kind of "
                         f"file{reason})") from err


def read_state_dict(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """One weights file -> (name -> float32/int numpy array, format) with format in
    {"safetensors", "torchscript", "torch"}. Damaged or truncated files, files of another kind and pickles of
    objects other than tensors raise ValueError naming the file; a PyTorch file without torch installed raises
    MissingDependencyError saying what to install."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            raw = load_file(str(path))
        except Exception as err:
            if "bfloat16" not in str(err).lower() and "bf16" not in str(err).lower():
                raise ValueError(f"cannot read safetensors file {path} (damaged or truncated?): {err}") from err
            import_torch(f"reading the bfloat16 safetensors file {path}")
            from safetensors.torch import load_file as load_torch

            try:
                raw = load_torch(str(path))
            except Exception as err2:
                raise ValueError(f"cannot read safetensors file {path}: {err2}") from err2
        fmt = "safetensors"
    else:
        check_torch_file(path)
        torch = import_torch(f"reading the PyTorch checkpoint {path}")
        if _is_torchscript(path):
            try:
                raw = torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception as err:
                raise ValueError(f"cannot read TorchScript checkpoint {path} (damaged or truncated?): {err}") from err
            fmt = "torchscript"
        else:
            raw = torch_load_state(path, torch)
            fmt = "torch"
    state = _unwrap(dict(raw) if not isinstance(raw, dict) else raw, path)
    return {k: _to_numpy(v, k, path) for k, v in state.items()}, fmt


HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)


def _folder_weight_files(folder: Path) -> list[Path]:
    for name in HF_WEIGHT_FILES:
        candidate = folder / name
        if candidate.is_file():
            if name.endswith(".index.json"):
                try:
                    index = json.loads(candidate.read_text())
                    shards = sorted(set(index["weight_map"].values()))
                except (ValueError, KeyError) as err:
                    raise ValueError(f"cannot read shard index {candidate}: {err}") from err
                return [folder / shard for shard in shards]
            return [candidate]
    raise FileNotFoundError(f"no weights in {folder}: expected one of {', '.join(HF_WEIGHT_FILES)}")


def _hf_hints(folder: Path) -> dict:
    """Heads, activation, eps and text pooling from a HF config.json (CLIPConfig or CLIPVisionConfig)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return {}
    try:
        data = json.loads(config_file.read_text())
    except ValueError as err:
        raise ValueError(f"cannot parse {config_file}: {err}") from err
    vision = data.get("vision_config") or (data if "hidden_size" in data else {})
    text = data.get("text_config") or {}
    hints = {}
    if "num_attention_heads" in vision:
        hints["vision_heads"] = int(vision["num_attention_heads"])
    if "num_attention_heads" in text:
        hints["text_heads"] = int(text["num_attention_heads"])
    act = vision.get("hidden_act") or text.get("hidden_act")
    if act is not None:
        if act not in ("quick_gelu", "gelu"):
            raise ValueError(f"{config_file}: hidden_act {act!r} is not supported (quick_gelu or gelu)")
        hints["activation"] = act
    if "layer_norm_eps" in vision:
        hints["layer_norm_eps"] = float(vision["layer_norm_eps"])
    eos = text.get("eos_token_id", data.get("eos_token_id"))
    if text and eos is not None:
        hints["text_pooling"] = "argmax" if int(eos) == 2 else "eos"
        hints["eos_token_id"] = int(eos) if int(eos) != 2 else 49407
    return hints


def _arch_and_activation(arch) -> tuple[CLIPConfig | None, str | None]:
    if arch is None:
        return None, None
    if isinstance(arch, str) and arch.lower().endswith("-quickgelu"):
        return get_architecture(arch[: -len("-quickgelu")]).replace(activation="quick_gelu"), "quick_gelu"
    config = get_architecture(arch)
    return config, config.activation


def load_checkpoint(path: str | Path, arch=None, activation: str | None = None) -> LoadedCheckpoint:
    """Port a local CLIP checkpoint (HF folder or weights file) to Flax params, strictly.

    arch: a named architecture (or CLIPConfig) the tensors must match; None infers it from the shapes.
    activation: override; otherwise HF config.json's hidden_act, else the arch's (given, or the named
    architecture whose shapes the inferred config has: ViT-B-16-plus-240 is OpenCLIP's, exact GELU), else
    OpenAI's quick_gelu.
    A checkpoint without a text tower ports as vision-only (config.text None).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    hints, tokenizer_dir = {}, None
    if path.is_dir():
        files = _folder_weight_files(path)
        hints = _hf_hints(path)
        if (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
            tokenizer_dir = path
    else:
        files = [path]
    state, fmt = {}, None
    for file in files:
        part, fmt = read_state_dict(file)
        state.update(part)
    what = str(path)
    if is_hf_state(state):
        state = hf_to_openai(state, what)
        fmt = "huggingface-" + fmt
    arch_config, arch_activation = _arch_and_activation(arch)
    source_activation = hints.pop("activation", None) or arch_activation
    if arch_config is None:
        config = infer_config(state, what=what, **hints)
        named = architecture_name(config)
        source_activation = source_activation or (ARCHITECTURES[named].activation if named else "quick_gelu")
        config = config.replace(activation=activation or source_activation)
    else:
        config = arch_config.replace(activation=activation or source_activation)
        for tower, key in (("vision", "vision_heads"), ("text", "text_heads")):
            arch_tower = getattr(config, tower)
            if key in hints and arch_tower is not None and hints[key] != arch_tower.heads:
                raise ValueError(
                    f"{path / 'config.json'}: {tower} num_attention_heads={hints[key]} but the architecture "
                    f"has {arch_tower.heads} heads"
                )
        if "token_embedding.weight" not in state and config.text is not None:
            config = config.replace(text=None)
        if config.text is not None and "text_pooling" in hints:
            text = TextConfig(
                **{**config.text.__dict__, "pooling": hints["text_pooling"], "eos_token_id": hints["eos_token_id"]}
            )
            config = config.replace(text=text)
        if "layer_norm_eps" in hints:
            config = config.replace(layer_norm_eps=hints["layer_norm_eps"])
    params = openai_to_flax(state, config, what)
    return LoadedCheckpoint(
        config=config,
        params=params,
        source_format=fmt,
        files=tuple(files),
        tokenizer_dir=tokenizer_dir,
        source_activation=source_activation,
    )
