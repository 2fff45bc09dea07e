"""Byte-level BPE tokenizers trained on a corpus, and the UTF-8 bytes each token stands for.

Legend: V vocabulary size.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> tokenizers.Tokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenizer and decoder, no prefix space) trained on texts,
    with `<|endoftext|>` as id 0 (special). Every byte is in the vocabulary, so any text encodes;
    the vocabulary is smaller than vocab_size only when the texts run out of merges."""
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return hf


def token_byte_lengths(hf: tokenizers.Tokenizer) -> np.ndarray:
    """[V] int64: the number of UTF-8 bytes of text each token stands for (0 for added tokens
    such as `<|endoftext|>`), so the bytes of any encoded text are the sum over its tokens."""
    alphabet = byte_alphabet()
    size = hf.get_vocab_size(with_added_tokens=True)
    lengths = np.zeros(size, dtype=np.int64)
    added = set(hf.get_added_tokens_decoder())
    for token, i in hf.get_vocab(with_added_tokens=True).items():
        if i not in added:
            lengths[i] = sum(1 for ch in token if ch in alphabet)
    return lengths


def byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte -> the byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}
