"""The PyTorch reference (benchmarks/reference_torch.py) against NumPy float64 versions written here.

Random inputs with odd sizes and fresh seeds, plus known answers (identical images score 0 against each
other, window-1 RsCIN is the normalised score, k-center on a line picks the extremes, Otsu splits two
modes, a lone outlier patch is what expansion adds and what scoring ranks first).
"""

import math

import numpy as np
import pytest
import torch

from benchmarks import reference_torch as ref

RNG_SEEDS = (3, 11)


def t(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def tokens_for(rng, n, side, c):
    return rng.normal(size=(n, 1 + side * side, c)).astype(np.float32) * 2.0 + 0.5


# ----------------------------------------------------------------------------------------- NumPy versions


def np_lnamd(tokens, r):
    n, count, c = tokens.shape
    side = int(round(math.sqrt(count - 1)))
    x = tokens[:, 1:, :].astype(np.float64).reshape(n, side, side, c)
    flat = x.reshape(n, -1)
    x = (x - flat.mean(1)[:, None, None, None]) / np.sqrt(flat.var(1)[:, None, None, None] + 1e-5)
    pad = r // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    pooled = np.zeros_like(x)
    for dy in range(r):
        for dx in range(r):
            pooled += padded[:, dy:dy + side, dx:dx + side, :]
    pooled = (pooled / (r * r)).reshape(n, side * side, c)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def np_dist(a, b):
    return np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1))


def np_mutual(features, lo, hi):
    n, m, _ = features.shape
    k_start = math.floor(lo * (n - 1))
    k_stop = max(math.floor(hi * (n - 1)), k_start + 1)
    out = np.zeros((n, m))
    for i in range(n):
        nearest = np.stack([np_dist(features[i], features[j]).min(1) for j in range(n) if j != i], axis=1)
        out[i] = np.sort(nearest, axis=1)[:, k_start:k_stop].mean(1)
    return out


def np_upsample(scores, h, w, size):
    def weights(out, inp):
        mat = np.zeros((out, inp))
        for o in range(out):
            pos = o * (inp - 1) / (out - 1)
            low = min(int(math.floor(pos)), inp - 2)
            mat[o, low] += 1 - (pos - low)
            mat[o, low + 1] += pos - low
        return mat

    grid = scores.reshape(-1, h, w).astype(np.float64)
    return np.einsum("Hh,nhw,Ww->nHW", weights(size, h), grid, weights(size, w))


def np_rscin(scores, embeds, windows):
    s = scores.astype(np.float64)
    s = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.zeros_like(s)
    f = embeds.astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    w = f @ f.T
    out = []
    for k in windows:
        p = np.zeros_like(w)
        for i in range(len(s)):
            top = np.argsort(-w[i], kind="stable")[:k]
            p[i, top] = w[i, top]
        out.append((p / p.sum(1, keepdims=True)) @ s)
    return np.mean(out, axis=0)


def np_kcenter(x, k, start):
    x = x.astype(np.float64)
    picks = [start]
    d = ((x - x[start]) ** 2).sum(1)
    d[start] = -1
    while len(picks) < k:
        best = int(np.argmax(d))
        picks.append(best)
        d = np.minimum(d, ((x - x[best]) ** 2).sum(1))
        d[picks] = -1
    return np.array(picks)


def np_otsu(values, bins):
    v = values.astype(np.float64)
    lo, hi = v.min(), v.max()
    idx = np.clip(np.floor((v - lo) / (hi - lo) * bins), 0, bins - 1).astype(int)
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    centers = lo + (np.arange(bins) + 0.5) * (hi - lo) / bins
    best, best_t = -1.0, None
    for split in range(1, bins):
        c0, c1 = counts[:split], counts[split:]
        if c0.sum() == 0 or c1.sum() == 0:
            var = 0.0
        else:
            mu0 = (c0 * centers[:split]).sum() / c0.sum()
            mu1 = (c1 * centers[split:]).sum() / c1.sum()
            var = c0.sum() * c1.sum() / len(v) ** 2 * (mu0 - mu1) ** 2
        if var > best:
            best, best_t = var, split
    return lo + best_t * (hi - lo) / bins, idx < best_t


