-- The usage events and per-model running totals, in types both stores read the same way
-- (SQLite takes BIGINT and DOUBLE PRECISION by affinity). A SQLite store made before versioned
-- migrations already has these tables; IF NOT EXISTS leaves them as they are.
CREATE TABLE IF NOT EXISTS events (
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    occurred_at DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    model TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    streamed SMALLINT NOT NULL,
    finish_reason TEXT NOT NULL,
    status TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    ttft_seconds DOUBLE PRECISION NOT NULL,
    generation_seconds DOUBLE PRECISION NOT NULL,
    request_seconds DOUBLE PRECISION NOT NULL,
    trace_id TEXT NOT NULL,
    model_name TEXT NOT NULL DEFAULT '',
    caller TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (source, event_id)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (occurred_at);
CREATE TABLE IF NOT EXISTS model_totals (
    model TEXT PRIMARY KEY,
    requests BIGINT NOT NULL DEFAULT 0,
    ok_requests BIGINT NOT NULL DEFAULT 0,
    aborted_requests BIGINT NOT NULL DEFAULT 0,
    failed_requests BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens BIGINT NOT NULL DEFAULT 0,
    generation_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    duplicated BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rejections (
    kind TEXT PRIMARY KEY,
    count BIGINT NOT NULL DEFAULT 0
);
