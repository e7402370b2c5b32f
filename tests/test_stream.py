"""Streaming MuSc and the stream driver: masked MSM and the bank against a NumPy per-image loop, the ring buffer
wrap-around, the reservoir against algorithm R, normal-only admission against np.quantile, warm-up flags, the
whole set in one batch = zero-shot MuSc bit for bit, a defect burst, restart equivalence (API and CLI), arrivals."""

import csv
import dataclasses
import functools
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jzad import data as jdata
from jzad.data.arrivals import arrivals, folder_arrivals, list_arrivals
from jzad.features import load_backbone
from jzad.kernels import mean_of_ranks
from jzad.methods import Features, FeatureRequest, RunContext, get_method, get_streaming, streaming_names
from jzad.methods.musc import MuScConfig, MuScState, masked_mutual_scores, musc_score
from jzad.methods.stream_musc import (
    MuScStreamConfig,
    masked_quantile,
    musc_stream_init,
    musc_stream_step,
)
from jzad.pipeline import Scorer
from jzad.run import main
from jzad.stream import (BatchTiming, StreamCheckpoints, StreamOutputs, Streamer, has_checkpoint, restore_state,
                         run_stream, save_state)

CONFIG = MuScConfig(r_list=(1,), map_size=None)


def np_unit_patches(grid):
    """LNAMD at r = 1 in float64: joint layer norm of each (h, w, C) map, then L2 per patch -> (N, M, C)."""
    grid = np.asarray(grid, np.float64)
    n = grid.shape[0]
    flat = grid.reshape(n, -1)
    x = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    x = x.reshape(n, -1, grid.shape[-1])
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_msm(query, others, lo=0.0, hi=0.3):
    """MSM of one image (M, C) against a list of other images: mean of the ranked [lo, hi) nearest distances."""
    d = np.stack([np.sqrt(((query[:, None] - o[None]) ** 2).sum(-1)).min(1) for o in others], 1)
    d.sort(1)
    n = d.shape[1]
    start = int(np.floor(lo * n))
    stop = max(int(np.floor(hi * n)), start + 1)
    return d[:, start:stop].mean(1)


def grids(n, seed, side=3, channels=8):
    return np.random.default_rng(seed).normal(size=(n, side, side, channels)).astype(np.float32)


def stream_all(stream, grid, batch, config=CONFIG):
    """Feed grid's images in order, batch by batch (the last padded) -> (outputs per image, final state)."""
    state = musc_stream_init(config, stream, Features((jnp.asarray(grid[:batch]),)))
    rows = []
    for first in range(0, len(grid), batch):
        part = grid[first:first + batch]
        valid = np.arange(batch) < len(part)
        part = np.concatenate([part, np.zeros((batch - len(part),) + part.shape[1:], part.dtype)])
        out, state = musc_stream_step(config, stream, state, Features((jnp.asarray(part),)), jnp.asarray(valid))
        rows += [jax.tree.map(lambda a, i=i: np.asarray(a)[i], out) for i in range(int(valid.sum()))]
    return rows, state


@pytest.mark.parametrize("lo, hi", [(0.0, 0.3), (0.2, 0.9)])
def test_masked_mutual_scores_match_numpy_over_the_valid_rows(lo, hi):
    pool = np_unit_patches(grids(9, 1)).astype(np.float32)
    valid = np.array([1, 1, 1, 0, 1, 0, 1, 1, 0], bool)
    config = MuScConfig(interval=(lo, hi), image_block=2, query_tile=5, group_tile=3)
    got = np.asarray(masked_mutual_scores(jnp.asarray(pool), jnp.asarray(valid), 3, config))
    for i in range(3):
        others = [pool[j].astype(np.float64) for j in range(9) if valid[j] and j != i]
        np.testing.assert_allclose(got[i], np_msm(pool[i].astype(np.float64), others, lo, hi), atol=1e-5)
    alone = np.asarray(masked_mutual_scores(jnp.asarray(pool), jnp.asarray(np.eye(9, dtype=bool)[0]), 1, config))
    assert np.isposinf(alone).all()


