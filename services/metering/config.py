"""Metering settings, from `METERING_*` environment variables; invalid values stop the start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MeteringSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERING_")

    host: str = "0.0.0.0"
    port: int = Field(50052, ge=0, le=65535)
    metrics_port: int = Field(9102, ge=0, le=65535)
    data_dir: Path = Path("var/metering")
    # postgresql://user:password@host:port/dbname: the store that several replicas share. Unset: SQLite in data_dir.
    database_url: str = ""
    # Events older than this, or further ahead than the allowed clock skew, are refused.
    max_event_age_seconds: float = Field(7 * 24 * 3600, gt=0)
    max_future_seconds: float = Field(300, ge=0)
    shutdown_grace_seconds: float = Field(5.0, ge=0)
    # Distinct model names that become Prometheus label values; later ones count under "other".
    max_model_labels: int = Field(100, ge=1)
    # Who may call (`name roles sha256` lines, made by `make credentials`); unset: open, with a warning.
    callers_file: Path | None = None
    reflection: bool = True
    log_level: str = "INFO"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "usage.sqlite3"

    @property
    def store_description(self) -> str:
        """Where usage is stored, with any password left out (for the log)."""
        if not self.database_url:
            return str(self.sqlite_path)
        scheme, _, rest = self.database_url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"
