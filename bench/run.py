#!/usr/bin/env python3
"""kiln benchmarks, side by side with their floor.

Run through bench/run.sh (which builds kiln in release mode, starts a
loopback registry with the fixture images and writes a kiln config). Prints
one table and, with --record, appends it to docs/benchmarks.md with the date
and the machine. Every time is the median of --runs runs; peak RSS is the
largest resident set of the measured process tree over those runs.

Benchmarks (--only NAME[,NAME] to run some):
  exec-overhead  N sequential `true` execs through kiln (one GraphQL query,
                 cold: a fresh nonce makes every exec miss the cache), with
                 and without container networking, vs the same N through raw
                 `crun run` on an unpacked busybox rootfs, without a network
                 and joining a namespace with a veth pair.
  cached-ops     a fully cached 100-step pipeline (two chains of 50 execs: kiln's
                 GraphQL parser takes 64 levels of nesting): engine ms per op.
  pipeline       a Dockerfile-equivalent pipeline (FROM busybox; RUN; COPY a
                 200-file source dir; three RUNs), cold, warm and after a
                 one-file source change: kiln through `kiln query`, the same
                 through the Python SDK (`kiln run -- python3`), and
                 `docker build` (BuildKit) from Debian's docker.io, whose
                 dockerd the script starts (own data root and socket,
                 --iptables=false --bridge=none) and stops by PID.
  clients        many clients on one engine: `kiln run true` against a warm
                 engine (the cost of a client), and a fully cached 5-step
                 pipeline run by one client vs by 20 clients at once (total
                 time), and the floor: 20 kiln processes that only start
                 and exit, at once; the engine's peak RSS beside.
  remote-upload  the same host tree uploaded to an engine listening on
                 loopback TLS (`kiln engine --listen`, the client with
                 KILN_HOST): first upload (fresh engine, empty client stat
                 cache) and unchanged re-upload, vs `tar -cf - | cat`.
  service        time for a service to become reachable: an exec bound to a
                 busybox httpd service (started, health-checked on its port,
                 stopped) minus the same exec unbound, vs raw `crun run -d`
                 of the same httpd on the host's network polled until its
                 port answers, then killed (the floor without networking).
  dockerfile     a two-stage Dockerfile (early ARG, COPY of a 200-file source
                 dir, three RUNs, COPY --from into the final stage) built by
                 kiln's dockerBuild (`kiln query`) and by `docker build`
                 (BuildKit): cold, warm, after a one-file source change and
                 after changing the early ARG (a build arg).
  publish        an image with a 100 MB layer (random bytes) published to a
                 new repository of the loopback registry by kiln (first, when
                 its layers are compressed, then with the layers made), vs
                 `skopeo copy` of kiln's OCI archive of the same image.
  git            a generated repository (2000 files, 20 commits) served by
                 `git daemon`: kiln's git(url).head.tree cold and warm, vs
                 `git clone --depth=1` and `git ls-remote`.
  host-tree      a host tree of 100k files / 1 GB (generated once, the same
                 bytes every time, under the cache dir): first upload vs
                 `tar -cf - | cat >/dev/null`, unchanged re-upload vs
                 `git status` on the same tree (all committed), and a re-upload
                 after one file changed. kiln is driven by `kiln query`.
"""
import argparse
import datetime
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import dockerd as dockerd_lib  # noqa: E402
import gitsrc  # noqa: E402
import images  # noqa: E402
from measure import (  # noqa: E402
    Measured,
    Series,
    build_context,
    busybox_rootfs_blob,
    cache_dir,
    engine_hwm_kib,
    kiln_cmd,
    kiln_query,
    kiln_query_file,
    repeat,
    run_measured,
    with_state,
)

BENCHMARKS = [
    "exec-overhead", "cached-ops", "clients", "service", "pipeline", "dockerfile", "publish", "git", "host-tree",
    "remote-upload",
]


# --- 1. exec overhead ---------------------------------------------------------

CHAIN = 50  # kiln's GraphQL parser takes 64 levels of nesting: longer pipelines run as several chains