def test_traced_interval_bounds_equal_the_static_ones():
    x = np.random.default_rng(2).random((4, 6, 11)).astype(np.float32)
    x[..., 9:] = np.inf
    for start, stop in ((0, 3), (2, 7)):
        traced = jax.jit(lambda v, a, b: mean_of_ranks(v, a, b))(x, jnp.int32(start), jnp.int32(stop))
        np.testing.assert_allclose(traced, mean_of_ranks(jnp.asarray(x), start, stop), rtol=1e-6)
        if start == 0:
            zero_start = jax.jit(lambda v, b: mean_of_ranks(v, 0, b))(x, jnp.int32(stop))
            np.testing.assert_array_equal(zero_start, mean_of_ranks(jnp.asarray(x), 0, stop))


def test_whole_set_in_one_batch_equals_zero_shot_musc():
    method = get_method("musc")
    backbone = load_backbone("random-tiny", method.backbone_run(None), image_size=32, taps=(2, 4), seed=0)
    config = method.configure({"r_list": (1, 3)}, RunContext("synthetic", 32))
    images, *_ = jdata.make_synthetic_set(6, 4, size=32, seed=1)
    features = backbone(images, FeatureRequest(embedding=False))
    stream = MuScStreamConfig(capacity=12)
    out, state = musc_stream_step(config, stream, musc_stream_init(config, stream, features), features,
                                  jnp.ones(10, bool))
    # Bit for bit against the "rows" schedule: the pool [batch; empty bank] puts every image in the same GEMM
    # tile position as zero-shot MSM, the empty slots are +inf and k comes from the real count.
    rows, _ = musc_score(dataclasses.replace(config, schedule="rows"), MuScState(), features)
    np.testing.assert_array_equal(np.asarray(out.patch_scores), np.asarray(rows.patch_scores))
    np.testing.assert_array_equal(np.asarray(out.image_scores), np.asarray(rows.image_scores))
    # The default schedule ("auto": MuSc's symmetric "pairs" at this size) computes the distances in another
    # GEMM order: equal to float rounding.
    pairs, _ = musc_score(config, MuScState(), features)
    np.testing.assert_allclose(np.asarray(out.patch_scores), np.asarray(pairs.patch_scores), rtol=0, atol=1e-6)
    assert np.asarray(out.warming).all() and np.asarray(out.banked).all()
    assert int(state.seen) == 10 and np.asarray(state.valid).sum() == 10


@pytest.mark.parametrize("batch", [1, 2])
def test_fifo_ring_buffer_wraps_around(batch):
    grid = grids(9, 3)
    feats = np_unit_patches(grid)
    rows, state = stream_all(MuScStreamConfig(capacity=4, warmup=2), grid, batch)
    assert np.isnan(rows[0].image_scores) if batch == 1 else np.isfinite(rows[0].image_scores)
    for t in range(9):
        first = t - t % batch
        bank = list(range(max(0, first - 4), first))
        partners = [s for s in range(first, min(first + batch, 9)) if s != t]
        others = [feats[s] for s in bank + partners]
        if not others:
            continue
        expected = np_msm(feats[t], others)
        np.testing.assert_allclose(rows[t].patch_scores.reshape(-1), expected, atol=1e-5)
        np.testing.assert_allclose(rows[t].image_scores, expected.max(), atol=1e-5)
        assert rows[t].warming == (len(bank) < 2) and rows[t].banked
    # Slots hold admissions t mod 4: images 8, 5, 6, 7.
    np.testing.assert_allclose(np.asarray(state.features[0]), feats[[8, 5, 6, 7]], atol=1e-5)
    assert int(state.admitted) == 9 and np.asarray(state.valid).all()


