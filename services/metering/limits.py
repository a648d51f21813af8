"""Limits and the decision on a reservation: requests and tokens per minute, and a token budget over a
period, set on a key, a team or an organisation (a subject: the id of one of them). The store gathers what
a subject has spent (recorded events plus reservations still counting) in one snapshot; this module
decides, naming the level that refuses, and says what remains. Calendar periods are in UTC, or in the
organisation's time zone."""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

WINDOW_SECONDS = 60.0
PERIODS = ("total", "day", "month")
RATE_LIMITED = "rate_limit_exceeded"
OUT_OF_QUOTA = "insufficient_quota"
UTC = "UTC"
# Levels from the narrowest; each subject's id starts with its level's prefix (a key's may be anything).
KEY, TEAM, ORGANIZATION = "key", "team", "organization"
TEAM_PREFIX, ORG_PREFIX = "team_", "org_"


def level_of(subject: str) -> str:
    if subject.startswith(TEAM_PREFIX):
        return TEAM
    return ORGANIZATION if subject.startswith(ORG_PREFIX) else KEY


@dataclass(frozen=True)
class KeyLimits:
    api_key_id: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    token_budget: int | None = None
    budget_period: str = "total"
    # Micro-units over the budget period (the price book's currency).
    money_budget_micro: int | None = None

    @property
    def any(self) -> bool:
        limits = (self.requests_per_minute, self.tokens_per_minute, self.token_budget, self.money_budget_micro)
        return any(v is not None for v in limits)


@dataclass(frozen=True)
class Spent:
    """What counts against a key now (one database snapshot)."""

    requests_last_minute: int = 0
    tokens_last_minute: int = 0
    budget_used: int = 0
    reserved_tokens: int = 0
    # The oldest request still in the per-minute window (metering's clock), or None.
    oldest_in_window: float | None = None
    # Micro-units in the budget's period: recorded costs plus what reservations hold.
    money_used: int = 0

    def plus(self, tokens: int, now: float, cost: int = 0) -> Spent:
        """What counts once a reservation of `tokens` (costing `cost`) taken at `now` is added (no second query)."""
        return Spent(
            requests_last_minute=self.requests_last_minute + 1,
            tokens_last_minute=self.tokens_last_minute + tokens,
            budget_used=self.budget_used + tokens,
            reserved_tokens=self.reserved_tokens + tokens,
            oldest_in_window=now if self.oldest_in_window is None else min(self.oldest_in_window, now),
            money_used=self.money_used + cost,
        )


@dataclass(frozen=True)
class Standing:
    limits: KeyLimits
    spent: Spent
    now: float
    time_zone: str = UTC

    @property
    def level(self) -> str:
        return level_of(self.limits.api_key_id)

    def _remaining(self, limit: int | None, used: int) -> int | None:
        return None if limit is None else max(0, limit - used)

    @property
    def remaining_requests(self) -> int | None:
        return self._remaining(self.limits.requests_per_minute, self.spent.requests_last_minute)

    @property
    def remaining_tokens(self) -> int | None:
        return self._remaining(self.limits.tokens_per_minute, self.spent.tokens_last_minute)

    @property
    def remaining_budget(self) -> int | None:
        return self._remaining(self.limits.token_budget, self.spent.budget_used)

    @property
    def remaining_money(self) -> int | None:
        return self._remaining(self.limits.money_budget_micro, self.spent.money_used)

    @property
    def window_reset_seconds(self) -> float:
        if self.spent.oldest_in_window is None:
            return 0.0
        return max(0.0, self.spent.oldest_in_window + WINDOW_SECONDS - self.now)

    @property
    def budget_reset_seconds(self) -> float:
        end = period_end(self.limits.budget_period, self.now, self.time_zone)
        return 0.0 if end is None else max(0.0, end - self.now)


@dataclass(frozen=True)
class Decision:
    granted: bool
    refusal: str = ""
    reason: str = ""


def _whose(subject: str) -> str:
    level = level_of(subject)
    return "This key's" if level == KEY else f"The {level} {subject}'s"


def decide(limits: KeyLimits, spent: Spent, tokens: int, cost: int = 0) -> Decision:
    """Whether one more request reserving `tokens` fits every limit of one subject (its level named in
    a refusal)."""
    whose = _whose(limits.api_key_id)
    inner = whose[0].lower() + whose[1:]
    if limits.requests_per_minute is not None and spent.requests_last_minute + 1 > limits.requests_per_minute:
        return Decision(
            False,
            RATE_LIMITED,
            f"{whose} rate limit reached for requests per minute: limit {limits.requests_per_minute}, "
            f"used {spent.requests_last_minute}.",
        )
    if limits.tokens_per_minute is not None:
        if tokens > limits.tokens_per_minute:
            return Decision(
                False,
                RATE_LIMITED,
                f"Request too large for {inner} tokens per minute: limit {limits.tokens_per_minute}, "
                f"requested {tokens} (prompt plus max_tokens). Lower max_tokens or the prompt.",
            )
        if spent.tokens_last_minute + tokens > limits.tokens_per_minute:
            return Decision(
                False,
                RATE_LIMITED,
                f"{whose} rate limit reached for tokens per minute: limit {limits.tokens_per_minute}, "
                f"used {spent.tokens_last_minute}, requested {tokens}.",
            )
    if limits.token_budget is not None and spent.budget_used + tokens > limits.token_budget:
        return Decision(
            False,
            OUT_OF_QUOTA,
            f"{whose} token budget ({limits.budget_period}) is spent: budget "
            f"{limits.token_budget}, used {spent.budget_used}, requested {tokens}.",
        )
    if limits.money_budget_micro is not None and spent.money_used + cost > limits.money_budget_micro:
        return Decision(
            False,
            OUT_OF_QUOTA,
            f"{whose} money budget ({limits.budget_period}) is spent: budget {limits.money_budget_micro}, used"
            f" {spent.money_used}, requested {cost} (micro-units).",
        )
    return Decision(True)


def period_start(period: str, now: float, time_zone: str = UTC) -> float:
    """The start of the budget period `now` falls in (in the time zone); 0 for a total budget."""
    if period == "total":
        return 0.0
    if time_zone == UTC:
        t = time.gmtime(now)
        day = 1 if period == "month" else t.tm_mday
        return float(calendar.timegm((t.tm_year, t.tm_mon, day, 0, 0, 0)))
    local = datetime.fromtimestamp(now, ZoneInfo(time_zone))
    start = local.replace(day=1 if period == "month" else local.day, hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp()


def period_end(period: str, now: float, time_zone: str = UTC) -> float | None:
    if period == "total":
        return None
    if time_zone == UTC and period == "day":
        return period_start("day", now) + 86400.0
    zone = ZoneInfo(time_zone)
    start = datetime.fromtimestamp(period_start(period, now, time_zone), zone)
    if period == "day":
        following = start.date() + timedelta(days=1)
    else:
        following = (start.replace(day=28) + timedelta(days=4)).date().replace(day=1)
    return datetime(following.year, following.month, following.day, tzinfo=zone).timestamp()
