//! What invocations leave behind: function log lines and invocation records (with the usage
//! metering reads from them).

use crate::store::{insert_chunks, multi_row_insert, Store};
use crate::{now_ms, Result, StoreError};
use petrel_core::api::{FunctionUsage, InvocationOutcome, InvocationRecord, LogLine};
use sqlx::any::AnyRow;
use sqlx::Row;

/// Where to continue reading logs from: the id of the last line read.
pub type LogCursor = i64;

impl Store {
    /// Appends log lines in one transaction; returns their cursors, in order.
    pub async fn append_logs(&self, lines: &[LogLine]) -> Result<Vec<LogCursor>> {
        let mut ids = Vec::with_capacity(lines.len());
        if lines.is_empty() {
            return Ok(ids);
        }
        // Many rows per statement: one statement per row made the log writer the costliest part
        // of a busy function's invocations.
        let mut tx = self.pool.begin().await?;
        for chunk in insert_chunks(lines) {
            let sql = multi_row_insert(
                self.backend,
                "INSERT INTO logs (namespace, function, version, instance, invocation, stream, ts, line) VALUES ",
                8,
                chunk.len(),
                " RETURNING id",
            );
            let mut q = sqlx::query(&sql);
            for l in chunk {
                q = q
                    .bind(&l.namespace)
                    .bind(&l.function)
                    .bind(l.version as i64)
                    .bind(&l.instance)
                    .bind(l.invocation.as_deref())
                    .bind(&l.stream)
                    .bind(l.ts)
                    .bind(&l.line);
            }
            let mut chunk_ids = q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            // Ids grow in insertion order; RETURNING does not promise an order.
            chunk_ids.sort_unstable();
            ids.extend(chunk_ids);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Log lines of a function after `after` (a cursor from an earlier read, or 0), not older than
    /// `since_ts`, optionally of one invocation, oldest first, at most `limit`. With `tail`, the
    /// newest `limit` lines are returned (still oldest first).
    #[allow(clippy::too_many_arguments)]
    pub async fn read_logs(
        &self,
        namespace: &str,
        function: &str,
        after: LogCursor,
        since_ts: i64,
        invocation: Option<&str>,
        limit: u32,
        tail: bool,
    ) -> Result<Vec<(LogCursor, LogLine)>> {
        let order = if tail { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT id, namespace, function, version, instance, invocation, stream, ts, line FROM logs
             WHERE namespace = $1 AND function = $2 AND id > $3 AND ts >= $4
               AND ($5 = '' OR invocation = $5)
             ORDER BY id {order} LIMIT $6"
        );
        let rows = sqlx::query(&sql)
            .bind(namespace)
            .bind(function)
            .bind(after)
            .bind(since_ts)
            .bind(invocation.unwrap_or(""))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("id")?,
                    LogLine {
                        ts: r.try_get("ts")?,
                        namespace: r.try_get("namespace")?,
                        function: r.try_get("function")?,
                        version: r.try_get::<i64, _>("version")? as u32,
                        instance: r.try_get("instance")?,
                        invocation: r.try_get("invocation")?,
                        stream: r.try_get("stream")?,
                        line: r.try_get("line")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        if tail {
            out.reverse();
        }
        Ok(out)
    }

    /// Bounds log retention: drops lines older than `max_age_ms` and, per function, all but the
    /// newest `max_lines`. Returns how many lines were dropped.
    pub async fn trim_logs(&self, max_lines: u32, max_age_ms: i64) -> Result<u64> {
        let mut dropped = sqlx::query("DELETE FROM logs WHERE ts < $1")
            .bind(now_ms() - max_age_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let over = sqlx::query(
            "SELECT namespace, function FROM logs GROUP BY namespace, function HAVING COUNT(*) > $1",
        )
        .bind(max_lines as i64)
        .fetch_all(&self.pool)
        .await?;
        for r in over {
            let ns: String = r.try_get(0)?;
            let f: String = r.try_get(1)?;
            dropped += sqlx::query(
                "DELETE FROM logs WHERE namespace = $1 AND function = $2 AND id <= (
                   SELECT id FROM logs WHERE namespace = $1 AND function = $2
                   ORDER BY id DESC LIMIT 1 OFFSET $3)",
            )
            .bind(&ns)
            .bind(&f)
            .bind(max_lines as i64)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(dropped)
    }

    /// Writes invocation records in one transaction.
    pub async fn append_invocations(&self, records: &[InvocationRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in insert_chunks(records) {
            let sql = multi_row_insert(
                self.backend,
                "INSERT INTO invocations (id, namespace, function, version, trigger, started_at, duration_ms,
                   billed_ms, memory_mb, cold_start, outcome, error, instance) VALUES ",
                13,
                chunk.len(),
                " ON CONFLICT (id) DO NOTHING",
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(&r.id)
                    .bind(&r.namespace)
                    .bind(&r.function)
                    .bind(r.version as i64)
                    .bind(r.trigger.to_string())
                    .bind(r.started_at)
                    .bind(r.duration_ms as i64)
                    .bind(r.billed_ms as i64)
                    .bind(r.memory_mb as i64)
                    .bind(r.cold_start as i64)
                    .bind(r.outcome.as_str())
                    .bind(r.error.as_deref())
                    .bind(r.instance.as_deref());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A function's invocations, newest first, optionally of one outcome and since a time.
    pub async fn list_invocations(
        &self,
        namespace: &str,
        function: &str,
        outcome: Option<&str>,
        since: i64,
        limit: u32,
    ) -> Result<Vec<InvocationRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM invocations
             WHERE namespace = $1 AND function = $2 AND ($3 = '' OR outcome = $3) AND started_at >= $4
             ORDER BY started_at DESC, id DESC LIMIT $5",
        )
        .bind(namespace)
        .bind(function)
        .bind(outcome.unwrap_or(""))
        .bind(since)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(invocation_record).collect()
    }

    pub async fn get_invocation(&self, id: &str) -> Result<Option<InvocationRecord>> {
        let row = sqlx::query("SELECT * FROM invocations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| invocation_record(&r)).transpose()
    }

    /// Metered use per function between two times (ms since the epoch), optionally in one
    /// namespace. GB-seconds are memory_mb / 1024 × billed_ms / 1000, summed per invocation.
    pub async fn usage(
        &self,
        namespace: Option<&str>,
        since: i64,
        until: i64,
    ) -> Result<Vec<FunctionUsage>> {
        let rows = sqlx::query(
            // CAST: PostgreSQL sums BIGINT into NUMERIC, which the portable driver does not read.
            "SELECT namespace, function, COUNT(*) AS invocations,
                    CAST(SUM(CASE WHEN outcome = $4 THEN 0 ELSE 1 END) AS BIGINT) AS errors,
                    CAST(SUM(billed_ms) AS BIGINT) AS billed_ms,
                    CAST(SUM(memory_mb * billed_ms) AS BIGINT) AS mb_ms
             FROM invocations
             WHERE ($1 = '' OR namespace = $1) AND started_at >= $2 AND started_at < $3
             GROUP BY namespace, function ORDER BY namespace, function",
        )
        .bind(namespace.unwrap_or(""))
        .bind(since)
        .bind(until)
        .bind(InvocationOutcome::Success.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let mb_ms: i64 = r.try_get("mb_ms")?;
                Ok(FunctionUsage {
                    namespace: r.try_get("namespace")?,
                    function: r.try_get("function")?,
                    invocations: r.try_get::<i64, _>("invocations")? as u64,
                    errors: r.try_get::<i64, _>("errors")? as u64,
                    billed_ms: r.try_get::<i64, _>("billed_ms")? as u64,
                    gb_seconds: mb_ms as f64 / 1024.0 / 1000.0,
                })
            })
            .collect()
    }

    /// Drops invocation records older than `max_age_ms`.
    pub async fn trim_invocations(&self, max_age_ms: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM invocations WHERE started_at < $1")
            .bind(now_ms() - max_age_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

fn invocation_record(r: &AnyRow) -> Result<InvocationRecord> {
    Ok(InvocationRecord {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        function: r.try_get("function")?,
        version: r.try_get::<i64, _>("version")? as u32,
        trigger: r
            .try_get::<String, _>("trigger")?
            .parse()
            .map_err(StoreError::Corrupt)?,
        started_at: r.try_get("started_at")?,
        duration_ms: r.try_get::<i64, _>("duration_ms")? as u64,
        billed_ms: r.try_get::<i64, _>("billed_ms")? as u64,
        memory_mb: r.try_get::<i64, _>("memory_mb")? as u32,
        cold_start: r.try_get::<i64, _>("cold_start")? != 0,
        outcome: r
            .try_get::<String, _>("outcome")?
            .parse()
            .map_err(StoreError::Corrupt)?,
        error: r.try_get("error")?,
        instance: r.try_get("instance")?,
    })
}
