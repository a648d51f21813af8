"""Terms of the usage contract that every side reads alike: a request's status from how it ended, and
budget periods by name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence

from llmserve.metering.v1 import metering_pb2 as mpb

REQUEST_STATUS = {"ok": mpb.REQUEST_STATUS_OK, "abort": mpb.REQUEST_STATUS_ABORT, "error": mpb.REQUEST_STATUS_ERROR}

BUDGET_PERIODS = {"total": mpb.BUDGET_PERIOD_TOTAL, "day": mpb.BUDGET_PERIOD_DAY, "month": mpb.BUDGET_PERIOD_MONTH}
# A limit set without a period counts over the key's whole life.
BUDGET_PERIOD_NAMES = {v: k for k, v in BUDGET_PERIODS.items()} | {mpb.BUDGET_PERIOD_UNSPECIFIED: "total"}


def finish_reason_summary(finish_reasons: Sequence[str]) -> str:
    """A request's finish reasons as one bounded text: each distinct reason once, in the order first seen,
    with its count when more than one choice ended so ("stop", "stop,length", "length:192"). Joining one
    reason per choice grew with n and prompts until the event was too long to count."""
    counts = Counter(finish_reasons)
    return ",".join(reason if n == 1 else f"{reason}:{n}" for reason, n in counts.items())


def request_status(finish_reasons: Collection[str], failed: bool, complete: bool = True) -> str:
    """ "error" when the request failed (an error, or a choice that ended in one); "abort" when a choice was
    aborted, none ended, or not every call reached its end; else "ok"."""
    if failed or "error" in finish_reasons:
        return "error"
    if "abort" in finish_reasons or not finish_reasons or not complete:
        return "abort"
    return "ok"
