//! Functions the tests deploy: one per runtime that echoes what it sees, and misbehaves on request.

use crate::harness::{function_dir, manifest};

pub const PY_APP: &str = r#"
import json, os, subprocess, sys, time

def handler(event, context):
    action = None
    if isinstance(event, dict):
        action = event.get("action") or (event.get("queryStringParameters") or {}).get("action")
    print("py-log-line", context.aws_request_id, flush=True)
    if action == "raise":
        raise ValueError("boom from python")
    if action == "crash":
        sys.stderr.write("about to crash\n"); sys.stderr.flush()
        os._exit(3)
    if action == "sleep":
        child = subprocess.Popen(["sleep", "300"])
        print("pids", os.getpid(), child.pid, flush=True)
        time.sleep(300)
    if action == "slow":
        time.sleep(float(event.get("secs", 1)))
    if action == "big":
        return "x" * (7 * 1024 * 1024)
    if action == "http":
        return {"statusCode": 201, "headers": {"x-from": "python"}, "cookies": ["a=1", "b=2"], "body": "created"}
    return {
        "mark": os.environ.get("MARK"),
        "pid": os.getpid(),
        "instance": os.environ.get("PETREL_INSTANCE_ID"),
        "event": event,
        "secret": os.environ.get("PETREL_TEST_SECRET"),
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "arn": context.invoked_function_arn,
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
    }
"#;

pub const NODE_APP: &str = r#"
exports.handler = async (event, context) => {
  let action = event && (event.action || (event.queryStringParameters || {}).action);
  console.log('node-log-line', context.awsRequestId);
  if (action === 'raise') throw new TypeError('boom from node');
  if (action === 'crash') { console.error('about to crash'); process.exit(5); }
  if (action === 'slow') await new Promise((r) => setTimeout(r, (event.secs || 1) * 1000));
  if (action === 'http') return { statusCode: 202, headers: { 'x-from': 'node' }, body: 'accepted' };
  if (action === 'big') return 'x'.repeat(7 * 1024 * 1024);
  return {
    mark: process.env.MARK || null,
    pid: process.pid,
    instance: process.env.PETREL_INSTANCE_ID,
    event,
    secret: process.env.PETREL_TEST_SECRET || null,
    function_name: context.functionName,
    memory: context.memoryLimitInMB,
    request_id: context.awsRequestId,
    remaining_ms: context.getRemainingTimeInMillis(),
  };
};
"#;

pub const HTTP_SERVER: &str = r#"
const http = require('http');
const crypto = require('crypto');
http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/crash') { console.error('http about to crash'); process.exit(4); }
  if (url.pathname === '/hang') return;
  if (url.pathname === '/big' || url.pathname === '/bigstream') {
    // 7 MiB, over the 6 MiB payload limit: with its length declared, or streamed without one.
    const chunk = Buffer.alloc(1024 * 1024, 120);
    if (url.pathname === '/big') res.setHeader('content-length', String(7 * chunk.length));
    let i = 0;
    const more = () => { while (i < 7) { i++; if (!res.write(chunk)) return res.once('drain', more); } res.end(); };
    return more();
  }
  // Node answers without a content-length in chunked encoding, as every streamed answer is.
  if (url.pathname === '/chunked') { res.writeHead(200, {'content-type': 'text/plain'}); return res.end('chunked hello\n'); }
  if (url.pathname === '/stream') {
    res.setHeader('content-type', 'text/plain');
    let i = 0;
    const t = setInterval(() => { res.write(`chunk ${i}\n`); if (++i === 5) { clearInterval(t); res.end(); } }, 20);
    return;
  }
  const hash = crypto.createHash('sha256');
  let n = 0;
  req.on('data', (c) => { n += c.length; hash.update(c); });
  req.on('end', () => {
    console.log('http-log-line', req.method, url.pathname);
    res.setHeader('content-type', 'application/json');
    res.setHeader('x-from', 'http');
    res.end(JSON.stringify({
      mark: process.env.MARK || null, pid: process.pid, instance: process.env.PETREL_INSTANCE_ID, method: req.method, path: url.pathname,
      query: url.search, headers: req.headers, bytes: n, sha256: hash.digest('hex'),
      secret: process.env.PETREL_TEST_SECRET || null,
    }));
  });
}).listen(Number(process.env.PORT), '127.0.0.1');
"#;

pub const PROVIDED_BOOTSTRAP: &str = r#"#!/usr/bin/env python3
import json, os, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation"
while True:
    with urllib.request.urlopen(api + "/next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        deadline = r.headers["Lambda-Runtime-Deadline-Ms"]
        event = json.loads(r.read())
    print("provided-log-line", rid, flush=True)
    action = None
    if isinstance(event, dict):
        action = event.get("action") or (event.get("queryStringParameters") or {}).get("action")
    if action == "raise":
        body = json.dumps({"errorMessage": "boom from bootstrap", "errorType": "CustomError"}).encode()
        req = urllib.request.Request(api + "/" + rid + "/error", data=body, method="POST",
                                     headers={"Lambda-Runtime-Function-Error-Type": "CustomError"})
        urllib.request.urlopen(req)
        continue
    out = {"mark": os.environ.get("MARK"), "pid": os.getpid(), "instance": os.environ.get("PETREL_INSTANCE_ID"), "event": event, "handler": os.environ.get("_HANDLER"),
           "deadline": deadline, "secret": os.environ.get("PETREL_TEST_SECRET")}
    urllib.request.urlopen(urllib.request.Request(api + "/" + rid + "/response", data=json.dumps(out).encode(), method="POST"))
"#;

/// A function directory of `runtime` named `name`, with extra manifest lines.
pub fn echo_function(name: &str, runtime: &str, extra: &str) -> tempfile::TempDir {
    match runtime {
        "python3" => function_dir(&[
            (
                "petrel.toml",
                &manifest(name, runtime, "app.handler", extra),
            ),
            ("app.py", PY_APP),
        ]),
        "nodejs" => function_dir(&[
            (
                "petrel.toml",
                &manifest(name, runtime, "index.handler", extra),
            ),
            ("index.js", NODE_APP),
        ]),
        "http" => function_dir(&[
            (
                "petrel.toml",
                &manifest(name, runtime, "node server.js", extra),
            ),
            ("server.js", HTTP_SERVER),
        ]),
        "provided" => function_dir(&[
            ("petrel.toml", &manifest(name, runtime, "my.handler", extra)),
            ("bootstrap", PROVIDED_BOOTSTRAP),
        ]),
        other => panic!("no fixture for {other}"),
    }
}

/// The line each fixture prints for every invocation.
pub fn log_marker(runtime: &str) -> &'static str {
    match runtime {
        "python3" => "py-log-line",
        "nodejs" => "node-log-line",
        "http" => "http-log-line",
        "provided" => "provided-log-line",
        other => panic!("no fixture for {other}"),
    }
}
