#!/usr/bin/env python3
"""Async mode throughput on one store, next to the synchronous baseline measured in the same run.

For SQLite (default) or a PostgreSQL URL (--store postgres://...), with wrk at C connections:
  1. baseline: synchronous raw invokes of the wasm hello (completed per second);
  2. accepted/s alone: async submissions to a function whose one async slot is busy, so the
     dispatcher stays idle and only durable commits are measured;
  3. accepted/s while the queue drains: async submissions of the wasm hello, run as they come;
     then completed/s, from the stored start and finish times.
Every submission is a committed transaction before its 202 (grouped with the ones that arrive
together). Prints a markdown table.
"""

import argparse, json, os, re, shutil, socket, sqlite3, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LUA = """
wrk.method = "POST"
wrk.body = '{"n": 1}'
wrk.headers["Content-Type"] = "application/json"
"""

SLOW_APP = "import time\ndef handler(event, context):\n    time.sleep(60)\n    return {}\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_ok(url, limit=30):
    t0 = time.time()
    while time.time() - t0 < limit:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"no answer from {url}")


def wrk(url, c, duration, script, cpu):
    cmd = ["wrk", "-t1", f"-c{c}", f"-d{duration}s", "-s", script, url]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return rps, total, int(bad.group(1)) if bad else 0, errors.group(0) if errors else ""


def query(store, data_dir, sql):
    if store == "sqlite":
        c = sqlite3.connect(os.path.join(data_dir, "petrel.db"))
        try:
            return c.execute(sql).fetchall()
        finally:
            c.close()
    out = subprocess.run(["psql", "-At", "-F", "|", store, "-c", sql], capture_output=True, text=True, check=True).stdout
    return [tuple(int(x) if x.lstrip("-").isdigit() else (x or None) for x in line.split("|")) for line in out.splitlines()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--petrel", required=True)
    ap.add_argument("--store", default="sqlite")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--server-cpu", default=None, help="pin the server (taskset list), default: not pinned")
    ap.add_argument("--load-cpu", default=None)
    a = ap.parse_args()

    work = tempfile.mkdtemp()
    script = os.path.join(work, "post.lua")
    open(script, "w").write(LUA)
    slow = os.path.join(work, "slow")
    os.makedirs(slow)
    open(os.path.join(slow, "petrel.toml"), "w").write(
        'name = "slow"\nruntime = "python3"\nhandler = "app.handler"\ntimeout = "60s"\nasync_concurrency = 1\n')
    open(os.path.join(slow, "app.py"), "w").write(SLOW_APP)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = os.path.join(work, "data")
    cmd = [a.petrel, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
           "--deploy", os.path.join(ROOT, "examples/hello-wasm"), "--deploy", slow]
    if a.store != "sqlite":
        cmd += ["--store", a.store]
    if a.server_cpu is not None:
        cmd = ["taskset", "-c", a.server_cpu] + cmd
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "w"))
    try:
        wait_ok(f"{url}/healthz")
        wait_ok(f"{url}/fn/hello-wasm/")
        c, d = a.connections, a.duration
        rows = []
        base, _, bad, err = wrk(f"{url}/v1/functions/hello-wasm/invoke", c, d, script, a.load_cpu)
        rows.append(("synchronous raw invoke, wasm hello (baseline)", f"{base:,.0f} completed/s", bad, err))
        # Occupy the slow function's one async slot so its submissions only queue.
        urllib.request.urlopen(urllib.request.Request(f"{url}/v1/functions/slow/invoke?async=true", data=b"{}", method="POST")).read()
        time.sleep(1)
        alone, n_alone, bad, err = wrk(f"{url}/v1/functions/slow/invoke?async=true", c, d, script, a.load_cpu)
        rows.append(("async accepted, dispatcher idle", f"{alone:,.0f} accepted/s ({alone / base:.2f}× baseline)", bad, err))
        t0 = int(time.time() * 1000)
        busy, n_busy, bad, err = wrk(f"{url}/v1/functions/hello-wasm/invoke?async=true", c, d, script, a.load_cpu)
        rows.append(("async accepted while the queue drains (wasm hello)", f"{busy:,.0f} accepted/s ({busy / base:.2f}× baseline)", bad, err))
        deadline = time.time() + 300
        while time.time() < deadline:
            left = query(a.store, data_dir, "SELECT COUNT(*) FROM async_invocations WHERE function = 'hello-wasm' AND status IN ('queued', 'running')")[0][0]
            if left == 0:
                break
            time.sleep(0.2)
        n, first, last = query(a.store, data_dir, f"SELECT COUNT(*), MIN(started_at), MAX(finished_at) FROM async_invocations WHERE function = 'hello-wasm' AND status = 'succeeded' AND created_at >= {t0}")[0]
        done = n / ((last - first) / 1000) if n and last and first and last > first else 0
        rows.append(("async completed (wasm hello, submitted above)", f"{done:,.0f} completed/s ({done / base:.2f}× baseline); {n:,} succeeded (wrk counted {n_busy:,} answers; it does not count those in flight when it stops)", 0, ""))
        queued = query(a.store, data_dir, "SELECT COUNT(*) FROM async_invocations WHERE function = 'slow'")[0][0]
        store = "SQLite (WAL, synchronous=NORMAL)" if a.store == "sqlite" else "PostgreSQL (synchronous_commit=on)"
        print(f"Store: {store}; wrk -c{c}, {d} s each; server CPU {a.server_cpu or 'any'}, wrk CPU {a.load_cpu or 'any'}.")
        print(f"{queued:,} submissions of the idle case stayed queued, as intended.")
        print()
        print("| measurement | result | non-2xx | socket errors |")
        print("| --- | --- | --- | --- |")
        for name, result, bad, err in rows:
            print(f"| {name} | {result} | {bad} | {err or '-'} |")
    finally:
        server.terminate()
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
