"""The bounds one request is checked against before the engine does any work for it: issue 29's shapes,
each refused naming its bound, and ordinary requests let through."""

from __future__ import annotations

import json

import pytest
from llmserve.engine.v1 import engine_pb2 as pb

from services.engine.errors import InvalidRequestError
from services.engine.request_bounds import RequestBounds, check_chat, check_embed, check_generate

BOUNDS = RequestBounds()


def _request(**sampling: object) -> pb.GenerateRequest:
    request = pb.GenerateRequest(model="m", sampling=pb.SamplingParams(**sampling))
    request.chat.messages.add(role=pb.ROLE_USER, content="hi")
    return request


def _with_schema(schema: dict) -> pb.GenerateRequest:
    request = _request()
    request.sampling.structured_output.json_schema = json.dumps(schema)
    return request


def _with_tool(parameters: dict) -> pb.GenerateRequest:
    request = _request()
    request.chat.tools.add(name="f", parameters_json=json.dumps(parameters))
    return request


def _refused(request: pb.GenerateRequest, *words: str) -> str:
    with pytest.raises(InvalidRequestError) as refused:
        check_generate(request, BOUNDS)
    message = str(refused.value)
    for word in words:
        assert word in message, message
    return message


def _string(**spec: object) -> dict:
    return {"type": "object", "properties": {"a": {"type": "string", **spec}}, "required": ["a"]}


def test_a_long_repetition_in_a_pattern_is_refused_wherever_it_is() -> None:
    _refused(_with_schema(_string(pattern="^.{0,8000}$")), "8000", "max_pattern_repeat")
    _refused(_with_tool(_string(pattern="^[a-z]{300}$")), "tools[0].function.parameters", "max_pattern_repeat")
    _refused(_with_schema({"type": "object", "patternProperties": {"^x{0,999}$": {}}}), "max_pattern_repeat")
    regex = _request()
    regex.sampling.structured_output.regex = "(ab){5000}"
    _refused(regex, "structured_output.regex", "max_pattern_repeat")


def test_nested_repetitions_are_bounded_by_their_product() -> None:
    _refused(_with_schema(_string(pattern="^((a{0,200}b){0,200})$")), "max_pattern_size")


def test_many_properties_in_one_object_or_in_all_schemas_are_refused() -> None:
    many = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}}
    _refused(_with_schema(many), "3000 properties in one object", "max_object_properties")
    request = _request()
    for t in range(9):
        part = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(250)}}
        request.chat.tools.add(name=f"t{t}", parameters_json=json.dumps(part))
    _refused(request, "max_schema_properties")


def test_large_schemas_are_refused_before_they_are_parsed() -> None:
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 40} for i in range(40)}}
    huge["description"] = "x" * 200_000
    _refused(_with_tool(huge), "max_schema_bytes")


def test_stop_lists_and_choices_are_bounded() -> None:
    _refused(_request(stop=[f"s{i}" for i in range(150_000)], n=64), "150000 stop strings", "max_stop_strings")
    _refused(_request(stop=["x" * 5000]), "stop[0]", "max_stop_chars")
    _refused(_request(stop_token_ids=list(range(5000))), "max_stop_token_ids")
    _refused(_request(n=200), "200 choices", "max_choices")


def test_many_messages_or_tools_are_refused() -> None:
    chat = pb.Chat()
    for _ in range(5000):
        chat.messages.add(role=pb.ROLE_USER, content="")
    with pytest.raises(InvalidRequestError, match="max_messages"):
        check_chat(chat, BOUNDS)
    request = _request()
    for i in range(129):
        request.chat.tools.add(name=f"t{i}")
    _refused(request, "max_tools")


def test_embed_inputs_are_bounded() -> None:
    request = pb.EmbedRequest(model="m", inputs=[pb.EmbedInput(text="x")] * 2049)
    with pytest.raises(InvalidRequestError, match="2049 inputs; at most 2048 are accepted .max_embed_inputs."):
        check_embed(request, BOUNDS)
    check_embed(pb.EmbedRequest(model="m", inputs=[pb.EmbedInput(text="x")] * 2048), BOUNDS)


def test_deep_json_and_lone_surrogates_are_refused_not_crashed_on() -> None:
    deep: dict = {"type": "string"}
    for _ in range(200):
        deep = {"type": "object", "properties": {"x": deep}}
    _refused(_with_tool(deep), "levels of nesting", "max_json_depth")
    history = _request()
    call = history.chat.messages.add(role=pb.ROLE_ASSISTANT).tool_calls.add(id="1", name="f")
    call.arguments = json.dumps(deep)
    _refused(history, "messages[1].tool_calls[0].function.arguments", "max_json_depth")
    _refused(_with_tool({"type": "object", "description": "\ud800"}), "lone surrogate")


def test_ordinary_requests_pass() -> None:
    check_generate(_with_schema(_string(pattern=r"^\d{3}-\d{4}$", maxLength=8000)), BOUNDS)
    weather = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    }
    request = _with_tool(weather)
    request.sampling.stop.extend(["\n\n", "END"])
    request.sampling.n = 4
    check_generate(request, BOUNDS)
    # A pattern in JavaScript's dialect that Python cannot read is still bounded.
    check_generate(_with_schema(_string(pattern=r"^\p{L}{1,20}$")), BOUNDS)
    _refused(_with_schema(_string(pattern=r"^\p{L}{1,2000}$")), "max_pattern_repeat")
