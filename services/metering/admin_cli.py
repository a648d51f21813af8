"""What the admin commands (report, keys) share: where metering is, the admin credential, and how a
refusal is told."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc

from services.service_auth import read_token


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--addr", default="127.0.0.1:50052", help="the metering service")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=Path(os.environ.get("METERING_ADMIN_TOKEN_FILE", "var/credentials/admin.token")),
        help="an admin credential (default: $METERING_ADMIN_TOKEN_FILE or var/credentials/admin.token, if it exists)",
    )


def admin_token(args: argparse.Namespace) -> str | None:
    return read_token(args.token_file) if args.token_file.exists() else None


def run_printing(args: argparse.Namespace, call: Coroutine[Any, Any, str]) -> None:
    """Prints what the call returns; a gRPC error ends the command with its status."""
    try:
        print(asyncio.run(call))
    except grpc.aio.AioRpcError as error:
        raise SystemExit(f"metering at {args.addr} answered {error.code().name}: {error.details()}") from None
