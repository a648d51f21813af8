"""Who bills a request: a gateway bills its own (it names itself as the request's caller, and the engine
holds the usage for it); anyone else is metered by the engine under its own name, whatever it sends, so
that no token goes unbilled."""

from __future__ import annotations

from dataclasses import dataclass

from services.service_auth import GATEWAY, Caller

# What the engine meters a request under when the server checks no credentials (no callers file).
ANONYMOUS_CALLER = "anonymous"


@dataclass(frozen=True)
class Billing:
    # The holder name the usage is held under for the caller that bills it ("" when the engine meters it).
    caller: str
    usage_context: bytes
    # The internal caller the engine meters it under ("" when its caller bills it).
    meter_as: str


def billing(named_caller: str, usage_context: bytes, caller: Caller | None) -> Billing:
    """`named_caller`: the holder name the request carries; `caller`: who the credential says is calling
    (None when the server checks none)."""
    if caller is None:
        # A server without a callers file: who calls is unknown.
        return Billing(named_caller, usage_context, "") if named_caller else Billing("", b"", ANONYMOUS_CALLER)
    if GATEWAY in caller.roles and named_caller:
        return Billing(named_caller, usage_context, "")
    return Billing("", b"", caller.name)
