-- Which instance of its request a row is (0-based), and the route it took:
-- NULL or 'primary' for the version that answered, 'canary', or 'shadow' for
-- a copy run on a shadow version off the request path.
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS instance_index integer;
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS role text;
CREATE INDEX IF NOT EXISTS predictions_request ON predictions (request_id, instance_index);
-- Labels fed back (POST /v1/feedback), one row per served instance: the same
-- label again changes nothing, a different one replaces it.
CREATE TABLE IF NOT EXISTS feedback (
    request_id text NOT NULL,
    instance_index integer NOT NULL,
    model text NOT NULL,
    label jsonb NOT NULL,
    ts timestamptz NOT NULL,
    PRIMARY KEY (request_id, instance_index)
);
-- Every served prediction with its label, for offline scoring by version and
-- role across all workers.
CREATE OR REPLACE VIEW labelled_predictions AS
    SELECT p.ts, p.request_id, p.instance_index, p.model, p.version,
           COALESCE(p.role, 'primary') AS role, p.prediction, f.label, f.ts AS labelled_at
    FROM predictions p JOIN feedback f
      ON f.request_id = p.request_id AND f.instance_index = p.instance_index
    WHERE p.status = 200;
