"""WinCLIP (Jeong et al., CVPR 2023) zero-/few-shot scoring, as anomalib's implementation computes it.

Stages, pure functions over arrays with a frozen ``WinCLIPConfig``:
- ``prompt_ensemble`` / ``text_embeddings``: the compositional prompt ensemble (7 normal and 4 anomalous
  state words x 21 templates, one template listed twice so it weighs double; prompts state-major; the
  object name verbatim), encoded with the CLIP text tower; per class the mean of the raw (unnormalised)
  embeddings -> (2, D), row 0 normal, row 1 anomalous.
- ``winclip_features``: one batched vision pass per image plus, for every window scale s, one pass per
  s x s window (stride 1, row-major by top-left corner, tokens row-major inside) over [class token +
  the window's tokens], each token keeping its own position embedding; all windows of all images run in
  one jitted call with sequences of 1 + s*s tokens. Gives image embeddings, window embeddings per scale
  and the ln_post'ed (not projected) patch tokens.
- ``class_scores``: softmax(cos / temperature) over (normal, anomalous), the anomalous probability.
- ``harmonic_aggregation``: each patch gets the harmonic mean of the scores of the windows covering it.
- ``zero_shot_scores``: image score from the full image's embedding; map = harmonic mean of the image
  score, and the per-scale window maps.
- ``winclip_memory`` / ``few_shot_map``: memories of reference patch tokens and window embeddings (pooled
  over positions and images); per query patch / window min (1 - cos) / 2 to the memory; map = mean of
  the patch map and the harmonic-aggregated window maps.
- ``winclip_scores``: zero-shot, or with a memory (zero-shot + few-shot) / 2 for the map and
  (zero-shot image score + max of the g x g few-shot map) / 2 for the image; maps bilinearly upsampled
  (align_corners=False) from the grid to ``map_size``, no smoothing.

Cosines normalise with eps 1e-12 (torch F.normalize); similarity GEMMs run at the config's precision.

Where jzad differs from anomalib, and why:
- Window passes attend within each window. anomalib batches every window of an image through
  ``visual.transformer`` in the sequence-first layout of older open_clip; open_clip >= 2.26.1 made its
  attention batch-first, so on current open_clip anomalib's pass attends across the windows (the sequence
  axis becomes the window axis) instead of over each window's 1 + s*s tokens. jzad computes the intended
  per-window pass, which is what anomalib computes on the open_clip versions it was written for.
- Few-shot reference images are normalised like the queries (through anomalib's Engine they are resized but
  not normalised, a quirk).

The method seam (``jzad.methods.base``), registered as "winclip" (--shots 0: zero-shot, K > 0: few-shot):
- prep: anomalib's transform, the float image resized straight to the model square with antialiased bicubic
  (``ImagePrep("square_float")``), then CLIP mean/std inside the jitted extractor.
- prepare: the class text embeddings of the category's prompts (the folder name, or --class-name), once.
- extractor: images -> Features(layers=(patch tokens (B, g, g, W),), embeds=image embeddings (B, D),
  extras={"windows": per scale (B, n_s, D)}), the full pass and every window pass in one jitted call.
- fit: the memories of the references (few-shot). score: the zero-shot scores, fused with the few-shot map
  when there is a memory; query images split over the device mesh in fixed chunks (``map_image_chunks``),
  so sharded scores equal unsharded ones bit for bit. maps: bilinear from the g x g grid to the image side.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh, PartitionSpec

from jzad.backbone.clip import embed_patches, encode_text, encode_tokens, encode_windows, vision_head
from jzad.backbone.config import CLIPConfig
from jzad.backbone.preprocess import CLIP_MEAN, CLIP_STD
from jzad.features import Backbone, normalize_pixels
from jzad.kernels.distances import check_precision, dot_nt, l2_normalize
from jzad.kernels.resize import resize_bilinear
from jzad.kernels.sharding import AXIS, device_mesh, num_shards_of
from jzad.methods.base import (
    BackboneRun,
    FeatureRequest,
    Features,
    ImagePrep,
    Method,
    RunContext,
    Scores,
    option_errors,
    register,
)
from jzad.methods.table import method_row

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
"""anomalib's 21 templates; "a jpeg corrupted photo of the {}." is listed twice (kept: it weighs double)."""


