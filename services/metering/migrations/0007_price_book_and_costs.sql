-- The price book, and each event's cost priced at record time. A price is per model name, in micro-units
-- (one millionth of the currency's major unit) per million tokens of each kind, in force from its
-- effective_from until the next price of that model; rows are never changed (a new one starts later). An
-- event's cost_micro is NULL when no price was in force for it (unpriced: reported, never taken as 0);
-- price_id names the row it used. Rollups and counters sum the cost and count the unpriced requests.
CREATE TABLE prices (
    price_id TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    currency TEXT NOT NULL,
    effective_from DOUBLE PRECISION NOT NULL,
    prompt BIGINT NOT NULL,
    cached_prompt BIGINT NOT NULL,
    completion BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX prices_by_model ON prices (model_name, effective_from);
ALTER TABLE events ADD COLUMN cost_micro BIGINT;
ALTER TABLE events ADD COLUMN price_id TEXT NOT NULL DEFAULT '';
ALTER TABLE counters ADD COLUMN cost_micro BIGINT NOT NULL DEFAULT 0;
ALTER TABLE counters ADD COLUMN unpriced_requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_rollups ADD COLUMN cost_micro BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_rollups ADD COLUMN unpriced_requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE model_rollups ADD COLUMN cost_micro BIGINT NOT NULL DEFAULT 0;
ALTER TABLE model_rollups ADD COLUMN unpriced_requests BIGINT NOT NULL DEFAULT 0;
-- Money budgets: a subject's budget in micro-units over its budget period; its running spend sums the cost
-- of its events, and a reservation holds its cost (prompt cost plus the completion cap at the price in
-- force) until settled to the exact cost or replaced by its event.
ALTER TABLE key_limits ADD COLUMN money_budget_micro BIGINT;
ALTER TABLE key_spend ADD COLUMN cost_micro BIGINT NOT NULL DEFAULT 0;
ALTER TABLE reservations ADD COLUMN reserved_cost_micro BIGINT NOT NULL DEFAULT 0;
ALTER TABLE reservations ADD COLUMN settled_cost_micro BIGINT;
-- Everything recorded before the price book existed is unpriced.
UPDATE counters SET unpriced_requests = requests;
UPDATE usage_rollups SET unpriced_requests = requests;
UPDATE model_rollups SET unpriced_requests = requests;
