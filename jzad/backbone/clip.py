"""CLIP in flax.nnx (vision and text towers), with pure jitted entry points over a params tree.

The modules mirror OpenAI's CLIP so the port is a one-to-one name table (``jzad.backbone.port``):
``visual.conv1 -> visual/conv1``, ``transformer.resblocks.i -> blocks/i`` and so on. Users never hold a
module: parameters live in a plain nested dict (``init_clip`` / the porters return one) and the jitted
functions ``encode_image`` / ``encode_text`` rebuild the module from a cached graph definition at trace
time, so they are pure (params in, arrays out) and retrace only when a static argument or shape changes.

Beside ``encode_image``, the vision tower is open in stages for methods that run it on token subsets
(WinCLIP's windows): ``embed_patches`` (tokens before ln_pre), ``encode_tokens`` (ln_pre + blocks on any
token sequences), ``vision_head`` (ln_post and proj on any token) and ``encode_windows`` (all windows of
all images in one batched pass).

Residual stream convention (same as OpenAI and Hugging Face ``hidden_states``): x_0 = ln_pre(patch tokens
with CLS + position embeddings); x_i = block_i(x_{i-1}). Tap i (1-based) is x_i, CLS included, no ln_post.
The image embedding is ln_post(x_L[:, 0]) @ proj, not normalised.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jzad.backbone.config import CLIPConfig, TextConfig, VisionConfig, default_taps
from jzad.backbone.nnx_params import (
    COMPUTE_DTYPES, abstract_params_of, check_compute_dtype, compute_precision, merged_module
)


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
    """Multi-head self-attention with a fused q|k|v projection (OpenAI's in_proj), optionally causal.

    implementation: "einsum" (explicit logits, float32 softmax) or "xla" / "cudnn", passed to
    ``jax.nn.dot_product_attention`` (cuDNN's fused kernel takes bfloat16 or float16 only).
    """

    def __init__(self, width: int, heads: int, causal: bool, implementation: str = "einsum"):
        self.qkv = nnx.Linear(width, 3 * width, kernel_init=_ZEROS, rngs=_RNGS)
        self.out = nnx.Linear(width, width, kernel_init=_ZEROS, rngs=_RNGS)
        self.heads = heads
        self.causal = causal
        self.implementation = implementation

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        if self.implementation != "einsum":
            if self.implementation == "cudnn" and x.dtype not in (jnp.bfloat16, jnp.float16):
                raise ValueError(f"attention 'cudnn' computes in bfloat16 or float16 only, got {x.dtype}; "
                                 "use dtype bfloat16 or attention 'xla'")
            qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, head_dim)
            out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=self.causal,
                                               implementation=self.implementation)
            return self.out(out.reshape(batch, tokens, width))
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

    def __init__(self, width, heads, mlp_dim, activation, eps, causal, attention="einsum"):
        self.ln_1 = nnx.LayerNorm(width, epsilon=eps, rngs=_RNGS)
        self.attn = Attention(width, heads, causal, attention)
        self.ln_2 = nnx.LayerNorm(width, epsilon=eps, rngs=_RNGS)
        self.mlp = MLP(width, mlp_dim, activation)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def residual_blocks(tower: VisionConfig | TextConfig, activation: str, eps: float, causal: bool,
                    attention: str) -> nnx.List:
    """The tower's ``layers`` residual blocks (causal in the text tower), as both towers stack them."""
    return nnx.List(
        [
            ResidualBlock(tower.width, tower.heads, tower.mlp_dim, activation, eps, causal, attention)
            for _ in range(tower.layers)
        ]
    )


class VisionTransformer(nnx.Module):
    """OpenAI's VisionTransformer: conv1 patches, CLS, position embeddings, ln_pre, blocks, ln_post, proj."""

    def __init__(self, config: VisionConfig, embed_dim: int | None, activation: str, eps: float,
                 attention: str = "einsum"):
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
        self.blocks = residual_blocks(config, activation, eps, False, attention)
        self.ln_post = nnx.LayerNorm(width, epsilon=eps, rngs=_RNGS)
        self.proj = nnx.data(None if embed_dim is None else nnx.Param(jnp.zeros((width, embed_dim))))

    def embed(self, images: jax.Array) -> jax.Array:
        """images (B, S, S, 3) -> tokens (B, 1 + g*g, W): [CLS, patches row-major] + position embeddings,
        before ln_pre."""
        x = self.conv1(images)
        batch, width = x.shape[0], x.shape[-1]
        x = x.reshape(batch, -1, width)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (batch, 1, width))
        return jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(x.dtype)

    def transform(self, x: jax.Array, taps: tuple[int, ...] = (), last: int | None = None):
        """ln_pre then blocks 1..last (default all) over any token sequences x (B, T, W).

        Returns (x_last (B, T, W), tuple of the tapped block outputs in taps order)."""
        x = self.ln_pre(x)
        last = len(self.blocks) if last is None else last
        outputs = {}
        for index in range(last):
            x = self.blocks[index](x)
            if index + 1 in taps:
                outputs[index + 1] = x
        return x, tuple(outputs[t] for t in taps)

    def head(self, x: jax.Array, project: bool = True) -> jax.Array:
        """ln_post on tokens x (..., W), then @ proj when project and the model has one -> (..., D)."""
        x = self.ln_post(x)
        if project and self.proj is not None:
            x = x @ self.proj[...].astype(x.dtype)
        return x

    def __call__(self, images: jax.Array, taps: tuple[int, ...], with_embedding: bool):
        """images (B, S, S, 3) -> (taps: tuple of (B, 1 + g*g, W), embedding (B, D) or None)."""
        last = len(self.blocks) if with_embedding else max(taps)
        x, outputs = self.transform(self.embed(images), taps, last)
        embedding = self.head(x[:, 0]) if with_embedding else None
        return outputs, embedding


class TextTransformer(nnx.Module):
    """OpenAI's text tower: token + position embeddings, causal blocks, ln_final, EOT pooling, projection."""

    def __init__(self, config: TextConfig, embed_dim: int | None, activation: str, eps: float,
                 attention: str = "einsum"):
        width = config.width
        self.config = config
        self.token_embedding = nnx.Embed(config.vocab_size, width, embedding_init=_ZEROS, rngs=_RNGS)
        self.positional_embedding = nnx.Param(jnp.zeros((config.context_length, width)))
        self.blocks = residual_blocks(config, activation, eps, True, attention)
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
        self.visual = VisionTransformer(config.vision, config.embed_dim, config.activation, eps, config.attention)
        if config.text is not None:
            self.text = TextTransformer(config.text, config.embed_dim, config.activation, eps, config.attention)
            self.logit_scale = nnx.Param(jnp.full((), jnp.log(1 / 0.07), dtype=jnp.float32))
        else:
            self.text = nnx.data(None)
            self.logit_scale = nnx.data(None)


def abstract_params(config: CLIPConfig) -> dict:
    """The params tree of config as jax.ShapeDtypeStruct leaves (float32), without allocating."""
    return abstract_params_of(CLIP, config)


def _tower(module_type, tower: VisionConfig | TextConfig, config: CLIPConfig, tower_params: dict, dtype: str):
    """A tower of config (VisionTransformer or TextTransformer) holding its params in the compute dtype."""
    return merged_module(tower_params, dtype, module_type, tower, config.embed_dim, config.activation,
                         config.layer_norm_eps, config.attention)


def vision_tower(visual_params: dict, config: CLIPConfig, dtype: str) -> VisionTransformer:
    """The vision tower of config holding ``params["visual"]`` in the compute dtype."""
    return _tower(VisionTransformer, config.vision, config, visual_params, dtype)


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


def check_vision_images(images, vision: VisionConfig, advice: str = ""):
    """images as an array, checked to be (B, S, S, 3) NHWC at the tower's image size S; advice ends the
    error message."""
    if not hasattr(images, "ndim"):
        images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (vision.image_size, vision.image_size, 3):
        raise ValueError(
            f"images must be (B, {vision.image_size}, {vision.image_size}, 3) NHWC for this config, got "
            f"{tuple(images.shape)}{advice}"
        )
    return images


@partial(jax.jit, static_argnames=("config", "taps", "dtype", "with_embedding"))
def _encode_image(visual_params, images, *, config, taps, dtype, with_embedding):
    with compute_precision(dtype):
        model = vision_tower(visual_params, config, dtype)
        outputs, embedding = model(images.astype(COMPUTE_DTYPES[dtype]), taps, with_embedding)
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
    dtype = check_compute_dtype(dtype)
    images = check_vision_images(
        images, vision, "; resize the position embeddings with with_image_size() for another size"
    )
    return _encode_image(
        params["visual"], images, config=config, taps=taps, dtype=dtype, with_embedding=bool(with_embedding)
    )


def _check_tokens(tokens, config: CLIPConfig, name: str = "tokens"):
    if not hasattr(tokens, "ndim"):
        tokens = np.asarray(tokens, dtype=np.float32)
    if tokens.ndim < 2 or tokens.shape[-1] != config.vision.width:
        raise ValueError(
            f"{name} must be (..., {config.vision.width}) vision-width tokens for this config, "
            f"got {tuple(tokens.shape)}"
        )
    return tokens


@partial(jax.jit, static_argnames=("config", "dtype"))
def _embed_patches(visual_params, images, *, config, dtype):
    with compute_precision(dtype):
        model = vision_tower(visual_params, config, dtype)
        return model.embed(images.astype(COMPUTE_DTYPES[dtype])).astype(jnp.float32)


def embed_patches(params: dict, images: jax.Array, config: CLIPConfig, dtype: str = "float32") -> jax.Array:
    """The vision token sequence before ln_pre: (B, S, S, 3) normalised images -> (B, 1 + g*g, W).

    Row 0 is the class embedding, rows 1.. the patch embeddings row-major over the g x g grid; every row
    has its own position embedding added. ``encode_tokens`` continues from here on any subset of rows.
    """
    dtype = check_compute_dtype(dtype)
    images = check_vision_images(images, config.vision)
    return _embed_patches(params["visual"], images, config=config, dtype=dtype)


@partial(jax.jit, static_argnames=("config", "dtype"))
def _encode_tokens(visual_params, tokens, *, config, dtype):
    with compute_precision(dtype):
        model = vision_tower(visual_params, config, dtype)
        return model.transform(tokens.astype(COMPUTE_DTYPES[dtype]))[0].astype(jnp.float32)


def encode_tokens(params: dict, tokens: jax.Array, config: CLIPConfig, dtype: str = "float32") -> jax.Array:
    """ln_pre and every vision block over token sequences (B, T, W) -> (B, T, W), no ln_post.

    tokens are rows of ``embed_patches`` (position embeddings already added), any T and any subset or
    order: a window's pass is [class token, the window's patch tokens]. Attention spans only the T rows.
    """
    tokens = _check_tokens(tokens, config)
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, T, W), got {tuple(tokens.shape)}")
    return _encode_tokens(params["visual"], tokens, config=config, dtype=check_compute_dtype(dtype))