def np_expand(coreset, patches, remaining, per_image):
    current = coreset.astype(np.float64)
    for i in remaining:
        d = np_dist(patches[i], current).min(1)
        picks = np.argsort(-d, kind="stable")[:per_image]
        current = np.concatenate([current, patches[i][picks]], axis=0)
    return current


def np_filter_scores(coreset, patches, fraction):
    n = patches.shape[0]
    count = max(math.floor(fraction * n), 1)
    per_image = np.stack([np_dist(coreset, patches[j]).min(1) for j in range(n)], axis=1)
    return np.sort(per_image, axis=1)[:, :count].sum(1)


def np_fslc_score(coreset, patches, b):
    n, m, _ = patches.shape
    patch_scores, image_scores = np.zeros((n, m)), np.zeros(n)
    for i in range(n):
        d = np_dist(patches[i], coreset)
        s = d.min(1)
        top = int(np.argmax(s))
        near = np.sort(d[top])[:b]
        w = 1 - np.exp(s[top]) / np.exp(near).sum()
        patch_scores[i], image_scores[i] = s, s[top] * w
    return patch_scores, image_scores


# ----------------------------------------------------------------------------------------- MuSc


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("r", [1, 3, 5])
def test_lnamd_matches_numpy(seed, r):
    rng = np.random.default_rng(seed)
    tokens = tokens_for(rng, 5, 5, 11)
    got = ref.lnamd(t(tokens), r).numpy()
    np.testing.assert_allclose(got, np_lnamd(tokens, r), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)


def test_lnamd_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        ref.lnamd(torch.zeros(2, 1 + 6, 4), 3)
    with pytest.raises(ValueError, match="odd"):
        ref.lnamd(torch.zeros(2, 1 + 9, 4), 2)


@pytest.mark.parametrize("n,interval", [(5, (0.0, 0.3)), (7, (0.0, 0.3)), (6, (0.2, 0.8)), (2, (0.0, 0.3))])
def test_mutual_scores_matches_numpy(n, interval):
    rng = np.random.default_rng(n)
    feats = rng.normal(size=(n, 9, 13)).astype(np.float32)
    want = np_mutual(feats, *interval)
    got = ref.mutual_scores(t(feats), interval).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    chunked = ref.mutual_scores(t(feats), interval, image_chunk=2).numpy()
    np.testing.assert_array_equal(chunked, got)
    mm = ref.mutual_scores(t(feats), interval, cdist_mode="use_mm_for_euclid_dist").numpy()
    np.testing.assert_allclose(mm, want, rtol=1e-3, atol=1e-3)


def test_mutual_scores_identical_images_score_zero():
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(6, 25, 8)).astype(np.float32)
    feats[3] = feats[1]
    got = ref.mutual_scores(t(feats)).numpy()  # k = floor(0.3 * 5) = 1: the nearest other image
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_array_equal(got[3], 0.0)
    assert (got[[0, 2, 4, 5]] > 0).all()


def test_mutual_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        ref.mutual_scores(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="interval"):
        ref.mutual_scores(torch.zeros(3, 4, 3), (0.5, 0.2))
    with pytest.raises(ValueError, match="cdist_mode"):
        ref.mutual_scores(torch.zeros(3, 4, 3), cdist_mode="fast")


def test_musc_patch_scores_is_mean_over_layers_and_degrees():
    rng = np.random.default_rng(21)
    layers = [tokens_for(rng, 5, 5, 9) for _ in range(2)]
    want = np.mean([np_mutual(np_lnamd(x, r), 0.0, 0.3) for x in layers for r in (1, 3, 5)], axis=0)
    got = ref.musc_patch_scores([t(x) for x in layers]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_upsample_matches_numpy_and_keeps_corners():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3, 25)).astype(np.float32)
    got = ref.upsample(t(scores), 5, 5, 17).numpy()
    np.testing.assert_allclose(got, np_upsample(scores, 5, 5, 17), atol=1e-5)
    grid = scores.reshape(3, 5, 5)
    np.testing.assert_allclose(got[:, ::4, ::4], grid, atol=1e-6)  # 16 / 4 steps land on every patch centre


