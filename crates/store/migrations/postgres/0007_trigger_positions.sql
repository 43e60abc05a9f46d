-- Where a trigger whose source keeps no position for it (a MySQL binlog) has settled up to:
-- `file:offset`, written only once everything before it is settled.
-- The other backend's file of the same number holds the same schema; keep them in step.
ALTER TABLE trigger_states ADD COLUMN position TEXT;
