//! Object storage triggers against a real S3-compatible store (versitygw, started by
//! `scripts/services.sh`), written to with curl's own SigV4 signing: polling delivers each new
//! object version once in Lambda's S3 event shape, with prefix and suffix filters and removals;
//! a failing object ends in the dead-letter list; a pause holds events back; a `kill -9` loses
//! none; and the store's own event notifications reach a notify trigger through the webhook.

use crate::harness::*;
use crate::triggers::{events, triggers_json, unique};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

fn s3_endpoint() -> String {
    std::env::var("PETREL_TEST_S3").expect(
        "trigger tests need PETREL_TEST_S3: run them through scripts/test.sh, or `. scripts/services.sh` first",
    )
}

/// (base URL, "access:secret") of an endpoint with its keys inside.
fn split(endpoint: &str) -> (String, String) {
    let (scheme, rest) = endpoint.split_once("://").unwrap();
    let (creds, host) = rest.rsplit_once('@').unwrap();
    (format!("{scheme}://{host}"), creds.to_owned())
}

/// A request to the store, signed by curl (an S3 client of its own, not Petrel's code).
fn s3(endpoint: &str, method: &str, path: &str, body: Option<&str>) {
    let (base, creds) = split(endpoint);
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--fail-with-body",
        "-X",
        method,
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
        "--user",
        &creds,
        "-H",
        "x-amz-content-sha256: UNSIGNED-PAYLOAD",
    ]);
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    cmd.arg(format!("{base}{path}"));
    let out = cmd.output().expect("curl runs");
    assert!(
        out.status.success(),
        "{method} {path}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A handler that POSTs each event to `SINK` and fails on an object whose key has `poison`.
const OBJECTS_PY: &str = r#"
import json, os, urllib.request

def handler(event, context):
    for r in event["Records"]:
        if "poison" in r["s3"]["object"]["key"]:
            raise ValueError("a poison object")
    req = urllib.request.Request(os.environ["SINK"], data=json.dumps(event).encode(), method="POST")
    urllib.request.urlopen(req).read()
    return {}
"#;

/// (eventName, key) of every S3 event record the sink got.
fn object_events(seen: &Seen) -> Vec<(String, String)> {
    events(seen)
        .iter()
        .flat_map(|e| {
            e["Records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["eventName"].as_str().unwrap().to_owned(),
                        r["s3"]["object"]["key"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn created(seen: &Seen) -> BTreeSet<String> {
    object_events(seen)
        .into_iter()
        .filter(|(n, _)| n.starts_with("ObjectCreated"))
        .map(|(_, k)| k)
        .collect()
}

async fn running(p: &Petrel, function: &str) -> bool {
    for _ in 0..100 {
        if triggers_json(p, function).await["triggers"][0]["state"] == "running" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn start() -> (Petrel, tempfile::NamedTempFile) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "trigger_retry_base = \"20ms\"\n").unwrap();
    let p = Petrel::start_with(
        StoreKind::Sqlite,
        &["--config", config.path().to_str().unwrap()],
    )
    .await;
    (p, config)
}

fn objects_function(name: &str, sink: &str, trigger: &str) -> tempfile::TempDir {
    function_dir(&[
        ("app.py", OBJECTS_PY),
        (
            "petrel.toml",
            &format!(
                "{}network = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\n\n{trigger}",
                manifest(name, "python3", "app.handler", "")
            ),
        ),
    ])
}

#[tokio::test]
async fn s3_polling_delivers_new_objects_and_removals_once_and_survives_a_kill_9() {
    let ep = s3_endpoint();
    let bucket = unique("uploads").to_lowercase();
    s3(&ep, "PUT", &format!("/{bucket}"), None);
    s3(&ep, "PUT", &format!("/{bucket}/in/old.txt"), Some("before"));
    let (sink, seen) = receiver().await;
    let (mut p, _config) = start().await;
    let dir = objects_function(
        "s3fn",
        &sink,
        &format!(
            "[[trigger]]\nname = \"uploads\"\nkind = \"s3\"\nendpoint = \"{ep}\"\nbucket = \"{bucket}\"\nprefix = \"in/\"\nsuffix = \".txt\"\nevents = [\"created\", \"removed\"]\npoll_interval = \"200ms\"\nmax_retries = 1\nbisect_on_error = true\n"
        ),
    );
    p.deploy(dir.path());
    assert!(running(&p, "s3fn").await, "{}", p.server_log());
    for (key, body) in [
        ("in/a.txt", "a"),
        ("in/b c.txt", "b"),
        ("in/skip.bin", "x"),
        ("out/c.txt", "c"),
        ("in/poison.txt", "p"),
    ] {
        s3(
            &ep,
            "PUT",
            &format!("/{bucket}/{}", key.replace(' ', "%20")),
            Some(body),
        );
    }
    let ok = eventually(Duration::from_secs(30), || created(&seen).len() >= 2).await;
    assert!(ok, "{:?}\n{}", object_events(&seen), p.server_log());
    let e = &events(&seen)[0]["Records"][0];
    assert_eq!(e["eventSource"], "aws:s3");
    assert_eq!(e["s3"]["bucket"]["name"], bucket);
    assert_eq!(e["s3"]["configurationId"], "uploads");
    assert!(e["s3"]["object"]["size"].as_u64().unwrap() >= 1);
    assert!(!e["s3"]["object"]["eTag"].as_str().unwrap().is_empty());
    let ok = eventually(Duration::from_secs(30), || {
        p.cli_ok(&["trigger", "dlq", "s3fn", "uploads"])
            .contains("poison")
    })
    .await;
    assert!(ok, "{}", p.cli_ok(&["trigger", "dlq", "s3fn", "uploads"]));
    // A removal, and a new version of an object.
    s3(&ep, "DELETE", &format!("/{bucket}/in/a.txt"), None);
    s3(
        &ep,
        "PUT",
        &format!("/{bucket}/in/b%20c.txt"),
        Some("b, again"),
    );
    let ok = eventually(Duration::from_secs(30), || {
        let ev = object_events(&seen);
        ev.contains(&("ObjectRemoved:Delete".into(), "in/a.txt".into()))
            && ev.iter().filter(|(_, k)| k == "in/b+c.txt").count() == 2
    })
    .await;
    assert!(ok, "{:?}\n{}", object_events(&seen), p.server_log());
    let keys = created(&seen);
    for never in ["in/old.txt", "in/skip.bin", "out/c.txt"] {
        assert!(!keys.contains(never), "{never}: {keys:?}");
    }

    // Paused, new objects wait; resumed, they come.
    p.cli_ok(&["trigger", "pause", "s3fn", "uploads"]);
    s3(&ep, "PUT", &format!("/{bucket}/in/paused.txt"), Some("p"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!created(&seen).contains("in/paused.txt"));
    p.cli_ok(&["trigger", "resume", "s3fn", "uploads"]);
    let ok = eventually(Duration::from_secs(30), || {
        created(&seen).contains("in/paused.txt")
    })
    .await;
    assert!(ok, "{}", p.server_log());

    // kill -9 with uploads arriving: after the restart every object arrives, at least once.
    for i in 0..30 {
        s3(&ep, "PUT", &format!("/{bucket}/in/k{i}.txt"), Some("k"));
        if i == 10 {
            p.kill9_and_restart().await;
        }
    }
    let ok = eventually(Duration::from_secs(60), || {
        let got = created(&seen);
        (0..30).all(|i| got.contains(&format!("in/k{i}.txt")))
    })
    .await;
    assert!(ok, "{:?}\n{}", created(&seen), p.server_log());
}

#[tokio::test]
async fn a_stores_event_notifications_reach_a_notify_trigger_through_its_webhook() {
    let gw = std::env::var("PETREL_TEST_VERSITYGW").expect(
        "this test needs PETREL_TEST_VERSITYGW: run it through scripts/test.sh, or `. scripts/services.sh` first",
    );
    let (sink, seen) = receiver().await;
    let (p, _config) = start().await;
    let dir = objects_function(
        "s3hook",
        &sink,
        "[[trigger]]\nname = \"hook\"\nkind = \"s3\"\nendpoint = \"http://k:s@127.0.0.1:1\"\nbucket = \"photos\"\nmode = \"notify\"\nsuffix = \".jpg\"\nevents = [\"created\", \"removed\"]\n",
    );
    p.deploy(dir.path());
    assert!(running(&p, "s3hook").await, "{}", p.server_log());
    let t = triggers_json(&p, "s3hook").await;
    let hook = t["triggers"][0]["webhook"].as_str().unwrap().to_owned();
    assert!(hook.contains("token="), "{t}");
    assert!(p.cli_ok(&["trigger", "ls", "s3hook"]).contains(&hook));
    // A wrong token is refused like an unknown trigger.
    let bad = p
        .http(
            "POST",
            &hook.replace("token=", "token=x"),
            Some(("application/json", b"{\"Records\": []}".to_vec())),
        )
        .await;
    bad.assert_error(404, "function_not_found");
    // A store of its own, whose notifications go to the webhook.
    let data = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut store = Command::new(&gw)
        .args([
            "--access",
            "hook-test",
            "--secret",
            "hook-test-secret",
            "--port",
            &format!("127.0.0.1:{port}"),
            "--event-webhook-url",
            &format!("{}{hook}", p.url),
            "posix",
            data.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ep = format!("http://hook-test:hook-test-secret@127.0.0.1:{port}");
    let ok = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(ok);
    s3(&ep, "PUT", "/photos", None);
    s3(&ep, "PUT", "/photos/cat.jpg", Some("meow"));
    s3(&ep, "PUT", "/photos/notes.txt", Some("not a photo"));
    s3(&ep, "DELETE", "/photos/cat.jpg", None);
    let ok = eventually(Duration::from_secs(30), || object_events(&seen).len() >= 2).await;
    let _ = store.kill();
    let _ = store.wait();
    assert!(ok, "{:?}\n{}", object_events(&seen), p.server_log());
    let ev = object_events(&seen);
    assert!(ev[0].0.starts_with("ObjectCreated"), "{ev:?}");
    assert_eq!(ev[0].1, "cat.jpg");
    assert!(ev[1].0.starts_with("ObjectRemoved"), "{ev:?}");
    assert!(!ev.iter().any(|(_, k)| k == "notes.txt"), "{ev:?}");
}
