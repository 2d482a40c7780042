"""Caching across separate `kiln run` processes on one state dir."""

from pathlib import Path

import pytest

from conftest import write_script

pytestmark = pytest.mark.slow

PIPELINE = """
import anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection():
        base = (
            dag.container().from_("busybox")
            .with_new_file("/app/input.txt", "payload\\n")
            .with_workdir("/app")
        )
        # Output that differs on every real run: a cache hit must replay it.
        token = base.with_exec(["sh", "-c", "cat /proc/sys/kernel/random/uuid > token; cat token input.txt"])
        print(await token.stdout(), end="")
        print(await token.with_exec(["wc", "-c", "token"]).stdout(), end="")

anyio.run(main)
"""


def test_second_run_is_fully_cached(kiln, tmp_path: Path):
    script = write_script(tmp_path / "pipeline.py", PIPELINE)
    first = kiln.run_python(script).check()
    ran1, cached1, failed1 = first.summary()
    assert ran1 >= 2 and failed1 == 0, first.stderr

    second = kiln.run_python(script).check()
    ran2, cached2, failed2 = second.summary()
    assert ran2 == 0, f"second run executed {ran2} operations:\n{second.stderr}"
    assert failed2 == 0 and cached2 >= 2
    # Cached results are the first run's results, byte for byte.
    assert second.stdout == first.stdout
    assert "CACHED" in second.stderr


def test_changed_input_reruns_only_what_depends_on_it(kiln, tmp_path: Path):
    script = write_script(tmp_path / "pipeline.py", PIPELINE)
    first = kiln.run_python(script).check()
    changed = write_script(tmp_path / "changed.py", PIPELINE.replace("payload", "other payload"))
    second = kiln.run_python(changed).check()
    ran, cached, _ = second.summary()
    assert ran >= 2, second.stderr  # new file, both execs
    assert cached >= 1, second.stderr  # the image pull
    assert second.stdout != first.stdout
