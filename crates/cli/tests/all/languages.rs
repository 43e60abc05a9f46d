//! Go and Java as their users write them (the official aws-lambda-go and the official Java
//! runtime interface client with aws-lambda-java-core), each built from source by the deploy's
//! `[build]` step; and `petrel new` of every runtime, deployed and invoked as scaffolded.

use crate::harness::{eventually, Petrel};
use crate::lambda_clients::{
    assert_context, copy_tree, invoke_with_context, times_out_and_recovers,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of a fixture's sources, without what an earlier build of it left.
fn sources_of(name: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_tree(&fixture(name), d.path());
    for built in ["bootstrap", "lib", "target"] {
        let p = d.path().join(built);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir_all(&p);
    }
    d
}

/// `petrel deploy DIR [ARGS]`: stdout and stderr (where build progress goes), asserting success.
fn deploy_with(p: &Petrel, dir: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["deploy", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = p.cli(&all);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "petrel {all:?} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_go_client_runs_unchanged_and_deploy_builds_it_when_stale() {
    let p = Petrel::start().await;
    let src = sources_of("lambda-go-official");
    let (_, progress) = deploy_with(&p, src.path(), &[]);
    assert!(
        progress.contains("Building go-official (bootstrap is missing: CGO_ENABLED=0 go build"),
        "{progress}"
    );

    let r = invoke_with_context(&p, "go-official", r#"{"hello": "go"}"#).await;
    let j = assert_context(&r, "go-official", 192.into());
    assert_eq!(j["event"], serde_json::json!({"hello": "go"}));
    assert_eq!(j["greeting"], "hi from go");
    let id = j["request_id"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(5), || p
            .cli_ok(&["logs", "go-official"])
            .contains(&format!("go handler saw request {id}")))
        .await
    );

    // A returned error: Lambda's shape, its type the Go type's name.
    let r = p.invoke("go-official", r#"{"action": "raise"}"#).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.header("x-petrel-function-error"), Some("Unhandled"));
    let e = r.json();
    assert_eq!(
        (&e["errorType"], &e["errorMessage"]),
        (
            &serde_json::json!("Boom"),
            &serde_json::json!("boom from aws-lambda-go: raise")
        ),
        "{e}"
    );
    // A panic is an error too, with its message; the function keeps serving.
    let r = p.invoke("go-official", r#"{"action": "panic"}"#).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorMessage"], "panic from aws-lambda-go");
    let r = p.invoke("go-official", "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    times_out_and_recovers(&p, "go-official").await;

    // Deployed again unchanged: nothing to build. A source newer than bootstrap: built again.
    let (out, progress) = deploy_with(&p, src.path(), &[]);
    assert!(!progress.contains("Building"), "{progress}");
    assert!(out.contains("is unchanged at version 1"), "{out}");
    let main = std::fs::File::options()
        .append(true)
        .open(src.path().join("main.go"))
        .unwrap();
    main.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let (_, progress) = deploy_with(&p, src.path(), &[]);
    assert!(
        progress.contains("Building go-official (main.go is newer than bootstrap: "),
        "{progress}"
    );
    // --no-build deploys what is there.
    let (_, progress) = deploy_with(&p, src.path(), &["--no-build"]);
    assert!(!progress.contains("Building"), "{progress}");
    // `petrel build` builds whatever the output's age; a directory without [build] says how
    // to add one.
    let out = p.cli(&["build", src.path().to_str().unwrap()]);
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{progress}");
    assert!(
        progress.contains("Building go-official (CGO_ENABLED=0 go build -o bootstrap .)")
            && progress.contains("Building go-official built"),
        "{progress}"
    );
    // On a terminal the build is a spinner redrawn in place (indicatif), then the same line.
    let tty = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} build {}",
            crate::harness::BIN,
            src.path().display()
        ))
        .arg("/dev/null")
        .output()
        .expect("script (util-linux) runs");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(
        shown.contains("\u{1b}[2K") && shown.contains("Building go-official built"),
        "{shown:?}"
    );
    let plain = crate::harness::function_dir(&[(
        "petrel.toml",
        &crate::harness::manifest("plain", "python3", "app.handler", ""),
    )]);
    let out = p.cli(&["build", plain.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("has no [build] table"),
        "{err}"
    );

    // A build whose tool is not installed says which, and deploys nothing.
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(
        broken.path().join("petrel.toml"),
        "name = \"no-tool\"\nruntime = \"provided\"\n[build]\ncommand = \"petrel-no-such-compiler -o bootstrap main.x\"\n",
    )
    .unwrap();
    let out = p.cli(&["deploy", broken.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`petrel-no-such-compiler` is not installed"),
        "{err}"
    );
    p.http("GET", "/v1/functions/no-tool", None)
        .await
        .assert_error(404, "function_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn java_functions_run_on_the_official_runtime_interface_client() {
    let mut p = Petrel::start().await;
    let src = sources_of("lambda-java-official");
    let (_, progress) = deploy_with(&p, src.path(), &[]);
    assert!(
        progress.contains("Building java-official (lib is missing: mvn"),
        "{progress}"
    );

    // RequestHandler<Map, Map>: its context from Petrel's Runtime API.
    let r = invoke_with_context(&p, "java-official", r#"{"hello": "java"}"#).await;
    let j = assert_context(&r, "java-official", 256.into());
    assert_eq!(j["event"], serde_json::json!({"hello": "java"}));
    assert_eq!(j["greeting"], "hi from java");
    assert_eq!(j["task_root"], "/var/task");
    assert_eq!(j["user_dir"], "/var/task");
    // The heap is sized from memory_mb (85%), not from the machine.
    let heap = j["max_heap_mb"].as_u64().unwrap();
    assert!((150..=218).contains(&heap), "{j}");
    let id = j["request_id"].as_str().unwrap().to_owned();
    // The client's logger writes no newline: the line is one all the same, with its request.
    assert!(
        eventually(Duration::from_secs(5), || p
            .cli_ok(&["logs", "java-official"])
            .contains(&format!("java handler saw request {id}")))
        .await
    );

    // An exception: Lambda's error shape, its type the exception's class.
    let r = p.invoke("java-official", r#"{"action": "raise"}"#).await;
    assert_eq!(r.status, 500, "{}", r.text());
    let e = r.json();
    assert_eq!(
        (&e["errorType"], &e["errorMessage"]),
        (
            &serde_json::json!("java.lang.IllegalStateException"),
            &serde_json::json!("boom from java")
        ),
        "{e}"
    );
    assert_eq!(p.invoke("java-official", "{}").await.status, 200);

    // The other handler shapes, from the same jar: a stream handler and POJOs.
    deploy_with(
        &p,
        src.path(),
        &["--name", "java-upper", "--handler", "fixture.Upper"],
    );
    let r = p.invoke("java-upper", r#""quiet words""#).await;
    assert_eq!((r.status, r.text().as_str()), (200, r#""QUIET WORDS""#));
    deploy_with(
        &p,
        src.path(),
        &[
            "--name",
            "java-orders",
            "--handler",
            "fixture.Orders::handleRequest",
        ],
    );
    let r = p
        .invoke(
            "java-orders",
            r#"{"customer": "ada", "cents": [100, 250, 5]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"customer": "ada", "totalCents": 355, "items": 3})
    );

    // A timeout stops the instance; the next request gets a new one, which after a deploy
    // of the same memory size is a standby JVM handed its function (seconds have passed for
    // it to get ready; a few timeouts more if the machine is slow).
    let after = served_by_a_standby(&p, "java-official")
        .await
        .expect("no instance came from a standby JVM");
    // Its environment is the instance's own, not the standby's.
    assert_eq!(after["greeting"], "hi from java");
    assert_eq!(after["function_name"], "java-official");

    // After a restart the server readies the java runtime for the functions it restores, as
    // their deploy did: the first request, made once a standby JVM waits, is served by it.
    p.restart().await;
    assert!(
        eventually(Duration::from_secs(30), || {
            crate::harness::descendant_cmdlines(p.pid())
                .iter()
                .any(|c| c.contains("PetrelJava --standby"))
        })
        .await,
        "no standby JVM after the restart; log:\n{}",
        p.server_log()
    );
    let first = p.invoke("java-official", "{}").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let stream = first.json()["log_stream"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(5), || p
            .cli_ok(&["logs", "java-official"])
            .lines()
            .any(|l| l.contains(&stream)
                && l.contains("instance started")
                && l.contains("a standby process")))
        .await,
        "the first request after the restart did not get a standby JVM:\n{}",
        p.cli_ok(&["logs", "java-official"])
    );

    // A deploy of another memory size makes the standby JVMs that size: the heap of an
    // instance taken from one is sized from its memory_mb, not the earlier one's.
    deploy_with(
        &p,
        src.path(),
        &["--name", "java-big", "--memory-mb", "512"],
    );
    let big = served_by_a_standby(&p, "java-big")
        .await
        .expect("no java-big instance came from a standby JVM");
    assert_eq!(big["memory"], 512);
    let heap = big["max_heap_mb"].as_u64().unwrap();
    assert!((300..=436).contains(&heap), "{big}");

    // A handler class that is not in the package: the client's error, naming it.
    deploy_with(
        &p,
        src.path(),
        &[
            "--name",
            "java-missing",
            "--handler",
            "fixture.Nope::handleRequest",
        ],
    );
    let r = p.invoke("java-missing", "{}").await;
    assert!(r.status >= 500, "{}", r.text());
    assert!(r.text().contains("fixture.Nope"), "{}", r.text());
}

/// The answer of an instance of `name` that a standby JVM became: each round times an instance
/// out so that the next request needs a new one (seconds pass for a standby to get ready; a
/// few rounds more if the machine is slow). `None` if none came from a standby.
async fn served_by_a_standby(p: &Petrel, name: &str) -> Option<serde_json::Value> {
    for _ in 0..5 {
        let before = p.invoke(name, "{}").await.json()["log_stream"].clone();
        times_out_and_recovers(p, name).await;
        let after = p.invoke(name, "{}").await.json();
        assert_ne!(after["log_stream"], before);
        let stream = after["log_stream"].as_str().unwrap().to_owned();
        let logs = p.cli_ok(&["logs", name]);
        if logs.lines().any(|l| {
            l.contains(&stream) && l.contains("instance started") && l.contains("a standby process")
        }) {
            return Some(after);
        }
    }
    None
}

/// How each template's function is called, and what its answer holds.
const TEMPLATES: &[&str] = &[
    "python3", "nodejs", "provided", "http", "wasm", "java", "go",
];

#[tokio::test(flavor = "multi_thread")]
async fn petrel_new_of_every_runtime_deploys_as_scaffolded_and_answers() {
    let p = Petrel::start().await;
    let work = tempfile::tempdir().unwrap();
    for t in TEMPLATES {
        let name = format!("new-{t}");
        let dir = work.path().join(&name);
        let out = p.cli_ok(&["new", &name, "--runtime", t, "--dir", dir.to_str().unwrap()]);
        assert!(out.contains("Deploy it with"), "{out}");
        // wasm (cargo), java (Maven) and go (go build) are built by the deploy itself.
        let (out, progress) = deploy_with(&p, &dir, &[]);
        assert!(out.contains(&format!("Deployed {name} version 1")), "{out}");
        if ["wasm", "java", "go"].contains(t) {
            assert!(progress.contains(&format!("Building {name}")), "{progress}");
        }
        // (The harness's client sends the owner's key: scaffolds take one.)
        let r = p.http("GET", &format!("/fn/{name}/?name=Ada"), None).await;
        assert_eq!(r.status, 200, "{t}: {}", r.text());
        assert!(r.text().contains("Ada"), "{t}: {}", r.text());
        let out = p.cli_ok(&["invoke", &name, "--data", r#"{"name": "Bob"}"#]);
        assert!(out.contains("Hello, Bob!"), "{t}: {out}");
    }
    // It refuses to write over a directory, and names an unknown runtime.
    let dir = work.path().join("new-python3");
    let out = p.cli(&[
        "new",
        "new-python3",
        "--runtime",
        "python3",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = p.cli(&[
        "new",
        "x",
        "--runtime",
        "cobol",
        "--dir",
        work.path().join("x").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cobol") && err.contains("java, go"), "{err}");
}
