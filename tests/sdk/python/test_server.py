"""The session endpoint itself, spoken to with raw HTTP."""

import base64
import json
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import session_line

pytestmark = pytest.mark.slow


# Loopback only: never through a proxy from the environment.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(port: int, body: bytes, auth: str | None) -> tuple[int, dict | str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/query",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with DIRECT.open(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


@pytest.fixture
def session(kiln):
    proc = kiln.session()
    try:
        line = session_line(proc)
        yield proc, line["port"], line["session_token"]
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_session_line_and_exit_on_stdin_close(session):
    proc, port, token = session
    assert isinstance(port, int) and port > 0
    assert isinstance(token, str) and len(token) >= 16
    status, body = post(port, json.dumps({"query": "{ version }"}).encode(), basic(token))
    assert status == 200 and body["data"]["version"].startswith("v0.21"), body
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def test_missing_or_wrong_token_is_401(session):
    _, port, token = session
    query = json.dumps({"query": "{ version }"}).encode()
    for auth in (None, basic("not-the-token"), basic(token + "x"), "Bearer " + token, basic("")):
        status, body = post(port, query, auth)
        assert status == 401, (auth, status, body)
        assert "data" not in str(body)
    # The Rust SDK's URL-safe base64 without padding is accepted too.
    urlsafe = "Basic " + base64.urlsafe_b64encode(f"{token}:".encode()).decode().rstrip("=")
    assert post(port, query, urlsafe)[0] == 200


def test_unknown_field_is_a_graphql_error(session):
    _, port, token = session
    status, body = post(port, json.dumps({"query": "{ container { noSuchField } }"}).encode(), basic(token))
    assert status < 500, (status, body)
    assert isinstance(body, dict) and body.get("errors"), body
    assert "noSuchField" in body["errors"][0]["message"]
    assert not body.get("data")


def test_bad_argument_type_and_garbage_body(session):
    _, port, token = session
    q = '{ container { from(address: 42) { id } } }'
    status, body = post(port, json.dumps({"query": q}).encode(), basic(token))
    assert status < 500 and body["errors"], (status, body)
    status, body = post(port, b"this is not json", basic(token))
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and body["errors"], body
    # Still serving after the bad requests.
    status, body = post(port, json.dumps({"query": "{ defaultPlatform }"}).encode(), basic(token))
    assert status == 200 and body["data"]["defaultPlatform"].startswith("linux/"), body


def test_exec_error_extensions_on_the_wire(session):
    _, port, token = session
    q = '{ container { from(address: "busybox") { withExec(args: ["sh", "-c", "echo e >&2; exit 7"]) { stdout } } } }'
    status, body = post(port, json.dumps({"query": q}).encode(), basic(token))
    assert status == 200, body
    ext = body["errors"][0]["extensions"]
    assert ext["_type"] == "EXEC_ERROR"
    assert ext["exitCode"] == 7
    assert ext["stderr"] == "e\n"
    assert ext["cmd"] == ["sh", "-c", "echo e >&2; exit 7"]


def test_a_single_string_for_a_list_argument_is_a_list_of_one(session):
    _, port, token = session
    q = '{ container { from(address: "busybox") { withExec(args: "pwd") { stdout } } } }'
    status, body = post(port, json.dumps({"query": q}).encode(), basic(token))
    assert status == 200 and not body.get("errors"), body
    assert body["data"]["container"]["from"]["withExec"]["stdout"] == "/\n"


def test_request_bodies_over_the_limit_get_a_graphql_error_naming_it(session):
    _, port, token = session
    big = "x" * (257 << 20)
    status, body = post(port, json.dumps({"query": f'{{ directory {{ withNewFile(path: "f", contents: "{big}") {{ id }} }} }}'}).encode(), basic(token))
    assert status == 413, status
    assert "256 MiB" in body["errors"][0]["message"], body
    # A missing token is refused before the body is read.
    status, _ = post(port, b"{}", None)
    assert status == 401
