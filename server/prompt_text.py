"""Prompt text checks made before tokenizing: text UTF-8 cannot hold (a lone surrogate), and a
character bound that refuses a prompt which cannot fit before the costly full encode."""

from __future__ import annotations

from hagmoe.model.tokenizer import Tokenizer
from server.errors import InvalidInput

# Headroom over the longest vocabulary piece for tokenizers whose normalizer can shrink text
# (NFC composition, stripped characters) or whose unknown token covers several characters.
NORMALIZER_HEADROOM = 4


def check_encodable(text: str, field: str) -> None:
    """Raise InvalidInput naming `field` when text holds a lone UTF-16 surrogate."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{field}: the text holds a lone UTF-16 surrogate {text[exc.start]!r} at character "
            f"{exc.start}, which is not valid Unicode",
            field,
        ) from None


def chars_per_token(tokenizer: Tokenizer | None) -> int:
    """The most characters one token can stand for (an upper bound; 0 without a tokenizer).

    Byte-level: exactly 1 (a token is one byte). Otherwise the longest vocabulary piece times
    NORMALIZER_HEADROOM: a piece of a BPE, WordPiece or SentencePiece vocabulary is at least as
    long as the text it covers, and the headroom covers normalizers and unknown tokens. A text
    longer than max_input_tokens x this many characters therefore cannot fit."""
    if tokenizer is None:
        return 0
    if tokenizer.is_byte_level:
        return 1
    return tokenizer.longest_piece_chars() * NORMALIZER_HEADROOM
