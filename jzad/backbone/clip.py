"""CLIP in flax.nnx (vision and text towers), with pure jitted entry points over a params tree.

The modules mirror OpenAI's CLIP so the port is a one-to-one name table (``jzad.backbone.port``):
``visual.conv1 -> visual/conv1``, ``transformer.resblocks.i -> blocks/i`` and so on. Users never hold a
module: parameters live in a plain nested dict (``init_clip`` / the porters return one) and the jitted
functions ``encode_image`` / ``encode_text`` rebuild the module from a cached graph definition at trace
time, so they are pure (params in, arrays out) and retrace only when a static argument or shape changes.

Residual stream convention (same as OpenAI and Hugging Face ``hidden_states``): x_0 = ln_pre(patch tokens
with CLS + position embeddings); x_i = block_i(x_{i-1}). Tap i (1-based) is x_i, CLS included, no ln_post.
The image embedding is ln_post(x_L[:, 0]) @ proj, not normalised.
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jzad.backbone.config import CLIPConfig, TextConfig, VisionConfig, default_taps

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def activation_fn(name: str):
    """The MLP activation: "quick_gelu" x * sigmoid(1.702 x) or "gelu" (exact, erf)."""
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return partial(jax.nn.gelu, approximate=False)
    raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {name!r}")


_ZEROS = nnx.initializers.zeros


class _NoRandomness:
    """Stands in for nnx.Rngs: the modules are shape templates filled with zeros/ones (their initialisers
    ignore the key); real values come from ``init_clip`` or a port. Splitting real nnx.Rngs under
    nnx.eval_shape costs seconds for a ViT-L; this costs nothing."""

    def params(self):
        return None


_RNGS = _NoRandomness()


class MLP(nnx.Module):
    """c_fc -> activation -> c_proj on (B, T, W) tokens."""

    def __init__(self, width: int, mlp_dim: int, activation: str):
        self.c_fc = nnx.Linear(width, mlp_dim, kernel_init=_ZEROS, rngs=_RNGS)
        self.c_proj = nnx.Linear(mlp_dim, width, kernel_init=_ZEROS, rngs=_RNGS)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(activation_fn(self.activation)(self.c_fc(x)))


class Attention(nnx.Module):
    """Multi-head self-attention with a fused q|k|v projection (OpenAI's in_proj), optionally causal."""

    def __init__(self, width: int, heads: int, causal: bool):
        self.qkv = nnx.Linear(width, 3 * width, kernel_init=_ZEROS, rngs=_RNGS)
        self.out = nnx.Linear(width, width, kernel_init=_ZEROS, rngs=_RNGS)
        self.heads = heads
        self.causal = causal

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, head_dim)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * head_dim**-0.5, k, preferred_element_type=jnp.float32)
        if self.causal:
            mask = jnp.tril(jnp.ones((tokens, tokens), dtype=bool))
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(batch, tokens, width)
        return self.out(out)


class ResidualBlock(nnx.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""

    def __init__(self, width, heads, mlp_dim, activation, eps, causal):
        self.ln_1 = nnx.LayerNorm(width, epsilon=eps, rngs=_RNGS)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = nnx.LayerNorm(width, epsilon=eps, rngs=_RNGS)
        self.mlp = MLP(width, mlp_dim, activation)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nnx.Module):
    """OpenAI's VisionTransformer: conv1 patches, CLS, position embeddings, ln_pre, blocks, ln_post, proj."""

    def __init__(self, config: VisionConfig, embed_dim: int | None, activation: str, eps: float):
        width = config.width
        self.config = config
        self.conv1 = nnx.Conv(
            3,
            width,
            kernel_size=(config.patch_size, config.patch_size),
            strides=(config.patch_size, config.patch_size),
            padding="VALID",
            use_bias=False,
            kernel_init=_ZEROS,
            rngs=_RNGS,
        )
        self.class_embedding = nnx.Param(jnp.zeros((width,)))
        self.positional_embedding = nnx.Param(jnp.zeros((config.num_tokens, width)))
        self.ln_pre = nnx.LayerNorm(width, epsilon=eps, rngs=_RNGS)
        self.blocks = nnx.List(
            [
                ResidualBlock(width, config.heads, config.mlp_dim, activation, eps, False)
                for _ in range(config.layers)
            ]
        )
        self.ln_post = nnx.LayerNorm(width, epsilon=eps, rngs=_RNGS)
        self.proj = nnx.data(None if embed_dim is None else nnx.Param(jnp.zeros((width, embed_dim))))

    def __call__(self, images: jax.Array, taps: tuple[int, ...], with_embedding: bool):
        """images (B, S, S, 3) -> (taps: tuple of (B, 1 + g*g, W), embedding (B, D) or None)."""
        x = self.conv1(images)
        batch, width = x.shape[0], x.shape[-1]
        x = x.reshape(batch, -1, width)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (batch, 1, width))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(x.dtype)
        x = self.ln_pre(x)
        last = len(self.blocks) if with_embedding else max(taps)
        wanted = set(taps)
        outputs = {}
        for index in range(last):
            x = self.blocks[index](x)
            if index + 1 in wanted:
                outputs[index + 1] = x
        embedding = None
        if with_embedding:
            embedding = self.ln_post(x[:, 0])
            if self.proj is not None:
                embedding = embedding @ self.proj[...].astype(embedding.dtype)
        return tuple(outputs[t] for t in taps), embedding


