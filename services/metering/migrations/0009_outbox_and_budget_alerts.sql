-- Deliveries waiting to go out (an outbox): for the CloudEvents push, one row per commit naming the events
-- it recorded; for budget alerts, one row per alert. A row is written in the transaction that records what
-- it tells, so nothing committed is missed, whichever replica committed it and however late. A replica
-- that delivers takes due rows with a lease (due_at moves past it), deletes them once the receiver took
-- them, puts them off with backoff when it could not, and moves them to dead_letters when the receiver
-- refused them (a 4xx other than 408 and 429).
CREATE TABLE outbox (
    outbox_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    due_at DOUBLE PRECISION NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL
);
CREATE INDEX outbox_due ON outbox (kind, due_at);
CREATE TABLE dead_letters (
    outbox_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    failed_at DOUBLE PRECISION NOT NULL,
    attempts BIGINT NOT NULL,
    reason TEXT NOT NULL,
    body TEXT NOT NULL
);
-- The kinds the outbox is written for: a kind is added when a replica that delivers it starts (commits
-- before then are not pushed; the file export covers all history).
CREATE TABLE deliveries (
    kind TEXT PRIMARY KEY,
    since DOUBLE PRECISION NOT NULL
);
-- Each budget threshold crossed, once per subject, budget, period and threshold: the key that makes an
-- alert go out exactly once however many replicas check.
CREATE TABLE budget_alerts (
    subject TEXT NOT NULL,
    budget TEXT NOT NULL,
    period TEXT NOT NULL,
    start BIGINT NOT NULL,
    threshold BIGINT NOT NULL,
    crossed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (subject, budget, period, start, threshold)
);