@pytest.mark.parametrize("windows", [(1, 2, 3), (1, 8, 9), (2, 5)])
def test_rscin_matches_numpy(windows):
    rng = np.random.default_rng(len(windows) + windows[-1])
    scores = rng.uniform(size=11).astype(np.float32)
    embeds = (rng.normal(size=(11, 6)) + 3.0).astype(np.float32)
    got = ref.rscin(t(scores), t(embeds), windows).numpy()
    np.testing.assert_allclose(got, np_rscin(scores, embeds, windows), atol=1e-6)


def test_rscin_known_answers():
    rng = np.random.default_rng(8)
    scores = rng.uniform(2.0, 5.0, size=7).astype(np.float32)
    embeds = (rng.normal(size=(7, 5)) + 2.0).astype(np.float32)
    normalised = (scores - scores.min()) / (scores.max() - scores.min())
    np.testing.assert_allclose(ref.rscin(t(scores), t(embeds), (1,)).numpy(), normalised, atol=1e-6)
    np.testing.assert_array_equal(ref.rscin(t(np.full(7, 0.4)), t(embeds)).numpy(), 0.0)
    # Paper Eq. 5 with windows {2, 3} and the identity term, on the normalised scores = DESIGN windows (1, 2, 3).
    f = embeds / np.linalg.norm(embeds, axis=1, keepdims=True)
    w = f.astype(np.float64) @ f.T
    eq5 = normalised.astype(np.float64).copy()
    for k in (2, 3):
        mask = np.zeros_like(w)
        for i in range(7):
            mask[i, np.argsort(-w[i])[:k]] = 1
        eq5 += (mask * w) / (mask * w).sum(1, keepdims=True) @ normalised
    np.testing.assert_allclose(ref.rscin(t(scores), t(embeds), (1, 2, 3)).numpy(), eq5 / 3, atol=1e-6)


