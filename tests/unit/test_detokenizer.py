"""IncrementalDetokenizer against a real byte-level BPE trained in the test."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hagmoe.engine.detokenizer import IncrementalDetokenizer
from hagmoe.model.tokenizer import Tokenizer as ByteTokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello again!",
    "Café crème, naïve façade, déjà vu, jalapeño, smörgåsbord, Ærøskøbing, Zürich.",
    "Ünïcödé is fün: résumé, coöperate, El Niño, São Paulo, Kraków, Dvořák, Łódź.",
    "Emoji time 😀 😃 🎉 — party 🎉🎉 and hearts ❤️ with stars ⭐ and a rocket 🚀.",
    "日本語のテキスト、中文文本, 한국어 텍스트, Ελληνικά, русский текст, עברית.",
    "Numbers 12345 67890, symbols #@$%^&*() and quotes \"double\" 'single' `tick`.",
]
EOS = "<eos>"


class Adapter:
    """The thin decode(ids, skip_special_tokens) wrapper the engine uses."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids


@cache
def adapter() -> Adapter:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOS],
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return Adapter(tokenizer)


def stream(
    ids: list[int], stop: Sequence[str] = (), skip: bool = True
) -> tuple[IncrementalDetokenizer, list[str]]:
    """Feed ids until they run out or a stop string fires; the deltas, flush included."""
    detok = IncrementalDetokenizer(adapter(), [1, 2, 3], stop=stop, skip_special_tokens=skip)
    deltas = []
    for token in ids:
        update = detok.append(token)
        deltas.append(update.text)
        assert detok.output_text == "".join(deltas)
        if update.stop is not None:
            return detok, deltas
    deltas.append(detok.flush())
    return detok, deltas


def test_tokenizer_is_small_byte_level_bpe() -> None:
    assert 300 <= adapter().tokenizer.get_vocab_size() <= 500


TEXTS = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="abcé ñ😀🦊日本\n.", max_size=60),
    st.lists(st.sampled_from(" ".join(CORPUS).split(" ")), max_size=12).map(" ".join),
)


@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_deltas_and_flush_concatenate_to_the_full_decode(text: str) -> None:
    ids = adapter().encode(text)
    detok, deltas = stream(ids)
    assert "".join(deltas) == adapter().decode(ids)
    assert detok.stop_string is None


@settings(max_examples=150, deadline=None)
@given(TEXTS, st.lists(st.text(alphabet="abcé 😀", min_size=1, max_size=3), max_size=3))
def test_stop_strings_cut_the_text_and_never_leak(text: str, stops: list[str]) -> None:
    ids = adapter().encode(text)
    full = adapter().decode(ids)
    detok, deltas = stream(ids, stops)
    shown = "".join(deltas)
    assert not any(stop in shown for stop in stops)
    if detok.stop_string is None:
        assert shown == full
    else:
        assert full.startswith(shown + detok.stop_string)


def test_stop_string_spanning_tokens_is_not_leaked() -> None:
    text = "Hello world, the quick brown fox jumps over the lazy dog."
    ids = adapter().encode(text)
    pieces = [adapter().decode([i]) for i in ids]
    assert not any("quick brown" in piece for piece in pieces)
    detok, deltas = stream(ids, ["quick brown"])
    assert detok.stop_string == "quick brown"
    assert "".join(deltas) == "Hello world, the "
    with pytest.raises(RuntimeError):
        detok.append(ids[0])


def test_partial_stop_then_mismatch_releases_the_held_text() -> None:
    text = "zz ab abd xy"
    ids = adapter().encode(text)
    detok = IncrementalDetokenizer(adapter(), [], stop=["abc"])
    held_seen = False
    for count, token in enumerate(ids, start=1):
        assert detok.append(token).stop is None
        if adapter().decode(ids[:count]).endswith("ab"):
            held_seen = True
            assert not detok.output_text.endswith(("a", "ab"))
    assert held_seen
    assert detok.output_text == text
    assert detok.flush() == ""


def test_flush_releases_a_trailing_partial_stop() -> None:
    ids = adapter().encode("the lazy do")
    detok, deltas = stream(ids[:-1] + ids[-1:], ["dog"])
    assert deltas[-1].endswith("do") and "".join(deltas) == "the lazy do"
    assert detok.stop_string is None and detok.finished


def test_split_multibyte_characters_never_show_replacement_chars() -> None:
    text = "fox 🦊 octopus 🐙 clef 𝄞 and 😀 Łódź"
    ids = adapter().encode(text)
    assert any("\ufffd" in adapter().decode([i]) for i in ids)
    _, deltas = stream(ids)
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == text


@pytest.mark.parametrize(
    ("stops", "fired", "shown"),
    [
        (["jumps", "fox", "brown"], "brown", "the quick "),
        (["rown", "own", "brown"], "brown", "the quick "),
        (["fox", "quick brown fox"], "quick brown fox", "the "),
        (["k brown", "quick brown"], "quick brown", "the "),
    ],
)
def test_earliest_of_several_stop_strings_wins(stops: list[str], fired: str, shown: str) -> None:
    detok, deltas = stream(adapter().encode("the quick brown fox jumps"), stops)
    assert detok.stop_string == fired
    assert "".join(deltas) == shown


def test_special_tokens_follow_skip_special_tokens() -> None:
    eos = adapter().tokenizer.token_to_id(EOS)
    assert eos is not None
    ids = [*adapter().encode("hello"), eos]
    assert "".join(stream(ids)[1]) == "hello"
    assert "".join(stream(ids, skip=False)[1]) == "hello" + EOS


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 511), max_size=40), st.sampled_from([(), ("ab",), ("\ufffd",)]))
def test_dropping_special_ids_on_arrival_changes_no_delta(
    ids: list[int], stop: tuple[str, ...]
) -> None:
    """The byte-level tokenizer of a random model (ids from 256 up are specials): deltas and the
    stop are the same whether the specials are dropped as they arrive or skipped by decode."""
    tokenizer = ByteTokenizer.byte_level(512)

    def run(special_ids: frozenset[int]) -> tuple[list[str], str | None]:
        detok = IncrementalDetokenizer(tokenizer, [], stop, True, special_ids)
        deltas = []
        for token in ids:
            update = detok.append(token)
            deltas.append(update.text)
            if update.stop is not None:
                return deltas, update.stop
        return [*deltas, detok.flush()], None

    assert run(tokenizer.special_token_ids) == run(frozenset())
