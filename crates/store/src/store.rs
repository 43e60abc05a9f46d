//! The SQL store itself: opening it on SQLite or PostgreSQL, its migrations, and what every
//! table's queries share. Both backends run the same queries through `sqlx::Any` (`$N`
//! placeholders work on SQLite too); only the migrations differ, for the autoincrement column.

use crate::{Result, StoreError};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};
use std::path::Path;
use std::time::Duration;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The migrations of each backend, compiled into the binary from `migrations/<backend>/`.
static SQLITE_MIGRATIONS: Migrator = sqlx_macros::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx_macros::migrate!("migrations/postgres");

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
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
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

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

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
