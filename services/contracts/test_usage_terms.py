"""The usage terms every side reads alike."""

from __future__ import annotations

import pytest

from services.contracts.usage_terms import finish_reason_summary, request_status


def test_finish_reasons_are_summarised_within_a_bound_whatever_the_number_of_choices() -> None:
    assert finish_reason_summary(["stop"]) == "stop"
    assert finish_reason_summary(["stop", "length"]) == "stop,length"
    assert finish_reason_summary(["length"] * 192) == "length:192"
    assert finish_reason_summary(["tool_calls"] * 127 + ["stop"]) == "tool_calls:127,stop"
    many = ["stop", "length", "abort", "error", "tool_calls"] * 10_000
    assert finish_reason_summary(many) == "stop:10000,length:10000,abort:10000,error:10000,tool_calls:10000"
    assert finish_reason_summary([]) == ""


@pytest.mark.parametrize(
    ("reasons", "failed", "complete", "status"),
    [
        (["stop", "length"], False, True, "ok"),
        (["stop", "abort"], False, True, "abort"),
        ([], False, True, "abort"),
        (["stop"], False, False, "abort"),
        (["stop", "error"], False, True, "error"),
        (["stop"], True, True, "error"),
        (["abort"], True, False, "error"),
    ],
)
def test_one_status_rule(reasons: list[str], failed: bool, complete: bool, status: str) -> None:
    assert request_status(reasons, failed, complete) == status
