"""Services: containers bound under an alias, health checks, sharing,
failures with the service's output, and the host's side (Service.up,
Host.service, Host.tunnel). Needs the engine's container network (root)."""

import asyncio
import http.server
import os
import subprocess
import threading
import time
import urllib.request

import dagger
import pytest

from conftest import KILN_BIN, write_script

pytestmark = pytest.mark.anyio


def http_service(dag, text: str, port: int = 8080) -> dagger.Service:
    """busybox httpd serving `text` at /index.html on `port`."""
    return (
        dag.container()
        .from_("busybox")
        .with_new_file("/srv/index.html", text)
        .with_exposed_port(port, description="web")
        .as_service(args=["httpd", "-f", "-v", "-p", str(port), "-h", "/srv"])
    )


def client(dag) -> dagger.Container:
    return dag.container().from_("busybox")


# The PostgreSQL fixture is Debian's server (no official-image entrypoint):
# this script does what that entrypoint does with POSTGRES_USER, _PASSWORD
# and _DB, then runs the server in the foreground as the postgres user.
START_POSTGRES = """#!/bin/sh
set -eu
export PGDATA=/tmp/pgdata
mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA"
echo "$POSTGRES_PASSWORD" > /tmp/pwfile && chown postgres /tmp/pwfile
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
as_postgres initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile --auth-host=md5 --auth-local=trust >/dev/null
echo "host all all 0.0.0.0/0 md5" >> "$PGDATA/pg_hba.conf"
echo "CREATE DATABASE $POSTGRES_DB OWNER $POSTGRES_USER;" | as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*' -k /tmp
"""


def postgres_service(dag) -> dagger.Service:
    return (
        dag.container()
        .from_("postgres:15")
        .with_env_variable("POSTGRES_USER", "test")
        .with_env_variable("POSTGRES_PASSWORD", "test")
        .with_env_variable("POSTGRES_DB", "testdb")
        .with_new_file("/usr/local/bin/start-postgres", START_POSTGRES, permissions=0o755)
        .with_exposed_port(5432)
        .as_service(args=["start-postgres"])
    )


async def test_the_articles_shape_a_postgres_service_bound_as_db(dag):
    postgres = postgres_service(dag)
    out = await (
        dag.container()
        .from_("postgres:15")
        .with_service_binding("db", postgres)
        .with_env_variable("DATABASE_URL", "postgresql://test:test@db:5432/testdb")
        .with_exec(
            [
                "psql",
                "$DATABASE_URL",
                "-v",
                "ON_ERROR_STOP=1",
                "-tA",
                "-c",
                "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('round trip'); SELECT body FROM notes;",
            ],
            expand=True,
        )
        .stdout()
    )
    assert out.strip().splitlines()[-1] == "round trip", out


async def test_a_bound_service_answers_under_its_alias_and_its_hostname(dag):
    web = http_service(dag, "hello from web")
    hostname = await web.hostname()
    out = await (
        client(dag)
        .with_service_binding("web", web)
        .with_env_variable("HOST", hostname)
        .with_exec(["sh", "-c", "wget -q -O- http://web:8080/ && wget -q -O- http://$HOST:8080/"])
        .stdout()
    )
    assert out == "hello from webhello from web"
    assert len(hostname) == 13
    assert await web.endpoint() == f"{hostname}:8080"
    assert await web.endpoint(port=8080, scheme="http") == f"http://{hostname}:8080"
    ports = await web.ports()
    assert [(await p.port(), await p.protocol(), await p.description()) for p in ports] == [
        (8080, dagger.NetworkProtocol.TCP, "web")
    ]


async def test_a_started_service_is_reachable_by_hostname_from_any_container_of_the_session(dag):
    web = await http_service(dag, "started explicitly", 8090).start()
    url = await web.endpoint(scheme="http")
    out = await client(dag).with_env_variable("URL", url).with_exec(["sh", "-c", "wget -q -O- $URL/"]).stdout()
    assert out == "started explicitly"
    await web.stop()


