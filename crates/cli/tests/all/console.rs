//! The web console in a real browser: Debian's Chromium driven by playwright-core (from npm)
//! through `tests/browser/console.mjs`, against a real server with real functions.

use crate::harness::{eventually, Petrel, BIN, OWNER_TOKEN};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const PLAYWRIGHT: &str = "1.65.2";
const SECRET_VALUE: &str = "s3cr3t-console-value-7f3a";

/// playwright-core, installed once per machine (it downloads no browser: Debian's is used).
fn playwright() -> PathBuf {
    crate::lambda_clients::npm_package("playwright-core", PLAYWRIGHT)
}

/// A zip a user would upload: a python function named `uploaded`.
fn upload_zip(dir: &Path) -> PathBuf {
    let path = dir.join("uploaded.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let o = zip::write::SimpleFileOptions::default();
    z.start_file("petrel.toml", o).unwrap();
    z.write_all(b"name = \"uploaded\"\nruntime = \"python3\"\nhandler = \"app.handler\"\n")
        .unwrap();
    z.start_file("app.py", o).unwrap();
    z.write_all(b"def handler(event, context):\n    return {'uploaded': True}\n")
        .unwrap();
    z.finish().unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_deploys_invokes_and_replays_in_a_real_browser() {
    if !Path::new("/usr/bin/chromium").is_file() {
        panic!(
            "Debian's chromium is needed (scripts/test.sh installs it: apt-get install chromium)"
        );
    }
    let pw = tokio::task::spawn_blocking(playwright).await.unwrap();
    let p = Petrel::start().await;

    // A secret the function reads: its value must never reach the page.
    let mut set = Command::new(BIN)
        .args(["secret", "set", "api-token"])
        .env("PETREL_SERVER", &p.url)
        .env("PETREL_TOKEN", OWNER_TOKEN)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(set.stdin.take().unwrap(), "{SECRET_VALUE}").unwrap();
    assert!(set.wait().unwrap().success());
    let app = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-python/app.py"),
    )
    .unwrap();
    let web = crate::harness::function_dir(&[
        (
            "petrel.toml",
            &crate::harness::manifest(
                "web",
                "python3",
                "app.handler",
                "secrets = [\"api-token\"]\n[env]\nGREETING = \"Hello\"",
            ),
        ),
        ("app.py", &app),
    ]);
    p.deploy(web.path());
    let flaky = crate::harness::function_dir(&[
        (
            "petrel.toml",
            &crate::harness::manifest("flaky", "python3", "app.handler", "max_retries = 0"),
        ),
        (
            "app.py",
            "def handler(event, context):\n    raise RuntimeError('always fails')\n",
        ),
    ]);
    p.deploy(flaky.path());
    p.cli_ok(&["invoke", "flaky", "--async", "--data", "{}"]);
    assert!(
        eventually(Duration::from_secs(20), || p
            .cli_ok(&["dlq", "ls", "flaky"])
            .lines()
            .count()
            > 1)
        .await,
        "the failed async invocation is a dead letter"
    );
    let viewer = crate::tenancy::key(&p, "default", "viewer");

    let work = tempfile::tempdir().unwrap();
    let zip = upload_zip(work.path());
    let dir = work.path().join("from-dir");
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(
        dir.join("petrel.toml"),
        "name = \"from-dir\"\nruntime = \"python3\"\nhandler = \"app.handler\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("app.py"),
        "from lib.answer import ANSWER\ndef handler(event, context):\n    return {'answer': ANSWER}\n",
    )
    .unwrap();
    std::fs::write(dir.join("lib/__init__.py"), "").unwrap();
    std::fs::write(dir.join("lib/answer.py"), "ANSWER = 42\n").unwrap();
    let shots = std::env::var_os("PETREL_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    // Run from playwright's directory: ES modules resolve from the script's place.
    let script = pw.join("console.mjs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.mjs"),
        &script,
    )
    .unwrap();
    let mut node = Command::new("node");
    node.arg(&script)
        .args([p.url.as_str(), OWNER_TOKEN, &viewer])
        .arg(&zip)
        .arg(&shots)
        .arg(SECRET_VALUE)
        .arg(&dir)
        .current_dir(&pw);
    let j = crate::lambda_clients::json_output(node).await;
    assert!(j["failed"].is_null(), "the browser run failed: {j:#}");
    assert_eq!(j["errors"], serde_json::json!([]), "console errors: {j:#}");
    assert_eq!(j["listed"], serde_json::json!(["flaky", "web"]));
    assert_eq!(j["searched"], serde_json::json!(["flaky"]));
    let (before, after) = (
        j["sparkline"]["before"].as_u64().unwrap(),
        j["sparkline"]["after"].as_u64().unwrap(),
    );
    assert!(after >= before + 25, "{j}");
    let config = j["config"].as_str().unwrap();
    assert!(
        config.contains("GREETING=Hello") && config.contains("api-token"),
        "{config}"
    );
    assert_eq!(j["invoke"]["status"], "200");
    assert!(
        j["invoke"]["body"]
            .as_str()
            .unwrap()
            .contains("Hello, panel!"),
        "{j}"
    );
    assert!(j["invocationRows"].as_u64().unwrap() >= 1, "{j}");
    assert!(
        j["httpInvoke"]
            .as_str()
            .unwrap()
            .contains("Hello, httpmode!"),
        "{j}"
    );
    let instances = j["instances"].as_str().unwrap();
    assert!(
        instances.contains("1 ready") && instances.contains("1 cold starts"),
        "{instances}"
    );
    assert_eq!(j["usageChart"], true);
    assert_eq!(j["rollouts"], "no rollout in progress");
    // Usage in GB-s: 25 calls of the burst, the panel's, at 128 MB.
    let usage = j["usage"].as_str().unwrap();
    assert!(usage.contains("26 invocations, 0 errors"), "{usage}");
    assert!(
        j["flakyQueue"].as_str().unwrap().contains("1 failed"),
        "{j}"
    );
    assert_eq!(j["deleteButton"], true);
    assert_eq!(j["secretInPage"], false);
    assert!(j["replays"].as_u64().unwrap() >= 1, "the replay ran: {j}");
    assert!(
        j["deployed"]
            .as_str()
            .unwrap()
            .contains("Deployed uploaded version 1"),
        "{j}"
    );
    assert_eq!(
        p.invoke("uploaded", "{}").await.json(),
        serde_json::json!({"uploaded": true})
    );
    assert!(
        j["deployedDir"]
            .as_str()
            .unwrap()
            .contains("Deployed from-dir version 1"),
        "{j}"
    );
    // The directory's tree arrived whole: the package imports from its subdirectory.
    assert_eq!(
        p.invoke("from-dir", "{}").await.json(),
        serde_json::json!({"answer": 42})
    );
    assert!(j["total"].as_u64().unwrap() >= 27, "{j}");
    assert!(
        j["budget"]
            .as_str()
            .unwrap()
            .contains("MiB held by live instances"),
        "{j}"
    );
    assert!(j["phoneOverflow"].as_i64().unwrap() <= 0, "{j}");
    assert_eq!(j["viewerDeployLink"], false);
    assert_eq!(j["viewerDeleteButton"], false);
    assert_eq!(j["viewerReplayButton"], false);
    assert_eq!(j["viewerSecretInPage"], false);
    for page in ["functions", "function", "deploy", "overview", "phone"] {
        assert!(shots.join(format!("{page}.png")).is_file(), "{page}.png");
    }
}