def chain_query(image, steps, nonce, chains=1):
    """`steps` `true` execs on `image`, in `chains` aliased chains of equal length."""
    parts = []
    for c in range(chains):
        n = steps // chains + (1 if c < steps % chains else 0)
        q = f'c{c}: container {{ from(address: "{image}") {{ withEnvVariable(name: "NONCE", value: "{nonce}-{c}") {{ '
        q += "".join(f'withExec(args: ["true", "{i}"]) {{ ' for i in range(n))
        parts.append(q + "sync" + " }" * (n + 3))
    return "{ " + " ".join(parts) + " }"


def chains_for(steps):
    return max(1, -(-steps // CHAIN))


def without_network(env):
    """The same settings with container networking off: a config and a state
    dir of their own (so another engine serves them)."""
    work = tempfile.mkdtemp(prefix="kiln-bench-nonet-")
    config = os.path.join(work, "kiln.toml")
    shutil.copy(env["KILN_CONFIG"], config)
    with open(config, "a") as f:
        f.write("\n[network]\nenabled = false\n")
    return dict(env, KILN_CONFIG=config, KILN_STATE_DIR=os.path.join(work, "state")), work


def kiln_exec_costs(kiln, envs, n, runs, image="busybox"):
    """kiln's time per exec of a chain of `n` (the chain minus an empty one)
    for each of `envs`, and the measured chains. The envs take turns, run
    after run, so that the machine's drift weighs on all alike."""
    for env in envs:
        kiln_query(kiln, env, chain_query(image, 0, "warm"))  # pull the image once
    execs, bases = [Series() for _ in envs], [Series() for _ in envs]
    for _ in range(runs):
        for env, chains, base in zip(envs, execs, bases):
            chains.add(kiln_query(kiln, env, chain_query(image, n, uuid.uuid4().hex)))
            base.add(kiln_query(kiln, env, chain_query(image, 0, uuid.uuid4().hex)))
    return [((chains.ms() - base.ms()) / n, chains) for chains, base in zip(execs, bases)]


def busybox_bundle(env, args):
    """A crun bundle of the busybox fixture running `args`: (bundle, spec)."""
    bundle = tempfile.mkdtemp(prefix="kiln-bench-crun-")
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(rootfs)
    subprocess.run(["tar", "-xzf", busybox_rootfs_blob(env), "-C", rootfs], check=True)
    subprocess.run(["crun", "spec"], cwd=bundle, check=True)
    spec = json.load(open(os.path.join(bundle, "config.json")))
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    return bundle, spec


def bench_exec_overhead(kiln, env, n, runs):
    offline_env, offline_dir = without_network(env)
    (kiln_per_exec, execs), (offline_per_exec, offline) = kiln_exec_costs(kiln, [env, offline_env], n, runs)
    subprocess.run(kiln_cmd(kiln, "engine", "stop"), env=offline_env, check=False, stdout=subprocess.DEVNULL)
    shutil.rmtree(offline_dir, ignore_errors=True)

    # Raw crun on the same busybox rootfs, in a private mount namespace with
    # the cgroup v2 mount hidden (as kiln does on hybrid hosts).
    bundle, spec = busybox_bundle(env, ["true"])
    json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
    state = os.path.join(bundle, "state")
    script = (
        "umount /sys/fs/cgroup/unified 2>/dev/null; "
        f"for i in $(seq {n}); do crun --root {state} run --bundle {bundle} bench-$$-$i || exit 1; done"
    )
    crun = repeat(lambda: run_measured(["unshare", "-m", "sh", "-c", script]), runs)
    crun_per_exec = crun.ms() / n

    # The same, each container joining a network namespace with a veth
    # pair (made once, as kiln's kept namespaces are): the runtime's floor
    # with the same network setup.
    ns = f"kiln-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", f"kb{os.getpid() % 100000}", "type", "veth", "peer", "name", "eth0", "netns", ns],
            check=True,
        )
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        for namespace in spec["linux"]["namespaces"]:
            if namespace["type"] == "network":
                namespace["path"] = f"/run/netns/{ns}"
        json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
        crun_net = repeat(lambda: run_measured(["unshare", "-m", "sh", "-c", script]), runs)
    finally:
        subprocess.run(["ip", "link", "del", f"kb{os.getpid() % 100000}"], check=False, stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(bundle, ignore_errors=True)
    crun_net_per_exec = crun_net.ms() / n
    return [
        (f"{n} sequential `true` execs: kiln (per exec)", kiln_per_exec, execs.rss()),
        (f"{n} sequential `true` execs: kiln without networking (per exec)", offline_per_exec, offline.rss()),
        ("networking's cost per exec (target < 3 ms)", kiln_per_exec - offline_per_exec, None),
        (f"{n} sequential `true` execs: raw crun run (per exec)", crun_per_exec, crun.rss()),
        (f"{n} sequential `true` execs: raw crun run in a namespace with a veth (per exec)", crun_net_per_exec,
         crun_net.rss()),
        ("ratio: exec overhead kiln / crun (target <= 1.3)", kiln_per_exec / crun_per_exec, None),
        ("ratio: exec overhead kiln / crun, both with a network", kiln_per_exec / crun_net_per_exec, None),
        ("ratio: exec overhead kiln without networking / crun", offline_per_exec / crun_per_exec, None),
    ]


# --- service: time to reachable -------------------------------------------------

def wait_for_port(port, deadline_s=30):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.001)
    sys.exit(f"nothing answered on 127.0.0.1:{port}")


