"""Tool calling on vLLM's own parsers, as its OpenAI server does it: the tools go to the chat template;
`required` and a named function are constrained by structured output (vLLM's schema for them), so any
model returns a parseable call; `auto` reads calls out of free output with the model's tool-call
parser (`hermes`, `pythonic`, ...: a per-model setting). Each choice's text is turned into content and
tool-call fragments as it streams."""

from __future__ import annotations

import json
from typing import Any

from services.engine.errors import InvalidRequestError
from services.engine.generation import ChatTurn, ChoiceDelta, FinishReason, ToolCallDelta, ToolChoice, Tools


def known_tool_parsers() -> list[str]:
    from vllm.tool_parsers import ToolParserManager

    return sorted(ToolParserManager.list_registered())


def parser_classes(name: str | None, tokenizer: Any) -> dict[bool, type]:
    """The vLLM Parser classes for a model, for free (False) and forced (True) tool choices: its
    configured tool-call parser, or (none configured) one that handles only `required` and named
    functions (vLLM's JSON path), refusing `auto`. A forced choice pins every tool's argument schema
    (vLLM's `parameter` strict level); `auto` pins those of tools marked `strict`, as OpenAI does."""
    from vllm.parser.abstract_parser import DelegatingParser
    from vllm.parser.parser_manager import ParserManager
    from vllm.tool_parsers.abstract_tool_parser import ToolParser

    if not name:

        class ForcedCallsOnly(DelegatingParser):
            tool_parser_cls = ToolParser

        return {False: ForcedCallsOnly, True: ForcedCallsOnly}
    try:
        return {
            forced: ParserManager.get_parser(
                tool_parser_name=name,
                enable_auto_tools=True,
                tokenizer=tokenizer,
                tool_strict_level="parameter" if forced else "auto",
            )
            for forced in (False, True)
        }
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"tool_call_parser `{name}` does not fit this model: {exc}") from exc


def template_tools(tools: Tools | None) -> list[dict[str, Any]] | None:
    """The tools as chat templates take them (OpenAI's shape)."""
    if tools is None:
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters if t.parameters is not None else {"type": "object", "properties": {}},
            },
        }
        for t in tools.tools
    ]


def template_tool_calls(index: int, turn: ChatTurn) -> list[dict[str, Any]]:
    """An assistant turn's calls as templates expect them: arguments as a dict, as vLLM passes them."""
    calls = []
    for j, call in enumerate(turn.tool_calls):
        try:
            arguments = json.loads(call.arguments) if call.arguments else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"messages[{index}].tool_calls[{j}].function.arguments is not valid JSON: {exc}"
            ) from exc
        calls.append({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}})
    return calls


class ToolCallReader:
    """One request's tool calling: the sampling it needs, and each choice's output read into content
    and tool-call fragments."""

    def __init__(
        self, tools: Tools, parsers: dict[bool, type], has_parser: bool, tokenizer: Any, prompt_ids: list[int]
    ) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.exceptions import VLLMClientError

        _check_schemas(tools)
        if tools.choice is ToolChoice.AUTO and not has_parser:
            raise InvalidRequestError(
                '"auto" tool choice needs a tool-call parser for this model (launch it with engine_args '
                '{"tool_call_parser": ...}); "required" and a named function work on any model'
            )
        choice: Any = tools.choice.value
        if tools.choice is ToolChoice.FUNCTION:
            choice = {"type": "function", "function": {"name": tools.function}}
        try:
            request = ChatCompletionRequest(
                model="",
                messages=[],
                tools=template_tools(tools),
                tool_choice=choice,
                parallel_tool_calls=tools.parallel,
            )
        except (ValueError, VLLMClientError) as exc:
            raise InvalidRequestError(_first_error(exc)) from exc
        self._tools = tools
        parser_cls = parsers[tools.choice in (ToolChoice.REQUIRED, ToolChoice.FUNCTION)]
        self._parser_cls = parser_cls
        self._tokenizer = tokenizer
        self._prompt_ids = prompt_ids
        try:
            self._request = parser_cls(tokenizer, request.tools).adjust_request(request)
        except (ValueError, VLLMClientError) as exc:
            raise InvalidRequestError(str(exc)) from exc
        self._parsers: dict[int, Any] = {}
        self._called: set[int] = set()

    @property
    def structured_outputs(self) -> Any:
        """vLLM's StructuredOutputsParams for the calls (a schema or a structural tag), or None."""
        return self._request.structured_outputs

    @property
    def skip_special_tokens(self) -> bool:
        """False where the parser reads markers that are special tokens (hermes' <tool_call>)."""
        return self._request.skip_special_tokens

    def read(self, choices: list[ChoiceDelta]) -> None:
        """Turns each choice's new text into content and tool-call fragments, in place."""
        if self._tools.choice is ToolChoice.NONE:
            return
        for choice in choices:
            parser = self._parsers.get(choice.index)
            if parser is None:
                parser = self._parsers[choice.index] = self._parser_cls(self._tokenizer, self._request.tools)
            finished = choice.finish_reason is not None
            delta = parser.parse_delta(
                choice.text, list(choice.token_ids), self._request, self._prompt_ids, finished=finished
            )
            choice.text = (delta.content or "") if delta is not None else ""
            if delta is not None and delta.tool_calls:
                self._called.add(choice.index)
                choice.tool_calls = [
                    ToolCallDelta(
                        index=call.index,
                        id=call.id or "",
                        name=(call.function.name or "") if call.function else "",
                        arguments=(call.function.arguments or "") if call.function else "",
                    )
                    for call in delta.tool_calls
                    # Without parallel calls only the first counts, as vLLM's server filters them.
                    if self._tools.parallel or call.index == 0
                ]
            if (
                choice.finish_reason is FinishReason.STOP
                and choice.index in self._called
                and self._tools.choice is not ToolChoice.FUNCTION
            ):
                # OpenAI's: "tool_calls" when auto or required called tools, "stop" for a named function.
                choice.finish_reason = FinishReason.TOOL_CALLS


def _check_schemas(tools: Tools) -> None:
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    for i, tool in enumerate(tools.tools):
        if not tool.name:
            raise InvalidRequestError(f"tools[{i}].function.name is required")
        if tool.parameters is None:
            continue
        if not isinstance(tool.parameters, dict):
            raise InvalidRequestError(f"tools[{i}].function.parameters must be a JSON Schema object")
        try:
            validator_for(tool.parameters).check_schema(tool.parameters)
        except SchemaError as exc:
            raise InvalidRequestError(
                f"tools[{i}].function.parameters is not a valid JSON Schema: {exc.message}"
            ) from exc


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors()
        if found:
            return str(found[0].get("msg", exc)).removeprefix("Value error, ")
    return str(exc)
