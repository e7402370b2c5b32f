"""Verdicts (jzad.eval.verdict) against scikit-learn and closed forms."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, precision_score, recall_score

from jzad.eval import verdict


def _labelled(seed, n=60):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    scores = rng.normal(size=n) + 1.3 * labels
    scores[:5] = np.round(scores[:5], 1)  # some ties
    return scores, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_optimum_matches_sklearn(seed):
    scores, labels = _labelled(seed)
    t = verdict.f1_optimal_threshold(scores, labels)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    assert f1_score(labels, scores >= t) == pytest.approx(f1.max(), abs=1e-12)
    assert t == thresholds[f1 == f1.max()].max()  # the highest threshold among the optima
    assert t in scores


def test_precision_recall_at_threshold_matches_sklearn():
    scores, labels = _labelled(3)
    threshold = verdict.Threshold(0.4, "given", float(scores.min()), float(scores.max()))
    got = verdict.at_threshold(scores, labels, threshold)
    predicted = scores >= 0.4
    assert got["precision"] == pytest.approx(precision_score(labels, predicted))
    assert got["recall"] == pytest.approx(recall_score(labels, predicted))
    assert got["f1"] == pytest.approx(f1_score(labels, predicted))
    assert got["tp"] + got["fp"] + got["fn"] + got["tn"] == len(scores)
    never = verdict.Threshold(1e9, "given", 0.0, 1e9)
    assert np.isnan(verdict.at_threshold(scores, labels, never)["precision"])


def test_normalised_scores_are_anomalibs_min_max():
    scores = np.array([0.0, 2.0, 5.0, 10.0, 12.0])
    threshold = verdict.Threshold(5.0, "given", 0.0, 10.0)
    got = verdict.normalised_scores(scores, threshold)
    np.testing.assert_allclose(got, [0.0, 0.2, 0.5, 1.0, 1.0])
    assert (verdict.anomalous(scores, threshold) == (got >= 0.5)).all()


def test_reference_threshold_is_numpy_quantile():
    loo = np.random.default_rng(4).gamma(2.0, size=7)
    assert verdict.reference_threshold(loo) == pytest.approx(np.quantile(loo, 0.99))
    assert verdict.reference_threshold(loo, 1.0) == loo.max()
    with pytest.raises(ValueError, match="quantile"):
        verdict.reference_threshold(loo, 0.0)


def test_choose_threshold_order_and_range():
    scores, labels = _labelled(5)
    assert verdict.choose_threshold(scores, labels, [0.1, 0.2], given=0.7).source == "given"
    from_refs = verdict.choose_threshold(scores, labels, [0.1, 0.2, 9.0])
    assert from_refs.source == "references" and from_refs.hi == pytest.approx(np.quantile([0.1, 0.2, 9.0], 0.99))
    assert verdict.choose_threshold(scores, labels).source == "f1_optimum"
    assert verdict.choose_threshold(scores, np.zeros_like(labels)) is None
    assert verdict.choose_threshold(scores) is None


def test_threshold_round_trips_through_results_json(tmp_path):
    threshold = verdict.Threshold(3.5, "references", 1.0, 6.0, 0.99)
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"method": "patchcore", "categories": [
        {"category": "hazelnut", "threshold": threshold.to_json()},
        {"category": "grid", "threshold": None}]}))
    back = verdict.threshold_from_results(path, "patchcore", "hazelnut")
    assert (back.value, back.lo, back.hi, back.source) == (3.5, 1.0, 6.0, "results")
    assert verdict.threshold_from_results(path, "patchcore", "stream").value == 3.5  # the only one saved
    with pytest.raises(ValueError, match="--method patchcore run"):
        verdict.threshold_from_results(path, "musc", "hazelnut")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="--threshold-from: .*bad.json"):
        verdict.threshold_from_results(tmp_path / "bad.json", "musc", "x")


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="scores: contains NaN"):
        verdict.f1_optimal_threshold([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="labels: expected shape"):
        verdict.f1_optimal_threshold([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="at least one anomalous"):
        verdict.f1_optimal_threshold([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="threshold source"):
        verdict.Threshold(0.1, "guess", 0.0, 1.0)
