"""`kiln run` as a wrapper: exit codes and the summary line."""

import re
from pathlib import Path

import pytest

from conftest import write_script

pytestmark = pytest.mark.slow


def test_exit_code_of_the_program_is_kept(kiln, tmp_path: Path):
    script = write_script(tmp_path / "exit3.py", "import sys\nprint('bye')\nsys.exit(3)\n")
    run = kiln.run_python(script)
    assert run.returncode == 3
    assert run.stdout == "bye\n"
    assert run.summary() == (0, 0, 0)


FAILING = """
import anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection():
        await dag.container().from_("busybox").with_exec(["sh", "-c", "exit 9"]).sync()

anyio.run(main)
"""


def test_uncaught_exec_error_fails_the_run(kiln, tmp_path: Path):
    run = kiln.run_python(write_script(tmp_path / "fail.py", FAILING))
    assert run.returncode == 1  # Python's exit code for an uncaught exception
    assert "dagger.ExecError" in run.stderr or "ExecError" in run.stderr
    assert re.search(r"exit code:? 9\b", run.stderr), run.stderr
    ran, _, failed = run.summary()
    assert failed == 1, run.stderr
