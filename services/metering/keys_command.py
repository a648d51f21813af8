"""`python -m services.metering keys create|list|show|update|rotate|revoke`: API keys, and
`python -m services.metering orgs create|list` / `teams create|list|update`: the organisations and teams
keys belong to, through the live metering service with an admin credential. A new or rotated key's
secret is printed once."""

from __future__ import annotations

import argparse
import getpass
from datetime import UTC, datetime

from google.protobuf.json_format import MessageToDict
from llmserve.metering.v1 import metering_pb2 as pb

from services.contracts.metering_client import MeteringClient
from services.metering.admin_cli import add_connection_arguments, admin_token, run_printing


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _show(message: object) -> str:
    fields = MessageToDict(message, preserving_proto_field_name=True)  # type: ignore[arg-type]
    return "\n".join(f"{name}: {value}" for name, value in fields.items())


async def _run(args: argparse.Namespace, token: str | None) -> str:
    actor = f"cli:{getpass.getuser()}"
    async with MeteringClient(args.addr, token) as client:
        if args.command == "create":
            request = pb.CreateKeyRequest(name=args.name, allowed_models=args.model, actor=actor)
            request.team_id, request.org_id, request.role = args.team, args.org, args.role
            request.include_cost = args.include_cost
            if args.expires:
                request.expires_at.FromDatetime(args.expires)
            issued = await client.create_key(request)
            return f"{_show(issued.key)}\nsecret: {issued.secret}\n(the secret is shown this once)"
        if args.command == "list":
            keys = await client.list_keys(include_revoked=args.all)
            rows = [
                f"{k.key_id}  {k.display_prefix}…  {k.name}{'  (revoked)' if k.HasField('revoked_at') else ''}"
                for k in keys
            ]
            return "\n".join(rows) or "no keys"
        if args.command == "show":
            return _show(await client.get_key(args.key_id))
        if args.command == "update":
            request = pb.UpdateKeyRequest(key_id=args.key_id, actor=actor, clear_expiry=args.no_expiry)
            if args.name is not None:
                request.name = args.name
            if args.expires:
                request.expires_at.FromDatetime(args.expires)
            if args.models is not None:
                request.replace_allowed_models = True
                request.allowed_models.extend(m for m in args.models.split(",") if m)
            if args.team is not None:
                request.team_id = args.team
            if args.include_cost is not None:
                request.include_cost = args.include_cost
            return _show(await client.update_key(request))
        if args.command == "rotate":
            request = pb.RotateKeyRequest(key_id=args.key_id, grace_seconds=args.grace, actor=actor)
            issued = await client.rotate_key(request)
            return f"{_show(issued.key)}\nsecret: {issued.secret}\n(the secret is shown this once)"
        return _show(await client.revoke_key(args.key_id, actor))


async def _run_accounts(args: argparse.Namespace, token: str | None) -> str:
    actor = f"cli:{getpass.getuser()}"
    async with MeteringClient(args.addr, token) as client:
        if args.command == "org-create":
            request = pb.CreateOrganizationRequest(name=args.name, time_zone=args.time_zone, actor=actor)
            return _show(await client.create_organization(request))
        if args.command == "org-list":
            orgs = await client.list_organizations()
            return "\n".join(f"{o.org_id}  {o.name}  {o.time_zone}" for o in orgs) or "no organizations"
        if args.command == "team-create":
            request = pb.CreateTeamRequest(org_id=args.org, name=args.name, allowed_models=args.model, actor=actor)
            return _show(await client.create_team(request))
        if args.command == "team-list":
            teams = await client.list_teams(args.org)
            return "\n".join(f"{t.team_id}  {t.org_id}  {t.name}" for t in teams) or "no teams"
        request = pb.UpdateTeamRequest(team_id=args.team_id, actor=actor)
        if args.name is not None:
            request.name = args.name
        if args.models is not None:
            request.replace_allowed_models = True
            request.allowed_models.extend(m for m in args.models.split(",") if m)
        return _show(await client.update_team(request))


def accounts_main(kind: str, argv: list[str]) -> None:
    """kind: "orgs" or "teams"."""
    parser = argparse.ArgumentParser(prog=f"python -m services.metering {kind}", description=__doc__)
    add_connection_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    if kind == "orgs":
        create = commands.add_parser("create", help="a new organization")
        create.add_argument("--name", required=True)
        create.add_argument("--time-zone", default="UTC", help="IANA name its day and month budgets follow")
        commands.add_parser("list")
    else:
        create = commands.add_parser("create", help="a new team in an organization")
        create.add_argument("--org", required=True)
        create.add_argument("--name", required=True)
        create.add_argument("--model", action="append", default=[], help="an allowed model (repeat; none: all)")
        commands.add_parser("list").add_argument("--org", default="")
        update = commands.add_parser("update")
        update.add_argument("team_id")
        update.add_argument("--name")
        update.add_argument("--models", help="comma-separated allowed models (empty: all)")
    args = parser.parse_args(argv)
    args.command = f"{kind[:-1]}-{args.command}"
    run_printing(args, _run_accounts(args, admin_token(args)))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.metering keys", description=__doc__)
    add_connection_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="a new key; prints its secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--expires", type=_when, help="ISO time (UTC if no zone)")
    create.add_argument("--model", action="append", default=[], help="an allowed model (repeat; none: all)")
    create.add_argument("--team", default="", help="the team it belongs to")
    create.add_argument("--org", default="", help="its organization, for a key in no team")
    create.add_argument("--role", default="member", choices=("member", "org_admin"))
    create.add_argument("--include-cost", action="store_true", help="every response's usage carries its cost")
    listing = commands.add_parser("list")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    commands.add_parser("show").add_argument("key_id")
    update = commands.add_parser("update")
    update.add_argument("key_id")
    update.add_argument("--name")
    update.add_argument("--expires", type=_when)
    update.add_argument("--no-expiry", action="store_true")
    update.add_argument("--models", help="comma-separated allowed models (empty: all)")
    update.add_argument("--team", help="move it to this team ('': out of its team)")
    update.add_argument(
        "--include-cost", action=argparse.BooleanOptionalAction, help="every response's usage carries its cost"
    )
    rotate = commands.add_parser("rotate", help="a new secret; the old one works for --grace seconds")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", type=float, default=0.0)
    commands.add_parser("revoke").add_argument("key_id")
    args = parser.parse_args(argv)
    run_printing(args, _run(args, admin_token(args)))
