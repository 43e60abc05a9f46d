#!/usr/bin/env python3
"""Quick single-connection measurements of a Petrel build, each next to its baseline in the same run.

    bench/quick.py [--petrel target/release/petrel] [--cold 20] [--warm 2000]

- cold start: a raw invoke right after a deploy (so no instance exists), per runtime, next to the
  bare start of the same interpreter (`python3 -c pass`, `node -e 0`) timed the same way, in the
  same clean environment Petrel gives functions;
- warm: sequential raw invokes over one keep-alive connection, per runtime;
- gateway overhead: the same Node HTTP server called directly on its port and through /fn/.

It is a stand-in for the side-by-side harness (load generators, peers) that bench/ will grow;
it uses one connection, so it measures latency, not throughput.
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

FUNCS = {
    "python3": ("app.handler", {"app.py": "def handler(event, context):\n    return {'ok': 1}\n"}),
    "nodejs": ("index.handler", {"index.js": "exports.handler = async () => ({ ok: 1 });\n"}),
    "http": ("node server.js", {"server.js": (
        "require('http').createServer((q, s) => { s.setHeader('content-type', 'application/json');"
        " s.end('{\"ok\":1}'); }).listen(Number(process.env.PORT), '127.0.0.1');\n")}),
}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(x):
    return f"{x * 1000:.2f} ms"


def write_fn(root, name, runtime, extra=""):
    handler, files = FUNCS[runtime]
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "petrel.toml"), "w") as f:
        f.write(f'name = "{name}"\nruntime = "{runtime}"\nhandler = "{handler}"\n{extra}\n')
    for fname, text in files.items():
        with open(os.path.join(d, fname), "w") as f:
            f.write(text)
    return d


def timed_request(conn, method, path, body=None):
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers={"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    dt = time.perf_counter() - t0
    if r.status != 200:
        sys.exit(f"{method} {path}: {r.status} {data[:300]!r}")
    return dt


def bare_start(cmd, n):
    # The clean environment Petrel gives functions: inherited settings such as
    # NODE_EXTRA_CA_CERTS (which makes node load a CA bundle at start) would skew the baseline.
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "TZ": ":UTC", "HOME": tempfile.gettempdir()}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        out.append(time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--petrel", default="target/release/petrel")
    ap.add_argument("--cold", type=int, default=20)
    ap.add_argument("--warm", type=int, default=2000)
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="petrel-bench-")
    server = subprocess.Popen(
        [a.petrel, "serve", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(work, "data")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        host, port = url.removeprefix("http://").split(":")
        env = dict(os.environ, PETREL_SERVER=url)
        conn = http.client.HTTPConnection(host, int(port))

        def deploy(d, *flags):
            subprocess.run([a.petrel, "deploy", d, *flags], env=env, check=True, stdout=subprocess.DEVNULL)

        rows = []
        print(f"# Petrel quick measurements\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}\n")

        # Cold starts, next to the bare interpreter start.
        base = {"python3": bare_start(["python3", "-c", "pass"], a.cold),
                "nodejs": bare_start(["node", "-e", "0"], a.cold)}
        base["http"] = base["nodejs"]
        print("## Cold start (deploy, then the first raw invoke)\n")
        print("| runtime | median | p90 | bare interpreter start, median | ratio |")
        print("| --- | --- | --- | --- | --- |")
        for rt in FUNCS:
            d = write_fn(work, f"cold-{rt}", rt)
            xs = []
            for i in range(a.cold):
                deploy(d, "--env", f"RUN={i}")
                xs.append(timed_request(conn, "POST", f"/v1/functions/cold-{rt}/invoke", b"{}"))
            b = statistics.median(base[rt])
            print(f"| {rt} | {ms(statistics.median(xs))} | {ms(pct(xs, 90))} | {ms(b)} "
                  f"({'node -e 0' if rt != 'python3' else 'python3 -c pass'}) | {statistics.median(xs) / b:.2f}x |")

        print("\n## Warm raw invoke, one keep-alive connection\n")
        print("| runtime | p50 | p99 | requests/s |")
        print("| --- | --- | --- | --- |")
        for rt in FUNCS:
            d = write_fn(work, f"warm-{rt}", rt)
            deploy(d)
            for _ in range(50):
                timed_request(conn, "POST", f"/v1/functions/warm-{rt}/invoke", b"{}")
            t0 = time.perf_counter()
            xs = [timed_request(conn, "POST", f"/v1/functions/warm-{rt}/invoke", b"{}") for _ in range(a.warm)]
            total = time.perf_counter() - t0
            print(f"| {rt} | {ms(pct(xs, 50))} | {ms(pct(xs, 99))} | {a.warm / total:.0f} |")

        # Gateway overhead: the same server directly and through /fn/.
        d = os.path.join(work, "warm-http")
        direct_port = 20000 + os.getpid() % 20000
        direct = subprocess.Popen(["node", "server.js"], cwd=d, env=dict(os.environ, PORT=str(direct_port)))
        try:
            time.sleep(0.5)
            dconn = http.client.HTTPConnection("127.0.0.1", direct_port)
            for _ in range(50):
                timed_request(dconn, "GET", "/")
                timed_request(conn, "GET", "/fn/warm-http/")
            xd = [timed_request(dconn, "GET", "/") for _ in range(a.warm)]
            xp = [timed_request(conn, "GET", "/fn/warm-http/") for _ in range(a.warm)]
        finally:
            direct.kill()
        print("\n## Gateway overhead: the same Node HTTP server, direct and through Petrel\n")
        print("| path | p50 | p99 |")
        print("| --- | --- | --- |")
        print(f"| direct (baseline) | {ms(pct(xd, 50))} | {ms(pct(xd, 99))} |")
        print(f"| through /fn/ | {ms(pct(xp, 50))} | {ms(pct(xp, 99))} |")
        print(f"| added by Petrel | {ms(pct(xp, 50) - pct(xd, 50))} | {ms(pct(xp, 99) - pct(xd, 99))} |")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
