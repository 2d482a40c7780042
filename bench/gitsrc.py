"""Git source benchmark: a generated repository (2000 files over 20
commits, the same bytes every time) served by `git daemon` on loopback;
kiln's `git(url).head.tree` cold (fresh state dir) and warm (a new
process, the commit's tree cached), vs the floor: `git clone --depth=1`
(cold) and `git ls-remote` (what a warm resolve needs)."""

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

from measure import engine_hwm_kib, kiln_query, repeat, run_measured, with_state

GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)


def make_repo(work, files=2000, commits=20):
    src = os.path.join(work, "src")
    os.makedirs(src)
    git("init", "-q", "-b", "main", cwd=src)
    rng = random.Random(files)
    for c in range(commits):
        for i in range(c * files // commits, (c + 1) * files // commits):
            path = os.path.join(src, f"d{i % 40:02d}", f"f{i:05d}.txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("".join(rng.choice("abcdefgh \n") for _ in range(rng.randint(100, 4000))))
        git("add", "-A", cwd=src)
        git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", f"commit {c}", cwd=src)
    git("clone", "-q", "--bare", src, os.path.join(work, "repo.git"), cwd=work)


def bench_git(kiln, env, runs):
    work = tempfile.mkdtemp(prefix="kiln-bench-git-")
    make_repo(work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={work}", "--listen=127.0.0.1",
         f"--port={port}", work],
        env=GIT_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"git://127.0.0.1:{port}/repo.git"
    try:
        deadline = time.time() + 10
        while subprocess.run(["git", "ls-remote", url], env=GIT_ENV, capture_output=True).returncode != 0:
            if time.time() > deadline:
                raise SystemExit("git daemon did not start")
            time.sleep(0.1)
        state = os.path.join(work, "kiln-state")
        kenv = with_state(env, state)
        query = '{ git(url: "%s") { head { tree(discardGitDir: true) { entries } } } }' % url

        def fresh():
            shutil.rmtree(state, ignore_errors=True)
            kiln_query(kiln, kenv, "{ version }")

        tree = lambda: kiln_query(kiln, kenv, query)  # noqa: E731
        cold = repeat(tree, runs, before=fresh)
        warm = repeat(tree, runs)
        rss = engine_hwm_kib(kenv)
        clones = os.path.join(work, "clones")

        def clone():
            shutil.rmtree(clones, ignore_errors=True)
            return run_measured(["git", "clone", "-q", "--depth=1", url, clones], env=GIT_ENV)

        git_clone = repeat(clone, runs)
        ls_remote = repeat(lambda: run_measured(["git", "ls-remote", url], env=GIT_ENV), runs)
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(work, ignore_errors=True)
    return [
        ("git tree of 2000 files, cold: kiln (fresh state; RSS: engine)", cold.ms(), rss),
        ("git tree of 2000 files, cold: git clone --depth=1", git_clone.ms(), git_clone.rss()),
        ("ratio: kiln / git clone, cold", cold.ms() / git_clone.ms(), None),
        ("git tree of 2000 files, warm (new process, commit cached): kiln", warm.ms(), rss),
        ("git tree, warm floor: git ls-remote", ls_remote.ms(), ls_remote.rss()),
        ("ratio: kiln / git ls-remote, warm", warm.ms() / ls_remote.ms(), None),
    ]
