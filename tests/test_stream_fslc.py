"""Streaming FSLC against a NumPy loop written from the stream's rules (filter over the window, score, k-center
init / farthest-patch expansion, eviction of the highest a_f, window update), batch-size independence, the
masked Otsu split, a planted-defect stream, and the CLI."""

import csv

import jax.numpy as jnp
import numpy as np
import pytest

from jzad import data as jdata
from jzad.methods import Features
from jzad.methods.fslc import FSLCConfig, fslc_sets, otsu_split
from jzad.methods.stream_fslc import FSLCStreamConfig, fslc_stream_init, fslc_stream_step
from jzad.run import main
from test_fslc import np_otsu

CONFIG = FSLCConfig(r_list=(1,), num_init_images=2, init_coreset_size=6, expand_per_image=2, filter_fraction=0.5,
                    n_wanted=5, b=3)
STREAM = FSLCStreamConfig(capacity=10, window=3)


def dist(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def np_stream(feats, config, stream, init_count, expand_count):
    """The stream's rules in float64, one arrival at a time -> (patch scores (N, M), image scores (N,), coreset
    rows as a set of byte strings)."""
    n, m, c = feats.shape
    k_cap, w_cap = stream.capacity, stream.window
    coreset, filled = np.zeros((k_cap, c)), np.zeros(k_cap, bool)
    a = np.full((k_cap, w_cap), np.inf)
    window, window_valid = np.zeros((w_cap, m, c)), np.zeros(w_cap, bool)
    patches, images = [], []
    for t, x in enumerate(feats):
        w = window_valid.sum()
        if w:
            k = max(1, int(np.floor(config.filter_fraction * w)))
            a_f = np.where(filled, np.sort(a[:, window_valid], 1)[:, :k].mean(1), np.inf)
            if config.n_wanted == "otsu":
                kept = filled.copy()
                kept[filled] = np_otsu(a_f[filled], config.otsu_bins)[1]
            else:
                ranked = np.argsort(a_f, kind="stable")
                kept = np.zeros(k_cap, bool)
                kept[ranked[:config.n_wanted]] = True
                kept &= filled
        else:
            a_f = np.where(filled, 0.0, np.inf)
            kept = filled.copy()
        rows = coreset[kept]
        if len(rows):
            s = dist(x, rows).min(1)
            top = int(np.argmax(s))
            d = np.sort(dist(x[top:top + 1], rows)[0])[:config.b]
            patches.append(s)
            images.append(s[top] * (1.0 - 1.0 / np.exp(d - d[0]).sum()))
        else:
            patches.append(np.full(m, np.nan))
            images.append(np.nan)
        near = dist(x, coreset[filled]).min(1) if filled.any() else np.full(m, np.inf)
        if t < config.num_init_images:
            picks, current = [], near.copy()
            for _ in range(init_count):
                pick = int(np.argmax(current))
                picks.append(pick)
                current = np.minimum(current, dist(x, x[pick:pick + 1])[:, 0])
        else:
            picks = list(np.argsort(-near, kind="stable")[:expand_count])
        slots = np.argsort(np.where(filled, -a_f, -np.inf), kind="stable")[:len(picks)]
        coreset[slots] = x[picks]
        filled[slots] = True
        slot = t % w_cap
        window[slot], window_valid[slot] = x, True
        a[:, slot] = dist(coreset, x).min(1)
        for s_ in slots:
            a[s_] = [dist(coreset[s_:s_ + 1], window[j]).min() for j in range(w_cap)]
    return np.asarray(patches), np.asarray(images), {r.astype(np.float32).tobytes() for r in coreset[filled]}


def run_stream(grid, config, stream, batch):
    state = fslc_stream_init(config, stream, Features((jnp.asarray(grid[:batch]),)))
    patches, images, warming = [], [], []
    for first in range(0, len(grid), batch):
        part = grid[first:first + batch]
        real = len(part)
        part = np.concatenate([part, np.zeros((batch - real,) + part.shape[1:], part.dtype)])
        out, state = fslc_stream_step(config, stream, state, Features((jnp.asarray(part),)),
                                      jnp.arange(batch) < real)
        patches.append(np.asarray(out.patch_scores)[:real].reshape(real, -1))
        images.append(np.asarray(out.image_scores)[:real])
        warming.append(np.asarray(out.warming)[:real])
    return np.concatenate(patches), np.concatenate(images), np.concatenate(warming), state


@pytest.mark.parametrize("n_wanted", [5, "otsu"])
def test_stream_matches_the_numpy_rules_at_any_batch_size(n_wanted):
    config = FSLCConfig(**{**CONFIG.__dict__, "n_wanted": n_wanted, "otsu_bins": 8})
    grid = np.random.default_rng(0).normal(size=(9, 2, 3, 5)).astype(np.float32)
    feats = np.asarray(fslc_sets((jnp.asarray(grid),), config)[0], np.float64)
    ref_patch, ref_image, ref_rows = np_stream(feats, config, STREAM, 3, 2)
    first = None
    for batch in (1, 4):
        patch, image, warming, state = run_stream(grid, config, STREAM, batch)
        assert np.isnan(image[0]) and np.isfinite(image[1:]).all()
        np.testing.assert_allclose(patch[1:], ref_patch[1:], atol=1e-5)
        np.testing.assert_allclose(image[1:], ref_image[1:], atol=1e-5)
        assert warming.tolist() == [True, True] + [False] * 7
        st = state.sets[0]
        rows = np.asarray(st.coreset)[np.asarray(st.filled)]
        # 2 x 3 k-center rows + 7 x 2 expansion rows > capacity 10: the buffer is full, evictions happened.
        assert len(rows) == 10 and {r.tobytes() for r in rows} == ref_rows
        if first is None:
            first = image
        else:  # the same arithmetic per arrival; XLA may fuse a scan over 1 or 4 rows differently
            np.testing.assert_allclose(image, first, rtol=0, atol=1e-6)


def test_masked_otsu_equals_otsu_on_the_valid_values():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1, 30), rng.normal(6, 1, 10)]).astype(np.float32)
    valid = rng.random(40) < 0.7
    padded = np.where(valid, values, rng.normal(50, 10, 40)).astype(np.float32)
    threshold, low = otsu_split(jnp.asarray(padded), 32, jnp.asarray(valid))
    ref_threshold, ref_low = np_otsu(values[valid], 32)
    np.testing.assert_allclose(float(threshold), ref_threshold, rtol=1e-5)
    assert np.array_equal(np.asarray(low)[valid], ref_low) and not np.asarray(low)[~valid].any()


