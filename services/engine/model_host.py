"""The models one engine process serves: each with its own vLLM engine, launched and terminated at run time.

Every model adds to the engine's one set of totals and held usage, so `GetLoad` and `ClaimUsage` keep
their meaning across launches and terminations (a terminated model's usage is still counted and still
claimable). A request names its model; an empty name means the engine's only model, or the one it
started with."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from services.engine.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    LaunchFailedError,
    ModelExistsError,
    ModelNotFoundError,
)
from services.engine.generation import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationRequest,
    GenerationUpdate,
    ModelInfo,
    Prompt,
    ScoringRequest,
    ScoringResult,
    engine_request_id,
)
from services.engine.usage.accounting import EngineUsage
from services.engine.vllm_adapter import VllmBackend

log = logging.getLogger(__name__)

# A uid is a path segment of the gateway's REST API (/v1/models/{uid}) and a metric label value.
UID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class LaunchSpec:
    uid: str
    model_name: str
    # A model folder, or "builtin:<name>" (services.engine.builtin_models).
    source: str
    engine_args: dict[str, Any] = field(default_factory=dict)


# Builds a model's backend (not started) from a launch; raises InvalidRequestError for a bad spec.
BackendFactory = Callable[[LaunchSpec, EngineUsage], VllmBackend]


@dataclass(frozen=True)
class HostLoad:
    unfinished_requests: int
    open_streams: int
    memory_total_bytes: int
    memory_available_bytes: int
    models: int


class ModelHost:
    def __init__(self, factory: BackendFactory, usage: EngineUsage | None = None) -> None:
        self._factory = factory
        self._ready: dict[str, VllmBackend] = {}
        # LoRA adapter name -> the uid of the base model it is loaded onto.
        self._adapter_bases: dict[str, str] = {}
        self._loading: set[str] = set()
        self._first: str | None = None
        self._draining = False
        self.usage = usage if usage is not None else EngineUsage()

    # Lifecycle

    async def launch(self, spec: LaunchSpec) -> ModelInfo:
        """Starts the model's vLLM engine and answers once it serves. A failure leaves the others serving."""
        if self._draining:
            raise EngineUnavailableError("the engine is shutting down")
        if not UID_PATTERN.fullmatch(spec.uid):
            raise InvalidRequestError(
                f"model uid {spec.uid!r}: use 1-128 letters, digits, '.', '_', ':' or '-',"
                " starting with a letter or digit"
            )
        if spec.uid in self._ready or spec.uid in self._loading or spec.uid in self._adapter_bases:
            raise ModelExistsError(f"a model with uid `{spec.uid}` is already running or loading here")
        self._loading.add(spec.uid)
        backend: VllmBackend | None = None
        try:
            # In a thread: resolving a built-in may convert the embedded model (about 30 s, once).
            backend = await asyncio.to_thread(self._factory, spec, self.usage)
            await backend.start()
        except asyncio.CancelledError:
            if backend is not None:
                backend.shutdown()
            raise
        except InvalidRequestError:
            raise
        except Exception as exc:
            log.exception("launching %s (%s) failed", spec.uid, spec.source)
            if backend is not None:
                backend.shutdown()
            raise LaunchFailedError(
                f"vLLM could not start `{spec.uid}` from {spec.source}: {_root_cause(exc)}"
            ) from exc
        finally:
            self._loading.discard(spec.uid)
        if self._draining:
            backend.shutdown()
            raise EngineUnavailableError("the engine is shutting down")
        self._ready[spec.uid] = backend
        if self._first is None:
            self._first = spec.uid
        info = backend.models()[0]
        log.info("model %s (%s) serving; this engine serves %s", spec.uid, info.model_name, sorted(self._ready))
        return info

    async def terminate(self, uid: str) -> int:
        """Takes the model out of routing, aborts its open streams (they end with their final usage),
        then stops its vLLM engine. Returns how many streams were aborted."""
        backend = self._ready.pop(uid, None)
        if backend is None:
            raise ModelNotFoundError(self._not_found(uid))
        self._forget_adapters_of(uid)
        aborted = backend.open_streams
        await backend.drain(0.0)
        await asyncio.to_thread(backend.shutdown)
        log.info("model %s terminated (%d stream(s) aborted)", uid, aborted)
        return aborted

    async def drain(self, grace_seconds: float) -> None:
        self._draining = True
        await asyncio.gather(*(b.drain(grace_seconds) for b in self._ready.values()))

    def shutdown(self) -> None:
        for backend in self._ready.values():
            backend.shutdown()
        self._ready.clear()

    def reap_dead(self) -> list[str]:
        """Drops models whose vLLM engine died (their streams already ended with an error); returns their uids."""
        dead = [uid for uid, backend in self._ready.items() if backend.dead]
        for uid in dead:
            log.error("model %s: its vLLM engine died; it is no longer served", uid)
            self._ready.pop(uid).shutdown()
            self._forget_adapters_of(uid)
        return dead

    # LoRA adapters

    async def load_adapter(self, base: str, name: str, path: str) -> ModelInfo:
        """Loads a LoRA adapter onto the running model `base`; served as `name` from then on."""
        if not UID_PATTERN.fullmatch(name):
            raise InvalidRequestError(
                f"adapter name {name!r}: use 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter"
                " or digit"
            )
        if name in self._ready or name in self._loading or name in self._adapter_bases:
            raise ModelExistsError(f"a model or adapter named `{name}` is already served here")
        backend = self._ready.get(base)
        if backend is None:
            raise ModelNotFoundError(self._not_found(base))
        self._adapter_bases[name] = base  # taken while vLLM loads it: a second load of the name is refused
        try:
            return await backend.load_adapter(name, path)
        except BaseException:
            self._adapter_bases.pop(name, None)
            raise

    async def unload_adapter(self, name: str) -> int:
        """Stops serving the adapter; returns how many of its requests were aborted."""
        base = self._adapter_bases.get(name)
        backend = self._ready.get(base) if base is not None else None
        if backend is None:
            raise ModelNotFoundError(f"The LoRA adapter `{name}` cannot be found.")
        del self._adapter_bases[name]
        return await backend.unload_adapter(name)

    def _forget_adapters_of(self, uid: str) -> None:
        for name in [n for n, base in self._adapter_bases.items() if base == uid]:
            del self._adapter_bases[name]

    @property
    def empty(self) -> bool:
        return not self._ready and not self._loading

    # Requests

    def backend(self, model: str) -> VllmBackend:
        """The backend serving `model` (a model uid or an adapter on one; empty: the only or first model)."""
        if model:
            backend = self._ready.get(model) or self._ready.get(self._adapter_bases.get(model, ""))
            if backend is not None:
                return backend
            if model in self._loading:
                raise EngineUnavailableError(f"the model `{model}` is still loading; retry shortly")
            raise ModelNotFoundError(self._not_found(model))
        if len(self._ready) == 1:
            return next(iter(self._ready.values()))
        if self._first in self._ready:
            return self._ready[self._first]
        if not self._ready:
            raise EngineUnavailableError("this engine serves no model yet; retry shortly")
        raise InvalidRequestError(f"name a model: this engine serves {', '.join(sorted(self._ready))}")

    def _not_found(self, model: str) -> str:
        served = ", ".join(f"`{uid}`" for uid in sorted(self._ready)) or "no model"
        return f"The model `{model}` does not exist; this engine serves {served}."

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationUpdate]:
        return self.backend(request.model).generate(request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        return await self.backend(request.model).embed(request)

    async def score(self, request: ScoringRequest) -> ScoringResult:
        return await self.backend(request.model).score(request)

    async def tokenize(
        self, model: str, prompt: Prompt, add_special_tokens: bool, add_generation_prompt: bool
    ) -> tuple[list[int], int]:
        return await self.backend(model).tokenize(model, prompt, add_special_tokens, add_generation_prompt)

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        return await self.backend(model).detokenize(model, token_ids)

    async def abort(self, request_ids: Iterable[str], scope: str = "") -> list[str]:
        """Aborts `scope`'s requests of these ids; the ids it aborted."""
        by_engine_id = {engine_request_id(scope, r): r for r in request_ids}
        aborted: list[str] = []
        for backend in list(self._ready.values()):
            aborted += [by_engine_id[e] for e in await backend.abort(list(by_engine_id))]
        return aborted

    def models(self) -> list[tuple[ModelInfo, int]]:
        """(model, its open streams) for every model that serves now."""
        return [(info, backend.open_streams) for backend in self._ready.values() for info in backend.models()]

    def load(self) -> HostLoad:
        unfinished = open_streams = 0
        for backend in self._ready.values():
            u, o = backend.load()
            unfinished += u
            open_streams += o
        memory = psutil.virtual_memory()
        return HostLoad(unfinished, open_streams, memory.total, memory.available, len(self._ready))


def _root_cause(exc: BaseException) -> str:
    """vLLM wraps a worker's failure in "see root cause above"; the innermost message says more."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{exc.__class__.__name__}: {exc}"
