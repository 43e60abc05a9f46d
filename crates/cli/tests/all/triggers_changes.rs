//! Change-stream triggers against the real database `scripts/services.sh` starts: PostgreSQL
//! logical replication (a publication, a slot Petrel creates). Inserts, updates and deletes
//! reach a handler in commit order with `before` and `after`, a transaction's rows together and
//! in order; a failing change ends in the dead-letter list; a pause holds changes in the slot;
//! a `kill -9` of Petrel loses none; removing the trigger drops its slot.

use crate::harness::*;
use crate::triggers::{events, triggers_json};
use sqlx::Connection;
use std::collections::BTreeSet;
use std::time::Duration;

/// A handler that POSTs each event to `SINK` and fails on a row whose note is `poison`.
const CHANGES_PY: &str = r#"
import json, os, urllib.request

def handler(event, context):
    for r in event["records"]:
        if (r.get("after") or {}).get("note") == "poison":
            raise ValueError("a poison row")
    req = urllib.request.Request(os.environ["SINK"], data=json.dumps(event).encode(), method="POST")
    urllib.request.urlopen(req).read()
    return {}
"#;

/// Every change envelope the sink got, in the order it got them.
fn changes(seen: &Seen) -> Vec<serde_json::Value> {
    events(seen)
        .iter()
        .flat_map(|e| e["records"].as_array().unwrap().clone())
        .collect()
}

fn ids_after(seen: &Seen) -> Vec<i64> {
    changes(seen)
        .iter()
        .filter(|c| c["op"] == "c")
        .map(|c| c["after"]["id"].as_i64().unwrap())
        .collect()
}

