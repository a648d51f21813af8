"""What the metering unit tests share: a store of each kind (SQLite, and PostgreSQL on the session's real
server), a fixed clock and a sample event."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from services.metering.events import UsageEvent
from services.metering.postgres_store import PostgresStore
from services.metering.sqlite_store import SqliteStore
from services.metering.store import UsageStore

NOW = 1_800_000_000.0


def event(i: int = 0, **changes: object) -> UsageEvent:
    base = UsageEvent(
        event_id=f"ev-{i}",
        source="gw-1",
        occurred_at=NOW - 30,
        model="m1",
        api_key_id="team-a",
        endpoint="/v1/chat/completions",
        streamed=True,
        finish_reason="stop",
        status="ok",
        prompt_tokens=10,
        completion_tokens=5,
        cached_tokens=2,
        time_to_first_token_seconds=0.1,
        generation_seconds=0.4,
        request_seconds=0.6,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], UsageStore]:
    """Opens the test's store (the same database each time it is called)."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "u.db")
    url = request.getfixturevalue("new_database")()
    return lambda: PostgresStore(url)
