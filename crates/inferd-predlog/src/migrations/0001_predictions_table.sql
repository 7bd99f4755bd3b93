CREATE TABLE IF NOT EXISTS predictions (
    id uuid PRIMARY KEY,
    ts timestamptz NOT NULL,
    request_id text NOT NULL,
    model text NOT NULL,
    version text NOT NULL,
    status smallint NOT NULL,
    instance jsonb,
    instance_sha256 text,
    prediction jsonb,
    cached boolean NOT NULL,
    latency_ms real NOT NULL,
    client text,
    error text
);
CREATE INDEX IF NOT EXISTS predictions_ts_brin ON predictions USING brin (ts);
CREATE INDEX IF NOT EXISTS predictions_model_ts ON predictions (model, ts);
