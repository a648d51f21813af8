"""`python -m services.metering prices import FILE | list`: the price book, through the live metering
service with an admin credential. An import is all or none; every problem is printed. (The gateway's
`POST /v1/prices` also checks the model names against the models it knows.)"""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

from llmserve.metering.v1 import metering_pb2 as pb

from services.contracts.metering_client import MeteringClient
from services.contracts.pricing import show
from services.metering.admin_cli import add_connection_arguments, admin_token, run_printing


def _rows(book: pb.ListPricesResponse) -> str:
    lines = [
        f"{p.price_id}  {p.model_name}  from {p.effective_from.ToDatetime().isoformat()}Z  per 1M tokens:"
        f" prompt {show(p.prompt_micro, p.currency)}, cached {show(p.cached_prompt_micro, p.currency)},"
        f" completion {show(p.completion_micro, p.currency)}"
        for p in book.prices
    ]
    return "\n".join(lines) or "no prices"


async def _run(args: argparse.Namespace, token: str | None) -> str:
    async with MeteringClient(args.addr, token) as client:
        if args.command == "import":
            kind = args.format or ("csv" if args.file.suffix == ".csv" else "yaml")
            request = pb.ImportPricesRequest(
                content=args.file.read_text(), format=kind, actor=f"cli:{getpass.getuser()}"
            )
            return _rows(await client.import_prices(request))
        return _rows(await client.list_prices(args.model))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.metering prices", description=__doc__)
    add_connection_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    importing = commands.add_parser("import", help="add the prices of a YAML or CSV file")
    importing.add_argument("file", type=Path)
    importing.add_argument("--format", choices=("yaml", "csv"), help="default: by the file's suffix")
    commands.add_parser("list").add_argument("--model", default="")
    args = parser.parse_args(argv)
    run_printing(args, _run(args, admin_token(args)))
