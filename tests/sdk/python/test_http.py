"""Query.http against a server the test runs on loopback, which counts what
it is asked: one download per content (a later session revalidates with
the ETag, and a checksum whose content is here asks nothing), checksums
enforced, changed content fetched again, Authorization from a secret,
transient failures retried."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagger
import pytest

from conftest import write_script

pytestmark = pytest.mark.anyio


class Site:
    """Files by path; a count of GETs and of full (200) answers per path."""

    def __init__(self):
        self.files = {"/tool.txt": b"tool v1\n", "/private": b"private\n", "/flaky": b"flaky\n"}
        self.gets, self.full = {}, {}
        self.failures_left = {"/flaky": 1}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path
                site.gets[path] = site.gets.get(path, 0) + 1
                if path == "/private" and self.headers.get("Authorization") != "Bearer t0k3n":
                    self.send_response(401)
                    self.end_headers()
                    return
                if site.failures_left.get(path, 0) > 0:
                    site.failures_left[path] -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                body = site.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                site.full[path] = site.full.get(path, 0) + 1
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def site():
    s = Site()
    yield s
    s.server.shutdown()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_a_url_becomes_a_file_named_after_it(dag, site):
    f = dag.http(f"{site.url}/tool.txt")
    assert await f.contents() == "tool v1\n"
    assert await f.name() == "tool.txt"
    ctr = dag.container().from_("busybox").with_file("/t", f)
    assert await ctr.with_exec(["stat", "-c", "%a", "/t"]).stdout() == "600\n"
    named = dag.http(f"{site.url}/tool.txt", name="renamed", permissions=0o755)
    assert await named.name() == "renamed"
    # The same URL twice in one session: one request.
    assert site.gets["/tool.txt"] == 1


FETCH = """
import sys

import anyio
import dagger


async def main():
    async with dagger.connection():
        checksum = sys.argv[2] if len(sys.argv) > 2 else None
        print(await dagger.dag.http(sys.argv[1], checksum=checksum).contents(), end="")


anyio.run(main)
"""


async def test_one_download_per_content_across_sessions(kiln, tmp_path, site):
    script = write_script(tmp_path / "fetch.py", FETCH)
    url = f"{site.url}/tool.txt"
    first = kiln.run_python(script, url)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "tool v1\n"
    assert "downloaded 8 B" in first.stderr, first.stderr
    # A new session asks whether it changed, and downloads nothing.
    again = kiln.run_python(script, url)
    assert again.stdout == "tool v1\n" and "not modified since the last download" in again.stderr, again.stderr
    assert (site.gets["/tool.txt"], site.full["/tool.txt"]) == (2, 1)
    # With a checksum whose content is here: not a single request.
    pinned = kiln.run_python(script, url, sha256(b"tool v1\n"))
    assert pinned.stdout == "tool v1\n", pinned.stderr
    assert site.gets["/tool.txt"] == 2
    # Changed content is downloaded again.
    site.files["/tool.txt"] = b"tool v2\n"
    changed = kiln.run_python(script, url)
    assert changed.stdout == "tool v2\n", changed.stderr
    assert site.full["/tool.txt"] == 2


async def test_a_checksum_mismatch_fails(dag, site):
    with pytest.raises(dagger.QueryError, match=r"checksum mismatch: expected sha256:0{64}, the content is sha256:"):
        await dag.http(f"{site.url}/tool.txt", checksum="sha256:" + "0" * 64).contents()
    with pytest.raises(dagger.QueryError, match=r"not a sha256 digest"):
        await dag.http(f"{site.url}/tool.txt", checksum="md5:abc").contents()


async def test_authorization_comes_from_a_secret(dag, site):
    with pytest.raises(dagger.QueryError, match=r"HTTP 401"):
        await dag.http(f"{site.url}/private").contents()
    token = dag.set_secret("http-token", "Bearer t0k3n")
    assert await dag.http(f"{site.url}/private", auth_header=token).contents() == "private\n"


async def test_transient_failures_are_retried_and_missing_files_are_not(dag, site):
    assert await dag.http(f"{site.url}/flaky").contents() == "flaky\n"
    assert site.gets["/flaky"] == 2
    with pytest.raises(dagger.QueryError, match=r"http http://127\.0\.0\.1:\d+/nope: GET answered HTTP 404"):
        await dag.http(f"{site.url}/nope").contents()
    assert site.gets["/nope"] == 1


async def test_dockerfile_add_of_a_url(dag, site, tmp_path):
    pinned = sha256(b"tool v1\n")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "Dockerfile").write_text(
        "FROM busybox\n"
        f"ADD {site.url}/tool.txt /opt/\n"
        f"ADD --checksum={pinned} {site.url}/tool.txt /opt/pinned.txt\n"
    )
    image = dag.host().directory(str(good)).docker_build()
    assert await image.file("/opt/tool.txt").contents() == "tool v1\n"
    assert await image.file("/opt/pinned.txt").contents() == "tool v1\n"
    assert await image.with_exec(["stat", "-c", "%a", "/opt/tool.txt"]).stdout() == "600\n"
    (bad / "Dockerfile").write_text(f"FROM busybox\nADD --checksum=sha256:{'1' * 64} {site.url}/tool.txt /x\n")
    with pytest.raises(dagger.QueryError, match=r"Dockerfile:2: ADD: .*checksum mismatch"):
        await dag.host().directory(str(bad)).docker_build().sync()
