"""Streaming for the few-shot methods (PatchCore, PatchCore+, WinCLIP, WinCLIP+): the references are fitted
once, then each batch of arrivals is scored against them as it comes.

Nothing here is new arithmetic: ``init`` is the method's own ``fit`` on the reference images (with its
``prepare`` output, e.g. WinCLIP's prompt embeddings; zero-shot WinCLIP streams with no references), and ``step`` its own ``score`` on the batch, so a stream
gives the scores a whole-set run gives (per image; the batch size changes nothing but the compiled shape).
The fitted state does not change while scoring, except for Online PatchCore+ (``--online K``): there the
refined prototypes of each arrival join the memory in arrival order, and padding rows of a last, partial
batch are scored but never enter it (``patchcore_plus_stream_score``), so a stream restarted from its
checkpoint continues exactly. Nothing is "warming": the references are there from the first arrival.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp

from jzad.methods.base import StreamScores, Streaming, get_method, register_streaming
from jzad.methods.patchcore_plus import patchcore_plus_stream_score


@dataclass(frozen=True)
class FewShotStreamConfig:
    """Few-shot streams have nothing of their own to set: the method's config decides everything."""


def few_shot_stream_configure(values: dict, method_config) -> FewShotStreamConfig:
    """No stream options for few-shot methods (``values`` is empty)."""
    return FewShotStreamConfig()


def few_shot_streaming(name: str, stream_score: Callable | None = None) -> Streaming:
    """Streaming functions of the registered few-shot method ``name``. ``stream_score(config, state, queries,
    valid, mesh) -> (Scores, state, banked)`` scores a batch whose state advances with the arrivals; None: the
    method's ``score`` with the fitted state kept as it is."""
    method = get_method(name)

    def init(config, stream, features, mesh=None, references=None, prepared=None):
        if references is None and method.few_shot == "required":
            raise ValueError(f"references: {name} streams against normal reference images, got none")
        return method.fit(config, references, mesh, prepared)

    def step(config, stream, state, queries, valid, mesh=None):
        valid = jnp.asarray(valid, bool)
        if stream_score is None:
            scores, _ = method.score(config, state, queries, mesh)
            banked = jnp.zeros(valid.shape, bool)
        else:
            scores, state, banked = stream_score(config, state, queries, valid, mesh)
        return StreamScores(scores.patch_scores, scores.image_scores, jnp.zeros(valid.shape, bool), banked), state

    return Streaming(config_type=FewShotStreamConfig, options=(), configure=few_shot_stream_configure,
                     request=method.request, init=init, step=step, references=True)


for _name, _score in (("patchcore", None), ("patchcore_plus", patchcore_plus_stream_score), ("winclip", None),
                      ("winclip_plus", None)):
    register_streaming(_name, few_shot_streaming(_name, _score))
