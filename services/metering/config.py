"""Metering settings, from `METERING_*` environment variables; invalid values stop the start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
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
    # Raw events are kept this long after they occurred (0: for good), then pruned in small batches off the
    # request path; their usage stays in the rollups and running totals. At least max_event_age_seconds, so
    # an event can never arrive again after its first copy is pruned (deduplication stays exact).
    event_retention_seconds: float = Field(35 * 86400, ge=0)
    shutdown_grace_seconds: float = Field(5.0, ge=0)
    # Distinct model names that become Prometheus label values; later ones count under "other".
    max_model_labels: int = Field(100, ge=1)
    # Who may call (`name roles sha256` lines, made by `make credentials`); unset: open, with a warning.
    callers_file: Path | None = None
    reflection: bool = True
    log_level: str = "INFO"
    # A model with no price in force once the price book has any: "refuse" its requests at the gateways'
    # admission (fail closed), or "record" them flagged unpriced (reported, never taken as free).
    unpriced: Literal["refuse", "record"] = "refuse"
    # Where this replica pushes usage as CloudEvents batches (any replica may push what any committed);
    # unset: no push from here.
    export_url: str = ""
    # Where budget alerts (50/80/100 % of a token or money budget) are POSTed; unset: none from here.
    alert_url: str = ""
    alert_check_seconds: float = Field(5.0, gt=0)
    # A file holding the secret that signs both (Standard Webhooks); unset: unsigned.
    webhook_secret_file: Path | None = None
    delivery_timeout_seconds: float = Field(10.0, gt=0)
    delivery_max_backoff_seconds: float = Field(60.0, gt=0)
    # Usage commits per CloudEvents POST.
    export_commits_per_post: int = Field(8, ge=1, le=1000)

    @model_validator(mode="after")
    def _retention_covers_event_age(self) -> MeteringSettings:
        if 0 < self.event_retention_seconds < self.max_event_age_seconds:
            raise ValueError(
                f"METERING_EVENT_RETENTION_SECONDS ({self.event_retention_seconds:g}) must be 0 (keep for good) or"
                f" at least METERING_MAX_EVENT_AGE_SECONDS ({self.max_event_age_seconds:g}): a copy of a pruned"
                " event could still arrive and be counted again"
            )
        return self

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
