"""Recounts the rollups, the keys' running spend and the per-model counters from the raw events and
says where they differ: the proof that what reads use equals what was recorded, for tests and for
`python -m services.metering reconcile`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from services.metering.limits import period_start
from services.metering.range_sql import EVENT_VALUES
from services.metering.rollups import DAY, PERIODS, TOTAL_FIELDS, WIDTHS, bucket
from services.metering.store_primitives import StorePrimitives

_NAME = "CASE WHEN model_name = '' THEN model ELSE model_name END"
_INTS = ", ".join(f"CAST(SUM({value}) AS BIGINT)" for value in EVENT_VALUES[:-1])
_STORED_INTS = ", ".join(f"CAST(SUM({name}) AS BIGINT)" for name in TOTAL_FIELDS[:-1])


def _differences(what: str, stored: dict, recounted: dict) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(recounted), key=repr):
        have, want = stored.get(key), recounted.get(key)
        if have is None or want is None or not _same(have, want):
            out.append(f"{what} {key}: stored {have}, recounted from events {want}")
    return out


def _same(have: Sequence[float], want: Sequence[float]) -> bool:
    # Integer sums exactly; the seconds (a float sum, added in another order) to rounding.
    return all(
        math.isclose(h, w, rel_tol=1e-9, abs_tol=1e-6) if isinstance(h, float) or isinstance(w, float) else h == w
        for h, w in zip(have, want)
    )


class Reconciliation(StorePrimitives):
    bucket_sql: str

    def reconcile(self, now: float, since: float | None = None) -> list[str]:
        """Where the rollups (of days from `since` on) and the keys' running spend of now differ from the
        events. since=None: every event is still kept, so all time and the per-model counters are checked."""
        day = None if since is None else bucket(since, DAY)
        out = []
        for width in WIDTHS:
            where, params = ("", []) if day is None else (" WHERE occurred_at >= ?", [day])
            recounted = self._rows(
                f"SELECT {self.bucket_sql.format('occurred_at')}, api_key_id, model, {_NAME}, caller, {_INTS},"
                f" SUM(generation_seconds) FROM events{where} GROUP BY 1, 2, 3, 4, 5",
                [width, width, *params],
            )
            by_model: dict[tuple, list] = {}
            for row in recounted:
                sums = by_model.setdefault((int(row[0]), row[2], row[3]), [0] * len(TOTAL_FIELDS))
                for i, value in enumerate(row[5:]):
                    sums[i] += value
            since_bucket = "" if day is None else " AND bucket >= ?"
            for table, columns, want in (
                (
                    "usage_rollups",
                    "bucket, api_key_id, model, model_name, caller",
                    {(int(r[0]), *r[1:5]): tuple(r[5:]) for r in recounted},
                ),
                ("model_rollups", "bucket, model, model_name", {k: tuple(v) for k, v in by_model.items()}),
            ):
                count = columns.count(",") + 1
                positions = ", ".join(str(i + 1) for i in range(count))
                stored = self._rows(
                    f"SELECT {columns}, {_STORED_INTS}, SUM(generation_seconds) FROM {table}"
                    f" WHERE width = ?{since_bucket} GROUP BY {positions}",
                    [width, *params],
                )
                out += _differences(f"{table} of {width} s", {tuple(r[:count]): tuple(r[count:]) for r in stored}, want)
        # A period can be recounted only while all its events are kept. Each key's spend is recounted for
        # it, its team and its organisation (as they are now), with periods in the organisation's time zone.
        zones = ["UTC", *sorted({r[0] for r in self._rows("SELECT DISTINCT time_zone FROM organizations")} - {"UTC"})]
        recounted_spend: dict[tuple, tuple] = {}
        stored_spend: dict[tuple, tuple] = {}
        cells: set[tuple[str, int]] = set()
        for zone in zones:
            for period in PERIODS:
                start = int(period_start(period, now, zone))
                if day is not None and start < day:
                    continue
                cells.add((period, start))
                for subject in ("e.api_key_id", "k.team_id", "k.org_id"):
                    rows = self._rows(
                        f"SELECT {subject}, COUNT(*), CAST(SUM(e.prompt_tokens + e.completion_tokens) AS BIGINT),"
                        " CAST(SUM(COALESCE(e.cost_micro, 0)) AS BIGINT)"
                        " FROM events e LEFT JOIN api_keys k ON k.key_id = e.api_key_id"
                        " LEFT JOIN organizations o ON o.org_id = k.org_id"
                        f" WHERE e.api_key_id <> '' AND COALESCE({subject}, '') <> ''"
                        " AND COALESCE(o.time_zone, 'UTC') = ? AND e.received_at >= ? GROUP BY 1",
                        (zone, start),
                    )
                    recounted_spend.update({(r[0], period, start): tuple(r[1:]) for r in rows})
        for period, start in sorted(cells):
            stored = self._rows(
                "SELECT api_key_id, CAST(SUM(requests) AS BIGINT), CAST(SUM(tokens) AS BIGINT),"
                " CAST(SUM(cost_micro) AS BIGINT) FROM key_spend WHERE period = ? AND start = ? GROUP BY api_key_id",
                (period, start),
            )
            stored_spend.update({(r[0], period, start): tuple(r[1:]) for r in stored})
        out += _differences("running spend", stored_spend, recounted_spend)
        if since is None:
            recounted = self._rows(f"SELECT model, {_INTS}, SUM(generation_seconds) FROM events GROUP BY model")
            stored = self._rows(
                f"SELECT model, {_STORED_INTS}, SUM(generation_seconds) FROM counters GROUP BY model"
                " HAVING SUM(requests) > 0"
            )
            out += _differences(
                "counters of model", {r[0]: tuple(r[1:]) for r in stored}, {r[0]: tuple(r[1:]) for r in recounted}
            )
        return out
