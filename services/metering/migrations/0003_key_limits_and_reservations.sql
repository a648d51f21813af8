-- Limits per API key, and the reservations gateways take against them before a request runs. A
-- reservation is keyed like the usage event that replaces it (source, event id): the commit that
-- records the event deletes it. Open reservations (settled_tokens NULL) count while their holder's
-- lease runs; settled ones count their exact usage until the event arrives.
CREATE TABLE key_limits (
    api_key_id TEXT PRIMARY KEY,
    requests_per_minute BIGINT,
    tokens_per_minute BIGINT,
    token_budget BIGINT,
    budget_period TEXT NOT NULL DEFAULT 'total',
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE reservations (
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    reserved_tokens BIGINT NOT NULL,
    settled_tokens BIGINT,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (source, event_id)
);
CREATE INDEX reservations_by_key ON reservations (api_key_id, created_at);
CREATE TABLE reservation_holders (
    source TEXT PRIMARY KEY,
    lease_until DOUBLE PRECISION NOT NULL
);
CREATE INDEX events_by_key_time ON events (api_key_id, received_at);
