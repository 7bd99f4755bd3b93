-- The request's OpenTelemetry trace id (32 hex digits), to go from a log row to
-- its trace and back. Indexed only where present: with tracing off the column
-- stays NULL and costs the inserts nothing.
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS trace_id text;
CREATE INDEX IF NOT EXISTS predictions_trace_id ON predictions (trace_id) WHERE trace_id IS NOT NULL;
