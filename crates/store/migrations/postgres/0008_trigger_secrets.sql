-- A trigger's own secret: what an object store's event notifications to Petrel's webhook route
-- are authenticated by (an s3 trigger in notify mode). Random, made on first use.
-- The other backend's file of the same number holds the same schema; keep them in step.
ALTER TABLE trigger_states ADD COLUMN secret TEXT;
