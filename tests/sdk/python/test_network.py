"""Container networking through the unmodified SDK: a container reaches the
"internet" (a server in a network namespace of the test's own, behind a
veth pair) through the engine's NAT, and does not when outbound traffic is
off. Root only (namespaces, veth pairs)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagger
import pytest

from conftest import KILN_BIN, write_script

pytestmark = pytest.mark.anyio

# This process's own numbers: several suites may run at once.
N = os.getpid() % 200 + 20


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def internet(tmp_path: Path):
    """The URL of a file served in the stand-in internet."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    ns, host_if, ns_if = f"kiln-py-inet{N}", f"kpi{N}h", f"kpi{N}n"
    host_ip, ns_ip = f"10.239.{N}.1", f"10.239.{N}.2"
    ip("netns", "add", ns)
    server = None
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        www = tmp_path / "www"
        www.mkdir()
        (www / "hello.txt").write_text("from the internet\n")
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "--bind", ns_ip, "18080"],
            cwd=www,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection((ns_ip, 18080), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://{ns_ip}:18080/hello.txt"
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        ip("netns", "del", ns)


async def test_a_container_reaches_the_internet_through_nat(dag, internet):
    out = await (
        dag.container()
        .from_("busybox")
        .with_env_variable("NONCE", str(time.time_ns()))
        .with_exec(["wget", "-q", "-O-", internet])
        .stdout()
    )
    assert out == "from the internet\n"


def test_with_outbound_off_the_same_request_fails(kiln, internet, tmp_path):
    config = tmp_path / "kiln.toml"
    config.write_text(
        Path(os.environ["KILN_CONFIG"]).read_text()
        + f'[network]\nbridge = "kpo{N}"\nsubnet = "10.241.{N}.0/24"\noutbound = false\n'
    )
    kiln.env["KILN_CONFIG"] = str(config)
    script = write_script(
        tmp_path / "fetch.py",
        f"""
import sys, anyio, dagger
async def main():
    async with dagger.connection(dagger.Config(log_output=sys.stderr)):
        out = await (
            dagger.dag.container().from_("busybox")
            .with_exec(["wget", "-q", "-T", "3", "-O-", "{internet}"], expect=dagger.ReturnType.ANY)
        )
        print("exit", await out.exit_code())
anyio.run(main)
""",
    )
    try:
        run = kiln.run_python(script).check()
        exit_line = [line for line in run.stdout.splitlines() if line.startswith("exit ")]
        assert exit_line and exit_line[0] != "exit 0", run.stdout
    finally:
        stop = subprocess.run(
            [KILN_BIN, "engine", "stop", "--remove-network"], env=kiln.env, capture_output=True, text=True
        )
    assert stop.returncode == 0, stop.stderr
    bridges = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert f"kpo{N} " not in bridges, bridges
