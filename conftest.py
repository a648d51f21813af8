"""Fixtures every test folder shares: one real PostgreSQL server for the session (tools/postgres.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from tools.postgres import PostgresServer

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def new_database(postgres_server: PostgresServer) -> Callable[[], str]:
    """Makes an empty database on the session's server; its URL."""
    return lambda: postgres_server.create_database(f"test_{next(_databases)}")
