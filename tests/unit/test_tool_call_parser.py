"""Tool calling's pieces without a server: the Hermes parser (whole and streamed), tool_choice
plans (constraints, refusals, how output becomes calls) and the prompt (Hermes fallback, a
template that renders `tools`)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import ValidationError

from server.chat_template import ChatTemplate
from server.errors import InvalidInput
from server.openai_schemas import ChatCompletionRequest, ChatMessage
from server.tool_calls import HermesParser, ToolCall, call_id, parse_hermes
from server.tool_choice import ToolPlan, tool_plan
from server.tool_prompt import message_dicts, template_inputs, tool_dicts
from server.tool_schemas import NamedFunction, NamedToolChoice, ToolDefinition

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TOOLS = [
    ToolDefinition.model_validate(
        {"type": "function", "function": {"name": "weather", "parameters": WEATHER}}
    ),
    ToolDefinition.model_validate(
        {"type": "function", "function": {"name": "time", "description": "Now."}}
    ),
]


def block(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def calls_of(pieces: list[Any]) -> list[tuple[str, Any]]:
    return [(p.name, json.loads(p.arguments)) for p in pieces if isinstance(p, ToolCall)]


def streamed(text: str, size: int) -> list[Any]:
    parser = HermesParser()
    pieces: list[Any] = []
    for start in range(0, len(text), size):
        pieces += parser.feed(text[start : start + size])
    return pieces + parser.finish()


# ---- the parser ------------------------------------------------------------------------------
def test_one_call() -> None:
    parsed = parse_hermes(block("weather", {"city": "Paris"}))
    assert parsed.content is None
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("weather", {"city": "Paris"})
    ]
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", parsed.calls[0].id)
    assert parsed.calls[0].to_json() == {
        "id": parsed.calls[0].id,
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
    }


def test_two_calls_with_text_around() -> None:
    text = f"Let me look.\n{block('weather', {'city': 'Oslo'})}\n{block('time', {})}\nDone."
    parsed = parse_hermes(text)
    assert parsed.content == "Let me look.\n\n\nDone."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        ("weather", {"city": "Oslo"}),
        ("time", {}),
    ]
    assert len({c.id for c in parsed.calls}) == 2


def test_no_call_keeps_the_text() -> None:
    parsed = parse_hermes("Just text, with a < sign and <tool")
    assert parsed.content == "Just text, with a < sign and <tool" and parsed.calls == []


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "weather", "arguments": {"city": "Pa',  # cut JSON
        "not json at all",
        '["weather"]',  # JSON, not an object
        '{"arguments": {}}',  # no name
        '{"name": "", "arguments": {}}',
        '{"name": "weather", "arguments": "city=Paris"}',  # arguments not an object
    ],
)
def test_malformed_blocks_stay_content(body: str) -> None:
    text = f"a <tool_call>{body}</tool_call> b {block('time', {})}"
    parsed = parse_hermes(text)
    assert parsed.content == f"a <tool_call>{body}</tool_call> b "
    assert [c.name for c in parsed.calls] == ["time"]


def test_an_unclosed_final_call_counts_when_its_json_is_whole() -> None:
    whole = parse_hermes('ok <tool_call>\n{"name": "time", "arguments": {}}\n')
    assert whole.content == "ok " and [c.name for c in whole.calls] == ["time"]
    cut = parse_hermes('ok <tool_call>{"name": "ti')
    assert cut.content == 'ok <tool_call>{"name": "ti' and cut.calls == []


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 1000])
def test_streamed_chunks_give_what_the_whole_text_gives(size: int) -> None:
    text = f"Hi <b> {block('weather', {'city': 'Rome'})} and <tool_call>x</tool_call>{block('time', {})}!"
    pieces = streamed(text, size)
    whole = parse_hermes(text)
    assert "".join(p for p in pieces if isinstance(p, str)) == whole.content
    assert calls_of(pieces) == [(c.name, json.loads(c.arguments)) for c in whole.calls]


def test_streaming_holds_only_what_may_be_a_tag() -> None:
    parser = HermesParser()
    assert parser.feed("Hello <") == ["Hello "]  # "<" may open a tag
    assert parser.feed("b>") == ["<b>"]
    assert parser.feed(" <tool_") == [" "]
    assert parser.feed('call>{"name": "time", ') == []  # inside a call: nothing yet
    pieces = parser.feed('"arguments": {}}</tool_call> end')
    assert calls_of(pieces) == [("time", {})] and pieces[-1] == " end"
    assert parser.finish() == []


def test_call_ids_differ() -> None:
    ids = {call_id() for _ in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)


# ---- tool_choice plans -------------------------------------------------------------------------
def named(name: str) -> NamedToolChoice:
    return NamedToolChoice(type="function", function=NamedFunction(name=name))


def test_plans_and_their_constraints() -> None:
    assert tool_plan(None, None, True, None).mode == "off"
    assert tool_plan(TOOLS, "none", True, None).mode == "off"
    auto = tool_plan(TOOLS, None, True, "hermes")  # tools given: auto by default
    assert auto.mode == "auto" and auto.constraint is None
    one = tool_plan(TOOLS, named("weather"), True, None)
    assert one.mode == "named" and one.constraint is not None and one.constraint.json == WEATHER
    no_args = tool_plan(TOOLS, named("time"), True, None)
    assert no_args.constraint is not None and no_args.constraint.json == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }
    required = tool_plan(TOOLS, "required", True, None)
    assert required.constraint is not None and isinstance(required.constraint.json, dict)
    schema = required.constraint.json
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    variants = schema["items"]["anyOf"]
    assert [v["properties"]["name"] for v in variants] == [
        {"type": "string", "enum": ["weather"]},
        {"type": "string", "enum": ["time"]},
    ]
    assert variants[0]["properties"]["parameters"] == WEATHER
    single = tool_plan(TOOLS, "required", False, None).constraint
    assert single is not None and isinstance(single.json, dict) and single.json["maxItems"] == 1


@pytest.mark.parametrize(
    ("tools", "choice", "parser", "param", "words"),
    [
        (TOOLS, None, None, "tool_choice", "--tool-call-parser"),
        (TOOLS, "auto", None, "tool_choice", "--tool-call-parser"),
        (TOOLS, named("nope"), "hermes", "tool_choice", "nope"),
        (None, "required", "hermes", "tool_choice", "needs `tools`"),
        ([], named("weather"), "hermes", "tool_choice", "needs `tools`"),
        ([TOOLS[0], TOOLS[0]], "required", "hermes", "tools", "unique"),
    ],
)
def test_refusals_name_the_field(
    tools: Any, choice: Any, parser: str | None, param: str, words: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(words)) as info:
        tool_plan(tools, choice, True, parser)
    assert info.value.param == param


def test_named_and_required_outputs_become_calls() -> None:
    one = tool_plan(TOOLS, named("weather"), True, None).parse('{"city": "Lima"}')
    assert one.content is None and [(c.name, c.arguments) for c in one.calls] == [
        ("weather", '{"city": "Lima"}')
    ]
    text = (
        '[{"name": "weather", "parameters": {"city": "Oslo"}}, {"name": "time", "parameters": {}}]'
    )
    many = tool_plan(TOOLS, "required", True, None).parse(text)
    assert many.content is None
    assert [(c.name, json.loads(c.arguments)) for c in many.calls] == [
        ("weather", {"city": "Oslo"}),
        ("time", {}),
    ]
    cut = tool_plan(TOOLS, "required", True, None).parse('[{"name": "wea')
    assert cut.content == '[{"name": "wea' and cut.calls == []


def test_finish_reasons() -> None:
    auto, req, one = ToolPlan("auto"), ToolPlan("required"), ToolPlan("named", "weather")
    assert auto.finish_reason("stop", True) == "tool_calls"
    assert auto.finish_reason("length", True) == "tool_calls"
    assert auto.finish_reason("stop", False) == "stop"
    assert req.finish_reason("stop", True) == "tool_calls"
    assert req.finish_reason("length", False) == "length"
    assert one.finish_reason("stop", True) == "stop"  # as OpenAI and vLLM
    assert ToolPlan().finish_reason("stop", False) == "stop"
    assert auto.finish_reason(None, True) is None


def test_streams_number_the_calls_and_drop_extra_ones_without_parallel() -> None:
    text = f"x{block('weather', {'city': 'A'})}{block('time', {})}y"
    for parallel, names in ((True, ["weather", "time"]), (False, ["weather"])):
        reader = ToolPlan("auto", parallel=parallel).stream()
        content, calls = "", []
        for ch in text:
            got, more = reader.feed(ch)
            content, calls = content + got, calls + more
        got, more = reader.finish()
        content, calls = content + got, calls + more
        assert content == "xy"
        assert [(k, c.name) for k, c in calls] == list(enumerate(names))
        assert reader.called == len(names)


def test_required_streams_its_calls_at_the_end() -> None:
    reader = tool_plan(TOOLS, "required", True, None).stream()
    assert reader.feed('[{"name": "time", ') == ("", [])
    assert reader.feed('"parameters": {}}]') == ("", [])
    content, calls = reader.finish()
    assert content == "" and [(k, c.name, c.arguments) for k, c in calls] == [(0, "time", "{}")]
    off = ToolPlan().stream()
    assert off.feed("<tool_call>") == ("<tool_call>", []) and off.finish() == ("", [])


# ---- schemas and the prompt --------------------------------------------------------------------
def test_request_fields_are_typed_and_strict() -> None:
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [t.model_dump() for t in TOOLS],
    }
    ok = ChatCompletionRequest.model_validate(
        {**body, "tool_choice": {"type": "function", "function": {"name": "time"}}}
    )
    assert isinstance(ok.tool_choice, NamedToolChoice) and ok.parallel_tool_calls is True
    for bad in (
        {"tool_choice": "sometimes"},
        {"tool_choice": {"type": "function", "function": {}}},
        {"tools": [{"type": "retrieval", "function": {"name": "x"}}]},
        {"tools": [{"type": "function", "function": {"name": "x", "extra": 1}}]},
        {"parallel_tool_calls": "yes"},
    ):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({**body, **bad})


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
]


def messages() -> list[dict[str, Any]]:
    return message_dicts([ChatMessage.model_validate(m) for m in CONVERSATION])


def test_hermes_fallback_prompt() -> None:
    chat = ChatTemplate(None)
    assert not chat.has_tools
    msgs, tools = template_inputs(messages(), tool_dicts(TOOLS), chat.has_tools)
    assert tools is None
    text = chat.render(msgs)
    system, rest = text.split("<|user|>\n", 1)
    assert system.startswith("<|system|>\nBe brief.\n\n# Tools")
    listing = system.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0].splitlines()
    assert [json.loads(line) for line in listing] == [
        t.model_dump(exclude_none=True) for t in TOOLS
    ]
    assert "<tool_call>" in system and "</tool_call>" in system
    assert rest == (
        "Weather in Paris?\n"
        '<|assistant|>\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>\n"
        "<|user|>\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n21C\n"
        "</tool_response>\n<|assistant|>\n"
    )
    # no system message: the preamble is one; no tools: no preamble
    alone, _ = template_inputs([{"role": "user", "content": "x"}], tool_dicts(TOOLS), False)
    assert alone[0]["role"] == "system" and alone[0]["content"].startswith("# Tools")
    plain, _ = template_inputs([{"role": "user", "content": "x"}], None, False)
    assert plain == [{"role": "user", "content": "x"}]


def test_a_template_with_tools_gets_them_as_hf_does() -> None:
    template = (
        "{% for t in tools %}[tool {{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
        "{% for c in m.tool_calls or [] %}(call {{ c.function.name }} "
        "{{ c.function.arguments.city }}){% endfor %}"
        "{% if m.tool_call_id %}(for {{ m.tool_call_id }}){% endif %}{% endfor %}"
    )
    chat = ChatTemplate(template)
    assert chat.has_tools
    msgs, tools = template_inputs(messages(), tool_dicts(TOOLS), chat.has_tools)
    assert chat.render(msgs, tools=tools) == (
        "[tool weather][tool time][system]Be brief.[user]Weather in Paris?"
        "[assistant](call weather Paris)[tool]sunny(for call_1)[tool]21C(for call_2)"
    )
    with pytest.raises(InvalidInput, match="tools cannot be overridden"):
        chat.render(msgs, template_kwargs={"tools": []}, tools=tools)


def test_only_assistants_make_calls() -> None:
    bad = ChatMessage.model_validate({**CONVERSATION[2], "role": "user"})
    with pytest.raises(InvalidInput, match=r"messages\[0\].tool_calls") as info:
        message_dicts([bad])
    assert info.value.param == "messages"
