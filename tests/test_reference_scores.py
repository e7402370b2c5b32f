"""Leave-one-out reference scores (jzad.reference_scores) against the pipeline run on each split by hand."""

import numpy as np
import pytest

from jzad import data as jdata
from jzad.features import load_backbone
from jzad.methods import RunContext, get_method
from jzad.pipeline import Scorer, run_category
from jzad.reference_scores import leave_one_out_scores

SIZE = 32


def _scorer(name, shots):
    method = get_method(name)
    backbone = load_backbone(method.tiny_backbone, method.backbone_run(None), image_size=SIZE, seed=2)
    config = method.configure({}, RunContext("mvtec", SIZE, shots=shots))
    return Scorer(method, config, backbone, None, batch_size=4)


def test_each_reference_scored_against_the_others_as_a_run_would():
    refs, _, _, _ = jdata.make_synthetic_set(3, 0, size=SIZE, seed=7)
    source = jdata.ArrayImages(refs, [f"r{i}" for i in range(3)], np.zeros(3), ("good",) * 3)
    scorer = _scorer("patchcore", 3)
    got = leave_one_out_scores(scorer, source)
    for i in (1,):  # one split checked: each run_category compiles afresh
        rest = [j for j in range(3) if j != i]
        one = jdata.ArrayImages(refs[i:i + 1], ["q"], np.zeros(1), ("good",))
        others = jdata.ArrayImages(refs[rest], [f"r{j}" for j in rest], np.zeros(2), ("good",) * 2)
        expected = run_category(scorer, one, "c", others).image_scores[0]
        assert got[i] == pytest.approx(float(expected), rel=1e-5)
    assert leave_one_out_scores(scorer, jdata.ArrayImages(refs[:1], ["a"], np.zeros(1), ("good",))) is None
    assert leave_one_out_scores(_scorer("musc", 0), source) is None  # a pooling method has none


def test_a_method_that_cannot_fit_one_reference_fewer_is_reported_and_the_run_falls_back_to_the_labels(tmp_path):
    from jzad.experiment import OutputSpec, Plan, ResultsFile, demo_sources, results_header, run_experiment
    from jzad.reference_scores import ReferencesTooFew

    # PatchCore+'s coreset keeps 5 % of the patches: one 32 px image has 16, so R - 1 = 1 reference keeps none.
    method = get_method("patchcore_plus")
    backbone = load_backbone(method.tiny_backbone, method.backbone_run(None), image_size=SIZE, seed=2)
    scorer = Scorer(method, method.configure({}, RunContext("synthetic", SIZE, shots=2)), backbone, None, 4)
    sources = demo_sources(SIZE, 0, 2, 0)
    with pytest.raises(ReferencesTooFew, match="cannot be fitted on 1 of the 2 references.*keeps none"):
        leave_one_out_scores(scorer, sources.references)
    results = ResultsFile(tmp_path / "results.json", results_header(scorer, {}, "demo"))
    done = run_experiment(scorer, Plan(("synthetic",), shots=2), lambda category, seed: sources, results,
                          OutputSpec(None), show_progress=False, log=lambda text: None)
    entry = results.payload["categories"][0]
    assert done.rows and entry["threshold"]["source"] == "f1_optimum"
    assert any("no leave-one-out threshold" in note for note in entry["notes"])
