"""What every benchmark uses: running a command measured (time, peak RSS),
series of runs, and kiln invocations."""

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Measured:
    """Time (s), stdout and peak RSS (KiB) of one command."""

    def __init__(self, seconds, stdout, rss_kib):
        self.seconds = seconds
        self.stdout = stdout
        self.rss_kib = rss_kib


def run_measured(cmd, env=None, stdin=None, cwd=None):
    """Runs cmd; fails the benchmark if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        p = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out, stderr=err,
        )
        if stdin is not None:
            p.stdin.write(stdin.encode())
            p.stdin.close()
        _, status, usage = os.wait4(p.pid, 0)
        elapsed = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if p.returncode != 0:
        sys.exit(
            f"benchmark command failed ({p.returncode}): {' '.join(cmd)}\n{stdout[-3000:]}\n{stderr[-3000:]}"
        )
    return Measured(elapsed, stdout, usage.ru_maxrss)


class Series:
    """Several runs of one measurement."""

    def __init__(self):
        self.runs = []

    def add(self, m):
        self.runs.append(m)
        return m

    def ms(self):
        return statistics.median(r.seconds for r in self.runs) * 1000

    def rss(self):
        return max(r.rss_kib for r in self.runs)


def repeat(fn, runs, before=None):
    s = Series()
    for _ in range(runs):
        if before:
            before()
        s.add(fn())
    return s


def kiln_cmd(kiln, *args):
    return [kiln, "--progress", "quiet", *args]


def kiln_query(kiln, env, query):
    return run_measured(kiln_cmd(kiln, "query"), env=env, stdin=query)


def kiln_query_file(kiln, env, path):
    return run_measured(kiln_cmd(kiln, "query", path), env=env)


def with_state(env, state):
    e = dict(env)
    e["KILN_STATE_DIR"] = state
    return e


def cache_dir():
    return os.environ.get("KILN_CACHE_DIR") or os.path.join(REPO, ".cache")


def busybox_rootfs_blob(env):
    layout = os.path.join(env["KILN_FIXTURES"], "busybox")
    index = json.load(open(os.path.join(layout, "index.json")))
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.load(open(os.path.join(layout, "blobs/sha256", manifest_digest)))
    (layer,) = manifest["layers"]
    return os.path.join(layout, "blobs/sha256", layer["digest"].split(":")[1])


def engine_hwm_kib(env):
    """Peak RSS of the engine serving the state dir (its pid is in engine.lock)."""
    try:
        pid = open(os.path.join(env["KILN_STATE_DIR"], "engine.lock")).read().strip()
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, KeyError, ValueError):
        pass
    return None


def build_context(work, dockerfile):
    """A build context under `work`: `dockerfile` and src/ with 200 small
    files (the same bytes every time); its dir and the file benchmarks
    change (src/m100.txt)."""
    ctx = os.path.join(work, "context")
    src = os.path.join(ctx, "src")
    os.makedirs(src)
    rng = random.Random(200)
    for i in range(200):
        with open(os.path.join(src, f"m{i:03d}.txt"), "w") as f:
            f.write("".join(rng.choice("abcdefghij \n") for _ in range(rng.randint(200, 2000))))
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(dockerfile)
    return ctx, os.path.join(src, "m100.txt")