class TextTransformer(nnx.Module):
    """OpenAI's text tower: token + position embeddings, causal blocks, ln_final, EOT pooling, projection."""

    def __init__(self, config: TextConfig, embed_dim: int | None, activation: str, eps: float):
        width = config.width
        self.config = config
        self.token_embedding = nnx.Embed(config.vocab_size, width, embedding_init=_ZEROS, rngs=_RNGS)
        self.positional_embedding = nnx.Param(jnp.zeros((config.context_length, width)))
        self.blocks = nnx.List(
            [
                ResidualBlock(width, config.heads, config.mlp_dim, activation, eps, True)
                for _ in range(config.layers)
            ]
        )
        self.ln_final = nnx.LayerNorm(width, epsilon=eps, rngs=_RNGS)
        self.text_projection = nnx.data(None if embed_dim is None else nnx.Param(jnp.zeros((width, embed_dim))))

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids (B, L) int, L <= context_length -> embedding (B, D)."""
        length = ids.shape[1]
        x = self.token_embedding(ids)
        x = x + self.positional_embedding[...][:length].astype(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        if self.config.pooling == "argmax":
            position = jnp.argmax(ids, axis=-1)
        else:
            position = jnp.argmax(ids == self.config.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(x, position[:, None, None], axis=1)[:, 0]
        if self.text_projection is not None:
            pooled = pooled @ self.text_projection[...].astype(pooled.dtype)
        return pooled


class CLIP(nnx.Module):
    """The whole model: ``visual``, optional ``text`` and ``logit_scale`` (present with a text tower)."""

    def __init__(self, config: CLIPConfig):
        eps = config.layer_norm_eps
        self.visual = VisionTransformer(config.vision, config.embed_dim, config.activation, eps)
        if config.text is not None:
            self.text = TextTransformer(config.text, config.embed_dim, config.activation, eps)
            self.logit_scale = nnx.Param(jnp.full((), jnp.log(1 / 0.07), dtype=jnp.float32))
        else:
            self.text = nnx.data(None)
            self.logit_scale = nnx.data(None)


@lru_cache(maxsize=64)
def _split_abstract(config: CLIPConfig):
    model = nnx.eval_shape(lambda: CLIP(config))
    return nnx.split(model)


@lru_cache(maxsize=64)
def _split_vision(config: CLIPConfig):
    eps = config.layer_norm_eps
    model = nnx.eval_shape(
        lambda: VisionTransformer(config.vision, config.embed_dim, config.activation, eps)
    )
    return nnx.split(model)


@lru_cache(maxsize=64)
def _split_text(config: CLIPConfig):
    eps = config.layer_norm_eps
    model = nnx.eval_shape(
        lambda: TextTransformer(config.text, config.embed_dim, config.activation, eps)
    )
    return nnx.split(model)


def abstract_params(config: CLIPConfig) -> dict:
    """The params tree of config as jax.ShapeDtypeStruct leaves (float32), without allocating."""
    return nnx.to_pure_dict(_split_abstract(config)[1])


def _merge(split, params: dict):
    graphdef, abstract = split
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def _init_rule(path: tuple, config: CLIPConfig) -> tuple[str, float]:
    """OpenAI's initialisation for the leaf at path: ("normal", std), ("ones", 0) or ("zeros", 0)."""
    name, parent = path[-1], path[-2] if len(path) > 1 else ""
    if path == ("logit_scale",):
        return "log_inverse_temperature", 0.0
    if parent.startswith("ln_"):
        return ("ones" if name == "scale" else "zeros"), 0.0
    if name == "bias":
        return "zeros", 0.0
    tower = config.vision if path[0] == "visual" else config.text
    width, depth = tower.width, (2 * tower.layers) ** -0.5
    stds = {
        "qkv": width**-0.5 * depth,
        "out": width**-0.5,
        "c_fc": (2 * width) ** -0.5,
        "c_proj": width**-0.5 * depth,
        "conv1": (3 * config.vision.patch_size**2) ** -0.5,
        "token_embedding": 0.02,
    }
    if parent in stds:
        return "normal", stds[parent]
    if name == "positional_embedding" and path[0] == "text":
        return "normal", 0.01
    return "normal", width**-0.5


