"""A Responses body as the chat request the engine path serves, and what it refuses."""

from __future__ import annotations

import pytest

from services.gateway.errors import ApiError
from services.gateway.responses_api.protocol import ResponsesRequest
from services.gateway.responses_api.shape import usage
from services.gateway.responses_api.translate import chat_body


def _body(**fields: object) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", **fields})


def test_items_become_chat_messages() -> None:
    body = _body(
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": t} for t in ("Hi ", "there")]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a": 1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
            {"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/i.png"}]},
        ],
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "f"},
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        max_output_tokens=9,
    )
    chat = chat_body(body)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert chat.messages[1].content == "Hi there"
    assert [c.id for c in chat.messages[2].tool_calls] == ["c1", "c2"]
    assert chat.messages[5].content[0].image_url.url == "https://example.com/i.png"
    assert chat.tool_choice.function.name == "f" and chat.max_tokens == 9
    assert chat.response_format.type == "json_schema" and chat.response_format.json_schema.name == "x"
    assert chat_body(_body(input="Hello")).messages[0].content == "Hello"


def test_state_and_orphans_are_refused() -> None:
    for fields in ({"store": True}, {"previous_response_id": "resp_1"}, {"background": True}):
        with pytest.raises(ApiError):
            chat_body(_body(input="x", **fields))
    assert chat_body(_body(input="x", store=False)).messages
    with pytest.raises(ApiError, match="call_id 'c9'"):
        chat_body(_body(input=[{"type": "function_call_output", "call_id": "c9", "output": "x"}]))
    with pytest.raises(ValueError, match="reasoning"):
        _body(input="x", reasoning={"effort": "low"})
    assert usage(10, 3, 4) == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 13,
    }
