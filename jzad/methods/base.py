"""The method seam: what every anomaly-detection method provides, and the registry of methods by name.

A method is a small set of pure functions over a frozen config (the optax init/update pattern):

    prepared = method.prepare(config, backbone, category)        # once per category: e.g. text embeddings
    state = method.fit(config, references, mesh, prepared)       # few-shot: memory banks; zero-shot: ()
    state = method.calibrate(config, state, calibration, mesh)   # optional: statistics from held-out normals
    scores, state = method.score(config, state, queries, mesh)   # the scoring body as one jitted program
    scores, state = method.staged(config, state, queries, mesh, clock)   # the same body, stage by stage
    scores = method.finalize(config, scores)                     # set-level re-scoring over a whole category

``references`` and ``queries`` are feature pytrees (``Features``: backbone layer grids and, when the method asks
for it, image embeddings; a method with its own ``extractor`` adds what it needs in ``Features.extras``). ``scores`` is a ``Scores`` pytree: patch maps (N, h, w), image scores (N,) and the
per-image arrays ``finalize`` needs (MuSc keeps the image embeddings for RsCIN). The state is a pytree too, so
the same functions serve a whole set, one subset, or a stream of batches.

``pools`` says how queries may be grouped. A pooling method (MuSc, FSLC) scores a query set against itself, so
the driver passes one whole subset at a time and the subset is the pool. A non-pooling method scores each image
against its fitted state alone, so the driver may cut the queries into any batches.

Scoring is written once per method, as ``body(config, state, queries, mesh, run) -> (Scores, state)`` whose
stages are called through ``run(stage, fn, *args)``: ``score`` runs the body under one ``jax.jit`` with ``run`` a
plain call (``direct``), ``staged`` runs it with ``run`` a ``StageClock``'s timed call. There is no second body.

The command line is generic over methods: each declares its ``options`` (flags mapped to config fields) and
builds its config from them with ``configure``; a new method needs no edit of the CLI or the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jzad.features.types import BackboneRun, FeatureRequest, Features, ImagePrep
from jzad.methods.options import (  # noqa: F401  (re-exported)
    Option,
    OptionError,
    float_pair,
    int_list,
    option_errors,
    option_fields,
)

FEW_SHOT_MODES = ("never", "optional", "required")


class Scores(NamedTuple):
    """A method's output for N images.

    patch_scores (N, h, w): anomaly score of each patch. image_scores (N,): anomaly score of each image.
    keep: per-image arrays (leading axis N) that ``finalize`` needs over the whole category.
    """

    patch_scores: Any
    image_scores: Any
    keep: dict = {}


@dataclass(frozen=True)
class RunContext:
    """What a method's ``configure`` may depend on: the dataset layout, the model input side, the shots and the
    backbone's tapped blocks (None: the method's own default taps)."""

    dataset: str
    image_size: int
    shots: int = 0
    taps: tuple | None = None


def direct(stage: str, fn: Callable, *args, **kwargs):
    """The ``run`` of a fused body: call the stage under ``jax.named_scope(stage)``, so a profiler trace of the
    one program still names each stage's operations."""
    with jax.named_scope(stage):
        return fn(*args, **kwargs)


@partial(jax.jit, static_argnames=("body", "config", "mesh"))
def _fused(body, config, state, queries, mesh):
    return body(config, state, queries, mesh, direct)


def _identity_finalize(config, scores: Scores) -> Scores:
    return scores


def _nothing_to_prepare(config, backbone, category: str):
    return None