def test_reservoir_follows_algorithm_r():
    grid = grids(12, 4)
    stream = MuScStreamConfig(capacity=3, replacement="reservoir", warmup=1, seed=5)
    rows, state = stream_all(stream, grid, 1)
    slots = []
    for t in range(12):
        j = t if t < 3 else int(jax.random.randint(jax.random.fold_in(jax.random.key(5), t), (), 0, t + 1))
        slots.append(j)
    bank = [None] * 3
    for t, j in enumerate(slots):
        assert rows[t].banked == (j < 3)
        if j < 3:
            bank[j] = t
    np.testing.assert_allclose(np.asarray(state.features[0]), np_unit_patches(grid)[bank], atol=1e-5)


def test_masked_quantile_matches_numpy():
    rng = np.random.default_rng(6)
    for _ in range(5):
        values = rng.normal(size=13).astype(np.float32)
        mask = rng.random(13) < 0.6
        values[~mask & (rng.random(13) < 0.5)] = np.nan
        for q in (0.5, 0.9, 1.0):
            got = masked_quantile(jnp.asarray(values), jnp.asarray(mask), q)
            np.testing.assert_allclose(got, np.quantile(values[mask].astype(np.float64), q), rtol=1e-6)
    assert np.isnan(masked_quantile(jnp.zeros(4), jnp.zeros(4, bool), 0.5))


def test_admission_by_quantile_of_the_bank_scores():
    grid = grids(14, 7)
    grid[9] *= np.linspace(0.0, 3.0, 8, dtype=np.float32)
    stream = MuScStreamConfig(capacity=6, admit_quantile=0.5, warmup=4)
    rows, state = stream_all(stream, grid, 1)
    slots, slot_scores, admitted_count = [None] * 6, [np.nan] * 6, 0
    for t in range(14):
        in_bank = sum(s is not None for s in slots)
        if in_bank < 4:
            admitted = True
        else:
            finite = np.asarray([s for s in slot_scores if np.isfinite(s)], np.float64)
            admitted = rows[t].image_scores <= np.quantile(finite, 0.5)
        assert rows[t].banked == admitted and rows[t].warming == (in_bank < 4), t
        if admitted:
            slots[admitted_count % 6] = t
            slot_scores[admitted_count % 6] = rows[t].image_scores
            admitted_count += 1
    assert np.isnan(rows[0].image_scores) and 0 < sum(not r.banked for r in rows) < 10
    np.testing.assert_allclose(np.asarray(state.features[0]), np_unit_patches(grid)[slots], atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.scores)[1:], slot_scores[1:], rtol=1e-6)


