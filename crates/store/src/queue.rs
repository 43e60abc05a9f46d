//! The async queue's tables: submissions, leases (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite
//! has one writer), attempts' outcomes, the dead-letter list, and deliveries of outcomes.

use crate::store::{insert_chunks, multi_row_insert, Backend};
use crate::{Result, Store, StoreError};
use petrel_core::api::{
    AsyncBacklog, AsyncInvocation, AsyncKind, AsyncStatus, DeliveryState, DeliveryStatus,
    InvocationResult, Trigger,
};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A submission, as written before its `202`.
#[derive(Debug, Clone)]
pub struct NewAsync {
    pub id: String,
    pub namespace: String,
    pub function: String,
    pub version: Option<u32>,
    pub kind: AsyncKind,
    pub method: String,
    /// The path and query the function sees (`http`), or empty.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub created_at: i64,
    /// When it may first run (its creation, or later for a follow-up).
    pub run_at: i64,
    pub callback_url: Option<String>,
    pub idem_key: Option<String>,
}

impl NewAsync {
    /// A JSON event for `function`, to run now at its latest version, with no callback: what a
    /// destination (an async outcome's, a trigger's `on_failure`) queues.
    pub fn event(id: String, namespace: &str, function: &str, body: Vec<u8>, now: i64) -> Self {
        Self {
            id,
            namespace: namespace.to_owned(),
            function: function.to_owned(),
            version: None,
            kind: AsyncKind::Event,
            method: "POST".into(),
            path: String::new(),
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            created_at: now,
            run_at: now,
            callback_url: None,
            idem_key: None,
        }
    }
}

/// Work a dispatcher claimed: everything needed to run one attempt.
#[derive(Debug, Clone)]
pub struct LeasedAsync {
    pub id: String,
    pub namespace: String,
    pub function: String,
    pub version: Option<u32>,
    pub kind: AsyncKind,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// This attempt's number, from 1 (again from 1 after a replay).
    pub attempt: u32,
    /// Times it was replayed from the dead-letter list.
    pub replays: u32,
    pub created_at: i64,
    pub callback_url: Option<String>,
}

impl LeasedAsync {
    /// The id of this attempt's invocation record: `{id}.{attempt}`, or after replays
    /// `{id}.r{replays}.{attempt}`.
    pub fn record_id(&self) -> String {
        match self.replays {
            0 => format!("{}.{}", self.id, self.attempt),
            r => format!("{}.r{r}.{}", self.id, self.attempt),
        }
    }
}

/// What [`Store::cancel_async`] found.
#[derive(Debug, Clone)]
pub enum Cancel {
    NotFound,
    /// It had already ended (succeeded, failed or cancelled); as it is.
    Ended(AsyncInvocation),
    /// Cancelled: its status before, and the invocation now.
    Cancelled {
        was: AsyncStatus,
        now: AsyncInvocation,
    },
}

/// A function's answer as stored: status, headers, body.
pub type StoredResult = (u16, Vec<(String, String)>, Vec<u8>);

/// How an attempt ended, to record.
#[derive(Debug, Clone)]
pub struct Finish {
    /// `succeeded`, `failed`, `dead`, or `queued` for a retry.
    pub status: AsyncStatus,
    /// When a retry may run.
    pub run_at: i64,
    pub executed_version: Option<u32>,
    pub result: Option<StoredResult>,
    pub error: Option<String>,
    /// Outcomes to POST, in the same transaction.
    pub deliveries: Vec<NewDelivery>,
    /// Async invocations to queue, in the same transaction (function destinations).
    pub follow_ups: Vec<NewAsync>,
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// An attempt that ended, to record.
#[derive(Debug, Clone)]
pub struct Ended {
    pub id: String,
    pub attempt: u32,
    pub now: i64,
    pub finish: Finish,
}

/// A delivery a dispatcher claimed.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub invocation: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// This attempt's number, from 1.
    pub attempt: u32,
}

fn headers_json(h: &[(String, String)]) -> String {
    serde_json::to_string(h).expect("headers serialise")
}

fn headers_from(s: &str) -> Result<Vec<(String, String)>> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("stored headers: {e}")))
}

/// `FOR UPDATE SKIP LOCKED` where the database has it: concurrent servers claim different rows.
fn skip_locked(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    }
}

/// The PostgreSQL channel on which the queue announces `namespace/function` that got work.
const WAKE_CHANNEL: &str = "petrel_async";

