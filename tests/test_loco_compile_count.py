"""Shapes that compile once, CLIP-LAD on MVTec LOCO: two categories whose per-category constants differ (pushpins:
N_c 4, fine classes per patch, 5 coarse and 2 fine prompts, 3 validation images; juice_bottle: N_c 8, per region,
4 fine prompts, 5 validation images) run one scoring program and fit without new programs. Counted from JAX's own
compile events on a synthetic LOCO tree scored through the driver (``jzad.pipeline``), the fused program the command
line runs."""

import jax
import numpy as np
import pytest

from jzad import data as jdata
from jzad.experiment import build_scorer
from jzad.methods import get_method
from jzad.pipeline import fit, score_groups, score_source
from jzad.timing import CompileLog, StageClock

CATEGORIES = ("pushpins", "juice_bottle")


@pytest.fixture(scope="module")
def loco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loco_compile")
    for seed, category in enumerate(CATEGORIES):
        jdata.write_synthetic_loco(root, category, num_train=3, num_validation=3 + 2 * seed, num_good=3,
                                   num_logical=3, num_structural=2, seed=seed)
    return root


@pytest.mark.slow
@pytest.mark.cold_process
def test_second_loco_category_compiles_no_scoring_program(loco_root):
    method = get_method("clip_lad")
    scorer = build_scorer(method, {}, 2, backbone="random-tiny-text", image_size=32, dataset="loco")
    compiled = {}
    states = {}
    for category in CATEGORIES:
        sources = jdata.category_sources("loco", loco_root, category, shots=2, seed=0, calibration="validation",
                                         subtypes="off")
        clock = StageClock()
        with CompileLog() as fitting:
            states[category] = fit(scorer, sources.references, clock, None, category, sources.calibration)
        groups = score_groups(method, len(sources.source), sources.source.defect_types, 1)
        with CompileLog() as scoring:
            score_source(scorer, states[category], sources.source, groups, clock)
        compiled[category] = (fitting.count, scoring.count)
    first, second = (compiled[c] for c in CATEGORIES)
    # The categories' constants really differ, and live in the state as arrays of equal shapes.
    one, two = (states[c] for c in CATEGORIES)
    assert (int(one.num_clusters), bool(one.region_level)) == (4, False)
    assert (int(two.num_clusters), bool(two.region_level)) == (8, True)
    assert jax.tree.map(np.shape, one) == jax.tree.map(np.shape, two)
    assert first[1] > 0, compiled  # the first category compiles the scoring program (and the maps)
    assert second[1] == 0, compiled  # the second reuses it
    # Fitting the second category (prompts, k-means in 8 slots, memories, calibration) compiles no new programs
    # either: every per-category constant is an array, and the validation sets (3 and 5 images) are padded to one
    # bucket size with the padding masked out of Eq. 4's statistics.
    assert second[0] == 0, compiled
