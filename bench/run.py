#!/usr/bin/env python3
"""kiln benchmarks, side by side with their floor.

Run through bench/run.sh (which builds kiln in release mode, starts a
loopback registry with the fixture images and writes a kiln config). Prints
a table and, with --record, appends it to docs/benchmarks.md with the date
and the machine. Every figure is the median of several runs; peak RSS is the
largest resident set of the measured process tree.

Benchmarks:
  exec-overhead   N sequential `true` execs through kiln (one GraphQL query,
                  cold: a fresh nonce makes every exec miss the cache) vs the
                  same N through raw `crun run` on an unpacked busybox rootfs.
  cached-ops      a fully cached 50-step pipeline: engine ms per cached op.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(cmd, env=None, stdin=None, cwd=None):
    """Runs cmd, returns (seconds, stdout)."""
    start = time.perf_counter()
    p = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = p.communicate(stdin.encode() if stdin else None)
    elapsed = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(
            f"benchmark command failed ({p.returncode}): {' '.join(cmd)}\n"
            f"{out.decode()[-3000:]}\n{err.decode()[-3000:]}"
        )
    return elapsed, out.decode()


def peak_rss_kib(cmd, env=None, stdin=None):
    """Peak RSS (KiB) of cmd and the descendants it waited for."""
    code = (
        "import resource,subprocess,sys,json;"
        "p=subprocess.run(json.loads(sys.argv[1]),input=sys.stdin.buffer.read(),capture_output=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cmd)], env=env, input=(stdin or "").encode(),
        capture_output=True, check=True,
    )
    return int(out.stdout.decode().strip())


def chain_query(image, steps, nonce, kind="exec"):
    q = f'container {{ from(address: "{image}") {{ withEnvVariable(name: "NONCE", value: "{nonce}") {{ '
    close = "} } }"
    for i in range(steps):
        if kind == "exec":
            q += f'withExec(args: ["true", "{i}"]) {{ '
        close += " }"
    return "{ " + q + "sync " + close + " }"


def kiln_query(kiln, env, query):
    return run_measured([kiln, "--progress", "quiet", "query"], env=env, stdin=query)


def median_time(fn, runs):
    times = [fn() for _ in range(runs)]
    return statistics.median(times)


def bench_exec_overhead(kiln, env, n, runs):
    image = "busybox"
    # Warm: pull the image once.
    kiln_query(kiln, env, chain_query(image, 0, "warm"))

    def cold():
        q = chain_query(image, n, uuid.uuid4().hex)
        t, _ = kiln_query(kiln, env, q)
        return t

    def base():
        q = chain_query(image, 0, uuid.uuid4().hex)
        t, _ = kiln_query(kiln, env, q)
        return t

    kiln_total = median_time(cold, runs)
    kiln_base = median_time(base, runs)
    kiln_per_exec = (kiln_total - kiln_base) / n
    kiln_rss = peak_rss_kib([kiln, "--progress", "quiet", "query"], env=env, stdin=chain_query(image, n, uuid.uuid4().hex))

    # Raw crun on the same busybox rootfs, in a private mount namespace with
    # the cgroup v2 mount hidden (as kiln does on hybrid hosts).
    bundle = tempfile.mkdtemp(prefix="kiln-bench-crun-")
    rootfs = os.path.join(bundle, "rootfs")
    layout = os.path.join(env["KILN_FIXTURES"], "busybox")
    index = json.load(open(os.path.join(layout, "index.json")))
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.load(open(os.path.join(layout, "blobs/sha256", manifest_digest)))
    os.makedirs(rootfs)
    for layer in manifest["layers"]:
        blob = os.path.join(layout, "blobs/sha256", layer["digest"].split(":")[1])
        subprocess.run(["tar", "-xzf", blob, "-C", rootfs], check=True)
    subprocess.run(["crun", "spec"], cwd=bundle, check=True)
    spec = json.load(open(os.path.join(bundle, "config.json")))
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["true"]
    json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
    state = os.path.join(bundle, "state")
    script = (
        "umount /sys/fs/cgroup/unified 2>/dev/null; "
        f"for i in $(seq {n}); do crun --root {state} run --bundle {bundle} bench-$$-$i || exit 1; done"
    )
    cmd = ["unshare", "-m", "sh", "-c", script]

    def crun_run():
        t, _ = run_measured(cmd)
        return t

    crun_per_exec = median_time(crun_run, runs) / n
    crun_rss = peak_rss_kib(cmd)
    shutil.rmtree(bundle, ignore_errors=True)
    return [
        (f"{n} sequential `true` execs: kiln (per exec)", kiln_per_exec * 1000, kiln_rss),
        (f"{n} sequential `true` execs: raw crun run (per exec)", crun_per_exec * 1000, crun_rss),
        ("exec overhead ratio kiln / crun", kiln_per_exec / crun_per_exec, None),
    ]


def bench_cached_ops(kiln, env, steps, runs):
    nonce = "cached-" + uuid.uuid4().hex
    q = chain_query("busybox", steps, nonce)
    kiln_query(kiln, env, q)  # fill the cache
    full = median_time(lambda: kiln_query(kiln, env, q)[0], runs)
    base_q = chain_query("busybox", 0, nonce)
    base = median_time(lambda: kiln_query(kiln, env, base_q)[0], runs)
    version = median_time(lambda: kiln_query(kiln, env, "{ version }")[0], runs)
    rss = peak_rss_kib([kiln, "--progress", "quiet", "query"], env=env, stdin=q)
    return [
        (f"fully cached {steps}-step pipeline (whole `kiln query`)", full * 1000, rss),
        ("engine time per cached op", (full - base) / steps * 1000, None),
        ("`kiln query '{ version }'` (process start, schema)", version * 1000, None),
    ]


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def table(rows):
    lines = ["| benchmark | value | peak RSS |", "|---|---|---|"]
    for name, value, rss in rows:
        unit = "x" if "ratio" in name else "ms"
        v = f"{value:.2f} x" if unit == "x" else (f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms")
        r = f"{rss / 1024:.1f} MiB" if rss else ""
        lines.append(f"| {name} | {v} | {r} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--execs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--record", action="store_true", help="append the results to docs/benchmarks.md")
    args = ap.parse_args()
    kiln = os.environ["KILN_BIN"]
    env = dict(os.environ)
    rows = bench_exec_overhead(kiln, env, args.execs, args.runs)
    rows += bench_cached_ops(kiln, env, args.steps, args.runs)
    out = table(rows)
    print(out)
    if args.record:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        version = subprocess.run([kiln, "version"], capture_output=True, text=True).stdout.strip()
        with open(os.path.join(REPO, "docs/benchmarks.md"), "a") as f:
            f.write(f"\n## {stamp}\n\n{version}, release build; {machine()}; median of {args.runs} runs.\n\n{out}\n")


if __name__ == "__main__":
    main()
