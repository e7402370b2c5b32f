"""jzad's own CLIP BPE tokenizer against OpenCLIP's tokenizer (loaded through tests/openclip_shim.py).

Every WinCLIP prompt of every MVTec AD / VisA / MPDD / BTAD category name, plus odd strings (unicode,
HTML entities, mojibake, punctuation, digits, contractions, special-token text, over-long texts), must
give exactly OpenCLIP's ids, framing, padding and truncation.
"""

import gzip

import numpy as np
import pytest

import openclip_shim
from jzad.backbone.bpe import VOCAB_FILE, BPETokenizer, byte_symbols, clean_text
from jzad.backbone.tokenizer import clip_tokenizer, tokenize
from jzad.methods.winclip import prompt_ensemble

CATEGORIES = (
    "bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile toothbrush transistor wood zipper "
    "candle capsules cashew chewinggum fryum macaroni1 macaroni2 pcb1 pcb2 pcb3 pcb4 pipe_fryum "
    "bracket_black bracket_brown bracket_white connector metal_plate tubes 01 02 03"
).split()

ODD_TEXTS = [
    "",
    "   ",
    "A PHOTO OF A Metal_Nut!!!",
    "café naïve façade résumé Ærøskøbing",
    "日本語のテキストと한국어 그리고 中文",
    "emoji 🙂🚀👩‍👩‍👧 and ⚙️ gears",
    "&amp;amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;x&#39;",
    "mojibake: Ã©tÃ© â€œquotesâ€\x9d",
    "tabs\tand\nnewlines\r\n  and   runs     of spaces",
    "don't we'll they're I've I'm he'd it's 'S 'LL",
    "numbers 1234567890 3.14159 1e-12 -0.5 #42 $100 50%",
    "punctuation ... ?!?! ;;; ::: --- ___ *** (((brackets))) [[x]] {{y}}",
    "<start_of_text> inside <end_of_text> and <|endoftext|> text",
    "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ ａｎｄ ①②③ ½ ² ㎏",
    "zero\u200bwidth\u00a0nbsp\u2028line\u0000null\u007fdel",
    "Ελληνικά кириллица עברית العربية हिन्दी",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    " ".join(["transistor"] * 80),
    "a jpeg corrupted photo of the " + "very " * 100 + "damaged metal_plate.",
    "x" * 500,
]


@pytest.fixture(scope="module")
def reference():
    return openclip_shim.load()[1]


@pytest.fixture(scope="module")
def ours():
    return clip_tokenizer()


def test_shipped_vocabulary_is_openclips_file():
    shipped = gzip.open(VOCAB_FILE).read()
    assert shipped == gzip.open(openclip_shim.tokenizer_file()).read()


def test_vocabulary_and_special_ids(reference, ours):
    ref = reference.SimpleTokenizer()
    bpe = ours.backend
    assert bpe.token_id == ref.encoder
    assert len(bpe) == ours.vocab_size == 49408
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.sot_token_id, ref.eot_token_id, 0)
    assert byte_symbols() == ref.byte_encoder


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_winclip_prompt(reference, ours, category):
    normal, anomalous = prompt_ensemble(category)
    prompts = normal + anomalous
    expected = reference.tokenize(prompts).numpy()
    ids, eot = tokenize(ours, prompts, 77, truncate=True)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(eot, expected.argmax(axis=1))


def test_odd_strings_and_truncation(reference, ours):
    ref = reference.SimpleTokenizer()
    for text in ODD_TEXTS:
        assert clean_text(text) == reference._clean_lower(text), text
        assert ours.backend.encode(text) == ref.encode(text), text
    for context in (77, 16, 5):
        expected = reference.tokenize(ODD_TEXTS, context_length=context).numpy()
        ids, _ = tokenize(ours, ODD_TEXTS, context, truncate=True)
        np.testing.assert_array_equal(ids, expected)


def test_long_text_without_truncate_is_refused(ours):
    with pytest.raises(ValueError, match="truncate=True"):
        tokenize(ours, ["x " * 100], 77)


def test_random_unicode_words(reference, ours):
    rng = np.random.default_rng(20261128)
    ref = reference.SimpleTokenizer()
    alphabet = [chr(c) for c in rng.integers(0x20, 0x3000, size=600)] + list(" .,'-_!?")
    for _ in range(60):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(1, 40))))
        assert ours.backend.encode(text) == ref.encode(text), repr(text)


def test_bad_vocabulary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BPETokenizer(tmp_path / "missing.txt.gz")
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt") as handle:
        handle.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(ValueError, match="48894 merge lines"):
        BPETokenizer(short)
    plain = tmp_path / "plain.txt.gz"
    plain.write_text("not gzip")
    with pytest.raises(ValueError, match="cannot read BPE vocabulary"):
        BPETokenizer(plain)
