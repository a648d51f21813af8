"""What a generation request asks for and what its stream returns, free of gRPC and vLLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Role(str, Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An encoded image, as the client sent it."""

    data: bytes
    media_type: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call an assistant message made; `arguments` is JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    # Text (str) and images in order; None: the message is `content` alone.
    parts: tuple[str | ImageInput, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is a JSON Schema document (None: no parameters)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoice(str, Enum):
    NONE = "none"
    AUTO = "auto"
    REQUIRED = "required"
    FUNCTION = "function"


@dataclass(frozen=True, slots=True)
class Tools:
    """The tools a chat offers and how the model may use them (OpenAI's tools, tool_choice,
    parallel_tool_calls)."""

    tools: tuple[Tool, ...]
    choice: ToolChoice = ToolChoice.AUTO
    # The function a FUNCTION choice names.
    function: str = ""
    parallel: bool = True


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """Exactly one field is set."""

    json_schema: str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Sampling:
    """None means: the model's or vLLM's default."""

    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    structured_output: StructuredOutput | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    """Exactly one field is set."""

    text: str | None = None
    chat: tuple[ChatTurn, ...] | None = None
    token_ids: tuple[int, ...] | None = None
    # With a chat: the tools offered (rendered by the chat template) and the choice.
    tools: Tools | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    model: str
    prompt: Prompt
    sampling: Sampling = field(default_factory=Sampling)
    # Who bills it ("<source>/<incarnation>"); the engine holds its final usage until confirmed.
    caller: str = ""
    usage_context: bytes = b""
    # Nobody bills it: the engine meters it itself under this internal caller's name.
    meter_as: str = ""
    # The authenticated caller that sent it: request ids are the caller's own, so two callers' ids never
    # meet inside vLLM (one caller's abort cannot reach the other's request).
    scope: str = ""
    # Requests share cached prefixes only with requests of the same salt (empty: the shared cache).
    cache_salt: str = ""

    @property
    def engine_id(self) -> str:
        return engine_request_id(self.scope, self.request_id)


@dataclass(slots=True)
class EmbeddingRequest:
    request_id: str
    model: str
    # Each input: a text (tokenized with the model's special tokens) or token ids as they are.
    inputs: list[str | list[int]]
    dimensions: int | None = None
    caller: str = ""
    usage_context: bytes = b""
    meter_as: str = ""
    scope: str = ""

    @property
    def engine_id(self) -> str:
        return engine_request_id(self.scope, self.request_id)


@dataclass(slots=True)
class ScoringRequest:
    """Pairs to score: one query against every document, or queries[i] against documents[i]."""

    request_id: str
    model: str
    queries: list[str]
    documents: list[str]
    # Set: each pair (cross-encoder) or each text (bi-encoder) is cut to this many tokens; None: refused.
    truncate_tokens: int | None = None
    # Set: nothing runs; the result has no scores and the usage the request would run.
    count_only: bool = False
    caller: str = ""
    usage_context: bytes = b""
    meter_as: str = ""
    scope: str = ""

    @property
    def engine_id(self) -> str:
        return engine_request_id(self.scope, self.request_id)


@dataclass(slots=True)
class ScoringResult:
    # One per document, in the documents' order.
    scores: list[float]
    usage: Usage
    model: str


def engine_request_id(scope: str, request_id: str) -> str:
    """The id vLLM knows a request by: the caller's id within its caller's scope."""
    return f"{scope}:{request_id}" if scope else request_id


@dataclass(slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    usage: Usage
    model: str


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(slots=True)
class ChoiceDelta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_string: str | None = None
    stop_token_id: int | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a call read from the output: the first of a call carries its id and name."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Timings:
    queue_seconds: float = 0.0
    time_to_first_token_seconds: float = 0.0
    generation_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass(slots=True)
class GenerationUpdate:
    """One step of a stream; `finished` marks the last, which carries final usage and timings."""

    choices: list[ChoiceDelta]
    usage: Usage
    finished: bool = False
    timings: Timings | None = None
    error: str | None = None
    # The served model the request resolved to: on the first and the last update.
    model: str = ""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    root: str
    max_model_len: int
    dtype: str
    device: str
    model_name: str = ""
    # Run by vLLM's pooling runner: it embeds (Embed) and does not generate.
    embeds: bool = False
    # A pooling model that classifies a pair of texts (a cross-encoder): it scores pairs and does not embed.
    cross_encoder: bool = False
    # A LoRA adapter: the base model it runs on (empty: a model of its own).
    parent: str = ""