def test_musc_reference_ties_stages_together_and_times_them():
    rng = np.random.default_rng(13)
    layers = [tokens_for(rng, 6, 5, 10) for _ in range(2)]
    embeds = rng.normal(size=(6, 7)).astype(np.float32)
    timer = ref.StageTimer()
    out = ref.musc_reference([t(x) for x in layers], t(embeds), image_size=13, timer=timer)
    patch = np.mean([np_mutual(np_lnamd(x, r), 0.0, 0.3) for x in layers for r in (1, 3, 5)], axis=0)
    maps = np_upsample(patch, 5, 5, 13)
    np.testing.assert_allclose(out["patch_scores"].numpy(), patch, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["maps"].numpy(), maps, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["image_scores_raw"].numpy(), maps.max(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    want = np_rscin(maps.max(axis=(1, 2)), embeds, (1, 2, 3))
    np.testing.assert_allclose(out["image_scores"].numpy(), want, atol=1e-4)
    assert set(out["stage_seconds"]) == {"lnamd", "msm", "upsample", "rscin"}
    assert timer.calls["msm"] == 6 and timer.calls["lnamd"] == 6
    assert all(v >= 0 for v in out["stage_seconds"].values())


# ----------------------------------------------------------------------------------------- FSLC


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_kcenter_greedy_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(37, 9)).astype(np.float32)
    got = ref.kcenter_greedy(t(x), 12, start_index=5).numpy()
    np.testing.assert_array_equal(got, np_kcenter(x, 12, 5))


def test_kcenter_greedy_on_a_line_picks_extremes_and_first_tie():
    line = t(np.array([[3.0], [0.0], [7.0], [10.0], [5.0]]))
    # From 3: farthest is 10 (index 3); then 0 and 7 are both 9 away (squared) -> the first index, 1.
    np.testing.assert_array_equal(ref.kcenter_greedy(line, 3).numpy(), [0, 3, 1])
    dup = t(np.zeros((4, 2)))
    np.testing.assert_array_equal(ref.kcenter_greedy(dup, 4, start_index=2).numpy(), [2, 0, 1, 3])
    with pytest.raises(ValueError, match="k"):
        ref.kcenter_greedy(line, 6)


def test_otsu_matches_numpy_and_splits_two_modes():
    rng = np.random.default_rng(4)
    values = rng.gamma(2.0, size=301).astype(np.float32)
    want, _ = np_otsu(values, 256)
    assert ref.otsu_threshold(t(values)) == pytest.approx(want, rel=1e-5)
    bimodal = np.concatenate([rng.normal(0.0, 0.1, 100), rng.normal(5.0, 0.1, 50)]).astype(np.float32)
    threshold = ref.otsu_threshold(t(bimodal))
    assert bimodal[:100].max() < threshold < bimodal[100:].min()
    assert ref.otsu_threshold(t(np.full(5, 2.5))) == 2.5


def test_fslc_init_matches_numpy():
    rng = np.random.default_rng(6)
    patches = rng.normal(size=(7, 9, 12)).astype(np.float32)
    embeds = rng.normal(size=(7, 5)).astype(np.float32)
    init = ref.fslc_init(t(embeds), t(patches), num_images=3, coreset_size=8)
    images = np_kcenter(embeds, 3, 0)
    q = patches[images].reshape(-1, 12)
    local = np_kcenter(q, 8, 0)
    np.testing.assert_array_equal(init.image_indices.numpy(), images)
    np.testing.assert_array_equal(init.coreset.numpy(), q[local])
    np.testing.assert_array_equal(patches.reshape(-1, 12)[init.patch_indices.numpy()], q[local])


def test_fslc_expand_is_sequential_and_matches_numpy():
    rng = np.random.default_rng(9)
    patches = rng.normal(size=(6, 9, 8)).astype(np.float32)
    coreset = patches[0, :4]
    got, added = ref.fslc_expand(t(coreset), t(patches), [2, 4, 5], per_image=2)
    np.testing.assert_allclose(got.numpy(), np_expand(coreset, patches, [2, 4, 5], 2), atol=0)
    np.testing.assert_array_equal(got.numpy()[4:], patches.reshape(-1, 8)[added.numpy()])
    # Sequential: image 3 is a copy of image 2. Once image 2's two farthest patches are in the coreset they sit
    # at distance 0 for image 3, which adds two other patches; all at once against M0 would add them twice.
    patches[3] = patches[2]
    seq, _ = ref.fslc_expand(t(coreset), t(patches), [2, 3], per_image=2)
    assert len({tuple(row) for row in seq.numpy()[4:]}) == 4


def test_fslc_expand_adds_the_outlier_patch():
    rng = np.random.default_rng(10)
    patches = rng.normal(size=(5, 9, 6)).astype(np.float32) * 0.1
    patches[4, 7] += 10.0
    _, added = ref.fslc_expand(t(patches[0]), t(patches), [4], per_image=1)
    assert added.tolist() == [4 * 9 + 7]


@pytest.mark.parametrize("fraction,n_wanted", [(0.3, 10), (0.5, "otsu"), (0.05, 1)])
def test_fslc_filter_matches_numpy(fraction, n_wanted):
    rng = np.random.default_rng(12)
    patches = rng.normal(size=(7, 9, 10)).astype(np.float32)
    coreset = np.concatenate([patches[1, :8], rng.normal(size=(9, 10)).astype(np.float32) * 3])
    out = ref.fslc_filter(t(coreset), t(patches), fraction, n_wanted)
    scores = np_filter_scores(coreset, patches, fraction)
    np.testing.assert_allclose(out.scores.numpy(), scores, rtol=1e-5)
    wanted = int(np_otsu(scores, 256)[1].sum()) if n_wanted == "otsu" else n_wanted
    np.testing.assert_array_equal(out.kept.numpy(), np.argsort(scores, kind="stable")[:wanted])
    np.testing.assert_array_equal(out.coreset.numpy(), coreset[out.kept.numpy()])
    with pytest.raises(ValueError, match="n_wanted"):
        ref.fslc_filter(t(coreset), t(patches), fraction, "median")
    with pytest.raises(ValueError, match="interval_fraction"):
        ref.fslc_filter(t(coreset), t(patches), 0.0, n_wanted)


def test_fslc_score_matches_numpy_and_known_weight():
    rng = np.random.default_rng(14)
    patches = rng.normal(size=(5, 25, 8)).astype(np.float32)
    coreset = rng.normal(size=(19, 8)).astype(np.float32)
    out = ref.fslc_score(t(coreset), t(patches), b=3)
    want_patch, want_image = np_fslc_score(coreset, patches, 3)
    np.testing.assert_allclose(out.patch_scores.numpy(), want_patch, rtol=1e-5)
    np.testing.assert_allclose(out.image_scores.numpy(), want_image, rtol=1e-5)
    # One patch on the x axis at 1 from the nearest of three coreset points at 1, 2, 4: w = 1 - e / (e + e^2 + e^4).
    core = t(np.array([[2.0, 0.0], [3.0, 0.0], [5.0, 0.0], [-9.0, 0.0]]))
    single = ref.fslc_score(core, t(np.array([[[1.0, 0.0]]])), b=3)
    w = 1 - math.e / (math.e + math.e**2 + math.e**4)
    assert single.weights.item() == pytest.approx(w, rel=1e-6)
    assert single.image_scores.item() == pytest.approx(w, rel=1e-6)
    with pytest.raises(ValueError, match="b"):
        ref.fslc_score(core, t(np.array([[[1.0, 0.0]]])), b=1)


def test_fslc_reference_finds_the_anomalous_image():
    rng = np.random.default_rng(15)
    base = rng.normal(size=(9, 8)).astype(np.float32)
    patches = np.stack([base + rng.normal(size=(9, 8)).astype(np.float32) * 0.05 for _ in range(7)])
    patches[5, 4] += 4.0
    embeds = patches.mean(1)
    timer = ref.StageTimer()
    out = ref.fslc_reference(
        t(embeds), t(patches), num_images=2, coreset_size=6, per_image=2, interval_fraction=0.3,
        n_wanted="otsu", b=2, image_size=7, timer=timer,
    )
    assert int(torch.argmax(out["image_scores"])) == 5
    assert int(torch.argmax(out["patch_scores"][5])) == 4
    assert out["maps"].shape == (7, 7, 7)
    assert out["filter_scores"].shape == (6 + 5 * 2,)
    assert not (out["coreset"] == t(patches[5, 4])).all(dim=1).any()  # Otsu drops the outlier patch
    assert set(out["stage_seconds"]) == {"init", "expand", "filter", "score", "upsample"}
    chosen = set(out["init_images"].tolist())
    remaining = [i for i in range(7) if i not in chosen]
    expanded = np_expand(patches.reshape(-1, 8)[out["init_patches"].numpy()], patches, remaining, 2)
    kept_rows = expanded[out["kept"].numpy()]
    np.testing.assert_array_equal(out["coreset"].numpy(), kept_rows)


# ----------------------------------------------------------------------------------------- CLIP taps


def tiny_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2,
        image_size=24, patch_size=8, projection_dim=6, hidden_act="gelu",
    )


