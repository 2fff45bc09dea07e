"""A hagmoe tokenizer as the vocabulary of a GGUF file: llama.cpp's "gpt2" (byte-level BPE)
tokenizer, so that llama.cpp turns a prompt into the same token ids as hagmoe does.

Two flavours map:
- the byte-level tokenizer (hagmoe.model.tokenizer: ids 0..255 the bytes, then <bos>, <eos>,
  <pad>, then reserved ids): token i < 256 is byte i spelled in GPT-2's byte-to-unicode
  alphabet, and the only merge joins two 0xFF bytes, which never occur in UTF-8 text (llama.cpp
  refuses a gpt2 vocabulary without merges), so every byte stays one token;
- a `tokenizers` byte-level BPE (hagmoe/assets/tokenizer.json): its vocabulary, merges and added
  tokens as they are, with llama.cpp's "gpt-2" pre-tokenizer (the regex of the ByteLevel
  pre-tokenizer).
Ids from the tokenizer's size up to the model's vocab_size are padded with unused tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from gguf import TokenType

from hagmoe.model import Tokenizer
from hagmoe.model.tokenizer import BYTE_SPECIALS


class VocabExportError(ValueError):
    """The tokenizer has no llama.cpp equivalent."""


@dataclass(frozen=True, slots=True)
class GGUFVocab:
    """The tokenizer.ggml.* fields of a GGUF file."""

    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes onto printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def gguf_vocab(tokenizer: Tokenizer, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of `tokenizer` for a model of `vocab_size` ids (>= the tokenizer's)."""
    if tokenizer.vocab_size > vocab_size:
        raise VocabExportError(
            f"tokenizer has {tokenizer.vocab_size} ids, above the model's vocab_size {vocab_size}"
        )
    if tokenizer.is_byte_level:
        tokens, types, merges, pre = _byte_level(tokenizer)
    else:
        tokens, types, merges, pre = _hf_bpe(tokenizer)
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(int(TokenType.UNUSED))
    return GGUFVocab(
        "gpt2",
        pre,
        tokens,
        types,
        merges,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )


def _byte_level(tokenizer: Tokenizer) -> tuple[list[str], list[int], list[str], str]:
    alphabet = byte_to_unicode()
    tokens = [alphabet[b] for b in range(256)]
    types = [int(TokenType.NORMAL)] * 256
    for i in range(256, tokenizer.vocab_size):
        named = i - 256 < len(BYTE_SPECIALS)
        tokens.append(BYTE_SPECIALS[i - 256] if named else f"<reserved_{i}>")
        types.append(int(TokenType.CONTROL if named else TokenType.UNUSED))
    never = alphabet[0xFF]  # 0xFF is no UTF-8 byte: a merge that can never apply
    return tokens, types, [f"{never} {never}"], "default"


def _hf_bpe(tokenizer: Tokenizer) -> tuple[list[str], list[int], list[str], str]:
    data = json.loads(tokenizer.hf_json() or "{}")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise VocabExportError(f"tokenizer model {model.get('type')!r}: only BPE maps to gpt2")
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise VocabExportError(
            f"pre_tokenizer {pre.get('type')!r}: only ByteLevel with its regex maps to gpt-2"
        )
    if data.get("normalizer") is not None or pre.get("add_prefix_space"):
        raise VocabExportError("tokenizer normalizer / add_prefix_space have no gpt2 equivalent")
    by_id = {int(i): str(t) for t, i in model["vocab"].items()}
    added = {int(t["id"]): t for t in data.get("added_tokens", [])}
    by_id.update({i: str(t["content"]) for i, t in added.items()})
    size = max(by_id) + 1
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
            continue
        tokens.append(token)
        if i not in added:
            types.append(int(TokenType.NORMAL))
        else:
            special = bool(added[i].get("special", False))
            types.append(int(TokenType.CONTROL if special else TokenType.USER_DEFINED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, "gpt-2"