def burst_features(seed=0, normals=30, burst=12, after=10, side=4, channels=16):
    """Normal images: fixed prototypes per position plus noise; defects: two patches replaced by one fixed
    vector (a burst of identical defects). Returns grids (N, side, side, C) and is_defect (N,)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(side * side, channels))
    defect = rng.normal(size=channels) * 3.0
    count = normals + burst + after
    patches = prototypes[None] + 0.4 * rng.normal(size=(count, side * side, channels))
    is_defect = np.zeros(count, bool)
    is_defect[normals:normals + burst] = True
    patches[is_defect, 5] = defect
    patches[is_defect, 6] = defect
    return patches.reshape(count, side, side, channels).astype(np.float32), is_defect


def test_defect_burst_normal_only_admission_keeps_the_burst_above_the_normals():
    grid, is_defect = burst_features()
    scores = {}
    for name, stream in (("fifo", MuScStreamConfig(capacity=16, warmup=8)),
                         ("admit", MuScStreamConfig(capacity=16, warmup=8, admit_quantile=0.9))):
        rows, _ = stream_all(stream, grid, 1)
        scores[name] = (np.asarray([r.image_scores for r in rows]), np.asarray([r.banked for r in rows]))
    for name, (s, banked) in scores.items():
        normal = s[~is_defect][8:]
        p95 = np.percentile(normal, 95)
        burst = s[is_defect]
        if name == "fifo":
            # The bank fills with the burst: once k = floor(0.3 * 16) = 4 twins are banked, each later defect
            # finds zero-distance matches and scores like a normal image.
            assert burst[0] > p95 and (burst[5:] < p95).all()
            assert banked[is_defect].all()
        else:
            assert (burst > p95).all() and not banked[is_defect].any()


SIZE = 32


@functools.lru_cache(maxsize=None)
def tiny_backbone():
    """One random tiny backbone (taps: the last block) for every streamer, so its forward compiles once."""
    return load_backbone("random-tiny", get_method("musc").backbone_run(None), image_size=SIZE, taps=(4,), seed=0)


def tiny_streamer(batch, capacity=5, **stream):
    method = get_method("musc")
    backbone = tiny_backbone()
    config = method.configure({"r_list": (1,)}, RunContext("synthetic", SIZE))
    return Streamer(Scorer(method, config, backbone), MuScStreamConfig(capacity=capacity, warmup=2, **stream), batch)


def array_decode(images):
    return lambda items: (images[np.asarray(items)], [(SIZE, SIZE)] * len(items))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_restart_continues_with_the_same_scores(tmp_path):
    images, *_ = jdata.make_synthetic_set(7, 4, size=SIZE, seed=2)
    streamer = tiny_streamer(batch=2)
    names = [f"img{i:02d}" for i in range(11)]
    items = list(zip(names, range(11)))
    whole = StreamOutputs(tmp_path / "whole")
    summary, final = run_stream(streamer, items, whole, decode=array_decode(images))
    whole.close()
    assert summary.images == 11 and summary.batches == 6 and summary.latency_ms.shape == (11,)

    first = StreamOutputs(tmp_path / "split")
    run_stream(streamer, items[:6], first, state_dir=tmp_path / "state", decode=array_decode(images))
    first.close()
    fresh = tiny_streamer(batch=2)
    state, done = restore_state(tmp_path / "state", fresh.init(), fresh.signature())
    assert done == 6
    rest = StreamOutputs(tmp_path / "split", keep=done)
    summary, resumed = run_stream(fresh, items, rest, state, done, decode=array_decode(images))
    rest.close()
    assert summary.images == 5
    got = read_csv(tmp_path / "split" / "scores_stream.csv")
    expected = read_csv(tmp_path / "whole" / "scores_stream.csv")
    key = ("index", "name", "score", "warming", "banked")
    assert [[r[k] for k in key] for r in got] == [[r[k] for k in key] for r in expected]
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(final)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = tiny_streamer(batch=3)
    with pytest.raises(ValueError, match="another stream set-up.*batch"):
        restore_state(tmp_path / "state", other.init(), other.signature())
    with pytest.raises(ValueError, match="must replay the same arrivals"):
        run_stream(fresh, [("other", 0)] + items[1:], StreamOutputs(tmp_path / "split", keep=6), state, 6,
                   decode=array_decode(images))


@pytest.mark.parametrize("name", streaming_names())
def test_every_streaming_method_restarts_from_a_checkpoint_with_the_same_scores(name, tmp_path):
    method, streaming = get_method(name), get_streaming(name)
    images, *_ = jdata.make_synthetic_set(4, 2, size=SIZE, seed=6)
    if streaming.references:  # few-shot: its own tiny backbone, two references fitted once
        backbone = load_backbone(method.tiny_backbone, method.backbone_run(None), image_size=SIZE, seed=1,
                                 with_text=method.needs_text)
        config = method.configure({}, RunContext("synthetic", SIZE, shots=2))
        references = jdata.make_synthetic_set(2, 0, size=SIZE, seed=7)[0]
        streamer = Streamer(Scorer(method, config, backbone), streaming.configure({}, config), 2, references)
    else:
        config = method.configure({"r_list": (1,)}, RunContext("synthetic", SIZE))
        streamer = Streamer(Scorer(method, config, tiny_backbone()), streaming.configure({}, config), 2)
    state, scores = streamer.init(), []
    for first in range(0, 6, 2):
        out, state = streamer.step(state, images[first:first + 2])
        scores.append(np.asarray(out.image_scores))
        if first == 2:
            save_state(tmp_path, state, 4, streamer.signature())
    restored, done = restore_state(tmp_path, streamer.init(), streamer.signature())
    out, _ = streamer.step(restored, images[4:6])
    assert done == 4 and np.isfinite(scores[-1]).all()
    np.testing.assert_array_equal(np.asarray(out.image_scores), scores[-1])


def test_save_state_keeps_only_the_newest_checkpoint(tmp_path):
    streamer = tiny_streamer(batch=1)
    state = streamer.init()
    save_state(tmp_path, state, 3, streamer.signature())
    save_state(tmp_path, state, 5, streamer.signature())
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["5"] and has_checkpoint(tmp_path) == 5


def test_an_async_checkpoint_keeps_the_state_the_next_step_donates(tmp_path):
    """The save returns before the files are written and the next step is handed the saved buffers to donate
    (on a GPU it reuses them; on the CPU orbax's zero-copy host views keep them alive until written): the
    checkpoint on disk must hold the state as it was when the save began, not the next step's."""
    images, *_ = jdata.make_synthetic_set(6, 0, size=SIZE, seed=4)
    streamer = tiny_streamer(batch=2)
    _, state = streamer.step(streamer.init(), images[:2])
    _, state = streamer.step(state, images[2:4])
    expected = [np.array(leaf) for leaf in jax.tree.leaves(state)]
    with StreamCheckpoints(tmp_path / "state") as checkpoints:
        checkpoints.save(state, 4, streamer.signature())
        _, after = streamer.step(state, images[4:6])
    restored, done = restore_state(tmp_path / "state", streamer.init(), streamer.signature())
    assert done == 4
    for got, want in zip(jax.tree.leaves(restored), expected):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert not all(np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(after), expected))


