"""What one request may ask of the engine, checked before any work is done for it.

Each bound stops a request that costs the engine (and so every tenant on it) far more than its tokens:
vLLM converts a schema's regular expressions on a one-worker pool and compiles grammars on one thread
with no timeout, checks every stop string per token per choice, and renders a chat's messages and
validates tool schemas on its event loop. A request over a bound is refused with INVALID_ARGUMENT
naming the bound (the gateway's 400). The defaults are in the README's limits table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llmserve.engine.v1 import engine_pb2 as pb

from services.engine.errors import InvalidRequestError

# A bounded quantifier written out: `{3}`, `{2,5}`, `{0,}`.
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


@dataclass(frozen=True)
class RequestBounds:
    max_messages: int = 4096
    max_choices: int = 128
    max_stop_strings: int = 64
    max_stop_chars: int = 1024
    max_stop_token_ids: int = 1024
    max_tools: int = 128
    # Every JSON schema of a request together (tools' parameters, the response format), as sent.
    max_schema_bytes: int = 128 * 1024
    # Properties over all of a request's schemas, and in one object (optional properties make grammar
    # compilation grow with their square).
    max_schema_properties: int = 2048
    max_object_properties: int = 256
    # Nesting of a schema or of a tool call's arguments.
    max_json_depth: int = 32
    # A regular expression (a schema's `pattern`, a regex constraint): its length, any one quantifier's
    # count, and the size of all of them written out (`.{0,8000}` is 8,000 states to the grammar).
    max_pattern_chars: int = 1024
    max_pattern_repeat: int = 256
    max_pattern_size: int = 8192
    max_choice_options: int = 1024
    # Inputs of one Embed request (OpenAI's limit).
    max_embed_inputs: int = 2048
    # Documents of one Score request (pairs a cross-encoder runs, texts an embedding model embeds).
    max_score_documents: int = 1024
    # Requests open at once on one GenerateMany stream (a gateway worker carries its streams on one).
    max_stream_requests: int = 1024


def check_generate(request: pb.GenerateRequest, bounds: RequestBounds) -> None:
    """A Generate request's bounds, on the wire message (before its JSON is parsed)."""
    params = request.sampling
    _at_most(bounds, "max_choices", "n", params.n, "choices")
    _at_most(bounds, "max_stop_strings", "stop", len(params.stop), "stop strings")
    for i, stop in enumerate(params.stop):
        _at_most(bounds, "max_stop_chars", f"stop[{i}]", len(stop), "characters")
    _at_most(bounds, "max_stop_token_ids", "stop_token_ids", len(params.stop_token_ids), "token ids")
    budget = _Budget(bounds)
    if request.WhichOneof("prompt") == "chat":
        check_chat(request.chat, bounds, budget)
    structured = params.structured_output
    which = structured.WhichOneof("kind")
    if which == "json_schema":
        budget.schema("response_format.json_schema.schema", structured.json_schema)
    elif which == "regex":
        budget.pattern("structured_output.regex", structured.regex)
    elif which == "choice":
        options = structured.choice.values
        _at_most(bounds, "max_choice_options", "structured_output.choice", len(options), "options")
        budget.spend_bytes("structured_output.choice", sum(len(o) for o in options))


def check_embed(request: pb.EmbedRequest, bounds: RequestBounds) -> None:
    _at_most(bounds, "max_embed_inputs", "inputs", len(request.inputs), "inputs")


def check_score(request: pb.ScoreRequest, bounds: RequestBounds) -> None:
    _at_most(bounds, "max_score_documents", "documents", len(request.documents), "documents")
    _at_most(bounds, "max_score_documents", "queries", len(request.queries), "queries")


def check_chat(chat: pb.Chat, bounds: RequestBounds, budget: _Budget | None = None) -> None:
    """A chat's messages, tools and the tool calls in its history (Generate and Tokenize)."""
    budget = budget or _Budget(bounds)
    _at_most(bounds, "max_messages", "messages", len(chat.messages), "messages")
    _at_most(bounds, "max_tools", "tools", len(chat.tools), "tools")
    for i, tool in enumerate(chat.tools):
        if tool.parameters_json:
            budget.schema(f"tools[{i}].function.parameters", tool.parameters_json)
    for i, message in enumerate(chat.messages):
        for j, call in enumerate(message.tool_calls):
            if call.arguments:
                where = f"messages[{i}].tool_calls[{j}].function.arguments"
                try:
                    arguments = json.loads(call.arguments)
                except (json.JSONDecodeError, RecursionError):
                    continue  # the chat renderer names invalid JSON
                _walk(where, arguments, bounds, None)


