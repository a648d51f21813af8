"""Output tokens per second per model over sliding windows. Each event's tokens are spread evenly
over its generation interval, so a window holds only the share generated inside it (never a sum of
per-request rates).

Tokens are kept in one-second cells (a span's share of each second it covers), stored with the
events so that every metering replica reads the same windows, and a window costs one pass over at
most the horizon's cells whatever the event rate (keeping every event and walking them all cost
165 ms per refresh at 300k events in the window). Within a cell the tokens count as spread evenly,
so a window's two edges are exact to that second."""

from __future__ import annotations

import math

WINDOWS = (10.0, 60.0)
HORIZON = max(WINDOWS)

Cells = dict[int, float]


def spread(cells: Cells, finished_at: float, generation_seconds: float, tokens: int, now: float) -> None:
    """Adds one event's tokens to `cells`, over the seconds of its generation that a window ending
    at `now` or later can still hold."""
    if tokens <= 0:
        return
    oldest = now - HORIZON - 1.0
    end = finished_at
    start = end - max(generation_seconds, 0.0)
    if end <= start:
        # All its tokens at one instant (a one-token reply).
        if end >= oldest:
            second = math.floor(end)
            cells[second] = cells.get(second, 0.0) + tokens
        return
    rate = tokens / (end - start)
    start = max(start, oldest)
    second = math.floor(start)
    while second < end:
        overlap = min(end, second + 1) - max(start, second)
        if overlap > 0:
            cells[second] = cells.get(second, 0.0) + rate * overlap
        second += 1


def oldest_cell(now: float) -> int:
    """The first second any window ending at `now` can reach."""
    return math.floor(now - HORIZON - 1.0)


def window_rate(cells: Cells, window: float, now: float) -> float:
    start = now - window
    tokens = 0.0
    for second, share in cells.items():
        overlap = min(now, second + 1) - max(start, second)
        if overlap >= 1:
            tokens += share
        elif overlap > 0:
            tokens += share * overlap
    return tokens / window
