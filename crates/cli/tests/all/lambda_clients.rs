//! The official AWS Lambda runtime clients, each run as a `provided` function with its own
//! `bootstrap` against Petrel's Runtime API: a hello that reports what its context says, an
//! error, a timeout and a failed init. The packages come from the language's registry, as a
//! user would install them.

use crate::harness::{eventually, run_tool, Petrel};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Python runtime interface client, `pip install`ed once per machine into a cache that
/// outlives the test run (a new version of the pin makes a new directory).
const AWSLAMBDARIC: &str = "awslambdaric==4.2.2";

fn awslambdaric() -> PathBuf {
    pip_target(AWSLAMBDARIC)
}

/// boto3, for driving Petrel as AWS SDKs do.
const BOTO3: &str = "boto3==1.35.99";
/// The newest boto3 PyPI served when this was written: the management tests run with both.
const BOTO3_NEWEST: &str = "boto3==1.44.18";

fn boto3() -> PathBuf {
    pip_target(BOTO3)
}

/// The AWS CLI (version 1, from PyPI).
const AWSCLI: &str = "awscli==1.36.40";
/// The newest AWS CLI v1 PyPI served when this was written.
const AWSCLI_NEWEST: &str = "awscli==1.46.3";

/// The AWS SDK for JavaScript v3's Lambda client, from npm, cached per machine.
const AWS_SDK_JS: &str = "3.1164.0";
/// The newest one npm served when this was written.
const AWS_SDK_JS_NEWEST: &str = "3.1178.0";

fn aws_sdk_js(version: &str) -> PathBuf {
    npm_package("@aws-sdk/client-lambda", version)
}

/// `npm install` of one pinned package into a directory of its own, cached per machine across
/// test runs (and installed by one test at a time); the directory holds its `node_modules`.
pub(crate) fn npm_package(package: &str, version: &str) -> PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!(
        "petrel-test-{}-{version}",
        package.trim_start_matches('@').replace('/', "-")
    ));
    if !dir
        .join("node_modules")
        .join(package)
        .join("package.json")
        .is_file()
    {
        std::fs::create_dir_all(&dir).unwrap();
        run_tool(
            std::process::Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--no-save"])
                .arg(format!("{package}@{version}"))
                .current_dir(&dir),
            &format!("npm install {package}@{version} (npm must be reachable)"),
        );
    }
    dir
}

/// `pip install --target` of one pinned package, cached per machine across test runs (and
/// installed by one test at a time).
pub(crate) fn pip_target(package: &str) -> PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("petrel-test-{}", package.replace("==", "-")));
    // Renamed into place only once installed: its being there means it is whole.
    if !dir.is_dir() {
        let tmp = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        run_tool(
            std::process::Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--no-compile",
                    "--disable-pip-version-check",
                    "--target",
                ])
                .arg(&tmp)
                .arg(package),
            &format!("pip install {package} (PyPI must be reachable)"),
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
    }
    dir
}

pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

const PY_APP: &str = r#"
import os, time

def handler(event, context):
    action = (event or {}).get("action")
    if action == "raise":
        raise ValueError("boom from awslambdaric")
    if action == "sleep":
        time.sleep(30)
    cc = context.client_context
    return {
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "function_name": context.function_name,
        "version": context.function_version,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "log_group": context.log_group_name,
        "log_stream": context.log_stream_name,
        "client_custom": cc.custom if cc else None,
        "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "task_root": os.environ.get("LAMBDA_TASK_ROOT"),
        "event": event,
    }
"#;

/// A `provided` function whose bootstrap runs `python3 -m awslambdaric` with `module`.
fn python_ric_function(name: &str, app: &str, extra: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_tree(&awslambdaric(), d.path());
    std::fs::write(d.path().join("app.py"), app).unwrap();
    provided_files(
        d.path(),
        name,
        "exec python3 -m awslambdaric \"$_HANDLER\"",
        &format!("handler = \"app.handler\"\n{extra}"),
    );
    d
}

