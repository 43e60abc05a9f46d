//! What tenancy keeps: namespaces with their quotas, API keys (hashed, with their roles per
//! namespace), secrets (sealed by the server before they get here) and the audit log.
//!
//! Nothing here sees a token or a secret's value in clear: the server hashes and seals them.

use crate::store::Store;
use crate::{now_ms, Result, StoreError};
use sqlx::Row;

/// A stored API key, without anything that would let one use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub description: String,
    /// argon2id of the token, as a PHC string.
    pub hash: String,
    pub owner: bool,
    /// The token sealed under the master key (for SigV4), if kept.
    pub sigv4: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// (namespace, role) pairs.
    pub roles: Vec<(String, String)>,
}

/// A secret's stored form: sealed value and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub name: String,
    pub sealed: String,
    pub version: i64,
    pub updated_at: i64,
}

/// One control-plane action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEntry {
    pub id: i64,
    pub ts: i64,
    pub namespace: Option<String>,
    pub key_id: Option<String>,
    pub action: String,
    pub target: String,
    pub source: Option<String>,
    pub outcome: String,
}

impl Store {
    /// Creates a namespace; `false` when it exists.
    pub async fn create_namespace(&self, name: &str) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO namespaces (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn namespace_exists(&self, name: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM namespaces WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Every namespace with its creation time and function count, by name.
    pub async fn list_namespaces(&self) -> Result<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT n.name, n.created_at, (SELECT COUNT(*) FROM functions f WHERE f.namespace = n.name) AS functions
             FROM namespaces n ORDER BY n.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Removes an empty namespace with its roles and secrets. `Err(n)` inside: it still holds
    /// `n` functions; `Ok(false)`: there was no such namespace.
    pub async fn delete_namespace(&self, name: &str) -> Result<std::result::Result<bool, i64>> {
        let mut tx = self.pool.begin().await?;
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM functions WHERE namespace = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if n > 0 {
            return Ok(Err(n));
        }
        let gone = sqlx::query("DELETE FROM namespaces WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        for table in ["key_roles", "secrets"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE namespace = $1"))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(gone))
    }