def test_run_stream_checkpoints_every_n_batches_and_waits_for_the_last(tmp_path):
    images, *_ = jdata.make_synthetic_set(5, 0, size=SIZE, seed=5)
    streamer = tiny_streamer(batch=1)
    timings = []
    outputs = StreamOutputs(tmp_path / "out")
    _, final = run_stream(streamer, [(f"i{k}", k) for k in range(5)], outputs, state_dir=tmp_path / "state",
                          checkpoint_every=2, decode=array_decode(images), on_timing=timings.append)
    outputs.close()
    assert all(isinstance(t, BatchTiming) for t in timings)
    assert [(t.index, t.images, t.done, t.checkpointed) for t in timings] == [
        (0, 1, 1, False), (1, 1, 2, True), (2, 1, 3, False), (3, 1, 4, True), (4, 1, 5, False)]
    assert all(t.seconds >= t.step > 0 for t in timings)
    assert has_checkpoint(tmp_path / "state") == 5  # the final save is on disk when run_stream returns
    assert sorted(p.name for p in (tmp_path / "state").iterdir() if p.is_dir()) == ["5"]
    restored, _ = restore_state(tmp_path / "state", streamer.init(), streamer.signature())
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(final)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(ValueError, match="^checkpoint_every: expected an integer >= 1"):
        run_stream(streamer, [], outputs, state_dir=tmp_path / "state", checkpoint_every=0)


def test_a_checkpoint_not_written_by_a_stream_is_refused_in_one_line(tmp_path):
    import orbax.checkpoint as ocp

    streamer = tiny_streamer(batch=1)
    foreign = (tmp_path / "foreign").absolute()
    with ocp.CheckpointManager(foreign, item_names=("state",)) as manager:
        manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave({"0000": np.zeros(3, np.float32)})))
    assert has_checkpoint(foreign) == 7
    with pytest.raises(ValueError, match="^state_dir: the checkpoint .*7 holds no stream signature") as err:
        restore_state(foreign, streamer.init(), streamer.signature())
    assert "\n" not in str(err.value)
    older = tmp_path / "older"
    (older / "000000000004").mkdir(parents=True)
    (older / "stream.json").write_text("{}")
    with pytest.raises(ValueError, match="^state_dir: .*older jzad layout.*remove the folder") as err:
        has_checkpoint(older)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="^state_dir: no checkpoint in"):
        restore_state(tmp_path / "empty", streamer.init(), streamer.signature())
    save_state(tmp_path / "ahead", streamer.init(), 9, streamer.signature())
    with pytest.raises(ValueError, match="^state_dir: .* after 9 images, newer than this stream's 3"):
        save_state(tmp_path / "ahead", streamer.init(), 3, streamer.signature())