@partial(jax.jit, static_argnames=("config", "project", "dtype"))
def _vision_head(visual_params, tokens, *, config, project, dtype):
    with compute_precision(dtype):
        model = vision_tower(visual_params, config, dtype)
        return model.head(tokens.astype(COMPUTE_DTYPES[dtype]), project).astype(jnp.float32)


def vision_head(
    params: dict, tokens: jax.Array, config: CLIPConfig, project: bool = True, dtype: str = "float32"
) -> jax.Array:
    """ln_post on any vision tokens (..., W), then @ proj when project (and the checkpoint has one) -> (..., D).

    project=False gives the ln_post'ed tokens (..., W), e.g. WinCLIP's patch memories.
    """
    tokens = _check_tokens(tokens, config)
    dtype = check_compute_dtype(dtype)
    return _vision_head(params["visual"], tokens, config=config, project=bool(project), dtype=dtype)


@partial(jax.jit, static_argnames=("config", "dtype"))
def _encode_windows(visual_params, tokens, windows, *, config, dtype):
    batch, count, size = tokens.shape[0], windows.shape[0], windows.shape[1]
    rows = jnp.concatenate([jnp.zeros((count, 1), jnp.int32), windows.astype(jnp.int32) + 1], axis=1)
    sequences = jnp.take(tokens, rows.reshape(-1), axis=1).reshape(batch * count, 1 + size, tokens.shape[-1])
    with compute_precision(dtype):
        model = vision_tower(visual_params, config, dtype)
        out, _ = model.transform(sequences.astype(COMPUTE_DTYPES[dtype]))
        pooled = model.head(out[:, 0])
    return pooled.astype(jnp.float32).reshape(batch, count, -1)


