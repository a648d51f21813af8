"""Budget alerts: when a key's, team's or organisation's recorded spend crosses 50, 80 or 100 % of a token
or money budget in its period, one alert goes out. The crossing is written to `budget_alerts` (its key:
subject, budget, period start, threshold) with its outbox row in one transaction, so however many replicas
check, each threshold of each period alerts once. Spend is what the ledger recorded (key_spend), not what
reservations hold: an alert tells of money spent, not of requests in flight."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from services.metering.limits import level_of, period_start
from services.metering.outbox_store import ALERTS, OutboxStore

THRESHOLDS = (50, 80, 100)
TOKENS, MONEY = "tokens", "money"
ALERT_TYPE = "llmserve.budget.threshold_crossed"

_LIMITED = (
    "SELECT l.api_key_id, l.budget_period, l.token_budget, l.money_budget_micro,"
    " COALESCE(ok.time_zone, ot.time_zone, oo.time_zone, 'UTC') FROM key_limits l"
    " LEFT JOIN api_keys k ON k.key_id = l.api_key_id LEFT JOIN organizations ok ON ok.org_id = k.org_id"
    " LEFT JOIN teams t ON t.team_id = l.api_key_id LEFT JOIN organizations ot ON ot.org_id = t.org_id"
    " LEFT JOIN organizations oo ON oo.org_id = l.api_key_id"
    " WHERE l.token_budget IS NOT NULL OR l.money_budget_micro IS NOT NULL ORDER BY l.api_key_id"
)


def crossed(spent: int, budget: int) -> list[int]:
    """The thresholds (percent) that `spent` has reached, in exact integers."""
    if spent <= 0:
        return []
    return [t for t in THRESHOLDS if spent * 100 >= t * budget]


@dataclass(frozen=True)
class Alert:
    subject: str
    budget: str
    period: str
    start: int
    threshold: int
    amount: int
    spent: int
    currency: str
    crossed_at: float

    @property
    def alert_id(self) -> str:
        return f"{self.subject}:{self.budget}:{self.period}:{self.start}:{self.threshold}"

    def body(self) -> str:
        return json.dumps(
            {
                "type": ALERT_TYPE,
                "id": self.alert_id,
                "subject": self.subject,
                "level": level_of(self.subject),
                "budget": self.budget,
                "period": self.period,
                "period_start": _rfc3339(self.start),
                "threshold_percent": self.threshold,
                "budget_amount": self.amount,
                "spent": self.spent,
                # Money amounts are in micro-units of the currency; tokens have none.
                "unit": "micro" if self.budget == MONEY else "tokens",
                "currency": self.currency,
                "crossed_at": _rfc3339(self.crossed_at),
            },
            sort_keys=True,
        )


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class AlertStore(OutboxStore):
    def check_budgets(self, now: float) -> list[Alert]:
        """Writes each threshold newly crossed, with its outbox row (one transaction); the alerts written."""
        with self._transaction():
            limited = self._rows(_LIMITED)
            if not limited:
                return []
            marks = ", ".join("?" * len(limited))
            spend = {
                (subject, period, int(start)): (int(tokens), int(cost))
                for subject, period, start, tokens, cost in self._rows(
                    "SELECT api_key_id, period, start, SUM(tokens), SUM(cost_micro) FROM key_spend"
                    f" WHERE period <> 'second' AND api_key_id IN ({marks}) GROUP BY 1, 2, 3",
                    [row[0] for row in limited],
                )
            }
            currencies = [c for (c,) in self._rows("SELECT DISTINCT currency FROM prices ORDER BY currency")]
            currency = currencies[0] if len(currencies) == 1 else ""
            written = []
            for subject, period, token_budget, money_budget, zone in limited:
                start = int(period_start(period, now, zone))
                tokens, cost = spend.get((subject, period, start), (0, 0))
                for budget, amount, spent in ((TOKENS, token_budget, tokens), (MONEY, money_budget, cost)):
                    if amount is None:
                        continue
                    for threshold in crossed(spent, int(amount)):
                        unit = currency if budget == MONEY else ""
                        alert = Alert(subject, budget, period, start, threshold, int(amount), spent, unit, now)
                        if self._rows(
                            "INSERT INTO budget_alerts (subject, budget, period, start, threshold, crossed_at)"
                            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                            (subject, budget, period, start, threshold, now),
                        ):
                            self._enqueue(ALERTS, alert.body(), now)
                            written.append(alert)
            return written
