"""A Messages body as the chat request the engine path serves, and the answer's pieces in Anthropic's terms."""

from __future__ import annotations

import json

import pytest

from services.gateway.anthropic_api.protocol import MessagesRequest
from services.gateway.anthropic_api.shape import _stop, usage
from services.gateway.anthropic_api.translate import chat_body
from services.gateway.errors import ApiError


def _body(**fields: object) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 8, **fields})


def test_system_blocks_tools_and_their_results_become_chat_messages() -> None:
    body = _body(
        system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "t1", "name": "get", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "Sunny"}]},
                    {"type": "text", "text": "And?"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                ],
            },
        ],
        tools=[{"name": "get", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["\n\n"],
    )
    chat = chat_body(body)
    roles = [m.role for m in chat.messages]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert chat.messages[0].content == "Be brief."
    call = chat.messages[2].tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("t1", "get", {"city": "Paris"})
    assert chat.messages[3].tool_call_id == "t1" and chat.messages[3].content == "Sunny"
    assert chat.messages[4].content[1].image_url.url == "https://example.com/a.png"
    assert chat.tool_choice == "required" and chat.parallel_tool_calls is False
    assert chat.stop == ["\n\n"] and chat.max_tokens == 8
    named = chat_body(_body(messages=[{"role": "user", "content": "x"}], tool_choice={"type": "tool", "name": "get"}))
    assert named.tool_choice.function.name == "get"


def test_what_anthropic_refuses_is_refused() -> None:
    orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9", "content": "x"}]}]
    with pytest.raises(ApiError, match="matches no tool_use"):
        chat_body(_body(messages=orphan))
    misplaced = [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]
    with pytest.raises(ApiError, match="assistant message"):
        chat_body(_body(messages=misplaced))
    no_data = [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]
    with pytest.raises(ApiError, match="media_type and data"):
        chat_body(_body(messages=no_data))
    with pytest.raises(ValueError, match="max_tokens"):
        MessagesRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(ValueError, match="thinking"):
        _body(messages=[{"role": "user", "content": "x"}], thinking={"type": "enabled", "budget_tokens": 2048})


def test_usage_and_stop_reasons_in_anthropics_terms() -> None:
    # Anthropic's input_tokens leave out what the cache served (cache_read_input_tokens).
    assert usage(100, 7, 64) == {
        "input_tokens": 36,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 64,
        "output_tokens": 7,
    }
    assert _stop("stop", None) == ("end_turn", None) and _stop("stop", "END") == ("stop_sequence", "END")
    assert _stop("length", None) == ("max_tokens", None) and _stop("tool_calls", None) == ("tool_use", None)
    assert _stop("abort", None) == (None, None)
    error = ApiError(429, "slow down")
    anthropic_shape = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    assert error.body_for("/v1/messages") == anthropic_shape
    assert error.body_for("/v1/chat/completions")["error"]["type"] == "rate_limit_error"
    assert "type" not in error.body_for("/v1/messagesx")