/// Announces, at the transaction's commit, that functions got work: every server listening on
/// PostgreSQL wakes its dispatcher for them. Nothing on SQLite (one server per file).
async fn announce(
    backend: Backend,
    tx: &mut sqlx::AnyConnection,
    keys: Vec<(String, String)>,
) -> Result<()> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    let keys: std::collections::BTreeSet<(String, String)> = keys.into_iter().collect();
    for (ns, f) in keys {
        // NOTIFY takes no parameters; names are [a-z0-9-], and quotes are doubled anyway.
        let payload = format!("{ns}/{f}").replace('\'', "''");
        sqlx::query(&format!("NOTIFY {WAKE_CHANNEL}, '{payload}'"))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

const INSERT_HEAD: &str =
    "INSERT INTO async_invocations (id, namespace, function, version, kind, method, path,
   headers, body, status, attempts, created_at, run_at, callback_url, idem_key, replays) VALUES ";
const INSERT_COLUMNS: usize = 16;

fn bind_new<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    n: &'q NewAsync,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&n.id)
        .bind(&n.namespace)
        .bind(&n.function)
        .bind(n.version.map(i64::from))
        .bind(n.kind.as_str())
        .bind(&n.method)
        .bind(&n.path)
        .bind(headers_json(&n.headers))
        .bind(&n.body[..])
        .bind(AsyncStatus::Queued.as_str())
        .bind(0i64)
        .bind(n.created_at)
        .bind(n.run_at)
        .bind(n.callback_url.as_deref())
        .bind(n.idem_key.as_deref())
        .bind(0i64)
}

impl Store {
    /// Writes submissions in one transaction: the group commit of the accept path.
    pub async fn insert_async(&self, items: &[NewAsync]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in insert_chunks(items) {
            let sql = multi_row_insert(self.backend, INSERT_HEAD, INSERT_COLUMNS, chunk.len(), "");
            let mut q = sqlx::query(&sql);
            for n in chunk {
                q = bind_new(q, n);
            }
            q.execute(&mut *tx).await?;
        }
        let keys = items
            .iter()
            .map(|n| (n.namespace.clone(), n.function.clone()))
            .collect();
        announce(self.backend, &mut tx, keys).await?;
        tx.commit().await?;
        Ok(())
    }

