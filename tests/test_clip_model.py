"""Model-level contracts: architectures, jit without retracing, bf16, taps/early stop, ImageEncoder,
preprocessing against an independent PIL + NumPy path, and the tokenizer from local files."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from jzad.backbone import (
    ARCHITECTURES,
    CLIP_MEAN,
    CLIP_STD,
    ImageEncoder,
    abstract_params,
    architecture_name,
    default_taps,
    encode_image,
    encode_text,
    get_architecture,
    init_clip,
    init_random_encoder,
    load_tokenizer,
    preprocess_images,
    tokenize,
)
from jzad.backbone import clip as clip_module


@pytest.mark.parametrize(
    "name,key,count",
    # Parameter counts printed by OpenAI's CLIP notebook for its released models.
    [
        ("ViT-B/32", "ViT-B-32", 151_277_313),
        ("ViT-B/16", "ViT-B-16", 149_620_737),
        ("ViT-L/14", "ViT-L-14", 427_616_513),
        ("ViT-L/14@336px", "ViT-L-14-336", 427_944_193),
    ],
)
def test_openai_architectures_have_published_parameter_counts(name, key, count):
    config = get_architecture(name)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(config))) == count
    assert architecture_name(config) == key


def test_architecture_fields():
    l336 = ARCHITECTURES["ViT-L-14-336"]
    assert (l336.vision.width, l336.vision.layers, l336.vision.heads, l336.vision.patch_size) == (1024, 24, 16, 14)
    assert l336.vision.grid_size == 24 and l336.embed_dim == 768 and l336.activation == "quick_gelu"
    plus = ARCHITECTURES["ViT-B-16-plus-240"]
    fields = (plus.vision.width, plus.vision.heads, plus.embed_dim, plus.text.width, plus.activation)
    assert fields == (896, 14, 640, 640, "gelu")
    assert default_taps(l336) == (6, 12, 18, 24) and default_taps(ARCHITECTURES["ViT-B-16"]) == (3, 6, 9, 12)
    assert architecture_name(l336) == "ViT-L-14-336"
    assert architecture_name(l336.replace(text=None)) == "ViT-L-14-336"
    with pytest.raises(ValueError, match="unknown architecture 'ViT-Q'"):
        get_architecture("ViT-Q")


@pytest.fixture(scope="module")
def tiny():
    config = ARCHITECTURES["tiny"]
    return config, init_clip(config, seed=0)


def _numpy_vision_forward(params, images, config):
    """Independent NumPy ViT forward (float64) of the tiny config: taps after every block and the embedding."""
    vis = jax.tree.map(lambda a: np.asarray(a, np.float64), params["visual"])
    p, width, heads = config.vision.patch_size, config.vision.width, config.vision.heads
    batch, size = images.shape[0], images.shape[1]
    g = size // p
    patches = images.astype(np.float64).reshape(batch, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch, g * g, -1)
    kernel = vis["conv1"]["kernel"].reshape(-1, width)
    x = patches @ kernel
    cls = np.broadcast_to(vis["class_embedding"], (batch, 1, width))
    x = np.concatenate([cls, x], axis=1) + vis["positional_embedding"]

    def ln(v, prm):
        mu = v.mean(-1, keepdims=True)
        var = ((v - mu) ** 2).mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-5) * prm["scale"] + prm["bias"]

    x = ln(x, vis["ln_pre"])
    outs = []
    for i in range(config.vision.layers):
        blk = vis["blocks"][i]
        h = ln(x, blk["ln_1"])
        qkv = h @ blk["attn"]["qkv"]["kernel"] + blk["attn"]["qkv"]["bias"]
        q, k, v = np.split(qkv.reshape(batch, -1, 3, heads, width // heads), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // heads)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        a = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(batch, -1, width)
        x = x + a @ blk["attn"]["out"]["kernel"] + blk["attn"]["out"]["bias"]
        h = ln(x, blk["ln_2"]) @ blk["mlp"]["c_fc"]["kernel"] + blk["mlp"]["c_fc"]["bias"]
        h = h / (1 + np.exp(-1.702 * h))
        x = x + h @ blk["mlp"]["c_proj"]["kernel"] + blk["mlp"]["c_proj"]["bias"]
        outs.append(x)
    embed = ln(x[:, 0], vis["ln_post"]) @ vis["proj"]
    return outs, embed


def test_encode_image_matches_numpy_and_taps_order(tiny):
    config, params = tiny
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    taps, embed = encode_image(params, images, config, taps=(4, 2))
    ref_taps, ref_embed = _numpy_vision_forward(params, images, config)
    assert [t.shape for t in taps] == [(3, 17, 64), (3, 17, 64)]
    np.testing.assert_allclose(np.asarray(taps[0]), ref_taps[3], atol=2e-5)
    np.testing.assert_allclose(np.asarray(taps[1]), ref_taps[1], atol=2e-5)
    np.testing.assert_allclose(np.asarray(embed), ref_embed, atol=2e-5)
    early, none = encode_image(params, images, config, taps=(2,), with_embedding=False)
    assert none is None
    np.testing.assert_array_equal(np.asarray(early[0]), np.asarray(taps[1]))
    with pytest.raises(ValueError, match=r"taps must be 1-based block indices in \[1, 4\]"):
        encode_image(params, images, config, taps=(0, 5))


def test_jit_does_not_retrace_and_nests(tiny):
    config, params = tiny
    images = jnp.zeros((2, 32, 32, 3))
    before = clip_module._encode_image._cache_size()
    encode_image(params, images, config, taps=(1, 3))
    after_first = clip_module._encode_image._cache_size()
    for _ in range(3):
        encode_image(params, images + 1.0, config, taps=(1, 3))
    assert after_first - before <= 1
    assert clip_module._encode_image._cache_size() == after_first
    outer = jax.jit(lambda p, x: encode_image(p, x, config, (2,))[1])
    np.testing.assert_allclose(
        np.asarray(outer(params, images)), np.asarray(encode_image(params, images, config, (2,))[1]), atol=1e-6
    )


def test_attention_implementation_xla_matches_numpy_and_einsum(tiny):
    config, params = tiny
    xla = config.replace(attention="xla")
    images = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    taps, embed = encode_image(params, images, xla, taps=(2, 4))
    ref_taps, ref_embed = _numpy_vision_forward(params, images, config)
    np.testing.assert_allclose(np.asarray(taps[0]), ref_taps[1], atol=2e-5)
    np.testing.assert_allclose(np.asarray(taps[1]), ref_taps[3], atol=2e-5)
    np.testing.assert_allclose(np.asarray(embed), ref_embed, atol=2e-5)
    plain_taps, _ = encode_image(params, images, config, taps=(4,), dtype="bfloat16")
    xla_taps, _ = encode_image(params, images, xla, taps=(4,), dtype="bfloat16")
    scale = float(jnp.abs(plain_taps[0]).max())
    assert float(jnp.abs(xla_taps[0] - plain_taps[0]).max()) < 0.02 * scale
    # The text tower is causal: tokens after the pooled one must not leak in with the fused call either.
    ids = np.random.default_rng(4).integers(1, 500, size=(2, 16)).astype(np.int32)
    ids[:, 5] = 519
    later = ids.copy()
    later[:, 6:] = 7
    plain_text = np.asarray(encode_text(params, ids, config))
    np.testing.assert_allclose(np.asarray(encode_text(params, ids, xla)), plain_text, atol=2e-5)
    np.testing.assert_allclose(np.asarray(encode_text(params, later, xla)), plain_text, atol=2e-5)


def test_attention_implementation_checks(tiny):
    config, params = tiny
    assert config.attention == "einsum" and get_architecture("ViT-L-14-336").attention == "einsum"
    with pytest.raises(ValueError, match="attention must be one of"):
        config.replace(attention="flash")
    images = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="attention 'cudnn' computes in bfloat16 or float16 only"):
        encode_image(params, images, config.replace(attention="cudnn"), taps=(1,))
    assert architecture_name(config.replace(attention="xla")) == "tiny"


def test_bfloat16_close_to_float32(tiny):
    config, params = tiny
    images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    taps32, emb32 = encode_image(params, images, config, (4,))
    taps16, emb16 = encode_image(params, images, config, (4,), dtype="bfloat16")
    assert taps16[0].dtype == jnp.float32 and params["visual"]["proj"].dtype == jnp.float32
    scale = float(jnp.abs(taps32[0]).max())
    err = float(jnp.abs(taps16[0] - taps32[0]).max())
    assert 0 < err < 0.05 * scale
    cosine = jnp.sum(emb16 * emb32, -1) / jnp.linalg.norm(emb16, axis=-1) / jnp.linalg.norm(emb32, axis=-1)
    assert float(cosine.min()) > 0.99


def test_encode_text_pooling_rules(tiny):
    config, params = tiny
    rng = np.random.default_rng(2)
    ids = rng.integers(1, 500, size=(2, 16)).astype(np.int32)
    ids[:, 5] = 519
    ids[:, 6:] = 0
    argmax = encode_text(params, ids, config)
    eos_text = type(config.text)(**{**config.text.__dict__, "pooling": "eos", "eos_token_id": 519})
    eos_config = config.replace(text=eos_text)
    np.testing.assert_allclose(np.asarray(encode_text(params, ids, eos_config)), np.asarray(argmax), atol=1e-6)
    # Causal: tokens after the pooled one do not change the embedding.
    changed = ids.copy()
    changed[:, 7:] = 3
    np.testing.assert_allclose(np.asarray(encode_text(params, changed, eos_config)), np.asarray(argmax), atol=1e-5)
    shorter = encode_text(params, ids[:, :8], config)
    np.testing.assert_allclose(np.asarray(shorter), np.asarray(argmax), atol=1e-5)
    with pytest.raises(ValueError, match="context_length=16"):
        encode_text(params, np.zeros((1, 20), np.int32), config)


def test_image_encoder_and_random_init():
    encoder = init_random_encoder("tiny", image_size=48, taps=(1, 4), seed=5)
    assert isinstance(encoder, ImageEncoder)
    assert encoder.config.text is None and encoder.image_size == 48 and encoder.grid_size == 6
    assert encoder.width == 64 and encoder.embed_dim == 32 and encoder.taps == (1, 4)
    images = np.random.default_rng(3).normal(size=(5, 48, 48, 3)).astype(np.float32)
    taps, embeds = encoder(images)
    assert [t.shape for t in taps] == [(5, 37, 64)] * 2 and embeds.shape == (5, 32)
    with pytest.raises(ValueError, match=r"images must be \(B, 48, 48, 3\)"):
        encoder(images[:, :32, :32])
    # A batch sharded over a device mesh gives the same answer (params are uncommitted, so they follow).
    devices = jax.devices()[:4]
    mesh = Mesh(np.array(devices), ("data",))
    sharded = jax.device_put(images[:4], NamedSharding(mesh, PartitionSpec("data")))
    sharded_taps, sharded_embeds = encoder(sharded)
    np.testing.assert_allclose(np.asarray(sharded_embeds), np.asarray(embeds[:4]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(sharded_taps[0]), np.asarray(taps[0][:4]), atol=1e-5)
    stop_early = dataclasses.replace(encoder, with_embedding=False)
    early_taps, none = stop_early(images)
    assert none is None
    np.testing.assert_allclose(np.asarray(early_taps[1]), np.asarray(taps[1]), atol=1e-6)
    default = init_random_encoder("tiny", seed=5)
    assert default.taps == (1, 2, 3, 4) and default.image_size == 32
    np.testing.assert_array_equal(
        np.asarray(default.params["visual"]["blocks"][2]["mlp"]["c_fc"]["kernel"]),
        np.asarray(encoder.params["visual"]["blocks"][2]["mlp"]["c_fc"]["kernel"]),
    )


# ------------------------------------------------------------------ preprocessing


def test_preprocess_matches_independent_path():
    rng = np.random.default_rng(4)
    array = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(20, 20), dtype=np.uint8)
    out = preprocess_images([array, Image.fromarray(gray), Image.fromarray(array).convert("RGBA")], 24)
    assert out.shape == (3, 24, 24, 3) and out.dtype == np.float32
    resized = np.asarray(Image.fromarray(array).resize((24, 24), Image.BICUBIC), dtype=np.float64) / 255.0
    expected = (resized - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    np.testing.assert_allclose(out[2], expected, atol=1e-5)
    g = np.asarray(Image.fromarray(gray).resize((24, 24), Image.BICUBIC), dtype=np.float64) / 255.0
    np.testing.assert_allclose(out[1, ..., 1], (g - CLIP_MEAN[1]) / CLIP_STD[1], atol=1e-5)
    # A flat mid-grey image maps to (0.5 - mean) / std exactly.
    flat = preprocess_images([np.full((10, 30, 3), 128, np.uint8)], 7)
    np.testing.assert_allclose(flat[0, 3, 3], (128 / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD), atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images([np.zeros((4, 4, 3), np.float32)], 8)


# ------------------------------------------------------------------ tokenizer


def _bytes_to_unicode():
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tiny CLIP BPE vocabulary: the 512 byte symbols, 4 merges and the two special tokens."""
    folder = tmp_path_factory.mktemp("tok")
    symbols = _bytes_to_unicode()
    merges = ["c a", "ca t</w>", "p h", "o t"]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder, {t: i for i, t in enumerate(vocab)}


