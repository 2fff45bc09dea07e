"""Tokenizers: byte-level fallback and Hugging Face tokenizer.json files behave alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from hagmoe.model import Tokenizer, TokenizerError

TEXTS = ["Hello world!", "héllo wörld, ça va? naïve café", "emoji 🙂🚀 and 漢字", "a\tb\nc  d"]
EOT = "<|endoftext|>"


def _train_hf() -> tokenizers.Tokenizer:
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOT, "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(TEXTS * 3 + ["the quick brown fox jumps over the lazy dog"], trainer)
    return hf


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    Tokenizer.from_hf(_train_hf()).save(tmp_path)
    return tmp_path


BYTES = Tokenizer.byte_level()


@given(st.text())
def test_byte_level_round_trip(text: str) -> None:
    ids = BYTES.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert BYTES.decode(ids) == text


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_round_trip_examples(text: str) -> None:
    assert BYTES.decode(BYTES.encode(text)) == text


def test_byte_level_specials() -> None:
    tok = Tokenizer.byte_level(320)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (256, 257, 258)
    assert tok.vocab_size == 320
    assert {256, 257, 258, 319} <= tok.special_token_ids
    assert 65 not in tok.special_token_ids
    ids = tok.encode("hi", add_special_tokens=True)
    assert ids == [256, ord("h"), ord("i")]
    assert tok.decode([*ids, 257, 300]) == "hi"
    assert tok.decode([*ids, 257], skip_special_tokens=False) == "<bos>hi<eos>"
    assert tok.id_to_token(257) == "<eos>"
    assert tok.id_to_token(ord("A")) == "A"


def test_byte_level_invalid_utf8_is_replaced() -> None:
    snowman = "☃".encode()
    assert BYTES.decode(list(snowman[:2])) == "\ufffd"
    assert BYTES.decode([0xFF, ord("a")]) == "\ufffda"


def test_byte_level_vocab_too_small() -> None:
    with pytest.raises(TokenizerError, match="258"):
        Tokenizer.byte_level(258)


@pytest.mark.parametrize("bad", [-1, 259, 10**6])
def test_out_of_range_id(bad: int) -> None:
    with pytest.raises(TokenizerError, match=rf"token id {bad} is out of range for vocab size 259"):
        BYTES.decode([65, bad])
    with pytest.raises(TokenizerError, match=rf"token id {bad}"):
        BYTES.id_to_token(bad)


def test_hf_round_trip(hf_folder: Path) -> None:
    tok = Tokenizer.load(hf_folder)
    assert not tok.is_byte_level
    assert tok.vocab_size == _train_hf().get_vocab_size(with_added_tokens=True)
    for text in [*TEXTS, "unseen wörds ✨"]:
        assert tok.decode(tok.encode(text)) == text


def test_hf_specials(hf_folder: Path) -> None:
    tok = Tokenizer.load(hf_folder)
    eot, pad = tok.encode(EOT), tok.encode("<pad>")
    assert eot == [tok.eos_token_id]
    assert pad == [tok.pad_token_id]
    assert tok.bos_token_id is None
    assert {tok.eos_token_id, tok.pad_token_id} <= tok.special_token_ids
    ids = tok.encode("hello") + eot
    assert tok.decode(ids) == "hello"
    assert tok.decode(ids, skip_special_tokens=False) == "hello" + EOT
    assert tok.id_to_token(eot[0]) == EOT


def test_hf_out_of_range_id(hf_folder: Path) -> None:
    tok = Tokenizer.load(hf_folder)
    with pytest.raises(TokenizerError, match=rf"{tok.vocab_size} is out of range for vocab size"):
        tok.decode([tok.vocab_size])


def test_ids_override_detection(hf_folder: Path) -> None:
    tok = Tokenizer.load(hf_folder, bos_token_id=5, eos_token_id=6)
    assert (tok.bos_token_id, tok.eos_token_id) == (5, 6)
    assert tok.decode([5, 6]) == ""
    with pytest.raises(TokenizerError, match="eos_token_id"):
        Tokenizer.load(hf_folder, eos_token_id=10**6)


def test_tokenizer_config_names_and_chat_template(hf_folder: Path) -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    config = {"bos_token": {"content": EOT}, "chat_template": template}
    (hf_folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.load(hf_folder)
    assert tok.bos_token_id == tok.eos_token_id == tok.encode(EOT)[0]
    assert tok.chat_template == template
    tok.save(hf_folder / "copy")
    assert Tokenizer.load(hf_folder / "copy").chat_template == template


def test_from_file(hf_folder: Path) -> None:
    tok = Tokenizer.from_file(hf_folder / "tokenizer.json")
    assert tok.decode(tok.encode(TEXTS[2])) == TEXTS[2]
    with pytest.raises(TokenizerError, match="cannot read tokenizer"):
        Tokenizer.from_file(hf_folder / "absent.json")


def test_folder_without_tokenizer_json_is_byte_level(tmp_path: Path) -> None:
    tok = Tokenizer.load(tmp_path)
    assert tok.is_byte_level
    assert tok.vocab_size == 259
    assert Tokenizer.load(tmp_path, vocab_size=320).vocab_size == 320
    tok.save(tmp_path)
    assert list(tmp_path.iterdir()) == []
