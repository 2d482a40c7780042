"""`kiln run --explain-cache` and `--fail-on-cache-miss` (issue 5)."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import KILN_BIN, write_script

PIPELINE = """
import os, sys, anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection():
        src = dag.host().directory(sys.argv[1])
        out = await (
            dag.container().from_("busybox")
            .with_directory("/src", src)
            .with_env_variable("MODE", os.environ.get("MODE", "debug"))
            .with_env_variable("STABLE", "1")
            .with_exec(["sh", "-c", "cat /src/*.txt; echo $MODE"])
            .stdout()
        )
        print(out, end="")

anyio.run(main)
"""


def run(kiln, script: Path, src: Path, *flags: str, mode: str = "debug") -> subprocess.CompletedProcess:
    env = dict(kiln.env, MODE=mode)
    cmd = [KILN_BIN, "run", *flags, "--", sys.executable, str(script), str(src)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def explained(stderr: str) -> list[str]:
    """The reasons kiln printed, without the op prefixes."""
    return re.findall(r"^\s+- (.+)$", stderr, re.M)


def test_explain_cache_names_exactly_the_changed_file_and_env_var(kiln, tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    (src / "b.txt").write_text("b\n")
    script = write_script(tmp_path / "p.py", PIPELINE)
    first = run(kiln, script, src)
    assert first.returncode == 0, first.stderr

    (src / "b.txt").write_text("b changed\n")
    second = run(kiln, script, src, "--explain-cache", mode="release")
    assert second.returncode == 0, second.stderr
    reasons = explained(second.stderr)
    assert "file b.txt changed" in reasons, second.stderr
    assert "env MODE changed" in reasons, second.stderr
    assert not any("a.txt" in r or "STABLE" in r for r in reasons), second.stderr


def test_fail_on_cache_miss_fails_a_cold_run_and_passes_a_warm_one(kiln, tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    script = write_script(tmp_path / "p.py", PIPELINE)
    cold = run(kiln, script, src, "--fail-on-cache-miss")
    assert cold.returncode != 0
    assert "cache miss" in cold.stderr
    assert run(kiln, script, src).returncode == 0
    warm = run(kiln, script, src, "--fail-on-cache-miss")
    assert warm.returncode == 0, warm.stderr
