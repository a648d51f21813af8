-- API keys issued at run time. Only the secret's SHA-256 (hex) and a short display prefix are kept. A
-- revoked key stays, with its revocation time, so every gateway learns of it. Each change takes the next
-- number from key_versions (one row: changes of keys are serialized, on PostgreSQL by its row lock) and
-- stamps the key with it: a gateway asks for the keys whose version is above the last it saw.
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    previous_secret_sha256 TEXT NOT NULL DEFAULT '',
    previous_valid_until DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    allowed_models TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    version BIGINT NOT NULL
);
CREATE UNIQUE INDEX api_keys_by_name ON api_keys (name);
CREATE UNIQUE INDEX api_keys_by_secret ON api_keys (secret_sha256);
CREATE INDEX api_keys_by_version ON api_keys (version);
CREATE TABLE key_versions (
    id SMALLINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO key_versions VALUES (1, 0);
-- Who changed which key, how and when (version: the change's number).
CREATE TABLE audit_log (
    at DOUBLE PRECISION NOT NULL,
    version BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
