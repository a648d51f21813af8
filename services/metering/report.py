"""Prints usage totals by model and API key for a time range, the same rolled up by team and organisation
(by where each key sits now), then each limited key's, team's and organisation's standing (its limits,
what it used and what remains), from the live metering service."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from llmserve.metering.v1 import metering_pb2 as pb

from services.contracts.metering_client import MeteringClient
from services.contracts.pricing import show
from services.contracts.usage_terms import BUDGET_PERIOD_NAMES
from services.metering.admin_cli import add_connection_arguments, admin_token, run_printing
from services.metering.rollups import TOTAL_FIELDS


def _when(text: str) -> datetime:
    """ISO time (UTC if no zone), or a duration back from now: 15m, 2h, 7d."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def render(rows: list[pb.TotalsRow], currency: str = "") -> str:
    """The totals; with a price book, each row's cost (exact, in the book's currency) and unpriced requests."""
    header = (
        f"{'model':<28} {'key / caller':<16} {'requests':>9} {'ok':>7} {'abort':>6} {'error':>6}"
        f" {'prompt':>10} {'completion':>11} {'cached':>9} {'cost ' + (currency or '-'):>20} {'unpriced':>8}"
    )
    lines = [header, "-" * len(header)]
    sums = pb.Totals()
    for row in rows:
        t = row.totals
        lines.append(
            f"{row.model:<28} {row.api_key_id or f'caller:{row.caller}':<16} {t.requests:>9} {t.ok_requests:>7}"
            f" {t.aborted_requests:>6}"
            f" {t.failed_requests:>6} {t.prompt_tokens:>10} {t.completion_tokens:>11} {t.cached_tokens:>9}"
            f" {_money(t.cost_micro):>20} {t.unpriced_requests:>8}"
        )
        # The integer sums (every field but the generation seconds).
        for name in TOTAL_FIELDS[:-1]:
            setattr(sums, name, getattr(sums, name) + getattr(t, name))
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<28} {'':<16} {sums.requests:>9} {sums.ok_requests:>7} {sums.aborted_requests:>6}"
        f" {sums.failed_requests:>6} {sums.prompt_tokens:>10} {sums.completion_tokens:>11} {sums.cached_tokens:>9}"
        f" {_money(sums.cost_micro):>20} {sums.unpriced_requests:>8}"
    )
    return "\n".join(lines)


def render_accounts(rows: list[pb.TotalsRow], keys: list[pb.ApiKey]) -> str:
    """The range's totals per team and per organisation (keys in neither are left out)."""
    place = {k.key_id: k for k in keys}
    sums: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        key = place.get(row.api_key_id)
        if key is None:
            continue
        for level, subject in (("team", key.team_id), ("organization", key.org_id)):
            if subject:
                cell = sums.setdefault((level, subject), [0, 0, 0])
                cell[0] += row.totals.requests
                cell[1] += row.totals.prompt_tokens
                cell[2] += row.totals.completion_tokens
    if not sums:
        return "no key in a team or organization"
    header = f"{'level':<13} {'id':<22} {'requests':>9} {'prompt':>10} {'completion':>11}"
    lines = [header, "-" * len(header)]
    for (level, subject), (requests, prompt, completion) in sorted(sums.items()):
        lines.append(f"{level:<13} {subject:<22} {requests:>9} {prompt:>10} {completion:>11}")
    return "\n".join(lines)


def _money(micro: int) -> str:
    return show(micro, "").strip()


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def render_standings(standings: list[pb.Standing]) -> str:
    if not standings:
        return "nothing has limits"
    header = (
        f"{'key':<16} {'req/min':>9} {'used':>6} {'tok/min':>9} {'used':>9} {'budget':>11} {'period':>6}"
        f" {'used':>11} {'reserved':>9} {'remaining':>11}"
    )
    lines = [header, "-" * len(header)]
    for s in standings:
        limits = s.limits
        rpm = limits.requests_per_minute if limits.HasField("requests_per_minute") else None
        tpm = limits.tokens_per_minute if limits.HasField("tokens_per_minute") else None
        budget = limits.token_budget if limits.HasField("token_budget") else None
        remaining = s.remaining_budget if s.HasField("remaining_budget") else None
        period = BUDGET_PERIOD_NAMES.get(limits.budget_period, "total")
        lines.append(
            f"{s.api_key_id:<16} {_limit(rpm):>9} {s.requests_last_minute:>6} {_limit(tpm):>9}"
            f" {s.tokens_last_minute:>9}"
            f" {_limit(budget):>11} {period:>6} {s.budget_used:>11}"
            f" {s.reserved_tokens:>9} {_limit(remaining):>11}"
        )
    return "\n".join(lines)


async def report(
    address: str,
    start: datetime | None,
    end: datetime | None,
    model: str,
    key: str,
    token: str | None = None,
    model_name: str = "",
) -> str:
    request = pb.GetTotalsRequest(
        model=model,
        model_name=model_name,
        api_key_id=key,
        group_by_model=True,
        group_by_api_key=True,
        group_by_caller=True,
    )
    if start is not None:
        getattr(request.range, "from").FromDatetime(start)
    if end is not None:
        request.range.to.FromDatetime(end)
    async with MeteringClient(address, token) as client:
        answer = await client.totals_answer(request)
        rows = list(answer.rows)
        accounts = render_accounts(rows, await client.list_keys(include_revoked=True))
        limited = [k.api_key_id for k in await client.list_limits() if not key or k.api_key_id == key]
        standings = [await client.standing(k) for k in limited]
        counters = await client.counters()
    return (
        f"{render(rows, answer.currency)}\n\nper team and organization:\n{accounts}\n\n{render_unbilled(counters)}"
        f"\n\nlimits per key, team and organization (now):\n{render_standings(standings)}"
    )


def render_unbilled(counters: pb.GetCountersResponse) -> str:
    """What metering refused (never billed; each a dead letter at its sender) and settled reservations
    whose event never came (they still count against their key's limits). All time, every replica."""
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(counters.events_rejected_by_reason.items()))
    return (
        f"events refused (never billed): {counters.events_rejected}{f' ({reasons})' if reasons else ''}\n"
        f"reservations settled without their event: {counters.reservations_without_event}"
        f" ({counters.reservation_tokens_without_event} tokens)"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.metering report", description=__doc__)
    add_connection_arguments(parser)
    parser.add_argument(
        "--from", dest="start", type=_when, help="ISO time or 15m / 2h / 7d ago (default: the beginning)"
    )
    parser.add_argument("--to", dest="end", type=_when, help="ISO time (default: now)")
    parser.add_argument("--model", default="", help="a served model (a launch's uid)")
    parser.add_argument("--model-name", default="", help="a registered model: every uid that runs it")
    parser.add_argument("--key", default="", help="an API key id")
    args = parser.parse_args(argv)
    token = admin_token(args)
    run_printing(args, report(args.addr, args.start, args.end, args.model, args.key, token, args.model_name))