    /// PostgreSQL: the functions that got async work, as the queue announces them (this
    /// server's own submissions included), until the receiver is dropped. `None` on SQLite.
    /// Announcements made while the listening connection is down are lost: the dispatcher's
    /// poll finds that work.
    pub async fn async_wakes(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<(String, String)>>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(WAKE_CHANNEL).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        let Some((ns, f)) = n.payload().split_once('/') else {
                            continue;
                        };
                        // Full: the dispatcher is busy, and its poll finds the work anyway.
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send((ns.to_owned(), f.to_owned()))
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "async: the PostgreSQL notification listener failed; reconnecting");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(rx))
    }

    /// Writes a submission that carries an idempotency key, unless one with the same key for the
    /// same function was written less than `window_ms` ago. Returns the id that stands and
    /// whether it was an earlier one.
    pub async fn insert_async_once(&self, n: &NewAsync, window_ms: i64) -> Result<(String, bool)> {
        let key = n.idem_key.as_deref().unwrap_or_default();
        for _ in 0..3 {
            let mut tx = self.pool.begin().await?;
            // A key older than the window is free again.
            sqlx::query(
                "UPDATE async_invocations SET idem_key = NULL
                 WHERE namespace = $1 AND function = $2 AND idem_key = $3 AND created_at < $4",
            )
            .bind(&n.namespace)
            .bind(&n.function)
            .bind(key)
            .bind(n.created_at - window_ms)
            .execute(&mut *tx)
            .await?;
            let earlier = sqlx::query(
                "SELECT id FROM async_invocations WHERE namespace = $1 AND function = $2 AND idem_key = $3",
            )
            .bind(&n.namespace)
            .bind(&n.function)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = earlier {
                return Ok((r.try_get(0)?, true));
            }
            let sql = multi_row_insert(self.backend, INSERT_HEAD, INSERT_COLUMNS, 1, "");
            match bind_new(sqlx::query(&sql), n).execute(&mut *tx).await {
                Ok(_) => {
                    announce(
                        self.backend,
                        &mut tx,
                        vec![(n.namespace.clone(), n.function.clone())],
                    )
                    .await?;
                    tx.commit().await?;
                    return Ok((n.id.clone(), false));
                }
                // Another server wrote the same key between the read and the write: read again.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Corrupt(
            "an idempotency key kept conflicting".into(),
        ))
    }

    /// Functions with work ready to run now, and how much.
    pub async fn ready_async(&self, now: i64) -> Result<Vec<(String, String, u64)>> {
        let rows = sqlx::query(
            "SELECT namespace, function, COUNT(*) FROM async_invocations
             WHERE status = $1 AND run_at <= $2 GROUP BY namespace, function",
        )
        .bind(AsyncStatus::Queued.as_str())
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get::<i64, _>(2)? as u64)))
            .collect()
    }

    /// Claims up to `limit` ready invocations of one function for `owner`, oldest first, and
    /// counts the attempt. Concurrent servers on PostgreSQL never claim the same row.
    pub async fn lease_async(
        &self,
        owner: &str,
        (namespace, function): (&str, &str),
        limit: u32,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<LeasedAsync>> {
        let sql = format!(
            "UPDATE async_invocations
             SET status = $1, attempts = attempts + 1, lease_owner = $2, lease_until = $3, started_at = $4
             WHERE id IN (
               SELECT id FROM async_invocations
               WHERE namespace = $5 AND function = $6 AND status = $7 AND run_at <= $4
               ORDER BY run_at LIMIT $8{})
             RETURNING id, namespace, function, version, kind, method, path, headers, body, attempts,
               replays, created_at, callback_url",
            skip_locked(self.backend)
        );
        let rows = sqlx::query(&sql)
            .bind(AsyncStatus::Running.as_str())
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(namespace)
            .bind(function)
            .bind(AsyncStatus::Queued.as_str())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut jobs = rows.iter().map(leased).collect::<Result<Vec<_>>>()?;
        jobs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(jobs)
    }

    /// Ends every queued invocation of a function as `failed` with `error` (the function does
    /// not exist). Returns how many.
    pub async fn fail_queued(
        &self,
        namespace: &str,
        function: &str,
        error: &str,
        now: i64,
    ) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE async_invocations SET status = $1, error = $2, finished_at = $3
             WHERE namespace = $4 AND function = $5 AND status = $6",
        )
        .bind(AsyncStatus::Failed.as_str())
        .bind(error)
        .bind(now)
        .bind(namespace)
        .bind(function)
        .bind(AsyncStatus::Queued.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Extends the claims `owner` holds: its heartbeat.
    pub async fn renew_async_leases(&self, owner: &str, until: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE async_invocations SET lease_until = $1 WHERE lease_owner = $2 AND status = $3",
        )
        .bind(until)
        .bind(owner)
        .bind(AsyncStatus::Running.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Queues again what was running under a claim that lapsed (its server died), or, with
    /// `owner`, everything that server had running (it restarted). Attempts stay counted.
    pub async fn requeue_async(&self, owner: Option<&str>, now: i64) -> Result<u64> {
        let q = match owner {
            Some(o) => sqlx::query(
                "UPDATE async_invocations SET status = $1, run_at = $2, error = $3
                 WHERE status = $4 AND lease_owner = $5",
            )
            .bind(AsyncStatus::Queued.as_str())
            .bind(now)
            .bind("the server running this attempt stopped before it ended; queued again")
            .bind(AsyncStatus::Running.as_str())
            .bind(o),
            None => sqlx::query(
                "UPDATE async_invocations SET status = $1, run_at = $2, error = $3
                 WHERE status = $4 AND lease_until < $5",
            )
            .bind(AsyncStatus::Queued.as_str())
            .bind(now)
            .bind("the server running this attempt stopped answering; queued again")
            .bind(AsyncStatus::Running.as_str())
            .bind(now),
        };
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    /// Records how attempts ended, in one transaction: each one if `owner` still holds it as
    /// that attempt, and with it the deliveries and follow-ups it causes. Returns, per attempt,
    /// whether the claim held.
    pub async fn finish_async(&self, owner: &str, ended: &[Ended]) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await?;
        let mut held = Vec::with_capacity(ended.len());
        for e in ended {
            let f = &e.finish;
            let (rs, rh, rb) = match &f.result {
                Some((s, h, b)) => (Some(*s as i64), Some(headers_json(h)), Some(&b[..])),
                None => (None, None, None),
            };
            let finished = (f.status != AsyncStatus::Queued).then_some(e.now);
            let ok = sqlx::query(
                "UPDATE async_invocations
                 SET status = $1, run_at = $2, finished_at = $3, executed_version = $4, result_status = $5,
                     result_headers = $6, result_body = $7, error = $8, lease_until = NULL
                 WHERE id = $9 AND lease_owner = $10 AND attempts = $11 AND status = $12",
            )
            .bind(f.status.as_str())
            .bind(f.run_at)
            .bind(finished)
            .bind(f.executed_version.map(i64::from))
            .bind(rs)
            .bind(rh)
            .bind(rb)
            .bind(f.error.as_deref())
            .bind(&e.id)
            .bind(owner)
            .bind(e.attempt as i64)
            .bind(AsyncStatus::Running.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            held.push(ok);
            if !ok {
                continue;
            }
            for d in &f.deliveries {
                sqlx::query(
                    "INSERT INTO async_deliveries (invocation, url, headers, body, status, attempts, next_at)
                     VALUES ($1, $2, $3, $4, 'pending', 0, $5)",
                )
                .bind(&e.id)
                .bind(&d.url)
                .bind(headers_json(&d.headers))
                .bind(&d.body[..])
                .bind(e.now)
                .execute(&mut *tx)
                .await?;
            }
            for n in &f.follow_ups {
                let sql = multi_row_insert(self.backend, INSERT_HEAD, INSERT_COLUMNS, 1, "");
                bind_new(sqlx::query(&sql), n).execute(&mut *tx).await?;
            }
        }
        let mut follow_ups = Vec::new();
        for (e, h) in ended.iter().zip(&held) {
            if *h {
                for n in &e.finish.follow_ups {
                    follow_ups.push((n.namespace.clone(), n.function.clone()));
                }
            }
        }
        announce(self.backend, &mut tx, follow_ups).await?;
        tx.commit().await?;
        Ok(held)
    }

    /// One async invocation, with its deliveries.
    pub async fn get_async(&self, id: &str) -> Result<Option<AsyncInvocation>> {
        let row = sqlx::query(&format!(
            "SELECT {VIEW_COLUMNS} FROM async_invocations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(mut a) = row.map(|r| view(&r)).transpose()? else {
            return Ok(None);
        };
        a.deliveries = self
            .deliveries_of(id)
            .await?
            .into_iter()
            .map(|(url, status, attempts, error)| DeliveryStatus {
                url,
                status,
                attempts,
                error,
            })
            .collect();
        Ok(Some(a))
    }

    /// Cancels an async invocation that has not ended: queued (a retry waiting included),
    /// running, or dead. The outcome of an attempt still running can no longer be recorded
    /// (outcomes are written only over a running claim), so nothing runs again and nothing is
    /// delivered; stopping the attempt is its server's part (see `cancelled_claims`).
    pub async fn cancel_async(&self, id: &str, now: i64) -> Result<Cancel> {
        // The status may change between the read and the write (a claim, an outcome): the write
        // is guarded by the status read, and read again when it lost.
        loop {
            let Some(before) = self.get_async(id).await? else {
                return Ok(Cancel::NotFound);
            };
            if ![AsyncStatus::Queued, AsyncStatus::Running, AsyncStatus::Dead]
                .contains(&before.status)
            {
                return Ok(Cancel::Ended(before));
            }
            let done = sqlx::query(
                "UPDATE async_invocations SET status = $1, finished_at = $2,
                   error = $3 || COALESCE('; before: ' || error, '')
                 WHERE id = $4 AND status = $5",
            )
            .bind(AsyncStatus::Cancelled.as_str())
            .bind(now)
            .bind(format!("cancelled while {}", before.status))
            .bind(id)
            .bind(before.status.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected();
            if done == 1 {
                let after = self.get_async(id).await?.ok_or_else(|| {
                    StoreError::Corrupt(format!("async invocation {id} vanished"))
                })?;
                return Ok(Cancel::Cancelled {
                    was: before.status,
                    now: after,
                });
            }
        }
    }

    /// The invocations claimed by `owner` that were cancelled since `since` (ms): the attempts
    /// that server should stop, if they still run.
    pub async fn cancelled_claims(&self, owner: &str, since: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM async_invocations
             WHERE lease_owner = $1 AND status = $2 AND finished_at >= $3",
        )
        .bind(owner)
        .bind(AsyncStatus::Cancelled.as_str())
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// The queue's depth for the metrics: per function, how many invocations are queued, running
    /// and dead, and when the oldest queued one was submitted. Shared by every server on the
    /// database, so each reports the same numbers.
    pub async fn async_backlog(&self) -> Result<Vec<AsyncBacklog>> {
        let rows = sqlx::query(
            "SELECT namespace, function, status, COUNT(*), MIN(created_at) FROM async_invocations
             WHERE status IN ($1, $2, $3) GROUP BY namespace, function, status
             ORDER BY namespace, function, status",
        )
        .bind(AsyncStatus::Queued.as_str())
        .bind(AsyncStatus::Running.as_str())
        .bind(AsyncStatus::Dead.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AsyncBacklog {
                    namespace: r.try_get(0)?,
                    function: r.try_get(1)?,
                    status: parse(&r.try_get::<String, _>(2)?)?,
                    count: r.try_get::<i64, _>(3)? as u64,
                    oldest_created_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// A function's async invocations, newest first, optionally in one status.
    pub async fn list_async(
        &self,
        namespace: &str,
        function: &str,
        status: Option<AsyncStatus>,
        limit: u32,
    ) -> Result<Vec<AsyncInvocation>> {
        let rows = sqlx::query(&format!(
            "SELECT {VIEW_COLUMNS} FROM async_invocations
             WHERE namespace = $1 AND function = $2 AND ($3 = '' OR status = $3)
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(namespace)
        .bind(function)
        .bind(status.map(AsyncStatus::as_str).unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(view).collect()
    }

    /// Queues dead-lettered invocations of a function again, with fresh attempts (all of them
    /// when `ids` is empty). Returns the ids queued.
    pub async fn replay_dead(
        &self,
        namespace: &str,
        function: &str,
        ids: &[String],
        now: i64,
    ) -> Result<Vec<String>> {
        // A replay starts its age again too, or max_event_age would kill it at once. Each
        // statement writes first: a SQLite transaction that reads first may not upgrade.
        const REPLAY: &str = "UPDATE async_invocations SET status = $1, attempts = 0, run_at = $2,
               created_at = $2, finished_at = NULL, replays = replays + 1
             WHERE namespace = $3 AND function = $4 AND status = $5 AND ($6 = '' OR id = $6)
             RETURNING id";
        let mut tx = self.pool.begin().await?;
        let mut replayed = Vec::new();
        let all = [String::new()];
        for id in if ids.is_empty() { &all[..] } else { ids } {
            let rows = sqlx::query(REPLAY)
                .bind(AsyncStatus::Queued.as_str())
                .bind(now)
                .bind(namespace)
                .bind(function)
                .bind(AsyncStatus::Dead.as_str())
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            for r in rows {
                replayed.push(r.try_get(0)?);
            }
        }
        if !replayed.is_empty() {
            announce(
                self.backend,
                &mut tx,
                vec![(namespace.to_owned(), function.to_owned())],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(replayed)
    }

    /// Drops finished async invocations: succeeded and failed ones older than `done_ms`, dead
    /// ones older than `dead_ms`, and settled deliveries older than `done_ms`.
    pub async fn trim_async(&self, now: i64, done_ms: i64, dead_ms: i64) -> Result<u64> {
        let mut n = sqlx::query(
            "DELETE FROM async_invocations WHERE status IN ($1, $2, $3) AND finished_at < $4",
        )
        .bind(AsyncStatus::Succeeded.as_str())
        .bind(AsyncStatus::Failed.as_str())
        .bind(AsyncStatus::Cancelled.as_str())
        .bind(now - done_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        n += sqlx::query("DELETE FROM async_invocations WHERE status = $1 AND finished_at < $2")
            .bind(AsyncStatus::Dead.as_str())
            .bind(now - dead_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM async_deliveries WHERE status <> $2 AND next_at < $1")
            .bind(now - done_ms)
            .bind(DeliveryState::Pending.as_str())
            .execute(&self.pool)
            .await?;
        Ok(n)
    }

    /// Claims up to `limit` deliveries that are due, until `lease_until`.
    pub async fn lease_deliveries(
        &self,
        now: i64,
        limit: u32,
        lease_until: i64,
    ) -> Result<Vec<Delivery>> {
        let sql = format!(
            "UPDATE async_deliveries SET attempts = attempts + 1, next_at = $1
             WHERE id IN (SELECT id FROM async_deliveries WHERE status = $4 AND next_at <= $2
                          ORDER BY next_at LIMIT $3{})
             RETURNING id, invocation, url, headers, body, attempts",
            skip_locked(self.backend)
        );
        let rows = sqlx::query(&sql)
            .bind(lease_until)
            .bind(now)
            .bind(limit as i64)
            .bind(DeliveryState::Pending.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Delivery {
                    id: r.try_get("id")?,
                    invocation: r.try_get("invocation")?,
                    url: r.try_get("url")?,
                    headers: headers_from(&r.try_get::<String, _>("headers")?)?,
                    body: r.try_get("body")?,
                    attempt: r.try_get::<i64, _>("attempts")? as u32,
                })
            })
            .collect()
    }

    /// Records a delivery's attempt: `delivered`, `failed` (given up), or `pending` again at
    /// `next_at`.
    pub async fn settle_delivery(
        &self,
        id: i64,
        status: DeliveryState,
        next_at: i64,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE async_deliveries SET status = $1, next_at = $2, error = $3 WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(next_at)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deliveries of one invocation: (url, status, attempts, error), for checks and display.
    pub async fn deliveries_of(
        &self,
        invocation: &str,
    ) -> Result<Vec<(String, DeliveryState, u32, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT url, status, attempts, error FROM async_deliveries WHERE invocation = $1 ORDER BY id",
        )
        .bind(invocation)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    parse(&r.try_get::<String, _>(1)?)?,
                    r.try_get::<i64, _>(2)? as u32,
                    r.try_get(3)?,
                ))
            })
            .collect()
    }
}

const VIEW_COLUMNS: &str = "id, namespace, function, version, status, attempts, created_at, run_at,
  started_at, finished_at, lease_owner, executed_version, result_status, result_headers, result_body,
  error, callback_url, idem_key, replays";

/// A stored enum's value (its text), read back; anything else is corrupt data.
fn parse<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T> {
    text.parse().map_err(StoreError::Corrupt)
}

fn opt_u32(r: &AnyRow, col: &str) -> Result<Option<u32>> {
    Ok(r.try_get::<Option<i64>, _>(col)?.map(|v| v as u32))
}

fn leased(r: &AnyRow) -> Result<LeasedAsync> {
    Ok(LeasedAsync {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        function: r.try_get("function")?,
        version: opt_u32(r, "version")?,
        kind: parse(&r.try_get::<String, _>("kind")?)?,
        method: r.try_get("method")?,
        path: r.try_get("path")?,
        headers: headers_from(&r.try_get::<String, _>("headers")?)?,
        body: r.try_get("body")?,
        attempt: r.try_get::<i64, _>("attempts")? as u32,
        replays: r.try_get::<i64, _>("replays")? as u32,
        created_at: r.try_get("created_at")?,
        callback_url: r.try_get("callback_url")?,
    })
}

fn view(r: &AnyRow) -> Result<AsyncInvocation> {
    let status: AsyncStatus = parse(&r.try_get::<String, _>("status")?)?;
    let result = match r.try_get::<Option<i64>, _>("result_status")? {
        Some(s) => {
            let headers = match r.try_get::<Option<String>, _>("result_headers")? {
                Some(h) => headers_from(&h)?,
                None => Vec::new(),
            };
            let body: Option<Vec<u8>> = r.try_get("result_body")?;
            Some(InvocationResult::new(
                s as u16,
                headers,
                body.as_deref().unwrap_or_default(),
            ))
        }
        None => None,
    };
    let run_at: i64 = r.try_get("run_at")?;
    Ok(AsyncInvocation {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        function: r.try_get("function")?,
        version: opt_u32(r, "version")?,
        trigger: Trigger::Async,
        next_attempt_at: (status == AsyncStatus::Queued).then_some(run_at),
        status,
        attempts: r.try_get::<i64, _>("attempts")? as u32,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        executed_version: opt_u32(r, "executed_version")?,
        error: r.try_get("error")?,
        result,
        callback_url: r.try_get("callback_url")?,
        idempotency_key: r.try_get("idem_key")?,
        replays: r.try_get::<i64, _>("replays")? as u32,
        worker: r.try_get("lease_owner")?,
        deliveries: Vec::new(),
    })
}
