"""Launch, list, describe and terminate models on the engine, in Xinference's terms.

The engine is the truth about what runs; the catalog remembers how each model was launched and which
registered model a uid runs."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.engine.client import EngineClient
from services.gateway.errors import ApiError, from_grpc
from services.gateway.fleet.catalog import Catalog, Launch
from services.gateway.fleet.registrations import SERVED_TYPE, Registration

log = logging.getLogger(__name__)

_CREATED = int(time.time())


@dataclass(frozen=True)
class RunningModel:
    uid: str
    model_name: str
    card: pb.ModelCard
    registration: Registration | None
    replica: int = 1

    def description(self) -> dict[str, Any]:
        """OpenAI's model object (id, object, created, owned_by) and Xinference's description in one."""
        registration = self.registration
        return {
            "id": self.uid,
            "object": "model",
            "created": _CREATED,
            "owned_by": "llmserve",
            "model_type": SERVED_TYPE,
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
            "max_model_len": self.card.max_model_len,
            "root": self.card.root,
            "replica": self.replica,
        }


class ModelManager:
    def __init__(self, engine: EngineClient, catalog: Catalog) -> None:
        self._engine = engine
        self.catalog = catalog

    async def running(self) -> list[RunningModel]:
        try:
            cards = await self._engine.list_models(timeout=10.0)
        except grpc.aio.AioRpcError as error:
            raise from_grpc(error) from error
        launches = self.catalog.launches()
        models = []
        for card in cards:
            launch = launches.get(card.id)
            name = launch.model_name if launch else (card.model_name or card.id)
            models.append(RunningModel(card.id, name, card, self.catalog.registration(name)))
        return models

    async def describe(self, uid: str) -> RunningModel:
        for model in await self.running():
            if model.uid == uid:
                return model
        raise ApiError(404, f"The model `{uid}` does not exist.", param="model", code="model_not_found")

    async def launch(self, model_name: str, uid: str | None, replica: int, engine_args: dict[str, Any]) -> str:
        registration = self.catalog.registration(model_name)
        if registration is None:
            raise ApiError(404, f"No registered model `{model_name}`: see GET /v1/model_registrations/LLM.",
                           param="model_name", code="model_not_found")
        if replica != 1:
            raise ApiError(400, f"replica={replica}: this gateway has one engine, so one replica per model.",
                           param="replica", code="invalid_value")
        uid = uid or model_name
        request = pb.LaunchModelRequest(
            uid=uid,
            model_name=model_name,
            source=registration.source,
            engine_args_json=json.dumps(registration.engine_args | engine_args),
        )
        try:
            await self._engine.launch_model(request)
        except grpc.aio.AioRpcError as error:
            raise from_grpc(error) from error
        self.catalog.add_launch(Launch(uid, model_name, replica, engine_args))
        log.info("launched %s (%s)", uid, model_name)
        return uid

    async def terminate(self, uid: str) -> None:
        try:
            aborted = await self._engine.terminate_model(uid)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                self.catalog.remove_launches([uid])
            raise from_grpc(error) from error
        self.catalog.remove_launches([uid])
        log.info("terminated %s (%d stream(s) in flight ended)", uid, aborted)

    async def reconcile(self) -> None:
        """Drops recorded launches that no engine runs any more (an engine restarted, a model died)."""
        running = {model.uid for model in await self.running()}
        gone = [uid for uid in self.catalog.launches() if uid not in running]
        if gone:
            log.warning("recorded launches no engine runs now, dropped: %s", gone)
            self.catalog.remove_launches(gone)
