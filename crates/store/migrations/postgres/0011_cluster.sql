-- Cluster mode: the nodes sharing this store with their heartbeats, the feed of changes every
-- node applies (deploys, deletes, aliases, triggers, quotas), and the packages themselves, so
-- that any node can load any version. The other backend's file of the same number holds the
-- same schema; keep them in step.
CREATE TABLE nodes (
    node_id        TEXT PRIMARY KEY,
    address        TEXT   NOT NULL,
    petrel_version TEXT   NOT NULL,
    -- 'up', 'draining' (stopping: takes no new work) or 'left' (stopped cleanly).
    state          TEXT   NOT NULL,
    started_at     BIGINT NOT NULL,
    heartbeat_at   BIGINT NOT NULL,
    -- Invocations running on the node at its last heartbeat.
    in_flight      BIGINT NOT NULL DEFAULT 0,
    -- Warm instances and the memory they hold.
    instances      BIGINT NOT NULL DEFAULT 0,
    memory_used_mb BIGINT NOT NULL DEFAULT 0,
    memory_limit_mb BIGINT NOT NULL DEFAULT 0,
    -- Functions (namespace/name) whose every instance was busy with callers waiting, as JSON:
    -- the routers give them a further home.
    hot            TEXT   NOT NULL DEFAULT '[]'
);

CREATE TABLE changes (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT NOT NULL,
    -- 'function' (deploy, delete, promote, trigger pause), 'alias', 'quotas'.
    kind      TEXT   NOT NULL,
    namespace TEXT   NOT NULL,
    name      TEXT   NOT NULL,
    -- The node that made the change (it applied it already).
    origin    TEXT   NOT NULL
);
CREATE INDEX changes_at ON changes (at);

CREATE TABLE packages (
    digest     TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    bytes      BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);
