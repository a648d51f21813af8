-- A key whose every response carries its cost in `usage` (OpenRouter's shape), as if each request asked.
ALTER TABLE api_keys ADD COLUMN include_cost SMALLINT NOT NULL DEFAULT 0;
