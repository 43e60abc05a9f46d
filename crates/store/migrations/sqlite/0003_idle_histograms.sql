-- What the hybrid keep-alive policy learned about each function: its idle-time histogram
-- (JSON), kept across restarts.
CREATE TABLE idle_histograms (
    namespace  TEXT   NOT NULL,
    function   TEXT   NOT NULL,
    histogram  TEXT   NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, function)
);
