//! The SQL store. Both backends run the same queries through `sqlx::Any` (`$N` placeholders work
//! on SQLite too); only the migrations differ, for the autoincrement column.

use crate::{now_ms, Result, StoreError};
use futures_core_compat::BoxFuture;
use petrel_core::api::{FunctionSummary, FunctionUsage, InvocationRecord, LogLine, VersionInfo};
use petrel_core::FunctionSpec;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Row};
use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

mod futures_core_compat {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "invocations",
        include_str!("../migrations/sqlite/0002_invocations.sql"),
    ),
    (
        3,
        "idle_histograms",
        include_str!("../migrations/sqlite/0003_idle_histograms.sql"),
    ),
    (
        4,
        "async",
        include_str!("../migrations/sqlite/0004_async.sql"),
    ),
    (
        5,
        "aliases",
        include_str!("../migrations/sqlite/0005_aliases.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "invocations",
        include_str!("../migrations/postgres/0002_invocations.sql"),
    ),
    (
        3,
        "idle_histograms",
        include_str!("../migrations/postgres/0003_idle_histograms.sql"),
    ),
    (
        4,
        "async",
        include_str!("../migrations/postgres/0004_async.sql"),
    ),
    (
        5,
        "aliases",
        include_str!("../migrations/postgres/0005_aliases.sql"),
    ),
];

/// Migrations compiled into the binary.
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> BoxFuture<'s, std::result::Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        Cow::Borrowed(*d),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// A function row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRecord {
    pub namespace: String,
    pub name: String,
    pub latest_version: u32,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Where to continue reading logs from: the id of the last line read.
pub type LogCursor = i64;

/// The SQL store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    /// PostgreSQL's URL, for the connection that listens for the queue's notifications.
    pub(crate) url: Option<std::sync::Arc<str>>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, in WAL mode, and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        Self::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Opens a store from a URL: `sqlite://PATH?mode=rwc` or `postgres://...`, and migrates it.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Database(sqlx::Error::Configuration(
                format!("unsupported store URL {url:?}: use sqlite://PATH or postgres://...")
                    .into(),
            )));
        };
        let pool = AnyPoolOptions::new()
            // SQLite has one writer; a few connections are enough for readers beside it.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 10 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let source = match backend {
            Backend::Sqlite => Embedded(SQLITE_MIGRATIONS),
            Backend::Postgres => Embedded(POSTGRES_MIGRATIONS),
        };
        Migrator::new(source).await?.run(&pool).await?;
        let url = (backend == Backend::Postgres).then(|| std::sync::Arc::from(url));
        Ok(Self { pool, backend, url })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite journal mode (`wal` expected), for checks; `None` on PostgreSQL.
    pub async fn sqlite_journal_mode(&self) -> Result<Option<String>> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(row.try_get::<String, _>(0)?))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Adds a version to a function, creating the function if it does not exist. Version numbers
    /// are handed out atomically, so concurrent deploys of one function get distinct numbers.
    /// Returns the version number and whether the function was created.
    pub async fn create_version(
        &self,
        namespace: &str,
        spec: &FunctionSpec,
        digest: &str,
        size_bytes: u64,
    ) -> Result<(u32, bool)> {
        let now = now_ms();
        let spec_json =
            serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO functions (namespace, name, latest_version, created_at, updated_at)
             VALUES ($1, $2, 1, $3, $3)
             ON CONFLICT (namespace, name) DO UPDATE
               SET latest_version = functions.latest_version + 1, updated_at = $3
             RETURNING latest_version",
        )
        .bind(namespace)
        .bind(&spec.name)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let version: i64 = row.try_get(0)?;
        sqlx::query(
            "INSERT INTO versions (namespace, name, version, runtime, spec, digest, size_bytes, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(namespace)
        .bind(&spec.name)
        .bind(version)
        .bind(spec.runtime.as_str())
        .bind(&spec_json)
        .bind(digest)
        .bind(size_bytes as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((version as u32, version == 1))
    }

    pub async fn get_function(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<FunctionRecord>> {
        let row = sqlx::query(
            "SELECT namespace, name, latest_version, created_at, updated_at FROM functions
             WHERE namespace = $1 AND name = $2",
        )
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| function_record(&r)).transpose()
    }

    /// Functions with their latest runtime, optionally in one namespace, sorted by namespace and name.
    pub async fn list_functions(&self, namespace: Option<&str>) -> Result<Vec<FunctionSummary>> {
        let rows = sqlx::query(
            "SELECT f.namespace, f.name, f.latest_version, f.created_at, f.updated_at, v.runtime
             FROM functions f JOIN versions v
               ON v.namespace = f.namespace AND v.name = f.name AND v.version = f.latest_version
             WHERE ($1 = '' OR f.namespace = $1)
             ORDER BY f.namespace, f.name",
        )
        .bind(namespace.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let f = function_record(r)?;
                Ok(FunctionSummary {
                    namespace: f.namespace,
                    name: f.name,
                    runtime: r.try_get("runtime")?,
                    latest_version: f.latest_version,
                    created_at: f.created_at,
                    updated_at: f.updated_at,
                })
            })
            .collect()
    }

    pub async fn get_version(
        &self,
        namespace: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<VersionInfo>> {
        let row = sqlx::query(
            "SELECT version, spec, digest, size_bytes, created_at FROM versions
             WHERE namespace = $1 AND name = $2 AND version = $3",
        )
        .bind(namespace)
        .bind(name)
        .bind(version as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| version_info(&r)).transpose()
    }

    /// All versions of a function, newest first.
    pub async fn list_versions(&self, namespace: &str, name: &str) -> Result<Vec<VersionInfo>> {
        let rows = sqlx::query(
            "SELECT version, spec, digest, size_bytes, created_at FROM versions
             WHERE namespace = $1 AND name = $2 ORDER BY version DESC",
        )
        .bind(namespace)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_info).collect()
    }

    /// The latest version of every function, for the data plane at start.
    pub async fn latest_versions(&self) -> Result<Vec<(String, VersionInfo)>> {
        let rows = sqlx::query(
            "SELECT f.namespace, v.version, v.spec, v.digest, v.size_bytes, v.created_at
             FROM functions f JOIN versions v
               ON v.namespace = f.namespace AND v.name = f.name AND v.version = f.latest_version
             ORDER BY f.namespace, f.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("namespace")?, version_info(r)?)))
            .collect()
    }

    /// Deletes a function with its versions and logs. Returns whether it existed.
    pub async fn delete_function(&self, namespace: &str, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM functions WHERE namespace = $1 AND name = $2")
            .bind(namespace)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM versions WHERE namespace = $1 AND name = $2")
            .bind(namespace)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        for table in ["logs", "invocations", "async_invocations", "aliases"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE namespace = $1 AND function = $2"
            ))
            .bind(namespace)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(gone > 0)
    }

    /// Digests still referenced by some version, for artifact garbage collection.
    pub async fn referenced_digests(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT digest FROM versions")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

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
}

