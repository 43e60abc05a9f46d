-- Releases: an alias may split its traffic with a second version, and a rollout moves that
-- split step by step, its state kept here so that a restart resumes it and one server drives it.
-- The other backend's file of the same number holds the same schema; keep them in step.
ALTER TABLE aliases ADD COLUMN additional_version BIGINT;
-- The additional version's share of calls, in millionths.
ALTER TABLE aliases ADD COLUMN additional_ppm BIGINT NOT NULL DEFAULT 0;

CREATE TABLE rollouts (
    id BIGSERIAL PRIMARY KEY,
    namespace       TEXT   NOT NULL,
    function        TEXT   NOT NULL,
    alias           TEXT   NOT NULL,
    from_version    BIGINT NOT NULL,
    to_version      BIGINT NOT NULL,
    -- The plan (steps, interval, limits) as JSON.
    plan            TEXT   NOT NULL,
    state           TEXT   NOT NULL,
    step            BIGINT NOT NULL,
    step_started_at BIGINT NOT NULL,
    reason          TEXT,
    -- Each step, verdict and rollback with its reason, as a JSON array.
    history         TEXT   NOT NULL,
    -- The server driving it, until when: another takes over after that.
    lease_owner     TEXT,
    lease_until     BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
-- At most one rollout in progress per alias.
CREATE UNIQUE INDEX rollouts_active ON rollouts (namespace, function, alias)
    WHERE state IN ('running', 'paused');
