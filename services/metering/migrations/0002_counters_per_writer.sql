-- Several replicas write one database: each keeps its own row of every running total (keyed by
-- its writer id), so no two replicas' commits wait on one row; a reader sums the rows. Output
-- tokens per model per second go to the database too, so every replica answers the same
-- windowed throughput.
CREATE TABLE counters (
    model TEXT NOT NULL,
    writer TEXT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    ok_requests BIGINT NOT NULL DEFAULT 0,
    aborted_requests BIGINT NOT NULL DEFAULT 0,
    failed_requests BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens BIGINT NOT NULL DEFAULT 0,
    generation_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    duplicated BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (model, writer)
);
INSERT INTO counters
    SELECT model, '', requests, ok_requests, aborted_requests, failed_requests, prompt_tokens,
           completion_tokens, cached_tokens, generation_seconds, duplicated
    FROM model_totals;
DROP TABLE model_totals;
CREATE TABLE rejection_counts (
    kind TEXT NOT NULL,
    writer TEXT NOT NULL,
    count BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, writer)
);
INSERT INTO rejection_counts SELECT kind, '', count FROM rejections;
DROP TABLE rejections;
CREATE TABLE throughput_cells (
    model TEXT NOT NULL,
    second BIGINT NOT NULL,
    writer TEXT NOT NULL,
    tokens DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (model, second, writer)
);