def bench_service(kiln, env, runs, port=18099):
    made = kiln_query(
        kiln,
        env,
        '{ container { from(address: "busybox") { withExposedPort(port: %d) { '
        'asService(args: ["httpd", "-f", "-p", "%d"]) { id } } } } }' % (port, port),
    )
    service = json.loads(made.stdout)["data"]["container"]["from"]["withExposedPort"]["asService"]["id"]

    def client(bound):
        step = 'withExec(args: ["true"]) { exitCode }'
        if bound:
            step = f'withServiceBinding(alias: "web", service: "{service}") {{ {step} }}'
        nonce = uuid.uuid4().hex
        return f'{{ container {{ from(address: "busybox") {{ withEnvVariable(name: "N", value: "{nonce}") {{ {step} }} }} }} }}'

    kiln_query(kiln, env, client(True))  # warm: the image, the engine
    bound = repeat(lambda: kiln_query(kiln, env, client(True)), runs)
    unbound = repeat(lambda: kiln_query(kiln, env, client(False)), runs)

    # The floor: the same httpd through raw crun on the host's network.
    bundle, spec = busybox_bundle(env, ["httpd", "-f", "-p", str(port)])
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
    state = os.path.join(bundle, "state")

    def crun(*args):
        # In a private mount namespace with the cgroup v2 mount hidden (as
        # kiln does on hybrid hosts).
        script = "umount /sys/fs/cgroup/unified 2>/dev/null; exec crun --root \"$0\" \"$@\""
        subprocess.run(["unshare", "-m", "sh", "-c", script, state, *args], check=True, stdout=subprocess.DEVNULL)

    def crun_service():
        name = f"bench-svc-{uuid.uuid4().hex[:8]}"
        start = time.perf_counter()
        crun("run", "--detach", "--bundle", bundle, name)
        wait_for_port(port)
        crun("delete", "--force", name)
        return Measured(time.perf_counter() - start, "", 0)

    raw = repeat(crun_service, runs)
    shutil.rmtree(bundle, ignore_errors=True)
    kiln_ms = bound.ms() - unbound.ms()
    return [
        ("an exec bound to a service: kiln (total)", bound.ms(), bound.rss()),
        ("the same exec unbound: kiln (total)", unbound.ms(), unbound.rss()),
        ("a service's start, health check and stop: kiln", kiln_ms, None),
        ("httpd through raw crun on the host network, until its port answers, then deleted", raw.ms(), None),
        ("ratio: service start to reachable, kiln / raw crun", kiln_ms / raw.ms(), None),
    ]


# --- 2. cached ops ------------------------------------------------------------

