-- One row per invocation, written off the request path; kept for the log retention period.
-- The other backend's file of the same number holds the same schema; keep them in step.
CREATE TABLE invocations (
    id          TEXT   PRIMARY KEY,
    namespace   TEXT   NOT NULL,
    function    TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    trigger     TEXT   NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    billed_ms   BIGINT NOT NULL,
    memory_mb   BIGINT NOT NULL,
    cold_start  BIGINT NOT NULL,
    outcome     TEXT   NOT NULL,
    error       TEXT,
    instance    TEXT
);
CREATE INDEX invocations_by_function ON invocations (namespace, function, started_at);
CREATE INDEX invocations_by_time ON invocations (started_at);
