-- The hash of each instance as sent, before the model's preprocessing
-- (instance_sha256 is the hash of the preprocessed instance, the cache key's).
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS input_sha256 text;