def test_tokenize_from_local_files(tokenizer_dir):
    folder, vocab = tokenizer_dir
    tok = load_tokenizer(folder, vocab_size=len(vocab))
    assert tok.vocab_size == 518 and tok.eos_id == vocab["<|endoftext|>"] and tok.bos_id == vocab["<|startoftext|>"]
    ids, eot = tokenize(tok, ["A photo of a CAT", "cat"], context_length=10)
    assert ids.dtype == np.int32 and ids.shape == (2, 10)
    pieces = ["<|startoftext|>", "a</w>", "ph", "ot", "o</w>", "o", "f</w>", "a</w>", "cat</w>", "<|endoftext|>"]
    expected = [vocab[piece] for piece in pieces]
    assert ids[0].tolist() == expected
    assert ids[1, :3].tolist() == [vocab["<|startoftext|>"], vocab["cat</w>"], vocab["<|endoftext|>"]]
    assert eot.tolist() == [9, 2]
    assert (ids.argmax(-1) == eot).all()
    with pytest.raises(ValueError, match="context_length=6"):
        tokenize(tok, ["a photo of a cat"], context_length=6)
    cut, cut_eot = tokenize(tok, ["a photo of a cat"], context_length=6, truncate=True)
    assert cut[0].tolist() == expected[:5] + [vocab["<|endoftext|>"]] and cut_eot.tolist() == [5]


def test_tokenizer_missing_or_wrong_files(tokenizer_dir, tmp_path):
    folder, vocab = tokenizer_dir
    with pytest.raises(FileNotFoundError, match="need vocab.json \\+ merges.txt or tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text((folder / "vocab.json").read_text())
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="has 518 tokens but the text tower embeds 49408"):
        load_tokenizer(folder, vocab_size=49408)
