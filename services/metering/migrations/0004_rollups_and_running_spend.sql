-- Usage summed by minute, hour and UTC day (width in seconds; bucket: its start, by occurred_at) per API key,
-- model, registered model name and caller. Each replica adds to its own rows (writer), in the transaction that
-- records the events. Totals, series and reports read these, and only the seconds at a range's edges from the
-- events; they are kept for good, while raw events are pruned after the retention time. The store fills both
-- tables from the events already stored when it applies this migration.
CREATE TABLE usage_rollups (
    width BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    api_key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    model_name TEXT NOT NULL,
    caller TEXT NOT NULL,
    writer TEXT NOT NULL,
    requests BIGINT NOT NULL,
    ok_requests BIGINT NOT NULL,
    aborted_requests BIGINT NOT NULL,
    failed_requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    generation_seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (width, bucket, api_key_id, model, model_name, caller, writer)
);
CREATE INDEX usage_rollups_by_key ON usage_rollups (api_key_id, width, bucket);
-- The same sums per model and registered name alone: what a read that neither filters nor groups by key or
-- caller (a fleet's series, the usage of a model) takes, a few rows per bucket however many keys there are.
CREATE TABLE model_rollups (
    width BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    model TEXT NOT NULL,
    model_name TEXT NOT NULL,
    writer TEXT NOT NULL,
    requests BIGINT NOT NULL,
    ok_requests BIGINT NOT NULL,
    aborted_requests BIGINT NOT NULL,
    failed_requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    generation_seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (width, bucket, model, model_name, writer)
);
-- What each key has spent (requests, prompt plus completion tokens) by received_at, the clock budgets count
-- on: per second (the per-minute window), UTC day, UTC month and all time (start 0). A reservation reads
-- its key's few rows here instead of summing the key's events.
CREATE TABLE key_spend (
    api_key_id TEXT NOT NULL,
    period TEXT NOT NULL,
    start BIGINT NOT NULL,
    writer TEXT NOT NULL,
    requests BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (api_key_id, period, start, writer)
);
DROP INDEX events_by_key_time;