@dataclass(frozen=True)
class Method:
    """One registered method (see the module docstring for the contract of each function).

    name: registry key (--method). summary: one line for --help. config_type: its frozen config dataclass.
    pools: whether queries are scored as one pool (see module docstring). few_shot: "never", "optional" or
    "required": whether it takes normal reference images (--shots). options: its command-line options.
    request(config) -> FeatureRequest. prep(config, image_size) -> ImagePrep. backbone_run(architecture) ->
    BackboneRun (the method's preset for a backbone architecture name). default_backbone: catalogue name used
    when --backbone is not given; demo_backbone: the random-weight backbone of the built-in demo;
    tiny_backbone: a small random backbone of the right family for tests and quick checks.
    configure(values: dict, context: RunContext) -> config, from option values (dest -> value, defaults filled).
    body(config, state, queries, mesh, run) -> (Scores, state): the one scoring implementation, its stages
    called as ``run(stage, fn, *args)`` (see ``score`` and ``staged``).
    maps(config, patch_scores (N, h, w), size (H, W)) -> (N, H, W) anomaly maps at image resolution.
    stages: names of the stages ``staged`` times, in order (for reports). finalize(config, scores) -> scores:
    set-level re-scoring over a whole category (identity by default), timed as ``finalize_stage``.
    prepare(config, backbone, category) -> pytree or None: per-category constants computed once from the
    backbone (text prompt embeddings), passed to ``fit``. extractor(config, backbone) -> (images uint8 (B, S, S, 3)
    -> Features), or None to use the backbone's own features (``request``). calibrate(config, state,
    features, mesh) -> state, or None: fitted on held-out normal images (``calibration`` names their split).
    needs_text: the backbone must keep its text tower (``Backbone.encode_prompts``) for ``prepare``.
    multi_process: its stages run on global arrays over a mesh spanning several processes (every function
    jitted or built of jitted calls, per-category constants identical on every process); the command line
    refuses a multi-process run of a method without it. score_units: what its maps hold, for the colour bar
    of heatmaps; distance_scores: its scores are raw feature distances with no fixed scale (PatchCore's squared
    distances such as 6.4e4), so heatmaps show them 0-1 over the category (the raw values stay in the files).
    pads(config) -> bool: whether the driver may pad a pool with zero feature rows to a bucket size (so
    pools of nearby sizes share one compiled program), marking the real rows in
    ``Features.extras[VALID]``; None: only a non-pooling method pads (its images are scored independently).
    """

    name: str
    summary: str
    config_type: type
    pools: bool
    few_shot: str
    options: tuple
    request: Callable
    fit: Callable
    body: Callable
    configure: Callable
    maps: Callable
    backbone_run: Callable
    default_backbone: str
    demo_backbone: str
    stages: tuple
    tiny_backbone: str = "random-tiny"
    prep: Callable = field(default=lambda config, image_size: ImagePrep())
    finalize: Callable = _identity_finalize
    finalize_stage: str = "finalize"
    prepare: Callable = _nothing_to_prepare
    extractor: Callable | None = None
    calibrate: Callable | None = None
    calibration: str | None = None
    needs_text: bool = False
    multi_process: bool = False
    score_units: str = "anomaly score"
    distance_scores: bool = False
    pads: Callable | None = None

    def __post_init__(self):
        if self.few_shot not in FEW_SHOT_MODES:
            raise ValueError(f"Method {self.name}: few_shot must be one of {FEW_SHOT_MODES}, got {self.few_shot!r}")
        names = [f.name for f in fields(self.config_type)]
        for option in self.options:
            if option.field is not None and option.field not in names:
                raise ValueError(f"Method {self.name}: option {option.flag} sets unknown config field {option.field!r}")

    def pads_to_buckets(self, config) -> bool:
        """Whether query sets of this method and config may be padded to a bucket size (see ``pads``)."""
        return not self.pools if self.pads is None else bool(self.pads(config))

    def score(self, config, state, queries, mesh=None):
        """The scoring body as one jitted program (config and mesh static) -> (Scores, state). Callable inside a
        user's own ``jax.jit``."""
        return _fused(self.body, config, state, queries, mesh)

    def staged(self, config, state, queries, mesh, clock):
        """The same body with each stage timed on ``clock`` (a ``jzad.timing.StageClock``) -> (Scores, state)."""
        return self.body(config, state, queries, mesh, clock.run)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry under its name (names are unique)."""
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called name; unknown names raise ValueError listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> tuple[str, ...]:
    """Names of every registered method, in registration order."""
    return tuple(_REGISTRY)


class StreamScores(NamedTuple):
    """A streaming step's output for a batch of b arrivals (rows of padding included; the caller drops them).

    patch_scores (b, h, w); image_scores (b,) (NaN where nothing could be compared yet); warming (b,) bool:
    the method's memory did not yet hold enough images when the row was scored (scores reported, flagged);
    banked (b,) bool: the image entered the method's memory (MuSc's bank, FSLC's coreset window).
    """

    patch_scores: Any
    image_scores: Any
    warming: Any
    banked: Any


@dataclass(frozen=True)
class Streaming:
    """A method's streaming functions: images scored as they arrive against a bounded memory.

    The state is a pytree of fixed shapes carried through ``step``, so every batch runs one compiled program
    and a state can be saved and restored (orbax) to continue a stream in another process.
    config_type: the frozen stream config (static under jit). options: its command-line options (fields of
    config_type). configure(values: dict, method_config) -> stream config. request(method_config) ->
    FeatureRequest. init(method_config, stream_config, features, mesh) -> state (only the shapes of
    ``features``, a batch as the backbone returns it, are read; ShapeDtypeStructs do), placed as ``step``
    returns it so every step runs one compiled program. step(method_config, stream_config,
    state, features (b images), valid (b,) bool, mesh) -> (StreamScores, state); rows with valid False are
    padding: they neither score against nor enter the memory. references: the stream is scored against normal
    reference images fitted once (few-shot methods); ``init`` then also takes ``references=`` (their Features)
    and ``prepared=`` (the method's ``prepare`` output, e.g. prompt embeddings).
    """

    config_type: type
    options: tuple
    configure: Callable
    request: Callable
    init: Callable
    step: Callable
    references: bool = False


_STREAMING: dict[str, Streaming] = {}


def register_streaming(name: str, streaming: Streaming) -> Streaming:
    """Attach streaming functions to the registered method ``name``."""
    get_method(name)
    names = [f.name for f in fields(streaming.config_type)]
    for option in streaming.options:
        if option.field is not None and option.field not in names:
            raise ValueError(f"Streaming {name}: option {option.flag} sets unknown config field {option.field!r}")
    _STREAMING[name] = streaming
    return streaming


def get_streaming(name: str) -> Streaming:
    """The streaming functions of method ``name``; ValueError naming the methods that stream otherwise."""
    if name not in _STREAMING:
        raise ValueError(f"method {name} does not stream; methods that do: {', '.join(sorted(_STREAMING))}")
    return _STREAMING[name]


def streaming_names() -> tuple[str, ...]:
    """Names of the methods with streaming functions, in registration order."""
    return tuple(_STREAMING)


@jax.jit
def _non_finite_rows(leaves) -> jax.Array:
    """(N,) bool: the images (leading axis) with a NaN or inf in any leaf; one program per set of shapes."""
    bad = None
    for leaf in leaves:
        rows = ~jax.numpy.all(jax.numpy.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
        bad = rows if bad is None else bad | rows
    return bad


def check_finite(features, names=None, what: str = "features", count: int | None = None) -> None:
    """Raise ValueError naming the images whose features hold NaN or inf (a silent NaN would spread to every
    score of a pooling method). features: any pytree of arrays with a leading image axis N (``Features``, a
    tuple of tapped tokens); names: (N,) image names for the message (indices when None); count: only the
    first count rows are images (the rest padding, not checked). Under an outer jit
    the values are unknown and nothing is checked: call it where the arrays are concrete."""
    leaves = [leaf for leaf in jax.tree.leaves(features) if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact)]
    if not leaves or any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return
    bad = np.asarray(_non_finite_rows(leaves))
    indices = [int(i) for i in np.flatnonzero(bad[:count])]
    if indices:
        shown = [names[i] for i in indices[:5]] if names is not None else [str(i) for i in indices[:5]]
        more = f" and {len(indices) - 5} more" if len(indices) > 5 else ""
        where = "" if names is not None else "at index "
        raise ValueError(f"{what} of {len(indices)} image(s) are not finite (NaN or inf): {where}"
                         f"{', '.join(shown)}{more}")
