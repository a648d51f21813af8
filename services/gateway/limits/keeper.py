"""The gateway's side of the limits of keys, teams and organisations: which are limited (polled from
metering, the one authority every replica shares), a reservation before a request runs whose key, team
or organisation is limited, its settlement to the exact usage when the request ends, and the lease that
keeps this gateway's open reservations counting (a gateway that dies stops renewing it, and its
reservations stop counting)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from llmserve.metering.v1 import metering_pb2 as mpb

from services.contracts.metering_client import MeteringClient
from services.contracts.pricing import Price, event_cost
from services.gateway.errors import ApiError
from services.gateway.limits.poked_poll import PokedPoll
from services.gateway.state_file import replace_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LimitsSettings:
    source: str
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    # When metering cannot be reached: refuse a limited key's requests (503), or let them through.
    fail_open: bool = False
    # The limited keys as last read, kept on disk: a gateway restarted while metering is down knows them.
    known_limits_file: Path | None = None


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "1h2m3s"."""
    whole = int(seconds + 0.999)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def levels(standing: mpb.Standing) -> list[mpb.Standing]:
    """The key's standing and those of its team and organisation."""
    return [standing, *standing.levels]


def any_limited(standing: mpb.Standing) -> bool:
    return any(level.limited for level in levels(standing))


def _tightest(standing: mpb.Standing, remaining: str) -> mpb.Standing | None:
    """The level with the least of `remaining` left (the one that binds), if any level has that limit."""
    limited = [level for level in levels(standing) if level.HasField(remaining)]
    return min(limited, key=lambda level: getattr(level, remaining), default=None)


