"""The gateway's durable record of custom registrations and of the models it launched (with how), kept
in one JSON file in the data folder and replaced atomically (temp file, fsync, rename) on every change.

What runs is the engines' truth, not this file's: a launch recorded here whose model no engine serves
(an engine restarted, a model died) is dropped when the gateway reconciles."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.gateway.fleet.registrations import BUILTINS, Registration

CATALOG_FILE = "models.json"


@dataclass(frozen=True)
class Launch:
    uid: str
    model_name: str
    replica: int = 1
    engine_args: dict[str, Any] = field(default_factory=dict)


class Catalog:
    """Several gateway workers (services.gateway.workers) share one file: each read looks at the file
    first and reloads it when another process replaced it; each change is made under a lock on the file,
    on the latest contents."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._custom: dict[str, Registration] = {}
        self._launches: dict[str, Launch] = {}
        self._seen: tuple[int, int, int] | None = None
        self._load()

    def _load(self) -> None:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            return
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return
        data = json.loads(self._path.read_text())
        self._custom = {r["model_name"]: Registration.from_record(r) for r in data.get("registrations", [])}
        self._launches = {given["uid"]: Launch(**given) for given in data.get("launches", [])}
        self._seen = seen

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Holds the lock, with the latest contents loaded; the caller changes them and saves."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._load()
            yield

    # Registrations

    def registrations(self) -> list[Registration]:
        self._load()
        return [*BUILTINS.values(), *self._custom.values()]

    def registration(self, name: str) -> Registration | None:
        self._load()
        return BUILTINS.get(name) or self._custom.get(name)

    def register(self, registration: Registration) -> None:
        with self._changing():
            self._custom[registration.model_name] = registration
            self._save()

    def unregister(self, name: str) -> bool:
        with self._changing():
            if self._custom.pop(name, None) is None:
                return False
            self._save()
            return True

    # Launches

    def launches(self) -> dict[str, Launch]:
        self._load()
        return dict(self._launches)

    def add_launch(self, launch: Launch) -> None:
        with self._changing():
            self._launches[launch.uid] = launch
            self._save()

    def remove_launches(self, uids: list[str]) -> None:
        with self._changing():
            if any(self._launches.pop(uid, None) for uid in uids):
                self._save()

    def _save(self) -> None:
        data = {
            "registrations": [r.to_record() for r in self._custom.values()],
            "launches": [asdict(launch) for launch in self._launches.values()],
        }
        temporary = self._path.with_suffix(f".tmp-{os.getpid()}")
        with temporary.open("w") as file:
            json.dump(data, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self._path)
        stat = os.stat(self._path)
        self._seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
