"""A pipeline with parallel branches joined at the end (fan out, fan in).

From one source directory, four independent jobs run at the same time
(each in its own container; each also sleeps a second to stand in for real
work), then a final step joins their outputs into one release directory:

            ┌─ test ─────┐
    source ─┼─ lint ─────┼─ release (MANIFEST with checksums)
            ├─ package ──┤
            └─ docs ─────┘

The branches are awaited together in an anyio task group, so the program
sends them to the engine at once; kiln runs independent operations in
parallel (up to `parallelism` containers at a time, the number of CPUs by
default). The wall time printed at the end is below the 4 s the branches
would take one after another.

    kiln run -- python3 examples/python/parallel.py
"""

import time
from pathlib import Path

import anyio
import dagger
from dagger import dag

PROJECT = Path(__file__).resolve().parent / "project"
WORK = "sleep 1"  # stands in for a slow compiler or test suite


def branches(src: dagger.Directory) -> dict[str, dagger.Container]:
    py = dag.container().from_("debian:bookworm").with_mounted_directory("/src", src).with_workdir("/src")
    sh = dag.container().from_("busybox").with_mounted_directory("/src", src).with_workdir("/src")
    return {
        "test": py.with_exec(["sh", "-c", f"{WORK}; mkdir -p /out && python3 run_tests.py | tee /out/test-report.txt"]),
        "lint": sh.with_exec(
            [
                "sh",
                "-c",
                f"{WORK}; mkdir -p /out; sh -n build.sh && "
                "if grep -n '[[:space:]]$' *.py tests/*.py; then echo 'trailing whitespace'; exit 1; fi; "
                "echo 'lint: build.sh parses, no trailing whitespace' | tee /out/lint-report.txt",
            ]
        ),
        "package": py.with_exec(["sh", "-c", f"{WORK}; sh build.sh /out"]),
        "docs": sh.with_exec(
            [
                "sh",
                "-c",
                f"{WORK}; mkdir -p /out && grep -h -A1 '^def ' wordcount.py > /out/API.txt && wc -l /out/API.txt",
            ]
        ),
    }


async def main():
    async with dagger.connection():
        src = dag.host().directory(str(PROJECT), exclude=["dist", "**/__pycache__", "*.pyc"])
        jobs = branches(src)
        took: dict[str, float] = {}
        start = time.monotonic()

        async def run(name: str, ctr: dagger.Container):
            t0 = time.monotonic()
            out = await ctr.stdout()
            took[name] = time.monotonic() - t0
            print(f"[{name:8}] done in {took[name]:4.1f}s: {out.strip().splitlines()[-1]}")

        async with anyio.create_task_group() as tg:
            for name, ctr in jobs.items():
                tg.start_soon(run, name, ctr)

        # Fan in: one directory with every branch's /out, and a manifest.
        release = dag.directory()
        for name, ctr in jobs.items():
            release = release.with_directory(name, ctr.directory("/out"))
        manifest = await (
            dag.container()
            .from_("busybox")
            .with_directory("/release", release)
            .with_workdir("/release")
            .with_exec(["sh", "-c", "find . -type f | sort | xargs sha256sum"])
            .stdout()
        )
        wall = time.monotonic() - start
    print("release MANIFEST:")
    print(manifest, end="")
    slowest = max(took.values())
    print(f"{len(jobs)} branches ({len(jobs)}s of simulated work) done in {wall:.1f}s wall time; slowest branch {slowest:.1f}s")


anyio.run(main)
