//! Tenants, keys, roles, secrets and quotas, through the binary: two tenants with a key of each
//! role, every route family tried with each, and nothing of one tenant visible to the other.

use crate::fixtures::echo_function;
use crate::harness::{eventually, function_dir, manifest, Petrel, BIN, OWNER_TOKEN};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A key made through the CLI: its token (standard output) and id (from `key ls`).
pub(crate) fn key(p: &Petrel, ns: &str, role: &str) -> String {
    let out = p.cli(&[
        "key",
        "create",
        "-n",
        ns,
        "-r",
        role,
        "-d",
        &format!("{role} of {ns}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The token alone on standard output, so that TOKEN=$(petrel key create ...) works.
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stderr.contains(&format!("{role} in {ns}")), "{stderr}");
    stdout.trim().to_owned()
}

/// Runs a CLI command as `token`; its exit status and its output (both streams).
fn run(p: &Petrel, token: &str, args: &[&str]) -> (bool, String) {
    let out = p.cli_as(Some(token), args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What the server answers `token` on a request: status and error code.
async fn ask(p: &Petrel, token: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let r = p
        .http_with(method, path, &[("authorization", &auth)], body.to_vec())
        .await;
    (
        r.status,
        r.header("x-petrel-error").unwrap_or_default().to_owned(),
    )
}

/// A route family tried with each role: method, path, what it is, body, and whether admin,
/// developer, invoker and viewer may.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [u8], [bool; 4]);

const SECRET_VALUE: &str = "hunter2-correct-horse-battery-staple";

/// Reads its secret from the file and the variable; answers their SHA-256, never the value.
const SECRET_APP: &str = r#"
import hashlib, os
def handler(event, context):
    d = os.environ.get("PETREL_SECRETS_DIR", "")
    with open(os.path.join(d, "db-password"), "rb") as f:
        from_file = f.read()
    from_env = os.environ.get("DB_PASSWORD", "").encode()
    print("secret-reader ran", flush=True)
    return {"dir": d, "same": from_file == from_env,
            "sha": hashlib.sha256(from_file).hexdigest(), "instance": os.environ["PETREL_INSTANCE_ID"]}
"#;

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_each_role_and_nothing_crosses() {
    let mut p = Petrel::start().await;
    p.cli_ok(&["ns", "create", "a"]);
    p.cli_ok(&["ns", "create", "b"]);
    let admin = key(&p, "a", "admin");
    let dev = key(&p, "a", "developer");
    let invoker = key(&p, "a", "invoker");
    let viewer = key(&p, "a", "viewer");
    let other = key(&p, "b", "admin");

    // Tenant A's developer deploys; B's admin deploys its own.
    let fa = echo_function("fa", "http", "");
    let (ok, out) = run(
        &p,
        &dev,
        &["deploy", fa.path().to_str().unwrap(), "-n", "a"],
    );
    assert!(ok, "{out}");
    let fb = echo_function("fb", "python3", "");
    let (ok, out) = run(
        &p,
        &other,
        &["deploy", fb.path().to_str().unwrap(), "-n", "b"],
    );
    assert!(ok, "{out}");

    // Each role against each route family: allowed ones work, the others answer 403.
    let deploy_zip = {
        let dir = echo_function("fa", "http", "");
        let text = std::fs::read_to_string(dir.path().join("petrel.toml")).unwrap();
        petrel_cli::package::package_dir(dir.path(), &text).unwrap()
    };
    let cases: &[Case] = &[
        // (method, path, what, body, [admin, developer, invoker, viewer])
        (
            "GET",
            "/v1/functions?namespace=a",
            "list",
            b"",
            [true, true, false, true],
        ),
        (
            "GET",
            "/v1/functions/fa?namespace=a",
            "get",
            b"",
            [true, true, false, true],
        ),
        (
            "GET",
            "/v1/functions/fa/logs?namespace=a",
            "logs",
            b"",
            [true, true, false, true],
        ),
        (
            "GET",
            "/v1/functions/fa/invocations?namespace=a",
            "records",
            b"",
            [true, true, false, true],
        ),
        (
            "GET",
            "/v1/functions/fa/triggers?namespace=a",
            "triggers",
            b"",
            [true, true, false, true],
        ),
        (
            "GET",
            "/v1/functions/fa/dlq?namespace=a",
            "dead letters",
            b"",
            [true, true, false, true],
        ),
        (
            "GET",
            "/v1/secrets?namespace=a",
            "secrets",
            b"",
            [true, true, false, true],
        ),
        (
            "POST",
            "/v1/functions/fa/invoke?namespace=a",
            "invoke",
            b"{}",
            [true, true, true, false],
        ),
        (
            "GET",
            "/fn/fa/x?namespace=a",
            "fn",
            b"",
            [true, true, true, false],
        ),
        (
            "POST",
            "/async-fn/fa/x?namespace=a",
            "async",
            b"{}",
            [true, true, true, false],
        ),
        (
            "PUT",
            "/v1/secrets/probe?namespace=a",
            "secret set",
            b"v",
            [true, true, false, false],
        ),
        (
            "POST",
            "/v1/functions/fa/dlq/replay?namespace=a",
            "replay",
            b"",
            [true, true, false, false],
        ),
        (
            "GET",
            "/v1/audit?namespace=a",
            "audit",
            b"",
            [true, false, false, false],
        ),
        ("GET", "/v1/keys", "keys", b"", [true, false, false, false]),
        (
            "POST",
            "/v1/namespaces",
            "ns create",
            br#"{"name": "c"}"#,
            [false, false, false, false],
        ),
    ];
    for (method, path, what, body, allowed) in cases {
        for (token, role, ok) in [
            (&admin, "admin", allowed[0]),
            (&dev, "developer", allowed[1]),
            (&invoker, "invoker", allowed[2]),
            (&viewer, "viewer", allowed[3]),
        ] {
            let (status, code) = ask(&p, token, method, path, body).await;
            if ok {
                assert!(
                    status < 400 || (*what == "replay" && code == "invocation_not_found"),
                    "{role} {what}: {status} {code}"
                );
            } else {
                assert_eq!((status, code.as_str()), (403, "forbidden"), "{role} {what}");
            }
        }
    }
    // Deploy and delete: the developer and admin only.
    for (token, ok) in [(&viewer, false), (&invoker, false), (&admin, true)] {
        let auth = format!("Bearer {token}");
        let r = p
            .http_with(
                "PUT",
                "/v1/functions/fa?namespace=a",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/zip"),
                ],
                deploy_zip.clone(),
            )
            .await;
        assert_eq!(r.status < 300, ok, "{}", r.text());
    }
    let (status, _) = ask(&p, &viewer, "DELETE", "/v1/functions/fa?namespace=a", b"").await;
    assert_eq!(status, 403);
    let (ok, out) = run(&p, &viewer, &["key", "create", "-n", "a", "-r", "admin"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
    // An admin gives roles in its own namespaces only.
    let (ok, out) = run(&p, &admin, &["key", "create", "-n", "b", "-r", "viewer"]);
    assert!(!ok && out.contains("namespace_not_found"), "{out}");

    // The function never sees its caller's key.
    let r = p
        .http_with(
            "GET",
            "/fn/fa/x?namespace=a",
            &[("authorization", &format!("Bearer {invoker}"))],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["headers"].get("authorization").is_none(),
        "{}",
        r.text()
    );
    assert!(!r.text().contains(&invoker));
    let a_invocation = r.header("x-petrel-invocation-id").unwrap().to_owned();

    // Tenant B sees nothing of A: a function of A answers as an unknown one does.
    let (_, hidden) = run(&p, &other, &["get", "fa", "-n", "a"]);
    let (_, unknown) = run(&p, &other, &["get", "nope", "-n", "a"]);
    assert!(hidden.contains("function_not_found"), "{hidden}");
    assert_eq!(hidden.replace("fa", "nope"), unknown);
    for path in [
        "/v1/functions/fa/logs?namespace=a",
        "/v1/functions/fa/invocations?namespace=a",
        "/fn/fa/x?namespace=a",
        "/v1/functions/fa/invoke?namespace=a",
    ] {
        let method = if path.ends_with("invoke?namespace=a") {
            "POST"
        } else {
            "GET"
        };
        let (status, code) = ask(&p, &other, method, path, b"{}").await;
        assert_eq!(
            (status, code.as_str()),
            (404, "function_not_found"),
            "{path}"
        );
    }
    let (status, code) = ask(
        &p,
        &other,
        "GET",
        &format!("/v1/invocations/{a_invocation}"),
        b"",
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "invocation_not_found"));
    let (status, _) = ask(
        &p,
        &admin,
        "GET",
        &format!("/v1/invocations/{a_invocation}"),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let (status, code) = ask(&p, &other, "GET", "/v1/secrets?namespace=a", b"").await;
    assert_eq!((status, code.as_str()), (404, "namespace_not_found"));
    let (ok, listed) = run(&p, &other, &["ls"]);
    assert!(
        ok && listed.contains("fb") && !listed.contains("fa"),
        "{listed}"
    );
    let (_, namespaces) = run(&p, &other, &["ns", "ls"]);
    assert!(
        namespaces.contains('b') && !namespaces.contains("\na "),
        "{namespaces}"
    );
    let auth = format!("Bearer {other}");
    let metrics = p
        .http_with("GET", "/metrics", &[("authorization", &auth)], vec![])
        .await
        .text();
    assert!(metrics.contains("namespace=\"b\""), "{metrics}");
    assert!(!metrics.contains("namespace=\"a\""), "{metrics}");
    let usage = p
        .http_with("GET", "/v1/usage", &[("authorization", &auth)], vec![])
        .await
        .text();
    assert!(!usage.contains("\"fa\""), "{usage}");

    // Unauthenticated: every control route and the key function's invoke routes answer 401;
    // unknown and known functions alike.
    for (method, path) in [
        ("GET", "/v1/functions"),
        ("GET", "/metrics"),
        ("GET", "/fn/fa/x?namespace=a"),
        ("GET", "/fn/nope/x?namespace=a"),
    ] {
        let r = p
            .http_with(method, path, &[("authorization", "-")], vec![])
            .await;
        r.assert_error(401, "unauthorized");
    }
    let (status, _) = ask(&p, "petrel_not-a-real-key", "GET", "/v1/functions", b"").await;
    assert_eq!(status, 401);
    assert_eq!(
        p.http_with("GET", "/healthz", &[("authorization", "-")], vec![])
            .await
            .status,
        200
    );

    // A revoked key stops at once.
    let (_, keys) = run(&p, &admin, &["key", "ls"]);
    let viewer_id = keys
        .lines()
        .find(|l| l.contains("viewer of a"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        !keys.contains("owner"),
        "an admin sees only its namespace's keys: {keys}"
    );
    assert!(!keys.contains(&other[7..]), "{keys}");
    let (ok, out) = run(&p, &admin, &["key", "revoke", &viewer_id]);
    assert!(ok, "{out}");
    let (status, code) = ask(&p, &viewer, "GET", "/v1/functions?namespace=a", b"").await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));

    // The audit log names who did what, to A's admin, and shows B nothing of it.
    let (ok, audit) = run(&p, &admin, &["audit", "-n", "a"]);
    assert!(ok, "{audit}");
    assert!(
        audit.contains("function.deploy") && audit.contains("key.revoke"),
        "{audit}"
    );
    assert!(audit.contains("127.0.0.1"), "{audit}");
    let (ok, out) = run(&p, &other, &["audit", "-n", "a"]);
    assert!(!ok && out.contains("namespace_not_found"), "{out}");

    // Keys survive a restart, and the store holds none of their tokens.
    p.restart().await;
    let (ok, out) = run(&p, &dev, &["ls", "-n", "a"]);
    assert!(ok && out.contains("fa"), "{out}");
    let db = std::fs::read(p.data_dir.path().join("data/petrel.db")).unwrap();
    let wal = std::fs::read(p.data_dir.path().join("data/petrel.db-wal")).unwrap_or_default();
    for token in [
        &admin,
        &dev,
        &invoker,
        &viewer,
        &other,
        &OWNER_TOKEN.to_owned(),
    ] {
        let t = token.as_bytes();
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(t.len()).any(|w| w == t),
                "a token is in the store"
            );
        }
    }
    assert!(
        !p.server_log().contains(&dev),
        "a token is in the server's log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_only_their_functions_and_rotate_without_a_redeploy() {
    let p = Petrel::start().await;
    // A function may not list a secret that is not set.
    let dir = function_dir(&[
        (
            "petrel.toml",
            &manifest(
                "reader",
                "python3",
                "app.handler",
                "secrets = [\"db-password\"]\nkeep_alive = \"1s\"\n",
            ),
        ),
        ("app.py", SECRET_APP),
    ]);
    let out = p.cli(&["deploy", dir.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("petrel secret set db-password"),
        "{err}"
    );

    // The value comes from standard input, never the command line.
    let mut set = Command::new(BIN)
        .args(["secret", "set", "db-password"])
        .env("PETREL_SERVER", &p.url)
        .env("PETREL_TOKEN", OWNER_TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(set.stdin.take().unwrap(), "{SECRET_VALUE}").unwrap();
    assert!(set.wait().unwrap().success());
    p.deploy(dir.path());
    let r = p.invoke("reader", "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["sha"], sha256_hex(SECRET_VALUE), "{j}");
    assert_eq!(j["same"], true, "file and variable agree: {j}");
    assert_eq!(j["dir"], "/run/secrets", "{j}");
    // Another function that does not list it has neither.
    let plain = echo_function("plain", "python3", "");
    p.deploy(plain.path());
    assert!(!p.invoke("plain", "{}").await.text().contains(SECRET_VALUE));

    // Rotation: new instances get the new value, with no redeploy.
    let rotated = format!("{SECRET_VALUE}-rotated");
    let path = p.data_dir.path().join("rotated");
    std::fs::write(&path, &rotated).unwrap();
    p.cli_ok(&[
        "secret",
        "set",
        "db-password",
        "--from-file",
        path.to_str().unwrap(),
    ]);
    std::fs::remove_file(&path).unwrap();
    let want = sha256_hex(&rotated);
    let mut seen = false;
    // The warm instance keeps the value it started with; once it has been idle past its
    // keep_alive (1s) it stops, and the next call starts one that reads the new value.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        if p.invoke("reader", "{}").await.json()["sha"] == want.as_str() {
            seen = true;
            break;
        }
    }
    assert!(seen, "a new instance never read the rotated value");

    // The value is in no answer of the API, no log line, no record, and not in clear in the
    // store.
    let mut seen_by_api = String::new();
    for path in [
        "/v1/functions/reader",
        "/v1/functions",
        "/v1/secrets",
        "/v1/functions/reader/logs",
        "/v1/functions/reader/invocations",
        "/v1/audit",
        "/metrics",
    ] {
        seen_by_api.push_str(&p.http("GET", path, None).await.text());
    }
    let ls = p.cli_ok(&["secret", "ls"]);
    assert!(
        ls.contains("db-password") && ls.contains("DB_PASSWORD"),
        "{ls}"
    );
    seen_by_api.push_str(&ls);
    seen_by_api.push_str(&p.cli_ok(&["get", "reader"]));
    seen_by_api.push_str(&p.cli_ok(&["logs", "reader"]));
    seen_by_api.push_str(&p.server_log());
    let db = std::fs::read(p.data_dir.path().join("data/petrel.db")).unwrap();
    let wal = std::fs::read(p.data_dir.path().join("data/petrel.db-wal")).unwrap_or_default();
    for value in [SECRET_VALUE, rotated.as_str()] {
        assert!(!seen_by_api.contains(value), "the secret's value was shown");
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()));
        }
    }
    assert!(
        seen_by_api.contains("secret-reader ran"),
        "the logs were read"
    );
    // Removed, the function's new instances cannot start, and say why.
    p.cli_ok(&["secret", "rm", "db-password"]);
    let mut said = String::new();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        said = String::from_utf8_lossy(&p.cli(&["invoke", "reader"]).stderr).into_owned();
        if said.contains("set it with `petrel secret set db-password") {
            break;
        }
    }
    assert!(
        said.contains("set it with `petrel secret set db-password"),
        "an instance started without its secret: {said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_quotas_answer_429_and_recover() {
    let p = Petrel::start().await;
    // 6 a minute with a burst of 2: the third call inside ten seconds is refused, whatever a
    // cold start took.
    let limited = echo_function(
        "limited",
        "python3",
        "rate_limit = \"6/m\"\nrate_limit_burst = 2\n",
    );
    p.deploy(limited.path());
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(p.http("GET", "/fn/limited/", None).await);
    }
    assert_eq!(codes[0].status, 200, "{}", codes[0].text());
    assert_eq!(codes[1].status, 200);
    let msg = codes[2].assert_error(429, "too_many_requests");
    assert!(msg.contains("rate_limit") && msg.contains("6/m"), "{msg}");
    let wait: u64 = codes[2].header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&wait), "{wait}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(p.http("GET", "/fn/limited/", None).await.status, 200);
    let paced = echo_function(
        "paced",
        "python3",
        "rate_limit = \"10/s\"\nrate_limit_burst = 1\n",
    );
    p.deploy(paced.path());
    // Async work over the rate waits instead of failing: every one succeeds.
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = p
            .http(
                "POST",
                "/v1/functions/paced/invoke?async=true",
                Some((
                    "application/json",
                    json!({ "n": i }).to_string().into_bytes(),
                )),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let mut status = String::new();
        for _ in 0..200 {
            status = p
                .http("GET", &format!("/v1/invocations/{id}"), None)
                .await
                .json()["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if status == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, "succeeded", "{id}");
    }

    // Namespace quotas: functions, memory, and invocations running at once.
    p.cli_ok(&["ns", "create", "q"]);
    p.cli_ok(&[
        "ns",
        "quota",
        "q",
        "--max-functions",
        "1",
        "--max-memory-mb",
        "1280",
        "--max-concurrency",
        "1",
    ]);
    let slow = echo_function("slow", "python3", "max_instances = 10\n");
    p.cli_ok(&["deploy", slow.path().to_str().unwrap(), "-n", "q"]);
    let second = echo_function("second", "python3", "");
    let out = p.cli(&["deploy", second.path().to_str().unwrap(), "-n", "q"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_functions"),
        "{err}"
    );
    let big = echo_function("slow", "python3", "max_instances = 11\n");
    let out = p.cli(&["deploy", big.path().to_str().unwrap(), "-n", "q"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_memory_mb"),
        "{err}"
    );
    let p = std::sync::Arc::new(p);
    let held = {
        let p = p.clone();
        tokio::spawn(async move {
            p.http(
                "POST",
                "/v1/functions/slow/invoke?namespace=q",
                Some((
                    "application/json",
                    br#"{"action": "slow", "secs": 3}"#.to_vec(),
                )),
            )
            .await
        })
    };
    let started = eventually(Duration::from_secs(20), || {
        p.cli_ok(&["logs", "slow", "-n", "q"])
            .contains("py-log-line")
    })
    .await;
    assert!(started, "the slow call never started");
    let r = p
        .http(
            "POST",
            "/v1/functions/slow/invoke?namespace=q",
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    let msg = r.assert_error(429, "too_many_requests");
    assert!(msg.contains("max_concurrency"), "{msg}");
    assert_eq!(held.await.unwrap().status, 200);
    let r = p
        .http(
            "POST",
            "/v1/functions/slow/invoke?namespace=q",
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_auth_is_for_loopback_only() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--no-auth", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-auth is refused"), "{err}");
    // On loopback it runs, and anyone is the owner.
    let p = Petrel::start_with(crate::harness::StoreKind::Sqlite, &["--no-auth"]).await;
    let hello = echo_function("open", "python3", "");
    let out = p.cli_as(None, &["deploy", hello.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = p
        .http_with(
            "POST",
            "/v1/functions/open/invoke",
            &[("authorization", "-")],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(p.server_log().contains("authentication is off"));
}

/// `curl` over TLS: the HTTP version it spoke and the status, or its error.
fn curl(url: &str, ca: &std::path::Path, version: &str) -> Result<(String, String), String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            version,
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (v, code) = text.split_once(' ').unwrap();
    Ok((v.to_owned(), code.to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_on_the_listener_with_http2_and_a_certificate_reloaded_on_change() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = crate::harness::test_ca(dir.path());
    let (served_cert, served_key) = (dir.path().join("served.pem"), dir.path().join("served.key"));
    std::fs::copy(&cert, &served_cert).unwrap();
    std::fs::copy(&key, &served_key).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&served_cert)
        .arg("--tls-key")
        .arg(&served_key)
        .env("PETREL_BOOTSTRAP_TOKEN", OWNER_TOKEN)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("Petrel listening on ")
        .unwrap()
        .to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{first}");
    std::thread::spawn(move || for _ in lines.by_ref() {});

    // HTTP/2 and HTTP/1.1 by ALPN, on the same port.
    let health = format!("{url}/healthz");
    assert_eq!(
        curl(&health, &ca, "--http2").unwrap(),
        ("2".into(), "200".into())
    );
    assert_eq!(
        curl(&health, &ca, "--http1.1").unwrap(),
        ("1.1".into(), "200".into())
    );
    // The CLI speaks https, trusting the CA it is given, and no other.
    let cli = |ca: Option<&std::path::Path>| {
        let mut c = Command::new(BIN);
        c.args(["ls"])
            .env("PETREL_SERVER", &url)
            .env("PETREL_TOKEN", OWNER_TOKEN)
            .env("PETREL_CONFIG", dir.path().join("profiles.toml"));
        if let Some(ca) = ca {
            c.env("PETREL_CA_FILE", ca);
        }
        c.output().unwrap()
    };
    let out = cli(Some(&ca));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach Petrel"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A new certificate (of another CA) replaces the files: served without a restart.
    let dir2 = tempfile::tempdir().unwrap();
    let [ca2, cert2, key2] = crate::harness::test_ca(dir2.path());
    std::fs::copy(&key2, &served_key).unwrap();
    std::fs::copy(&cert2, &served_cert).unwrap();
    let switched = eventually(Duration::from_secs(20), || {
        curl(&health, &ca2, "--http2").is_ok()
    })
    .await;
    assert!(switched, "the new certificate was never served");
    assert!(
        curl(&health, &ca, "--http2").is_err(),
        "the old certificate is still served"
    );
    // A broken file keeps the certificate in use.
    std::fs::write(&served_cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(curl(&health, &ca2, "--http2").is_ok());
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("the previous one stays in use"), "{log}");
    crate::harness::signal(child.id(), "TERM");
    crate::harness::wait_exit(&mut child, Duration::from_secs(30));
}

/// schemathesis, from PyPI (the newest when this was written), cached per machine.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_holds_up_under_schemathesis() {
    let p = Petrel::start().await;
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-python");
    p.deploy(&example);
    let st = tokio::task::spawn_blocking(|| crate::lambda_clients::pip_target(SCHEMATHESIS))
        .await
        .unwrap();
    let (url, auth) = (
        format!("{}/v1/openapi.json", p.url),
        format!("Authorization: Bearer {}", p.token),
    );
    // schemathesis keeps a cache in its working directory: a scratch one, not the tree.
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .current_dir(dir)
            .args(["-m", "schemathesis.cli", "run", &url, "-H", &auth])
            // No 5xx; every answer's status, content type and body as the document says
            // (errors in the contract's shape).
            .args([
                "-c",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "-n",
                "25",
                "--seed",
                "20261203",
                "--no-color",
                // The deploy upload is a zip, which schemathesis cannot make; hostile packages
                // have property tests of their own (petrel-store).
                "--exclude-operation-id",
                "deploy",
                // `follow=true` keeps a log answer open by design; the logs route has tests
                // of its own.
                "--exclude-operation-id",
                "logs",
            ])
            .env("PYTHONPATH", st)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report.rsplit("SUMMARY").next().unwrap_or(&report);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(summary.contains("passed"), "{summary}");
}
