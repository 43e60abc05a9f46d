#!/usr/bin/env python3
"""Many deployed wasm functions: deploy rate, server start time and resident memory, idle cost
per function, and latency of calls to random ones; each next to the same server with no
functions, measured in the same run.

    bench/many_wasm.py [--petrel target/release/petrel] [--n 1000] [--calls 2000]

All N functions are the hello example's component under different names and settings (its
compiled form is cached once, by digest, so the deploys measure Petrel, not the compiler). An
idle function has no loaded component: its cost is its rows and its pool. The first call to each
function loads the component, the next ones reuse it.
"""
import argparse
import http.client
import io
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import zipfile


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def start(petrel, data):
    t0 = time.perf_counter()
    p = subprocess.Popen([petrel, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = p.stdout.readline().strip().rsplit(" ", 1)[-1]
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    return p, conn, time.perf_counter() - t0


def package(name, component):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("petrel.toml", f'name = "{name}"\nruntime = "wasm"\nhandler = "hello.wasm"\nmemory_mb = 16\n'
                                  'invoke_auth = "public"\n'
                                  f'[env]\nGREETING = "Hi {name}"\n')
        z.writestr("hello.wasm", component)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--petrel", default="target/release/petrel")
    ap.add_argument("--component", default="target/wasm-guests/wasm32-wasip2/release/hello-wasm.wasm")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    component = open(a.component, "rb").read()
    work = tempfile.mkdtemp(prefix="petrel-many-")
    try:
        # Baseline: the same server with nothing deployed.
        p, conn, t_empty = start(a.petrel, os.path.join(work, "empty"))
        time.sleep(0.5)
        rss_empty = rss_kib(p.pid)
        anon_empty = rss_kib(p.pid, "RssAnon")
        p.terminate(); p.wait()

        data = os.path.join(work, "many")
        p, conn, _ = start(a.petrel, data)
        # Authentication is on: deploy with the owner key the first start wrote.
        token = open(os.path.join(data, "bootstrap-token")).read().strip()
        t0 = time.perf_counter()
        for i in range(a.n):
            conn.request("PUT", f"/v1/functions/f{i}", body=package(f"f{i}", component),
                         headers={"content-type": "application/zip", "authorization": f"Bearer {token}"})
            r = conn.getresponse(); r.read()
            assert r.status in (200, 201), r.status
        deploy_s = time.perf_counter() - t0
        rss_deployed = rss_kib(p.pid)
        p.terminate(); p.wait()

        p, conn, t_many = start(a.petrel, data)
        time.sleep(0.5)
        rss_idle = rss_kib(p.pid)
        anon_idle = rss_kib(p.pid, "RssAnon")
        lat = []
        for _ in range(a.calls):
            i = random.randrange(a.n)
            t = time.perf_counter()
            conn.request("GET", f"/fn/f{i}/?name=x")
            r = conn.getresponse(); body = r.read()
            lat.append(time.perf_counter() - t)
            assert r.status == 200 and f"Hi f{i}".encode() in body, body
        rss_called = rss_kib(p.pid)
        p.terminate(); p.wait()

        lat.sort()
        q = lambda x: lat[min(len(lat) - 1, int(x * (len(lat) - 1)))] * 1000
        print(f"# {a.n} wasm functions ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f})\n")
        print("| measure | no functions (baseline) | with functions |")
        print("| --- | --- | --- |")
        print(f"| server start to first answer | {t_empty * 1000:.0f} ms | {t_many * 1000:.0f} ms |")
        print(f"| resident memory after start | {rss_empty / 1024:.1f} MiB | {rss_idle / 1024:.1f} MiB "
              f"({(rss_idle - rss_empty) / a.n:.1f} KiB per idle function) |")
        # The binary's own pages count in the resident memory as the page cache happens to hold
        # them; the heap (anonymous memory) is what each function adds.
        print(f"| of which anonymous (heap) | {anon_empty / 1024:.1f} MiB | {anon_idle / 1024:.1f} MiB "
              f"({(anon_idle - anon_empty) / a.n:.1f} KiB per idle function) |")
        print(f"| resident memory after {a.n} deploys (same process) | | {rss_deployed / 1024:.1f} MiB |")
        print(f"| resident memory after {a.calls} calls to random functions | | {rss_called / 1024:.1f} MiB |")
        print(f"\ndeploys: {a.n / deploy_s:.0f} per second ({deploy_s:.1f} s for {a.n}, one connection)")
        print(f"calls to random functions: p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {lat[-1] * 1000:.2f} ms")
        per_fn = (rss_idle - rss_empty) / a.n
        verdict = lambda ok, miss: "met" if ok else f"missed by {miss}"
        print(f"\nTargets of issue #19 (for 10,000 functions; this run has {a.n:,}):\n")
        print("| target | measured | wanted | verdict |")
        print("| --- | --- | --- | --- |")
        print(f"| server start with the functions deployed | {t_many * 1000:.0f} ms | < 1 s | "
              f"{verdict(t_many < 1, f'{(t_many - 1) * 1000:.0f} ms')} |")
        print(f"| resident memory per idle function | {per_fn:.1f} KiB | ≤ 4 KiB | "
              f"{verdict(per_fn <= 4, f'{per_fn - 4:.1f} KiB')} |")
        print(f"| random calls p99 | {q(0.99):.2f} ms | < 5 ms | {verdict(q(0.99) < 5, f'{q(0.99) - 5:.2f} ms')} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
