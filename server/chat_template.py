"""Chat prompts: the tokenizer's Jinja chat template, or a documented fallback."""

from __future__ import annotations

from typing import Any, NoReturn

import jinja2
from jinja2 import meta
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
        """`template`: Jinja source (the tokenizer's, or --chat-template's); None: FALLBACK."""
        self.source = template or FALLBACK_TEMPLATE
        self.is_fallback = template is None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(self.source)
            variables = meta.find_undeclared_variables(env.parse(self.source))
        except jinja2.TemplateError as exc:
            raise SettingsError(f"the tokenizer's chat template does not compile: {exc}") from exc
        self.has_tools = "tools" in variables  # it renders `tools` (else: tool_prompt's Hermes)
        self._specials = {"bos_token": bos_token, "eos_token": eos_token}

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text of a conversation. `continue_final_message`: the text ends inside
        the last (assistant) message, for the model to go on with it; `template_kwargs`: more
        variables for the template (not the reserved ones); `tools`: the template's `tools`
        (HF's format; unset when None)."""
        if not messages:
            raise InvalidInput("messages: must hold at least one message", "messages")
        for i, message in enumerate(messages):
            for key in ("role", "content"):
                if isinstance(message.get(key), str):
                    check_encodable(message[key], f"messages[{i}].{key}")
        if continue_final_message and add_generation_prompt:
            raise InvalidInput(
                "continue_final_message: cannot be set with add_generation_prompt",
                "continue_final_message",
            )
        extra = template_kwargs or {}
        fixed = {"messages", "add_generation_prompt", *self._specials}
        fixed |= {"tools"} if tools is not None else set()
        reserved = sorted(set(extra) & fixed)
        if reserved:
            raise InvalidInput(
                f"chat_template_kwargs: {', '.join(reserved)} cannot be overridden",
                "chat_template_kwargs",
            )
        try:
            text = self._template.render(
                **extra,
                **({"tools": tools} if tools is not None else {}),
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self._specials,
            )
        except InvalidInput:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidInput(f"messages: the chat template failed: {exc}", "messages") from exc
        return _cut_after_final(text, messages[-1]) if continue_final_message else text


def _cut_after_final(text: str, final: dict[str, Any]) -> str:
    """The rendered text up to the end of the final message's content (its end-of-turn and
    whatever the template adds after it dropped)."""
    content = final.get("content") or ""
    end = text.rfind(content) if content else -1
    if final.get("role") != "assistant" or end < 0:
        raise InvalidInput(
            "continue_final_message: the last message must be an assistant message with content",
            "continue_final_message",
        )
    return text[: end + len(content)]