@dataclass(frozen=True)
class WinCLIPConfig:
    """WinCLIP settings (hashable: static under jit).

    scales: window sides in patches (anomalib: 2 and 3 on the 15 x 15 grid of ViT-B-16-plus-240 at 240).
    temperature: softmax temperature of the text-image cosines (CLIP's 0.07).
    map_size: side of the output anomaly maps (the input image size, 240).
    dtype: backbone compute dtype, "float32" (highest matmul precision) or "bfloat16".
    precision: similarity GEMMs, "fp32" (exact) or "bf16".
    class_name: the prompts' object word (None: the category name). image_chunk: query images scored together
    in the method's ``score`` (a device's share is padded to a multiple of it).
    """

    scales: tuple[int, ...] = (2, 3)
    temperature: float = 0.07
    map_size: int = 240
    dtype: str = "float32"
    precision: str = "fp32"
    class_name: str | None = None
    image_chunk: int = 4

    def __post_init__(self):
        scales = tuple(self.scales) if isinstance(self.scales, (list, tuple)) else self.scales
        if not isinstance(scales, tuple) or not scales or any(not isinstance(s, int) or s < 1 for s in scales):
            raise ValueError(f"WinCLIPConfig.scales must be a non-empty tuple of positive ints, got {self.scales!r}")
        object.__setattr__(self, "scales", scales)
        if not self.temperature > 0:
            raise ValueError(f"WinCLIPConfig.temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.map_size, int) or self.map_size < 1:
            raise ValueError(f"WinCLIPConfig.map_size must be a positive int, got {self.map_size!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"WinCLIPConfig.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        check_precision(self.precision)
        if self.class_name is not None and (not isinstance(self.class_name, str) or not self.class_name.strip()):
            raise ValueError(f"WinCLIPConfig.class_name must be None or a non-empty string, got {self.class_name!r}")
        if isinstance(self.image_chunk, bool) or not isinstance(self.image_chunk, int) or self.image_chunk < 1:
            raise ValueError(f"WinCLIPConfig.image_chunk must be a positive int, got {self.image_chunk!r}")


class WinCLIPFeatures(NamedTuple):
    """What WinCLIP reads from B images: image (B, D) = ln_post(CLS) @ proj; windows: per scale (B, n_s, D)
    window embeddings; patches (B, g*g, W) ln_post'ed patch tokens, not projected."""

    image: jax.Array
    windows: tuple[jax.Array, ...]
    patches: jax.Array


class WinCLIPMemory(NamedTuple):
    """Few-shot memory of R reference images: patches (R*g*g, W); windows: per scale (R*n_s, D)."""

    patches: jax.Array
    windows: tuple[jax.Array, ...]


def prompt_ensemble(object_name: str) -> tuple[list[str], list[str]]:
    """(normal prompts, anomalous prompts): every template around every state, state-major (7 x 21 = 147 and
    4 x 21 = 84). object_name goes in verbatim (anomalib passes the category name, e.g. "metal_nut")."""
    if not isinstance(object_name, str) or not object_name.strip():
        raise ValueError(f"object_name must be a non-empty string, got {object_name!r}")

    def ensemble(states):
        return [template.format(state.format(object_name)) for state in states for template in TEMPLATES]

    return ensemble(NORMAL_STATES), ensemble(ANOMALOUS_STATES)


def text_embeddings(
    params: dict, clip_config: CLIPConfig, object_name: str, tokenizer=None, dtype: str = "float32"
) -> jax.Array:
    """Class text embeddings (2, D) float32: the mean raw embedding of the normal, then the anomalous prompts.

    tokenizer: None uses the CLIP BPE shipped with jzad (OpenAI / OpenCLIP checkpoints); pass a loaded
    ``Tokenizer`` for a checkpoint with its own files.
    """
    normal, anomalous = prompt_ensemble(object_name)
    embeds = encode_text(params, normal + anomalous, clip_config, dtype, tokenizer)
    return jnp.stack([embeds[: len(normal)].mean(axis=0), embeds[len(normal) :].mean(axis=0)])


def make_windows(grid_size: int, scale: int, stride: int = 1) -> np.ndarray:
    """Sliding windows over a grid_size^2 patch grid: (n, scale*scale) int32 patch indices (row-major),
    windows ordered row-major by their top-left corner, tokens row-major inside each window."""
    if not isinstance(scale, int) or not 1 <= scale <= grid_size:
        raise ValueError(f"window scale must be an int in [1, grid_size={grid_size}], got {scale!r}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"window stride must be a positive int, got {stride!r}")
    index = np.arange(grid_size * grid_size, dtype=np.int32).reshape(grid_size, grid_size)
    starts = range(0, grid_size - scale + 1, stride)
    return np.stack([index[r : r + scale, c : c + scale].reshape(-1) for r in starts for c in starts])


def grid_of(patch_count: int) -> int:
    """The side g of a square patch grid of patch_count = g * g tokens (ValueError otherwise)."""
    grid = int(round(patch_count**0.5))
    if grid * grid != patch_count:
        raise ValueError(f"patch tokens must cover a square grid, got {patch_count} patches")
    return grid


def cosine_similarity(a: jax.Array, b: jax.Array, precision: str = "fp32") -> jax.Array:
    """Cosines between rows: (..., C), (m, C) -> (..., m); vectors normalised with eps 1e-12."""
    flat = l2_normalize(a.reshape(-1, a.shape[-1]).astype(jnp.float32))
    return dot_nt(flat, l2_normalize(b.astype(jnp.float32)), precision).reshape(*a.shape[:-1], b.shape[0])


def class_scores(
    embeddings: jax.Array, text: jax.Array, temperature: float = 0.07, precision: str = "fp32"
) -> jax.Array:
    """Anomalous-class probability softmax(cos(e, text) / temperature)[..., 1]: (..., D), (2, D) -> (...)."""
    return jax.nn.softmax(cosine_similarity(embeddings, text, precision) / temperature, axis=-1)[..., 1]


def covering_windows(windows: np.ndarray, grid_size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of the grid_size^2 patches, the windows that contain it: (index (g*g, c) int32 in ascending
    window order, padded with n, the number of windows; count (g*g,) float32)."""
    windows = np.asarray(windows)
    lists = [[] for _ in range(grid_size * grid_size)]
    for number, window in enumerate(windows):
        for patch in sorted(set(window.tolist())):
            lists[patch].append(number)
    width = max(1, max(len(found) for found in lists))
    index = np.full((len(lists), width), len(windows), np.int32)
    for patch, found in enumerate(lists):
        index[patch, : len(found)] = found
    return index, np.array([len(found) for found in lists], np.float32)


def harmonic_aggregation(window_scores: jax.Array, windows: np.ndarray, grid_size: int) -> jax.Array:
    """Window scores (B, n) -> patch map (B, g, g): per patch, count / sum(1 / s) over the windows covering it.

    A zero window score makes its patches 0 and an uncovered patch is 0 (anomalib's nan_to_num). windows:
    the (n, k) patch indices of ``make_windows``. A gather, summed in window order (deterministic).
    """
    windows = np.asarray(windows)
    batch, count = window_scores.shape
    if windows.ndim != 2 or windows.shape[0] != count:
        raise ValueError(f"windows must be (n={count}, k) patch indices, got shape {windows.shape}")
    index, cover = covering_windows(windows, grid_size)
    inverse = 1.0 / jnp.asarray(window_scores, jnp.float32)
    inverse = jnp.concatenate([inverse, jnp.zeros((batch, 1), jnp.float32)], axis=1)
    sums = jnp.sum(inverse[:, index], axis=-1)
    scores = jnp.nan_to_num(cover / sums, nan=0.0, posinf=0.0)
    return scores.reshape(batch, grid_size, grid_size)


def _check_scales(config: WinCLIPConfig, grid: int) -> None:
    if max(config.scales) > grid:
        raise ValueError(f"WinCLIPConfig.scales {config.scales} do not fit the {grid} x {grid} patch grid")


def _features(params, images, clip_config: CLIPConfig, config: WinCLIPConfig) -> WinCLIPFeatures:
    grid = clip_config.vision.grid_size
    tokens = embed_patches(params, images, clip_config, config.dtype)
    out = encode_tokens(params, tokens, clip_config, config.dtype)
    image = vision_head(params, out[:, 0], clip_config, True, config.dtype)
    patches = vision_head(params, out[:, 1:], clip_config, False, config.dtype)
    windows = tuple(
        encode_windows(params, tokens, make_windows(grid, s), clip_config, config.dtype) for s in config.scales
    )
    return WinCLIPFeatures(image, windows, patches)


_features_jit = jax.jit(_features, static_argnames=("clip_config", "config"))


def winclip_features(
    params: dict, images: jax.Array, clip_config: CLIPConfig, config: WinCLIPConfig = WinCLIPConfig()
) -> WinCLIPFeatures:
    """Image, window and patch features of normalised images (B, S, S, 3) in one jitted call.

    S is clip_config.vision.image_size (240 for ViT-B-16-plus-240: a 15 x 15 grid, 196 windows of 2 x 2
    and 169 of 3 x 3). Window passes run on 1 + s*s tokens each, every window of every image batched.
    """
    _check_scales(config, clip_config.vision.grid_size)
    return _features_jit(params, images, clip_config=clip_config, config=config)


def winclip_memory(reference: WinCLIPFeatures) -> WinCLIPMemory:
    """Few-shot memory from the features of R normal reference images: every patch token and every window
    embedding, pooled over positions and images."""
    return WinCLIPMemory(
        reference.patches.reshape(-1, reference.patches.shape[-1]),
        tuple(w.reshape(-1, w.shape[-1]) for w in reference.windows),
    )


def visual_association(embeddings: jax.Array, memory: jax.Array, precision: str = "fp32") -> jax.Array:
    """min over the memory of (1 - cos) / 2: (B, M, C), (R, C) -> (B, M)."""
    return (1.0 - jnp.max(cosine_similarity(embeddings, memory, precision), axis=-1)) / 2.0


def zero_shot_scores(
    features: WinCLIPFeatures, text: jax.Array, config: WinCLIPConfig = WinCLIPConfig()
) -> tuple[jax.Array, jax.Array]:
    """(image scores (B,), zero-shot map (B, g, g)): the map is the harmonic mean of the image score and the
    harmonic-aggregated window scores of every scale."""
    grid = grid_of(features.patches.shape[1])
    image = class_scores(features.image, text, config.temperature, config.precision)
    inverse = 1.0 / image[:, None, None]
    for scale, window_embeds in zip(config.scales, features.windows, strict=True):
        scores = class_scores(window_embeds, text, config.temperature, config.precision)
        inverse = inverse + 1.0 / harmonic_aggregation(scores, make_windows(grid, scale), grid)
    return image, (len(config.scales) + 1) / inverse


def few_shot_map(
    features: WinCLIPFeatures, memory: WinCLIPMemory, config: WinCLIPConfig = WinCLIPConfig()
) -> jax.Array:
    """Few-shot map (B, g, g): mean of the patch-token association map and, per scale, the harmonic
    aggregation of the window associations."""
    grid = grid_of(features.patches.shape[1])
    batch = features.patches.shape[0]
    maps = [visual_association(features.patches, memory.patches, config.precision).reshape(batch, grid, grid)]
    for scale, window_embeds, window_memory in zip(config.scales, features.windows, memory.windows, strict=True):
        scores = visual_association(window_embeds, window_memory, config.precision)
        maps.append(harmonic_aggregation(scores, make_windows(grid, scale), grid))
    return jnp.mean(jnp.stack(maps), axis=0)


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) weights of 1-D linear interpolation with half-pixel centres, as torch's bilinear with
    align_corners=False: source x = (i + 0.5) in/out - 0.5 clamped at 0, right neighbour clamped."""
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    left = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    right = np.minimum(left + 1, in_size - 1)
    frac = source - left
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.arange(out_size), left), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), right), frac)
    return weights.astype(np.float32)


def upsample_maps(maps: jax.Array, size: int) -> jax.Array:
    """Bilinear (align_corners=False) upsampling (B, g, g) -> (B, size, size), as two small matmuls."""
    weights = jnp.asarray(bilinear_matrix(size, maps.shape[-1]))
    return jnp.einsum("Hh,bhw,Ww->bHW", weights, maps, weights, precision=jax.lax.Precision.HIGHEST)


def winclip_scores(
    features: WinCLIPFeatures,
    text: jax.Array,
    memory: WinCLIPMemory | None = None,
    config: WinCLIPConfig = WinCLIPConfig(),
) -> tuple[jax.Array, jax.Array]:
    """(image scores (B,), anomaly maps (B, map_size, map_size)) of query features.

    text: (2, D) from ``text_embeddings``. memory: None for zero-shot; with a ``winclip_memory`` the map is
    (zero-shot + few-shot) / 2 and the image score (zero-shot image score + max of the few-shot grid map) / 2.
    A thin call into the method's one scoring program (``winclip_body``), then the upsampling; works under jit.
    """
    scores, _ = METHOD.score(config, WinCLIPState(text, memory), as_features(features))
    return scores.image_scores, upsample_maps(scores.patch_scores, config.map_size)


# ------------------------------------------------------------------------------------------ method seam


class WinCLIPState(NamedTuple):
    """Fitted WinCLIP: text (2, D) class embeddings of the category's prompts; memory: the references'
    ``WinCLIPMemory`` (few-shot), or None (zero-shot)."""

    text: jax.Array
    memory: WinCLIPMemory | None = None


def as_features(features: WinCLIPFeatures) -> Features:
    """WinCLIPFeatures -> the seam's Features: layers (patch tokens (B, g, g, W),), embeds (B, D) image
    embeddings, extras {"windows": per scale (B, n_s, D)}."""
    batch, count, width = features.patches.shape
    grid = grid_of(count)
    return Features((features.patches.reshape(batch, grid, grid, width),), features.image,
                    {"windows": tuple(features.windows)})


def winclip_view(features: Features) -> WinCLIPFeatures:
    """The seam's Features (from ``winclip_extractor``) -> WinCLIPFeatures."""
    windows = features.extras.get("windows") if isinstance(features.extras, dict) else None
    if windows is None or features.embeds is None:
        raise ValueError("WinCLIP needs window and image embeddings: extract the images with winclip_extractor")
    patches = features.layers[0]
    return WinCLIPFeatures(features.embeds, tuple(windows), patches.reshape(patches.shape[0], -1, patches.shape[-1]))


@partial(jax.jit, static_argnames=("clip_config", "config"))
def _extract(params, images, *, clip_config, config):
    pixels = normalize_pixels(images, CLIP_MEAN, CLIP_STD)
    return as_features(_features(params, pixels, clip_config, config))


def winclip_extractor(config: WinCLIPConfig, backbone: Backbone):
    """images (B, S, S, 3), uint8 or float [0, 255] (``ImagePrep("square_float")``) -> Features, one jitted call:
    CLIP mean/std inside jit, the full pass and every window pass of every image (``winclip_features``)."""
    clip_config = backbone.config
    if backbone.family != "clip" or not isinstance(clip_config, CLIPConfig):
        raise ValueError(f"WinCLIP runs on a CLIP backbone, got {backbone.family!r} ({backbone.name})")
    _check_scales(config, clip_config.vision.grid_size)
    params, size = backbone.params, clip_config.vision.image_size

    def extract(images):
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"{backbone.name}: expected images (B, {size}, {size}, 3), got {tuple(images.shape)}")
        return _extract(params, images, clip_config=clip_config, config=config)

    return extract