def encode_windows(
    params: dict, tokens: jax.Array, windows, config: CLIPConfig, dtype: str = "float32"
) -> jax.Array:
    """Window embeddings: the class-token output of a vision pass over [CLS + each window's patch tokens].

    tokens: (B, 1 + g*g, W) from ``embed_patches`` (before ln_pre). windows: (n, k) integer patch indices
    (0-based, row-major over the grid), one row per window. Each of the B*n sequences of 1 + k tokens keeps
    its own position embeddings and runs ln_pre, all blocks, ln_post, then the class token @ proj, all in
    one batched call (sequences are never padded to the full length). Returns (B, n, D) float32.
    """
    tokens = _check_tokens(tokens, config)
    grid_tokens = config.vision.grid_size**2
    if tokens.ndim != 3 or tokens.shape[1] != 1 + grid_tokens:
        raise ValueError(
            f"tokens must be (B, {1 + grid_tokens}, W) from embed_patches, got {tuple(tokens.shape)}"
        )
    if not hasattr(windows, "ndim"):
        windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] < 1 or not jnp.issubdtype(windows.dtype, jnp.integer):
        raise ValueError(
            f"windows must be a (n, k) integer array of patch indices, got {windows.dtype} {tuple(windows.shape)}"
        )
    if isinstance(windows, np.ndarray) and (windows.min() < 0 or windows.max() >= grid_tokens):
        raise ValueError(
            f"windows holds patch indices outside [0, {grid_tokens}) for a {config.vision.grid_size}^2 grid"
        )
    return _encode_windows(params["visual"], tokens, windows, config=config, dtype=check_compute_dtype(dtype))


