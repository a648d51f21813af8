"""Manage the internal plane's callers (tokens shown once; the callers file keeps digests only):

    python -m services.service_auth init                          # the built-in gateway, admin, engine
    python -m services.service_auth add NAME --roles generate     # prints the token once
    python -m services.service_auth rotate NAME [--grace-seconds 3600]
    python -m services.service_auth remove NAME
    python -m services.service_auth list

Options go before the command's arguments' end, e.g. `--dir var/credentials` (the default)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from services.service_auth.callers import ROLES
from services.service_auth.provision import add_caller, ensure_credentials, list_callers, remove_caller, rotate_caller


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.service_auth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", type=Path, default=Path("var/credentials"))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="make the built-in callers' tokens once")
    add = commands.add_parser("add", help="a new caller; prints its token once")
    add.add_argument("name")
    add.add_argument("--roles", required=True, help=f"comma-separated: {', '.join(sorted(ROLES))}")
    rotate = commands.add_parser("rotate", help="a new token; the old one works for the grace period")
    rotate.add_argument("name")
    rotate.add_argument("--grace-seconds", type=float, default=3600.0)
    remove = commands.add_parser("remove", help="refuse the caller's tokens from now on")
    remove.add_argument("name")
    commands.add_parser("list", help="callers, roles and token digests (never tokens)")
    for sub in commands.choices.values():
        sub.add_argument("--dir", type=Path, default=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.command == "init":
            callers = ensure_credentials(args.dir)
            print(
                f"credentials in {args.dir}: {callers.name} (for the engine and metering),"
                " gateway.token, admin.token, engine.token"
            )
        elif args.command == "add":
            print(add_caller(args.dir, args.name, [r.strip() for r in args.roles.split(",") if r.strip()]))
        elif args.command == "rotate":
            print(rotate_caller(args.dir, args.name, args.grace_seconds))
        elif args.command == "remove":
            remove_caller(args.dir, args.name)
        else:
            now = time.time()
            for entry in list_callers(args.dir):
                ends = (
                    ""
                    if entry.not_after is None
                    else (f"  expires in {entry.not_after - now:.0f} s" if entry.not_after > now else "  expired")
                )
                print(f"{entry.name:20} {','.join(sorted(entry.roles)):24} sha256:{entry.digest[:12]}{ends}")
    except ValueError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
