"""The experiment API (jzad.experiment) used as a library: the heat maps reuse the driver's decode (each image
decoded once), a failing category is recorded while the others finish, results.json carries its schema
version, and seed statistics are NumPy's mean and population std."""

import json

import numpy as np
import pytest

from jzad import data as jdata
from jzad.experiment import (
    RESULTS_SCHEMA,
    OutputSpec,
    Plan,
    ResultsFile,
    build_scorer,
    demo_sources,
    results_header,
    run_experiment,
    seed_statistics,
)
from jzad.methods import get_method

SIZE = 32


class CountingImages(jdata.ArrayImages):
    """ArrayImages that count how often each image is decoded."""

    decoded: list

    def decode(self, indices, prep, size):
        self.decoded.extend(int(i) for i in indices)
        return super().decode(indices, prep, size)


def counting_sources(category, seed):
    if category == "broken":
        raise ValueError("broken: no images here")
    found = demo_sources(SIZE, 0, 0, seed)
    source = found.source
    counting = CountingImages(source.images, source.names, source.labels, source.defect_types, source._masks)
    counting.decoded = []
    counting_sources.made.append(counting)
    return jdata.CategorySources(counting, None, None, category, "")


def test_heatmaps_reuse_the_driver_decode_and_a_failed_category_is_recorded(tmp_path):
    scorer = build_scorer(get_method("musc"), {}, 0, backbone="random-tiny", image_size=SIZE, demo=True)
    counting_sources.made = []
    results = ResultsFile(tmp_path / "results.json", results_header(scorer, {}, "demo"))
    done = run_experiment(scorer, Plan(("synthetic", "broken")), counting_sources, results,
                          OutputSpec(tmp_path, heatmap_size=SIZE), show_progress=False, log=lambda text: None)
    (source,) = counting_sources.made
    assert sorted(source.decoded) == list(range(len(source)))  # each image once, heat maps included
    assert len(list((tmp_path / "heatmaps" / "synthetic").glob("*.png"))) == len(source)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["schema_version"] == RESULTS_SCHEMA == 2 and saved["status"] == "failed"
    assert saved["failed"] == [{"category": "broken", "error": "broken: no images here", "error_type": "ValueError"}]
    assert [c["category"] for c in saved["categories"]] == ["synthetic"] and len(done.rows) == 1


def test_seed_statistics_are_numpy_mean_and_population_std():
    rng = np.random.default_rng(0)
    runs = [{"a": float(x), "b": float(y)} for x, y in rng.normal(size=(5, 2))]
    mean, std = seed_statistics(runs)
    values = np.array([[r["a"], r["b"]] for r in runs])
    assert mean == pytest.approx({"a": values[:, 0].mean(), "b": values[:, 1].mean()})
    assert std == pytest.approx({"a": values[:, 0].std(), "b": values[:, 1].std()})
    mean, std = seed_statistics([{"a": 1.0}, {"a": float("nan")}])
    assert np.isnan(mean["a"]) and np.isnan(std["a"])