def test_clip_forward_reference_taps_and_embeds():
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(tiny_vision_config()).eval()
    images = torch.randn(2, 3, 24, 24)
    taps, embeds = ref.clip_forward_reference(model, images, taps=(1, 3))
    assert [tuple(x.shape) for x in taps] == [(2, 10, 16), (2, 10, 16)]
    assert tuple(embeds.shape) == (2, 6)
    with torch.no_grad():
        vision = model.vision_model
        stream = vision.pre_layrnorm(vision.embeddings(images))
        after = []
        for layer in vision.encoder.layers:
            stream = layer(stream, None)
            stream = stream[0] if isinstance(stream, tuple) else stream
            after.append(stream)
        full = model(pixel_values=images, output_hidden_states=True)
    torch.testing.assert_close(taps[0], after[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(taps[1], after[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(taps[0], full.hidden_states[1])
    torch.testing.assert_close(taps[1], full.hidden_states[3])
    torch.testing.assert_close(embeds, full.image_embeds)
    with pytest.raises(ValueError, match="taps"):
        ref.clip_forward_reference(model, images, taps=(0,))


def test_clip_forward_reference_with_clip_model():
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionModel

    torch.manual_seed(1)
    text = CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                          vocab_size=50, max_position_embeddings=8, projection_dim=6)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=tiny_vision_config().to_dict(), projection_dim=6)
    model = CLIPModel(config).eval()
    images = torch.randn(3, 3, 24, 24)
    taps, embeds = ref.clip_forward_reference(model, images, taps=(2,))
    with torch.no_grad():
        features = model.get_image_features(pixel_values=images)
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    torch.testing.assert_close(embeds, features)
    assert tuple(taps[0].shape) == (3, 10, 16)
    with pytest.raises(ValueError, match="CLIPModel"):
        ref.clip_forward_reference(CLIPVisionModel(tiny_vision_config()), images, taps=(1,))
