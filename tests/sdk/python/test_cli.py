"""`kiln run` as a wrapper: exit codes, the summary line, and what exports
withhold from the host."""

import json
import os
import re
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import KILN_BIN, session_line, write_script

pytestmark = pytest.mark.slow


def test_exit_code_of_the_program_is_kept(kiln, tmp_path: Path):
    script = write_script(tmp_path / "exit3.py", "import sys\nprint('bye')\nsys.exit(3)\n")
    run = kiln.run_python(script)
    assert run.returncode == 3
    assert run.stdout == "bye\n"
    assert run.summary() == (0, 0, 0)


def pipeline(body: str) -> str:
    """A pipeline script: `body` (Python awaiting on `dag`, with `sys`
    imported) inside a Dagger connection."""
    return (
        "import sys, anyio, dagger\nfrom dagger import dag\n\n"
        "async def main():\n    async with dagger.connection():\n"
        + textwrap.indent(textwrap.dedent(body).strip(), " " * 8)
        + "\n\nanyio.run(main)\n"
    )


FAILING = pipeline('await dag.container().from_("busybox").with_exec(["sh", "-c", "exit 9"]).sync()')


def test_uncaught_exec_error_fails_the_run(kiln, tmp_path: Path):
    run = kiln.run_python(write_script(tmp_path / "fail.py", FAILING))
    assert run.returncode == 1  # Python's exit code for an uncaught exception
    assert "dagger.ExecError" in run.stderr or "ExecError" in run.stderr
    assert re.search(r"exit code:? 9\b", run.stderr), run.stderr
    ran, _, failed = run.summary()
    assert failed == 1, run.stderr


SPECIAL_EXPORT = pipeline("""
    await (
        dag.container().from_("busybox")
        .with_exec(["sh", "-c", "mkdir /out && cp /bin/busybox /out/su && chmod 4755 /out/su"
                    " && mknod /out/null c 1 3 && echo x > /out/plain"])
        .directory("/out")
        .export(sys.argv[1])
    )
""")


def test_exports_withhold_device_nodes_and_setuid_bits_and_say_so(kiln, tmp_path: Path):
    out = tmp_path / "out"
    run = kiln.run_python(write_script(tmp_path / "special.py", SPECIAL_EXPORT), str(out))
    run.check()
    assert (out / "plain").read_text() == "x\n"
    assert not (out / "null").exists(), "a device node was created on the host"
    assert (out / "su").stat().st_mode & 0o6000 == 0, "a setuid file was created on the host"
    assert (out / "su").stat().st_mode & 0o777 == 0o755
    assert "device node null not created" in run.stderr, run.stderr
    assert "setuid/setgid bits of su cleared" in run.stderr, run.stderr
    assert "--export-special-files" in run.stderr


def test_exports_keep_device_nodes_and_setuid_bits_when_asked(kiln, tmp_path: Path):
    out = tmp_path / "out"
    kiln.env["KILN_EXPORT_SPECIAL_FILES"] = "true"
    run = kiln.run_python(write_script(tmp_path / "special.py", SPECIAL_EXPORT), str(out))
    run.check()
    assert stat.S_ISCHR((out / "null").stat().st_mode)
    assert os.major((out / "null").stat().st_rdev) == 1
    assert (out / "su").stat().st_mode & 0o4000
    assert "not created" not in run.stderr


WRITES_A_LAYER = pipeline(
    'await dag.container().from_("busybox").with_exec(["sh", "-c", "head -c 100000 /dev/zero > /blob"]).sync()'
)


def test_garbage_collection_says_what_it_evicted_at_the_default_log_level(kiln, tmp_path: Path):
    config = tmp_path / "kiln.toml"
    config.write_text(Path(os.environ["KILN_CONFIG"]).read_text() + "[gc]\nkeep_storage = 1\n")
    kiln.env["KILN_CONFIG"] = str(config)
    kiln.env.pop("KILN_LOG", None)
    run = kiln.run_python(write_script(tmp_path / "layer.py", WRITES_A_LAYER))
    run.check()
    assert "garbage collection:" in run.stderr, run.stderr


def test_a_second_process_on_the_same_state_dir_runs_at_once(kiln):
    """Both are sessions of the state dir's engine: the second never waits."""
    holder = kiln.session()
    try:
        session_line(holder)
        second = subprocess.run(
            [KILN_BIN, "query"], env=kiln.env, input="{ version }", capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)["data"]["version"], second.stdout
        assert "waiting for state directory" not in second.stderr, second.stderr
        assert holder.poll() is None, "the first session still runs"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
