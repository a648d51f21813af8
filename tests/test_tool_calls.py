"""Tool calling end to end with the openai SDK on the session's engine (the embedded SmolLM2 with its
Hermes-format tools template and vLLM's hermes parser): named and required calls constrained by
structured output, auto calls read by the parser, history with calls and results, OpenAI's 400s; the
tool definitions counted as prompt tokens, exactly."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.calls import assert_error, post
from tests.stack import API_KEY, MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def client(gateway_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


async def count(gateway_url: str, messages: list[dict], tools: list[dict] | None = None) -> int:
    body: dict[str, Any] = {"model": MODEL, "messages": messages}
    if tools is not None:
        body["tools"] = tools
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        reply = await http.post(f"{gateway_url}/tokenize", json=body)
    reply.raise_for_status()
    return reply.json()["count"]


def assembled(chunks: list[Any]) -> tuple[str, list[dict[str, str]], str | None]:
    """(content, tool calls, finish reason) from a stream, put together as an OpenAI client does."""
    content, calls, reason = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for part in choice.delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                if part.id:
                    assert not call["id"] and part.type == "function", "id and type come with a call's first fragment"
                    call["id"] = part.id
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
            reason = choice.finish_reason or reason
    return content, [calls[i] for i in sorted(calls)], reason


async def test_a_named_function_is_called_with_arguments_that_fit_its_schema(
    client: openai.AsyncOpenAI, gateway_url: str
) -> None:
    args = dict(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        max_tokens=40,
        temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    reply = await client.chat.completions.create(**args)
    choice = reply.choices[0]
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_time"
    assert set(json.loads(call.function.arguments)) == {"city"}
    # OpenAI's: a named function ends with "stop"; the message holds no text.
    assert choice.finish_reason == "stop" and not choice.message.content
    # The tools are rendered by the chat template: they are prompt tokens, counted exactly.
    with_tools = await count(gateway_url, ASK, [WEATHER, TIME])
    assert reply.usage.prompt_tokens == with_tools > await count(gateway_url, ASK) + 50

    chunks = [
        c
        async for c in await client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    ]
    content, calls, reason = assembled(chunks)
    assert content == "" and reason == "stop"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_time", json.loads(call.function.arguments))
    ]
    assert chunks[-1].usage.prompt_tokens == with_tools and chunks[-1].choices == []


async def test_required_gives_parseable_calls_ending_with_tool_calls(client: openai.AsyncOpenAI) -> None:
    args = dict(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        max_tokens=60,
        temperature=0,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    reply = await client.chat.completions.create(**args)
    choice = reply.choices[0]
    (call,) = choice.message.tool_calls
    assert call.function.name in ("get_weather", "get_time") and "city" in json.loads(call.function.arguments)
    assert choice.finish_reason == "tool_calls"
    content, calls, reason = assembled([c async for c in await client.chat.completions.create(**args, stream=True)])
    assert reason == "tool_calls" and len(calls) == 1 and calls[0]["id"]
    assert calls[0]["name"] == call.function.name and json.loads(calls[0]["arguments"]) == json.loads(
        call.function.arguments
    )


def called(city: str, call_id: str) -> dict:
    function = {"name": "get_weather", "arguments": json.dumps({"city": city})}
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }


# The model is shown, in its history, how it called a tool twice; it does the same for the next question,
# and vLLM's hermes parser reads the call out of its free output (a 135M model needs the examples).
FEW_SHOT = [
    {"role": "system", "content": "You answer every weather question by calling get_weather."},
    {"role": "user", "content": "What is the weather in Rome?"},
    called("Rome", "call_1"),
    {"role": "user", "content": "What is the weather in Oslo?"},
    called("Oslo", "call_2"),
    {"role": "user", "content": "What is the weather in Paris?"},
]
# A history with a call's result, answered in text.
WITH_RESULT = [
    {"role": "user", "content": "What is the weather in Rome?"},
    called("Rome", "call_1"),
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"},
]


async def test_auto_reads_the_call_the_model_makes_and_history_renders(
    client: openai.AsyncOpenAI, gateway_url: str
) -> None:
    args = dict(model=MODEL, messages=FEW_SHOT, tools=[WEATHER], max_tokens=40, temperature=0)
    reply = await client.chat.completions.create(**args)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # The calls and results of the history are prompt tokens too.
    assert reply.usage.prompt_tokens == await count(gateway_url, FEW_SHOT, [WEATHER])
    content, calls, reason = assembled([c async for c in await client.chat.completions.create(**args, stream=True)])
    assert reason == "tool_calls" and [c["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


async def test_tool_choice_none_answers_a_result_in_text(client: openai.AsyncOpenAI, gateway_url: str) -> None:
    reply = await client.chat.completions.create(
        model=MODEL, messages=WITH_RESULT, tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    # The call and its result are rendered (and counted) as the template writes them.
    assert reply.usage.prompt_tokens == await count(gateway_url, WITH_RESULT, [WEATHER])
    assert reply.usage.prompt_tokens > await count(gateway_url, WITH_RESULT[:1], [WEATHER]) + 20


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "does not match any"),
        ({"tool_choice": "required"}, "only allowed when tools"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objectx"}}}],
                "tool_choice": "required",
            },
            "not a valid JSON Schema",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        (
            {
                "tools": [WEATHER],
                "messages": [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": "{not json"},
                            }
                        ],
                    }
                ],
            },
            "arguments is not valid JSON",
        ),
    ],
    ids=["named-not-in-tools", "choice-without-tools", "invalid-schema", "invalid-name", "history-arguments-not-json"],
)
async def test_bad_tool_requests_get_openai_400s(gateway_url: str, extra: dict, words: str) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **extra}
    assert_error(await post(f"{gateway_url}/v1/chat/completions", body), 400, words)
