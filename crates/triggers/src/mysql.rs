//! A MySQL or MariaDB change-stream trigger: Petrel registers as a replica (`server_id`) and
//! reads the row-based binlog from a position it keeps in its own store (`file:offset`, at a
//! transaction's end). The position moves only once every change before it is settled, so a
//! crash or a `kill -9` delivers those changes again, never loses them. The first run starts
//! at the server's current position.
//!
//! One server reads a trigger's binlog at a time (a replica id must be unique on the source):
//! the reader holds a named lock of the source (`GET_LOCK`); the others stand by.

use crate::batch::{Record, RecordMeta};
use crate::events::Origin;
use crate::lanes::{self, Lane};
use crate::{RunState, TriggerRun};
use bytes::Bytes;
use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts, Value as MyValue};
use petrel_core::trigger::MysqlSource;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// With no event for this long (the source sends a heartbeat every 10 s), the connection is
/// taken for lost.
const SILENCE: Duration = Duration::from_secs(35);
/// A transaction read is kept once the binlog has had nothing more for this long.
const FLUSH_IDLE: Duration = Duration::from_millis(5);

pub(crate) async fn run(run: Arc<TriggerRun>, src: MysqlSource, stop: watch::Receiver<bool>) {
    crate::supervise(&run, stop, |stop| consume(&run, &src, stop)).await
}

fn server_id(run: &TriggerRun, src: &MysqlSource) -> u32 {
    src.server_id.unwrap_or_else(|| {
        petrel_core::trigger::default_server_id(&run.namespace, &run.function, &run.spec.name)
    })
}

fn opts(url: &str) -> Result<Opts, String> {
    // mysql_async takes mysql:// only.
    let url = url.replacen("mariadb://", "mysql://", 1);
    Opts::from_url(&url)
        .map_err(|e| format!("{} is not a MySQL URL: {e}", crate::events::redact(&url)))
}

async fn connect(url: &str) -> Result<Conn, String> {
    let shown = crate::events::redact(url);
    tokio::time::timeout(Duration::from_secs(5), Conn::new(opts(url)?))
        .await
        .map_err(|_| format!("could not connect to {shown} within 5 s"))?
        .map_err(|e| format!("could not connect to {shown}: {e}"))
}

/// The source's current binlog file and offset.
async fn current_position(conn: &mut Conn) -> Result<(String, u64), String> {
    // MySQL 8.4 renamed it; MariaDB and older MySQL know the first form.
    for q in ["SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"] {
        if let Ok(Some(row)) = conn.query_first::<mysql_async::Row, _>(q).await {
            let file: Option<String> = row.get(0);
            let pos: Option<u64> = row.get(1);
            if let (Some(f), Some(p)) = (file, pos) {
                return Ok((f, p));
            }
        }
    }
    Err("the source has no binary log: start it with log_bin, binlog_format = ROW and binlog_row_image = FULL".into())
}

/// A rotate event's file name. The one the source sends first, before its format description,
/// carries the event's checksum after the name: binlog names end in `.` and six digits, so what
/// follows those is cut.
fn rotate_name(raw: &str) -> String {
    let b = raw.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'.' && b.len() >= i + 7 && b[i + 1..i + 7].iter().all(u8::is_ascii_digit) {
            return raw[..i + 7].to_owned();
        }
    }
    raw.to_owned()
}

fn parse_position(p: &str) -> Option<(String, u64)> {
    let (f, o) = p.rsplit_once(':')?;
    Some((f.to_owned(), o.parse().ok()?))
}

/// Column names and types of a table, from `information_schema`, by ordinal.
async fn columns(conn: &mut Conn, db: &str, table: &str) -> Result<Vec<(String, String)>, String> {
    conn.exec(
        "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        (db, table),
    )
    .await
    .map_err(|e| format!("could not read the columns of {db}.{table}: {e}"))
}

/// A binlog value as JSON: numbers as numbers, JSON columns parsed, dates and times in ISO
/// form, `DECIMAL` and text as text.
fn json_value(v: MyValue, data_type: &str) -> Value {
    match v {
        MyValue::NULL => Value::Null,
        MyValue::Int(n) => json!(n),
        MyValue::UInt(n) => json!(n),
        MyValue::Float(f) => json!(f),
        MyValue::Double(f) => json!(f),
        MyValue::Bytes(b) => {
            let text = String::from_utf8_lossy(&b).into_owned();
            if data_type.eq_ignore_ascii_case("json") {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            } else {
                Value::String(text)
            }
        }
        MyValue::Date(y, mo, d, h, mi, s, us) => {
            if data_type.eq_ignore_ascii_case("date") {
                json!(format!("{y:04}-{mo:02}-{d:02}"))
            } else if us > 0 {
                json!(format!(
                    "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}"
                ))
            } else {
                json!(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}"))
            }
        }
        MyValue::Time(neg, days, h, mi, s, us) => {
            let sign = if neg { "-" } else { "" };
            let h = days * 24 + h as u32;
            if us > 0 {
                json!(format!("{sign}{h:02}:{mi:02}:{s:02}.{us:06}"))
            } else {
                json!(format!("{sign}{h:02}:{mi:02}:{s:02}"))
            }
        }
    }
}

