-- Re-ratings: a period's events priced again against a corrected price book. The events, rollups and
-- counters keep the figures recorded at the time (for audit); each applied re-rating keeps its book and,
-- for every event whose cost it changes, the original and the re-rated cost.
CREATE TABLE reratings (
    rerating_id TEXT PRIMARY KEY,
    period_start DOUBLE PRECISION NOT NULL,
    period_end DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    book TEXT NOT NULL
);
CREATE TABLE cost_adjustments (
    rerating_id TEXT NOT NULL,
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    occurred_at DOUBLE PRECISION NOT NULL,
    original_cost_micro BIGINT,
    original_price_id TEXT NOT NULL,
    rerated_cost_micro BIGINT,
    PRIMARY KEY (rerating_id, source, event_id)
);
