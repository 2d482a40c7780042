"""Build and test a project from the host, then export the artifact.

The classic CI job, as a program: take the project in
examples/python/project/ from the host (leaving out build output and
caches), mount it into a `debian:bookworm` container, run its tests, build
a release tarball only if they pass, smoke-test the tarball in a clean
container, and export it to the host.

    kiln run -- python3 examples/python/build_and_test.py [OUT_DIR]

OUT_DIR defaults to ./dist. Run it twice: the second run comes from the
cache, until a file of the project changes.
"""

import sys
from pathlib import Path

import anyio
import dagger
from dagger import dag

PROJECT = Path(__file__).resolve().parent / "project"


async def main(out_dir: Path):
    async with dagger.connection():
        src = dag.host().directory(str(PROJECT), exclude=["dist", "**/__pycache__", "*.pyc"])
        base = dag.container().from_("debian:bookworm")

        if await base.with_exec(["sh", "-c", "command -v python3 || true"]).stdout() == "":
            sys.exit("debian:bookworm has no python3: rebuild the fixture with scripts/setup.sh --debian --force")

        work = base.with_mounted_directory("/src", src).with_workdir("/src")

        # Test. A failing test raises dagger.ExecError and stops the pipeline.
        tested = work.with_exec(["python3", "run_tests.py"])
        print(await tested.stdout(), end="")

        # Build, on top of the tested container (so only after the tests pass).
        built = tested.with_exec(["sh", "build.sh", "/dist"])
        dist = built.directory("/dist")
        (tarball,) = await dist.entries()

        # Smoke-test the artifact in a clean container: unpack it, run it.
        smoke = (
            base.with_file(f"/tmp/{tarball}", dist.file(tarball))
            .with_exec(["tar", "-xzf", f"/tmp/{tarball}", "-C", "/opt"])
            .with_exec(["sh", "-c", "echo 'the cat and the hat and the bat' | /opt/wordcount-*/bin/wordcount 2"])
        )
        print("smoke test:")
        print(await smoke.stdout(), end="")

        await dist.export(str(out_dir))
    print(f"artifact: {out_dir / tarball}")


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1] if len(sys.argv) > 1 else "dist").resolve())
