#!/usr/bin/env python3
"""Cold start per runtime: the time from a request to its response when no instance of the
function exists, next to the bare process start of the same language, timed the same way in the
same run, and checked against the targets of issue #5.

    bench/cold_start.py --petrel target/release/petrel --provided PATH/hello-lambda-rs \
        --wasm examples/hello-wasm [--n 20]

Each sample redeploys the function with a new environment value, which makes a new version with
no instance, then times one raw invoke over a kept-alive connection. Samples are --gap seconds
apart (default 0.25), so that the standby Node processes taken by one are replaced before the
next; --gap 0 shows back-to-back cold starts, which outrun the replacements. Prints a markdown
table.
"""
import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# runtime -> (handler, files, bare start command, target in ms)
FUNCS = {
    "python3": ("app.handler", {"app.py": "def handler(event, context):\n    return {'ok': 1}\n"},
                ["python3", "-c", "pass"], 10.0),
    "nodejs": ("index.handler", {"index.js": "exports.handler = async () => ({ ok: 1 });\n"},
               ["node", "-e", "0"], 15.0),
    "http": ("node server.js", {"server.js": (
        "require('http').createServer((q, s) => { s.setHeader('content-type', 'application/json');"
        " s.end('{\"ok\":1}'); }).listen(Number(process.env.PORT), '127.0.0.1');\n")},
        ["node", "-e", "0"], None),
}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(x):
    return f"{x * 1000:.2f} ms"


def clean_env():
    # The clean environment Petrel gives functions: inherited settings such as
    # NODE_EXTRA_CA_CERTS (which makes node load a CA bundle at start) would skew the baseline.
    return {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "TZ": ":UTC", "HOME": tempfile.gettempdir()}


def bare_start(cmd, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def write_fn(root, name, runtime, handler, files, extra=""):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "petrel.toml"), "w") as f:
        f.write(f'name = "{name}"\nruntime = "{runtime}"\nhandler = "{handler}"\n{extra}\n')
    for fname, src in files.items():
        dst = os.path.join(d, fname)
        if isinstance(src, bytes):
            with open(dst, "wb") as f:
                f.write(src)
            os.chmod(dst, 0o755)
        else:
            with open(dst, "w") as f:
                f.write(src)
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--petrel", default="target/release/petrel")
    ap.add_argument("--provided", help="the hello-lambda-rs binary (bench/hello-lambda-rs)")
    ap.add_argument("--wasm", help="a directory with a wasm function (examples/hello-wasm)")
    ap.add_argument("--java", help="a directory with a built java function (examples/hello-java)")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--server-cpu", help="pin the server to this CPU (taskset)")
    ap.add_argument("--config", help="a petrel serve --config file")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="an extra petrel serve argument (--no-sandbox, --instance-limits); repeatable")
    ap.add_argument("--only", help="comma-separated runtimes to measure")
    ap.add_argument("--gap", type=float, default=0.25,
                    help="seconds between samples, so that standby processes are back (0: back to back)")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="petrel-cold-")
    cmd = [a.petrel, "serve", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(work, "data")]
    if a.config:
        cmd += ["--config", a.config]
    cmd += a.serve_arg
    if a.server_cpu is not None:
        cmd = ["taskset", "-c", a.server_cpu, *cmd]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        host, port = url.removeprefix("http://").split(":")
        # Authentication is on: this server's own owner key, for the CLI and the invokes.
        token = open(os.path.join(work, "data", "bootstrap-token")).read().strip()
        env = dict(os.environ, PETREL_SERVER=url, PETREL_TOKEN=token)
        conn = http.client.HTTPConnection(host, int(port))

        subjects = []  # (runtime, dir, bare command, bare label, target ms)
        for rt, (handler, files, bare, target) in FUNCS.items():
            subjects.append((rt, write_fn(work, f"cold-{rt}", rt, handler, files), bare, " ".join(bare), target))
        if a.provided:
            with open(a.provided, "rb") as f:
                binary = f.read()
            d = write_fn(work, "cold-provided", "provided", "hello", {"bootstrap": binary})
            subjects.append(("provided (Rust binary)", d, [a.provided, "--bare"], "the same binary, exiting at once", 5.0))
        if a.wasm:
            d = os.path.join(work, "cold-wasm")
            shutil.copytree(a.wasm, d, ignore=shutil.ignore_patterns("target", "src", "*.lock", "Cargo.toml"))
            subjects.append(("wasm", d, None, "", 1.0))
        if a.java:
            d = os.path.join(work, "cold-java")
            shutil.copytree(a.java, d, ignore=shutil.ignore_patterns("target"))
            # The JVM's own start with the same collector and compiler settings Petrel uses.
            bare = ["java", "-Xshare:auto", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData", "-version"]
            subjects.append(("java", d, bare, "java -version", 150.0))

        print("| runtime | median | p90 | min | max | bare start, median | ratio | target | met |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for rt, d, bare, label, target in subjects:
            if a.only and rt.split()[0] not in a.only.split(","):
                continue
            name = os.path.basename(d)
            xs = []
            # A standby JVM loads the runtime client's classes before it is ready (~0.5 s).
            gap = max(a.gap, 1.0) if rt == "java" else a.gap
            for i in range(a.n):
                time.sleep(gap)
                subprocess.run([a.petrel, "deploy", d, "--name", name, "--env", f"RUN={i}"], env=env,
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                t0 = time.perf_counter()
                conn.request("POST", f"/v1/functions/{name}/invoke", body=b"{}",
                             headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
                r = conn.getresponse()
                data = r.read()
                xs.append(time.perf_counter() - t0)
                if r.status != 200:
                    sys.exit(f"{rt}: {r.status} {data[:300]!r}")
            med = statistics.median(xs)
            if bare:
                b = statistics.median(bare_start(bare, a.n))
                base, ratio = f"{ms(b)} ({label})", f"{med / b:.2f}x"
            else:
                base, ratio = "none (no process)", "-"
            tgt = f"< {target:g} ms" if target else "-"
            met = "-" if not target else ("yes" if med * 1000 < target else f"no, {med * 1000 / target:.1f}x over")
            print(f"| {rt} | {ms(med)} | {ms(pct(xs, 90))} | {ms(min(xs))} | {ms(max(xs))} | {base} | {ratio} | {tgt} | {met} |")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