/// A `provided` function's `bootstrap` (a shell script running `command`) and `petrel.toml`.
fn provided_files(dir: &Path, name: &str, command: &str, manifest_lines: &str) {
    let bootstrap = dir.join("bootstrap");
    std::fs::write(&bootstrap, format!("#!/bin/sh\n{command}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("petrel.toml"),
        format!("name = \"{name}\"\nruntime = \"provided\"\n{manifest_lines}\n"),
    )
    .unwrap();
}

/// Lambda's client context and Cognito identity headers, as its Invoke API takes them.
pub(crate) fn context_headers() -> Vec<(&'static str, String)> {
    use base64::Engine;
    vec![
        ("content-type", "application/json".into()),
        (
            "x-amz-client-context",
            base64::engine::general_purpose::STANDARD.encode(r#"{"custom": {"tenant": "t-9"}}"#),
        ),
        (
            "x-amz-cognito-identity",
            r#"{"cognitoIdentityId": "id-9", "cognitoIdentityPoolId": "pool-9"}"#.into(),
        ),
    ]
}

pub(crate) async fn invoke_with_context(
    p: &Petrel,
    name: &str,
    event: &str,
) -> crate::harness::Resp {
    let headers = context_headers();
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    p.http_with(
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        &h,
        event.as_bytes().to_vec(),
    )
    .await
}

/// What every official client's hello must have read from Petrel's Runtime API (`memory` as
/// the client reports it: a number, or Python's string).
pub(crate) fn assert_context(
    r: &crate::harness::Resp,
    name: &str,
    memory: serde_json::Value,
) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        Some(j["request_id"].as_str().unwrap()),
        r.header("x-petrel-invocation-id"),
        "{j}"
    );
    assert_eq!(
        j["arn"],
        format!("arn:aws:lambda:us-east-1:000000000000:function:{name}:1")
    );
    assert_eq!(j["function_name"], name);
    assert_eq!(j["version"], "1");
    assert_eq!(j["memory"], memory, "{j}");
    let remaining = j["remaining_ms"].as_i64().unwrap();
    assert!(
        (1000..=3000).contains(&remaining),
        "deadline from the 3s timeout: {j}"
    );
    assert_eq!(j["log_group"], format!("/petrel/default/{name}"));
    assert!(j["log_stream"].as_str().unwrap().starts_with("i-"), "{j}");
    assert_eq!(
        j["client_custom"],
        serde_json::json!({"tenant": "t-9"}),
        "{j}"
    );
    assert_eq!(j["identity"], serde_json::json!(["id-9", "pool-9"]), "{j}");
    assert!(
        j["trace"].as_str().unwrap_or("").starts_with("Root=1-"),
        "{j}"
    );
    j
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_python_runtime_client_runs_unchanged() {
    let p = Petrel::start().await;
    let f = python_ric_function("ric-py", PY_APP, "timeout = \"3s\"\nmemory_mb = 256");
    p.deploy(f.path());

    // Hello: every field of its context comes from Petrel's Runtime API headers and
    // environment; the client context arrives as Lambda's Invoke API sends it (base64 JSON).
    let r = invoke_with_context(&p, "ric-py", r#"{"hello": "ric"}"#).await;
    let j = assert_context(&r, "ric-py", "256".into());
    p.http_with(
        "POST",
        "/v1/functions/ric-py/invoke",
        &[("x-amz-cognito-identity", "not json")],
        b"{}".to_vec(),
    )
    .await
    .assert_error(400, "invalid_request");
    assert!(j["trace"].as_str().unwrap().starts_with("Root=1-"), "{j}");
    assert_eq!(j["task_root"], "/var/task");
    assert_eq!(j["event"], serde_json::json!({"hello": "ric"}));

    // An exception: Lambda's error shape, with the type the client reported.
    let r = p.invoke("ric-py", r#"{"action": "raise"}"#).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.header("x-petrel-function-error"), Some("Unhandled"));
    let j = r.json();
    assert_eq!(
        (&j["errorType"], &j["errorMessage"]),
        (
            &serde_json::json!("ValueError"),
            &serde_json::json!("boom from awslambdaric")
        )
    );
    // The same instance serves the next request.
    assert_eq!(p.invoke("ric-py", "{}").await.status, 200);

    // A timeout: 504, the instance stopped, the next request gets a new one.
    let before = p.invoke("ric-py", "{}").await.json()["log_stream"].clone();
    p.invoke("ric-py", r#"{"action": "sleep"}"#)
        .await
        .assert_error(504, "function_timeout");
    let after = p.invoke("ric-py", "{}").await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_ne!(after.json()["log_stream"], before);

    // A handler that cannot be imported: the client reports it on /runtime/init/error, and
    // the invocation says so.
    let broken = python_ric_function("ric-broken", "import no_such_module\n", "");
    p.deploy(broken.path());
    let r = p.invoke("ric-broken", "{}").await;
    let msg = r.assert_error(502, "function_init_failed");
    assert!(
        msg.contains("Runtime.ImportModuleError") && msg.contains("no_such_module"),
        "{msg}"
    );
    assert!(
        eventually(Duration::from_secs(5), || p
            .cli_ok(&["logs", "ric-broken"])
            .contains("no_such_module"))
        .await
    );
}

/// The function written with the `lambda_runtime` crate, built once (release) into the
/// workspace's target directory.
/// A fixture function written with the `lambda_runtime` crate (`lambda-rs-official`, on the
/// version it was first checked with, or `lambda-rs-official-newest`, the same source on the
/// newest), built (release) into the workspace's target directory.
fn lambda_rs_official(fixture: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("tests/fixtures").join(fixture).join("Cargo.toml");
    let target = root.join("../../target/fixtures");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_tool(
        std::process::Command::new(cargo)
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target),
        &format!("building the lambda_runtime function {fixture}"),
    );
    target.join("release").join(fixture)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_rust_runtime_client_runs_unchanged() {
    // lambda_runtime 0.14, as first checked, and 1.5.0, the newest crates.io served.
    for fixture in ["lambda-rs-official", "lambda-rs-official-newest"] {
        let bin = tokio::task::spawn_blocking(move || lambda_rs_official(fixture))
            .await
            .unwrap();
        rust_client(&bin).await;
    }
}

async fn rust_client(bin: &Path) {
    let p = Petrel::start().await;
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(bin, d.path().join("bootstrap")).unwrap();
    std::fs::write(
        d.path().join("petrel.toml"),
        "name = \"rs-official\"\nruntime = \"provided\"\nhandler = \"hello\"\ntimeout = \"3s\"\n",
    )
    .unwrap();
    p.deploy(d.path());

    use base64::Engine;
    let cc = base64::engine::general_purpose::STANDARD.encode(r#"{"custom": {"tenant": "t-2"}}"#);
    let r = p
        .http_with(
            "POST",
            "/v1/functions/rs-official/invoke",
            &[
                ("content-type", "application/json"),
                ("x-amz-client-context", &cc),
            ],
            br#"{"hello": "rust"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        Some(j["request_id"].as_str().unwrap()),
        r.header("x-petrel-invocation-id")
    );
    assert_eq!(
        j["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:rs-official:1"
    );
    assert_eq!(
        (&j["function_name"], &j["memory"]),
        (&serde_json::json!("rs-official"), &serde_json::json!(128))
    );
    assert_eq!(
        j["client_custom"],
        serde_json::json!({"tenant": "t-2"}),
        "{j}"
    );
    assert!(j["trace"].as_str().unwrap().starts_with("Root=1-"), "{j}");
    let remaining = j["remaining_ms"].as_u64().unwrap();
    assert!((1000..=3000).contains(&remaining), "{j}");
    assert_eq!(j["event"], serde_json::json!({"hello": "rust"}));

    let r = p.invoke("rs-official", r#"{"action": "raise"}"#).await;
    assert_eq!(r.status, 500, "{}", r.text());
    // The error type is what the client sends in Lambda-Runtime-Function-Error-Type.
    assert_eq!(r.header("x-petrel-function-error"), Some("unhandled"));
    assert_eq!(r.json()["errorMessage"], "boom from lambda_runtime");
    assert_eq!(p.invoke("rs-official", "{}").await.status, 200);

    times_out_and_recovers(&p, "rs-official").await;
}

/// Drives Petrel with boto3's Lambda client (`endpoint_url` = Petrel) and prints what each call
/// gave, as JSON.
const BOTO3_SCRIPT: &str = r#"
import json, os, sys, boto3, botocore
url = sys.argv[1]
lam = boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                   aws_access_key_id=os.environ["PETREL_KEY_ID"], aws_secret_access_key=os.environ["PETREL_KEY_SECRET"],
                   config=botocore.config.Config(retries={"max_attempts": 1}))
out = {}
def call(key, **kw):
    try:
        r = lam.invoke(**kw)
        payload = r["Payload"].read() if "Payload" in r else b""
        out[key] = {"status": r["StatusCode"], "error": r.get("FunctionError"),
                    "version": r.get("ExecutedVersion"),
                    "request_id": r["ResponseMetadata"]["RequestId"],
                    "payload": json.loads(payload) if payload else None}
        if "LogResult" in r:
            import base64
            out[key]["log"] = base64.b64decode(r["LogResult"]).decode()
    except botocore.exceptions.ClientError as e:
        out[key] = {"code": e.response["Error"]["Code"], "message": e.response["Error"]["Message"],
                    "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
call("hello", FunctionName="sdk-py", Payload=json.dumps({"who": "boto3"}))
call("tail", FunctionName="sdk-py", LogType="Tail", Payload=json.dumps({"who": "tail"}))
call("arn", FunctionName="arn:aws:lambda:us-east-1:000000000000:function:sdk-py", Qualifier="1", Payload=b"{}")
call("raise", FunctionName="sdk-py", Payload=json.dumps({"action": "raise"}))
call("timeout", FunctionName="sdk-py", Payload=json.dumps({"action": "sleep"}))
call("dry", FunctionName="sdk-py", InvocationType="DryRun")
call("too_large", FunctionName="sdk-py", Payload=json.dumps({"who": "x" * (7 * 1024 * 1024)}))
call("not_json", FunctionName="sdk-py", Payload=b"{nope")
# One instance and no wait queue: a second call while the first sleeps is throttled.
import threading, time
slow = threading.Thread(target=call, args=("busy",), kwargs={"FunctionName": "sdk-py", "Payload": json.dumps({"action": "sleep"})})
slow.start(); time.sleep(0.7)
call("throttled", FunctionName="sdk-py", Payload=b"{}")
slow.join()
call("event", FunctionName="sdk-py", InvocationType="Event", Payload=json.dumps({"who": "event"}))
call("missing", FunctionName="no-such-function", Payload=b"{}")
call("old", FunctionName="sdk-py", Qualifier="9", Payload=b"{}")
print(json.dumps(out))
"#;

const SDK_PY_APP: &str = r#"
import time
def handler(event, context):
    print("handler says hello to", event.get("who"), flush=True)
    if event.get("action") == "raise":
        raise KeyError("boom from the handler")
    if event.get("action") == "sleep":
        time.sleep(30)
    return {"hello": event.get("who"), "version": context.function_version}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn boto3_invokes_petrel_functions_through_lambdas_api() {
    let p = Petrel::start().await;
    deploy_sdk_py(&p, "timeout = \"2s\"\nmax_instances = 1\nqueue_size = 0");
    let j = run_boto3(BOTO3_SCRIPT, &[&p.url]).await;
    use serde_json::json;
    let mut hello = j["hello"].clone();
    hello.as_object_mut().unwrap().remove("request_id");
    assert_eq!(
        hello,
        json!({"status": 200, "error": null, "version": "1", "payload": {"hello": "boto3", "version": "1"}})
    );
    assert_eq!(
        (&j["arn"]["status"], &j["arn"]["version"]),
        (&json!(200), &json!("1")),
        "{j}"
    );
    // LogType Tail: the invocation's own log, framed as Lambda frames it.
    let log = j["tail"]["log"].as_str().unwrap_or_default();
    assert!(
        log.starts_with("START RequestId: ")
            && log.contains("handler says hello to tail\n")
            && !log.contains("hello to boto3")
            && log.contains("REPORT RequestId: "),
        "{j}"
    );
    assert!(j["hello"].get("log").is_none(), "no tail unless asked: {j}");
    assert_eq!(
        (&j["raise"]["status"], &j["raise"]["error"]),
        (&json!(200), &json!("Unhandled")),
        "{j}"
    );
    assert_eq!(j["raise"]["payload"]["errorType"], "KeyError", "{j}");
    assert_eq!(j["timeout"]["error"], "Unhandled", "{j}");
    assert_eq!(
        j["timeout"]["payload"]["errorType"], "Sandbox.Timedout",
        "{j}"
    );
    assert_eq!(j["dry"]["status"], 204, "{j}");
    // Lambda's service errors, as the SDK raises them.
    assert_eq!(
        (&j["too_large"]["code"], &j["too_large"]["status"]),
        (&json!("RequestTooLargeException"), &json!(413)),
        "{j}"
    );
    assert_eq!(
        (&j["not_json"]["code"], &j["not_json"]["status"]),
        (&json!("InvalidRequestContentException"), &json!(400)),
        "{j}"
    );
    assert_eq!(
        (&j["throttled"]["code"], &j["throttled"]["status"]),
        (&json!("TooManyRequestsException"), &json!(429)),
        "{j}"
    );
    assert_eq!(
        j["busy"]["error"], "Unhandled",
        "the call that held the instance: {j}"
    );
    // InvocationType Event: 202 at once, then it runs through the async queue.
    assert_eq!(j["event"]["status"], 202, "{j}");
    let id = j["event"]["request_id"].as_str().unwrap().to_owned();
    let mut ran = serde_json::Value::Null;
    for _ in 0..200 {
        ran = p
            .http("GET", &format!("/v1/invocations/{id}"), None)
            .await
            .json();
        if ran["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(ran["status"], "succeeded", "{ran}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(ran["result"]["body"].as_str().unwrap()).unwrap(),
        json!({"hello": "event", "version": "1"}),
        "{ran}"
    );
    assert_eq!(
        (&j["missing"]["code"], &j["missing"]["status"]),
        (&json!("ResourceNotFoundException"), &json!(404)),
        "{j}"
    );
    assert_eq!(j["old"]["code"], "ResourceNotFoundException", "{j}");
}

/// The Node.js runtime interface client, from npm. Its install builds curl and aws-lambda-cpp
/// from source (a few minutes, once per machine: the result is cached across test runs); npm
/// runs its install scripts only when the package allows them.
const AWS_LAMBDA_RIC: &str = "3.3.0";

fn aws_lambda_ric_node() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("petrel-test-aws-lambda-ric-{AWS_LAMBDA_RIC}"));
        let ric = dir.join("node_modules/aws-lambda-ric");
        if !ric.join("dist/rapid-client.node").is_file() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("package.json"),
                format!(
                    r#"{{"name": "ric", "private": true, "dependencies": {{"aws-lambda-ric": "{AWS_LAMBDA_RIC}"}}, "allowScripts": {{"aws-lambda-ric": true}}}}"#
                ),
            )
            .unwrap();
            let what = format!("npm install aws-lambda-ric@{AWS_LAMBDA_RIC} (npm must be reachable; cmake, autoconf, automake, libtool and g++ installed)");
            let out = run_tool(
                std::process::Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--foreground-scripts"])
                    .current_dir(&dir),
                &what,
            );
            assert!(
                ric.join("dist/rapid-client.node").is_file(),
                "{what} built no dist/rapid-client.node: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ric
    })
    .clone()
}

/// A `provided` function run by the official Node.js client: the client's package as it runs
/// (its JavaScript and the built addon, not its sources), the handler's file, and a bootstrap.
fn node_ric_function(
    name: &str,
    file: &str,
    code: &str,
    handler: &str,
    extra: &str,
) -> tempfile::TempDir {
    let ric = aws_lambda_ric_node();
    let d = tempfile::tempdir().unwrap();
    let to = d.path().join("node_modules/aws-lambda-ric");
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(ric.join("package.json"), to.join("package.json")).unwrap();
    for sub in ["bin", "dist"] {
        copy_tree(&ric.join(sub), &to.join(sub));
    }
    std::fs::write(d.path().join(file), code).unwrap();
    provided_files(
        d.path(),
        name,
        "exec node \"$LAMBDA_TASK_ROOT/node_modules/aws-lambda-ric/bin/index.mjs\" \"$_HANDLER\"",
        &format!("handler = \"{handler}\"\ntimeout = \"3s\"\n{extra}"),
    );
    d
}

const NODE_STREAM_APP: &str = r#"
exports.handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
  const action = event.action || (event.queryStringParameters || {}).action;
  if (action === 'fail_early') throw new Error('broke before writing');
  if (action === 'http') {
    responseStream = awslambda.HttpResponseStream.from(responseStream,
      { statusCode: 201, headers: { 'x-from': 'stream' } });
  }
  responseStream.write('chunk one,');
  if (action === 'relay') {
    // Goes on only once the caller says it has the first chunk.
    await new Promise((resolve, reject) => {
      const s = require('net').connect(event.port, '127.0.0.1');
      s.on('data', () => { s.destroy(); resolve(); });
      s.on('error', reject);
    });
  }
  if (action === 'fail') throw new Error('broke mid-stream');
  responseStream.write('chunk two');
  responseStream.end();
});
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_handler_of_the_nodejs_client_streams_to_the_caller() {
    let p = Petrel::start().await;
    let d = node_ric_function(
        "ric-stream",
        "stream.js",
        NODE_STREAM_APP,
        "stream.handler",
        "",
    );
    p.deploy(d.path());
    let relay = node_ric_function(
        "ric-relay",
        "stream.js",
        NODE_STREAM_APP,
        "stream.handler",
        "network = \"host\"",
    );
    p.deploy(relay.path());

    // The chunks in order, as they come: the handler writes its second chunk only after the
    // caller has told it (over a socket of the test's) that the first one arrived. Were the
    // response buffered, the first chunk would never arrive and the stream would end at the
    // function's timeout with an error.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (status, mut body) = p
        .stream(
            "POST",
            "/v1/functions/ric-relay/invoke",
            format!(r#"{{"action": "relay", "port": {port}}}"#).into_bytes(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        crate::harness::next_data(&mut body).await,
        Ok(Some("chunk one,".into()))
    );
    let (mut sock, _) = listener.accept().await.unwrap();
    use tokio::io::AsyncWriteExt;
    sock.write_all(b"go").await.unwrap();
    let mut rest = String::new();
    while let Some(d) = crate::harness::next_data(&mut body).await.unwrap() {
        rest.push_str(&d);
    }
    assert_eq!(rest, "chunk two");

    // A plain streamed answer, read whole.
    let r = p.invoke("ric-stream", "{}").await;
    assert_eq!(
        (r.status, r.text()),
        (200, "chunk one,chunk two".to_owned())
    );
    // A stream that starts with HTTP metadata (as for a function URL) becomes that answer.
    let r = p.http("GET", "/fn/ric-stream?action=http", None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-from"), Some("stream"));
    assert_eq!(r.text(), "chunk one,chunk two");
    // A failure before the first byte is a function error like any other.
    let r = p.invoke("ric-stream", r#"{"action": "fail_early"}"#).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorMessage"], "broke before writing");
    // A failure after it: the stream breaks, and the caller never has a complete answer. The
    // head and the first chunk were sent, but the break may overtake them on the connection,
    // so the caller sees either a 200 whose body breaks after at most the first chunk, or the
    // connection closed before the head.
    match p
        .try_stream(
            "POST",
            "/v1/functions/ric-stream/invoke",
            br#"{"action": "fail"}"#.to_vec(),
        )
        .await
    {
        Ok((status, mut body)) => {
            assert_eq!(status, 200);
            let mut got = String::new();
            let end = loop {
                match crate::harness::next_data(&mut body).await {
                    Ok(Some(d)) => got.push_str(&d),
                    other => break other,
                }
            };
            assert!(end.is_err(), "the stream must break, not end: {got:?}");
            assert!("chunk one,".starts_with(&got), "{got:?}");
        }
        Err(e) => assert!(e.contains("IncompleteMessage"), "{e}"),
    }
    // The instance that failed was stopped; the next request gets a new one, and works.
    let r = p.invoke("ric-stream", "{}").await;
    assert_eq!(
        (r.status, r.text()),
        (200, "chunk one,chunk two".to_owned())
    );

    // boto3's InvokeWithResponseStream: the event stream, its chunks, and how it ends.
    deploy_sdk_py(&p, "");
    let j = run_boto3(BOTO3_STREAM_SCRIPT, &[&p.url]).await;
    use serde_json::json;
    // (The pieces may reach Petrel together: the relay above shows that they stream.)
    let pieces: Vec<&str> = j["streamed"]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(pieces.concat(), "chunk one,chunk two", "{j}");
    assert_eq!(
        (
            &j["streamed"]["status"],
            &j["streamed"]["error"],
            &j["streamed"]["version"]
        ),
        (&json!(200), &json!(null), &json!("1")),
        "{j}"
    );
    assert_eq!(j["failed_early"]["chunks"], json!([]), "{j}");
    assert_eq!(j["failed_early"]["error"], "Error", "{j}");
    assert!(
        j["failed_early"]["details"]
            .as_str()
            .unwrap()
            .contains("broke before writing"),
        "{j}"
    );
    assert_eq!(j["failed_late"]["chunks"], json!(["chunk one,"]), "{j}");
    assert_eq!(j["failed_late"]["error"], "Unhandled", "{j}");
    // A handler that does not stream answers in one chunk.
    assert_eq!(
        j["buffered"],
        json!({"status": 200, "chunks": [r#"{"hello": "stream", "version": "1"}"#], "error": null, "version": "1"}),
        "{j}"
    );
}

const BOTO3_STREAM_SCRIPT: &str = r#"
import json, os, sys, boto3, botocore
lam = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id=os.environ["PETREL_KEY_ID"], aws_secret_access_key=os.environ["PETREL_KEY_SECRET"],
                   config=botocore.config.Config(retries={"max_attempts": 1}))
out = {}
def stream(key, **kw):
    r = lam.invoke_with_response_stream(**kw)
    chunks, done = [], {}
    for ev in r["EventStream"]:
        if "PayloadChunk" in ev:
            chunks.append(ev["PayloadChunk"]["Payload"].decode())
        if "InvokeComplete" in ev:
            done = ev["InvokeComplete"]
    out[key] = {"status": r["StatusCode"], "chunks": chunks, "error": done.get("ErrorCode"),
                "version": r.get("ExecutedVersion")}
    if done.get("ErrorDetails"):
        out[key]["details"] = done["ErrorDetails"]
stream("streamed", FunctionName="ric-stream", Payload=b"{}")
stream("failed_early", FunctionName="ric-stream", Payload=json.dumps({"action": "fail_early"}))
stream("failed_late", FunctionName="ric-stream", Payload=json.dumps({"action": "fail"}))
stream("buffered", FunctionName="sdk-py", Payload=json.dumps({"who": "stream"}))
print(json.dumps(out))
"#;

const NODE_APP: &str = r#"
exports.handler = async (event, context) => {
  if (event.action === 'raise') throw new TypeError('boom from aws-lambda-ric');
  if (event.action === 'sleep') await new Promise((r) => setTimeout(r, 30000));
  return { request_id: context.awsRequestId, arn: context.invokedFunctionArn,
           function_name: context.functionName, memory: context.memoryLimitInMB,
           remaining_ms: context.getRemainingTimeInMillis(), event };
};
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_official_nodejs_runtime_client_runs_unchanged() {
    let p = Petrel::start().await;
    let d = node_ric_function("ric-node", "index.js", NODE_APP, "index.handler", "");
    p.deploy(d.path());

    let r = p.invoke("ric-node", r#"{"hello": "node"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        Some(j["request_id"].as_str().unwrap()),
        r.header("x-petrel-invocation-id")
    );
    assert_eq!(
        j["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:ric-node:1"
    );
    assert_eq!(
        (&j["function_name"], &j["memory"]),
        (&serde_json::json!("ric-node"), &serde_json::json!("128"))
    );
    let remaining = j["remaining_ms"].as_u64().unwrap();
    assert!((1000..=3000).contains(&remaining), "{j}");
    assert_eq!(j["event"], serde_json::json!({"hello": "node"}));

    let r = p.invoke("ric-node", r#"{"action": "raise"}"#).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(
        (&r.json()["errorType"], &r.json()["errorMessage"]),
        (
            &serde_json::json!("TypeError"),
            &serde_json::json!("boom from aws-lambda-ric")
        )
    );
    assert_eq!(p.invoke("ric-node", "{}").await.status, 200);

    times_out_and_recovers(&p, "ric-node").await;
}

const BOTO3_SIGNED: &str = r#"
import json, sys, boto3, botocore
url, key, secret = sys.argv[1:4]
def client(s):
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=s,
                        config=botocore.config.Config(retries={"max_attempts": 1}))
out = {}
for name, c, fn in [("good", client(secret), "sdk-py"),
                    ("good_arn", client(secret), "arn:aws:lambda:us-east-1:000000000000:function:sdk-py:1"),
                    ("bad", client(secret + "x"), "sdk-py")]:
    try:
        r = c.invoke(FunctionName=fn, Payload=json.dumps({"who": name}))
        out[name] = {"status": r["StatusCode"], "payload": json.loads(r["Payload"].read())}
    except botocore.exceptions.ClientError as e:
        out[name] = {"code": e.response["Error"]["Code"], "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn with_access_keys_the_lambda_api_checks_signatures() {
    let (p, _cfg) = start_with_key("AKIDPETRELTEST", "s3cr3t/with+chars").await;
    assert!(
        p.server_log().contains("AWS Signature V4 required"),
        "{}",
        p.server_log()
    );
    deploy_sdk_py(&p, "");

    // Unsigned: refused as Lambda refuses it.
    let r = p
        .http_with(
            "POST",
            "/2015-03-31/functions/sdk-py/invocations",
            &[("authorization", "-")],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("MissingAuthenticationTokenException")
    );

    let j = run_boto3(
        BOTO3_SIGNED,
        &[&p.url, "AKIDPETRELTEST", "s3cr3t/with+chars"],
    )
    .await;
    use serde_json::json;
    assert_eq!(j["good"]["status"], 200, "{j}");
    assert_eq!(j["good"]["payload"]["hello"], "good", "{j}");
    assert_eq!(
        j["good_arn"]["status"], 200,
        "a path with encoded characters: {j}"
    );
    assert_eq!(
        j["bad"],
        json!({"code": "InvalidSignatureException", "status": 403}),
        "{j}"
    );
}

const JS_SDK_SCRIPT: &str = r#"
const L = require("@aws-sdk/client-lambda");
const fs = require("fs");
const [url, key, secret, zip1, zip2] = process.argv.slice(2);
const client = (s) => new L.LambdaClient({ endpoint: url, region: "us-east-1",
  credentials: { accessKeyId: key, secretAccessKey: s }, maxAttempts: 1 });
const c = client(secret);
const payload = (r) => JSON.parse(Buffer.from(r.Payload).toString());
(async () => {
  const out = {};
  const made = await c.send(new L.CreateFunctionCommand({ FunctionName: "made-by-js", Runtime: "python3.11",
    Role: "arn:aws:iam::000000000000:role/x", Handler: "app.handler", Code: { ZipFile: fs.readFileSync(zip1) } }));
  out.create = made.Version;
  const r = await c.send(new L.InvokeCommand({ FunctionName: "made-by-js", Payload: "{}", LogType: "Tail" }));
  out.invoke = payload(r);
  out.tail = Buffer.from(r.LogResult, "base64").toString().includes("says hello");
  await c.send(new L.UpdateFunctionCodeCommand({ FunctionName: "made-by-js", ZipFile: fs.readFileSync(zip2) }));
  const v = await c.send(new L.PublishVersionCommand({ FunctionName: "made-by-js" }));
  out.published = v.Version;
  out.v1 = payload(await c.send(new L.InvokeCommand({ FunctionName: "made-by-js", Qualifier: "1", Payload: "{}" })));
  out.latest = payload(await c.send(new L.InvokeCommand({ FunctionName: "made-by-js", Payload: "{}" })));
  out.event = (await c.send(new L.InvokeCommand({ FunctionName: "made-by-js", InvocationType: "Event", Payload: "{}" }))).StatusCode;
  try {
    await client(secret + "x").send(new L.InvokeCommand({ FunctionName: "made-by-js", Payload: "{}" }));
  } catch (e) { out.bad = e.name; }
  await c.send(new L.DeleteFunctionCommand({ FunctionName: "made-by-js" }));
  try {
    await c.send(new L.GetFunctionCommand({ FunctionName: "made-by-js" }));
  } catch (e) { out.after_delete = e.name; }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"#;

/// A zip of one `app.py` whose handler prints and returns `greeting`.
fn app_zip(dir: &Path, file: &str, greeting: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(file);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    z.start_file("app.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    write!(
        z,
        "def handler(event, context):\n    print('{greeting} says hello', flush=True)\n    return {{'greeting': '{greeting}', 'version': context.function_version}}\n"
    )
    .unwrap();
    z.finish().unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_cli_and_the_javascript_sdk_manage_and_invoke_functions_with_signed_requests() {
    // The pinned versions and the newest ones: a new client may use a route the old never did.
    for (cli, js) in [(AWSCLI, AWS_SDK_JS), (AWSCLI_NEWEST, AWS_SDK_JS_NEWEST)] {
        let (cli_dir, js_dir) =
            tokio::task::spawn_blocking(move || (pip_target(cli), aws_sdk_js(js)))
                .await
                .unwrap();
        cli_and_js_lifecycle(cli_dir, js_dir).await;
    }
}

async fn cli_and_js_lifecycle(cli_dir: PathBuf, js_dir: PathBuf) {
    let (p, cfg) = start_with_key("AKIDPETRELCLI", "cli-secret").await;
    let zip1 = app_zip(cfg.path(), "v1.zip", "first");
    let zip2 = app_zip(cfg.path(), "v2.zip", "second");

    // The AWS CLI, each call signed with the configured key (or, once, a wrong one).
    let aws = |secret: &str, args: &[&str]| {
        let out = std::process::Command::new("python3")
            .args(["-m", "awscli", "lambda"])
            .args(args)
            .args(["--endpoint-url", &p.url, "--output", "json"])
            .env("PYTHONPATH", &cli_dir)
            .env("AWS_ACCESS_KEY_ID", "AKIDPETRELCLI")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_MAX_ATTEMPTS", "1")
            .output()
            .expect("python3 runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), text, err)
    };
    let ok = |r: (bool, String, String)| -> serde_json::Value {
        assert!(r.0, "{}{}", r.1, r.2);
        if r.1.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&r.1).unwrap()
        }
    };
    let fileb = |p: &Path| format!("fileb://{}", p.display());
    let out_file = cfg.path().join("out.json");
    let read_out = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap()
    };
    let made = ok(aws(
        "cli-secret",
        &[
            "create-function",
            "--function-name",
            "made-by-cli",
            "--runtime",
            "python3.11",
            "--role",
            "arn:aws:iam::000000000000:role/x",
            "--handler",
            "app.handler",
            "--zip-file",
            &fileb(&zip1),
        ],
    ));
    assert_eq!(made["FunctionName"], "made-by-cli", "{made}");
    let inv = ok(aws(
        "cli-secret",
        &[
            "invoke",
            "--function-name",
            "made-by-cli",
            "--log-type",
            "Tail",
            out_file.to_str().unwrap(),
        ],
    ));
    assert_eq!(inv["StatusCode"], 200, "{inv}");
    use base64::Engine;
    let tail = base64::engine::general_purpose::STANDARD
        .decode(inv["LogResult"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8_lossy(&tail).contains("first says hello"),
        "{inv}"
    );
    assert_eq!(read_out()["greeting"], "first");
    ok(aws(
        "cli-secret",
        &[
            "update-function-code",
            "--function-name",
            "made-by-cli",
            "--zip-file",
            &fileb(&zip2),
        ],
    ));
    let published = ok(aws(
        "cli-secret",
        &["publish-version", "--function-name", "made-by-cli"],
    ));
    assert_eq!(published["Version"], "2", "{published}");
    ok(aws(
        "cli-secret",
        &[
            "invoke",
            "--function-name",
            "made-by-cli",
            "--qualifier",
            "1",
            out_file.to_str().unwrap(),
        ],
    ));
    assert_eq!(read_out()["greeting"], "first", "version 1 keeps its code");
    ok(aws(
        "cli-secret",
        &[
            "invoke",
            "--function-name",
            "made-by-cli",
            out_file.to_str().unwrap(),
        ],
    ));
    assert_eq!(read_out()["greeting"], "second");
    let event = ok(aws(
        "cli-secret",
        &[
            "invoke",
            "--function-name",
            "made-by-cli",
            "--invocation-type",
            "Event",
            out_file.to_str().unwrap(),
        ],
    ));
    assert_eq!(event["StatusCode"], 202, "{event}");
    let bad = aws(
        "wrong-secret",
        &[
            "invoke",
            "--function-name",
            "made-by-cli",
            out_file.to_str().unwrap(),
        ],
    );
    assert!(
        !bad.0 && bad.2.contains("InvalidSignatureException"),
        "{bad:?}"
    );
    ok(aws(
        "cli-secret",
        &["delete-function", "--function-name", "made-by-cli"],
    ));
    let gone = aws(
        "cli-secret",
        &["get-function", "--function-name", "made-by-cli"],
    );
    assert!(
        !gone.0 && gone.2.contains("ResourceNotFoundException"),
        "{gone:?}"
    );

    // @aws-sdk/client-lambda: the same lifecycle.
    let script = cfg.path().join("lifecycle.js");
    std::fs::write(&script, JS_SDK_SCRIPT).unwrap();
    let mut node = std::process::Command::new("node");
    node.arg(&script)
        .args([p.url.as_str(), "AKIDPETRELCLI", "cli-secret"])
        .arg(&zip1)
        .arg(&zip2)
        .env("NODE_PATH", js_dir.join("node_modules"));
    let j = json_output(node).await;
    assert_eq!(
        j,
        serde_json::json!({
            "create": "$LATEST",
            "invoke": {"greeting": "first", "version": "1"},
            "tail": true,
            "published": "2",
            "v1": {"greeting": "first", "version": "1"},
            "latest": {"greeting": "second", "version": "2"},
            "event": 202,
            "bad": "InvalidSignatureException",
            "after_delete": "ResourceNotFoundException"
        })
    );
}

const BOTO3_LIFECYCLE: &str = r#"
import io, json, sys, zipfile, boto3, botocore
url = sys.argv[1]
lam = boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                   aws_access_key_id="AKIDPETRELMGMT", aws_secret_access_key="mgmt-secret",
                   config=botocore.config.Config(retries={"max_attempts": 1}))
def zipped(greeting):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", "import os\ndef handler(event, context):\n"
                   f"    return {{'greeting': {greeting!r}, 'version': context.function_version, 'env': os.environ.get('STAGE')}}\n")
    return buf.getvalue()
def payload(r):
    return json.loads(r["Payload"].read())
out = {}
c = lam.create_function(FunctionName="made-by-sdk", Runtime="python3.11", Role="arn:aws:iam::000000000000:role/x",
                        Handler="app.handler", Code={"ZipFile": zipped("hello")}, MemorySize=256, Timeout=5,
                        Environment={"Variables": {"STAGE": "test"}})
out["create"] = {k: c[k] for k in ("FunctionName", "Runtime", "Handler", "MemorySize", "Timeout", "Version", "State")}
out["invoke1"] = payload(lam.invoke(FunctionName="made-by-sdk", Payload=b"{}"))
try:
    lam.create_function(FunctionName="made-by-sdk", Runtime="python3.11", Role="r", Handler="app.handler",
                        Code={"ZipFile": zipped("again")})
except botocore.exceptions.ClientError as e:
    out["create_again"] = e.response["Error"]["Code"]
g = lam.get_function(FunctionName="made-by-sdk")
out["get"] = {k: g["Configuration"][k] for k in ("FunctionName", "MemorySize", "Environment")}
out["list"] = sorted(f["FunctionName"] for f in lam.list_functions()["Functions"])
u = lam.update_function_code(FunctionName="made-by-sdk", ZipFile=zipped("updated"))
out["update"] = u["Version"]
p = lam.publish_version(FunctionName="made-by-sdk")
out["published"] = p["Version"]
out["versions"] = [v["Version"] for v in lam.list_versions_by_function(FunctionName="made-by-sdk")["Versions"]]
out["invoke_latest"] = payload(lam.invoke(FunctionName="made-by-sdk", Payload=b"{}"))
out["invoke_v1"] = payload(lam.invoke(FunctionName="made-by-sdk", Qualifier="1", Payload=b"{}"))
out["invoke_published"] = payload(lam.invoke(FunctionName="made-by-sdk", Qualifier=p["Version"], Payload=b"{}"))
a = lam.create_alias(FunctionName="made-by-sdk", Name="live", FunctionVersion="1", Description="stable")
out["alias"] = {k: a[k] for k in ("Name", "FunctionVersion", "Description")}
out["invoke_alias1"] = payload(lam.invoke(FunctionName="made-by-sdk", Qualifier="live", Payload=b"{}"))
try:
    lam.create_alias(FunctionName="made-by-sdk", Name="live", FunctionVersion="2")
except botocore.exceptions.ClientError as e:
    out["alias_again"] = e.response["Error"]["Code"]
lam.update_alias(FunctionName="made-by-sdk", Name="live", FunctionVersion="2")
out["invoke_alias2"] = payload(lam.invoke(FunctionName="made-by-sdk:live", Payload=b"{}"))
out["aliases"] = [[x["Name"], x["FunctionVersion"]] for x in lam.list_aliases(FunctionName="made-by-sdk")["Aliases"]]
out["get_alias"] = lam.get_alias(FunctionName="made-by-sdk", Name="live")["FunctionVersion"]
# A weighted alias: Lambda's RoutingConfig round-trips, splits calls, and an empty map ends it.
w = lam.update_alias(FunctionName="made-by-sdk", Name="live", FunctionVersion="1",
                     RoutingConfig={"AdditionalVersionWeights": {"2": 0.5}})
out["routing_set"] = w.get("RoutingConfig")
out["routing_get"] = lam.get_alias(FunctionName="made-by-sdk", Name="live").get("RoutingConfig")
out["routing_seen"] = sorted({payload(lam.invoke(FunctionName="made-by-sdk", Qualifier="live", Payload=b"{}"))["version"]
                              for _ in range(40)})
try:
    lam.update_alias(FunctionName="made-by-sdk", Name="live", RoutingConfig={"AdditionalVersionWeights": {"2": 1.5}})
except botocore.exceptions.ClientError as e:
    out["routing_bad"] = e.response["Error"]["Code"]
u = lam.update_alias(FunctionName="made-by-sdk", Name="live", FunctionVersion="2", RoutingConfig={"AdditionalVersionWeights": {}})
out["routing_cleared"] = [u["FunctionVersion"], u.get("RoutingConfig", {}).get("AdditionalVersionWeights", {})]
c = lam.create_alias(FunctionName="made-by-sdk", Name="canary", FunctionVersion="1",
                     RoutingConfig={"AdditionalVersionWeights": {"2": 0.25}})
out["routing_create"] = c.get("RoutingConfig")
lam.delete_alias(FunctionName="made-by-sdk", Name="canary")
lam.delete_alias(FunctionName="made-by-sdk", Name="live")
try:
    lam.invoke(FunctionName="made-by-sdk", Qualifier="live", Payload=b"{}")
except botocore.exceptions.ClientError as e:
    out["alias_gone"] = e.response["Error"]["Code"]
uc = lam.update_function_configuration(FunctionName="made-by-sdk", Timeout=9, MemorySize=512,
                                       Environment={"Variables": {"STAGE": "prod"}})
out["update_config"] = {k: uc[k] for k in ("MemorySize", "Timeout", "Environment", "Version")}
out["invoke_config"] = payload(lam.invoke(FunctionName="made-by-sdk", Payload=b"{}"))
out["get_config"] = {k: v for k, v in lam.get_function_configuration(FunctionName="made-by-sdk").items()
                     if k in ("MemorySize", "Timeout", "Version")}
out["get_config_v1"] = {k: v for k, v in lam.get_function_configuration(FunctionName="made-by-sdk", Qualifier="1").items()
                        if k in ("MemorySize", "Timeout", "Version")}
lam.delete_function(FunctionName="made-by-sdk")
try:
    lam.get_function(FunctionName="made-by-sdk")
except botocore.exceptions.ClientError as e:
    out["after_delete"] = e.response["Error"]["Code"]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn boto3_creates_updates_publishes_and_deletes_a_function() {
    for client in [BOTO3, BOTO3_NEWEST] {
        let pkg = tokio::task::spawn_blocking(move || pip_target(client))
            .await
            .unwrap();
        boto3_lifecycle(pkg).await;
    }
}

async fn boto3_lifecycle(pkg: PathBuf) {
    let (p, _cfg) = start_with_key("AKIDPETRELMGMT", "mgmt-secret").await;
    let j = run_boto3_of(pkg, BOTO3_LIFECYCLE, &[&p.url]).await;
    use serde_json::json;
    assert_eq!(
        j["create"],
        json!({"FunctionName": "made-by-sdk", "Runtime": "python3.11", "Handler": "app.handler",
               "MemorySize": 256, "Timeout": 5, "Version": "$LATEST", "State": "Active"})
    );
    assert_eq!(
        j["invoke1"],
        json!({"greeting": "hello", "version": "1", "env": "test"})
    );
    assert_eq!(j["create_again"], "ResourceConflictException");
    assert_eq!(
        j["get"],
        json!({"FunctionName": "made-by-sdk", "MemorySize": 256, "Environment": {"Variables": {"STAGE": "test"}}})
    );
    assert_eq!(j["list"], json!(["made-by-sdk"]));
    assert_eq!(
        (&j["update"], &j["published"]),
        (&json!("$LATEST"), &json!("2"))
    );
    // ListVersionsByFunction: $LATEST, then each version.
    assert_eq!(j["versions"], json!(["$LATEST", "1", "2"]));
    assert_eq!(
        j["invoke_latest"],
        json!({"greeting": "updated", "version": "2", "env": "test"})
    );
    assert_eq!(
        j["invoke_v1"]["greeting"], "hello",
        "version 1 keeps its code: {j}"
    );
    assert_eq!(j["invoke_published"]["greeting"], "updated");
    // Aliases: a name for a version, moved by UpdateAlias, gone with DeleteAlias.
    assert_eq!(
        j["alias"],
        json!({"Name": "live", "FunctionVersion": "1", "Description": "stable"})
    );
    assert_eq!(
        j["invoke_alias1"],
        json!({"greeting": "hello", "version": "1", "env": "test"})
    );
    assert_eq!(j["alias_again"], "ResourceConflictException");
    assert_eq!(
        j["invoke_alias2"],
        json!({"greeting": "updated", "version": "2", "env": "test"})
    );
    assert_eq!(
        (&j["aliases"], &j["get_alias"]),
        (&json!([["live", "2"]]), &json!("2"))
    );
    assert_eq!(j["alias_gone"], "ResourceNotFoundException");
    assert_eq!(
        (&j["routing_set"], &j["routing_get"]),
        (
            &json!({"AdditionalVersionWeights": {"2": 0.5}}),
            &json!({"AdditionalVersionWeights": {"2": 0.5}})
        )
    );
    assert_eq!(
        j["routing_seen"],
        json!(["1", "2"]),
        "a 50% split serves both versions over 40 calls"
    );
    assert_eq!(j["routing_bad"], "ValidationException");
    assert_eq!(j["routing_cleared"], json!(["2", {}]));
    assert_eq!(
        j["routing_create"],
        json!({"AdditionalVersionWeights": {"2": 0.25}})
    );
    // UpdateFunctionConfiguration: a new version, same code, new settings; older versions keep
    // theirs.
    assert_eq!(
        j["update_config"],
        json!({"MemorySize": 512, "Timeout": 9, "Environment": {"Variables": {"STAGE": "prod"}}, "Version": "$LATEST"})
    );
    assert_eq!(
        j["invoke_config"],
        json!({"greeting": "updated", "version": "3", "env": "prod"})
    );
    assert_eq!(
        j["get_config"],
        json!({"MemorySize": 512, "Timeout": 9, "Version": "$LATEST"})
    );
    assert_eq!(
        j["get_config_v1"],
        json!({"MemorySize": 256, "Timeout": 5, "Version": "1"})
    );
    assert_eq!(j["after_delete"], "ResourceNotFoundException");
    // The function is Petrel's like any other: its CLI sees it gone.
    assert!(!p.cli_ok(&["ls"]).contains("made-by-sdk"));
}

/// A server whose Lambda API requires signatures by this key; its config directory comes along.
async fn start_with_key(id: &str, secret: &str) -> (Petrel, tempfile::TempDir) {
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("node.toml");
    std::fs::write(
        &path,
        format!("[[lambda_access_keys]]\nid = \"{id}\"\nsecret = \"{secret}\"\n"),
    )
    .unwrap();
    let p = Petrel::start_with(
        crate::harness::StoreKind::Sqlite,
        &["--config", path.to_str().unwrap()],
    )
    .await;
    (p, cfg)
}

/// Runs a boto3 script with these arguments; what it printed, as JSON.
async fn run_boto3(script: &str, args: &[&str]) -> serde_json::Value {
    run_boto3_of(boto3(), script, args).await
}

/// Runs a boto3 script with the boto3 installed at `pkg`.
async fn run_boto3_of(pkg: PathBuf, script: &str, args: &[&str]) -> serde_json::Value {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), script).unwrap();
    let mut python = std::process::Command::new("python3");
    python
        .arg(file.path())
        .args(args)
        .env("PYTHONPATH", pkg)
        // The harness's owner key, as SigV4 credentials: its id and its token.
        .env("PETREL_KEY_ID", crate::harness::owner_key_id())
        .env("PETREL_KEY_SECRET", crate::harness::OWNER_TOKEN);
    json_output(python).await
}

/// Runs a command off the async runtime; it must succeed, and what it printed is JSON.
pub(crate) async fn json_output(mut cmd: std::process::Command) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || run_tool(&mut cmd, "the client's command"))
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Deploys the `sdk-py` function the SDK tests call.
fn deploy_sdk_py(p: &Petrel, extra: &str) {
    let f = crate::harness::function_dir(&[
        (
            "petrel.toml",
            &crate::harness::manifest("sdk-py", "python3", "app.handler", extra),
        ),
        ("app.py", SDK_PY_APP),
    ]);
    p.deploy(f.path());
}

/// A handler that sleeps past its timeout is answered 504, and the next request gets a new
/// instance that works.
pub(crate) async fn times_out_and_recovers(p: &Petrel, name: &str) {
    p.invoke(name, r#"{"action": "sleep"}"#)
        .await
        .assert_error(504, "function_timeout");
    assert_eq!(p.invoke(name, "{}").await.status, 200);
}