@partial(jax.jit, static_argnames=("config", "dtype"))
def _encode_text(text_params, ids, *, config, dtype):
    with compute_precision(dtype):
        model = _tower(TextTransformer, config.text, config, text_params, dtype)
        return model(ids).astype(jnp.float32)


def _is_texts(value) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(t, str) for t in value)


def encode_text(
    params: dict, ids, config: CLIPConfig, dtype: str = "float32", tokenizer=None
) -> jax.Array:
    """Text embeddings (B, D): EOT-pooled ln_final state @ text_projection, not normalised.

    ids: (B, L) integer token ids, L <= context_length, each row holding its end-of-text token (as
    ``tokenize`` makes them), or a text / list of B texts, tokenized here with tokenizer (default: the CLIP
    BPE shipped with jzad, ``clip_tokenizer()``) and cut to context_length as OpenCLIP does. Pooling follows
    config.text.pooling (the checkpoint source's rule). The rows run only as far as the last pooled position
    (rounded up to 8 tokens): the same embeddings as at full length, since attention is causal.
    """
    if config.text is None:
        raise ValueError("this CLIP config has no text tower (vision-only checkpoint)")
    dtype = check_compute_dtype(dtype)
    if _is_texts(ids):
        from jzad.backbone.tokenizer import clip_tokenizer, tokenize

        tokenizer = tokenizer or clip_tokenizer()
        if tokenizer.vocab_size != config.text.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} tokens but the text tower embeds {config.text.vocab_size}; "
                "pass the checkpoint's own tokenizer"
            )
        ids = tokenize(tokenizer, ids, config.text.context_length, truncate=True)[0]
    if not hasattr(ids, "ndim"):
        ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] > config.text.context_length:
        raise ValueError(
            f"ids must be (B, L) with L <= context_length={config.text.context_length}, got {tuple(ids.shape)}"
        )
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids must be integer token ids, got dtype {ids.dtype}")
    return _encode_text(params["text"], _drop_padding(ids, config.text).astype(jnp.int32), config=config,
                        dtype=dtype)


def _drop_padding(ids, text: TextConfig):
    """ids (B, L) cut after the last pooled (end-of-text) position over the rows, rounded up to 8 tokens (to
    bound recompiles). Attention is causal, so no later position reaches a pooled state: the embeddings are
    those of the full rows. Traced ids are kept whole."""
    if isinstance(ids, jax.core.Tracer):
        return ids
    values = np.asarray(ids)
    pooled = values.argmax(axis=1) if text.pooling == "argmax" else (values == text.eos_token_id).argmax(axis=1)
    return ids[:, : min(values.shape[1], -(-(int(pooled.max()) + 1) // 8) * 8)]