async def test_two_services_bound_at_once(dag):
    out = await (
        client(dag)
        .with_service_binding("a", http_service(dag, "from a", 8001))
        .with_service_binding("b", http_service(dag, "from b", 8002))
        .with_exec(["sh", "-c", "wget -q -O- http://a:8001/; echo; wget -q -O- http://b:8002/"])
        .stdout()
    )
    assert out == "from a\nfrom b"


async def test_an_alias_resolves_only_where_it_is_bound(dag):
    web = http_service(dag, "bound only")
    out = await (
        client(dag)
        .with_exec(["sh", "-c", "wget -q -T 2 -O- http://web:8080/ || echo unresolved"])
        .stdout()
    )
    assert "unresolved" in out
    bound = await client(dag).with_service_binding("web", web).with_exec(["cat", "/etc/hosts"]).stdout()
    assert " web\n" in bound


async def test_one_service_used_by_parallel_clients_starts_once(dag):
    # The service counts its starts in a cache volume; both clients see 1.
    counter = dag.cache_volume("service-starts-counter")
    svc = (
        dag.container()
        .from_("busybox")
        .with_mounted_cache("/count", counter)
        .with_exposed_port(8080)
        .as_service(
            args=[
                "sh",
                "-c",
                "n=$(cat /count/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /count/n; "
                "mkdir -p /srv; echo started $n > /srv/index.html; exec httpd -f -p 8080 -h /srv",
            ]
        )
    )

    async def fetch(tag: str) -> str:
        return await (
            client(dag)
            .with_service_binding("svc", svc)
            .with_env_variable("TAG", tag)
            .with_exec(["sh", "-c", "sleep 1; wget -q -O- http://svc:8080/"])
            .stdout()
        )

    first, second = await asyncio.gather(fetch("one"), fetch("two"))
    assert first == second, (first, second)
    assert first.startswith("started ")


async def test_a_service_that_exits_fails_its_client_with_its_output(dag):
    broken = (
        dag.container()
        .from_("busybox")
        .with_exposed_port(5432)
        .as_service(args=["sh", "-c", "echo 'FATAL: data directory is missing' >&2; exit 3"])
    )
    with pytest.raises(dagger.QueryError) as e:
        await client(dag).with_service_binding("db", broken).with_exec(["true"]).sync()
    message = str(e.value)
    assert "aliased as db" in message, message
    assert "exit code: 3" in message, message
    assert "FATAL: data directory is missing" in message, message


async def test_service_up_opens_its_port_on_the_host(dag):
    web = http_service(dag, "up and running", 8080)
    task = asyncio.create_task(web.up(ports=[dagger.PortForward(backend=8080, frontend=18780)]))
    try:
        body = await asyncio.to_thread(fetch_retrying, "http://127.0.0.1:18780/")
        assert body == "up and running"
    finally:
        task.cancel()


async def test_host_tunnel_reaches_a_service_from_the_host(dag):
    web = http_service(dag, "through the tunnel", 8080)
    tunnel = await dag.host().tunnel(web).start()
    endpoint = await tunnel.endpoint()
    assert endpoint.startswith("127.0.0.1:")
    body = await asyncio.to_thread(fetch_retrying, f"http://{endpoint}/")
    assert body == "through the tunnel"
    await tunnel.stop()


async def test_host_service_lets_a_container_reach_a_server_on_the_hosts_loopback(dag):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from the host"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host_svc = dag.host().service([dagger.PortForward(backend=port, frontend=80)])
        out = await (
            client(dag)
            .with_service_binding("hostweb", host_svc)
            .with_exec(["wget", "-q", "-O-", "http://hostweb/"])
            .stdout()
        )
        assert out == "hello from the host"
    finally:
        server.shutdown()


