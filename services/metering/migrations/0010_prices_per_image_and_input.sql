-- Prices per unit beside those per million tokens: per image in a prompt and per embedding input, in
-- micro-units; and each event's count of both (0 for what had none, and for everything before).
ALTER TABLE prices ADD COLUMN image BIGINT NOT NULL DEFAULT 0;
ALTER TABLE prices ADD COLUMN embedding_input BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN images BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN embedding_inputs BIGINT NOT NULL DEFAULT 0;
