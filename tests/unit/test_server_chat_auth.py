"""Chat templates (the tokenizer's or the fallback) and API-key checks."""

from __future__ import annotations

import pytest

from server.auth import KeyRing
from server.chat_template import FALLBACK_TEMPLATE, ChatTemplate
from server.errors import InvalidInput, Unauthorized
from server.settings import SettingsError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_fallback_template() -> None:
    chat = ChatTemplate(None)
    assert chat.is_fallback and chat.source == FALLBACK_TEMPLATE
    assert chat.render(MESSAGES) == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    assert chat.render(MESSAGES, add_generation_prompt=False).endswith("<|user|>\nHi\n")


def test_tokenizer_template_with_specials_and_raise_exception() -> None:
    template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
        "[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    )
    chat = ChatTemplate(template, bos_token="<s>", eos_token="</s>")
    assert chat.render(MESSAGES) == "<s>[system] Be brief.</s>[user] Hi</s>"
    with pytest.raises(InvalidInput, match="no tools"):
        chat.render([{"role": "tool", "content": "x"}])
    with pytest.raises(InvalidInput, match="at least one"):
        chat.render([])


def test_template_errors() -> None:
    with pytest.raises(SettingsError, match="does not compile"):
        ChatTemplate("{{ messages[0].content | no_such_filter }}")
    chat = ChatTemplate("{{ messages[5].content.strip() }}")
    with pytest.raises(InvalidInput, match="chat template failed"):
        chat.render(MESSAGES)


def test_sandbox_blocks_attribute_escapes() -> None:
    chat = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidInput):
        chat.render(MESSAGES)


def test_key_ring() -> None:
    KeyRing([]).check(None)
    keys = KeyRing(["alpha", "beta"])
    keys.check("Bearer alpha")
    keys.check("bearer beta")
    for header, message in [
        (None, "missing"),
        ("", "missing"),
        ("Basic alpha", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer alph", "invalid"),
        ("Bearer alpha2", "invalid"),
    ]:
        with pytest.raises(Unauthorized, match=message):
            keys.check(header)
