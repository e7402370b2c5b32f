"""Shapes that compile once: MuSc on the built-in demo set with --subsets 3 (subsets of uneven sizes, padded to
one bucket) compiles at most 2 more XLA programs than with --subsets 1, counted from JAX's own compile events;
and the pad-and-mask path gives the scores of the unpadded pool."""

import os

import jax
import numpy as np
import pytest

from jzad.experiment import build_scorer, demo_sources
from jzad.methods import get_method
from jzad.methods.musc import MuScConfig, MuScState, mutual_scores
from jzad.pipeline import bucket_size, run_category, with_valid
from jzad.timing import CompileLog
from jzad.features.types import Features

def compiled_programs(fn) -> int:
    """XLA programs compiled while fn() runs, from an empty in-memory jit cache: the test runs in a cold process
    (``cold_process``: persistent cache off), so clearing here touches no other test."""
    jax.clear_caches()
    with CompileLog() as log:
        fn()
    return log.count


@pytest.mark.slow
@pytest.mark.cold_process
@pytest.mark.parametrize("name", ["musc", "fslc"])
def test_demo_subsets_3_compiles_at_most_two_more_programs_than_subsets_1(name):
    """MuSc and FSLC pad their subsets to one bucket (masked pools): uneven subsets share one program."""
    method = get_method(name)
    assert method.pads_to_buckets(method.config_type())
    scorer = build_scorer(method, {}, 0, backbone="random-tiny", image_size=64, demo=True)
    sources = demo_sources(64, 0, 0, 0)
    groups = {}

    def run(subsets):
        result = run_category(scorer, sources.source, "synthetic", subsets=subsets)
        groups[subsets] = [len(g) for g in result.groups]

    one = compiled_programs(lambda: run(1))
    three = compiled_programs(lambda: run(3))
    assert len(set(groups[3])) > 1, groups  # the official subsets differ in size
    assert three <= one + 2, (one, three, groups)


def test_bucket_sizes_and_masked_pool_equal_the_unpadded_pool():
    assert [bucket_size(n) for n in (1, 8, 9, 10, 11, 28, 29, 64, 65, 200)] == [8, 8, 10, 10, 12, 28, 32, 64, 80, 224]
    rng = np.random.default_rng(3)
    grids = (rng.normal(size=(9, 4, 4, 6)).astype(np.float32),)
    method = get_method("musc")
    for schedule in ("pairs", "rows"):
        config = MuScConfig(r_list=(1, 3), schedule=schedule, map_size=None)
        plain, _ = method.score(config, MuScState(), Features(grids))
        zero_row = np.zeros((1,) + grids[0].shape[1:], np.float32)
        padded = with_valid(Features((np.concatenate([grids[0], zero_row]),)), 9, bucket_size(9))
        assert padded.extras["valid"].tolist() == [True] * 9 + [False]
        masked, _ = method.score(config, MuScState(), padded)
        np.testing.assert_allclose(np.asarray(masked.patch_scores)[:9], np.asarray(plain.patch_scores),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(masked.image_scores)[:9], np.asarray(plain.image_scores),
                                   rtol=1e-5, atol=1e-6)
    features = rng.normal(size=(5, 3, 4)).astype(np.float32)
    valid = np.array([True] * 4 + [False])
    # Padding rows out of the pool: the first 4 rows score as the 4-image pool alone.
    np.testing.assert_allclose(np.asarray(mutual_scores(features, MuScConfig(), None, None, valid))[:4],
                               np.asarray(mutual_scores(features[:4], MuScConfig())), rtol=1e-5, atol=1e-6)


@pytest.mark.cold_process
def test_a_cold_process_test_runs_in_a_process_of_its_own_without_the_persistent_cache(request):
    """What the compile-count tests rely on (and what keeps their cache clearing away from the other tests):
    a ``cold_process`` test's body runs in a new process, named by its node id, with the persistent cache off."""
    assert os.environ.get("JZAD_TEST_COLD_PROCESS") == request.node.nodeid
    assert not jax.config.jax_enable_compilation_cache
