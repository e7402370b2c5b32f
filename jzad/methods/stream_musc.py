"""Streaming MuSc: images scored as they arrive, against a fixed-capacity bank of earlier images.

MuSc scores each image against the other images of its pool (``jzad.methods.musc``). On a production line the
pool is the images seen before: the bank holds the LNAMD features of up to B earlier images per (layer, r), and
each batch of b arrivals is scored by MSM against the bank plus the other arrivals of the batch
(``masked_mutual_scores``: empty bank slots masked, k of the interval from the real number of others), after
which the admitted arrivals enter the bank. Shapes never change, so every batch runs one compiled program.

- replacement "fifo": a ring buffer of the last B admitted images. "reservoir": a uniform sample of every
  admitted image so far (Vitter's algorithm R); the t-th admission draws its slot from
  fold_in(key(seed), t), so a restored state continues with the same draws.
- admission (``admit_quantile`` q): once the bank holds ``warmup`` images, an arrival enters only when its
  image score is at most the q-quantile of the banked images' scores (linear interpolation, NumPy's default).
  Without it, a burst of similar defects fills the bank with defects, each then finds its twins in the pool and
  scores low (the failure mode MuSc's authors point out); with it, defects stay out and keep scoring high.
- warming: rows scored while the bank held fewer than ``warmup`` images are flagged (scores still reported);
  a row with no other image to compare (the very first arrival) scores NaN.
- RsCIN is not applied: it min-max normalises the scores of a finished set, so a streamed score would change
  meaning as the set grows. Stream scores are MuSc's image scores before RsCIN (``musc_score``'s output).

With a bank at least as large as the set, the whole set scored as one batch is zero-shot MuSc on it (before
RsCIN), bit for bit under the "rows" MSM schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jzad.kernels.sharding import device_mesh, replicated
from jzad.methods.base import (
    FeatureRequest,
    Features,
    OptionError,
    StreamScores,
    Streaming,
    option_errors,
    option_fields,
    register_streaming,
)
from jzad.methods.musc import MuScConfig, grid_features, masked_mutual_scores, max_of_upsampled, msm_key
from jzad.methods.table import stream_row

REPLACEMENTS = ("fifo", "reservoir")


@dataclass(frozen=True)
class MuScStreamConfig:
    """Static configuration of the MuSc bank (hashable, a static jit argument).

    capacity: B, images the bank holds. replacement: "fifo" or "reservoir" (module docstring). admit_quantile:
    q in (0, 1], or None to admit every arrival. warmup: bank images below which rows are flagged warming (and
    every arrival is admitted, whatever q). seed: the reservoir's draws.
    """

    capacity: int = 64
    replacement: str = "fifo"
    admit_quantile: float | None = None
    warmup: int = 10
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) or self.capacity < 1:
            raise ValueError(f"capacity: expected an integer >= 1, got {self.capacity!r}")
        if self.replacement not in REPLACEMENTS:
            raise ValueError(f"replacement: expected one of {REPLACEMENTS}, got {self.replacement!r}")
        if self.admit_quantile is not None and not 0.0 < float(self.admit_quantile) <= 1.0:
            raise ValueError(f"admit_quantile: expected q in (0, 1] or None, got {self.admit_quantile!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup <= self.capacity:
            raise ValueError(f"warmup: expected an integer in [0, capacity = {self.capacity}], got {self.warmup!r}")


class MuScStreamState(NamedTuple):
    """The bank: features, one (B, M, C) float32 per (layer, r) (layers outer, degrees inner, as
    ``grid_features``); scores (B,) each banked image's score when it arrived; valid (B,) bool filled slots;
    admitted () int32 arrivals admitted so far (the FIFO position, the reservoir's count); seen () int32
    arrivals scored so far."""

    features: tuple
    scores: jax.Array
    valid: jax.Array
    admitted: jax.Array
    seen: jax.Array


def musc_stream_init(config: MuScConfig, stream: MuScStreamConfig, features: Features,
                     mesh: Mesh | None = None) -> MuScStreamState:
    """An empty bank for batches shaped like ``features`` (layers (b, h, w, C); only the shapes are read),
    replicated over ``mesh`` (None: one device) as ``musc_stream_step`` returns it, so the first and later
    steps share one compiled program."""
    check_zero_shot(config)
    bank = []
    for grid in features.layers:
        _, h, w, c = grid.shape
        bank += [jnp.zeros((stream.capacity, h * w, c), jnp.float32) for _ in config.r_list]
    b = stream.capacity
    state = MuScStreamState(tuple(bank), jnp.zeros((b,), jnp.float32), jnp.zeros((b,), bool), jnp.int32(0),
                            jnp.int32(0))
    return jax.device_put(state, replicated(device_mesh(1) if mesh is None else mesh))


def check_zero_shot(config: MuScConfig) -> None:
    """The bank is the pool: streaming runs zero-shot MuSc."""
    if config.mode != "zero_shot":
        raise ValueError(f"streaming MuSc scores against its bank (zero_shot); mode {config.mode!r} does not stream")


def masked_quantile(values: jax.Array, mask: jax.Array, q: float) -> jax.Array:
    """The q-quantile (linear interpolation between order statistics, NumPy's default) of the finite values
    (n,) where mask (n,) is True -> () float32; NaN when there are none."""
    keep = mask & jnp.isfinite(values)
    count = jnp.sum(keep.astype(jnp.int32))
    ordered = jnp.sort(jnp.where(keep, values.astype(jnp.float32), jnp.inf))
    position = q * (jnp.maximum(count, 1) - 1).astype(jnp.float32)
    low = jnp.floor(position).astype(jnp.int32)
    high = jnp.minimum(low + 1, jnp.maximum(count - 1, 0))
    frac = position - low.astype(jnp.float32)
    value = ordered[low] + (ordered[high] - ordered[low]) * frac
    return jnp.where(count > 0, value, jnp.nan)


def bank_slot(stream: MuScStreamConfig, admitted: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(slot, write) for the arrival admitted after ``admitted`` earlier ones: FIFO writes slot t mod B;
    the reservoir fills slots 0..B-1, then draws j uniform in [0, t] and writes slot j when j < B."""
    b = stream.capacity
    if stream.replacement == "fifo":
        return admitted % b, jnp.bool_(True)
    draw = jax.random.randint(jax.random.fold_in(jax.random.key(stream.seed), admitted), (), 0, admitted + 1)
    slot = jnp.where(admitted < b, admitted, draw)
    return jnp.minimum(slot, b - 1), slot < b


@partial(jax.jit, static_argnames=("config", "stream", "mesh"), donate_argnames=("state",))
def musc_stream_step(
    config: MuScConfig,
    stream: MuScStreamConfig,
    state: MuScStreamState,
    queries: Features,
    valid: jax.Array,
    mesh: Mesh | None = None,
) -> tuple[StreamScores, MuScStreamState]:
    """Score b arrivals (layers (b, h, w, C); valid (b,) bool, False = padding) against the bank and the other
    arrivals, then admit them in arrival order -> (StreamScores, new state).

    Patch scores: the mean over (layer, r) of ``masked_mutual_scores`` on the pool [arrivals; bank]; image
    score: max of the map upsampled to ``config.map_size`` (before RsCIN).
    """
    check_zero_shot(config)
    layers = tuple(queries.layers)
    b, h, w, _ = layers[0].shape
    features = grid_features(layers, config.r_list)
    if len(features) != len(state.features) or any(
            f.shape[1:] != s.shape[1:] for f, s in zip(features, state.features)):
        raise ValueError(f"musc_stream_step: features {[f.shape for f in features]} do not match the bank "
                         f"{[s.shape for s in state.features]}")
    if valid.shape != (b,):
        raise ValueError(f"valid: expected ({b},) like the batch, got {valid.shape}")
    pool_valid = jnp.concatenate([valid, state.valid])
    key = msm_key(config)
    total = jnp.zeros((b, h * w), jnp.float32)
    for arrivals, bank in zip(features, state.features):
        total = total + masked_mutual_scores(jnp.concatenate([arrivals, bank]), pool_valid, b, key, mesh)
    patch = (total / len(features)).reshape(b, h, w)
    raw = max_of_upsampled(patch, config.map_size)
    alone = jnp.sum(pool_valid.astype(jnp.int32)) < 2
    patch = jnp.where(alone, jnp.nan, patch)
    raw = jnp.where(alone, jnp.nan, raw)

    in_bank = jnp.sum(state.valid.astype(jnp.int32))
    warming = jnp.broadcast_to(in_bank < stream.warmup, (b,))
    if stream.admit_quantile is None:
        take = valid
    else:
        threshold = masked_quantile(state.scores, state.valid, float(stream.admit_quantile))
        take = valid & ((in_bank < max(stream.warmup, 1)) | (raw <= threshold))

    def admit(carry, row):
        bank, scores, filled, admitted = carry
        arrival, score, wanted = row
        slot, write = bank_slot(stream, admitted)
        write = write & wanted
        bank = tuple(jax.lax.dynamic_update_index_in_dim(slab, jnp.where(write, one, slab[slot]), slot, 0)
                     for slab, one in zip(bank, arrival))
        scores = scores.at[slot].set(jnp.where(write, score, scores[slot]))
        filled = filled.at[slot].set(filled[slot] | write)
        return (bank, scores, filled, admitted + wanted.astype(jnp.int32)), write

    carry = (state.features, state.scores, state.valid, state.admitted)
    (bank, scores, filled, admitted), banked = jax.lax.scan(admit, carry, (tuple(features), raw, take))
    seen = state.seen + jnp.sum(valid.astype(jnp.int32))
    return StreamScores(patch, raw, warming, banked), MuScStreamState(bank, scores, filled, admitted, seen)


def musc_stream_step_fn(config, stream, state, queries, valid, mesh=None):
    """``musc_stream_step`` as the ``Streaming.step`` contract calls it."""
    return musc_stream_step(config, stream, state, queries, jnp.asarray(valid, bool), mesh)


def _quantile(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise ValueError(f"expected a quantile in (0, 1], got {text!r}") from err
    return value


OPTIONS = stream_row("musc").options
"""The command-line options, as written in ``jzad.methods.table``."""


def musc_stream_configure(values: dict, config: MuScConfig) -> MuScStreamConfig:
    """MuScStreamConfig from option values (dest -> value; missing = default); the bank needs zero-shot MuSc."""
    if config.mode != "zero_shot":
        raise OptionError(f"mode {config.mode}: MuSc streams zero-shot only (the bank is the pool)")
    fields = option_fields(OPTIONS, values)
    if "capacity" in fields and "warmup" not in fields:
        fields["warmup"] = min(MuScStreamConfig.warmup, fields["capacity"])
    with option_errors("musc stream options"):
        return MuScStreamConfig(**fields)


STREAMING = register_streaming("musc", Streaming(
    config_type=MuScStreamConfig,
    options=OPTIONS,
    configure=musc_stream_configure,
    request=lambda config: FeatureRequest(embedding=False),
    init=musc_stream_init,
    step=musc_stream_step_fn,
))
