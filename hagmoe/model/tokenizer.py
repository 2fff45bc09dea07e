"""Tokenizers: a Hugging Face `tokenizers` file (tokenizer.json) or a byte-level fallback.

Byte-level flavour: ids 0..255 are the bytes of the UTF-8 text, then `<bos>`, `<eos>`, `<pad>` at
256, 257, 258; ids from 259 up to vocab_size - 1 are reserved (`<reserved_N>`, special, decode to
nothing when special tokens are skipped). Its `save` writes no tokenizer.json, so a folder without
one loads back as byte-level; both flavours write tokenizer_config.json when a chat template is set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from hagmoe.errors import TokenizerError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 saves the chat template
BYTE_SPECIALS = ("<bos>", "<eos>", "<pad>")
BYTE_BOS, BYTE_EOS, BYTE_PAD = 256, 257, 258

_COMMON_SPECIALS: dict[str, tuple[str, ...]] = {
    "bos": ("<|begin_of_text|>", "<|startoftext|>", "<s>", "<bos>"),
    "eos": ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"),
    "pad": ("<pad>", "<|pad|>", "<|padding|>", "[PAD]"),
}


class Tokenizer:
    """Text <-> token ids, with the special ids the model and the server need."""

    __slots__ = (
        "_hf",
        "bos_token_id",
        "chat_template",
        "eos_token_id",
        "pad_token_id",
        "special_token_ids",
        "vocab_size",
    )

    def __init__(
        self,
        hf: tokenizers.Tokenizer | None,
        vocab_size: int,
        specials: Mapping[str, int | None],
        chat_template: str | None = None,
    ) -> None:
        """Use the constructors (`load`, `from_file`, `from_hf`, `byte_level`) instead."""
        self._hf = hf
        self.vocab_size = vocab_size
        self.chat_template = chat_template
        for role, token_id in specials.items():
            if token_id is not None and not 0 <= token_id < vocab_size:
                raise TokenizerError(
                    f"{role}_token_id {token_id} is out of range for vocab size {vocab_size}"
                )
        self.bos_token_id = specials.get("bos")
        self.eos_token_id = specials.get("eos")
        self.pad_token_id = specials.get("pad")
        listed = {i for i in specials.values() if i is not None}
        self.special_token_ids: frozenset[int] = frozenset(listed | self._flavour_specials())

    def hf_json(self) -> str | None:
        """The `tokenizers` JSON of this tokenizer (None for the byte-level one)."""
        return self._hf.to_str() if self._hf is not None else None

    @classmethod
    def load(
        cls,
        folder: str | Path,
        *,
        vocab_size: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> Tokenizer:
        """The folder's tokenizer.json, else byte-level with `vocab_size` (default 259). With a
        tokenizer.json, a `vocab_size` above its size (a model's padded embedding) makes the
        extra ids valid; they decode to nothing.

        Given ids override the detected ones (pass the model config's ids). The chat template
        comes from the folder's tokenizer_config.json "chat_template", else its chat_template.jinja."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerError(f"tokenizer folder {folder} does not exist")
        settings = _read_tokenizer_config(folder / TOKENIZER_CONFIG_FILE)
        overrides = {"bos": bos_token_id, "eos": eos_token_id, "pad": pad_token_id}
        template = _chat_template(folder, settings)
        if not (folder / TOKENIZER_FILE).is_file():
            return cls.byte_level(
                vocab_size or BYTE_PAD + 1, chat_template=template, **_ids(overrides)
            )
        hf = _read_hf(folder / TOKENIZER_FILE)
        named = {role: _token_name(settings.get(f"{role}_token")) for role in overrides}
        return cls.from_hf(
            hf, chat_template=template, names=named, vocab_size=vocab_size, **_ids(overrides)
        )

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> Tokenizer:
        """A tokenizer.json file (no chat template: use `load` on its folder for that)."""
        return cls.from_hf(
            _read_hf(Path(path)),
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )

    @classmethod
    def from_hf(
        cls,
        hf: tokenizers.Tokenizer,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        chat_template: str | None = None,
        names: dict[str, str | None] | None = None,
        vocab_size: int | None = None,
    ) -> Tokenizer:
        """Wrap a `tokenizers.Tokenizer`; special ids not given are found from `names` (token
        strings, e.g. from tokenizer_config.json) or common special token strings. `vocab_size`
        above the tokenizer's size extends the valid ids (decoding to nothing)."""
        given = {"bos": bos_token_id, "eos": eos_token_id, "pad": pad_token_id}
        specials = {
            role: token_id
            if token_id is not None
            else _find_special(hf, (names or {}).get(role), role)
            for role, token_id in given.items()
        }
        size = max(hf.get_vocab_size(with_added_tokens=True), vocab_size or 0)
        return cls(hf, size, specials, chat_template)

    @classmethod
    def byte_level(
        cls,
        vocab_size: int = BYTE_PAD + 1,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        chat_template: str | None = None,
    ) -> Tokenizer:
        """Bytes 0..255, then `<bos>`, `<eos>`, `<pad>`; vocab_size must be at least 259."""
        if vocab_size < BYTE_PAD + 1:
            raise TokenizerError(
                f"byte-level vocab size {vocab_size} is below {BYTE_PAD + 1} "
                "(256 bytes and 3 special tokens)"
            )
        specials = {
            "bos": BYTE_BOS if bos_token_id is None else bos_token_id,
            "eos": BYTE_EOS if eos_token_id is None else eos_token_id,
            "pad": BYTE_PAD if pad_token_id is None else pad_token_id,
        }
        return cls(None, vocab_size, specials, chat_template)

    @property
    def is_byte_level(self) -> bool:
        return self._hf is None

    def longest_piece_chars(self) -> int:
        """Characters in the longest vocabulary piece, added tokens included (1 byte-level:
        every token is one byte, and every character is at least one byte)."""
        if self._hf is None:
            return 1
        vocab = self._hf.get_vocab(with_added_tokens=True)
        return max((len(piece) for piece in vocab), default=1)

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json (HF flavour; nothing for byte-level) and, when a chat template
        is set, its "chat_template" into tokenizer_config.json (other keys there are kept)."""
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if self._hf is not None:
                self._hf.save(str(folder / TOKENIZER_FILE))
            if self.chat_template is not None:
                path = folder / TOKENIZER_CONFIG_FILE
                settings = _read_tokenizer_config(path)
                settings["chat_template"] = self.chat_template
                path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"cannot save tokenizer to {folder}: {exc}") from exc

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of text. With add_special_tokens: HF post-processing, or (byte-level) bos first.

        Byte-level treats special-token strings in text as plain bytes; HF matches added tokens."""
        if self._hf is not None:
            return list(self._hf.encode(text, add_special_tokens=add_special_tokens).ids)
        ids = list(text.encode("utf-8"))
        if add_special_tokens and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ids; invalid or incomplete UTF-8 becomes U+FFFD. Raises TokenizerError for an
        id outside [0, vocab_size)."""
        ids = [int(i) for i in ids]
        for i in ids:
            self._check_id(i)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_token_ids]
        if self._hf is not None:
            return str(self._hf.decode(ids, skip_special_tokens=skip_special_tokens))
        return self._decode_bytes(ids)

    def id_to_token(self, i: int) -> str:
        """The token string of id i (byte-level: one byte as latin-1 text, or a special's name)."""
        self._check_id(i)
        if self._hf is not None:
            token = self._hf.id_to_token(i)
            if token is None:
                raise TokenizerError(f"token id {i} has no token in vocab size {self.vocab_size}")
            return str(token)
        return bytes([i]).decode("latin-1") if i < 256 else _byte_special(i)

    def _check_id(self, i: int) -> None:
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(f"token id {i} is out of range for vocab size {self.vocab_size}")

    def _flavour_specials(self) -> set[int]:
        if self._hf is None:
            return set(range(256, self.vocab_size))
        return {i for i, added in self._hf.get_added_tokens_decoder().items() if added.special}

    def _decode_bytes(self, ids: list[int]) -> str:
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            parts.append(_byte_special(i))
            run = bytearray()
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def __repr__(self) -> str:
        flavour = "byte-level" if self._hf is None else "tokenizers"
        return (
            f"Tokenizer({flavour}, vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
            f"eos={self.eos_token_id}, pad={self.pad_token_id})"
        )


def _byte_special(i: int) -> str:
    return BYTE_SPECIALS[i - 256] if i - 256 < len(BYTE_SPECIALS) else f"<reserved_{i}>"


def _ids(overrides: dict[str, int | None]) -> dict[str, int | None]:
    return {f"{role}_token_id": token_id for role, token_id in overrides.items()}


def _read_hf(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for bad files
        raise TokenizerError(f"cannot read tokenizer {path}: {exc}") from exc


def _read_tokenizer_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return data


def _chat_template(folder: Path, settings: dict[str, Any]) -> str | None:
    template = settings.get("chat_template")
    if isinstance(template, str):
        return template
    path = folder / CHAT_TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc


def _token_name(value: object) -> str | None:
    """tokenizer_config.json spells a special token as a string or {"content": string}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _find_special(hf: tokenizers.Tokenizer, name: str | None, role: str) -> int | None:
    for candidate in ((name,) if name else ()) + _COMMON_SPECIALS[role]:
        token_id = hf.token_to_id(candidate)
        if token_id is not None:
            return int(token_id)
    return None
