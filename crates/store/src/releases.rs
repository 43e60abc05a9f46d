//! Rollouts: a plan that moves an alias's traffic to a new version step by step, with its state,
//! history and the lease of the server that drives it; and what the records say of a version
//! over a step (calls, errors, p99), which the driver judges.

use crate::store::Store;
use crate::{now_ms, Result, StoreError};
use petrel_core::release::{RolloutEvent, RolloutInfo, RolloutPlan, RolloutState};
use sqlx::any::AnyRow;
use sqlx::Row;

const COLUMNS: &str = "id, namespace, function, alias, from_version, to_version, plan, state, step,
    step_started_at, reason, history, created_at, updated_at";

/// What a version's records say over a span of time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VersionStats {
    pub calls: u64,
    /// Calls that did not end in `success` (a handler's error, a timeout, a crash, ...).
    pub errors: u64,
    /// The 99th percentile of the calls' durations, in milliseconds (0 without calls).
    pub p99_ms: u64,
}

impl VersionStats {
    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }
}

/// How long a new rollout is held from the drivers while its start moves the alias.
const START_HOLD_MS: i64 = 30_000;

impl Store {
    /// Starts a rollout of `alias` from `from` to `to`; `None` when the alias already has one in
    /// progress. No driver claims it until [`Store::rollout_started`] (or, should the server die
    /// in between, until 30 s have passed): its start still has to move the alias,
    /// and a driver looking before that would take the unmoved alias for a change by hand.
    pub async fn create_rollout(
        &self,
        (namespace, function): (&str, &str),
        alias: &str,
        (from, to): (u32, u32),
        plan: &RolloutPlan,
        first: RolloutEvent,
    ) -> Result<Option<RolloutInfo>> {
        if self
            .active_rollout(namespace, function, alias)
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let now = now_ms();
        let plan_json = serde_json::to_string(plan).expect("a plan serialises");
        let history = serde_json::to_string(&[first]).expect("history serialises");
        let row = sqlx::query(&format!(
            "INSERT INTO rollouts (namespace, function, alias, from_version, to_version, plan, state,
               step, step_started_at, history, created_at, updated_at,
               lease_until)
             VALUES ($1, $2, $3, $4, $5, $6, 'running', 0, $7, $8, $7, $7, $9)
             RETURNING {COLUMNS}"
        ))
        .bind(namespace)
        .bind(function)
        .bind(alias)
        .bind(i64::from(from))
        .bind(i64::from(to))
        .bind(&plan_json)
        .bind(now)
        .bind(&history)
        .bind(now + START_HOLD_MS)
        .fetch_one(&self.pool)
        .await;
        match row {
            Ok(r) => rollout(&r).map(Some),
            // Another server started one between the check and the insert.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the hold [`Store::create_rollout`] put on a new rollout: its alias has moved, and a
    /// driver may claim it now.
    pub async fn rollout_started(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE rollouts SET lease_until = 0 WHERE id = $1 AND lease_owner IS NULL")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_rollout(&self, id: i64) -> Result<Option<RolloutInfo>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| rollout(&r)).transpose()
    }

    /// The rollout in progress (running or paused) on an alias, if any.
    pub async fn active_rollout(
        &self,
        namespace: &str,
        function: &str,
        alias: &str,
    ) -> Result<Option<RolloutInfo>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rollouts
             WHERE namespace = $1 AND function = $2 AND alias = $3 AND state IN ('running', 'paused')"
        ))
        .bind(namespace)
        .bind(function)
        .bind(alias)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| rollout(&r)).transpose()
    }

    /// A function's rollouts, newest first.
    pub async fn list_rollouts(&self, namespace: &str, function: &str) -> Result<Vec<RolloutInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rollouts WHERE namespace = $1 AND function = $2 ORDER BY id DESC"
        ))
        .bind(namespace)
        .bind(function)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rollout).collect()
    }

    /// Whether any rollout is running: a read, so that an idle server's driver writes nothing.
    pub async fn any_running_rollout(&self) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM rollouts WHERE state = 'running' LIMIT 1")
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Takes (or renews) the lease of every running rollout whose lease is free or already
    /// `owner`'s, until `until`: with several servers on one database, exactly one drives each.
    pub async fn claim_rollouts(&self, owner: &str, until: i64) -> Result<Vec<RolloutInfo>> {
        let now = now_ms();
        let rows = sqlx::query(&format!(
            "UPDATE rollouts SET lease_owner = $1, lease_until = $2
             WHERE state = 'running' AND (lease_until < $3 OR lease_owner = $1)
             RETURNING {COLUMNS}"
        ))
        .bind(owner)
        .bind(until)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rollout).collect()
    }

    /// Writes a rollout's new state, step and history. With `owner`, only while that server
    /// still holds its lease (a driver that lost it writes nothing); without, by hand (pause,
    /// resume, abort). Returns whether it was written.
    pub async fn update_rollout(&self, r: &RolloutInfo, owner: Option<&str>) -> Result<bool> {
        let history = serde_json::to_string(&r.history).expect("history serialises");
        let n = sqlx::query(
            "UPDATE rollouts SET state = $2, step = $3, step_started_at = $4, reason = $5,
               history = $6, updated_at = $7
             WHERE id = $1 AND ($8 = '' OR lease_owner = $8)",
        )
        .bind(r.id)
        .bind(r.state.as_str())
        .bind(r.step as i64)
        .bind(r.step_started_at)
        .bind(r.reason.as_deref())
        .bind(&history)
        .bind(now_ms())
        .bind(owner.unwrap_or(""))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Calls, errors and p99 of one version of a function since `since` (milliseconds), from
    /// its invocation records.
    pub async fn version_stats(
        &self,
        (namespace, function): (&str, &str),
        version: u32,
        since: i64,
    ) -> Result<VersionStats> {
        // Counted by the database, and the p99 read as one row: a busy step holds many records.
        const WHERE: &str =
            "WHERE namespace = $1 AND function = $2 AND version = $3 AND started_at >= $4";
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS calls,
               COALESCE(SUM(CASE WHEN outcome <> 'success' THEN 1 ELSE 0 END), 0) AS errors
             FROM invocations {WHERE}"
        ))
        .bind(namespace)
        .bind(function)
        .bind(i64::from(version))
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        let calls = row.try_get::<i64, _>("calls")?.max(0) as u64;
        let errors = row.try_get::<i64, _>("errors")?.max(0) as u64;
        if calls == 0 {
            return Ok(VersionStats::default());
        }
        // The ceil(0.99 n)-th smallest duration, counted from the largest.
        let rank = ((calls as f64 * 0.99).ceil() as u64).clamp(1, calls);
        let p99: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT duration_ms FROM invocations {WHERE} ORDER BY duration_ms DESC LIMIT 1 OFFSET $5"
        ))
        .bind(namespace)
        .bind(function)
        .bind(i64::from(version))
        .bind(since)
        .bind((calls - rank) as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(VersionStats {
            calls,
            errors,
            p99_ms: p99.unwrap_or(0).max(0) as u64,
        })
    }
}

fn rollout(r: &AnyRow) -> Result<RolloutInfo> {
    let corrupt = |what: &str, e: String| StoreError::Corrupt(format!("rollout {what}: {e}"));
    let plan: String = r.try_get("plan")?;
    let history: String = r.try_get("history")?;
    let state: String = r.try_get("state")?;
    Ok(RolloutInfo {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        function: r.try_get("function")?,
        alias: r.try_get("alias")?,
        from_version: r.try_get::<i64, _>("from_version")? as u32,
        to_version: r.try_get::<i64, _>("to_version")? as u32,
        plan: serde_json::from_str(&plan).map_err(|e| corrupt("plan", e.to_string()))?,
        state: state
            .parse::<RolloutState>()
            .map_err(|e| corrupt("state", e))?,
        step: r.try_get::<i64, _>("step")? as usize,
        step_started_at: r.try_get("step_started_at")?,
        reason: r.try_get("reason")?,
        history: serde_json::from_str(&history).map_err(|e| corrupt("history", e.to_string()))?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}
