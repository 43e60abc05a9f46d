//! A PostgreSQL change-stream trigger: logical replication of a publication through a slot
//! Petrel creates (`pgoutput`), read with the SQL interface of logical decoding
//! (`pg_logical_slot_peek_binary_changes`), whole transactions at a time, in commit order. The
//! slot is advanced past a transaction only once its changes are settled (delivered, or sent to
//! `on_failure`), so a crash or a `kill -9` delivers them again, never loses them.
//!
//! One server reads a slot at a time: the reader holds an advisory lock of the source database
//! named after the slot; the other servers wait for it to be free (their trigger shows
//! `starting`, with why). The slot is dropped when the trigger is removed; while the trigger is
//! paused or disabled it stays, and holds WAL back, which the status and the log say.

use crate::batch::{Record, RecordMeta};
use crate::events::Origin;
use crate::lanes::{self, Lane};
use crate::{RunState, TriggerRun};
use bytes::Bytes;
use petrel_core::trigger::PostgresSource;
use serde_json::{json, Map, Value};
use sqlx::{Connection, PgConnection, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long the reader waits before looking again when the slot has nothing new.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

pub(crate) async fn run(run: Arc<TriggerRun>, src: PostgresSource, stop: watch::Receiver<bool>) {
    crate::supervise(&run, stop, |stop| consume(&run, &src, stop)).await
}

pub(crate) fn slot_name(run: &TriggerRun, src: &PostgresSource) -> String {
    src.slot.clone().unwrap_or_else(|| {
        petrel_core::trigger::default_slot(&run.namespace, &run.function, &run.spec.name)
    })
}

async fn connect(url: &str) -> Result<PgConnection, String> {
    let shown = crate::events::redact(url);
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| format!("{shown} is not a PostgreSQL URL: {e}"))?
        .application_name("petrel-trigger");
    tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&opts))
        .await
        .map_err(|_| format!("could not connect to {shown} within 5 s"))?
        .map_err(|e| format!("could not connect to {shown}: {e}"))
}

/// The advisory lock key of a slot: one reader per slot across servers.
fn lock_key(slot: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("petrel-slot\0{slot}").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Creates the slot when it is not there yet; checks the publication.
async fn prepare(conn: &mut PgConnection, slot: &str, publication: &str) -> Result<(), String> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_publication WHERE pubname = $1")
        .bind(publication)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| format!("could not read the publications: {e}"))?;
    if exists.is_none() {
        return Err(format!(
            "publication {publication:?} does not exist: create it, e.g. CREATE PUBLICATION {publication} FOR TABLE orders"
        ));
    }
    let plugin: Option<String> =
        sqlx::query_scalar("SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| format!("could not read the replication slots: {e}"))?;
    match plugin.as_deref() {
        Some("pgoutput") => Ok(()),
        Some(other) => Err(format!(
            "slot {slot:?} exists with the {other} plugin: Petrel reads pgoutput; name another slot"
        )),
        None => {
            sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
                .bind(slot)
                .execute(&mut *conn)
                .await
                .map_err(|e| {
                    format!("could not create the replication slot {slot:?} ({e}); the server needs wal_level = logical and the user the REPLICATION attribute")
                })?;
            tracing::info!(slot, "postgres trigger: created its replication slot");
            Ok(())
        }
    }
}

