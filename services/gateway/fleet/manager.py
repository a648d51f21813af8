"""Launch, list, describe and terminate models across the engines, in Xinference's terms.

The engines are the truth about what runs (as the fleet last polled them, updated at once by launches
and terminations made here); the catalog remembers which registered model each uid runs and how it was
launched. A launch places each replica on a different healthy engine, the one with the most free memory
first (then the fewest models); if any replica fails, the others are terminated and the launch fails."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.errors import ApiError, from_grpc
from services.gateway.fleet.catalog import Catalog, Launch
from services.gateway.fleet.engines import EngineFleet, EngineMember
from services.gateway.fleet.registrations import EMBEDDING, LLM, RERANK, Registration

log = logging.getLogger(__name__)

_CREATED = int(time.time())
_MODEL_TYPES = {pb.MODEL_KIND_EMBED: EMBEDDING, pb.MODEL_KIND_SCORE: RERANK}


@dataclass(frozen=True)
class RunningModel:
    uid: str
    model_name: str
    card: pb.ModelCard
    registration: Registration | None
    engines: tuple[str, ...]

    def description(self, operator: bool = True) -> dict[str, Any]:
        """OpenAI's model object (id, object, created, owned_by) and Xinference's description in one.
        Where it lives (folder, engine addresses) is for operators only."""
        registration = self.registration
        described = {
            "id": self.uid,
            "object": "model",
            "created": _CREATED,
            "owned_by": "llmserve",
            "model_type": _MODEL_TYPES.get(self.card.kind, LLM),
            "model_name": self.model_name,
            "model_lang": list(registration.model_lang) if registration else ["en"],
            "model_ability": list(registration.model_ability) if registration else ["generate", "chat"],
            "model_description": registration.model_description if registration else "",
            "model_format": "pytorch",
            "model_size_in_billions": 0,
            "quantization": "none",
            "model_hub": "local",
            "revision": None,
            "context_length": self.card.max_model_len,
            # A LoRA adapter's base model (vLLM's model card field), else None.
            "parent": self.card.parent or None,
            "max_model_len": self.card.max_model_len,
            "root": self.card.root,
            "replica": len(self.engines),
            "address": ",".join(self.engines),
        }
        if not operator:
            del described["root"], described["address"]
        return described


class ModelManager:
    def __init__(self, fleet: EngineFleet, catalog: Catalog) -> None:
        self._fleet = fleet
        self.catalog = catalog

    def known_names(self) -> set[str]:
        """Every model name a price may be set for: served uids and the registered models they run (as the
        engines report them), registrations and launches."""
        names = {r.model_name for r in self.catalog.registrations()} | set(self.catalog.launches())
        for member in self._fleet.members:
            for uid, card in member.cards.items():
                names |= {uid, card.model_name} - {""}
        return names

    def _healthy(self) -> list[EngineMember]:
        healthy = [m for m in self._fleet.members if m.healthy]
        if not healthy:
            raise ApiError(503, "No engine is reachable.", code="engine_unavailable")
        return healthy

    async def running(self) -> list[RunningModel]:
        by_uid: dict[str, list[EngineMember]] = {}
        for member in self._healthy():
            for uid in member.cards:
                by_uid.setdefault(uid, []).append(member)
        launches = self.catalog.launches()
        models = []
        for uid, members in by_uid.items():
            card = members[0].cards[uid]
            launch = launches.get(uid)
            name = launch.model_name if launch else (card.model_name or uid)
            models.append(
                RunningModel(uid, name, card, self.catalog.registration(name), tuple(m.address for m in members))
            )
        return models

    async def describe(self, uid: str) -> RunningModel:
        for model in await self.running():
            if model.uid == uid:
                return model
        raise ApiError(404, f"The model `{uid}` does not exist.", param="model", code="model_not_found")

    async def launch(self, model_name: str, uid: str | None, replica: int, engine_args: dict[str, Any]) -> str:
        registration = self.catalog.registration(model_name)
        if registration is None:
            raise ApiError(
                404,
                f"No registered model `{model_name}`: see GET /v1/model_registrations/{{LLM,embedding,rerank}}.",
                param="model_name",
                code="model_not_found",
            )
        uid = uid or model_name
        healthy = self._healthy()
        if any(m.serves(uid) for m in healthy):
            raise ApiError(400, f"A model with uid `{uid}` is already running.", param="model_uid", code="model_exists")
        if replica > len(healthy):
            raise ApiError(
                400,
                f"replica={replica} needs as many healthy engines; {len(healthy)} answer now.",
                param="replica",
                code="invalid_value",
            )
        # Most free memory first, then the fewest models, then the least busy.
        placed = sorted(healthy, key=lambda m: (-m.memory_available, len(m.cards), m.outstanding))[:replica]
        request = pb.LaunchModelRequest(
            uid=uid,
            model_name=model_name,
            source=registration.source,
            engine_args_json=json.dumps(registration.engine_args | engine_args),
        )
        results = await asyncio.gather(*(m.client.launch_model(request) for m in placed), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            started = [m for m, r in zip(placed, results) if not isinstance(r, BaseException)]
            await asyncio.gather(*(m.client.terminate_model(uid) for m in started), return_exceptions=True)
            error = failures[0]
            if isinstance(error, grpc.aio.AioRpcError):
                raise from_grpc(error) from error
            raise error
        for member, card in zip(placed, results):
            member.set_card(uid, card)
        self.catalog.add_launch(Launch(uid, model_name, replica, engine_args))
        log.info("launched %s (%s) on %s", uid, model_name, [m.address for m in placed])
        return uid

    async def terminate(self, uid: str) -> None:
        hosts = [m for m in self._fleet.members if m.serves(uid)]
        if not hosts:
            self.catalog.remove_launches([uid])
            raise ApiError(404, f"The model `{uid}` does not exist.", param="model", code="model_not_found")
        for member in hosts:
            # Out of routing first (with its adapters), so no new request lands on a replica being stopped.
            for name in [n for n, card in member.cards.items() if n == uid or card.parent == uid]:
                member.set_card(name, None)
        results = await asyncio.gather(*(m.client.terminate_model(uid) for m in hosts), return_exceptions=True)
        for member in hosts:
            member.set_card(uid, None)
        self.catalog.remove_launches([uid])
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError) and r.code() != grpc.StatusCode.NOT_FOUND]
        if errors:
            # That engine is unreachable: it no longer serves through us; a poll shows it if it still runs.
            log.warning("terminating %s: %d engine(s) did not answer (%s)", uid, len(errors), errors[0].code().name)
        aborted = sum(r for r in results if isinstance(r, int))
        log.info("terminated %s on %s (%d stream(s) in flight ended)", uid, [m.address for m in hosts], aborted)

    async def load_adapter(self, base: str | None, name: str, path: str) -> str:
        """Loads a LoRA adapter onto every engine serving its base model (the only running model that is no
        adapter when `base` is None); if any engine refuses it, the others unload it and the load fails.
        Returns the base model's uid."""
        base = base or self._only_base()
        hosts = [m for m in self._healthy() if m.serves(base)]
        if not hosts:
            raise ApiError(404, f"The model `{base}` does not exist.", param="base_model", code="model_not_found")
        if any(m.serves(name) for m in self._fleet.members):
            raise ApiError(400, f"A model named `{name}` is already served.", param="lora_name", code="model_exists")
        loads = (m.client.load_adapter(base, name, path) for m in hosts)
        results = await asyncio.gather(*loads, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            loaded = [m for m, r in zip(hosts, results) if not isinstance(r, BaseException)]
            await asyncio.gather(*(m.client.unload_adapter(name) for m in loaded), return_exceptions=True)
            error = failures[0]
            if isinstance(error, grpc.aio.AioRpcError):
                raise from_grpc(error) from error
            raise error
        for member, card in zip(hosts, results):
            member.set_card(name, card)
        log.info("adapter %s (%s) loaded onto %s on %s", name, path, base, [m.address for m in hosts])
        return base

    async def serves_adapter(self, name: str) -> bool:
        return any(m.serves(name) and m.cards[name].parent for m in self._fleet.members)

    async def unload_adapter(self, name: str) -> None:
        hosts = [m for m in self._fleet.members if m.serves(name) and m.cards[name].parent]
        if not hosts:
            raise ApiError(
                404, f"The LoRA adapter `{name}` cannot be found.", param="lora_name", code="model_not_found"
            )
        for member in hosts:
            member.set_card(name, None)
        results = await asyncio.gather(*(m.client.unload_adapter(name) for m in hosts), return_exceptions=True)
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError) and r.code() != grpc.StatusCode.NOT_FOUND]
        if errors:
            log.warning("unloading %s: %d engine(s) did not answer (%s)", name, len(errors), errors[0].code().name)
        log.info("adapter %s unloaded from %s", name, [m.address for m in hosts])

    def _only_base(self) -> str:
        bases = sorted(
            {
                uid
                for m in self._healthy()
                for uid, card in m.cards.items()
                if not card.parent and card.kind not in (pb.MODEL_KIND_EMBED, pb.MODEL_KIND_SCORE)
            }
        )
        if len(bases) != 1:
            raise ApiError(
                400,
                f"Name the model to load the adapter onto in `base_model`: {', '.join(bases) or 'none'} run now.",
                param="base_model",
                code="invalid_value",
            )
        return bases[0]

    async def reconcile(self) -> None:
        """Drops recorded launches that no engine runs any more (an engine restarted, a model died)."""
        running = {model.uid for model in await self.running()}
        gone = [uid for uid in self.catalog.launches() if uid not in running]
        if gone:
            log.warning("recorded launches no engine runs now, dropped: %s", gone)
            self.catalog.remove_launches(gone)
