"""``Backbone``: a loaded network that turns uint8 images into the ``Features`` a method asks for.

Pixel normalisation runs inside the jitted forward, so images travel to the device as uint8 (a quarter of the
bytes of float32). ``extract`` runs a backbone over batches of one fixed shape (the last batch padded), so one
program is compiled per run, and concatenates the per-image features on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jzad.features.types import FeatureRequest, Features


@dataclass(frozen=True, eq=False)
class Backbone:
    """A backbone at a fixed input size, taps and compute dtype.

    family: "clip", "resnet" or "efficientnet" (``jzad.features.BACKBONE_FAMILIES``). name: what the user
    asked for. architecture: the named architecture (None for custom shapes). origin: where the weights came
    from. image_size: input side S. patch_size: the stride of the coarsest tap grid (ViT patch size). taps:
    tapped layers. dtype: compute dtype. forward(params, images uint8 (B, S, S, 3), embedding: bool) -> Features,
    jitted with ``embedding`` static. info: details for reports (width, activation, grid, ...).
    encode_prompts: list of str -> (P, D) text embeddings (CLIP loaded with its text tower), else None.
    config: the family's model config (e.g. the CLIPConfig at the run size), for methods that run parts of
    the network themselves.
    """

    family: str
    name: str
    architecture: str | None
    origin: str
    image_size: int
    patch_size: int
    taps: tuple
    dtype: str
    params: dict
    forward: Callable
    info: dict = field(default_factory=dict)
    encode_prompts: Callable | None = None
    config: object = None

    @property
    def random_weights(self) -> bool:
        """Whether the weights are random (demos, benchmarks), not a checkpoint's."""
        return self.origin.startswith("random:")

    def __call__(self, images, request: FeatureRequest = FeatureRequest()) -> Features:
        """uint8 images (B, S, S, 3) -> Features (layers: tuple of (B, h, w, C); embeds (B, D) when asked)."""
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"{self.name}: expected images (B, {self.image_size}, {self.image_size}, 3), got {tuple(images.shape)}"
            )
        return self.forward(self.params, images, bool(request.embedding))

    def describe(self) -> str:
        """One line for the run header: name, weights origin, input size, taps."""
        weights = (f"RANDOM weights ({self.origin}; not pretrained, so scores on real photos are weak)"
                   if self.random_weights else f"weights {self.origin}")
        return f"{self.name} [{self.architecture or 'custom'}] {weights}, {self.image_size} px, taps {list(self.taps)}"


def normalize_pixels(images: jax.Array, mean, std) -> jax.Array:
    """uint8 (or [0, 255] float) NHWC -> float32 (x / 255 - mean) / std, per channel (inside jit)."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def extract(
    forward: Callable[[np.ndarray], Features],
    batches: Iterable[np.ndarray],
    batch_size: int,
    clock,
    on_batch: Callable[[int], None] | None = None,
    rows: int | None = None,
) -> Features:
    """Run ``forward`` (uint8 images -> Features, e.g. a Backbone with its request bound) over an iterable of
    uint8 batches (each at most batch_size images) -> Features of all.

    Every batch is padded to batch_size, so a single shape is compiled; the time of each call is recorded on
    ``clock`` as "extract". on_batch(n) is called after each batch with its real image count. ``rows``: the
    result has exactly this many rows (>= the image count; the rows past the images are zeros), written batch by batch into one buffer at a traced offset, so sets of any size up to
    ``rows`` run the same few programs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if rows is not None:
        return _extract_into(forward, batches, batch_size, clock, on_batch, rows)
    parts = []
    for real, batch in _padded_batches(batches, batch_size):
        out = clock.run("extract", forward, batch)
        parts.append(jax.tree.map(lambda a, n=real: a[:n], out))
        if on_batch is not None:
            on_batch(real)
    if not parts:
        raise ValueError("extract: no images")
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts)


def _padded_batches(batches, batch_size: int):
    """(real image count, the batch zero-padded to batch_size) of each non-empty batch, so one shape compiles;
    a batch over batch_size is an error."""
    for batch in batches:
        real = len(batch)
        if real == 0:
            continue
        if real > batch_size:
            raise ValueError(f"extract: a batch of {real} images exceeds batch_size {batch_size}")
        if real < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - real,) + batch.shape[1:], batch.dtype)])
        yield real, batch


@partial(jax.jit, donate_argnums=(0,))
def _write_rows(buffer, part, offset):
    return jax.tree.map(lambda whole, rows: jax.lax.dynamic_update_slice_in_dim(whole, rows, offset, 0), buffer, part)


@partial(jax.jit, static_argnums=(1,))
def _zeros_like_rows(part, rows: int):
    return jax.tree.map(lambda a: jnp.zeros((rows,) + a.shape[1:], a.dtype), part)


@partial(jax.jit, static_argnums=(1,))
def _first_rows(buffer, rows: int):
    return jax.tree.map(lambda whole: whole[:rows], buffer)


def _extract_into(forward, batches, batch_size: int, clock, on_batch, rows: int) -> Features:
    """``extract`` with a fixed row count: batches written into a zero buffer (one batch of slack, so a write at
    any offset below rows fits without clamping), then cut to rows."""
    total = -(-(rows + batch_size - 1) // batch_size) * batch_size
    buffer, offset = None, 0
    for real, batch in _padded_batches(batches, batch_size):
        if offset + real > rows:
            raise ValueError(f"extract: more than rows={rows} images")
        out = clock.run("extract", forward, batch)
        if buffer is None:
            buffer = clock.run("extract", _zeros_like_rows, out, total)
            buffer = jax.tree.map(lambda whole, part: jax.device_put(whole, part.sharding), buffer, out)
        buffer = clock.run("extract", _write_rows, buffer, out, jnp.int32(offset))
        offset += real
        if on_batch is not None:
            on_batch(real)
    if buffer is None:
        raise ValueError("extract: no images")
    return clock.run("extract", _first_rows, buffer, rows)