def test_planted_defects_score_above_every_normal_after_warm_up():
    rng = np.random.default_rng(2)
    prototypes = rng.normal(size=(9, 12))
    grid = prototypes[None] + 0.3 * rng.normal(size=(40, 9, 12))
    defect = np.zeros(40, bool)
    defect[[14, 22, 31, 37]] = True
    grid[defect, 4] = 4.0 * rng.normal(size=(4, 12))
    grid = grid.reshape(40, 3, 3, 12).astype(np.float32)
    config = FSLCConfig(r_list=(1,), num_init_images=4, init_coreset_size=16, expand_per_image=2, n_wanted="otsu",
                        b=3)
    _, image, warming, _ = run_stream(grid, config, FSLCStreamConfig(capacity=48, window=8), 4)
    settled = ~warming
    assert image[defect].min() > image[settled & ~defect].max()


def test_cli_streams_fslc(tmp_path, capsys):
    from PIL import Image

    images, *_ = jdata.make_synthetic_set(5, 2, size=32, seed=3)
    (tmp_path / "in").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "in" / f"{i}.png")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"in/{i}.png\n" for i in range(7)))
    argv = ["--method", "fslc", "--backbone", "random-tiny", "--image-size", "32", "--taps", "4", "--quiet",
            "--stream", "--data", str(listing), "--stream-batch", "3", "--coreset-capacity", "64", "--window", "4",
            "--init-images", "2", "--init-coreset", "8", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    with open(tmp_path / "out" / "scores_stream.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"in/{i}.png" for i in range(7)]
    # the first arrival has nothing to compare: written as 0.0 and warming, never NaN (jzad.stream.StreamOutputs)
    assert rows[0]["score"] == "0.0" and [r["warming"] for r in rows] == ["1", "1"] + ["0"] * 5
    assert main(argv[:-2] + ["--bank-size", "4", "--out", str(tmp_path / "o2")]) == 2
    assert "--bank-size does not apply to --method fslc" in capsys.readouterr().err