/// Drops a removed trigger's slot (when it is there and no one reads it).
pub(crate) async fn drop_slot(run: &TriggerRun, src: &PostgresSource) {
    let slot = slot_name(run, src);
    let result = async {
        let mut conn = connect(&src.url).await?;
        for _ in 0..10 {
            let r = sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            )
            .bind(&slot)
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
            if r.rows_affected() > 0 {
                return Ok(true);
            }
            let left: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(&slot)
                    .fetch_optional(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            if left.is_none() {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err::<bool, String>("it stayed in use".into())
    }
    .await;
    match result {
        Ok(true) => {
            tracing::info!(function = %run.function, trigger = %run.spec.name, slot, "postgres trigger removed: dropped its replication slot")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(function = %run.function, trigger = %run.spec.name, slot, error = %e, "postgres trigger removed, but its replication slot could not be dropped: drop it by hand (SELECT pg_drop_replication_slot(...)), as it holds WAL back")
        }
    }
}

/// WAL bytes the slot holds back from its confirmed position to the server's current one.
async fn retained(conn: &mut PgConnection, slot: &str) -> Result<Option<i64>, String> {
    sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(conn)
    .await
    .map(|v: Option<Option<i64>>| v.flatten())
    .map_err(|e| format!("could not read the slot's position: {e}"))
}

/// While a trigger is paused or disabled, its slot holds WAL back: says how much, every minute.
pub(crate) async fn watch_paused(run: Arc<TriggerRun>, src: PostgresSource) {
    let slot = slot_name(&run, &src);
    loop {
        if let Ok(mut conn) = connect(&src.url).await {
            if let Ok(Some(bytes)) = retained(&mut conn, &slot).await {
                run.status.set_lag(bytes.max(0) as u64);
                if bytes > 64 << 20 {
                    tracing::warn!(function = %run.function, trigger = %run.spec.name, slot, wal_bytes = bytes, "a paused postgres trigger's slot holds WAL back: resume the trigger, or remove it to drop the slot");
                }
            }
            let _ = conn.close().await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

async fn consume(
    run: &Arc<TriggerRun>,
    src: &PostgresSource,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let settings = &src.settings;
    let slot = slot_name(run, src);
    let mut conn = connect(&src.url).await?;
    // One reader per slot: wait for the lock while another server holds it.
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(&slot))
            .fetch_one(&mut conn)
            .await
            .map_err(|e| format!("could not take the slot's lock: {e}"))?;
        if got {
            break;
        }
        // Another server reads the slot: this one stands by.
        run.status.set(RunState::Starting);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
    prepare(&mut conn, &slot, &src.publication).await?;
    let database = conn_database(&mut conn).await;
    let origin = Arc::new(Origin::Change {
        kind: "postgres",
        url: src.url.clone(),
    });
    let slots = run.slots();
    let lane: Arc<Lane<()>> = Lane::new(settings.batch_size);
    let (settled_tx, mut settled) = watch::channel(0u64);
    let settled_tx = Arc::new(settled_tx);
    let (lanes_stop_tx, lanes_stop) = watch::channel(false);
    let worker = tokio::spawn(lanes::work(
        run.clone(),
        origin,
        lane.clone(),
        None,
        slots,
        {
            let settled_tx = settled_tx.clone();
            move |acks: Vec<()>| {
                let settled_tx = settled_tx.clone();
                async move { settled_tx.send_modify(|n| *n += acks.len() as u64) }
            }
        },
        |_: &[()]| async {},
        lanes_stop,
    ));
    let lag_task = tokio::spawn(report_lag(run.clone(), src.url.clone(), slot.clone()));
    run.status.set(RunState::Running);
    let mut decoder = Decoder {
        relations: HashMap::new(),
        tables: src.tables.clone(),
        database,
        slot: slot.clone(),
        tx: None,
    };
    let chunk = (settings.batch_size as i64 * 4).max(100);
    let mut pushed: u64 = 0;
    let result: Result<(), String> = 'outer: loop {
        if *stop.borrow() {
            break Ok(());
        }
        let rows = sqlx::query(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2::int, 'proto_version', '1', 'publication_names', $3)",
        )
        .bind(&slot)
        .bind(chunk)
        .bind(&src.publication)
        .fetch_all(&mut conn)
        .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => break Err(format!("could not read slot {slot}: {e}")),
        };
        let mut records = Vec::new();
        let mut end: Option<String> = None;
        for row in &rows {
            let lsn: String = row.get(0);
            let data: Vec<u8> = row.get(1);
            match decoder.message(&lsn, &data) {
                Ok(Some(Decoded::Change(rec))) => records.push(rec),
                Ok(Some(Decoded::Commit(end_lsn))) => end = Some(end_lsn),
                Ok(None) => {}
                Err(e) => break 'outer Err(format!("could not decode a change at {lsn}: {e}")),
            }
        }
        let Some(end) = end else {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        for rec in records {
            if !lane.push(rec, (), &mut stop).await {
                break 'outer Ok(());
            }
            pushed += 1;
        }
        // The slot moves past these transactions once every change of them is settled.
        tokio::select! {
            r = settled.wait_for(|n| *n >= pushed) => if r.is_err() { break Ok(()) },
            _ = stop.changed() => break Ok(()),
        }
        if let Err(e) = sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
            .bind(&slot)
            .bind(&end)
            .execute(&mut conn)
            .await
        {
            break Err(format!("could not advance slot {slot} to {end}: {e}"));
        }
        run.status.set_position(end);
    };
    let _ = lanes_stop_tx.send(true);
    let _ = worker.await;
    lag_task.abort();
    let _ = conn.close().await;
    result
}

async fn conn_database(conn: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(conn)
        .await
        .unwrap_or_default()
}

/// Every 5 s: the WAL the slot has not confirmed yet, in bytes.
async fn report_lag(run: Arc<TriggerRun>, url: String, slot: String) {
    let mut conn: Option<PgConnection> = None;
    loop {
        if conn.is_none() {
            conn = connect(&url).await.ok();
        }
        if let Some(c) = conn.as_mut() {
            match retained(c, &slot).await {
                Ok(Some(bytes)) => {
                    let lag = bytes.max(0) as u64;
                    run.status.set_lag(lag);
                    run.deps.dp.metrics().trigger_lag(&run.labels, lag);
                }
                Ok(None) => {}
                Err(_) => conn = None,
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// A table of the publication, as its `Relation` message describes it.
struct Relation {
    schema: String,
    table: String,
    /// Each column's name and type oid.
    columns: Vec<(String, u32)>,
    wanted: bool,
}

/// The transaction being decoded.
struct Tx {
    xid: u32,
    commit_ms: i64,
    order: u64,
}

struct Decoder {
    relations: HashMap<u32, Relation>,
    tables: Option<Vec<String>>,
    database: String,
    slot: String,
    tx: Option<Tx>,
}

enum Decoded {
    Change(Record),
    /// The end LSN of a commit: the slot may move up to it.
    Commit(String),
}

/// A reader of pgoutput's binary messages.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or_else(|| "the message ends early".to_owned())?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let rest = &self.b[self.at.min(self.b.len())..];
        let end = rest
            .iter()
            .position(|c| *c == 0)
            .ok_or_else(|| "a name has no end".to_owned())?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// A column's text value as JSON, by its type: numbers and booleans as such, JSON as JSON,
/// `numeric` and everything else as text (no precision lost).
fn column_value(type_oid: u32, text: &str) -> Value {
    match type_oid {
        16 => json!(text == "t"),
        20 | 21 | 23 | 26 => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(text)),
        700 | 701 => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => json!(f),
            _ => json!(text),
        },
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
        _ => json!(text),
    }
}

impl Decoder {
    fn tuple(&self, c: &mut Cursor<'_>, rel: &Relation) -> Result<Value, String> {
        let n = c.i16()? as usize;
        let mut row = Map::new();
        for i in 0..n {
            let (name, oid) = rel
                .columns
                .get(i)
                .cloned()
                .unwrap_or_else(|| (format!("column{i}"), 25));
            match c.u8()? {
                b'n' => {
                    row.insert(name, Value::Null);
                }
                // An unchanged TOASTed value is not sent: the column is left out.
                b'u' => {}
                b't' => {
                    let len = c.i32()?.max(0) as usize;
                    let text = String::from_utf8_lossy(c.take(len)?).into_owned();
                    row.insert(name, column_value(oid, &text));
                }
                k => return Err(format!("unknown column kind {:?}", k as char)),
            }
        }
        Ok(Value::Object(row))
    }

    fn message(&mut self, lsn: &str, data: &[u8]) -> Result<Option<Decoded>, String> {
        let mut c = Cursor { b: data, at: 0 };
        match c.u8()? {
            b'B' => {
                let _final_lsn = c.u64()?;
                let ts = c.u64()? as i64;
                let xid = c.u32()?;
                self.tx = Some(Tx {
                    xid,
                    commit_ms: (ts + PG_EPOCH_US) / 1000,
                    order: 0,
                });
                Ok(None)
            }
            b'C' => {
                let _flags = c.u8()?;
                let _commit_lsn = c.u64()?;
                let end_lsn = c.u64()?;
                self.tx = None;
                Ok(Some(Decoded::Commit(lsn_text(end_lsn))))
            }
            b'R' => {
                let id = c.u32()?;
                let schema = c.cstr()?;
                let table = c.cstr()?;
                let _identity = c.u8()?;
                let n = c.i16()? as usize;
                let mut columns = Vec::with_capacity(n);
                for _ in 0..n {
                    let _flags = c.u8()?;
                    let name = c.cstr()?;
                    let oid = c.u32()?;
                    let _typmod = c.i32()?;
                    columns.push((name, oid));
                }
                let wanted = self.tables.as_ref().is_none_or(|ts| {
                    ts.iter().any(|t| match t.split_once('.') {
                        Some((s, n)) => s == schema && n == table,
                        None => *t == table,
                    })
                });
                self.relations.insert(
                    id,
                    Relation {
                        schema,
                        table,
                        columns,
                        wanted,
                    },
                );
                Ok(None)
            }
            kind @ (b'I' | b'U' | b'D') => {
                let id = c.u32()?;
                let rel = self.relations.get(&id).ok_or_else(|| {
                    format!("a change of relation {id} came before its description")
                })?;
                let (mut before, mut after) = (Value::Null, Value::Null);
                match kind {
                    b'I' => {
                        let _n = c.u8()?;
                        after = self.tuple(&mut c, rel)?;
                    }
                    b'U' => {
                        let mut k = c.u8()?;
                        // 'K' (the key) or 'O' (the whole old row, REPLICA IDENTITY FULL).
                        if k == b'K' || k == b'O' {
                            before = self.tuple(&mut c, rel)?;
                            k = c.u8()?;
                        }
                        if k != b'N' {
                            return Err(format!("an update without its new row ({:?})", k as char));
                        }
                        after = self.tuple(&mut c, rel)?;
                    }
                    _ => {
                        let _k = c.u8()?;
                        before = self.tuple(&mut c, rel)?;
                    }
                }
                if !rel.wanted {
                    return Ok(None);
                }
                let (xid, commit_ms, order) = match self.tx.as_mut() {
                    Some(tx) => {
                        tx.order += 1;
                        (tx.xid, tx.commit_ms, tx.order)
                    }
                    None => (0, petrel_core::now_ms(), 0),
                };
                let table = format!("{}.{}", rel.schema, rel.table);
                let envelope = json!({
                    "op": match kind { b'I' => "c", b'U' => "u", _ => "d" },
                    "before": before,
                    "after": after,
                    "source": {
                        "connector": "postgresql",
                        "db": self.database,
                        "schema": rel.schema,
                        "table": rel.table,
                        "lsn": lsn,
                        "txId": xid,
                        "ts_ms": commit_ms,
                        "slot": self.slot,
                    },
                    "transaction": { "id": xid.to_string(), "order": order },
                    "ts_ms": petrel_core::now_ms(),
                });
                Ok(Some(Decoded::Change(Record {
                    id: lsn.to_owned(),
                    key: Some(Bytes::from(table.clone().into_bytes())),
                    value: Bytes::from(
                        serde_json::to_vec(&envelope).expect("an envelope serialises"),
                    ),
                    headers: Vec::new(),
                    timestamp_ms: commit_ms,
                    meta: RecordMeta::Change {
                        table,
                        position: lsn.to_owned(),
                    },
                })))
            }
            // Truncate, type, origin and logical messages carry no row.
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_types_and_precision() {
        assert_eq!(column_value(23, "42"), json!(42));
        assert_eq!(column_value(16, "f"), json!(false));
        assert_eq!(column_value(1700, "12.30"), json!("12.30"));
        assert_eq!(column_value(3802, "{\"a\": [1]}"), json!({"a": [1]}));
        assert_eq!(column_value(701, "NaN"), json!("NaN"));
        assert_eq!(lsn_text(0x1_0000_00A0), "1/A0");
    }

    #[test]
    fn an_update_gives_before_and_after() {
        let mut d = Decoder {
            relations: HashMap::new(),
            tables: Some(vec!["public.orders".into()]),
            database: "db".into(),
            slot: "s".into(),
            tx: None,
        };
        let relation = |id: u32, schema: &str, table: &str| {
            let mut rel = vec![b'R'];
            rel.extend(id.to_be_bytes());
            rel.extend(format!("{schema}\0{table}\0").as_bytes());
            rel.push(b'f');
            rel.extend(2i16.to_be_bytes());
            for (name, oid) in [("id", 23u32), ("note", 25)] {
                rel.push(1);
                rel.extend(name.as_bytes());
                rel.push(0);
                rel.extend(oid.to_be_bytes());
                rel.extend((-1i32).to_be_bytes());
            }
            rel
        };
        let rel = relation(7, "public", "orders");
        assert!(d.message("0/1", &rel).unwrap().is_none());
        let tuple = |id: &str, note: Option<&str>| {
            let mut t = 2i16.to_be_bytes().to_vec();
            for v in [Some(id), note] {
                match v {
                    Some(v) => {
                        t.push(b't');
                        t.extend((v.len() as i32).to_be_bytes());
                        t.extend(v.as_bytes());
                    }
                    None => t.push(b'n'),
                }
            }
            t
        };
        let mut upd = vec![b'U'];
        upd.extend(7u32.to_be_bytes());
        upd.push(b'O');
        upd.extend(tuple("1", None));
        upd.push(b'N');
        upd.extend(tuple("1", Some("paid")));
        let Some(Decoded::Change(rec)) = d.message("0/2", &upd).unwrap() else {
            panic!("no change")
        };
        let e: Value = serde_json::from_slice(&rec.value).unwrap();
        assert_eq!(e["op"], "u");
        assert_eq!(e["before"], json!({"id": 1, "note": null}));
        assert_eq!(e["after"], json!({"id": 1, "note": "paid"}));
        assert_eq!(e["source"]["table"], "orders");
        // A table outside `tables` is decoded and left out.
        assert!(d
            .message("0/3", &relation(8, "audit", "orders"))
            .unwrap()
            .is_none());
        upd[1..5].copy_from_slice(&8u32.to_be_bytes());
        assert!(d.message("0/4", &upd).unwrap().is_none());
    }
}
