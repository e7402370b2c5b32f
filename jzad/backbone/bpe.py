"""CLIP's byte-level BPE tokenizer in pure Python, over the vocabulary file shipped with jzad.

OpenAI and OpenCLIP ``.pt`` checkpoints carry no tokenizer files; their text towers were trained on the
ids of CLIP's ``SimpleTokenizer``, which this module computes (OpenCLIP's variant, default "lower" clean):

1. clean: ``ftfy.fix_text``, HTML-unescape twice, strip; collapse whitespace runs to one space; lower case.
2. words: CLIP's pattern picks, left to right, the special tokens, the contractions 's 't 're 've 'm 'll 'd,
   runs of letters, single digits, and runs of other non-space characters (case-insensitive).
3. bytes: each word's UTF-8 bytes become one printable symbol per byte (the reversible byte map of GPT-2
   and CLIP), and the last symbol gets the end-of-word mark ``</w>``.
4. BPE: merge every occurrence (left to right) of the adjacent pair with the lowest merge rank, again and
   again, until no adjacent pair is a merge.
5. ids: the 256 byte symbols, their 256 ``</w>`` forms, one per merge in file order, then
   ``<start_of_text>`` (49406) and ``<end_of_text>`` (49407): 49,408 tokens.

The vocabulary file's origin and licence are in ``bpe_simple_vocab_16e6.NOTICE.txt`` beside it.
``ftfy`` and ``regex`` (Unicode classes \\p{L}, \\p{N}) are imported when a tokenizer is built.
"""

from __future__ import annotations

import gzip
import html
from pathlib import Path

VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
MERGE_COUNT = 49152 - 256 - 2
"""Merges used from the file (its first line is a version header): 48,894."""
START_TOKEN = "<start_of_text>"
END_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_CACHE_LIMIT = 1 << 16


def byte_symbols() -> dict[int, str]:
    """Byte value -> its printable stand-in: '!'..'~', '¡'..'¬' and '®'..'ÿ' stand for themselves, the other
    68 bytes (controls, space, soft hyphen, ...) map to chr(256 + k) in increasing byte order.

    The dict's order (printable bytes first, then the others) is the order of the first 256 vocabulary ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + k) for k, b in enumerate(others)})
    return table


def clean_text(text: str) -> str:
    """CLIP's text clean-up: ftfy fix, HTML unescape (twice), whitespace runs -> one space, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class BPETokenizer:
    """CLIP's byte-level BPE over a merge file (default: the one shipped with jzad).

    ``encode(text)`` -> ids without start/end tokens; calling it on a list of texts returns
    ``{"input_ids": [[start, ..., end], ...]}`` (the interface ``jzad.backbone.tokenizer.tokenize`` reads).
    """

    def __init__(self, path: str | Path = VOCAB_FILE):
        import regex

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"BPE vocabulary file {path} does not exist")
        try:
            lines = gzip.open(path).read().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read BPE vocabulary file {path} (gzip'd UTF-8 text expected): {err}") from err
        merges = [tuple(line.split()) for line in lines[1 : 1 + MERGE_COUNT]]
        if len(merges) != MERGE_COUNT or any(len(pair) != 2 for pair in merges):
            raise ValueError(f"{path}: expected a header line and {MERGE_COUNT} merge lines of two symbols each")
        self.byte_symbol = byte_symbols()
        base = list(self.byte_symbol.values())
        vocabulary = base + [s + END_OF_WORD for s in base] + ["".join(pair) for pair in merges]
        vocabulary += [START_TOKEN, END_TOKEN]
        self.token_id = {token: index for index, token in enumerate(vocabulary)}
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.start_id = self.token_id[START_TOKEN]
        self.end_id = self.token_id[END_TOKEN]
        self.special = {START_TOKEN: self.start_id, END_TOKEN: self.end_id}
        self.vocab_size = len(self.token_id)
        alternatives = [regex.escape(t) for t in self.special] + list(CONTRACTIONS)
        alternatives += [r"\p{L}+", r"\p{N}", r"[^\s\p{L}\p{N}]+"]
        self.word_pattern = regex.compile("|".join(alternatives), regex.IGNORECASE)
        self.path = path
        self._cache: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return self.vocab_size

    def merge_word(self, symbols: str) -> list[str]:
        """Byte symbols of one word -> its BPE tokens (the last carries ``</w>``)."""
        parts = list(symbols[:-1]) + [symbols[-1] + END_OF_WORD]
        while len(parts) > 1:
            pairs = list(zip(parts, parts[1:]))
            ranks = [self.merge_rank.get(pair, MERGE_COUNT) for pair in pairs]
            best = min(ranks)
            if best == MERGE_COUNT:
                break
            first, second = pairs[ranks.index(best)]
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _word_ids(self, word: str) -> tuple[int, ...]:
        if word in self.special:
            return (self.special[word],)
        cached = self._cache.get(word)
        if cached is None:
            symbols = "".join(self.byte_symbol[b] for b in word.encode("utf-8"))
            cached = tuple(self.token_id[token] for token in self.merge_word(symbols))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = cached
        return cached

    def encode(self, text: str) -> list[int]:
        """One text -> its token ids, without the start and end tokens."""
        ids: list[int] = []
        for word in self.word_pattern.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def __call__(self, texts, add_special_tokens: bool = True) -> dict:
        """Texts -> {"input_ids": one list of ids per text}, framed by start/end tokens when asked."""
        if isinstance(texts, str):
            texts = [texts]
        framed = [self.encode(t) for t in texts]
        if add_special_tokens:
            framed = [[self.start_id, *ids, self.end_id] for ids in framed]
        return {"input_ids": framed}

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id (a copy)."""
        return dict(self.token_id)