def rate_limit_headers(standing: mpb.Standing) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, each from the level (key, team or organisation) that binds."""
    headers: dict[str, str] = {}
    if level := _tightest(standing, "remaining_requests"):
        headers["x-ratelimit-limit-requests"] = str(level.limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(level.remaining_requests)
        headers["x-ratelimit-reset-requests"] = _duration(level.reset_requests_seconds)
    if level := _tightest(standing, "remaining_tokens"):
        headers["x-ratelimit-limit-tokens"] = str(level.limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(level.remaining_tokens)
        headers["x-ratelimit-reset-tokens"] = _duration(level.reset_tokens_seconds)
    if level := _tightest(standing, "remaining_budget"):
        headers["x-ratelimit-limit-budget-tokens"] = str(level.limits.token_budget)
        headers["x-ratelimit-remaining-budget-tokens"] = str(level.remaining_budget)
    return headers


def _refusal(standing: mpb.Standing, refusal: str, reason: str) -> ApiError:
    """OpenAI's 429 with the key's headers; `retry-after` only where waiting helps (a total budget never
    starts over)."""
    headers = rate_limit_headers(standing)
    if refusal == "insufficient_quota":
        wait = max(level.budget_reset_seconds for level in levels(standing))
        # The budget does not come back within a retry's patience: the SDK should not retry.
        headers["x-should-retry"] = "false"
    else:
        wait = max(max(level.reset_requests_seconds, level.reset_tokens_seconds) for level in levels(standing))
    if wait > 0 or refusal != "insufficient_quota":
        headers["retry-after"] = str(max(1, int(wait + 0.999)))
    return ApiError(429, reason, type_=refusal, code=refusal, headers=headers)


class LimitsKeeper:
    def __init__(
        self,
        metering: MeteringClient,
        settings: LimitsSettings,
        on_poll: Callable[[], None] | None = None,
        levels: Callable[[str], tuple[str, ...]] | None = None,
    ) -> None:
        """levels: a key's team and organisation (issued keys), whose limits also bind it."""
        self._on_poll = on_poll
        self._levels = levels or (lambda key_id: ())
        self._metering = metering
        self._settings = settings
        self._limited: dict[str, mpb.KeyLimits] = {}
        # Until the limits have been read once (now, or by an earlier run of this gateway: its file), any
        # key may be limited: with fail_open off each request asks metering (a new gateway started while
        # metering is down refuses rather than serving spent keys).
        self._known = False
        self._written: bytes | None = None
        # The reservations this gateway holds open, by event id, with the price their cost was reserved at.
        # Each open reservation's price, with the request's images and embedding inputs (priced per unit).
        self._open: dict[str, tuple[Price | None, int, int]] = {}
        self._tasks: list[asyncio.Task] = []
        self._settling: set[asyncio.Task] = set()
        self._poll = PokedPoll(self._poll_once, settings.poll_seconds)

    async def start(self) -> None:
        self._read_known()
        await self._poll_once()
        self._tasks = [asyncio.create_task(self._poll.run()), asyncio.create_task(self._renew_forever())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._settling:
            await asyncio.wait(self._settling, timeout=5)

    async def _poll_once(self) -> None:
        try:
            self._limited = {k.api_key_id: k for k in await self._metering.list_limits()}
            self._known = True
            self._write_known()
            if self._on_poll is not None:
                self._on_poll()
        except grpc.aio.AioRpcError as error:
            log.warning("could not read the key limits from metering: %s", error.code().name)

    def _read_known(self) -> None:
        path = self._settings.known_limits_file
        if path is None or not path.exists():
            return
        try:
            data = path.read_bytes()
            known = mpb.ListLimitsResponse.FromString(data)
        except (OSError, DecodeError) as error:
            log.warning("ignoring %s: %s", path, error)
            return
        self._limited = {k.api_key_id: k for k in known.limits}
        self._known = True
        self._written = data

    def _write_known(self) -> None:
        """Atomically, and only when the limits changed (a poll a second must not mean a write a second)."""
        path = self._settings.known_limits_file
        if path is None:
            return
        data = mpb.ListLimitsResponse(limits=[self._limited[k] for k in sorted(self._limited)]).SerializeToString()
        if data == self._written:
            return
        if replace_file(path, data):
            self._written = data

    def poke(self) -> None:
        """Something changed in metering (its key watch said so): read the limits now, not at the next poll."""
        self._poll.poke()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_seconds / 3)
            try:
                await self._metering.renew_lease(self._settings.source, self._settings.lease_seconds)
            except grpc.aio.AioRpcError as error:
                log.warning("could not renew the reservations' lease: %s", error.code().name)

    def _subjects(self, api_key_id: str) -> tuple[str, ...]:
        return (api_key_id, *self._levels(api_key_id))

    def limited(self, api_key_id: str) -> bool:
        """Whether the key, its team or its organisation has limits (no extra call otherwise)."""
        if not (self._known or self._settings.fail_open):
            return True
        return any(subject in self._limited for subject in self._subjects(api_key_id))

    async def refuse_if_spent(self, api_key_id: str) -> None:
        """Before a request's prompt is tokenized to size its reservation: a key whose token budget, or
        whose team's or organisation's, is spent is refused without the engine doing that work."""
        budgets = [self._limited.get(s) for s in self._subjects(api_key_id)]
        if not any(
            limits is not None and (limits.HasField("token_budget") or limits.HasField("money_budget_micro"))
            for limits in budgets
        ):
            return
        try:
            standing = await self._metering.standing(api_key_id)
        except grpc.aio.AioRpcError:
            return  # the reservation that follows decides, fail-open or not
        for level in levels(standing):
            if level.limited and level.HasField("remaining_money_micro") and level.remaining_money_micro == 0:
                whose = "This key's" if level.level == "key" else f"The {level.level} {level.api_key_id}'s"
                spent = f"budget {level.limits.money_budget_micro}, used {level.money_used_micro} (micro-units)"
                raise _refusal(standing, "insufficient_quota", f"{whose} money budget is spent: {spent}.")
            if level.limited and level.HasField("remaining_budget") and level.remaining_budget == 0:
                whose = "This key's" if level.level == "key" else f"The {level.level} {level.api_key_id}'s"
                spent = f"budget {level.limits.token_budget}, used {level.budget_used}"
                raise _refusal(standing, "insufficient_quota", f"{whose} token budget is spent: {spent}.")

    async def reserve(
        self,
        event_id: str,
        api_key_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        price: Price | None = None,
        images: int = 0,
        embedding_inputs: int = 0,
    ) -> dict[str, str]:
        """Takes the reservation of the prompt and the completion cap (and, with a price, their cost, the
        prompt counted uncached, with its images and embedding inputs) and returns the rate-limit headers,
        or raises OpenAI's 429."""
        cost = 0
        if price is not None:
            cost = event_cost(prompt_tokens, 0, completion_tokens, price, images, embedding_inputs)
        request = mpb.ReserveRequest(
            source=self._settings.source,
            event_id=event_id,
            api_key_id=api_key_id,
            tokens=prompt_tokens + completion_tokens,
            lease_seconds=self._settings.lease_seconds,
            cost_micro=cost,
        )
        try:
            answer = await self._metering.reserve(request)
        except grpc.aio.AioRpcError as error:
            if self._settings.fail_open:
                log.warning(
                    "metering unreachable (%s): %s's request let through unreserved", error.code().name, api_key_id
                )
                return {}
            raise ApiError(
                503,
                "The usage limits of this key cannot be checked right now; retry shortly.",
                code="limits_unavailable",
            ) from error
        headers = rate_limit_headers(answer.standing)
        if not any_limited(answer.standing):
            for subject in self._subjects(api_key_id):
                self._limited.pop(subject, None)
            return headers
        if not answer.granted:
            raise _refusal(answer.standing, answer.refusal, answer.reason)
        self._open[event_id] = (price, images, embedding_inputs)
        return headers

    def settle(self, event_id: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> None:
        """The request ended having used these tokens: the rest of its reservation (tokens and cost) comes
        back now. (Its usage event replaces the reservation when metering records it, whichever comes first.)"""
        if event_id not in self._open:
            return
        price, images, inputs = self._open.pop(event_id)
        tokens = prompt_tokens + completion_tokens
        cost = None
        if price is not None:
            cost = event_cost(prompt_tokens, cached_tokens, completion_tokens, price, images, inputs)
        task = asyncio.create_task(self._settle(event_id, tokens, cost))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, event_id: str, tokens: int, cost_micro: int | None) -> None:
        try:
            await self._metering.settle(self._settings.source, event_id, tokens, cost_micro)
        except grpc.aio.AioRpcError as error:
            log.warning("could not settle reservation %s: %s (its usage event will)", event_id, error.code().name)

    async def set_limits(self, limits: mpb.KeyLimits, actor: str, scope_org_id: str = "") -> mpb.Standing:
        standing = await self._metering.set_limits(limits, actor, scope_org_id)
        if standing.limited:
            self._limited[limits.api_key_id] = standing.limits
        else:
            self._limited.pop(limits.api_key_id, None)
        return standing

    async def standing(self, subject: str, scope_org_id: str = "") -> mpb.Standing:
        return await self._metering.standing(subject, scope_org_id)
