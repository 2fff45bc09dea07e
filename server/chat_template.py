"""Chat prompts: the tokenizer's Jinja chat template, or a documented fallback."""

from __future__ import annotations

from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.errors import InvalidInput
from server.prompt_text import check_encodable
from server.settings import SettingsError

FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _raise(message: str) -> NoReturn:
    raise InvalidInput(f"messages: {message}", "messages")


class ChatTemplate:
    """Renders a list of {role, content} messages to the prompt text."""

    def __init__(self, template: str | None, bos_token: str = "", eos_token: str = "") -> None:
        self.source = template or FALLBACK_TEMPLATE
        self.is_fallback = template is None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise SettingsError(f"the tokenizer's chat template does not compile: {exc}") from exc
        self._specials = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        if not messages:
            raise InvalidInput("messages: must hold at least one message", "messages")
        for i, message in enumerate(messages):
            for key in ("role", "content"):
                if isinstance(message.get(key), str):
                    check_encodable(message[key], f"messages[{i}].{key}")
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self._specials
            )
        except InvalidInput:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidInput(f"messages: the chat template failed: {exc}", "messages") from exc