def object_name(config: WinCLIPConfig, category: str) -> str:
    """The object word of the prompts: --class-name, else the category folder name verbatim."""
    return config.class_name or category


def winclip_prepare(config: WinCLIPConfig, backbone: Backbone, category: str) -> jax.Array:
    """Class text embeddings (2, D) of the category's prompt ensemble, with the backbone's text tower (once
    per category): the mean raw embedding of the normal, then of the anomalous prompts."""
    if backbone.encode_prompts is None:
        raise ValueError(f"WinCLIP embeds text prompts: {backbone.name} was loaded without its text tower")
    normal, anomalous = prompt_ensemble(object_name(config, category))
    embeds = backbone.encode_prompts(normal + anomalous)
    return jnp.stack([embeds[: len(normal)].mean(axis=0), embeds[len(normal) :].mean(axis=0)])


def winclip_fit(config: WinCLIPConfig, references: Features | None = None, mesh: Mesh | None = None,
                prepared=None) -> WinCLIPState:
    """WinCLIPState from the prepared text embeddings and, few-shot, the references' memory."""
    del mesh
    if prepared is None:
        raise ValueError("WinCLIP needs the text embeddings from winclip_prepare (the method's prepare step)")
    memory = None if references is None else winclip_memory(winclip_view(references))
    return WinCLIPState(jnp.asarray(prepared, jnp.float32), memory)


