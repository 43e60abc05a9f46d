//! What the hybrid keep-alive policy learned, per function, so that a restart keeps it.

use crate::store::Store;
use crate::{now_ms, Result};
use sqlx::Row;

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
}