impl Store {
    /// Saves learned idle-time histograms (JSON), one row per function.
    pub async fn save_idle_histograms(&self, rows: &[(String, String, String)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for (ns, name, hist) in rows {
            sqlx::query(
                "INSERT INTO idle_histograms (namespace, function, histogram, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (namespace, function) DO UPDATE SET histogram = excluded.histogram, updated_at = excluded.updated_at",
            )
            .bind(ns)
            .bind(name)
            .bind(hist)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every saved idle-time histogram: (namespace, function, JSON).
    pub async fn load_idle_histograms(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT namespace, function, histogram FROM idle_histograms")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
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
                    .bind(&r.trigger)
                    .bind(r.started_at)
                    .bind(r.duration_ms as i64)
                    .bind(r.billed_ms as i64)
                    .bind(r.memory_mb as i64)
                    .bind(r.cold_start as i64)
                    .bind(&r.outcome)
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
                    CAST(SUM(CASE WHEN outcome = 'success' THEN 0 ELSE 1 END) AS BIGINT) AS errors,
                    CAST(SUM(billed_ms) AS BIGINT) AS billed_ms,
                    CAST(SUM(memory_mb * billed_ms) AS BIGINT) AS mb_ms
             FROM invocations
             WHERE ($1 = '' OR namespace = $1) AND started_at >= $2 AND started_at < $3
             GROUP BY namespace, function ORDER BY namespace, function",
        )
        .bind(namespace.unwrap_or(""))
        .bind(since)
        .bind(until)
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

/// An alias: a name for a version of a function; `version` `None` follows the latest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub name: String,
    pub version: Option<u32>,
    pub description: String,
    /// Changes with every update (Lambda's `RevisionId`).
    pub revision: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// Creates an alias (`create`), or updates an existing one. Returns `false` when creating an
    /// alias that exists, or updating one that does not.
    pub async fn put_alias(
        &self,
        (namespace, function): (&str, &str),
        name: &str,
        version: Option<u32>,
        description: &str,
        create: bool,
    ) -> Result<bool> {
        let now = now_ms();
        let revision = uuid_like(now);
        let q = if create {
            sqlx::query(
                "INSERT INTO aliases (namespace, function, name, version, description, revision, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (namespace, function, name) DO NOTHING",
            )
        } else {
            sqlx::query(
                "UPDATE aliases SET version = $4, description = $5, revision = $6, updated_at = $7
                 WHERE namespace = $1 AND function = $2 AND name = $3",
            )
        };
        let n = q
            .bind(namespace)
            .bind(function)
            .bind(name)
            .bind(version.map(i64::from))
            .bind(description)
            .bind(&revision)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    pub async fn get_alias(
        &self,
        namespace: &str,
        function: &str,
        name: &str,
    ) -> Result<Option<Alias>> {
        let row = sqlx::query(
            "SELECT name, version, description, revision, created_at, updated_at FROM aliases
             WHERE namespace = $1 AND function = $2 AND name = $3",
        )
        .bind(namespace)
        .bind(function)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| alias(&r)).transpose()
    }

    pub async fn list_aliases(&self, namespace: &str, function: &str) -> Result<Vec<Alias>> {
        let rows = sqlx::query(
            "SELECT name, version, description, revision, created_at, updated_at FROM aliases
             WHERE namespace = $1 AND function = $2 ORDER BY name",
        )
        .bind(namespace)
        .bind(function)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alias).collect()
    }

    /// Returns whether it existed.
    pub async fn delete_alias(&self, namespace: &str, function: &str, name: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM aliases WHERE namespace = $1 AND function = $2 AND name = $3")
                .bind(namespace)
                .bind(function)
                .bind(name)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }
}

fn alias(r: &AnyRow) -> Result<Alias> {
    Ok(Alias {
        name: r.try_get("name")?,
        version: r.try_get::<Option<i64>, _>("version")?.map(|v| v as u32),
        description: r.try_get("description")?,
        revision: r.try_get("revision")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// A revision id: the time and a counter, unique within the process and ordered.
fn uuid_like(now: i64) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{now:x}-{n:x}-{:x}", std::process::id())
}

/// Rows per INSERT statement: well under SQLite's limit of bound parameters.
/// Rows per multi-row INSERT. Batches are cut into these sizes only, so that a handful of
/// prepared statements, cached per connection, serve every batch: preparing a fresh statement of
/// a new size for each batch cost more than the insert itself.
const INSERT_SIZES: [usize; 3] = [64, 8, 1];

/// Splits `items` into chunks whose lengths are all in [`INSERT_SIZES`].
pub(crate) fn insert_chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let n = *INSERT_SIZES.iter().find(|&&n| n <= rest.len())?;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// `head ($1, ..., $k), ($k+1, ...), ... tail` for `rows` rows of `columns` values.
/// `INSERT ... VALUES (..), (..)` for `rows` rows of `columns` parameters. SQLite gets anonymous
/// `?` parameters: it resolves a numbered `$N` by scanning every parameter name, so binding a
/// batch with numbered ones costs time quadratic in its size.
pub(crate) fn multi_row_insert(
    backend: Backend,
    head: &str,
    columns: usize,
    rows: usize,
    tail: &str,
) -> String {
    let mut sql = String::from(head);
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => sql.push_str(&format!("${}", r * columns + c + 1)),
            }
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

fn invocation_record(r: &AnyRow) -> Result<InvocationRecord> {
    Ok(InvocationRecord {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        function: r.try_get("function")?,
        version: r.try_get::<i64, _>("version")? as u32,
        trigger: r.try_get("trigger")?,
        started_at: r.try_get("started_at")?,
        duration_ms: r.try_get::<i64, _>("duration_ms")? as u64,
        billed_ms: r.try_get::<i64, _>("billed_ms")? as u64,
        memory_mb: r.try_get::<i64, _>("memory_mb")? as u32,
        cold_start: r.try_get::<i64, _>("cold_start")? != 0,
        outcome: r.try_get("outcome")?,
        error: r.try_get("error")?,
        instance: r.try_get("instance")?,
    })
}

fn function_record(r: &AnyRow) -> Result<FunctionRecord> {
    Ok(FunctionRecord {
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
        latest_version: r.try_get::<i64, _>("latest_version")? as u32,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn version_info(r: &AnyRow) -> Result<VersionInfo> {
    let spec: String = r.try_get("spec")?;
    Ok(VersionInfo {
        version: r.try_get::<i64, _>("version")? as u32,
        digest: r.try_get("digest")?,
        size_bytes: r.try_get::<i64, _>("size_bytes")? as u64,
        created_at: r.try_get("created_at")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Corrupt(format!("version spec: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_the_cached_statement_sizes() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 200, 513] {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = insert_chunks(&items).collect();
            assert!(
                chunks.iter().all(|c| INSERT_SIZES.contains(&c.len())),
                "{n}"
            );
            let joined: Vec<usize> = chunks.concat();
            assert_eq!(joined, items, "{n}: every item once, in order");
        }
    }

    #[test]
    fn sqlite_gets_anonymous_parameters_and_postgres_numbered_ones() {
        assert_eq!(
            multi_row_insert(Backend::Sqlite, "I ", 2, 2, ""),
            "I (?, ?), (?, ?)"
        );
        assert_eq!(
            multi_row_insert(Backend::Postgres, "I ", 2, 2, ""),
            "I ($1, $2), ($3, $4)"
        );
    }
}
