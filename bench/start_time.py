#!/usr/bin/env python3
"""Median time from spawning a server to its first HTTP 200, for the peers of the cold-start
scenario (a peer has no deploy: its cold start is its process start).

    bench/start_time.py --n 20 --target "NAME=COMMAND with {port} or {config}" [--workerd-config FILE]
"""
import argparse
import http.client
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def first_answer(port, deadline):
    while time.perf_counter() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/")
            if c.getresponse().status == 200:
                return True
        except OSError:
            time.sleep(0.001)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--target", action="append", default=[])
    ap.add_argument("--workerd-config")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="petrel-start-")
    print("| peer | start to first answer, median | p90 |")
    print("| --- | --- | --- |")
    try:
        for t in a.target:
            name, cmd = t.split("=", 1)
            times, missing = [], False
            for _ in range(a.n):
                port = free_port()
                config = ""
                if "{config}" in cmd:
                    config = os.path.join(work, f"config-{port}.capnp")
                    with open(a.workerd_config) as f:
                        text = f.read().replace("PORT", str(port))
                    with open(config, "w") as f:
                        f.write(text)
                    shutil.copy(os.path.join(os.path.dirname(a.workerd_config), "worker.js"), work)
                argv = shlex.split(cmd.format(port=port, config=config))
                t0 = time.perf_counter()
                try:
                    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                except OSError as e:
                    print(f"| {name} | not measured: {e.strerror} ({argv[0]}) | |")
                    missing = True
                    break
                ok = first_answer(port, t0 + 30)
                dt = time.perf_counter() - t0
                p.kill()
                p.wait()
                if ok:
                    times.append(dt)
            if missing:
                continue
            if times:
                times.sort()
                p90 = times[min(len(times) - 1, int(0.9 * (len(times) - 1)))]
                print(f"| {name} | {statistics.median(times) * 1000:.1f} ms | {p90 * 1000:.1f} ms |")
            else:
                print(f"| {name} | did not answer | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
