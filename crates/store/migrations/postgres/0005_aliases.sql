-- Aliases: a name for a version of a function (Lambda's aliases); version NULL follows the latest.
-- The other backend's file of the same number holds the same schema; keep them in step.
CREATE TABLE aliases (
    namespace   TEXT   NOT NULL,
    function    TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    version     BIGINT,
    description TEXT   NOT NULL,
    revision    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (namespace, function, name)
);
