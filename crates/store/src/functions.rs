//! Functions, their versions and their aliases.

use crate::store::Store;
use crate::{now_ms, Result, StoreError};
use petrel_core::api::{FunctionSummary, VersionInfo};
use petrel_core::release::{AliasRoute, Weighted};
use petrel_core::FunctionSpec;
use sqlx::any::AnyRow;
use sqlx::Row;

/// A function row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRecord {
    pub namespace: String,
    pub name: String,
    pub latest_version: u32,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
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
        for table in [
            "logs",
            "invocations",
            "async_invocations",
            "aliases",
            "rollouts",
        ] {
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
}

/// An alias: a name for a version of a function (`None` follows the latest), or for two with a
/// weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    pub name: String,
    pub route: AliasRoute,
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
        route: AliasRoute,
        description: &str,
        create: bool,
    ) -> Result<bool> {
        let now = now_ms();
        let revision = uuid_like(now);
        let q = if create {
            sqlx::query(
                "INSERT INTO aliases (namespace, function, name, version, description, revision, created_at, updated_at, additional_version, additional_ppm)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9) ON CONFLICT (namespace, function, name) DO NOTHING",
            )
        } else {
            sqlx::query(
                "UPDATE aliases SET version = $4, description = $5, revision = $6, updated_at = $7,
                   additional_version = $8, additional_ppm = $9
                 WHERE namespace = $1 AND function = $2 AND name = $3",
            )
        };
        let n = q
            .bind(namespace)
            .bind(function)
            .bind(name)
            .bind(route.version.map(i64::from))
            .bind(description)
            .bind(&revision)
            .bind(now)
            .bind(route.additional.map(|w| i64::from(w.version)))
            .bind(
                route
                    .additional
                    .map_or(0, |w| (w.weight * 1e6).round() as i64),
            )
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Moves an alias's traffic to `route` if it still is `expected` (a rollout's step that lost
    /// no race with a change by hand). Returns whether it moved.
    pub async fn move_alias(
        &self,
        (namespace, function): (&str, &str),
        name: &str,
        expected: AliasRoute,
        route: AliasRoute,
    ) -> Result<bool> {
        let Some(current) = self.get_alias(namespace, function, name).await? else {
            return Ok(false);
        };
        if current.route != expected {
            return Ok(false);
        }
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE aliases SET version = $4, additional_version = $5, additional_ppm = $6,
               revision = $7, updated_at = $8
             WHERE namespace = $1 AND function = $2 AND name = $3 AND revision = $9",
        )
        .bind(namespace)
        .bind(function)
        .bind(name)
        .bind(route.version.map(i64::from))
        .bind(route.additional.map(|w| i64::from(w.version)))
        .bind(
            route
                .additional
                .map_or(0, |w| (w.weight * 1e6).round() as i64),
        )
        .bind(uuid_like(now))
        .bind(now)
        .bind(&current.revision)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Pins every alias of a function that follows the latest version to `version`, so that a
    /// deploy that should move no traffic (`--no-traffic`) leaves them where they are. Returns
    /// how many it pinned.
    pub async fn pin_following_aliases(
        &self,
        namespace: &str,
        function: &str,
        version: u32,
    ) -> Result<u64> {
        let now = now_ms();
        Ok(sqlx::query(
            "UPDATE aliases SET version = $3, revision = $4, updated_at = $5
             WHERE namespace = $1 AND function = $2 AND version IS NULL",
        )
        .bind(namespace)
        .bind(function)
        .bind(i64::from(version))
        .bind(uuid_like(now))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn get_alias(
        &self,
        namespace: &str,
        function: &str,
        name: &str,
    ) -> Result<Option<Alias>> {
        let row = sqlx::query(
            "SELECT name, version, description, revision, created_at, updated_at, additional_version,
               additional_ppm FROM aliases
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
            "SELECT name, version, description, revision, created_at, updated_at, additional_version,
               additional_ppm FROM aliases
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
    let additional = r
        .try_get::<Option<i64>, _>("additional_version")?
        .map(|v| Weighted {
            version: v as u32,
            weight: r.try_get::<i64, _>("additional_ppm").unwrap_or(0) as f64 / 1e6,
        });
    Ok(Alias {
        name: r.try_get("name")?,
        route: AliasRoute {
            version: r.try_get::<Option<i64>, _>("version")?.map(|v| v as u32),
            additional,
        },
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
