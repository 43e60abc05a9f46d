//! What the event triggers keep: each trigger's state that outlives its consumer (paused, counts,
//! the last error, a cron trigger's last fire) and the records a trigger gave up on.

use crate::store::Store;
use crate::{now_ms, Result};
use sqlx::Row;

/// A trigger's stored state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerState {
    pub name: String,
    pub paused: bool,
    pub delivered: u64,
    pub failed: u64,
    pub dead: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    pub last_fire: Option<i64>,
}

/// A record a trigger gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerDeadLetter {
    pub id: String,
    pub position: String,
    /// The record as the function got it (JSON).
    pub record: String,
    pub error: String,
    pub attempts: u32,
    pub dead_at: i64,
}

/// What one batch changed in a trigger's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TriggerCounts {
    pub delivered: u64,
    pub failed: u64,
    pub dead: u64,
}

impl Store {
    /// The stored state of a function's triggers, by name.
    pub async fn trigger_states(&self, ns: &str, function: &str) -> Result<Vec<TriggerState>> {
        let rows = sqlx::query(
            "SELECT name, paused, delivered, failed, dead, last_error, last_error_at, last_fire
             FROM trigger_states WHERE namespace = $1 AND function = $2 ORDER BY name",
        )
        .bind(ns)
        .bind(function)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TriggerState {
                    name: r.try_get("name")?,
                    paused: r.try_get::<i64, _>("paused")? != 0,
                    delivered: r.try_get::<i64, _>("delivered")? as u64,
                    failed: r.try_get::<i64, _>("failed")? as u64,
                    dead: r.try_get::<i64, _>("dead")? as u64,
                    last_error: r.try_get("last_error")?,
                    last_error_at: r.try_get("last_error_at")?,
                    last_fire: r.try_get("last_fire")?,
                })
            })
            .collect()
    }

    /// Pauses or resumes a trigger, on every server (they read it at their next look).
    pub async fn set_trigger_paused(
        &self,
        ns: &str,
        function: &str,
        name: &str,
        paused: bool,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO trigger_states (namespace, function, name, paused, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (namespace, function, name)
             DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
        )
        .bind(ns)
        .bind(function)
        .bind(name)
        .bind(paused as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds a batch's counts; `error` becomes the last error (`None` keeps it). One statement:
    /// the row is made on the first write.
    pub async fn add_trigger_counts(
        &self,
        ns: &str,
        function: &str,
        name: &str,
        counts: TriggerCounts,
        error: Option<&str>,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO trigger_states (namespace, function, name, delivered, failed, dead, last_error, last_error_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (namespace, function, name) DO UPDATE SET
                 delivered = trigger_states.delivered + excluded.delivered,
                 failed = trigger_states.failed + excluded.failed,
                 dead = trigger_states.dead + excluded.dead,
                 last_error = COALESCE(excluded.last_error, trigger_states.last_error),
                 last_error_at = COALESCE(excluded.last_error_at, trigger_states.last_error_at),
                 updated_at = excluded.updated_at",
        )
        .bind(ns)
        .bind(function)
        .bind(name)
        .bind(counts.delivered as i64)
        .bind(counts.failed as i64)
        .bind(counts.dead as i64)
        .bind(error)
        .bind(error.map(|_| now))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last due time a cron trigger fired, first setting it to `baseline` when the trigger
    /// has none (a new trigger does not run the slots before it existed).
    pub async fn cron_last_fire(
        &self,
        ns: &str,
        function: &str,
        name: &str,
        baseline: i64,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO trigger_states (namespace, function, name, last_fire, updated_at) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (namespace, function, name)
             DO UPDATE SET last_fire = COALESCE(trigger_states.last_fire, excluded.last_fire)
             RETURNING last_fire",
        )
        .bind(ns)
        .bind(function)
        .bind(name)
        .bind(baseline)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(baseline))
    }

    /// Claims the fire of a cron trigger due at `due`: exactly one caller, across servers sharing
    /// the store, gets `true` for a due time later than the last one claimed.
    pub async fn claim_cron_fire(
        &self,
        ns: &str,
        function: &str,
        name: &str,
        due: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO trigger_states (namespace, function, name, last_fire, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (namespace, function, name) DO UPDATE SET last_fire = excluded.last_fire, updated_at = excluded.updated_at
             WHERE trigger_states.last_fire IS NULL OR trigger_states.last_fire < excluded.last_fire",
        )
        .bind(ns)
        .bind(function)
        .bind(name)
        .bind(due)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Keeps records a trigger gave up on.
    pub async fn add_trigger_dead_letters(
        &self,
        ns: &str,
        function: &str,
        name: &str,
        letters: &[TriggerDeadLetter],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for l in letters {
            sqlx::query(
                "INSERT INTO trigger_dead_letters (id, namespace, function, name, position, record, error, attempts, dead_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&l.id)
            .bind(ns)
            .bind(function)
            .bind(name)
            .bind(&l.position)
            .bind(&l.record)
            .bind(&l.error)
            .bind(l.attempts as i64)
            .bind(l.dead_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A trigger's dead letters, newest first.
    pub async fn trigger_dead_letters(
        &self,
        ns: &str,
        function: &str,
        name: &str,
        limit: u32,
    ) -> Result<Vec<TriggerDeadLetter>> {
        let rows = sqlx::query(
            "SELECT id, position, record, error, attempts, dead_at FROM trigger_dead_letters
             WHERE namespace = $1 AND function = $2 AND name = $3 ORDER BY dead_at DESC, id DESC LIMIT $4",
        )
        .bind(ns)
        .bind(function)
        .bind(name)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TriggerDeadLetter {
                    id: r.try_get("id")?,
                    position: r.try_get("position")?,
                    record: r.try_get("record")?,
                    error: r.try_get("error")?,
                    attempts: r.try_get::<i64, _>("attempts")? as u32,
                    dead_at: r.try_get("dead_at")?,
                })
            })
            .collect()
    }

    /// The position a trigger settled up to, as it wrote it (`None`: it has none yet).
    pub async fn trigger_position(
        &self,
        ns: &str,
        function: &str,
        name: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT position FROM trigger_states WHERE namespace = $1 AND function = $2 AND name = $3",
        )
        .bind(ns)
        .bind(function)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<String>, _>(0)?,
            None => None,
        })
    }

    /// The trigger's secret, made (random) the first time it is asked for; the same on every
    /// server sharing the store.
    pub async fn trigger_secret(&self, ns: &str, function: &str, name: &str) -> Result<String> {
        let fresh = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let row = sqlx::query(
            "INSERT INTO trigger_states (namespace, function, name, secret, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (namespace, function, name)
             DO UPDATE SET secret = COALESCE(trigger_states.secret, excluded.secret)
             RETURNING secret",
        )
        .bind(ns)
        .bind(function)
        .bind(name)
        .bind(&fresh)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<String>, _>(0)?.unwrap_or(fresh))
    }

    /// Keeps the position a trigger has settled everything before.
    pub async fn set_trigger_position(
        &self,
        ns: &str,
        function: &str,
        name: &str,
        position: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO trigger_states (namespace, function, name, position, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (namespace, function, name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(ns)
        .bind(function)
        .bind(name)
        .bind(position)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a removed trigger's state and dead letters.
    pub async fn remove_trigger(&self, ns: &str, function: &str, name: &str) -> Result<()> {
        for table in ["trigger_states", "trigger_dead_letters"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE namespace = $1 AND function = $2 AND name = $3"
            ))
            .bind(ns)
            .bind(function)
            .bind(name)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
