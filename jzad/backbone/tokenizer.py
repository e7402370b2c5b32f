"""CLIP BPE tokenizers, offline: a checkpoint's own files, or the standard vocabulary shipped with jzad.

``load_tokenizer(folder)`` wraps transformers' CLIPTokenizer (imported lazily) over a Hugging Face folder's
vocab.json + merges.txt or tokenizer.json. A folder without those files makes CLIPTokenizer silently build
a 2-token vocabulary, so it checks the files and the vocabulary size. ``clip_tokenizer()`` is jzad's own
BPE (``jzad.backbone.bpe``) over the shipped vocabulary, for OpenAI / OpenCLIP ``.pt`` checkpoints, which
carry no tokenizer files; with ``tokenize(..., truncate=True)`` its ids equal OpenCLIP's ``tokenize``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True, eq=False)
class Tokenizer:
    """A loaded CLIP tokenizer: its backend (transformers' CLIPTokenizer or jzad's BPETokenizer), the file or
    folder it came from and its special-token ids."""

    backend: Any
    path: Path
    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int


def load_tokenizer(path: str | Path, vocab_size: int | None = None) -> Tokenizer:
    """Load the CLIP tokenizer in folder path (vocab.json + merges.txt, or tokenizer.json); no network.

    vocab_size: when given (the text tower's embedding rows), the tokenizer must have exactly that many
    tokens. Raises FileNotFoundError when the files are missing, ValueError for a wrong vocabulary.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not has_bpe and not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no CLIP tokenizer files in {folder}: need vocab.json + merges.txt or tokenizer.json "
            "(copy them from the Hugging Face checkpoint folder of the model)"
        )
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    size = len(backend)
    vocab = backend.get_vocab()
    if size <= 2 or BOS_TOKEN not in vocab or EOS_TOKEN not in vocab:
        raise ValueError(
            f"tokenizer in {folder} loaded with {size} tokens and without {BOS_TOKEN}/{EOS_TOKEN}: "
            "its vocab/merges files are missing or not CLIP's"
        )
    if vocab_size is not None and size != vocab_size:
        raise ValueError(
            f"tokenizer in {folder} has {size} tokens but the text tower embeds {vocab_size}; "
            "it belongs to another checkpoint"
        )
    eos_id = vocab[EOS_TOKEN]
    pad_id = backend.pad_token_id if backend.pad_token_id is not None else 0
    return Tokenizer(backend, folder, vocab[BOS_TOKEN], eos_id, int(pad_id), size)


@lru_cache(maxsize=1)
def clip_tokenizer() -> Tokenizer:
    """The standard CLIP tokenizer (49,408 tokens) over the vocabulary shipped with jzad, as OpenCLIP builds it:
    <start_of_text> 49406, <end_of_text> 49407, rows padded with 0. Built once per process (about 0.2 s)."""
    from jzad.backbone.bpe import BPETokenizer

    backend = BPETokenizer()
    return Tokenizer(backend, backend.path, backend.start_id, backend.end_id, 0, backend.vocab_size)


def tokenize(
    tokenizer: Tokenizer, texts, context_length: int = 77, truncate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (ids (B, context_length) int32, eot (B,) int32 position of each end-of-text token).

    Each row is start token, text tokens, end token, then the tokenizer's pad id (Hugging Face CLIP folders:
    <|endoftext|>; ``clip_tokenizer()``: 0).
    A text longer than context_length raises ValueError unless truncate=True, which keeps the first
    context_length - 1 tokens and ends the row with <|endoftext|> (as OpenCLIP does).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    encoded = tokenizer.backend(texts, add_special_tokens=True)["input_ids"]
    ids = np.full((len(texts), context_length), tokenizer.pad_id, dtype=np.int32)
    eot = np.empty(len(texts), dtype=np.int32)
    for row, (text, tokens) in enumerate(zip(texts, encoded)):
        if tokens[0] != tokenizer.bos_id or tokens[-1] != tokenizer.eos_id:
            raise ValueError(f"tokenizer in {tokenizer.path} does not add {BOS_TOKEN}/{EOS_TOKEN} around texts")
        if len(tokens) > context_length:
            if not truncate:
                raise ValueError(
                    f"text {row} ({text[:40]!r}...) has {len(tokens)} tokens > context_length={context_length}; "
                    "pass truncate=True to cut it"
                )
            tokens = list(tokens[: context_length - 1]) + [tokenizer.eos_id]
        ids[row, : len(tokens)] = tokens
        eot[row] = len(tokens) - 1
    return ids, eot
