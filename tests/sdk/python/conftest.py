"""Shared fixtures for kiln's Python SDK suite.

The suite runs under the official, unmodified `dagger-io` SDK, in one of two
ways (see run.sh):
  - inside `kiln run -- pytest ...`: DAGGER_SESSION_PORT/TOKEN are set and
    every `dagger.connection()` joins kiln's session;
  - with `_EXPERIMENTAL_DAGGER_CLI_BIN=$KILN_BIN`: every `dagger.connection()`
    makes the SDK start `kiln session` itself.
Tests that need their own kiln processes (caching across runs, IDs across
sessions, raw HTTP) start them with a private state dir, so they work the
same in both modes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagger
import pytest

KILN_BIN = os.environ.get("KILN_BIN", "")
REGISTRY = os.environ.get("KILN_REGISTRY", "")
SUMMARY = re.compile(r"^kiln: (\d+) ran, (\d+) cached, (\d+) failed in ", re.M)


def pytest_report_header(config):
    if os.environ.get("DAGGER_SESSION_PORT"):
        mode = f"kiln run (session port {os.environ['DAGGER_SESSION_PORT']})"
    elif os.environ.get("_EXPERIMENTAL_DAGGER_CLI_BIN"):
        mode = f"SDK-provisioned `{os.environ['_EXPERIMENTAL_DAGGER_CLI_BIN']} session`"
    else:
        mode = "NO ENGINE CONFIGURED (source scripts/sdk-env.sh and use run.sh)"
    return [f"kiln mode: {mode}", f"dagger-io: {dagger.provisioning._session.get_sdk_version()}"]


def pytest_configure(config):
    missing = [v for v in ("KILN_BIN", "KILN_REGISTRY", "KILN_CONFIG") if not os.environ.get(v)]
    if missing:
        raise pytest.UsageError(
            f"{', '.join(missing)} not set: run tests/sdk/python/run.sh (it sources scripts/sdk-env.sh)"
        )
    if not (os.environ.get("DAGGER_SESSION_PORT") or os.environ.get("_EXPERIMENTAL_DAGGER_CLI_BIN")):
        # Without either the SDK would try to download a Dagger CLI.
        raise pytest.UsageError("neither DAGGER_SESSION_PORT nor _EXPERIMENTAL_DAGGER_CLI_BIN is set")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def dag():
    """A connection to kiln; yields the global `dagger.dag` client."""
    async with dagger.connection(dagger.Config(log_output=sys.stderr)):
        yield dagger.dag


@dataclass
class Run:
    """A finished `kiln run` process."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def summary(self) -> tuple[int, int, int]:
        """(ran, cached, failed) from kiln's summary line on stderr."""
        found = SUMMARY.findall(self.stderr)
        assert found, f"no kiln summary line on stderr:\n{self.stderr}"
        ran, cached, failed = found[-1]
        return int(ran), int(cached), int(failed)

    def check(self) -> Run:
        assert self.returncode == 0, (
            f"{self.args} exited {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )
        return self


class Kiln:
    """Runs kiln processes on a state dir of their own."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DAGGER_SESSION_PORT", "DAGGER_SESSION_TOKEN", "_EXPERIMENTAL_DAGGER_CLI_BIN")
        }
        self.env["KILN_STATE_DIR"] = str(state_dir)
        self.env["KILN_PROGRESS"] = "plain"

    def run_python(self, script: Path, *args: str, timeout: float = 300) -> Run:
        """`kiln run -- python3 SCRIPT ARGS...`."""
        cmd = [KILN_BIN, "run", "--", sys.executable, str(script), *args]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        return Run(cmd, p.returncode, p.stdout, p.stderr)

    def session(self) -> subprocess.Popen:
        """A `kiln session` process (read its JSON line with `session_line`)."""
        return subprocess.Popen(
            [KILN_BIN, "session", "--label", "dagger.io/sdk.name:kiln-tests"],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def session_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, f"kiln session printed nothing; stderr:\n{proc.stderr.read()}"
    return json.loads(line)


@pytest.fixture
def kiln(tmp_path: Path) -> Kiln:
    state = tmp_path / "kiln-state"
    state.mkdir()
    return Kiln(state)


@pytest.fixture
def registry() -> str:
    return REGISTRY


def write_script(path: Path, body: str) -> Path:
    path.write_text(body)
    return path
