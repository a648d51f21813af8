"""The versioned schema: numbered SQL files in migrations/, each applied once and recorded in
`schema_migrations` (version, name, time). Both stores apply the same files; they are written in SQL
that SQLite and PostgreSQL read alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    script: str

    def statements(self) -> Iterator[str]:
        """Its statements (no `;` inside a statement; `--` comment lines dropped)."""
        lines = [line for line in self.script.splitlines() if not line.lstrip().startswith("--")]
        for statement in "\n".join(lines).split(";"):
            if statement.strip():
                yield statement.strip()


def _load() -> list[Migration]:
    migrations = []
    for path in sorted(FOLDER.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        migrations.append(Migration(int(number), name, path.read_text()))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations must be numbered 1, 2, 3, ... without gaps; found {versions}")
    return migrations


MIGRATIONS = _load()