fn row_json(row: Option<mysql_async::binlog::row::BinlogRow>, cols: &[(String, String)]) -> Value {
    let Some(row) = row else {
        return Value::Null;
    };
    let mut out = Map::new();
    for (i, v) in row.unwrap().into_iter().enumerate() {
        let (name, ty) = cols
            .get(i)
            .cloned()
            .unwrap_or_else(|| (format!("column{i}"), String::new()));
        let v = MyValue::try_from(v).unwrap_or(MyValue::NULL);
        out.insert(name, json_value(v, &ty));
    }
    Value::Object(out)
}

async fn consume(
    run: &Arc<TriggerRun>,
    src: &MysqlSource,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let settings = &src.settings;
    let id = server_id(run, src);
    let mut control = connect(&src.url).await?;
    // One reader per trigger: the lock lives as long as this connection.
    let lock = format!("petrel-binlog-{id}");
    loop {
        let got: Option<i64> = control
            .exec_first("SELECT GET_LOCK(?, 0)", (lock.as_str(),))
            .await
            .map_err(|e| format!("could not take the binlog lock: {e}"))?;
        if got == Some(1) {
            break;
        }
        run.status.set(RunState::Starting);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
    let store = &run.deps.store;
    let stored = store
        .trigger_position(&run.namespace, &run.function, &run.spec.name)
        .await
        .map_err(|e| format!("could not read the trigger's position: {e}"))?;
    let (mut file, mut pos) = match stored.as_deref().and_then(parse_position) {
        Some(p) => p,
        None => {
            let p = current_position(&mut control).await?;
            store
                .set_trigger_position(
                    &run.namespace,
                    &run.function,
                    &run.spec.name,
                    &format!("{}:{}", p.0, p.1),
                )
                .await
                .map_err(|e| format!("could not keep the trigger's position: {e}"))?;
            p
        }
    };
    let mut binlog_conn = connect(&src.url).await?;
    // A heartbeat every 10 s (in nanoseconds), so a silent connection is known to be lost.
    binlog_conn
        .query_drop("SET @master_heartbeat_period = 10000000000")
        .await
        .map_err(|e| format!("could not set the heartbeat: {e}"))?;
    let mut stream = binlog_conn
        .get_binlog_stream(
            BinlogStreamRequest::new(id)
                .with_filename(file.as_bytes())
                .with_pos(pos),
        )
        .await
        .map_err(|e| format!("could not read the binlog from {file}:{pos} as replica {id}: {e}"))?;
    let origin = Arc::new(Origin::Change {
        kind: "mysql",
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
    run.status.set(RunState::Running);
    let wanted = |db: &str, table: &str| {
        src.tables.as_ref().is_none_or(|ts| {
            ts.iter().any(|t| match t.split_once('.') {
                Some((d, n)) => d == db && n == table,
                None => t == table,
            })
        })
    };
    let mut cols_cache: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    let mut pushed: u64 = 0;
    let mut saved_pushed: u64 = 0;
    // The end of the last whole transaction read, not yet kept.
    let mut pending: Option<(String, u64)> = None;
    let mut tx_order: u64 = 0;
    // A transaction is named by where its BEGIN is.
    let mut tx_id = String::new();
    let mut flush = false;
    let result: Result<(), String> = 'outer: loop {
        // Keep the position at a transaction's end once what was pushed before it is settled:
        // when a batch's worth waits, or the binlog has had nothing more for a moment.
        if let Some((pf, pp)) = pending.clone() {
            if flush || pushed - saved_pushed >= settings.batch_size as u64 {
                tokio::select! {
                    r = settled.wait_for(|n| *n >= pushed) => if r.is_err() { break Ok(()) },
                    _ = stop.changed() => break Ok(()),
                }
                let p = format!("{pf}:{pp}");
                if let Err(e) = store
                    .set_trigger_position(&run.namespace, &run.function, &run.spec.name, &p)
                    .await
                {
                    break Err(format!("could not keep the trigger's position: {e}"));
                }
                run.status.set_position(p);
                saved_pushed = pushed;
                pending = None;
            }
        }
        flush = false;
        let wait = if pending.is_some() {
            FLUSH_IDLE
        } else {
            SILENCE
        };
        let next = tokio::select! {
            n = tokio::time::timeout(wait, stream.next()) => n,
            _ = stop.changed() => break Ok(()),
        };
        let ev = match next {
            Err(_) if pending.is_some() => {
                flush = true;
                continue;
            }
            Err(_) => break Err(format!("the binlog was silent for {} s", SILENCE.as_secs())),
            Ok(None) => break Err("the source closed the binlog stream".into()),
            Ok(Some(Err(e))) => {
                break Err(format!("the binlog stream (at {file}:{pos}) failed: {e}"))
            }
            Ok(Some(Ok(ev))) => ev,
        };
        let header = ev.header();
        let end = header.log_pos() as u64;
        let ts_ms = header.timestamp() as i64 * 1000;
        let data = match ev.read_data() {
            Ok(d) => d,
            Err(e) => {
                break Err(format!(
                    "could not decode a binlog event at {file}:{end}: {e}"
                ))
            }
        };
        let mut tx_end = false;
        match data {
            Some(EventData::RotateEvent(r)) => {
                file = rotate_name(&r.name());
                pos = r.position();
                continue;
            }
            Some(EventData::QueryEvent(q)) => {
                let text = q.query();
                let t = text.trim();
                if t.eq_ignore_ascii_case("BEGIN") {
                    tx_order = 0;
                    tx_id = format!("{file}:{pos}");
                } else if t.eq_ignore_ascii_case("COMMIT") || !t.is_empty() {
                    // A COMMIT, or a statement (DDL) that is a transaction of its own.
                    tx_end = true;
                }
            }
            Some(EventData::XidEvent(_)) => tx_end = true,
            Some(EventData::HeartbeatEvent) => continue,
            Some(EventData::RowsEvent(rows)) => {
                let Some(tme) = stream.get_tme(rows.table_id()) else {
                    break Err(format!(
                        "a row change at {file}:{end} came before its table map"
                    ));
                };
                let (db, table) = (
                    tme.database_name().into_owned(),
                    tme.table_name().into_owned(),
                );
                if !wanted(&db, &table) {
                    pos = end;
                    continue;
                }
                let key = (db.clone(), table.clone());
                if !cols_cache.contains_key(&key)
                    || cols_cache[&key].len() as u64 != tme.columns_count()
                {
                    let cols = match columns(&mut control, &db, &table).await {
                        Ok(c) => c,
                        Err(e) => break Err(e),
                    };
                    cols_cache.insert(key.clone(), cols);
                }
                let cols = &cols_cache[&key];
                let op = match &rows {
                    RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => "c",
                    RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => "d",
                    _ => "u",
                };
                for (i, r) in rows.rows(tme).enumerate() {
                    let (before, after) = match r {
                        Ok(pair) => pair,
                        Err(e) => {
                            break 'outer Err(format!(
                                "could not decode a row at {file}:{end}: {e}"
                            ))
                        }
                    };
                    tx_order += 1;
                    let position = format!("{file}:{end}#{i}");
                    let envelope = json!({
                        "op": op,
                        "before": row_json(before, cols),
                        "after": row_json(after, cols),
                        "source": {
                            "connector": "mysql",
                            "db": db,
                            "table": table,
                            "file": file,
                            "pos": end,
                            "row": i,
                            "server_id": id,
                            "ts_ms": ts_ms,
                        },
                        "transaction": { "id": tx_id, "order": tx_order },
                        "ts_ms": petrel_core::now_ms(),
                    });
                    let rec = Record {
                        id: position.clone(),
                        key: Some(Bytes::from(format!("{db}.{table}").into_bytes())),
                        value: Bytes::from(
                            serde_json::to_vec(&envelope).expect("an envelope serialises"),
                        ),
                        headers: Vec::new(),
                        timestamp_ms: ts_ms,
                        meta: RecordMeta::Change {
                            table: format!("{db}.{table}"),
                            position,
                        },
                    };
                    if !lane.push(rec, (), &mut stop).await {
                        break 'outer Ok(());
                    }
                    pushed += 1;
                }
            }
            _ => {}
        }
        pos = end;
        if tx_end {
            pending = Some((file.clone(), end));
        }
    };
    let _ = lanes_stop_tx.send(true);
    let _ = worker.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
    let _ = control.disconnect().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_positions() {
        assert_eq!(json_value(MyValue::Int(-3), "int"), json!(-3));
        assert_eq!(
            json_value(MyValue::Bytes(b"12.30".to_vec()), "decimal"),
            json!("12.30")
        );
        assert_eq!(
            json_value(MyValue::Bytes(b"{\"a\":1}".to_vec()), "json"),
            json!({"a": 1})
        );
        assert_eq!(
            json_value(MyValue::Date(2026, 12, 3, 0, 0, 0, 0), "date"),
            json!("2026-12-03")
        );
        assert_eq!(
            json_value(MyValue::Date(2026, 12, 3, 4, 5, 6, 0), "datetime"),
            json!("2026-12-03T04:05:06")
        );
        assert_eq!(
            parse_position("binlog.000002:4"),
            Some(("binlog.000002".into(), 4))
        );
        assert_eq!(parse_position("nope"), None);
        assert_eq!(rotate_name("binlog.000001!\u{c7}\u{8e}"), "binlog.000001");
        assert_eq!(rotate_name("mysql-bin.000123"), "mysql-bin.000123");
    }
}