async fn slot_exists(db: &mut sqlx::PgConnection, slot: &str) -> bool {
    sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
        .bind(slot)
        .fetch_optional(db)
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn postgres_changes_arrive_in_commit_order_with_before_and_after_and_survive_a_kill_9() {
    let source = StoreKind::fresh_postgres().await;
    let StoreKind::Postgres(url) = &source else {
        unreachable!()
    };
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    for stmt in [
        "CREATE TABLE orders (id int PRIMARY KEY, note text, amount numeric(10,2), tags jsonb)",
        "ALTER TABLE orders REPLICA IDENTITY FULL",
        "CREATE TABLE audit (id int PRIMARY KEY)",
        "CREATE PUBLICATION shop FOR TABLE orders, audit",
    ] {
        sqlx::query(stmt).execute(&mut db).await.unwrap();
    }
    let slot = format!(
        "petrel_test_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let (sink, seen) = receiver().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "trigger_retry_base = \"20ms\"\n").unwrap();
    let mut p = Petrel::start_with(
        StoreKind::Sqlite,
        &["--config", config.path().to_str().unwrap()],
    )
    .await;
    let dir = function_dir(&[
        ("app.py", CHANGES_PY),
        (
            "petrel.toml",
            &format!(
                "{}network = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\n\n[[trigger]]\nname = \"orders\"\nkind = \"postgres\"\nurl = \"{url}\"\npublication = \"shop\"\nslot = \"{slot}\"\ntables = [\"public.orders\"]\nbatch_size = 10\nmax_retries = 1\nbisect_on_error = true\n",
                manifest("pgfn", "python3", "app.handler", "")
            ),
        ),
    ]);
    p.deploy(dir.path());
    // Changes count from the slot's creation: wait for it.
    let mut created = false;
    for _ in 0..100 {
        if slot_exists(&mut db, &slot).await {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(created, "{}", p.server_log());

    sqlx::query("INSERT INTO orders VALUES (1, 'new', 9.90, '{\"a\": 1}')")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE orders SET note = 'paid' WHERE id = 1")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO audit VALUES (1)")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM orders WHERE id = 1")
        .execute(&mut db)
        .await
        .unwrap();
    // One transaction of five rows.
    let mut tx = db.begin().await.unwrap();
    for id in 10..15 {
        sqlx::query("INSERT INTO orders (id, note) VALUES ($1, 'batch')")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let ok = eventually(Duration::from_secs(30), || changes(&seen).len() >= 8).await;
    assert!(ok, "{:?}\n{}", changes(&seen), p.server_log());
    let c = changes(&seen);
    let ops: Vec<&str> = c.iter().map(|c| c["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["c", "u", "d", "c", "c", "c", "c", "c"], "{c:?}");
    assert_eq!(c[0]["after"]["amount"], "9.90", "numeric keeps its digits");
    assert_eq!(c[0]["after"]["tags"], serde_json::json!({"a": 1}));
    assert_eq!(c[1]["before"]["note"], "new");
    assert_eq!(c[1]["after"]["note"], "paid");
    assert_eq!(c[2]["before"]["id"], 1);
    assert!(c[2]["after"].is_null());
    assert_eq!(c[0]["source"]["table"], "orders");
    assert_eq!(c[0]["source"]["schema"], "public");
    assert_eq!(c[0]["source"]["slot"], slot);
    assert!(c[0]["source"]["lsn"].as_str().unwrap().contains('/'));
    // The transaction's rows: one txId, in order, nothing of the audit table.
    let tx_ids: BTreeSet<i64> = c[3..]
        .iter()
        .map(|c| c["source"]["txId"].as_i64().unwrap())
        .collect();
    assert_eq!(tx_ids.len(), 1, "{c:?}");
    let order: Vec<i64> = c[3..]
        .iter()
        .map(|c| c["transaction"]["order"].as_i64().unwrap())
        .collect();
    assert_eq!(order, [1, 2, 3, 4, 5]);
    assert_eq!(ids_after(&seen)[1..], [10, 11, 12, 13, 14]);
    assert_eq!(events(&seen)[0]["eventSource"], "petrel:postgres");

    // A change the handler fails on ends in the dead-letter list; the next ones flow.
    sqlx::query("INSERT INTO orders (id, note) VALUES (20, 'poison')")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders (id, note) VALUES (21, 'fine')")
        .execute(&mut db)
        .await
        .unwrap();
    let ok = eventually(Duration::from_secs(30), || ids_after(&seen).contains(&21)).await;
    assert!(ok, "{}", p.server_log());
    assert!(!ids_after(&seen).contains(&20));
    let ok = eventually(Duration::from_secs(30), || {
        p.cli_ok(&["trigger", "dlq", "pgfn", "orders"])
            .contains("poison")
    })
    .await;
    assert!(ok, "{}", p.cli_ok(&["trigger", "dlq", "pgfn", "orders"]));

    // Paused, changes wait in the slot; resumed, they come.
    p.cli_ok(&["trigger", "pause", "pgfn", "orders"]);
    for id in 30..33 {
        sqlx::query("INSERT INTO orders (id, note) VALUES ($1, 'while paused')")
            .bind(id)
            .execute(&mut db)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!ids_after(&seen).contains(&30));
    p.cli_ok(&["trigger", "resume", "pgfn", "orders"]);
    let ok = eventually(Duration::from_secs(30), || {
        let got: BTreeSet<i64> = ids_after(&seen).into_iter().collect();
        (30..33).all(|i| got.contains(&i))
    })
    .await;
    assert!(ok, "{}", p.server_log());

    // kill -9 with commits arriving: after the restart every change arrives, at least once.
    for id in 100..300 {
        sqlx::query("INSERT INTO orders (id, note) VALUES ($1, 'stream')")
            .bind(id)
            .execute(&mut db)
            .await
            .unwrap();
        if id == 140 {
            p.kill9_and_restart().await;
        }
    }
    let ok = eventually(Duration::from_secs(90), || {
        let got: BTreeSet<i64> = ids_after(&seen).into_iter().collect();
        (100..300).all(|i| got.contains(&i))
    })
    .await;
    assert!(ok, "{}", p.server_log());
    let t = triggers_json(&p, "pgfn").await;
    assert_eq!(t["triggers"][0]["state"], "running", "{t}");

    // Deleting the function removes the trigger, and its slot with it.
    p.cli_ok(&["rm", "pgfn"]);
    let mut gone = false;
    for _ in 0..100 {
        if !slot_exists(&mut db, &slot).await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "{}", p.server_log());
    drop(db);
    source.drop_postgres().await;
}

fn mysql_url() -> String {
    std::env::var("PETREL_TEST_MYSQL").expect(
        "trigger tests need PETREL_TEST_MYSQL: run them through scripts/test.sh, or `. scripts/services.sh` first",
    )
}

#[tokio::test]
async fn mysql_binlog_changes_arrive_in_commit_order_with_before_and_after_and_survive_a_kill_9() {
    use mysql_async::prelude::Queryable;
    let db = format!(
        "petrel_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let mut my = mysql_async::Conn::new(mysql_async::Opts::from_url(&mysql_url()).unwrap())
        .await
        .unwrap();
    for stmt in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE TABLE {db}.orders (id INT PRIMARY KEY, note VARCHAR(50), amount DECIMAL(10,2), at DATE)"),
        format!("CREATE TABLE {db}.audit (id INT PRIMARY KEY)"),
    ] {
        my.query_drop(stmt).await.unwrap();
    }
    let (sink, seen) = receiver().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "trigger_retry_base = \"20ms\"\n").unwrap();
    let mut p = Petrel::start_with(
        StoreKind::Sqlite,
        &["--config", config.path().to_str().unwrap()],
    )
    .await;
    let dir = function_dir(&[
        ("app.py", CHANGES_PY),
        (
            "petrel.toml",
            &format!(
                "{}network = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\n\n[[trigger]]\nname = \"orders\"\nkind = \"mysql\"\nurl = \"{}\"\ntables = [\"{db}.orders\"]\nbatch_size = 10\nmax_retries = 1\nbisect_on_error = true\n",
                manifest("myfn", "python3", "app.handler", ""),
                mysql_url()
            ),
        ),
    ]);
    p.deploy(dir.path());
    // Changes count from the trigger's first run: wait for it.
    let mut running = false;
    for _ in 0..100 {
        if triggers_json(&p, "myfn").await["triggers"][0]["state"] == "running" {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running, "{}", p.server_log());
    for stmt in [
        format!("INSERT INTO {db}.orders VALUES (1, 'new', 9.90, '2026-12-03')"),
        format!("UPDATE {db}.orders SET note = 'paid' WHERE id = 1"),
        format!("INSERT INTO {db}.audit VALUES (1)"),
        format!("DELETE FROM {db}.orders WHERE id = 1"),
    ] {
        my.query_drop(stmt).await.unwrap();
    }
    // One transaction of five rows.
    let mut tx = my
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .unwrap();
    for id in 10..15 {
        tx.exec_drop(
            format!("INSERT INTO {db}.orders (id, note) VALUES (?, 'batch')"),
            (id,),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let ok = eventually(Duration::from_secs(30), || changes(&seen).len() >= 8).await;
    assert!(ok, "{:?}\n{}", changes(&seen), p.server_log());
    let c = changes(&seen);
    let ops: Vec<&str> = c.iter().map(|c| c["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["c", "u", "d", "c", "c", "c", "c", "c"], "{c:?}");
    assert_eq!(c[0]["after"]["amount"], "9.90", "decimal keeps its digits");
    assert_eq!(c[0]["after"]["at"], "2026-12-03");
    assert_eq!(c[1]["before"]["note"], "new");
    assert_eq!(c[1]["after"]["note"], "paid");
    assert_eq!(c[2]["before"]["id"], 1);
    assert!(c[2]["after"].is_null());
    assert_eq!(c[0]["source"]["db"], db);
    assert_eq!(c[0]["source"]["table"], "orders");
    let tx_ids: BTreeSet<String> = c[3..]
        .iter()
        .map(|c| c["transaction"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tx_ids.len(), 1, "{c:?}");
    let order: Vec<i64> = c[3..]
        .iter()
        .map(|c| c["transaction"]["order"].as_i64().unwrap())
        .collect();
    assert_eq!(order, [1, 2, 3, 4, 5]);
    assert_eq!(ids_after(&seen)[1..], [10, 11, 12, 13, 14]);
    assert_eq!(events(&seen)[0]["eventSource"], "petrel:mysql");

    // A change the handler fails on ends in the dead-letter list; the next ones flow.
    my.query_drop(format!(
        "INSERT INTO {db}.orders (id, note) VALUES (20, 'poison')"
    ))
    .await
    .unwrap();
    my.query_drop(format!(
        "INSERT INTO {db}.orders (id, note) VALUES (21, 'fine')"
    ))
    .await
    .unwrap();
    let ok = eventually(Duration::from_secs(30), || ids_after(&seen).contains(&21)).await;
    assert!(ok, "{}", p.server_log());
    assert!(!ids_after(&seen).contains(&20));
    let ok = eventually(Duration::from_secs(30), || {
        p.cli_ok(&["trigger", "dlq", "myfn", "orders"])
            .contains("poison")
    })
    .await;
    assert!(ok, "{}", p.cli_ok(&["trigger", "dlq", "myfn", "orders"]));

    // Paused, changes wait in the binlog; resumed, they come from the kept position.
    p.cli_ok(&["trigger", "pause", "myfn", "orders"]);
    for id in 30..33 {
        my.query_drop(format!(
            "INSERT INTO {db}.orders (id, note) VALUES ({id}, 'while paused')"
        ))
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!ids_after(&seen).contains(&30));
    p.cli_ok(&["trigger", "resume", "myfn", "orders"]);
    let ok = eventually(Duration::from_secs(30), || {
        let got: BTreeSet<i64> = ids_after(&seen).into_iter().collect();
        (30..33).all(|i| got.contains(&i))
    })
    .await;
    assert!(ok, "{}", p.server_log());

    // kill -9 with commits arriving: after the restart every change arrives, at least once.
    for id in 100..300 {
        my.query_drop(format!(
            "INSERT INTO {db}.orders (id, note) VALUES ({id}, 'stream')"
        ))
        .await
        .unwrap();
        if id == 140 {
            p.kill9_and_restart().await;
        }
    }
    let ok = eventually(Duration::from_secs(90), || {
        let got: BTreeSet<i64> = ids_after(&seen).into_iter().collect();
        (100..300).all(|i| got.contains(&i))
    })
    .await;
    assert!(ok, "{}", p.server_log());
    my.query_drop(format!("DROP DATABASE {db}")).await.unwrap();
}
