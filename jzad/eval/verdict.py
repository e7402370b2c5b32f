"""Verdicts: a threshold per category and method, which images are anomalous, and a score normalised around it.

Raw anomaly scores have method-specific units (PatchCore: squared distances such as 6.4e4, MuSc: mean patch
distances, WinCLIP: probabilities), so a person inspecting parts needs a decision rule they can carry to the
next batch. A ``Threshold`` holds that rule and where it came from (``source``):

- ``"references"``: a high quantile (``REFERENCE_QUANTILE``, numpy's linear interpolation) of leave-one-out
  scores of the normal reference images (each reference scored against the others). It needs no labels, so
  it is the rule for few-shot methods; with few references the quantile sits just below their maximum.
- ``"given"``: the value the user passed (``--threshold``).
- ``"f1_optimum"``: the score that maximises image-level F1 on labelled test images (anomalib's
  ``F1AdaptiveThreshold``: one of the scores themselves, predicted anomalous when score >= threshold). It is
  fitted on the images it judges, so its precision/recall are optimistic: said so wherever it is reported.
- ``"results"``: read back from an earlier run's results.json (``--threshold-from``).

An image is anomalous when its raw score >= the threshold. The normalised score is anomalib's min-max
normalisation, ``clip((score - threshold) / (hi - lo) + 0.5, 0, 1)``, so the threshold sits at 0.5; ``lo``/``hi``
are the score range the threshold was chosen on (kept with the threshold, so a reused threshold normalises new
images on the same scale). All functions are host-side NumPy at the output edge.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

REFERENCE_QUANTILE = 0.99
SOURCES = ("references", "given", "f1_optimum", "results")
SOURCE_TEXT = {
    "references": "the {q:g} quantile of leave-one-out reference scores",
    "given": "--threshold",
    "f1_optimum": "the F1 optimum of the labels (fitted on these images: optimistic)",
    "results": "an earlier run's results.json",
}


def _scores(x, name: str) -> np.ndarray:
    """A non-empty 1-D float64 array of finite scores, or a ValueError naming ``name``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of scores, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite scores")
    return a


def _labels(x, n: int) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},) matching the scores, got {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError("labels: expected only 0 (normal) and 1 (anomalous)")
    return a.astype(bool)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A decision rule on raw scores: anomalous when score >= ``value``; normalised scores use (lo, hi).

    source: one of ``SOURCES``; quantile: the reference quantile (source "references") else None."""

    value: float
    source: str
    lo: float
    hi: float
    quantile: float | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"threshold source: expected one of {', '.join(SOURCES)}, got {self.source!r}")
        for field in ("value", "lo", "hi"):
            if not np.isfinite(getattr(self, field)):
                raise ValueError(f"threshold {field}: expected a finite number, got {getattr(self, field)}")
        if self.lo > self.hi:
            raise ValueError(f"threshold range: expected lo <= hi, got {self.lo} > {self.hi}")

    def describe(self) -> str:
        """One line: the value and where it came from."""
        return f"{self.value:.6g} from " + SOURCE_TEXT[self.source].format(q=self.quantile or 0.0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, entry: dict) -> "Threshold":
        return cls(float(entry["value"]), str(entry["source"]), float(entry["lo"]), float(entry["hi"]),
                   None if entry.get("quantile") is None else float(entry["quantile"]))


def reference_threshold(loo_scores, quantile: float = REFERENCE_QUANTILE) -> float:
    """The ``quantile`` (numpy linear interpolation) of leave-one-out reference scores (R,)."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile: expected a value in (0, 1], got {quantile}")
    return float(np.quantile(_scores(loo_scores, "reference scores"), quantile))


