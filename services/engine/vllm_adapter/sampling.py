"""A request's Sampling as vLLM's SamplingParams: the model's defaults under the request's fields, the
completion room checked against the context length, structured outputs translated."""

from __future__ import annotations

import json
from typing import Any

from services.engine.errors import InvalidRequestError
from services.engine.generation import Sampling, StructuredOutput

_PASSED_THROUGH = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logprobs",
)


def sampling_params(
    sampling: Sampling, prompt_len: int, max_model_len: int, defaults: dict[str, Any], tool_calls: Any = None
) -> Any:
    """`defaults`: the model's generation_config (vLLM's `get_diff_sampling_param`), for fields the
    request leaves unset, as vLLM's server does. `tool_calls` (a ToolCallReader): its structured output
    (the calls' schema or structural tag) wins over the request's, as in vLLM's server."""
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    max_tokens = _max_tokens(sampling.max_tokens, prompt_len, max_model_len, defaults)
    if sampling.n < 1:
        raise InvalidRequestError(f"n must be at least 1, got {sampling.n}")
    kwargs: dict[str, Any] = {
        name: value for name, value in defaults.items() if name != "max_new_tokens" and value is not None
    }
    kwargs |= {name: value for name in _PASSED_THROUGH if (value := getattr(sampling, name)) is not None}
    if sampling.structured_output is not None:
        kwargs["structured_outputs"] = StructuredOutputsParams(**_structured_kwargs(sampling.structured_output))
    if tool_calls is not None:
        if tool_calls.structured_outputs is not None:
            kwargs["structured_outputs"] = tool_calls.structured_outputs
        kwargs["skip_special_tokens"] = tool_calls.skip_special_tokens
    try:
        return SamplingParams(
            n=sampling.n,
            max_tokens=max_tokens,
            min_tokens=sampling.min_tokens,
            stop=list(sampling.stop) or None,
            stop_token_ids=list(sampling.stop_token_ids) or None,
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
            **kwargs,
        )
    except (ValueError, VLLMClientError) as exc:
        raise InvalidRequestError(str(exc)) from exc


def _max_tokens(requested: int | None, prompt_len: int, max_model_len: int, defaults: dict[str, Any]) -> int:
    if prompt_len >= max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
            f"has {prompt_len} tokens, which leaves no room for the completion."
        )
    room = max_model_len - prompt_len
    if requested is None:
        return min(room, defaults.get("max_new_tokens", room))
    if requested < 1:
        raise InvalidRequestError(f"max_tokens must be at least 1, got {requested}")
    if requested > room:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
            "completion). Reduce the prompt or max_tokens."
        )
    return requested


def _structured_kwargs(structured: StructuredOutput) -> dict[str, Any]:
    if structured.json_schema is not None:
        try:
            schema = json.loads(structured.json_schema)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"the JSON schema is not valid JSON: {exc}") from exc
        if not isinstance(schema, dict):
            raise InvalidRequestError("the JSON schema must be a JSON object")
        return {"json": schema}
    if structured.json_object:
        return {"json_object": True}
    if structured.regex is not None:
        return {"regex": structured.regex}
    if structured.choice is not None:
        if not structured.choice:
            raise InvalidRequestError("a choice constraint needs at least one choice")
        return {"choice": list(structured.choice)}
    raise InvalidRequestError("structured_output is set but names no constraint")
