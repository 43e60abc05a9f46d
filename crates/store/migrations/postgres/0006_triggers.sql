-- Event triggers: what outlives a consumer (paused or not, counts, the last error, a cron
-- trigger's last fire) and the records a trigger gave up on.
-- The other backend's file of the same number holds the same schema; keep them in step.
CREATE TABLE trigger_states (
    namespace   TEXT   NOT NULL,
    function    TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    paused      BIGINT NOT NULL DEFAULT 0,
    delivered   BIGINT NOT NULL DEFAULT 0,
    failed      BIGINT NOT NULL DEFAULT 0,
    dead        BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    last_error_at BIGINT,
    -- A cron trigger's last due time that fired (ms since the epoch): one server claims each.
    last_fire   BIGINT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (namespace, function, name)
);

CREATE TABLE trigger_dead_letters (
    id          TEXT   NOT NULL PRIMARY KEY,
    namespace   TEXT   NOT NULL,
    function    TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    -- Where the record was: topic-partition@offset, or stream@sequence.
    position    TEXT   NOT NULL,
    record      TEXT   NOT NULL,
    error       TEXT   NOT NULL,
    attempts    BIGINT NOT NULL,
    dead_at     BIGINT NOT NULL
);
CREATE INDEX trigger_dead_letters_by_trigger ON trigger_dead_letters (namespace, function, name, dead_at);
