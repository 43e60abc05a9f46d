-- Async invocations: the durable queue, the results, and the dead-letter list (status 'dead').
-- The other backend's file of the same number holds the same schema; keep them in step.
CREATE TABLE async_invocations (
    id               TEXT   PRIMARY KEY,
    namespace        TEXT   NOT NULL,
    function         TEXT   NOT NULL,
    -- The version asked for; NULL runs the latest.
    version          BIGINT,
    -- 'http' (the request as sent to /async-fn/...) or 'event' (a raw or Lambda event).
    kind             TEXT   NOT NULL,
    method           TEXT   NOT NULL,
    path             TEXT   NOT NULL,
    -- JSON: [[name, value], ...]
    headers          TEXT   NOT NULL,
    body             BYTEA   NOT NULL,
    status           TEXT   NOT NULL,
    attempts         BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    -- When a queued invocation may run.
    run_at           BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    -- The server that runs (or last ran) it, and until when its claim holds without a heartbeat.
    lease_owner      TEXT,
    lease_until      BIGINT,
    executed_version BIGINT,
    result_status    BIGINT,
    result_headers   TEXT,
    result_body      BYTEA,
    error            TEXT,
    callback_url     TEXT,
    idem_key         TEXT,
    replays          BIGINT NOT NULL
);
CREATE INDEX async_ready ON async_invocations (status, run_at);
-- Claims: a function's ready work, oldest due first.
CREATE INDEX async_due ON async_invocations (namespace, function, status, run_at);
-- Listings: a function's invocations, newest first.
CREATE INDEX async_by_function ON async_invocations (namespace, function, created_at);
CREATE INDEX async_by_owner ON async_invocations (lease_owner, status);
CREATE UNIQUE INDEX async_idempotency ON async_invocations (namespace, function, idem_key);

-- Outcomes to deliver over HTTP (X-Callback-Url, URL destinations), at least once.
CREATE TABLE async_deliveries (
    id          BIGSERIAL PRIMARY KEY,
    invocation  TEXT   NOT NULL,
    url         TEXT   NOT NULL,
    headers     TEXT   NOT NULL,
    body        BYTEA   NOT NULL,
    status      TEXT   NOT NULL,
    attempts    BIGINT NOT NULL,
    next_at     BIGINT NOT NULL,
    error       TEXT
);
CREATE INDEX deliveries_due ON async_deliveries (status, next_at);