def fetch_retrying(url: str) -> str:
    """GET `url`, retrying while the port is not open yet (up starts it)."""
    last = None
    for _ in range(100):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered: {last}")


SERVICE_PIPELINE = """
import sys, anyio, dagger
async def main():
    async with dagger.connection(dagger.Config(log_output=sys.stderr)):
        dag = dagger.dag
        web = (
            dag.container().from_("busybox")
            .with_new_file("/srv/index.html", sys.argv[1])
            .with_exposed_port(8080)
            .as_service(args=["httpd", "-f", "-v", "-p", "8080", "-h", "/srv"])
        )
        out = await (
            dag.container().from_("busybox").with_service_binding("web", web)
            .with_exec(["wget", "-q", "-O-", "http://web:8080/"]).stdout()
        )
        print("got", out)
anyio.run(main)
"""


def test_an_exec_bound_to_a_service_is_cached_by_the_services_definition(kiln, tmp_path):
    script = write_script(tmp_path / "pipeline.py", SERVICE_PIPELINE)
    first = kiln.run_python(script, "version one").check()
    assert "got version one" in first.stdout
    # Progress shows the service as an entry of its own, started and stopped.
    service_lines = [line for line in first.stderr.splitlines() if "service " in line]
    assert any(" RUN " in line for line in service_lines), first.stderr
    assert any("ready" in line for line in service_lines), first.stderr
    assert any(" DONE " in line for line in service_lines), first.stderr
    # Its output (httpd's request log) is kept for `kiln logs`.
    logs = subprocess.run([KILN_BIN, "logs"], env=kiln.env, capture_output=True, text=True, check=True)
    assert "response:200" in logs.stdout, logs.stdout

    # Unchanged: the exec is cached and the service is not even started.
    again = kiln.run_python(script, "version one").check()
    assert "got version one" in again.stdout
    assert "service " not in again.stderr, again.stderr
    assert again.summary()[0] == 0, again.stderr

    # The service's definition changed: the bound exec runs again.
    changed = kiln.run_python(script, "version two").check()
    assert "got version two" in changed.stdout
    assert any("service " in line and " RUN " in line for line in changed.stderr.splitlines()), changed.stderr


async def test_ports_skipped_by_the_health_check_and_expanded_args(dag):
    # Port 9 never listens: skipped, it does not hold the client back. The
    # command's port comes from the container's env (expand).
    svc = (
        dag.container()
        .from_("busybox")
        .with_env_variable("PORT", "8095")
        .with_new_file("/srv/index.html", "expanded")
        .with_exposed_port(8095)
        .with_exposed_port(9, experimental_skip_healthcheck=True)
        .with_exposed_port(9999)
        .without_exposed_port(9999)
        .as_service(args=["httpd", "-f", "-p", "$PORT", "-h", "/srv"], expand=True)
    )
    ports = [(await p.port(), await p.experimental_skip_healthcheck()) for p in await svc.ports()]
    assert ports == [(8095, False), (9, True)]
    out = await client(dag).with_service_binding("svc", svc).with_exec(["wget", "-q", "-O-", "http://svc:8095/"]).stdout()
    assert out == "expanded"


def test_a_started_service_stops_when_its_session_ends(kiln, tmp_path):
    port = 20000 + os.getpid() % 20000
    script = write_script(
        tmp_path / "start.py",
        f"""
import sys, anyio, dagger
async def main():
    async with dagger.connection(dagger.Config(log_output=sys.stderr)):
        svc = (
            dagger.dag.container().from_("busybox").with_exposed_port({port})
            .as_service(args=["httpd", "-f", "-p", "{port}"])
        )
        await svc.start()
        print("started", await svc.hostname())
anyio.run(main)
""",
    )
    run = kiln.run_python(script).check()
    assert "started " in run.stdout
    needle = f"httpd -f -p {port}"
    for _ in range(100):
        if not any(needle in cmdline for cmdline in processes()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the service ({needle}) still runs after its session ended")


def processes() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found