    /// A namespace's quotas as stored (JSON), `None` for none set.
    pub async fn namespace_quotas(&self, name: &str) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT quotas FROM namespaces WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?
            .flatten())
    }

    /// Every namespace's quotas that are set.
    pub async fn all_quotas(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, quotas FROM namespaces WHERE quotas IS NOT NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Sets a namespace's quotas; `false` when there is no such namespace.
    pub async fn set_namespace_quotas(&self, name: &str, quotas: Option<&str>) -> Result<bool> {
        Ok(
            sqlx::query("UPDATE namespaces SET quotas = $1 WHERE name = $2")
                .bind(quotas)
                .bind(name)
                .execute(&self.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// How many keys were ever made (revoked ones too): none means a fresh store.
    pub async fn key_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    /// Stores a new key with its roles.
    pub async fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, description, hash, owner, sigv4, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.id)
        .bind(&k.description)
        .bind(&k.hash)
        .bind(k.owner as i64)
        .bind(&k.sigv4)
        .bind(&k.created_by)
        .bind(k.created_at)
        .execute(&mut *tx)
        .await?;
        for (ns, role) in &k.roles {
            sqlx::query("INSERT INTO key_roles (key_id, namespace, role) VALUES ($1, $2, $3)")
                .bind(&k.id)
                .bind(ns)
                .bind(role)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn key_of(r: &sqlx::any::AnyRow, roles: Vec<(String, String)>) -> Result<KeyRecord> {
        Ok(KeyRecord {
            id: r.try_get("id")?,
            description: r.try_get("description")?,
            hash: r.try_get("hash")?,
            owner: r.try_get::<i64, _>("owner")? != 0,
            sigv4: r.try_get("sigv4")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
            revoked_at: r.try_get("revoked_at")?,
            roles,
        })
    }

    /// One key with its roles.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>> {
        let Some(row) = sqlx::query(
            "SELECT id, description, hash, owner, sigv4, created_by, created_at, revoked_at FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let roles = sqlx::query("SELECT namespace, role FROM key_roles WHERE key_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>>>()?;
        Self::key_of(&row, roles).map(Some)
    }

    /// Every key (with its roles), oldest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query(
            "SELECT id, description, hash, owner, sigv4, created_by, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let roles = sqlx::query("SELECT key_id, namespace, role FROM key_roles ORDER BY namespace")
            .fetch_all(&self.pool)
            .await?;
        let mut by_key: std::collections::HashMap<String, Vec<(String, String)>> =
            Default::default();
        for r in &roles {
            by_key
                .entry(r.try_get(0)?)
                .or_default()
                .push((r.try_get(1)?, r.try_get(2)?));
        }
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let roles = by_key.remove(&id).unwrap_or_default();
                Self::key_of(r, roles)
            })
            .collect()
    }

    /// Revokes a key; `false` when there is none of that id or it was revoked already.
    pub async fn revoke_key(&self, id: &str) -> Result<bool> {
        Ok(
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Stores a secret's new sealed value; its new version.
    pub async fn put_secret(&self, ns: &str, name: &str, sealed: &str) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO secrets (namespace, name, sealed, version, updated_at) VALUES ($1, $2, $3, 1, $4)
             ON CONFLICT (namespace, name)
             DO UPDATE SET sealed = excluded.sealed, version = secrets.version + 1, updated_at = excluded.updated_at
             RETURNING version",
        )
        .bind(ns)
        .bind(name)
        .bind(sealed)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn secret(&self, ns: &str, name: &str) -> Result<Option<SecretRecord>> {
        sqlx::query(
            "SELECT name, sealed, version, updated_at FROM secrets WHERE namespace = $1 AND name = $2",
        )
        .bind(ns)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| secret_of(&r))
        .transpose()
    }

    /// A namespace's secrets, by name (sealed values included: the caller must not show them).
    pub async fn list_secrets(&self, ns: &str) -> Result<Vec<SecretRecord>> {
        sqlx::query(
            "SELECT name, sealed, version, updated_at FROM secrets WHERE namespace = $1 ORDER BY name",
        )
        .bind(ns)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(secret_of)
        .collect()
    }

    pub async fn delete_secret(&self, ns: &str, name: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM secrets WHERE namespace = $1 AND name = $2")
                .bind(ns)
                .bind(name)
                .execute(&self.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    pub async fn insert_audit(&self, e: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (ts, namespace, key_id, action, target, source, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.ts)
        .bind(&e.namespace)
        .bind(&e.key_id)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.source)
        .bind(&e.outcome)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` entries of a namespace's audit log (all namespaces, and the actions of
    /// none, with `None`), newest first.
    pub async fn list_audit(&self, ns: Option<&str>, limit: u32) -> Result<Vec<AuditEntry>> {
        let q = match ns {
            Some(_) => "SELECT id, ts, namespace, key_id, action, target, source, outcome FROM audit WHERE namespace = $1 ORDER BY id DESC LIMIT $2",
            None => "SELECT id, ts, namespace, key_id, action, target, source, outcome FROM audit WHERE $1 = $1 ORDER BY id DESC LIMIT $2",
        };
        let rows = sqlx::query(q)
            .bind(ns.unwrap_or(""))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    ts: r.try_get(1)?,
                    namespace: r.try_get(2)?,
                    key_id: r.try_get(3)?,
                    action: r.try_get(4)?,
                    target: r.try_get(5)?,
                    source: r.try_get(6)?,
                    outcome: r.try_get(7)?,
                })
            })
            .collect::<Result<_>>()
            .map_err(|e: StoreError| e)
    }
}

fn secret_of(r: &sqlx::any::AnyRow) -> Result<SecretRecord> {
    Ok(SecretRecord {
        name: r.try_get(0)?,
        sealed: r.try_get(1)?,
        version: r.try_get(2)?,
        updated_at: r.try_get(3)?,
    })
}