@dataclass
class _Budget:
    """What a request's schemas and patterns have used of their bounds so far."""

    bounds: RequestBounds
    schema_bytes: int = 0
    properties: int = 0
    pattern_size: int = 0

    def spend_bytes(self, where: str, size: int) -> None:
        self.schema_bytes += size
        if self.schema_bytes > self.bounds.max_schema_bytes:
            raise InvalidRequestError(
                f"{where}: the request's JSON schemas hold {self.schema_bytes} bytes or more;"
                f" at most {self.bounds.max_schema_bytes} are accepted (max_schema_bytes)"
            )

    def schema(self, where: str, text: str) -> None:
        self.spend_bytes(where, len(text.encode()))
        try:
            schema = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return  # refused as invalid JSON where it is read
        _walk(where, schema, self.bounds, self)

    def pattern(self, where: str, pattern: str) -> None:
        bounds = self.bounds
        _at_most(bounds, "max_pattern_chars", where, len(pattern), "characters in a pattern")
        self.pattern_size += _pattern_size(where, pattern, bounds)
        if self.pattern_size > bounds.max_pattern_size:
            raise InvalidRequestError(
                f"{where}: the request's patterns written out come to {self.pattern_size} states;"
                f" at most {bounds.max_pattern_size} are accepted (max_pattern_size: each quantifier"
                " {m,n} repeats what it follows n times)"
            )


def _walk(where: str, value: Any, bounds: RequestBounds, budget: _Budget | None) -> None:
    """Depth and text of any JSON value; for a schema (`budget` given) its properties and patterns too."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        _at_most(bounds, "max_json_depth", where, depth, "levels of nesting")
        if isinstance(node, dict):
            for key, item in node.items():
                _text(where, key)
                if budget is not None and key == "pattern" and isinstance(item, str):
                    budget.pattern(f"{where} (pattern)", item)
                if budget is not None and key == "patternProperties" and isinstance(item, dict):
                    for name in item:
                        budget.pattern(f"{where} (patternProperties)", name)
                if budget is not None and key == "properties" and isinstance(item, dict):
                    _at_most(bounds, "max_object_properties", where, len(item), "properties in one object")
                    budget.properties += len(item)
                    _at_most(bounds, "max_schema_properties", where, budget.properties, "schema properties")
                if isinstance(item, (dict, list)):
                    stack.append((item, depth + 1))
                elif isinstance(item, str):
                    _text(where, item)
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, (dict, list)):
                    stack.append((item, depth + 1))
                elif isinstance(item, str):
                    _text(where, item)
        elif isinstance(node, str):
            _text(where, node)


def _text(where: str, text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{where}: not valid Unicode text (it holds a lone surrogate)") from None


def _pattern_size(where: str, pattern: str, bounds: RequestBounds) -> int:
    """The pattern's states with every bounded quantifier written out, as a grammar expands it."""
    import re._constants as sre
    import re._parser as sre_parse

    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        parsed = None
    if parsed is None:
        # Not Python's dialect (JSON Schema's is ECMA 262): bound what can be read of it.
        size = len(pattern)
        for quantifier in _QUANTIFIER.finditer(pattern):
            low, high = quantifier.group(1), quantifier.group(2)
            count = int(high) if high else int(low)
            _at_most(bounds, "max_pattern_repeat", where, count, "repetitions in one quantifier")
            size += count
        return size

    repeats = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)

    def size_of(items: Any) -> int:
        total = 0
        for op, av in items:
            if op in repeats:
                low, high, sub = av
                count = low if high == sre.MAXREPEAT else high
                _at_most(bounds, "max_pattern_repeat", where, count, "repetitions in one quantifier")
                total += max(count, 1) * size_of(sub)
            elif op is sre.SUBPATTERN:
                total += size_of(av[-1])
            elif op is sre.BRANCH:
                total += sum(size_of(branch) for branch in av[1])
            elif op in (sre.ASSERT, sre.ASSERT_NOT):
                total += size_of(av[1])
            elif op is sre.ATOMIC_GROUP:
                total += size_of(av)
            else:
                total += 1
        return total

    return size_of(parsed)


def _at_most(bounds: RequestBounds, name: str, where: str, got: int, what: str) -> None:
    """Refuses `got` over the bound `name`, naming it (the setting an operator changes)."""
    limit = getattr(bounds, name)
    if got > limit:
        raise InvalidRequestError(f"{where}: {got} {what}; at most {limit} are accepted ({name})")
