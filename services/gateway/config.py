"""Gateway settings, from `GATEWAY_*` environment variables; invalid values stop the start."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.service_auth import read_token


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    # Gateway processes accepting on the port (services.gateway.workers); each worker keeps its own
    # outbox and identity in DATA_DIR/workers/<slot>.
    workers: int = Field(1, ge=1, le=64)
    # Set by the supervisor for its workers: listen with SO_REUSEPORT beside the other workers, and keep the
    # model catalog (shared) there (default: DATA_DIR).
    reuse_port: bool = False
    catalog_dir: Path | None = None
    # The engines, comma-separated `host:port`; a DNS name counts as every address it resolves to, looked
    # up again at each poll (compose --scale, a Kubernetes headless Service).
    engine_addr: str = "127.0.0.1:50051"
    # How often each engine is asked for its models and load (and an unhealthy one retried).
    engine_poll_seconds: float = Field(2.0, gt=0)
    # Carry every stream to an engine on one GenerateMany call, which sends all the tokens one engine step
    # made in one message (off: one Generate call, and one message per token, per stream).
    multiplex_engine_streams: bool = True
    # Bearer keys as `key_id:secret` pairs, comma-separated, and/or a file with one pair per line.
    # None configured: the API is open (a warning says so at start).
    api_keys: str = ""
    api_keys_file: Path | None = None
    # Always end a stream with the usage chunk, as vLLM's --enable-force-include-usage does.
    # Off: the client's stream_options.include_usage decides.
    force_include_usage: bool = True
    # Key ids (of the API keys above) that may also read /metrics and the API docs.
    admin_key_ids: str = ""
    # /metrics without a key even when keys are configured (a scraper on a private network).
    metrics_open: bool = False
    # Generations in flight before 429; each prompt of a completions request counts as one.
    max_in_flight: int = Field(256, ge=1)
    max_prompts_per_request: int = Field(64, ge=1)
    # Documents (pairs) of one rerank or score request: refused with 400 above it, before any work.
    max_score_documents: int = Field(256, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # The whole body must arrive within this, or 408 (a body trickled in a byte a second holds a slot).
    body_timeout_seconds: float = Field(30.0, gt=0)
    # Connections: HTTP keep-alive idle time, the time a request's headers may take (from the connection's
    # start or the previous response), and the open connections (beyond them uvicorn answers 503).
    keep_alive_seconds: float = Field(5.0, gt=0)
    header_timeout_seconds: float = Field(10.0, gt=0)
    max_connections: int = Field(2048, ge=1)
    request_timeout_seconds: float = Field(600.0, gt=0)
    # On SIGTERM: time in-flight requests get to finish; then they end with their usage chunk, an error
    # event and [DONE]. The process needs about this plus settle_timeout_seconds (give Docker more).
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    # How long to wait for the engine's final usage after a client went away.
    settle_timeout_seconds: float = Field(15.0, gt=0)
    # Usage events go to the metering service at this address; empty: metering off.
    metering_addr: str = ""
    # This gateway's credential on the engine and metering (services.service_auth; `make credentials`).
    service_token_file: Path | None = None
    # The outbox of undelivered usage events, the instance id and the limits last read live here.
    data_dir: Path = Path("var/gateway")
    # Names this gateway in usage events (idempotency is per source + event id); default: made once
    # and kept in the data directory.
    instance_id: str = ""
    usage_batch_size: int = Field(500, ge=1)
    # On shutdown, time to deliver the outbox to metering before the rest stays on disk for the next start.
    usage_drain_seconds: float = Field(10.0, ge=0)
    # Limits per API key (kept in metering): how often this gateway learns which keys are limited, how
    # long its reservations count without a renewal (a gateway that dies frees them after this), and
    # whether a limited key's requests go through unreserved when metering cannot be reached.
    limits_poll_seconds: float = Field(1.0, gt=0)
    limits_lease_seconds: float = Field(30.0, gt=0, le=3600)
    limits_fail_open: bool = False
    # Prefix caching across API keys: off (the default), each key's requests reuse only the key's own cached
    # prefixes (vLLM's cache_salt), so cached_tokens cannot tell one key what another sent; on, keys share
    # them (more hits where tenants share prompts and trust each other).
    share_prefix_cache: bool = False
    # Images in chat (`image_url` parts): data: URIs always; http(s) URLs only when fetching is on, to
    # the allowed hosts (comma-separated; empty: any public host), never to non-public addresses unless
    # allowed.
    image_max_bytes: int = Field(8 * 1024 * 1024, ge=1)
    image_fetch: bool = False
    image_allowed_hosts: str = ""
    image_allow_private_addresses: bool = False
    image_fetch_timeout_seconds: float = Field(10.0, gt=0)
    image_max_redirects: int = Field(3, ge=0)
    # Read from the image's header before anything decodes it (a small file can declare 100 M pixels).
    image_max_pixels: int = Field(16 * 1024 * 1024, ge=1)
    image_max_side: int = Field(8192, ge=1)
    log_level: str = "INFO"

    def service_token(self) -> str | None:
        return read_token(self.service_token_file) if self.service_token_file else None

    def source_id(self) -> str:
        """The configured instance id, or the one kept in the data directory (made once, atomically:
        a crash while writing it leaves either no file or a whole one, never an empty one)."""
        if self.instance_id:
            return self.instance_id
        path = self.data_dir / "instance-id"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".tmp-{os.getpid()}")
            with temporary.open("w") as file:
                file.write(f"gateway-{uuid.uuid4().hex[:12]}\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            directory = os.open(self.data_dir, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        source = path.read_text().strip()
        if not source:
            raise ValueError(f"{path} is empty: delete it (a new id is made) or set GATEWAY_INSTANCE_ID")
        return source
