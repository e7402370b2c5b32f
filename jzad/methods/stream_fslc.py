"""Streaming FSLC: a coreset kept, expanded and filtered as images arrive, in a fixed-capacity buffer.

FSLC (``jzad.methods.fslc``) learns its coreset from the whole test set: k-center init over S images, one
expansion step per remaining image, a filter over every image, then scoring. On a stream each arrival is scored
against the coreset as the earlier images left it, then contributes to it:

1. filter (Eqs. 1-4 over a window): a_f^j = min_n ||f - f_j^n|| is kept for every coreset row f and each of the
   last W arrivals j (the window, a ring of their features); a_f = the sum of the max(1, floor(X w)) smallest
   a_f^j over the w window images; the kept rows are the ``n_wanted`` of lowest a_f, or Otsu's low class
   (every filled row while the window is empty).
2. score (Sec. 3.4): ``fslc_score`` of the arrival against the kept rows (NaN while none is kept).
3. expand: the first S arrivals each add ``init_per_image`` of their patches by k-center greedy continued from
   the coreset (the stream's form of the k-center init: S images arriving, not S chosen from a finished set);
   later arrivals add the ``expand_per_image`` patches farthest from the coreset (Sec. 3.3, measured against the
   whole expanded coreset). New rows fill empty slots; in a full buffer they replace the rows of highest a_f
   (the rows the filter trusts least), so the buffer never grows.
4. the arrival joins the window (replacing the oldest), and the a_f^j of the new rows and the new image are
   computed (distances taken from the difference, so a row against its own image is exactly 0).

Arrivals are taken one at a time in arrival order, also inside a batch, so scores do not depend on the batch
size (beyond float rounding: XLA may fuse a scan over 1 or b rows differently). ``combine`` "per_layer" keeps
one coreset per (layer, r) feature set and averages their scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jzad.kernels.distances import dot_nt, squared_norms
from jzad.kernels.select import interval_table, mean_of_ranks
from jzad.kernels.sharding import device_mesh, replicated
from jzad.methods.base import (
    FeatureRequest,
    Features,
    StreamScores,
    Streaming,
    option_errors,
    option_fields,
    register_streaming,
)
from jzad.methods.fslc import FSLCConfig, _exact_distance, fslc_score, fslc_sets, otsu_split
from jzad.methods.table import stream_row


@dataclass(frozen=True)
class FSLCStreamConfig:
    """Static configuration of streaming FSLC (hashable, a static jit argument).

    capacity: K, coreset rows the buffer holds. window: W, recent arrivals the filter's a_f are taken over.
    init_per_image: patches each of the first S = ``FSLCConfig.num_init_images`` arrivals adds by k-center
    (None: M_0 / S, ``FSLCConfig.init_coreset_size // num_init_images``). warmup: arrivals below which rows are
    flagged warming (None: S).
    """

    capacity: int = 4096
    window: int = 16
    init_per_image: int | None = None
    warmup: int | None = None

    def __post_init__(self):
        for name in ("capacity", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("init_per_image", "warmup"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name}: expected an integer >= 0 or None, got {value!r}")


class FSLCSetState(NamedTuple):
    """One feature set's stream memory: coreset (K, C) float32 with filled (K,) bool rows; a (K, W) the a_f^j
    of each row against each window image; window (W, M, C) the last W arrivals' features, window_valid (W,)."""

    coreset: jax.Array
    filled: jax.Array
    a: jax.Array
    window: jax.Array
    window_valid: jax.Array


class FSLCStreamState(NamedTuple):
    """sets: one FSLCSetState per feature set (one with "concat"); seen () int32 arrivals so far."""

    sets: tuple
    seen: jax.Array


def picks_per_image(config: FSLCConfig, stream: FSLCStreamConfig, patches: int) -> tuple[int, int]:
    """(init patches per image, expansion patches per image), each at most M = ``patches``."""
    init = stream.init_per_image
    if init is None:
        init = max(1, config.init_coreset_size // config.num_init_images)
    return min(init, patches), min(config.expand_per_image, patches)


def _feature_shapes(config: FSLCConfig, features: Features) -> list[tuple[int, int]]:
    """(M, C) of each FSLC feature set of a batch shaped like ``features`` (only shapes are read)."""
    grids = tuple(jax.ShapeDtypeStruct(g.shape, jnp.float32) for g in features.layers)
    sets = jax.eval_shape(lambda gs: fslc_sets(gs, config), grids)
    return [s.shape[1:] for s in sets]


def fslc_stream_init(config: FSLCConfig, stream: FSLCStreamConfig, features: Features,
                     mesh: Mesh | None = None) -> FSLCStreamState:
    """An empty coreset and window for batches shaped like ``features`` (layers (b, h, w, C)), replicated over
    ``mesh`` (None: one device) as ``fslc_stream_step`` returns it."""
    k, w = stream.capacity, stream.window
    sets = []
    for m, c in _feature_shapes(config, features):
        if stream.capacity < max(picks_per_image(config, stream, m)):
            raise ValueError(f"capacity: expected at least the patches one image adds "
                             f"({max(picks_per_image(config, stream, m))}), got {stream.capacity}")
        sets.append(FSLCSetState(jnp.zeros((k, c), jnp.float32), jnp.zeros((k,), bool),
                                 jnp.full((k, w), jnp.inf, jnp.float32), jnp.zeros((w, m, c), jnp.float32),
                                 jnp.zeros((w,), bool)))
    state = FSLCStreamState(tuple(sets), jnp.int32(0))
    return jax.device_put(state, replicated(device_mesh(1) if mesh is None else mesh))


def _nearest(queries: jax.Array, points: jax.Array, usable: jax.Array, precision: str):
    """Distance (q,) from each query (q, C) to its nearest usable point of (K, C), found with the GEMM form and
    taken from the difference; +inf when no point is usable."""
    sq = squared_norms(queries)[:, None] + squared_norms(points)[None, :] - 2.0 * dot_nt(queries, points, precision)
    index = jnp.argmin(jnp.where(usable[None, :], sq, jnp.inf), axis=1)
    return jnp.where(jnp.any(usable), _exact_distance(queries, points[index]), jnp.inf)


def _window_distances(rows: jax.Array, window: jax.Array, precision: str) -> jax.Array:
    """a_f^j of rows (P, C) against each window image (W, M, C) -> (P, W): nearest patch, exact distance."""
    w, m, c = window.shape
    flat = window.reshape(w * m, c)
    sq = squared_norms(rows)[:, None] + squared_norms(flat)[None, :] - 2.0 * dot_nt(rows, flat, precision)
    nearest = jnp.argmin(sq.reshape(rows.shape[0], w, m), axis=-1)
    patches = window[jnp.arange(w)[None, :], nearest]
    return _exact_distance(rows[:, None, :], patches)


def filter_keep(config: FSLCConfig, stream: FSLCStreamConfig, st: FSLCSetState) -> tuple[jax.Array, jax.Array]:
    """(a_f / k (K,), kept (K,) bool): the filter over the window (module docstring, step 1) with a_f divided by
    its count k (the same order and the same Otsu split as the sum); every filled row is kept while the
    window is empty. Empty rows have +inf."""
    w = jnp.sum(st.window_valid.astype(jnp.int32))
    table = jnp.asarray(interval_table(stream.window, 0.0, float(config.filter_fraction)))
    a_f = mean_of_ranks(jnp.where(st.window_valid[None, :], st.a, jnp.inf), 0, table[w][1])
    a_f = jnp.where(st.filled & (w > 0), a_f, jnp.where(st.filled, 0.0, jnp.inf))
    if config.n_wanted == "otsu":
        _, kept = otsu_split(a_f, config.otsu_bins, st.filled)
    else:
        order = jnp.argsort(a_f, stable=True)
        rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
        kept = st.filled & (rank < config.n_wanted)
    return a_f, jnp.where(w > 0, kept, st.filled)


def _arrival(config: FSLCConfig, stream: FSLCStreamConfig, st: FSLCSetState, x: jax.Array, seen: jax.Array):
    """One arrival x (M, C) on one feature set -> (patch scores (M,), image score (), new FSLCSetState)."""
    m = x.shape[0]
    a_f, kept = filter_keep(config, stream, st)
    order = jnp.argsort(~kept, stable=True)
    size = jnp.sum(kept.astype(jnp.int32))
    scored = fslc_score(x[None], st.coreset[order], jnp.arange(order.shape[0]) < size, config)
    patch = jnp.where(size > 0, scored.patch_scores[0], jnp.nan)
    image = jnp.where(size > 0, scored.image_scores[0], jnp.nan)

    init_count, expand_count = picks_per_image(config, stream, m)
    count = max(init_count, expand_count)
    distance = _nearest(x, st.coreset, st.filled, config.precision)

    def greedy(i, carry):
        dist, picks = carry
        pick = jnp.argmax(dist).astype(jnp.int32)
        return jnp.minimum(dist, _exact_distance(x, x[pick][None, :])), picks.at[i].set(pick)

    _, centres = jax.lax.fori_loop(0, init_count, greedy, (distance, jnp.zeros((count,), jnp.int32)))
    _, farthest = jax.lax.top_k(distance, expand_count)
    farthest = jnp.pad(farthest.astype(jnp.int32), (0, count - expand_count))
    initial = seen < config.num_init_images
    picks = jnp.where(initial, centres, farthest)
    write = jnp.arange(count) < jnp.where(initial, init_count, expand_count)
    slots = jnp.argsort(jnp.where(st.filled, -a_f, -jnp.inf), stable=True)[:count]
    coreset = st.coreset.at[slots].set(jnp.where(write[:, None], x[picks], st.coreset[slots]))
    filled = st.filled.at[slots].set(st.filled[slots] | write)

    slot = seen % stream.window
    window = st.window.at[slot].set(x)
    window_valid = st.window_valid.at[slot].set(True)
    a = st.a.at[:, slot].set(_nearest(coreset, x, jnp.ones((m,), bool), config.precision))
    fresh = _window_distances(coreset[slots], window, config.precision)
    a = a.at[slots].set(jnp.where(write[:, None], fresh, a[slots]))
    return patch, image, FSLCSetState(coreset, filled, a, window, window_valid)


@partial(jax.jit, static_argnames=("config", "stream", "mesh"), donate_argnames=("state",))
def fslc_stream_step(
    config: FSLCConfig,
    stream: FSLCStreamConfig,
    state: FSLCStreamState,
    queries: Features,
    valid: jax.Array,
    mesh: Mesh | None = None,
) -> tuple[StreamScores, FSLCStreamState]:
    """Score b arrivals (layers (b, h, w, C); valid (b,) bool, False = padding) one after another, each against
    the coreset the earlier ones left, and let each expand the coreset and join the window -> (StreamScores,
    new state). Scores are averaged over the feature sets; ``mesh`` is accepted for the contract (one device
    runs the stream: each arrival depends on the one before)."""
    del mesh
    layers = tuple(queries.layers)
    b, h, w, _ = layers[0].shape
    sets = fslc_sets(layers, config)
    if len(sets) != len(state.sets) or any(s.shape[1:] != t.window.shape[1:] for s, t in zip(sets, state.sets)):
        raise ValueError(f"fslc_stream_step: features {[s.shape for s in sets]} do not match the state "
                         f"{[t.window.shape for t in state.sets]}")
    if valid.shape != (b,):
        raise ValueError(f"valid: expected ({b},) like the batch, got {valid.shape}")
    warmup = config.num_init_images if stream.warmup is None else stream.warmup

    def one(carry, row):
        set_states, seen = carry
        arrival, real = row
        patch_total, image_total, updated = 0.0, 0.0, []
        for st, x in zip(set_states, arrival):
            patch, image, new = _arrival(config, stream, st, x, seen)
            patch_total, image_total = patch_total + patch, image_total + image
            updated.append(jax.tree.map(lambda n, o: jnp.where(real, n, o), new, st))
        warming = seen < warmup
        return (tuple(updated), seen + real.astype(jnp.int32)), (patch_total / len(sets), image_total / len(sets),
                                                                 warming)

    (set_states, seen), (patch, image, warming) = jax.lax.scan(one, (state.sets, state.seen), (tuple(sets), valid))
    scores = StreamScores(patch.reshape(b, h, w), image, warming, valid)
    return scores, FSLCStreamState(set_states, seen)


def fslc_stream_step_fn(config, stream, state, queries, valid, mesh=None):
    """``fslc_stream_step`` as the ``Streaming.step`` contract calls it."""
    return fslc_stream_step(config, stream, state, queries, jnp.asarray(valid, bool), mesh)


OPTIONS = stream_row("fslc").options
"""The command-line options, as written in ``jzad.methods.table``."""


def fslc_stream_configure(values: dict, config: FSLCConfig) -> FSLCStreamConfig:
    """FSLCStreamConfig from option values (dest -> value; missing = default)."""
    del config
    with option_errors("fslc stream options"):
        return FSLCStreamConfig(**option_fields(OPTIONS, values))


STREAMING = register_streaming("fslc", Streaming(
    config_type=FSLCStreamConfig,
    options=OPTIONS,
    configure=fslc_stream_configure,
    request=lambda config: FeatureRequest(embedding=False),
    init=fslc_stream_init,
    step=fslc_stream_step_fn,
))
