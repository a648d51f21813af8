-- Organisation -> team -> key. A key belongs to an organisation directly (an organisation's admin key) or
-- through one of its teams (then org_id is the team's). Limits and running spend are kept per subject: a
-- key id, a team id (team_...) or an organisation id (org_...), in key_limits and key_spend as before. A
-- reservation names every level it counts against. An organisation's time zone is fixed at its creation:
-- its keys' and teams' day and month periods start at its midnight.
CREATE TABLE organizations (
    org_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX organizations_by_name ON organizations (name);
CREATE TABLE teams (
    team_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (org_id),
    name TEXT NOT NULL,
    allowed_models TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX teams_by_name ON teams (org_id, name);
ALTER TABLE api_keys ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN org_id TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
CREATE INDEX api_keys_by_team ON api_keys (team_id);
CREATE INDEX api_keys_by_org ON api_keys (org_id);
ALTER TABLE reservations ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
ALTER TABLE reservations ADD COLUMN org_id TEXT NOT NULL DEFAULT '';
CREATE INDEX reservations_by_team ON reservations (team_id, created_at);
CREATE INDEX reservations_by_org ON reservations (org_id, created_at);