def f1_optimal_threshold(scores, labels) -> float:
    """The score t maximising F1 of (score >= t) against labels (N,); the highest such t on ties (fewest alarms).

    Needs at least one anomalous label."""
    s = _scores(scores, "scores")
    y = _labels(labels, s.size)
    positives = int(y.sum())
    if positives == 0:
        raise ValueError("labels: the F1-optimal threshold needs at least one anomalous image")
    candidates = np.unique(s)[::-1]
    predicted = s[None, :] >= candidates[:, None]
    tp = (predicted & y[None, :]).sum(axis=1)
    f1 = 2.0 * tp / (positives + predicted.sum(axis=1))
    return float(candidates[int(np.argmax(f1))])


def normalised_scores(scores, threshold: Threshold) -> np.ndarray:
    """anomalib's min-max normalisation: clip((s - value) / (hi - lo) + 0.5, 0, 1) (a zero range counts as 1)."""
    s = _scores(scores, "scores")
    span = threshold.hi - threshold.lo
    return np.clip((s - threshold.value) / (span if span > 0 else 1.0) + 0.5, 0.0, 1.0)


def anomalous(scores, threshold: Threshold) -> np.ndarray:
    """bool (N,): score >= the threshold's value."""
    return _scores(scores, "scores") >= threshold.value


def at_threshold(scores, labels, threshold: Threshold) -> dict:
    """Precision, recall and F1 of (score >= threshold) against labels, with the counts; nan where undefined
    (precision without any alarm, recall and F1 without any anomalous image)."""
    s = _scores(scores, "scores")
    y = _labels(labels, s.size)
    flagged = s >= threshold.value
    tp = int((flagged & y).sum())
    fp = int((flagged & ~y).sum())
    fn = int((~flagged & y).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fn else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn,
            "tn": int((~flagged & ~y).sum())}


def choose_threshold(scores, labels=None, reference_scores=None, given: float | None = None,
                     quantile: float = REFERENCE_QUANTILE) -> Threshold | None:
    """The category's threshold: ``given`` if any, else from the leave-one-out reference scores, else the
    labels' F1 optimum; None when none of them exists (no verdict). lo/hi span the scores and the threshold."""
    s = _scores(scores, "scores")
    if given is not None:
        value, source, q = float(given), "given", None
    elif reference_scores is not None and np.asarray(reference_scores).size:
        value, source, q = reference_threshold(reference_scores, quantile), "references", quantile
    elif labels is not None and np.asarray(labels).any():
        value, source, q = f1_optimal_threshold(s, labels), "f1_optimum", None
    else:
        return None
    return Threshold(value, source, float(min(s.min(), value)), float(max(s.max(), value)), q)


def threshold_from_results(path, method: str, category: str) -> Threshold:
    """The threshold an earlier run saved for ``category`` in its results.json (``--threshold-from``); the run
    must be of the same method. A file that saved a single category's threshold serves any category."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"--threshold-from: cannot read {path} ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"--threshold-from: {path} is not a results.json ({err})") from err
    if not isinstance(payload, dict) or "method" not in payload:
        raise ValueError(f"--threshold-from: {path} is not a jzad results.json (no 'method')")
    if payload["method"] != method:
        raise ValueError(f"--threshold-from: {path} is a --method {payload['method']} run; its scores are not on "
                         f"--method {method}'s scale")
    saved = {c["category"]: c["threshold"] for c in payload.get("categories", []) if c.get("threshold")}
    if "threshold" in payload and payload["threshold"]:
        saved.setdefault(payload.get("category", "stream"), payload["threshold"])
    if not saved:
        raise ValueError(f"--threshold-from: {path} holds no threshold (its run had no references, labels or "
                         "--threshold)")
    if category in saved:
        entry = saved[category]
    elif len(saved) == 1:
        entry = next(iter(saved.values()))
    else:
        raise ValueError(f"--threshold-from: {path} has no threshold for category {category!r}; it has "
                         f"{', '.join(sorted(saved))}")
    threshold = Threshold.from_json(entry)
    return dataclasses.replace(threshold, source="results")


__all__ = ["REFERENCE_QUANTILE", "SOURCES", "Threshold", "anomalous", "at_threshold", "choose_threshold",
           "f1_optimal_threshold", "normalised_scores", "reference_threshold", "threshold_from_results"]
