"""Organisations and teams: what each holds, how their ids are made, what a change may ask, and where a
key sits among them (its Membership: the subjects whose limits it counts against, and the time zone of
their calendar periods)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.metering.account_errors import InvalidChange
from services.metering.limits import ORG_PREFIX, TEAM_PREFIX, UTC

MEMBER, ORG_ADMIN = "member", "org_admin"
ROLES = (MEMBER, ORG_ADMIN)


@dataclass(frozen=True)
class Organization:
    org_id: str
    name: str
    time_zone: str
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Team:
    team_id: str
    org_id: str
    name: str
    created_at: float
    allowed_models: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Membership:
    """A key's place: its team and organisation ('' where it has none) and their calendar's time zone."""

    key_id: str
    team_id: str = ""
    org_id: str = ""
    time_zone: str = UTC

    @property
    def subjects(self) -> tuple[str, ...]:
        """Every subject whose limits the key's requests count against, from the key up."""
        return tuple(s for s in (self.key_id, self.team_id, self.org_id) if s)


def new_org_id() -> str:
    return ORG_PREFIX + secrets.token_hex(8)


def new_team_id() -> str:
    return TEAM_PREFIX + secrets.token_hex(8)


def check_time_zone(name: str) -> str:
    name = name or UTC
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidChange(f"time_zone: {name!r} is not an IANA time zone (e.g. Europe/Paris)") from error
    return name


def check_role(role: str) -> str:
    role = role or MEMBER
    if role not in ROLES:
        raise InvalidChange(f"role: must be one of {', '.join(ROLES)}")
    return role


def in_scope(org_id: str, scope: str | None) -> bool:
    """Whether an actor confined to organisation `scope` (None: the operator) may see or change it."""
    return scope is None or org_id == scope
