"""The vLLM adapter: turns GenerationRequests into AsyncLLM calls and RequestOutputs into GenerationUpdates."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from services.engine.cpu_placement import place_engine_core
from services.engine.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
)
from services.engine.generation import (
    ChatTurn,
    ChoiceDelta,
    FinishReason,
    GenerationRequest,
    GenerationUpdate,
    ImageInput,
    ModelInfo,
    Prompt,
    Sampling,
    Timings,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from services.engine.unconfirmed_usage import UnconfirmedUsage
from services.engine.vllm_metrics import VLLM_METRICS

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Tokenizing or templating more than this many characters goes to a thread, off the event loop.
_INLINE_TOKENIZE_CHARS = 4096

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
    "error": FinishReason.ERROR,
    # vLLM's repetition detector ends a choice as a stop would.
    "repetition": FinishReason.STOP,
}


@dataclass
class ServedTotals:
    """What the engine generated since start, counted from the token ids it streamed."""

    streams: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, stream: _StreamState) -> None:
        self.streams += 1
        self.prompt_tokens += stream.prompt_tokens
        self.completion_tokens += stream.completion_tokens
        self.cached_tokens += stream.cached_tokens


@dataclass(frozen=True)
class ServedModel:
    name: str
    root: str
    # The registered model it runs (a launch names it); the served name when the engine started with it.
    model_name: str = ""


class VllmBackend:
    """Owns one AsyncLLM. Not ready until `start()` has returned.

    The counters are passed in so that every model of one engine adds to the same totals and the same
    held usage (a model's usage outlives the model)."""

    def __init__(
        self,
        engine_args: Any,
        served: ServedModel,
        place_engine_core: bool = True,
        totals: ServedTotals | None = None,
        unconfirmed: UnconfirmedUsage | None = None,
    ) -> None:
        self._engine_args = engine_args
        self._served = served
        self._place_engine_core = place_engine_core
        self._llm: Any = None
        self._tokenizer: Any = None
        self._info: ModelInfo | None = None
        self._draining = False
        self._open: set[str] = set()
        self.served = totals if totals is not None else ServedTotals()
        self.unconfirmed = unconfirmed if unconfirmed is not None else UnconfirmedUsage()
        # The model's generation_config defaults, for fields a request leaves unset (as vLLM's server does).
        self._sampling_defaults: dict[str, Any] = {}

    async def start(self) -> None:
        """Builds the AsyncLLM (tens of seconds on CPU) in a thread so the gRPC server answers meanwhile."""
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        def make() -> Any:
            # The API-server context gives vLLM's serving defaults (batch sizes), as its own server gets.
            return AsyncLLM.from_engine_args(self._engine_args, usage_context=UsageContext.OPENAI_API_SERVER)

        self._llm = await asyncio.to_thread(VLLM_METRICS.make_engine, self._served.name, make)
        self._tokenizer = self._llm.get_tokenizer()
        config = self._llm.model_config
        self._sampling_defaults = config.get_diff_sampling_param()
        from vllm.platforms import current_platform
        from vllm.utils.gc_utils import freeze_gc_heap

        self._info = ModelInfo(
            id=self._served.name,
            root=self._served.root,
            max_model_len=config.max_model_len,
            dtype=str(config.dtype).removeprefix("torch."),
            device=current_platform.device_type,
            model_name=self._served.model_name or self._served.name,
        )
        if self._place_engine_core:
            place_engine_core()
        # As vLLM's API server does: the startup heap (torch, vLLM, the model) is static; left to the
        # collector, each full collection walks ~600k objects and stalls every stream for ~0.5 s.
        freeze_gc_heap()

    @property
    def dead(self) -> bool:
        return self._llm is not None and self._llm.errored

    @property
    def name(self) -> str:
        return self._served.name

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def shutdown(self) -> None:
        VLLM_METRICS.forget(self._served.name)
        if self._llm is not None:
            self._llm.shutdown()
            # Dropped now, so AsyncLLM.__del__ runs while the interpreter is whole, not at exit.
            self._llm = None

    # Requests

    def _check_ready(self) -> ModelInfo:
        if self._info is None:
            raise EngineUnavailableError("the engine is still starting; retry shortly")
        if self._draining:
            raise EngineUnavailableError("the engine is shutting down")
        if self._llm.errored:
            raise EngineUnavailableError(f"the engine is dead: {self._llm.dead_error}")
        return self._info

    def _check_model(self, model: str) -> ModelInfo:
        info = self._check_ready()
        if model and model != info.id:
            raise ModelNotFoundError(f"The model `{model}` does not exist; this engine serves `{info.id}`.")
        return info

    def models(self) -> list[ModelInfo]:
        return [self._check_ready()]

    def load(self) -> tuple[int, int]:
        """(requests unfinished inside vLLM, streams open here)."""
        unfinished = self._llm.get_num_unfinished_requests() if self._llm is not None else 0
        return unfinished, len(self._open)

    async def tokenize(
        self, model: str, prompt: Prompt, add_special_tokens: bool, add_generation_prompt: bool
    ) -> tuple[list[int], int]:
        info = self._check_model(model)
        ids, _ = await self._prepare(prompt, add_special_tokens, add_generation_prompt, for_generation=False)
        return ids, info.max_model_len

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        self._check_model(model)
        vocab = len(self._tokenizer)
        bad = [t for t in token_ids if t >= vocab]
        if bad:
            raise InvalidRequestError(f"token ids out of the vocabulary (size {vocab}): {bad[:5]}")
        return await _off_loop(len(token_ids), self._tokenizer.decode, token_ids)

    async def abort(self, request_ids: Iterable[str]) -> list[str]:
        running = [r for r in request_ids if r in self._open]
        if running and self._llm is not None:
            await self._llm.abort(running)
        return running

    async def drain(self, grace_seconds: float) -> None:
        """Refuses new requests, waits up to the grace period, then aborts what still runs."""
        self._draining = True
        deadline = time.monotonic() + grace_seconds
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._open:
            log.info("grace period over: aborting %d request(s)", len(self._open))
            await self.abort(list(self._open))
            # Let the aborted streams deliver their final message.
            deadline = time.monotonic() + 2.0
            while self._open and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationUpdate]:
        """Streams updates; the last has `finished` set and the final usage, whatever ended the request."""
        info = self._check_model(request.model)
        prompt_ids, engine_prompt = await self._prepare(request.prompt, True, True, for_generation=True)
        params = self._sampling_params(request.sampling, len(prompt_ids), info.max_model_len)
        stream = _StreamState(prompt_tokens=len(prompt_ids), started=time.monotonic())
        self._open.add(request.request_id)
        if request.caller:
            self.unconfirmed.open(request.request_id, request.caller, request.usage_context, info.id)
        try:
            outputs = self._llm.generate(engine_prompt, params, request.request_id)
            async for output in _translate_errors(outputs, stream):
                update = stream.update(output, request.sampling.logprobs)
                if update.finished or not stream.announced:
                    update.model = info.id
                    stream.announced = True
                yield update
            if not stream.finished:
                yield stream.failure("the engine ended the stream without a final output", info.id)
        except _FailedAfterStart as failure:
            yield stream.failure(str(failure), info.id)
        finally:
            self._open.discard(request.request_id)
            # The one rule every counter follows: a request counts once vLLM produced output for it
            # (an abort's final output included); one refused before that counts nothing anywhere.
            if stream.started_output:
                self.served.add(stream)
            if request.caller:
                self._hold_final_usage(request.request_id, stream)
            log.info(
                "request %s done: prompt=%d completion=%d cached=%d finished=%s",
                request.request_id,
                stream.prompt_tokens,
                stream.completion_tokens,
                stream.cached_tokens,
                stream.finished,
            )

    def _hold_final_usage(self, request_id: str, stream: _StreamState) -> None:
        if not stream.started_output:
            self.unconfirmed.discard(request_id)
            return
        reasons = dict(stream.finish_reasons)
        # A stream cut before its last output (the caller went away): vLLM aborted what was open.
        for index in stream.unfinished_choices:
            reasons.setdefault(index, FinishReason.ABORT)
        self.unconfirmed.finish(
            request_id, stream.usage(), [reasons[i] for i in sorted(reasons)], stream.timings(), stream.error
        )

    async def _prepare(
        self, prompt: Prompt, add_special_tokens: bool, add_generation_prompt: bool, *, for_generation: bool
    ) -> tuple[list[int], Any]:
        """(the prompt's token ids as the model sees them, the prompt to hand vLLM). A chat with images
        is rendered here by vLLM's own renderer, as its OpenAI server does: the templated text plus the
        decoded images go through the model's processor once, which inserts the image placeholder
        tokens; the ids counted (and billed, and returned by /tokenize) are the ones vLLM then runs."""
        images = [
            (f"messages[{i}].content[{j}].image_url", part)
            for i, turn in enumerate(prompt.chat or ())
            for j, part in enumerate(turn.parts or ())
            if isinstance(part, ImageInput)
        ]
        if not images:
            from vllm.inputs import TokensPrompt

            ids = await self._prompt_token_ids(prompt, add_special_tokens, add_generation_prompt)
            return ids, TokensPrompt(prompt_token_ids=ids)
        config = self._llm.model_config
        if not config.is_multimodal_model:
            raise InvalidRequestError(f"The model `{self._served.name}` takes no images: send text only.")
        limit = config.multimodal_config.get_limit_per_prompt("image")
        if len(images) > limit:
            raise InvalidRequestError(
                f"At most {limit} image(s) per request for the model `{self._served.name}`; got {len(images)}."
            )
        decoded = await asyncio.to_thread(_decode_images, images)
        text = await self._chat_text(prompt.chat, add_generation_prompt)
        engine_input = await self._render_with_images(text, decoded, for_generation)
        return list(engine_input["prompt_token_ids"]), engine_input

    async def _render_with_images(self, text: str, images: list[Any], for_generation: bool) -> Any:
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        renderer = self._llm.renderer
        prompt = parse_model_prompt(self._llm.model_config, {"prompt": text, "multi_modal_data": {"image": images}})
        try:
            # vLLM's processor cache here mirrors its engine core's: only what is sent may be cached, so
            # /tokenize skips it, as vLLM's own /tokenize does. (A request refused after rendering leaves
            # an entry the engine core never got; vLLM then has the item resent, as in its own server.)
            (engine_input,) = await renderer.render_cmpl_async(
                [prompt], renderer.default_cmpl_tok_params, skip_mm_cache=not for_generation
            )
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"the model's processor rejected the images: {exc}") from exc
        return engine_input

    async def _prompt_token_ids(
        self, prompt: Prompt, add_special_tokens: bool, add_generation_prompt: bool
    ) -> list[int]:
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            vocab = len(self._tokenizer)
            if any(t >= vocab for t in ids):
                raise InvalidRequestError(f"prompt token ids must be below the vocabulary size {vocab}")
        elif prompt.chat is not None:
            ids = await self._chat_token_ids(prompt.chat, add_generation_prompt)
        elif prompt.text is not None:
            ids = await _off_loop(
                len(prompt.text),
                self._tokenizer.encode,
                prompt.text,
                add_special_tokens=add_special_tokens,
            )
        else:
            raise InvalidRequestError("the request has no prompt: give text, chat messages or token ids")
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        return ids

    async def _chat_token_ids(self, chat: tuple[ChatTurn, ...], add_generation_prompt: bool) -> list[int]:
        text = await self._chat_text(chat, add_generation_prompt)
        # The template already wrote the special tokens (as vLLM's chat path does).
        return await _off_loop(len(text), self._tokenizer.encode, text, add_special_tokens=False)

    async def _chat_text(self, chat: tuple[ChatTurn, ...], add_generation_prompt: bool) -> str:
        if not chat:
            raise InvalidRequestError("messages must hold at least one message")
        messages = [_chat_message(turn) for turn in chat]
        size = sum(len(turn.content) for turn in chat)
        try:
            return await _off_loop(
                size,
                self._tokenizer.apply_chat_template,
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:  # jinja raises TemplateError and friends on bad conversations
            raise InvalidRequestError(f"the chat template rejected the messages: {exc}") from exc

    def _sampling_params(self, sampling: Sampling, prompt_len: int, max_model_len: int) -> Any:
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        if prompt_len >= max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                f"has {prompt_len} tokens, which leaves no room for the completion."
            )
        room = max_model_len - prompt_len
        max_tokens = sampling.max_tokens
        if max_tokens is None:
            max_tokens = min(room, self._sampling_defaults.get("max_new_tokens", room))
        elif max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {max_tokens}")
        elif max_tokens > room:
            raise InvalidRequestError(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the "
                "completion). Reduce the prompt or max_tokens."
            )
        if sampling.n < 1:
            raise InvalidRequestError(f"n must be at least 1, got {sampling.n}")
        kwargs: dict[str, Any] = {
            name: value
            for name, value in self._sampling_defaults.items()
            if name != "max_new_tokens" and value is not None
        }
        kwargs |= {
            name: value
            for name in (
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
            if (value := getattr(sampling, name)) is not None
        }
        structured = sampling.structured_output
        if structured is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(**_structured_kwargs(structured))
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


def _structured_kwargs(structured: Any) -> dict[str, Any]:
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


def _decode_images(images: list[tuple[str, ImageInput]]) -> list[Any]:
    """(where in the request, image) pairs -> RGB images, or InvalidRequestError naming the part."""
    from PIL import Image, UnidentifiedImageError

    decoded = []
    for where, image in images:
        try:
            with Image.open(io.BytesIO(image.data)) as opened:
                decoded.append(opened.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidRequestError(
                f"{where}: the image ({image.media_type or 'no media type'}) could not be decoded: {exc}"
            ) from exc
    return decoded


def _chat_message(turn: ChatTurn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": turn.role.value, "content": turn.content}
    if turn.parts is not None:
        message["content"] = [
            {"type": "text", "text": part} if isinstance(part, str) else {"type": "image"} for part in turn.parts
        ]
    if turn.name:
        message["name"] = turn.name
    if turn.tool_call_id:
        message["tool_call_id"] = turn.tool_call_id
    return message


async def _off_loop(size: int, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    if size <= _INLINE_TOKENIZE_CHARS:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


class _FailedAfterStart(Exception):
    """vLLM failed a request that had already produced output."""


async def _translate_errors(outputs: AsyncIterator[Any], stream: "_StreamState") -> AsyncIterator[Any]:
    """Maps vLLM's exceptions: before the first output to domain errors, after it to a failed final update."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    try:
        async for output in outputs:
            yield output
    except EngineDeadError as exc:
        if stream.started_output:
            raise _FailedAfterStart("the engine died during the request") from exc
        raise EngineUnavailableError("the engine is dead") from exc
    except GracefulHTTPError as exc:
        raise EngineUnavailableError(str(exc)) from exc
    except (VLLMClientError, ValueError) as exc:
        if stream.started_output:
            raise _FailedAfterStart(str(exc)) from exc
        raise InvalidRequestError(str(exc)) from exc
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if stream.started_output:
            log.exception("request failed after it started")
            raise _FailedAfterStart(f"the engine failed the request: {exc.__class__.__name__}") from exc
        raise


class _StreamState:
    """Counts one request's tokens and times as its outputs arrive.

    With n > 1, vLLM runs one child request per choice, each with its own prefix-cache hits, while the
    prompt is billed once: the cached tokens are those cached for every choice (the minimum), whatever
    order the choices report in."""

    def __init__(self, prompt_tokens: int, started: float) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cached_by_choice: dict[int, int] = {}
        self.started = started
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.queue_seconds = 0.0
        self.finished = False
        self.started_output = False
        self.announced = False
        self.finish_reasons: dict[int, FinishReason] = {}
        self.error: str | None = None
        self.unfinished_choices: set[int] = set()
        self.finished_choices: set[int] = set()

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)

    def timings(self) -> Timings:
        now = time.monotonic()
        first = self.first_token_at or now
        last = self.last_token_at or first
        return Timings(
            queue_seconds=self.queue_seconds,
            time_to_first_token_seconds=(first - self.started) if self.first_token_at else 0.0,
            generation_seconds=last - first,
            total_seconds=now - self.started,
        )

    def update(self, output: Any, logprobs: int | None) -> GenerationUpdate:
        if not self.started_output and output.prompt_token_ids:
            # vLLM's own count (with images: after its processor inserted their placeholder tokens).
            self.prompt_tokens = len(output.prompt_token_ids)
        self.started_output = True
        now = time.monotonic()
        choices = []
        for completion in output.outputs:
            self.cached_by_choice[completion.index] = output.num_cached_tokens or 0
            ids = list(completion.token_ids)
            if ids:
                self.completion_tokens += len(ids)
                if self.first_token_at is None:
                    self.first_token_at = now
                self.last_token_at = now
            delta = _choice_delta(completion, ids, logprobs)
            choices.append(delta)
            if delta.finish_reason is None:
                self.unfinished_choices.add(completion.index)
            else:
                self.unfinished_choices.discard(completion.index)
                self.finished_choices.add(completion.index)
                self.finish_reasons[completion.index] = delta.finish_reason
        if self.cached_by_choice:
            self.cached_tokens = min(self.cached_by_choice.values())
        self.finished = bool(output.finished)
        timings = None
        if self.finished:
            stats = output.metrics
            if stats is not None and stats.scheduled_ts and stats.queued_ts:
                self.queue_seconds = max(0.0, stats.scheduled_ts - stats.queued_ts)
            timings = self.timings()
        return GenerationUpdate(choices=choices, usage=self.usage(), finished=self.finished, timings=timings)

    def failure(self, message: str, model: str) -> GenerationUpdate:
        """The final update of a request that failed after it started: open choices end with ERROR.
        Its usage is reported, so it counts."""
        self.finished = True
        self.started_output = True
        self.error = message
        choices = [
            ChoiceDelta(index=i, text="", token_ids=[], finish_reason=FinishReason.ERROR)
            for i in sorted(self.unfinished_choices)
        ]
        for choice in choices:
            self.finish_reasons[choice.index] = FinishReason.ERROR
        self.unfinished_choices.clear()
        return GenerationUpdate(
            choices=choices, usage=self.usage(), finished=True, timings=self.timings(), error=message, model=model
        )


def _choice_delta(completion: Any, ids: list[int], logprobs: int | None) -> ChoiceDelta:
    delta = ChoiceDelta(index=completion.index, text=completion.text, token_ids=ids)
    if logprobs is not None and completion.logprobs is not None:
        delta.logprobs = [
            _token_logprob(token_id, position, logprobs)
            for token_id, position in zip(ids, completion.logprobs)
        ]
    if completion.finish_reason is not None:
        delta.finish_reason = _FINISH_REASONS.get(str(completion.finish_reason), FinishReason.STOP)
        stop = completion.stop_reason
        if isinstance(stop, str):
            delta.stop_string = stop
        elif isinstance(stop, int):
            delta.stop_token_id = stop
    return delta


def _token_logprob(token_id: int, position: dict[int, Any], top_n: int) -> TokenLogprob:
    chosen = position[token_id]
    ranked = sorted(
        ((tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= top_n),
        key=lambda item: item[1].rank,
    )
    return TokenLogprob(
        token_id=token_id,
        token=chosen.decoded_token or "",
        logprob=chosen.logprob,
        top=tuple(TopLogprob(tid, lp.decoded_token or "", lp.logprob) for tid, lp in ranked),
    )
