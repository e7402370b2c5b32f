"""The real-photo accuracy benchmark (benchmarks/real_accuracy.py, real_accuracy_report.py): how it builds its
sets, how it aggregates runs and how it rewrites the README section."""

from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import real_accuracy, real_accuracy_report


def _mtd_tree(root: Path, normals: int, defects: dict) -> None:
    for name, count in {"Free": normals, **defects}.items():
        folder = root / f"MT_{name}" / "Imgs"
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / f"{name.lower()}_{i:03d}.jpg")
            mask = np.zeros((8, 8), np.uint8)
            if name != "Free":
                mask[2:4, 2:4] = 255
            Image.fromarray(mask).save(folder / f"{name.lower()}_{i:03d}.png")


def test_mtd_sets_share_one_seeded_normal_draw_disjoint_from_the_pool(tmp_path, monkeypatch):
    rule = dict(real_accuracy.SETTINGS["mtd"], test_normals=4)
    monkeypatch.setitem(real_accuracy.SETTINGS, "mtd", rule)
    _mtd_tree(tmp_path, 10, {"Blowhole": 3, "Break": 2, "Crack": 1})
    sets = real_accuracy.mtd_sets(tmp_path)
    free = sorted(str(p) for p in (tmp_path / "MT_Free" / "Imgs").glob("*.jpg"))
    order = np.random.default_rng(0).permutation(10)
    expected_normals = {free[i] for i in order[:4]}
    assert [s.name for s in sets] == ["mtd-blowhole", "mtd-break", "mtd-crack"]
    for eval_set, defects in zip(sets, (3, 2, 1)):
        paths = eval_set.source.image_set.paths
        labels = np.asarray(eval_set.source.labels)
        assert {p for p, label in zip(paths, labels) if label == 0} == expected_normals
        assert int(labels.sum()) == defects and eval_set.source.has_masks
        assert set(eval_set.pool.paths) == set(free) - expected_normals
    references = real_accuracy.references_for(sets[0], 2, seed=1)
    picked = np.sort(np.random.default_rng(1).choice(6, 2, replace=False))
    assert references.image_set.paths == tuple(sets[0].pool.paths[i] for i in picked)


def _record(set_name, method, weights, shots, seed, auroc, extract_s, images=10):
    metrics = {name: 0.5 for name in real_accuracy.METRIC_COLUMNS}
    metrics["image_auroc"] = auroc
    return {"set": set_name, "method": method, "weights": weights, "shots": shots, "seed": seed, "images": images,
            "metrics": metrics, "stage_seconds": {"extract": extract_s}, "compile_seconds": {"extract": 1.0},
            "cpu_seconds": 2.0, "wall_seconds": 3.0}


def test_summary_is_mean_and_std_over_seeds_and_time_per_image_over_imagenet_runs():
    runs = [_record("a", "pc", "imagenet", 1, s, v, 0.5) for s, v in ((0, 0.6), (1, 0.8), (2, 1.0))]
    runs += [_record("a", "pc", "random", 1, 0, 0.4, 9.0), _record("a", "musc", "imagenet", 0, None, 0.9, 1.0, 20)]
    summary = real_accuracy.summarise(runs)
    rows = {(r["method"], r["weights"]): r for r in summary["table"]}
    assert rows[("pc", "imagenet")]["runs"] == 3
    np.testing.assert_allclose(rows[("pc", "imagenet")]["mean"]["image_auroc"], 0.8)
    np.testing.assert_allclose(rows[("pc", "imagenet")]["std"]["image_auroc"], np.std([0.6, 0.8, 1.0]))
    assert rows[("musc", "imagenet")]["std"]["image_auroc"] is None
    timing = summary["timing"]
    assert set(timing) == {"pc", "musc"}
    np.testing.assert_allclose(timing["pc"]["ms_per_image"]["extract"], 1000 * 1.5 / 30)
    np.testing.assert_allclose(timing["pc"]["cpu_ms_per_image"], 1000 * 6.0 / 30)
    np.testing.assert_allclose(timing["musc"]["total_ms_per_image"], 1000 * 1.0 / 20)
    assert timing["pc"]["compile_s"] == 3.0


def test_readme_section_is_replaced_in_place_or_appended():
    section = "## Accuracy on real photos\n\nnew table\n"
    readme = "# jzad\n\n## Performance\n\nold perf\n\n## Accuracy on real photos\n\nold table\n\n## Next\n\ntext\n"
    assert real_accuracy_report.replace_section(readme, section) == (
        "# jzad\n\n## Performance\n\nold perf\n\n## Accuracy on real photos\n\nnew table\n\n## Next\n\ntext\n")
    assert real_accuracy_report.replace_section("# jzad\n\nintro\n", section) == (
        "# jzad\n\nintro\n\n## Accuracy on real photos\n\nnew table\n")
    at_end = "# jzad\n\n## Accuracy on real photos\n\nold\n"
    assert real_accuracy_report.replace_section(at_end, section) == "# jzad\n\n" + section


def test_percent_cells():
    assert real_accuracy_report.percent(0.91234, 0.0123) == "91.2 ± 1.2"
    assert real_accuracy_report.percent(1.0) == "100.0"
    assert real_accuracy_report.percent(None) == "n/a"


def test_dinov2_section_compares_at_the_same_draws_and_sets():
    dino_runs = [_record("a", "pc", "dinov2", 1, 0, 0.9, 1.0), _record("a", "musc", "dinov2", 0, None, 0.7, 1.0)]
    effnet_runs = [_record("a", "pc", "imagenet", 1, s, v, 0.5) for s, v in ((0, 0.6), (1, 0.8))]
    effnet_runs += [_record("a", "pc", "imagenet", 2, 0, 0.1, 0.5), _record("b", "pc", "imagenet", 1, 0, 0.2, 0.5),
                    _record("a", "pc", "random", 1, 0, 0.4, 0.5)]
    settings = dict(real_accuracy.DINO_SETTINGS, shots=[1], draw_seeds=[0])
    dino = {"settings": settings, "runs": dino_runs, "sets": {"a": {}}, "methods": ["pc", "musc"],
            "device": {"cpu": "cpu", "cpu_count": 2, "load_average": None}, "versions": {"jax": "x"}, "date": "d",
            **real_accuracy.summarise(dino_runs, "dinov2")}
    both = real_accuracy_report.comparable(dino, {"runs": effnet_runs})
    rows = {(r["method"], r["shots"], r["weights"]): r for r in both["table"]}
    assert set(rows) == {("pc", 1, "dinov2"), ("musc", 0, "dinov2"), ("pc", 1, "imagenet"), ("pc", 1, "random")}
    assert rows[("pc", 1, "imagenet")]["runs"] == 1 and rows[("pc", 1, "imagenet")]["mean"]["image_auroc"] == 0.6
    text = real_accuracy_report.render_dinov2(dino, {"runs": effnet_runs})
    assert text.startswith(real_accuracy_report.DINO_HEADING) and "Runs finished: 2 of 4 planned." in text
    assert "| pc 1-shot | 1 | 90.0 | 60.0 | 40.0 |" in text
