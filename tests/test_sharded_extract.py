"""Extraction sharded over the mesh: on 8 (fake) devices each batch is split by image, the features land split
over all 8, and the scores equal those of one device."""

import jax
import numpy as np

from jzad.experiment import build_scorer, demo_sources
from jzad.methods import get_method
from jzad.pipeline import extract_source, run_category
from jzad.timing import StageClock


def test_features_sharded_over_eight_devices_and_scores_equal_one_device():
    assert len(jax.devices()) >= 8
    method = get_method("patchcore")
    sharded = build_scorer(method, {}, 2, backbone="random-tiny-resnet", image_size=64, demo=True, shards=8,
                           batch_size=8)
    single = build_scorer(method, {}, 2, backbone="random-tiny-resnet", image_size=64, demo=True, shards=1,
                          batch_size=8)
    sources = demo_sources(64, 0, 2, 0)
    for rows in (None, 24):  # as extracted, and padded to a bucket of 24 rows
        features, _ = extract_source(sharded, sources.source, np.arange(16), StageClock(), rows=rows)
        for leaf in jax.tree.leaves(features):
            assert leaf.shape[0] == (rows or 16)
            assert len(leaf.sharding.device_set) == 8, leaf.sharding
            assert not leaf.sharding.is_fully_replicated, leaf.sharding
    one = run_category(single, sources.source, "synthetic", references=sources.references)
    eight = run_category(sharded, sources.source, "synthetic", references=sources.references)
    np.testing.assert_allclose(eight.image_scores, one.image_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eight.patch_scores, one.patch_scores, rtol=1e-5, atol=1e-6)