def bench_cached_ops(kiln, env, steps, runs):
    nonce = "cached-" + uuid.uuid4().hex
    chains = chains_for(steps)
    q = chain_query("busybox", steps, nonce, chains)
    kiln_query(kiln, env, q)  # fill the cache
    full = repeat(lambda: kiln_query(kiln, env, q), runs)
    base = repeat(lambda: kiln_query(kiln, env, chain_query("busybox", 0, nonce, chains)), runs)
    version = repeat(lambda: kiln_query(kiln, env, "{ version }"), runs)
    per_op = (full.ms() - base.ms()) / steps
    return [
        (f"fully cached {steps}-step pipeline ({chains} chains; whole `kiln query`)", full.ms(), full.rss()),
        ("engine time per cached op (target <= 1 ms)", per_op, None),
        ("`kiln query '{ version }'` (process start, schema)", version.ms(), version.rss()),
    ]


# --- 3. clients ---------------------------------------------------------------

def run_concurrently(cmds, env):
    """Starts every command at once; the time until the last one ended."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"benchmark command failed ({p.returncode}): {' '.join(p.args)}\n{err.decode()[-3000:]}")
    return Measured(time.perf_counter() - start, "", 0)


def bench_clients(kiln, env, runs, clients=20, steps=5):
    nonce = "clients-" + uuid.uuid4().hex
    q = chain_query("busybox", steps, nonce)
    kiln_query(kiln, env, q)  # starts the engine, fills the cache
    one_true = repeat(lambda: run_measured(kiln_cmd(kiln, "run", "true"), env=env), runs)
    path = os.path.join(tempfile.mkdtemp(prefix="kiln-bench-clients-"), "pipeline.graphql")
    with open(path, "w") as f:
        f.write(q)
    one = repeat(lambda: kiln_query_file(kiln, env, path), runs)
    many = repeat(lambda: run_concurrently([kiln_cmd(kiln, "query", path)] * clients, env), runs)
    # The floor on this machine: the same number of kiln processes that
    # start and exit at once without doing anything.
    starts = repeat(lambda: run_concurrently([[kiln, "--version"]] * clients, env), runs)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    return [
        ("`kiln run true` on a warm engine (target < 20 ms)", one_true.ms(), one_true.rss()),
        (f"cached {steps}-step pipeline, 1 client (`kiln query`)", one.ms(), one.rss()),
        (f"cached {steps}-step pipeline, {clients} clients at once (all done)", many.ms(), engine_hwm_kib(env)),
        (f"ratio: {clients} clients / 1 client (target < 3)", many.ms() / one.ms(), None),
        (f"floor: {clients} `kiln --version` at once (process start-up)", starts.ms(), None),
        ("ratio: floor / 1 client", starts.ms() / one.ms(), None),
    ]


# --- 4. host tree -------------------------------------------------------------

def ensure_host_tree(files, total_bytes):
    """A deterministic tree of `files` files, about `total_bytes` in all,
    committed to a git repository kept beside it; built once."""
    base = os.path.join(cache_dir(), "bench")
    tree = os.path.join(base, f"host-tree-{files}")
    git_dir = tree + ".git"
    stamp = tree + ".stamp"
    want = f"{files} {total_bytes} v1"
    if os.path.exists(stamp) and open(stamp).read() == want:
        return tree, git_dir
    print(f"[bench] generating {tree} ({files} files, {total_bytes >> 20} MiB) and its git repository", file=sys.stderr)
    shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(git_dir, ignore_errors=True)
    rng = random.Random(20261124)
    mean = total_bytes // files
    for i in range(files):
        d = os.path.join(tree, f"d{i // 1000:03d}", f"s{(i // 100) % 10}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i % 100:02d}.bin"), "wb") as f:
            f.write(rng.randbytes(rng.randint(mean // 2, mean * 3 // 2)))
    git = git_env(tree, git_dir)
    subprocess.run(["git", "init", "-q"], env=git, check=True)
    subprocess.run(["git", "add", "-A"], env=git, check=True)
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "tree"],
        env=git, check=True,
    )
    open(stamp, "w").write(want)
    return tree, git_dir


def git_env(tree, git_dir):
    e = dict(os.environ)
    e["GIT_DIR"] = git_dir
    e["GIT_WORK_TREE"] = tree
    return e


def bench_host_tree(kiln, env, runs, files, total_bytes):
    tree, git_dir = ensure_host_tree(files, total_bytes)
    work = tempfile.mkdtemp(prefix="kiln-bench-host-")
    state = os.path.join(work, "state")
    kenv = with_state(env, state)
    query = os.path.join(work, "upload.graphql")
    with open(query, "w") as f:
        f.write('{ host { directory(path: "%s") { sync } } }\n' % tree)
    tar = repeat(lambda: run_measured(["sh", "-c", f"tar -cf - -C {tree} . | cat >/dev/null"]), runs)
    first = repeat(lambda: kiln_query_file(kiln, kenv, query), runs,
                   before=lambda: shutil.rmtree(state, ignore_errors=True))
    git = repeat(lambda: run_measured(["git", "status", "--porcelain"], env=git_env(tree, git_dir)), runs)
    if git.runs[-1].stdout.strip():
        sys.exit(f"the benchmark tree {tree} is not clean:\n{git.runs[-1].stdout[:2000]}")
    unchanged = repeat(lambda: kiln_query_file(kiln, kenv, query), runs)

    victim = os.path.join(tree, "d050", "s5", "f50.bin")
    original = open(victim, "rb").read()
    counter = [0]

    def change():
        counter[0] += 1
        with open(victim, "wb") as f:
            f.write(original[:-8] + counter[0].to_bytes(8, "little"))

    try:
        changed = repeat(lambda: kiln_query_file(kiln, kenv, query), runs, before=change)
    finally:
        with open(victim, "wb") as f:
            f.write(original)
    shutil.rmtree(work, ignore_errors=True)
    mib = total_bytes >> 20
    label = f"{files // 1000}k files / {mib} MiB"
    return [
        (f"host tree {label}: `tar -cf - | cat >/dev/null`", tar.ms(), tar.rss()),
        (f"host tree {label}: kiln first upload", first.ms(), first.rss()),
        ("ratio: first upload kiln / tar", first.ms() / tar.ms(), None),
        (f"host tree {label}: `git status` (all committed)", git.ms(), git.rss()),
        (f"host tree {label}: kiln unchanged re-upload", unchanged.ms(), unchanged.rss()),
        ("ratio: unchanged re-upload kiln / git status (target <= 2)", unchanged.ms() / git.ms(), None),
        (f"host tree {label}: kiln re-upload, one file changed", changed.ms(), changed.rss()),
    ]


def start_remote_engine(kiln, env, state):
    """`kiln engine --listen` on loopback: its process and the client's env."""
    p = subprocess.Popen(kiln_cmd(kiln, "engine", "--listen", "tcp://127.0.0.1:0"),
                         env=with_state(env, state), stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    words = line.replace(";", " ").replace(")", " ").split()
    addr = next(w for w in words if w.startswith("tcp://"))
    fingerprint = next(w for w in words if w.startswith("sha256:"))
    client = dict(env, KILN_HOST=addr, KILN_TLS_FINGERPRINT=fingerprint,
                  KILN_TOKEN_FILE=os.path.join(state, "tls", "token"))
    return p, client


def bench_remote_upload(kiln, env, runs, files, total_bytes):
    tree, _ = ensure_host_tree(files, total_bytes)
    work = tempfile.mkdtemp(prefix="kiln-bench-remote-")
    query = os.path.join(work, "upload.graphql")
    with open(query, "w") as f:
        f.write('{ host { directory(path: "%s") { sync } } }\n' % tree)
    tar = repeat(lambda: run_measured(["sh", "-c", f"tar -cf - -C {tree} . | cat >/dev/null"]), runs)
    first = Series()
    for i in range(runs):
        engine, client = start_remote_engine(kiln, env, os.path.join(work, f"state-{i}"))
        client["XDG_CACHE_HOME"] = os.path.join(work, f"client-cache-{i}")  # the client's stat cache
        try:
            first.add(kiln_query_file(kiln, client, query))
        finally:
            engine.terminate()
            engine.wait()
    engine, client = start_remote_engine(kiln, env, os.path.join(work, "state-warm"))
    client["XDG_CACHE_HOME"] = os.path.join(work, "client-cache-warm")
    try:
        kiln_query_file(kiln, client, query)
        unchanged = repeat(lambda: kiln_query_file(kiln, client, query), runs)
    finally:
        engine.terminate()
        engine.wait()
    shutil.rmtree(work, ignore_errors=True)
    label = f"{files // 1000}k files / {total_bytes >> 20} MiB"
    return [
        (f"host tree {label}: `tar -cf - | cat >/dev/null`", tar.ms(), tar.rss()),
        (f"host tree {label}: first upload to a loopback TLS engine", first.ms(), first.rss()),
        ("ratio: first remote upload / tar", first.ms() / tar.ms(), None),
        (f"host tree {label}: unchanged re-upload to it", unchanged.ms(), unchanged.rss()),
        ("ratio: unchanged remote re-upload / tar", unchanged.ms() / tar.ms(), None),
    ]


# --- 4. Dockerfile-equivalent pipeline ----------------------------------------

STEPS = [
    "mkdir -p /app && echo prepared > /app/prepared",
    None,  # COPY src /app/src
    "cd /app && ls src | wc -l > files.txt",
    "cd /app && cat src/* | md5sum > sum.txt",
    "cd /app && tar -cf /app.tar src files.txt sum.txt",
]

DOCKERFILE_HEADER = "FROM kiln-bench-busybox\n"


def dockerfile():
    lines = [DOCKERFILE_HEADER.strip()]
    for step in STEPS:
        lines.append("COPY src /app/src" if step is None else f"RUN {step}")
    return "\n".join(lines) + "\n"


def pipeline_query(src_id):
    q = '{ container { from(address: "busybox") { '
    depth = 2
    for step in STEPS:
        if step is None:
            q += f'withDirectory(path: "/app/src", source: "{src_id}") {{ '
        else:
            q += "withExec(args: " + json.dumps(["sh", "-c", step]) + ") { "
        depth += 1
    return q + "sync" + " }" * (depth + 1) + "\n"


def ensure_pipeline_context(work):
    """A build context: Dockerfile and src/ with 200 small files."""
    return build_context(work, dockerfile())


def bench_pipeline(kiln, env, runs):
    if not dockerd_lib.available():
        sys.exit("the pipeline benchmark needs Debian's docker.io (apt-get install --no-install-recommends docker.io)")
    work = tempfile.mkdtemp(prefix="kiln-bench-pipeline-")
    ctx, victim = ensure_pipeline_context(work)
    src = os.path.dirname(victim)
    original = open(victim).read()
    counter = [0]

    def change_source():
        counter[0] += 1
        with open(victim, "w") as f:
            f.write(original + f"change {counter[0]}\n")

    rows = []
    # kiln through `kiln query`: the source directory's ID first (lazy: it
    # does no work), then the pipeline that refers to it.
    state = os.path.join(work, "kiln-state")
    kenv = with_state(env, state)
    query_file = os.path.join(work, "pipeline.graphql")

    def fresh_kiln():
        shutil.rmtree(state, ignore_errors=True)
        # The base image is local for docker (imported): pull it for kiln.
        kiln_query(kiln, kenv, '{ container { from(address: "busybox") { sync } } }')
        out = kiln_query(kiln, kenv, '{ host { directory(path: "%s") { id } } }' % src)
        src_id = json.loads(out.stdout)["data"]["host"]["directory"]["id"]
        with open(query_file, "w") as f:
            f.write(pipeline_query(src_id))

    run_kiln = lambda: kiln_query_file(kiln, kenv, query_file)  # noqa: E731
    kiln_cold = repeat(run_kiln, runs, before=fresh_kiln)
    kiln_warm = repeat(run_kiln, runs)
    kiln_changed = repeat(run_kiln, runs, before=change_source)

    # The same through the Python SDK (process start and SDK import included).
    sdk = [kiln, "--progress", "quiet", "run", "--", sys.executable, os.path.join(REPO, "bench", "pipeline.py"), src]
    run_sdk = lambda: run_measured(sdk, env=kenv)  # noqa: E731

    def fresh_sdk():
        shutil.rmtree(state, ignore_errors=True)
        kiln_query(kiln, kenv, '{ container { from(address: "busybox") { sync } } }')

    sdk_cold = repeat(run_sdk, runs, before=fresh_sdk)
    sdk_warm = repeat(run_sdk, runs)
    sdk_changed = repeat(run_sdk, runs, before=change_source)

    # docker build (BuildKit), base image imported from the same rootfs.
    dockerd = dockerd_lib.Dockerd(work)
    docker = lambda *args: run_measured(dockerd.command(*args), env=dockerd.env)  # noqa: E731
    try:
        docker("import", busybox_rootfs_blob(env), "kiln-bench-busybox")
        build = lambda: docker("build", "--network=none", "-q", "-t", "kiln-bench-app", ctx)  # noqa: E731
        build()  # first build of a fresh daemon (not measured)
        prune = lambda: docker("builder", "prune", "-af")  # noqa: E731
        docker_cold = repeat(build, runs, before=prune)
        docker_warm = repeat(build, runs)
        docker_changed = repeat(build, runs, before=change_source)
        daemon_rss = dockerd.peak_rss_kib()
    finally:
        dockerd.stop()
    for s in (docker_cold, docker_warm, docker_changed):
        for r in s.runs:
            r.rss_kib = daemon_rss
    shutil.rmtree(work, ignore_errors=True)

    for name, k, p, d in [
        ("cold", kiln_cold, sdk_cold, docker_cold),
        ("warm", kiln_warm, sdk_warm, docker_warm),
        ("after a one-file change", kiln_changed, sdk_changed, docker_changed),
    ]:
        target = 4 if name == "warm" else 2
        rows += [
            (f"5-step pipeline {name}: kiln query", k.ms(), k.rss()),
            (f"5-step pipeline {name}: Python SDK (kiln run -- python3)", p.ms(), p.rss()),
            (f"5-step pipeline {name}: docker build (BuildKit; RSS: dockerd+containerd)", d.ms(), d.rss()),
            (f"ratio: docker build / kiln query, {name} (target >= {target})", d.ms() / k.ms(), None),
        ]
    return rows


# --- table and record ---------------------------------------------------------

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
        if name.startswith("ratio"):
            v = f"{value:.2f} x"
        else:
            v = f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"
        r = f"{rss / 1024:.1f} MiB" if rss else ""
        lines.append(f"| {name} | {v} | {r} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--execs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--files", type=int, default=100_000, help="files in the host tree")
    ap.add_argument("--tree-bytes", type=int, default=1 << 30, help="bytes in the host tree")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS))
    ap.add_argument("--record", action="store_true", help="append the results to docs/benchmarks.md")
    args = ap.parse_args()
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    kiln = os.environ["KILN_BIN"]
    env = dict(os.environ)
    load_before = os.getloadavg()[0]
    rows = []
    if "exec-overhead" in only:
        rows += bench_exec_overhead(kiln, env, args.execs, args.runs)
    if "cached-ops" in only:
        rows += bench_cached_ops(kiln, env, args.steps, args.runs)
    if "clients" in only:
        rows += bench_clients(kiln, env, args.runs)
    if "service" in only:
        rows += bench_service(kiln, env, args.runs)
    # The pipeline before the host tree: uploading 1 GB five times leaves the
    # disk busy writing back for a while, which slows every fsync (BuildKit's).
    if "pipeline" in only:
        rows += bench_pipeline(kiln, env, args.runs)
    if "dockerfile" in only:
        rows += images.bench_dockerfile(kiln, env, args.runs)
    if "publish" in only:
        rows += images.bench_publish(kiln, env, args.runs)
    if "git" in only:
        rows += gitsrc.bench_git(kiln, env, args.runs)
    if "host-tree" in only:
        rows += bench_host_tree(kiln, env, args.runs, args.files, args.tree_bytes)
    if "remote-upload" in only:
        rows += bench_remote_upload(kiln, env, args.runs, args.files, args.tree_bytes)
    out = table(rows)
    print(out)
    if args.record:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        version = subprocess.run([kiln, "version"], capture_output=True, text=True).stdout.strip()
        path = os.path.join(REPO, "docs/benchmarks.md")
        new = not os.path.exists(path)
        with open(path, "a") as f:
            if new:
                f.write("# Benchmarks\n\nRecorded by `bench/run.sh --record`.\n")
            load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (the machine is shared)"
            f.write(
                f"\n## {stamp}\n\n{version}, release build; {machine()}; median of {args.runs} runs"
                f" ({', '.join(only)}); {load}.\n\n{out}\n"
            )


if __name__ == "__main__":
    main()