def map_image_chunks(fn, config, mesh: Mesh | None, chunk: int, tree, *shared):
    """fn(config, chunk of tree, *shared) -> pytree of (chunk, ...) arrays, over the images (leading axis) of
    tree, in fixed chunks of ``chunk`` images (the last one padded with copies of the first image).

    fn is a module-level function and config its static settings. Called on arrays, every chunk runs the same
    compiled single-device program (``_one_chunk``), chunks dealt out to mesh's devices in contiguous blocks
    (None: one device) and dispatched asynchronously, so a row's arithmetic never depends on the shard count:
    sharded results equal unsharded ones bit for bit. Called under jit (traced arrays), the chunks run in the
    caller's program, split over mesh with ``shard_map`` (equal to float rounding).
    """
    n = jax.tree.leaves(tree)[0].shape[0]
    mesh = device_mesh(1) if mesh is None else mesh
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((tree, shared))):
        share = -(-(-(-n // num_shards_of(mesh))) // chunk) * chunk
        out = _sharded_chunks(_pad_images(tree, share * num_shards_of(mesh)), shared, fn, config, mesh, chunk)
        return jax.tree.map(lambda a: a[:n], out)
    count = -(-n // chunk)
    padded = _pad_images(tree, count * chunk)
    devices = list(mesh.devices.flat)
    operands = [jax.device_put(shared, device) for device in devices]
    outs = []
    for index in range(count):
        device = index * len(devices) // count
        part = jax.device_put(jax.tree.map(lambda a: a[index * chunk:(index + 1) * chunk], padded), devices[device])
        outs.append(jax.device_put(_one_chunk(part, operands[device], fn=fn, config=config), devices[0]))
    return jax.tree.map(lambda *parts: jnp.concatenate(parts)[:n], *outs)


def _pad_images(tree, total: int):
    def pad(a):
        n = a.shape[0]
        return jnp.concatenate([a, jnp.broadcast_to(a[:1], (total - n,) + a.shape[1:])]) if total > n else a

    return jax.tree.map(pad, tree)


@partial(jax.jit, static_argnames=("fn", "config"))
def _one_chunk(part, shared, *, fn, config):
    return fn(config, part, *shared)


def _sharded_chunks(tree, shared, fn, config, mesh: Mesh, chunk: int):
    share = jax.tree.leaves(tree)[0].shape[0] // num_shards_of(mesh)

    def per_device(block, operands):
        chunks = jax.tree.map(lambda a: a.reshape(share // chunk, chunk, *a.shape[1:]), block)
        out = jax.lax.map(lambda part: fn(config, part, *operands), chunks)
        return jax.tree.map(lambda a: a.reshape(share, *a.shape[2:]), out)

    rows = PartitionSpec(AXIS)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(rows, PartitionSpec()), out_specs=rows,
                         check_vma=False)(tree, shared)


def fuse_scores(zero_shot: tuple[jax.Array, jax.Array], few_map: jax.Array) -> tuple[jax.Array, jax.Array]:
    """anomalib's few-shot fusion: (zero-shot image (B,), map (B, g, g)) and a few-shot map (B, g, g) ->
    (image (zero-shot + max few-shot) / 2, map (zero-shot + few-shot) / 2)."""
    image, maps = zero_shot
    return (image + jnp.max(few_map, axis=(1, 2))) / 2.0, (maps + few_map) / 2.0


def _zero_shot_chunk(config, part, text):
    return zero_shot_scores(part, text, config)


def _few_shot_chunk(config, part, memory):
    return few_shot_map(part, memory, config)


def zero_shot_stage(config: WinCLIPConfig, features: WinCLIPFeatures, text: jax.Array, mesh=None):
    """``zero_shot_scores`` over query images split over mesh -> (image (N,), map (N, g, g))."""
    return map_image_chunks(_zero_shot_chunk, config, mesh, config.image_chunk, features, text)


def few_shot_stage(config: WinCLIPConfig, features: WinCLIPFeatures, memory: WinCLIPMemory, mesh=None):
    """``few_shot_map`` over query images split over mesh -> (N, g, g)."""
    return map_image_chunks(_few_shot_chunk, config, mesh, config.image_chunk, features, memory)


def _fuse_with_few_shot(config: WinCLIPConfig, zero, features: WinCLIPFeatures, memory: WinCLIPMemory, mesh):
    return fuse_scores(zero, few_shot_stage(config, features, memory, mesh))


def winclip_body(config: WinCLIPConfig, state: WinCLIPState, queries: Features, mesh: Mesh | None, run):
    """WinCLIP on query features -> (Scores(grid maps (N, g, g), image scores (N,)), state), stages through
    ``run``: "zero_shot", then (few-shot) "few_shot" (the memory association and the fusion)."""
    features = winclip_view(queries)
    zero = run("zero_shot", zero_shot_stage, config, features, state.text, mesh)
    if state.memory is None:
        return Scores(zero[1], zero[0]), state
    image, maps = run("few_shot", _fuse_with_few_shot, config, zero, features, state.memory, mesh)
    return Scores(maps, image), state


def winclip_maps(config: WinCLIPConfig, patch_scores: jax.Array, size) -> jax.Array:
    """Anomaly maps at image resolution: bilinear (align_corners=False) from the grid, no smoothing."""
    del config
    return resize_bilinear(patch_scores, size)


BACKBONE_PRESETS = {"ViT-B-16-plus-240": BackboneRun(image_size=240, activation="gelu")}
"""WinCLIP's published configuration: OpenCLIP ViT-B-16-plus-240 at 240 px (15 x 15 grid), exact GELU. Other
CLIP backbones run at their native size and activation."""


def backbone_run(architecture: str | None) -> BackboneRun:
    """WinCLIP's run settings for a backbone architecture name (WinCLIP+ shares them)."""
    return BACKBONE_PRESETS.get(architecture or "", BackboneRun())


def image_prep(config, image_size: int) -> ImagePrep:
    """anomalib's WinCLIP transform: the float image resized straight to the model square, antialiased bicubic."""
    return ImagePrep("square_float")


def class_name(text: str) -> str:
    """--class-name: a non-empty object word for the prompts (argparse type)."""
    if not text.strip():
        raise ValueError("expected a non-empty object name such as 'metal nut'")
    return text


def winclip_configure(values: dict, context: RunContext) -> WinCLIPConfig:
    """WinCLIPConfig for a run: maps at the model input size, compute dtype and GEMM precision from
    --precision, the prompts' object word from --class-name."""
    precision = values.get("precision", "fp32")
    with option_errors("winclip options"):
        return WinCLIPConfig(map_size=context.image_size, dtype="bfloat16" if precision == "bf16" else "float32",
                             precision=precision, class_name=values.get("class_name"))


METHOD = register(Method(
    name="winclip",
    score_units="anomaly score (0-1)",
    summary=method_row("winclip").summary,
    config_type=WinCLIPConfig,
    pools=False,
    few_shot="optional",
    options=method_row("winclip").options,
    request=lambda config: FeatureRequest(embedding=True),
    fit=winclip_fit,
    body=winclip_body,
    configure=winclip_configure,
    maps=winclip_maps,
    backbone_run=backbone_run,
    default_backbone="vit-b-16-plus-240",
    demo_backbone="random-vit-b-16-plus-240",
    stages=("zero_shot", "few_shot"),
    tiny_backbone="random-tiny-text",
    prep=image_prep,
    prepare=winclip_prepare,
    extractor=winclip_extractor,
    needs_text=True,
    multi_process=True,
))
