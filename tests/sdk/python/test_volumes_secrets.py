"""Cache volumes, secrets and exec options (issue 4), through the official SDK."""

import os
import subprocess
from pathlib import Path

import anyio
import dagger
import pytest

from conftest import write_script

pytestmark = pytest.mark.anyio

COUNTER = """
import sys, anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection():
        for run in sys.argv[1:]:
            out = await (
                dag.container().from_("busybox")
                .with_env_variable("RUN", run)  # a new exec each time
                .with_mounted_cache("/cache", dag.cache_volume("counter"))
                .with_exec(["sh", "-c", "n=$(cat /cache/n 2>/dev/null || echo -1); n=$((n+1)); echo $n > /cache/n; echo $n"])
                .stdout()
            )
            print(out.strip())

anyio.run(main)
"""


def test_cache_volume_counter_across_two_engine_processes(kiln, tmp_path: Path):
    script = write_script(tmp_path / "counter.py", COUNTER)
    first = kiln.run_python(script, "a", "b", "c").check()
    second = kiln.run_python(script, "d", "e").check()
    assert first.stdout.split() + second.stdout.split() == ["0", "1", "2", "3", "4"]
    kiln_cache = [os.environ["KILN_BIN"], "cache"]
    listed = subprocess.run([*kiln_cache, "volumes"], env=kiln.env, capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.split()[-1] == "counter", listed
    removed = subprocess.run([*kiln_cache, "rm-volume", "counter"], env=kiln.env, capture_output=True, text=True)
    assert removed.returncode == 0, removed.stderr
    again = subprocess.run([*kiln_cache, "rm-volume", "counter"], env=kiln.env, capture_output=True, text=True)
    assert again.returncode != 0 and "no cache volume named counter" in again.stderr
    assert kiln.run_python(script, "f").check().stdout.split() == ["0"], "the volume was not removed"


async def test_locked_cache_serialises_concurrent_writers(dag):
    script = "if [ -e /c/busy ]; then echo overlap; fi; touch /c/busy; sleep 1; rm /c/busy; echo ok"
    volume = dag.cache_volume("locked-writers")

    async def writer(i: int) -> str:
        return await (
            dag.container().from_("busybox")
            .with_env_variable("WRITER", f"{i}-{os.getpid()}")
            .with_mounted_cache("/c", volume, sharing=dagger.CacheSharingMode.LOCKED)
            .with_exec(["sh", "-c", script])
            .stdout()
        )

    results: list[str] = []

    async def collect(i: int):
        results.append(await writer(i))

    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(collect, i)
    assert results == ["ok\n", "ok\n"]


async def test_cache_volume_starts_from_a_source_directory(dag):
    seed = dag.directory().with_new_file("seeded.txt", "from source\n")
    out = await (
        dag.container().from_("busybox")
        .with_mounted_cache("/c", dag.cache_volume(f"seeded-{os.getpid()}"), source=seed)
        .with_exec(["cat", "/c/seeded.txt"])
        .stdout()
    )
    assert out == "from source\n"


SECRET_PIPELINE = """
import os, anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection():
        token = dag.set_secret("token", os.environ["THE_SECRET"])
        ctr = (
            dag.container().from_("busybox")
            .with_secret_variable("TOKEN", token)
            .with_mounted_secret("/run/secrets/token", token)
            .with_exec(["sh", "-c", "echo env=$TOKEN; cat /run/secrets/token; echo; test $TOKEN = $(cat /run/secrets/token) && echo same"])
        )
        print(await ctr.stdout(), end="")
        print("plaintext:", await token.plaintext())
        try:
            await ctr.with_exec(["sh", "-c", "echo leaked $TOKEN >&2; exit 7"]).sync()
        except dagger.ExecError as e:
            print("stderr:", e.stderr.strip())

anyio.run(main)
"""


def grep_tree(root: Path, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


def test_secrets_as_env_and_file_never_reach_disk_or_output(kiln, tmp_path: Path):
    value = f"kiln-py-s3cr3t-{os.getpid()}"
    script = write_script(tmp_path / "secret.py", SECRET_PIPELINE)
    kiln.env["THE_SECRET"] = value
    run = kiln.run_python(script).check()
    assert run.stdout.splitlines() == ["env=***", "***", "same", f"plaintext: {value}", "stderr: leaked ***"]
    assert value not in run.stderr, "the secret appeared in kiln's progress output"
    assert grep_tree(kiln.state_dir, value.encode()) == [], "the secret reached the state dir"

    # A changed value runs the execs that use it again; the same value does not.
    again = kiln.run_python(script).check()
    assert again.summary()[0] == 0, again.stderr
    kiln.env["THE_SECRET"] = value + "-rotated"
    rotated = kiln.run_python(script).check()
    assert rotated.summary()[0] >= 1, rotated.stderr


async def test_secret_from_env_and_cmd_providers(dag):
    # env:// reads the environment kiln was started with, which the pipeline
    # program shares (sdk-env.sh exports KILN_REGISTRY to both).
    expected = os.environ["KILN_REGISTRY"]
    from_env = dag.secret("env://KILN_REGISTRY")
    from_cmd = dag.secret("cmd://echo value-from-cmd")
    assert await from_env.plaintext() == expected
    assert await from_cmd.plaintext() == "value-from-cmd"
    out = await (
        dag.container().from_("busybox")
        .with_secret_variable("A", from_env)
        .with_secret_variable("B", from_cmd)
        .without_secret_variable("B")
        .with_exec(["sh", "-c", 'echo "${#A} ${B:-unset}"'])
        .stdout()
    )
    assert out == f"{len(expected)} unset\n"


async def test_exec_options_stdin_redirects_expand_and_combined_output(dag):
    base = dag.container().from_("busybox").with_env_variable("WHO", "kiln").with_workdir("/work")
    assert await base.with_exec(["cat"], stdin="from stdin").stdout() == "from stdin"
    redirected = base.with_exec(["sh", "-c", "echo out; echo err >&2"], redirect_stdout="o.txt", redirect_stderr="/e.txt")
    assert await redirected.stdout() == ""
    assert await redirected.file("/work/o.txt").contents() == "out\n"
    assert await redirected.file("/e.txt").contents() == "err\n"
    assert await base.with_exec(["echo", "hello $WHO ${WHO}"], expand=True).stdout() == "hello kiln kiln\n"
    expanded_dir = base.with_new_file("/$WHO/f", "x", expand=True)
    assert await expanded_dir.file("/kiln/f").contents() == "x"
    combined = base.with_exec(["sh", "-c", "echo one; echo two >&2; echo three"])
    assert sorted((await combined.combined_output()).split()) == ["one", "three", "two"]
    failing = base.with_exec(["sh", "-c", "echo no; exit 3"], expect=dagger.ReturnType.FAILURE)
    assert await failing.exit_code() == 3
