"""The gateway's durable record of custom registrations and of the models it launched (with how), kept
in one JSON file in the data folder and replaced atomically (temp file, fsync, rename) on every change.

What runs is the engines' truth, not this file's: a launch recorded here whose model no engine serves
(an engine restarted, a model died) is dropped when the gateway reconciles."""

from __future__ import annotations

import json
import os
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
    def __init__(self, path: Path) -> None:
        self._path = path
        self._custom: dict[str, Registration] = {}
        self._launches: dict[str, Launch] = {}
        if path.exists():
            data = json.loads(path.read_text())
            self._custom = {r["model_name"]: Registration.from_record(r) for r in data.get("registrations", [])}
            self._launches = {l["uid"]: Launch(**l) for l in data.get("launches", [])}

    # Registrations

    def registrations(self) -> list[Registration]:
        return [*BUILTINS.values(), *self._custom.values()]

    def registration(self, name: str) -> Registration | None:
        return BUILTINS.get(name) or self._custom.get(name)

    def register(self, registration: Registration) -> None:
        self._custom[registration.model_name] = registration
        self._save()

    def unregister(self, name: str) -> bool:
        if self._custom.pop(name, None) is None:
            return False
        self._save()
        return True

    # Launches

    def launches(self) -> dict[str, Launch]:
        return dict(self._launches)

    def add_launch(self, launch: Launch) -> None:
        self._launches[launch.uid] = launch
        self._save()

    def remove_launches(self, uids: list[str]) -> None:
        if any(self._launches.pop(uid, None) for uid in uids):
            self._save()

    def _save(self) -> None:
        data = {
            "registrations": [r.to_record() for r in self._custom.values()],
            "launches": [asdict(l) for l in self._launches.values()],
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_suffix(f".tmp-{os.getpid()}")
        with temporary.open("w") as file:
            json.dump(data, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self._path)
