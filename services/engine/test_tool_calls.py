"""ToolCallReader on vLLM's real parsers and the embedded model's tokenizer: outputs fed token by token
as the engine streams them come out as content and OpenAI-shaped tool-call fragments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.engine.errors import InvalidRequestError
from services.engine.generation import ChoiceDelta, FinishReason, Tool, ToolChoice, Tools
from services.engine.prepare_model import ensure_embedded_model
from services.engine.vllm_adapter.tool_calls import ToolCallReader, parser_classes

WEATHER = Tool(
    name="get_weather",
    description="Current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Tool(name="get_time", parameters={"type": "object", "properties": {"zone": {"type": "string"}}})


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_embedded_model(Path("var/models")))


def reader(tokenizer: Any, tools: Tools, parser: str | None = None) -> ToolCallReader:
    return ToolCallReader(tools, parser_classes(parser, tokenizer), parser is not None, tokenizer, [1, 2, 3])


def stream(
    reader: ToolCallReader, tokenizer: Any, text: str, finish: FinishReason = FinishReason.STOP
) -> list[ChoiceDelta]:
    """The text as the engine streams it (a token per delta), read by `reader`."""
    ids = tokenizer.encode(text)
    out, previous = [], ""
    for i, token in enumerate(ids):
        current = tokenizer.decode(ids[: i + 1])
        delta = ChoiceDelta(index=0, text=current[len(previous) :], token_ids=[token])
        previous = current
        if i == len(ids) - 1:
            delta.finish_reason = finish
        reader.read([delta])
        out.append(delta)
    return out


def calls(deltas: list[ChoiceDelta]) -> list[dict[str, str]]:
    """The fragments put together as an OpenAI client does: by index, id and name once, arguments appended."""
    found: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for part in delta.tool_calls:
            call = found.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            if part.id:
                assert not call["id"], "a call's id comes once"
                call["id"] = part.id
            call["name"] += part.name
            call["arguments"] += part.arguments
    return [found[i] for i in sorted(found)]


def test_a_named_function_streams_its_arguments_and_ends_with_stop(tokenizer: Any) -> None:
    tools = Tools((WEATHER, TIME), ToolChoice.FUNCTION, function="get_weather")
    r = reader(tokenizer, tools)
    assert r.structured_outputs.json == WEATHER.parameters
    deltas = stream(r, tokenizer, '{"city": "Paris"}')
    (call,) = calls(deltas)
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert call["id"] and "".join(d.text for d in deltas) == ""
    assert deltas[-1].finish_reason is FinishReason.STOP


def test_required_reads_every_call_and_ends_with_tool_calls(tokenizer: Any) -> None:
    r = reader(tokenizer, Tools((WEATHER, TIME), ToolChoice.REQUIRED))
    schema = r.structured_outputs.json
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    output = json.dumps(
        [{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "get_time", "parameters": {"zone": "CET"}}]
    )
    deltas = stream(r, tokenizer, output)
    got = calls(deltas)
    assert [(c["name"], json.loads(c["arguments"])) for c in got] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {"zone": "CET"}),
    ]
    assert len({c["id"] for c in got}) == 2
    assert deltas[-1].finish_reason is FinishReason.TOOL_CALLS


def test_parallel_tool_calls_false_allows_one_call(tokenizer: Any) -> None:
    r = reader(tokenizer, Tools((WEATHER, TIME), ToolChoice.REQUIRED, parallel=False))
    assert r.structured_outputs.json["maxItems"] == 1
    r = reader(tokenizer, Tools((WEATHER, TIME), ToolChoice.AUTO, parallel=False), parser="pythonic")
    deltas = stream(r, tokenizer, '[get_weather(city="Paris"), get_time(city="Rome")]')
    assert [c["name"] for c in calls(deltas)] == ["get_weather"]


def test_auto_with_the_hermes_parser_splits_content_from_calls(tokenizer: Any) -> None:
    r = reader(tokenizer, Tools((WEATHER,), ToolChoice.AUTO), parser="hermes")
    deltas = stream(
        r, tokenizer, 'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    assert "".join(d.text for d in deltas) == "Let me look."
    (call,) = calls(deltas)
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Rome"}
    assert deltas[-1].finish_reason is FinishReason.TOOL_CALLS


def test_auto_without_a_call_is_plain_content_ending_with_stop(tokenizer: Any) -> None:
    r = reader(tokenizer, Tools((WEATHER,), ToolChoice.AUTO), parser="hermes")
    deltas = stream(r, tokenizer, "It is sunny in Rome today.")
    assert "".join(d.text for d in deltas) == "It is sunny in Rome today."
    assert calls(deltas) == [] and deltas[-1].finish_reason is FinishReason.STOP


def test_none_leaves_the_output_alone(tokenizer: Any) -> None:
    r = reader(tokenizer, Tools((WEATHER,), ToolChoice.NONE), parser="hermes")
    assert r.structured_outputs is None
    deltas = stream(r, tokenizer, '<tool_call>{"name": "get_weather"}</tool_call>')
    assert "".join(d.text for d in deltas) == '<tool_call>{"name": "get_weather"}</tool_call>' and calls(deltas) == []


@pytest.mark.parametrize(
    "tools, parser, words",
    [
        (Tools((WEATHER,), ToolChoice.FUNCTION, function="nope"), None, "does not match any"),
        (Tools((Tool("f", parameters={"type": "objectx"}),), ToolChoice.REQUIRED), None, "not a valid JSON Schema"),
        (
            Tools(
                (Tool("f", parameters={"type": "object", "properties": {"a": {"minLength": -1}}}),), ToolChoice.REQUIRED
            ),
            None,
            "not a valid JSON Schema",
        ),
        (Tools((WEATHER,), ToolChoice.AUTO), None, "needs a tool-call parser"),
    ],
)
def test_bad_tool_requests_are_refused(tokenizer: Any, tools: Tools, parser: str | None, words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words):
        reader(tokenizer, tools, parser)


def test_a_parser_that_does_not_fit_the_tokenizer_is_refused(tokenizer: Any) -> None:
    with pytest.raises(InvalidRequestError, match="does not fit this model"):
        parser_classes("llama3_json", tokenizer)