def init_clip(config: CLIPConfig, seed: int = 0) -> dict:
    """Random float32 params of config with OpenAI's init scales: a nested dict {"visual", "text", ...}.

    Drawn with NumPy on the host (compiling the equivalent jitted RNG takes seconds for a ViT-B) and put
    on the default device.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        keys = tuple(getattr(k, "key", k) for k in path)
        kind, std = _init_rule(keys, config)
        if kind == "normal":
            return (rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(std))
        if kind == "ones":
            return np.ones(leaf.shape, np.float32)
        if kind == "log_inverse_temperature":
            return np.full(leaf.shape, np.log(1 / 0.07), np.float32)
        return np.zeros(leaf.shape, np.float32)

    return jax.device_put(jax.tree_util.tree_map_with_path(draw, abstract_params(config)))


def check_taps(taps, layers: int) -> tuple[int, ...]:
    """Taps as a tuple of 1-based block indices in [1, layers] (None -> each quarter of the depth)."""
    if taps is None:
        return default_taps(layers)
    try:
        taps = tuple(int(t) for t in taps)
    except TypeError as err:
        raise ValueError(f"taps must be a sequence of 1-based block indices, got {taps!r}") from err
    if not taps or any(t < 1 or t > layers for t in taps):
        raise ValueError(f"taps must be 1-based block indices in [1, {layers}], got {taps}")
    if len(set(taps)) != len(taps):
        raise ValueError(f"taps must not repeat, got {taps}")
    return taps


def _check_dtype(dtype: str) -> str:
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(COMPUTE_DTYPES)}, got {dtype!r}")
    return name


def _cast(tree, dtype):
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, tree)


@partial(jax.jit, static_argnames=("config", "taps", "dtype", "with_embedding"))
def _encode_image(visual_params, images, *, config, taps, dtype, with_embedding):
    compute = COMPUTE_DTYPES[dtype]
    precision = "highest" if dtype == "float32" else "default"
    with jax.default_matmul_precision(precision):
        model = _merge(_split_vision(config), _cast(visual_params, compute))
        outputs, embedding = model(images.astype(compute), taps, with_embedding)
    outputs = tuple(o.astype(jnp.float32) for o in outputs)
    if embedding is not None:
        embedding = embedding.astype(jnp.float32)
    return outputs, embedding


def encode_image(
    params: dict,
    images: jax.Array,
    config: CLIPConfig,
    taps=None,
    dtype: str = "float32",
    with_embedding: bool = True,
):
    """Tapped token maps and the image embedding of normalised images.

    params: the CLIP params tree (only ``params["visual"]`` is read). images: (B, S, S, 3) float32 NHWC,
    normalised with the CLIP mean/std, S == config.vision.image_size (use ``with_image_size`` first for
    another size). taps: 1-based block indices (None: each quarter of the depth). dtype: compute dtype
    "float32" (highest matmul precision) or "bfloat16"; params stay float32 and are cast inside.
    Returns (tuple of (B, 1 + g*g, W) residual-stream maps in taps order, (B, D) embedding
    ln_post(CLS) @ proj, not normalised), both float32; with_embedding=False stops after the deepest tap
    and returns None for the embedding.
    """
    vision = config.vision
    taps = check_taps(taps, vision.layers)
    dtype = _check_dtype(dtype)
    if not hasattr(images, "ndim"):
        images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (vision.image_size, vision.image_size, 3):
        raise ValueError(
            f"images must be (B, {vision.image_size}, {vision.image_size}, 3) NHWC for this config, got "
            f"{tuple(images.shape)}; resize the position embeddings with with_image_size() for another size"
        )
    return _encode_image(
        params["visual"], images, config=config, taps=taps, dtype=dtype, with_embedding=bool(with_embedding)
    )


@partial(jax.jit, static_argnames=("config", "dtype"))
def _encode_text(text_params, ids, *, config, dtype):
    compute = COMPUTE_DTYPES[dtype]
    precision = "highest" if dtype == "float32" else "default"
    with jax.default_matmul_precision(precision):
        model = _merge(_split_text(config), _cast(text_params, compute))
        return model(ids).astype(jnp.float32)


def encode_text(params: dict, ids: jax.Array, config: CLIPConfig, dtype: str = "float32") -> jax.Array:
    """Text embeddings (B, D): EOT-pooled ln_final state @ text_projection, not normalised.

    ids: (B, L) integer token ids, L <= context_length, each row holding its end-of-text token (as
    ``tokenize`` makes them). Pooling follows config.text.pooling (the checkpoint source's rule).
    """
    if config.text is None:
        raise ValueError("this CLIP config has no text tower (vision-only checkpoint)")
    dtype = _check_dtype(dtype)
    if ids.ndim != 2 or ids.shape[1] > config.text.context_length:
        raise ValueError(
            f"ids must be (B, L) with L <= context_length={config.text.context_length}, got {tuple(ids.shape)}"
        )
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids must be integer token ids, got dtype {ids.dtype}")
    return _encode_text(params["text"], ids.astype(jnp.int32), config=config, dtype=dtype)