def test_non_finite_features_name_the_real_images_not_the_padding():
    """The finite check runs on the whole padded batch (one compiled shape for every fill) and reports only the
    n real rows: a NaN in a padding row is not an image's."""

    @dataclasses.dataclass(frozen=True, eq=False)
    class NaNRows(Streamer):
        def extract(self, images):
            rows = jnp.asarray([1, 3])
            return jax.tree.map(lambda a: a.at[rows].set(jnp.nan) if jnp.issubdtype(a.dtype, jnp.inexact) else a,
                                super().extract(images))

    images, *_ = jdata.make_synthetic_set(3, 0, size=SIZE, seed=8)
    base = tiny_streamer(batch=4)
    streamer = NaNRows(base.scorer, base.stream_config, 4)
    with pytest.raises(ValueError, match=r"^features of 1 image\(s\) are not finite \(NaN or inf\): b$"):
        streamer.step(streamer.init(), images, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"^features of 1 image\(s\) are not finite \(NaN or inf\): b$"):
        streamer.step(streamer.init(), images[:2], ["a", "b"])


def test_the_summary_reports_latency_after_the_first_batch_apart():
    """A short stream's first batch (compilation) alone can be its p95: the report gives both."""
    from jzad.stream import StreamSummary

    latency = np.asarray([900.0, 950.0, 10.0, 20.0, 30.0, 40.0])
    report = StreamSummary(6, 3, 1.2, 0.95, 2, latency, 0, 6, 6).report()
    assert report["latency_ms_p95"] == np.percentile(latency, 95) > 900
    assert report["latency_ms_median_after_first_batch"] == 25.0
    assert report["latency_ms_p95_after_first_batch"] == 10.0 + 0.95 * 3 * 10.0  # numpy's linear rule by hand


def write_pngs(folder, images, names, mtimes):
    folder.mkdir(parents=True, exist_ok=True)
    for image, name, when in zip(images, names, mtimes):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        os.utime(path, ns=(when, when))


