"""What OpenAI's (and vLLM's extension) request bodies share: strict models that refuse the fields we do not
support by name (unless null), messages, tools, sampling. Each endpoint's own body is in its folder."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, model_validator


class UnsupportedFields(ValueError):
    def __init__(self, names: list[str]) -> None:
        super().__init__(f"Unsupported parameter(s): {', '.join(names)}")
        self.names = names


class InvalidText(ValueError):
    """A string JSON can carry but UTF-8 (and so protobuf) cannot: a lone surrogate such as "\\ud800"."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: not valid Unicode text (it holds a lone surrogate)")
        self.path = path


def _bad_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _lone_surrogate(value: object, path: str) -> str | None:
    """The path of a string (or key) in `value` that UTF-8 cannot encode; iterative, so a deeply nested
    value cannot exhaust the stack, and a path is only built for a nested container (a list of 700,000
    token ids costs no allocation per item)."""
    if isinstance(value, str):
        return path if _bad_text(value) else None
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for name, child in children:
            if isinstance(name, str) and _bad_text(name):
                return where
            if isinstance(child, str):
                if _bad_text(child):
                    return f"{where}.{name}"
            elif isinstance(child, (list, dict)):
                stack.append((child, f"{where}.{name}"))
    return None


# The engine contract's integer ranges (uint32 token ids and counts, int64 seeds, int32 top_k).
TokenId = Annotated[int, Field(ge=0, lt=2**32)]
UINT32_MAX = 2**32 - 1
# Messages in one chat: the engine's default bound (ENGINE_REQUEST_BOUNDS), checked here before a huge
# list is turned into models and a protobuf message.
MAX_MESSAGES = 4096

_PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of token-id lists"


def _is_token_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= UINT32_MAX


def _prompt_shape(value: Any) -> Any:
    """OpenAI's prompt (or input) field, read in one pass that stops at the first bad item. (As a plain
    union, pydantic tries every shape on every item: a list of 150,000 invalid items made 600,000 errors
    and a gigabyte of memory before the 400.)"""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(f"must be {_PROMPT_SHAPES}")
    if not value:
        return value
    first = value[0]
    if isinstance(first, str):
        bad = next((i for i, x in enumerate(value) if not isinstance(x, str)), None)
        if bad is not None:
            raise ValueError(f"item {bad} is not a string (a list of prompts holds strings only)")
    elif type(first) is int:
        bad = next((i for i, x in enumerate(value) if not _is_token_id(x)), None)
        if bad is not None:
            raise ValueError(f"item {bad} is not a token id (an integer from 0 to {UINT32_MAX})")
    elif isinstance(first, list):
        for i, ids in enumerate(value):
            if not isinstance(ids, list):
                raise ValueError(f"item {i} is not a list of token ids")
            bad = next((j for j, x in enumerate(ids) if not _is_token_id(x)), None)
            if bad is not None:
                raise ValueError(f"item {i}.{bad} is not a token id (an integer from 0 to {UINT32_MAX})")
    else:
        raise ValueError(f"must be {_PROMPT_SHAPES}; item 0 is none of them")
    return value


PromptShapes = str | list[str] | list[TokenId] | list[list[TokenId]]
PromptInput = Annotated[PromptShapes, PlainValidator(_prompt_shape, json_schema_input_type=PromptShapes)]


class ValidText(BaseModel):
    """Unknown fields are an error; text must be valid Unicode (each nested model checks its own fields):
    a lone surrogate would fail later, where a protobuf message or a database encodes it."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self) -> ValidText:
        for name in type(self).model_fields:
            if (path := _lone_surrogate(getattr(self, name), name)) is not None:
                raise InvalidText(path)
        return self


class Strict(ValidText):
    """Besides: unknown fields are named in the error, and a field sent as null is as good as absent."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        unknown = [k for k, v in data.items() if k not in known and v is not None]
        if unknown:
            raise UnsupportedFields(sorted(unknown))
        return {k: v for k, v in data.items() if k in known}


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImageUrl(Strict):
    # A data: URI (base64), or an http(s) URL when the gateway is configured to fetch them.
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class CalledFunction(Strict):
    name: str
    # JSON text, as the model produced it.
    arguments: str


class AssistantToolCall(Strict):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[AssistantToolCall] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, ImagePart) for p in self.content)


class StreamOptions(Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class UsageOptions(Strict):
    """OpenRouter's usage accounting: `include` adds the request's `cost` to its usage."""

    include: bool | None = None


class JsonSchemaFormat(Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(Strict):
    # OpenAI's rule for function names.
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


StopField = str | list[str] | None
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(Strict):
    """What chat and completions share, including vLLM's extensions."""

    model: str
    n: int = Field(1, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1, le=UINT32_MAX)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: StopField = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: int | None = Field(None, ge=-1, lt=2**31)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    min_tokens: int = Field(0, ge=0, le=UINT32_MAX)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    usage: UsageOptions | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def one_or_many(given: str | list[str] | list[int] | list[list[int]], name: str) -> list[str | list[int]]:
    """OpenAI's reading of a prompt or input field: a string, a list of strings, one token-id list (a flat
    list of ids), or a list of token-id lists."""
    if isinstance(given, str):
        return [given]
    if not given:
        raise ValueError(f"{name} must not be empty")
    if all(isinstance(x, int) for x in given):
        return [given]  # type: ignore[list-item]
    return list(given)  # type: ignore[arg-type]
