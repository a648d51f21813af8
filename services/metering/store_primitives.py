"""What every part of the usage store builds on, declared once: a transaction, a statement, a batch of
statements, the change number of keys, teams, organisations, limits and prices (with its audit row), and
a cache kept while that number stays the same. services.metering.store and its two stores implement them;
the parts (keys, accounts, prices, reservations, re-ratings, reconciliation) use them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

_T = TypeVar("_T")


class StorePrimitives(ABC):
    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Runs one statement written with `?` placeholders; its rows."""

    @abstractmethod
    def _many(self, sql: str, rows: Sequence[Sequence[object]]) -> None: ...

    @abstractmethod
    def _next_version(self) -> int:
        """Inside a transaction: the next change number."""

    @abstractmethod
    def _audit(self, now: float, version: int, actor: str, action: str, subject: str, detail: dict) -> None: ...

    @abstractmethod
    def _cached(self, name: str) -> Any: ...

    @abstractmethod
    def _cache(self, name: str, value: _T) -> _T: ...
