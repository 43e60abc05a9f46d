-- Tenancy: namespaces, API keys with their roles, secrets, and the audit log.
-- The other backend's file of the same number holds the same schema; keep them in step.
CREATE TABLE namespaces (
    name       TEXT   NOT NULL PRIMARY KEY,
    -- The namespace's quotas (JSON), none when NULL.
    quotas     TEXT,
    created_at BIGINT NOT NULL
);
INSERT INTO namespaces (name, created_at) VALUES ('default', 0);
-- Namespaces of functions deployed before namespaces were objects of their own.
INSERT INTO namespaces (name, created_at)
    SELECT DISTINCT namespace, 0 FROM functions WHERE namespace <> 'default';

CREATE TABLE api_keys (
    -- The first 16 hex digits of the token's SHA-256: what names the key, and finds it.
    id          TEXT   NOT NULL PRIMARY KEY,
    description TEXT   NOT NULL,
    -- argon2id of the token (a PHC string); the token itself is never stored.
    hash        TEXT   NOT NULL,
    owner       BIGINT NOT NULL DEFAULT 0,
    -- The token sealed under the master key, for the Lambda API's SigV4 (its secret key).
    sigv4       TEXT,
    created_by  TEXT,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE key_roles (
    key_id    TEXT NOT NULL,
    namespace TEXT NOT NULL,
    role      TEXT NOT NULL,
    PRIMARY KEY (key_id, namespace)
);
CREATE INDEX key_roles_by_namespace ON key_roles (namespace);

CREATE TABLE secrets (
    namespace  TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    -- nonce and ciphertext (XChaCha20-Poly1305 under the master key), base64.
    sealed     TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);

CREATE TABLE audit (
    id        BIGSERIAL PRIMARY KEY,
    ts        BIGINT NOT NULL,
    namespace TEXT,
    key_id    TEXT,
    action    TEXT   NOT NULL,
    target    TEXT   NOT NULL,
    source    TEXT,
    outcome   TEXT   NOT NULL
);
CREATE INDEX audit_by_namespace ON audit (namespace, id);