def test_arrivals_folder_by_modification_time_list_and_stdin(tmp_path):
    images, *_ = jdata.make_synthetic_set(3, 0, size=SIZE, seed=0)
    write_pngs(tmp_path / "in", images, ["b.png", "sub/a.png", "c.png"], [3_000_000_000, 1_000_000_000, 2_000_000])
    (tmp_path / "in" / ".hidden.png").write_bytes(b"")
    (tmp_path / "in" / "notes.txt").write_text("x")
    assert [n for n, _ in folder_arrivals(tmp_path / "in")] == ["c.png", "sub/a.png", "b.png"]
    listing = tmp_path / "in" / "list.txt"
    listing.write_text("# arrivals\nb.png\n\n" + str(tmp_path / "in" / "c.png") + "\n")
    assert [p for _, p in list_arrivals(listing)] == [tmp_path / "in" / "b.png", tmp_path / "in" / "c.png"]
    assert [n for n, _ in arrivals("-", io.StringIO("x.png\n y.png \n"))] == ["x.png", "y.png"]
    with pytest.raises(FileNotFoundError, match="expected a folder of images"):
        arrivals(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        arrivals(tmp_path / "empty")


CLI = ["--backbone", "random-tiny", "--image-size", "32", "--taps", "4", "--r-list", "1", "--quiet"]


def test_cli_stream_resumes_a_stopped_stream_with_the_same_scores(tmp_path, capsys, monkeypatch):
    images, *_ = jdata.make_synthetic_set(6, 3, size=SIZE, seed=4)
    names = [f"img{i}.png" for i in range(9)]
    write_pngs(tmp_path / "in", images, names, [10**9 * (i + 1) for i in range(9)])
    whole = tmp_path / "whole"
    assert main(CLI + ["--stream", "--data", str(tmp_path / "in"), "--bank-size", "4", "--stream-batch", "2",
                       "--save-maps", "--out", str(whole)]) == 0
    printed = capsys.readouterr().out
    assert "latency median" in printed and "p95" in printed and "compilation included; after it median" in printed
    rows = read_csv(whole / "scores_stream.csv")
    assert [r["name"] for r in rows] == names and len(list((whole / "maps" / "stream").glob("*.tiff"))) == 9

    # Stopped after three whole batches (a stream that stops on a partial batch has scored that batch
    # without its later partners, so the split is at a batch boundary, as an interruption leaves it).
    (tmp_path / "first.txt").write_text("\n".join(f"in/{n}" for n in names[:6]) + "\n")
    (tmp_path / "all.txt").write_text("\n".join(f"in/{n}" for n in names) + "\n")
    common = CLI + ["--stream", "--bank-size", "4", "--stream-batch", "2", "--stream-state", str(tmp_path / "st"),
                    "--out", str(tmp_path / "split")]
    assert main(common + ["--data", str(tmp_path / "first.txt")]) == 0
    assert len(read_csv(tmp_path / "split" / "scores_stream.csv")) == 6
    assert main(common + ["--data", str(tmp_path / "all.txt")]) == 0
    resumed = read_csv(tmp_path / "split" / "scores_stream.csv")
    assert [r["score"] for r in resumed] == [r["score"] for r in rows]
    assert [r["name"] for r in resumed] == [f"in/{n}" for n in names]

    # Standard input is a live feed: a resumed stream continues with the lines that arrive, nothing is skipped.
    paths = [str(tmp_path / "in" / n) for n in names]
    live = CLI + ["--stream", "--data", "-", "--bank-size", "4", "--stream-batch", "2", "--stream-state",
                  str(tmp_path / "live_state"), "--out", str(tmp_path / "live")]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(paths[:6]) + "\n"))
    assert main(live) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(paths[6:]) + "\n"))
    assert main(live) == 0
    fed = read_csv(tmp_path / "live" / "scores_stream.csv")
    assert [r["score"] for r in fed] == [r["score"] for r in rows] and [r["index"] for r in fed] == list(
        map(str, range(9)))


@pytest.mark.parametrize("argv, message", [
    (["--bank-size", "4"], "--bank-size applies to --stream only"),
    (["--stream"], "--stream needs --data"),
    (["--stream", "--data", ".", "--subsets", "2"], "--subsets does not apply to --stream"),
    (["--stream", "--data", ".", "--mode", "few_shot", "--shots", "1"], "--shots does not apply to --stream"),
    (["--stream", "--data", ".", "--bank-size", "0"], "capacity"),
    (["--stream", "--data", ".", "--admit-quantile", "1.5"], "admit_quantile"),
    (["--stream", "--data", ".", "--checkpoint-every", "2"], "--checkpoint-every needs --stream-state"),
])
def test_cli_stream_option_errors(tmp_path, capsys, argv, message):
    assert main(CLI + ["--out", str(tmp_path / "o")] + argv) == 2
    assert message in capsys.readouterr().err


def test_cli_stream_reports_a_bad_method_option_as_that_option(tmp_path, capsys):
    # The method's config rejects the value after the backbone loaded: the error names the option, not the
    # backbone (a config error is a ValueError, which the stream path once reported as "cannot load").
    assert main(CLI + ["--out", str(tmp_path / "o"), "--stream", "--data", ".", "--r-list", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "python -m jzad.run: error: musc options: --r-list: expected odd window sizes >= 1, got (2,)"
