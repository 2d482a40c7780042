"""Query.git against servers the test runs on loopback: `git daemon`, and
smart HTTP through `git http-backend` behind a small server that wants
Basic auth. Branch moves are picked up by a new session, an unchanged
commit is a cache hit in a new process, tags and patterns work, and no
credential stays in a checkout."""

import base64
import os
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagger
import pytest

from conftest import write_script

pytestmark = pytest.mark.anyio

ENV = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True).stdout


def commit(work: Path, name: str, text: str, message: str) -> str:
    (work / name).write_text(text)
    git("add", name, cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message, cwd=work)
    return git("rev-parse", "HEAD", cwd=work).strip()


class Repo:
    """A bare repository `repo.git` under `root`, pushed to from `work`."""

    def __init__(self, root: Path):
        self.root, self.work = root, root / "work"
        self.bare = root / "repo.git"
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self.work.mkdir()
        git("init", "-q", "-b", "main", cwd=self.work)
        self.first = commit(self.work, "README", "first\n", "first")
        git("tag", "v1.0.0", cwd=self.work)
        git("-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", "v1.2.0", "-m", "annotated", cwd=self.work)
        git("branch", "feature", cwd=self.work)
        self.second = commit(self.work, "README", "second\n", "second")
        git("tag", "v1.10.0-rc1", cwd=self.work)
        self.push()

    def push(self, *extra: str):
        git("push", "-q", *extra, str(self.bare), "--all", cwd=self.work)
        git("push", "-q", *extra, str(self.bare), "--tags", cwd=self.work)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon(tmp_path):
    repo = Repo(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={tmp_path}", "--listen=127.0.0.1",
         f"--port={port}", str(tmp_path)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while subprocess.run(["git", "ls-remote", f"git://127.0.0.1:{port}/repo.git"], env=ENV,
                         capture_output=True).returncode != 0:
        assert proc.poll() is None and time.time() < deadline, "git daemon did not start"
        time.sleep(0.1)
    repo.url = f"git://127.0.0.1:{port}/repo.git"
    yield repo
    proc.terminate()
    proc.wait()


class GitHttp(BaseHTTPRequestHandler):
    """Smart HTTP: `git http-backend` as a CGI, behind Basic auth."""

    root: Path
    credentials = base64.b64encode(b"alice:s3cr3t-t0k3n").decode()

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.backend()

    def do_POST(self):
        self.backend()

    def backend(self):
        if self.headers.get("Authorization") != f"Basic {self.credentials}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            **ENV, "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command,
            "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": "alice", "REMOTE_ADDR": "127.0.0.1",
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def smart_http(tmp_path):
    repo = Repo(tmp_path)
    handler = type("Handler", (GitHttp,), {"root": tmp_path})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    repo.url = f"http://127.0.0.1:{server.server_address[1]}/repo.git"
    yield repo
    server.shutdown()


async def test_refs_resolve_and_trees_check_out(dag, daemon):
    repo = dag.git(daemon.url)
    assert await repo.head().commit() == daemon.second
    assert await repo.branch("feature").commit() == daemon.first
    assert await repo.tag("v1.0.0").commit() == daemon.first
    # An annotated tag stands for the commit it points to.
    assert await repo.tag("v1.2.0").commit() == daemon.first
    assert await repo.branch("main").ref() == "refs/heads/main"
    assert await repo.head().tree().file("README").contents() == "second\n"
    assert await repo.commit(daemon.first).tree().file("README").contents() == "first\n"
    assert await repo.tags() == ["v1.0.0", "v1.10.0-rc1", "v1.2.0"]
    assert await repo.tags(patterns=["v1.1*"]) == ["v1.10.0-rc1"]
    assert await repo.branches() == ["feature", "main"]
    assert await repo.latest_version().ref() == "refs/tags/v1.10.0-rc1"  # semver order, as Dagger
    assert await repo.branch("main").common_ancestor(repo.branch("feature")).commit() == daemon.first
    # .git is kept unless discarded, its history as deep as asked.
    kept = repo.head().tree()
    assert await kept.entries() == [".git/", "README"]
    assert await repo.head().tree(discard_git_dir=True).entries() == ["README"]
    # Dagger's deprecated keepGitDir=false does the same.
    assert await dag.git(daemon.url, keep_git_dir=False).head().tree().entries() == ["README"]
    log = dag.container().from_("busybox").with_directory("/src", kept).with_exec(["ls", "/src/.git"]).stdout()
    assert "HEAD" in await log
    with pytest.raises(dagger.QueryError, match=r'no ref "refs/heads/nope" there'):
        await repo.branch("nope").tree().entries()


TREE = """
import sys

import anyio
import dagger


async def main():
    async with dagger.connection():
        ref = dagger.dag.git(sys.argv[1]).branch("main")
        print(await ref.commit())
        print(await ref.tree(discard_git_dir=True).file("README").contents(), end="")


anyio.run(main)
"""


async def test_a_moved_branch_is_seen_by_a_new_session_and_a_commit_is_cached(kiln, tmp_path, daemon):
    script = write_script(tmp_path / "tree.py", TREE)
    first = kiln.run_python(script, daemon.url)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{daemon.second}\nsecond\n"
    assert first.summary()[0] >= 1
    # Progress tells what the fetch brought and how fast.
    assert re.search(rf"NOTICE git {daemon.url} {daemon.second[:12]}: fetched {daemon.second[:12]}: \d+(\.\d+)? [KM]?i?B in ",
                     first.stderr), first.stderr
    again = kiln.run_python(script, daemon.url)
    assert again.stdout == first.stdout
    assert again.summary()[0] == 0, again.stderr  # the commit's tree: cached
    third = commit(daemon.work, "README", "third\n", "third")
    daemon.push()
    moved = kiln.run_python(script, daemon.url)
    assert moved.stdout == f"{third}\nthird\n", moved.stderr
    # A force-push back is re-resolved too.
    git("reset", "-q", "--hard", daemon.second, cwd=daemon.work)
    daemon.push("--force")
    back = kiln.run_python(script, daemon.url)
    assert back.stdout == first.stdout
    assert back.summary()[0] == 0, back.stderr


async def test_smart_http_with_a_token_from_a_secret(dag, smart_http):
    with pytest.raises(dagger.QueryError, match=r"git failed"):
        await dag.git(smart_http.url).head().commit()
    token = dag.set_secret("git-token", "s3cr3t-t0k3n")
    repo = dag.git(smart_http.url, http_auth_username="alice", http_auth_token=token)
    assert await repo.head().commit() == smart_http.second
    tree = repo.head().tree()
    assert await tree.file("README").contents() == "second\n"
    # The credential is nowhere in the checkout.
    ctr = dag.container().from_("busybox").with_directory("/src", tree)
    found = await ctr.with_exec(["sh", "-c", "grep -rl s3cr3t /src/.git || true"]).stdout()
    assert found == ""


async def test_submodules_and_tags_come_along(dag, daemon):
    # A second repository, served by the same daemon, as a submodule.
    lib = daemon.root / "lib-work"
    lib.mkdir()
    git("init", "-q", "-b", "main", cwd=lib)
    commit(lib, "lib.txt", "library\n", "lib")
    git("init", "-q", "--bare", "-b", "main", str(daemon.root / "lib.git"), cwd=daemon.root)
    git("push", "-q", str(daemon.root / "lib.git"), "main", cwd=lib)
    git("-c", "protocol.allow=always", "submodule", "add", "-q", "../lib.git", "vendor/lib", cwd=daemon.work)
    git("config", "-f", ".gitmodules", "submodule.vendor/lib.url", "../lib.git", cwd=daemon.work)
    with_sub = commit(daemon.work, "USES", "vendor/lib\n", "add a submodule")
    daemon.push()
    tree = dag.git(daemon.url).commit(with_sub).tree()
    assert await tree.file("vendor/lib/lib.txt").contents() == "library\n"
    # Tags only when asked for.
    plain = dag.container().from_("busybox").with_directory("/src", tree)
    tagged = dag.container().from_("busybox").with_directory("/src", dag.git(daemon.url).head().tree(include_tags=True))
    tag_list = ["sh", "-c", "ls /src/.git/refs/tags 2>/dev/null; cat /src/.git/packed-refs 2>/dev/null | grep -c tags/ || true"]
    assert "v1.0.0" in await tagged.with_exec(tag_list).stdout()
    assert "v1.0.0" not in await plain.with_exec(tag_list).stdout()


@pytest.fixture
def sshd(tmp_path):
    """Debian's sshd on a loopback port (root: it serves the test's
    repository to root), a client key held by an ssh-agent of the test's
    own, and the server's known_hosts line."""
    repo = Repo(tmp_path)
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("host", "client", "other"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = free_port()
    config = keys / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        f"PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"UsePAM no\nStrictModes no\nPidFile {keys / 'sshd.pid'}\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    server = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    agent_socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_socket)], stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not agent_socket.exists() or socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.time() < deadline, "sshd or ssh-agent did not start"
        time.sleep(0.1)
    subprocess.run(["ssh-add", "-q", str(keys / "client")], env={**ENV, "SSH_AUTH_SOCK": str(agent_socket)},
                   check=True, capture_output=True)
    repo.url = f"ssh://root@127.0.0.1:{port}{repo.bare}"
    repo.agent_socket = str(agent_socket)
    pub = lambda name: " ".join((keys / f"{name}.pub").read_text().split()[:2])  # noqa: E731
    repo.known_hosts = f"[127.0.0.1]:{port} {pub('host')}"
    repo.wrong_known_hosts = f"[127.0.0.1]:{port} {pub('other')}"
    yield repo
    for proc in (server, agent):
        proc.terminate()
        proc.wait()


async def test_ssh_with_the_clients_agent_and_known_hosts_root(dag, sshd):
    agent = dag.host().unix_socket(sshd.agent_socket)
    repo = dag.git(sshd.url, ssh_auth_socket=agent, ssh_known_hosts=sshd.known_hosts)
    assert await repo.head().commit() == sshd.second
    assert await repo.branch("feature").tree(discard_git_dir=True).file("README").contents() == "first\n"
    # Without the agent there is no key to log in with.
    with pytest.raises(dagger.QueryError, match=r"Permission denied"):
        await dag.git(sshd.url, ssh_known_hosts=sshd.known_hosts).head().commit()
    # A server whose key is not the known one is refused.
    with pytest.raises(dagger.QueryError, match=r"Host key verification failed"):
        await dag.git(sshd.url, ssh_auth_socket=agent, ssh_known_hosts=sshd.wrong_known_hosts).head().commit()
