"""Leave-one-out scores of the normal reference images: the evidence a few-shot method's verdict threshold is
drawn from (``jzad.eval.verdict``), without any label.

Each reference is scored as a query by the method fitted on the other references (and calibrated as in a run),
so its score is what a normal image the method has not seen gets. The references' features are extracted once
and sliced; the config is the run's (configured for all R shots: a method whose config depends on the shot count
is fitted on R - 1 images under R's settings, which the verdict's quantile tolerates). Pooling methods (MuSc,
FSLC) score a reference inside the pool of test images, so they have no leave-one-out score; one reference
leaves nothing to fit on. Both return None and the threshold comes from --threshold or the labels. A method
that cannot be fitted on R - 1 references (e.g. a coreset that keeps no patch of one small image) raises
``ReferencesTooFew``, which the callers report before falling back the same way.
"""

from __future__ import annotations

import jax
import numpy as np

from jzad.methods.base import check_finite
from jzad.pipeline import Scorer, extract_source
from jzad.timing import StageClock


class ReferencesTooFew(ValueError):
    """The method cannot be fitted on R - 1 of the references (the message says why)."""


def leave_one_out_scores(scorer: Scorer, references, category: str = "", calibration=None,
                         clock: StageClock | None = None) -> np.ndarray | None:
    """Image scores (R,) of each reference against the method fitted on the others; None where the method pools
    its queries or there are fewer than 2 references (module docstring)."""
    method = scorer.method
    if references is None or len(references) < 2 or method.pools:
        return None
    clock = clock or StageClock()
    count = len(references)
    features, _ = extract_source(scorer, references, np.arange(count), clock)
    check_finite(features, references.names, "reference features")
    prepared = method.prepare(scorer.config, scorer.backbone, category)
    held_out = None
    if method.calibrate is not None:
        held_out, _ = extract_source(scorer, calibration, np.arange(len(calibration)), clock)
    out = np.empty(count, np.float64)
    for index in range(count):
        others = np.delete(np.arange(count), index)
        rest = jax.tree.map(lambda a: a[others], features)
        query = jax.tree.map(lambda a: a[index:index + 1], features)
        try:
            state = method.fit(scorer.config, rest, scorer.mesh, prepared)
        except ValueError as err:
            raise ReferencesTooFew(f"no leave-one-out threshold: {method.name} cannot be fitted on {count - 1} of "
                                   f"the {count} references ({err})") from err
        if held_out is not None:
            state = method.calibrate(scorer.config, state, held_out, scorer.mesh)
        scores, _ = method.score(scorer.config, state, query, scorer.mesh)
        out[index] = float(np.asarray(method.finalize(scorer.config, scores).image_scores)[0])
    return out


__all__ = ["ReferencesTooFew", "leave_one_out_scores"]
