"""The test session's internal credentials, made once per session in a temporary folder: the default
callers (gateway, admin) plus a `tester` with both roles for the tests' own gRPC clients."""

from __future__ import annotations

import tempfile
from pathlib import Path

from services.contracts.engine_client import EngineClient
from services.contracts.metering_client import MeteringClient
from services.service_auth import ADMIN, GATEWAY, read_token
from services.service_auth.provision import DEFAULT_CALLERS, ensure_credentials

DIRECTORY = Path(tempfile.mkdtemp(prefix="llmserve-test-credentials-"))
CALLERS_FILE = ensure_credentials(DIRECTORY, {**DEFAULT_CALLERS, "tester": (GATEWAY, ADMIN)})
GATEWAY_TOKEN_FILE = DIRECTORY / "gateway.token"
ADMIN_TOKEN = read_token(DIRECTORY / "admin.token")
GATEWAY_TOKEN = read_token(GATEWAY_TOKEN_FILE)
TESTER_TOKEN = read_token(DIRECTORY / "tester.token")


def engine_client(address: str) -> EngineClient:
    return EngineClient(address, TESTER_TOKEN)


def metering_client(address: str) -> MeteringClient:
    return MeteringClient(address, TESTER_TOKEN)
