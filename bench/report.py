#!/usr/bin/env python3
"""Renders the load-generator scenarios of bench/run.sh from its raw samples, with the median,
min and max over repetitions, the ratios to each baseline, and the targets of issue #19 checked.

    bench/report.py RAW.tsv

RAW.tsv lines: scenario, target, connections, repetition, requests/s, p50, p99 (latencies as wrk
prints them: 24.00us, 1.15ms, 2.00s), and errors (non-2xx answers plus socket errors).
"""
import statistics
import sys
from collections import defaultdict

HYPER = "hyper (bare, the limit)"
PETREL_WASM = "Petrel wasm (fresh instance per request)"
PETREL_REUSE = "Petrel wasm (instance_reuse = 1000000)"
WT_FRESH = "wasmtime serve (fresh instance, default)"
WT_REUSE = "wasmtime serve (instances reused)"
WORKERD = "workerd (JS hello worker)"
RIE_PAIRS = (("python3", "Petrel python3 handler", "aws-lambda-rie, python3 (awslambdaric)"),
             ("nodejs", "Petrel nodejs handler", "aws-lambda-rie, nodejs (aws-lambda-ric)"))


def us(s):
    for unit, f in (("us", 1.0), ("ms", 1e3), ("s", 1e6)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * f
    raise ValueError(s)


def fmt_us(x):
    return f"{x:.0f} µs" if x < 1000 else f"{x / 1000:.2f} ms"


def load(path):
    data = defaultdict(list)  # (scenario, target, c) -> [(rps, p50, p99)]
    errors = defaultdict(int)  # (scenario, target, c) -> errors over repetitions
    order = []
    with open(path) as f:
        for line in f:
            sc, tgt, c, _rep, rps, p50, p99, *rest = line.rstrip("\n").split("\t")
            key = (sc, tgt, int(c))
            if key not in data:
                order.append(key)
            errors[key] += int(rest[0]) if rest and rest[0] else 0
            try:
                data[key].append((float(rps), us(p50), us(p99)))
            except ValueError:
                pass  # wrk printed nothing: the target did not answer
    return data, errors, order


def med(xs):
    return statistics.median(xs) if xs else None


def load_cells(xs):
    """Requests/s median [min–max], p50 and p99 of a row's repetitions, as table cells."""
    r = [x[0] for x in xs]
    return (f"{med(r):,.0f} [{min(r):,.0f}–{max(r):,.0f}] | "
            f"{fmt_us(med([x[1] for x in xs]))} | {fmt_us(med([x[2] for x in xs]))}")


def main():
    data, errors, order = load(sys.argv[1])
    reps = max((len(v) for v in data.values()), default=0)

    def rps(tgt, c, sc="warm-http"):
        return med([s[0] for s in data.get((sc, tgt, c), [])])

    warm = [k for k in order if k[0] == "warm-http"]
    if warm:
        print(f"## warm-http: the same hello answer, one wrk thread, {reps} repetitions\n")
        print("Requests/s is the median over repetitions with [min–max]; p50 and p99 are medians.\n")
        print("| target | connections | requests/s [min–max] | p50 | p99 | ÷ bare hyper |")
        print("| --- | --- | --- | --- | --- | --- |")
        for sc, tgt, c in warm:
            xs = data[(sc, tgt, c)]
            if not xs:
                print(f"| {tgt} | {c} | no answer | | | |")
                continue
            base = rps(HYPER, c)
            ratio = f"{rps(tgt, c) / base:.3f}" if base else "-"
            print(f"| {tgt} | {c} | {load_cells(xs)} | {ratio} |")
        print()

    gw = {k: v for k, v in data.items() if k[0] == "gateway-overhead"}
    if gw:
        print(f"## gateway-overhead: the Node http servers called directly and through Petrel, {reps} repetitions, interleaved\n")
        print("The hello answer with a content-length, and the same answer chunked (no content-length).\n")
        print("| answer | connections | direct p50 | through Petrel p50 | added p50 [min–max] | direct p99 | through Petrel p99 | added p99 [min–max] | direct req/s | through Petrel req/s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for kind, direct, petrel in (("content-length", "direct", "petrel"), ("chunked", "direct, chunked", "petrel, chunked")):
            for c in sorted({k[2] for k in gw}):
                d, p = gw.get(("gateway-overhead", direct, c), []), gw.get(("gateway-overhead", petrel, c), [])
                n = min(len(d), len(p))
                if not n:
                    continue
                a50 = [p[i][1] - d[i][1] for i in range(n)]
                a99 = [p[i][2] - d[i][2] for i in range(n)]
                print(f"| {kind} | {c} | {fmt_us(med([x[1] for x in d]))} | {fmt_us(med([x[1] for x in p]))} | "
                      f"{fmt_us(med(a50))} [{fmt_us(min(a50))}–{fmt_us(max(a50))}] | {fmt_us(med([x[2] for x in d]))} | "
                      f"{fmt_us(med([x[2] for x in p]))} | {fmt_us(med(a99))} [{fmt_us(min(a99))}–{fmt_us(max(a99))}] | "
                      f"{med([x[0] for x in d]):,.0f} | {med([x[0] for x in p]):,.0f} |")
        print()

    rie = [k for k in order if k[0] == "lambda-rie"]
    if rie:
        print(f"## lambda-rie: the hello handlers warm, a JSON event POSTed, {reps} repetitions\n")
        print("Petrel's `/v1/functions/NAME/invoke` against the AWS Lambda Runtime Interface Emulator's")
        print("`/2015-03-31/functions/function/invocations`, each running the same handler file (the emulator")
        print("under the official runtime client). The emulator crashes on concurrent invocations, so it has")
        print("no 64-connection row.")
        print("Errors are non-2xx answers and socket errors over all repetitions.\n")
        print("| target | connections | requests/s [min–max] | p50 | p99 | errors |")
        print("| --- | --- | --- | --- | --- | --- |")
        for key in rie:
            xs = data[key]
            if not xs:
                print(f"| {key[1]} | {key[2]} | no answer | | | {errors[key]} |")
                continue
            print(f"| {key[1]} | {key[2]} | {load_cells(xs)} | {errors[key]:,} |")
        print()

    # Targets of issue #19, each from the same run.
    rows = []

    def ratio_row(what, num, den, want):
        if num is None or den is None:
            rows.append((what, "-", f"≥ {want}×", "not measured"))
            return
        r = num / den
        rows.append((what, f"{r:.2f}×", f"≥ {want}×", "met" if r >= want else f"missed: {r / want:.0%} of the target"))

    if warm:
        ratio_row("wasm fresh c=1 ÷ wasmtime serve (fresh)", rps(PETREL_WASM, 1), rps(WT_FRESH, 1), 2.5)
        ratio_row("wasm reused c=1 ÷ wasmtime serve (reused)", rps(PETREL_REUSE, 1), rps(WT_REUSE, 1), 1.2)
        ratio_row("wasm reused c=1 ÷ workerd", rps(PETREL_REUSE, 1), rps(WORKERD, 1), 1.5)
        ratio_row("wasm fresh c=64 ÷ wasmtime serve (reused)", rps(PETREL_WASM, 64), rps(WT_REUSE, 64), 1)
        ratio_row("wasm reused c=64 ÷ wasmtime serve (reused)", rps(PETREL_REUSE, 64), rps(WT_REUSE, 64), 1.5)
    if rie:
        for lang, petrel, peer in RIE_PAIRS:
            # A run that answered with errors does not count as requests served.
            num = rps(petrel, 1, "lambda-rie") if not errors[("lambda-rie", petrel, 1)] else None
            ratio_row(f"{lang} handler c=1 ÷ aws-lambda-rie", num, rps(peer, 1, "lambda-rie"), 2)
    if gw:
        for c, pct_i, limit in ((1, 1, 50), (1, 2, 500)):
            d, p = gw.get(("gateway-overhead", "direct", c), []), gw.get(("gateway-overhead", "petrel", c), [])
            n = min(len(d), len(p))
            if n:
                added = med([p[i][pct_i] - d[i][pct_i] for i in range(n)])
                name = "p50" if pct_i == 1 else "p99"
                rows.append((f"gateway added {name}, c=1", fmt_us(added), f"≤ {fmt_us(limit)}",
                             "met" if added <= limit else f"missed by {fmt_us(added - limit)}"))
    if rows:
        print("## Targets (issue #19)\n")
        print("| target | measured | wanted | verdict |")
        print("| --- | --- | --- | --- |")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        print()


if __name__ == "__main__":
    main()
