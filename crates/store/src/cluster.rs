//! Cluster mode's shared state: the nodes with their heartbeats, the feed of changes each node
//! applies to what it serves, and the packages kept in the store so that any node can load any
//! version. On PostgreSQL a change is also announced (NOTIFY) so that followers read it at once;
//! their poll catches up after a lost connection.

use crate::store::{Backend, Store};
use crate::{now_ms, Result, StoreError};
use petrel_core::cluster::{NodeInfo, NodeState};
use sqlx::Row;

/// The PostgreSQL channel on which a change is announced (no payload: followers read the feed).
const CHANGES_CHANNEL: &str = "petrel_changes";

/// What a node reports at each heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub node_id: String,
    pub address: String,
    pub petrel_version: String,
    pub state: NodeState,
    pub started_at: i64,
    pub in_flight: u64,
    pub instances: u64,
    pub memory_used_mb: u64,
    pub memory_limit_mb: u64,
    /// Functions (`namespace/name`) that need more homes.
    pub hot: Vec<String>,
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub origin: String,
}

impl Store {
    /// Writes this node's heartbeat (joining the cluster the first time).
    pub async fn heartbeat(&self, h: &Heartbeat) -> Result<()> {
        let hot = serde_json::to_string(&h.hot).expect("names serialise");
        sqlx::query(
            "INSERT INTO nodes (node_id, address, petrel_version, state, started_at, heartbeat_at,
               in_flight, instances, memory_used_mb, memory_limit_mb, hot)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (node_id) DO UPDATE SET address = excluded.address,
               petrel_version = excluded.petrel_version, state = excluded.state,
               started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
               in_flight = excluded.in_flight, instances = excluded.instances,
               memory_used_mb = excluded.memory_used_mb,
               memory_limit_mb = excluded.memory_limit_mb, hot = excluded.hot",
        )
        .bind(&h.node_id)
        .bind(&h.address)
        .bind(&h.petrel_version)
        .bind(h.state.as_str())
        .bind(h.started_at)
        .bind(now_ms())
        .bind(h.in_flight as i64)
        .bind(h.instances as i64)
        .bind(h.memory_used_mb as i64)
        .bind(h.memory_limit_mb as i64)
        .bind(&hot)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every node that ever joined, with the age of its last heartbeat at `now` (the caller
    /// decides who is out), ordered by id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT node_id, address, petrel_version, state, started_at, heartbeat_at, in_flight,
               instances, memory_used_mb, memory_limit_mb, hot FROM nodes ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state")?;
                let hot: String = r.try_get("hot")?;
                let heartbeat_at: i64 = r.try_get("heartbeat_at")?;
                Ok(NodeInfo {
                    id: r.try_get("node_id")?,
                    address: r.try_get("address")?,
                    petrel_version: r.try_get("petrel_version")?,
                    state: state
                        .parse::<NodeState>()
                        .map_err(|e| StoreError::Corrupt(format!("node state: {e}")))?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_age_ms: (now - heartbeat_at).max(0) as u64,
                    in_flight: r.try_get::<i64, _>("in_flight")? as u64,
                    instances: r.try_get::<i64, _>("instances")? as u64,
                    memory_used_mb: r.try_get::<i64, _>("memory_used_mb")? as u64,
                    memory_limit_mb: r.try_get::<i64, _>("memory_limit_mb")? as u64,
                    hot: serde_json::from_str(&hot)
                        .map_err(|e| StoreError::Corrupt(format!("node hot list: {e}")))?,
                })
            })
            .collect()
    }

    /// Forgets nodes whose last heartbeat is older than `before` (milliseconds).
    pub async fn forget_nodes(&self, before: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM nodes WHERE heartbeat_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Appends a change to the feed and announces it.
    pub async fn record_change(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        origin: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO changes (at, kind, namespace, name, origin) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_ms())
        .bind(kind)
        .bind(namespace)
        .bind(name)
        .bind(origin)
        .execute(&mut *tx)
        .await?;
        if self.backend == Backend::Postgres {
            sqlx::query(&format!("NOTIFY {CHANGES_CHANNEL}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Changes with an id above `after`, oldest first (at most `limit`).
    pub async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT id, at, kind, namespace, name, origin FROM changes WHERE id > $1
             ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Change {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    namespace: r.try_get("namespace")?,
                    name: r.try_get("name")?,
                    origin: r.try_get("origin")?,
                })
            })
            .collect()
    }

    /// The newest change's id (0 for an empty feed): where a starting node begins to follow.
    pub async fn last_change(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("id")?)
    }

    /// Drops changes older than `before` (milliseconds): a node that was away longer reloads
    /// everything when it comes back.
    pub async fn prune_changes(&self, before: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM changes WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// PostgreSQL: a receiver woken at each announced change (coalesced), reconnecting by
    /// itself; `None` on SQLite. Announcements made while the connection is down are lost: the
    /// follower's poll finds those changes.
    pub async fn change_wakes(&self) -> Result<Option<tokio::sync::watch::Receiver<u64>>> {
        let Some(url) = self.url.clone() else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                match listener.recv().await {
                    Ok(_) => {
                        n += 1;
                        if tx.send(n).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: the change listener failed; reconnecting");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(rx))
    }

    /// Keeps a package in the store (once per digest), for the nodes that do not have it.
    pub async fn put_package(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let q = match self.backend {
            Backend::Postgres => {
                "INSERT INTO packages (digest, size, bytes, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (digest) DO NOTHING"
            }
            Backend::Sqlite => {
                "INSERT OR IGNORE INTO packages (digest, size, bytes, created_at)
                 VALUES ($1, $2, $3, $4)"
            }
        };
        sqlx::query(q)
            .bind(digest)
            .bind(bytes.len() as i64)
            .bind(bytes.to_vec())
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A package kept in the store, if it is.
    pub async fn get_package(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT bytes FROM packages WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<Vec<u8>, _>("bytes")?),
            None => None,
        })
    }

    /// Drops stored packages no version refers to, sparing those younger than `before`.
    pub async fn prune_packages(&self, before: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM packages WHERE created_at < $1
               AND digest NOT IN (SELECT digest FROM versions)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
