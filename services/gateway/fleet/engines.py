"""The engines behind this gateway: which models each serves, which are healthy, and which takes the next
request.

Engines come from configuration, as addresses or DNS names; a name is resolved at every poll to all its
addresses (as `docker compose --scale` and a Kubernetes headless Service give), so engines that appear
join and engines that go away leave. Each poll asks every engine for its models and its load. An engine
that fails a poll, or refuses a request as unavailable, is out of rotation until a poll succeeds again.
Requests for a model go to the healthy engine serving it with the fewest requests outstanding here."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.contracts.engine_client import EngineClient

log = logging.getLogger(__name__)

POLL_TIMEOUT_SECONDS = 2.0


@dataclass(eq=False)
class EngineMember:
    address: str
    client: EngineClient
    healthy: bool = False
    # Served models by uid, as the last poll (or a launch or termination since) saw them.
    cards: dict[str, pb.ModelCard] = field(default_factory=dict)
    memory_total: int = 0
    memory_available: int = 0
    # Generations this gateway has open on the engine now.
    outstanding: int = 0
    # Bumped by each launch or termination made here: a poll that began before one does not apply its
    # (older) list of models over it.
    changes: int = 0

    def set_card(self, uid: str, card: pb.ModelCard | None) -> None:
        if card is None:
            self.cards.pop(uid, None)
        else:
            self.cards[uid] = card
        self.changes += 1

    def serves(self, model: str) -> bool:
        return model in self.cards


def split_targets(targets: str) -> list[str]:
    return [t.strip() for t in targets.split(",") if t.strip()]


def resolve(target: str) -> list[str]:
    """`host:port` -> the `ip:port` addresses it names now (IPv4 preferred); an IP literal or a name that
    does not resolve stays as it is (its calls then fail as unavailable)."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        return [target]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return [target]
    v4 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET})
    if v4:
        return [f"{ip}:{port}" for ip in v4]
    v6 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET6})
    return [f"[{ip}]:{port}" for ip in v6] or [target]


class EngineFleet:
    def __init__(
        self,
        targets: list[str],
        token: str | None,
        poll_seconds: float = 2.0,
        clients: dict[str, EngineClient] | None = None,
        multiplexed: bool = True,
    ) -> None:
        """`clients`: ready-made clients by address (tests pass a fake engine's); the rest are made here,
        carrying their streams on one GenerateMany call each when `multiplexed`."""
        if not targets:
            raise ValueError("at least one engine address is required")
        self._targets = targets
        self._token = token
        self._poll_seconds = poll_seconds
        self._multiplexed = multiplexed
        self._given = dict(clients or {})
        self._members: dict[str, EngineMember] = {}
        self._turn = 0
        self._task: asyncio.Task | None = None
        # Called once for each engine the first time a poll finds it healthy (usage recovery claims there).
        self.on_first_healthy: list[Callable[[EngineMember], Awaitable[None]]] = []
        self._seen_healthy: set[str] = set()
        self._callbacks: set[asyncio.Task] = set()

    @property
    def members(self) -> list[EngineMember]:
        return list(self._members.values())

    def member(self, address: str) -> EngineMember | None:
        return self._members.get(address)

    # Polling

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.refresh()
            except Exception:  # a poll must never end the loop
                log.exception("polling the engines failed")

    async def refresh(self) -> None:
        addresses = await asyncio.to_thread(self._resolve_all)
        for address in addresses - self._members.keys():
            client = self._given.get(address) or EngineClient(address, self._token, self._multiplexed)
            self._members[address] = EngineMember(address, client)
            log.info("engine %s joined", address)
        for address in self._members.keys() - addresses:
            member = self._members.pop(address)
            log.info("engine %s left (no longer resolved)", address)
            if address not in self._given:
                await member.client.close()
        await asyncio.gather(*(self._poll(m) for m in self.members))

    def _resolve_all(self) -> set[str]:
        return {address for target in self._targets for address in resolve(target)}

    async def _poll(self, member: EngineMember) -> None:
        changes = member.changes
        try:
            cards, load = await asyncio.gather(
                member.client.list_models(timeout=POLL_TIMEOUT_SECONDS),
                member.client.load(timeout=POLL_TIMEOUT_SECONDS),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                log.error(
                    "engine %s refused this gateway's credential (%s): check GATEWAY_SERVICE_TOKEN_FILE",
                    member.address,
                    error.code().name,
                )
            elif member.healthy:
                log.warning("engine %s out of rotation: %s", member.address, error.code().name)
            member.healthy = False
            return
        if not member.healthy:
            log.info("engine %s in rotation, serving %s", member.address, sorted(c.id for c in cards))
        member.healthy = True
        if member.changes == changes:
            member.cards = {card.id: card for card in cards}
        member.memory_total = load.memory_total_bytes
        member.memory_available = load.memory_available_bytes
        if member.address not in self._seen_healthy:
            self._seen_healthy.add(member.address)
            for callback in self.on_first_healthy:
                task = asyncio.create_task(callback(member))
                self._callbacks.add(task)
                task.add_done_callback(self._callbacks.discard)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for member in self.members:
            if member.address not in self._given:
                await member.client.close()

    # Routing

    def _candidates(self, model: str, exclude: Iterable[str] = ()) -> list[EngineMember]:
        """Healthy engines serving `model` (empty: any healthy engine), else any healthy engine, else any
        engine, so that the engine itself answers a model it does not serve (404) or its unavailability (503)."""
        excluded = set(exclude)
        members = [m for m in self._members.values() if m.address not in excluded] or self.members
        healthy = [m for m in members if m.healthy]
        serving = [m for m in healthy if m.serves(model)] if model else healthy
        candidates = serving or healthy or members
        if not candidates:
            raise LookupError("no engine is configured")
        return candidates

    def pick(self, model: str, exclude: Iterable[str] = ()) -> EngineMember:
        """The engine for the next request for `model`: the router's alone (it takes a turn)."""
        candidates = self._candidates(model, exclude)
        self._turn += 1
        # Fewest outstanding first; ties take turns, so sequential requests spread too.
        n = len(candidates)
        return min(enumerate(candidates), key=lambda pair: (pair[1].outstanding, (pair[0] - self._turn) % n))[1]

    def peek(self, model: str) -> EngineMember:
        """An engine that can answer questions about `model` (its card, a prompt's token count), without
        routing a request there: the turn does not move."""
        return self._candidates(model)[0]

    def card(self, model: str) -> pb.ModelCard | None:
        """`model`'s card as an engine serving it reports it (empty model: that engine's default)."""
        member = self.peek(model)
        return member.cards.get(model) or next(iter(member.cards.values()), None)

    def alternatives(self, model: str, exclude: Iterable[str]) -> bool:
        """Whether another healthy engine serves `model` (a request refused before its first token may go there)."""
        excluded = set(exclude)
        return any(m.healthy and m.address not in excluded and (not model or m.serves(model)) for m in self.members)

    def model_name(self, uid: str) -> str:
        """The registered model `uid` runs, as its engines report it ("" when no engine serves it)."""
        for member in self._members.values():
            card = member.cards.get(uid)
            if card is not None:
                return card.model_name
        return ""

    def mark_down(self, member: EngineMember) -> None:
        if member.healthy:
            log.warning("engine %s out of rotation: it refused a request as unavailable", member.address)
        member.healthy = False
