-- Functions, their immutable versions, and instance logs.
-- The SQLite file of the same number holds the same schema; keep them in step.
CREATE TABLE functions (
    namespace      TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    latest_version BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    PRIMARY KEY (namespace, name)
);

CREATE TABLE versions (
    namespace  TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    runtime    TEXT   NOT NULL,
    spec       TEXT   NOT NULL,
    digest     TEXT   NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

CREATE TABLE logs (
    id         BIGSERIAL PRIMARY KEY,
    namespace  TEXT   NOT NULL,
    function   TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    instance   TEXT   NOT NULL,
    invocation TEXT,
    stream     TEXT   NOT NULL,
    ts         BIGINT NOT NULL,
    line       TEXT   NOT NULL
);
CREATE INDEX logs_by_function ON logs (namespace, function, id);
