// Services and container networking driven by the official TypeScript SDK:
// a PostgreSQL service bound as `db`, two services at once, one service
// shared by parallel clients, a failing service, Service.up and Host.service
// from the host's side, and NAT to a stand-in internet (a server in a
// network namespace of the test's own). Needs root, as kiln does.

import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import { connection, dag, ReturnType } from "@dagger.io/dagger";

// This process's own numbers: several suites may run at once.
const N = (process.pid % 200) + 20;

function webService(text, port) {
  return dag
    .container()
    .from("busybox")
    .withNewFile("/srv/index.html", text)
    .withExposedPort(port)
    .asService({ args: ["httpd", "-f", "-p", String(port), "-h", "/srv"] });
}

const client = () => dag.container().from("busybox");

// What the official image's entrypoint does with POSTGRES_USER, _PASSWORD
// and _DB, for the Debian server of the fixture.
const START_POSTGRES = `#!/bin/sh
set -eu
export PGDATA=/tmp/pgdata
mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA"
echo "$POSTGRES_PASSWORD" > /tmp/pwfile && chown postgres /tmp/pwfile
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
as_postgres initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile --auth-host=md5 >/dev/null
echo "host all all 0.0.0.0/0 md5" >> "$PGDATA/pg_hba.conf"
echo "CREATE DATABASE $POSTGRES_DB OWNER $POSTGRES_USER;" | as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*' -k /tmp
`;

function get(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = "";
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve(body));
      })
      .on("error", reject);
  });
}

async function getRetrying(url) {
  let last;
  for (let i = 0; i < 100; i++) {
    try {
      return await get(url);
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new Error(`${url} never answered: ${last}`);
}

// A server in a network namespace of its own, behind a veth pair.
async function standInInternet() {
  const ns = `kiln-ts-inet${N}`;
  const [hostIf, nsIf] = [`kti${N}h`, `kti${N}n`];
  const [hostIp, nsIp] = [`10.242.${N}.1`, `10.242.${N}.2`];
  const ip = (...args) => execFileSync("ip", args);
  ip("netns", "add", ns);
  ip("link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", ns);
  ip("addr", "add", `${hostIp}/30`, "dev", hostIf);
  ip("link", "set", hostIf, "up");
  ip("-n", ns, "addr", "add", `${nsIp}/30`, "dev", nsIf);
  ip("-n", ns, "link", "set", nsIf, "up");
  const www = mkdtempSync(join(tmpdir(), "kiln-ts-www-"));
  writeFileSync(join(www, "hello.txt"), "from the internet\n");
  const server = spawn("ip", ["netns", "exec", ns, "python3", "-m", "http.server", "--bind", nsIp, "18080"], {
    cwd: www,
    stdio: "ignore",
  });
  for (let i = 0; i < 100; i++) {
    const up = await new Promise((resolve) => {
      const s = net.connect(18080, nsIp, () => (s.end(), resolve(true)));
      s.on("error", () => resolve(false));
    });
    if (up) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url: `http://${nsIp}:18080/hello.txt`,
    close() {
      server.kill();
      try {
        ip("link", "del", hostIf);
      } catch {}
      ip("netns", "del", ns);
    },
  };
}

test("services and networking through the TypeScript SDK", async (t) => {
  await connection(async () => {
    await t.test("a PostgreSQL service bound as db: data round-trips", async () => {
      const postgres = dag
        .container()
        .from("postgres:15")
        .withEnvVariable("POSTGRES_USER", "test")
        .withEnvVariable("POSTGRES_PASSWORD", "test")
        .withEnvVariable("POSTGRES_DB", "testdb")
        .withNewFile("/usr/local/bin/start-postgres", START_POSTGRES, { permissions: 0o755 })
        .withExposedPort(5432)
        .asService({ args: ["start-postgres"] });
      const out = await dag
        .container()
        .from("postgres:15")
        .withServiceBinding("db", postgres)
        .withEnvVariable("PGPASSWORD", "test")
        .withExec([
          "psql",
          "-h",
          "db",
          "-U",
          "test",
          "-d",
          "testdb",
          "-v",
          "ON_ERROR_STOP=1",
          "-tA",
          "-c",
          "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('typed round trip'); SELECT body FROM notes;",
        ])
        .stdout();
      assert.equal(out.trim().split("\n").at(-1), "typed round trip");
    });

    await t.test("two services bound at once", async () => {
      const out = await client()
        .withServiceBinding("a", webService("from a", 8101))
        .withServiceBinding("b", webService("from b", 8102))
        .withExec(["sh", "-c", "wget -q -O- http://a:8101/; echo; wget -q -O- http://b:8102/"])
        .stdout();
      assert.equal(out, "from a\nfrom b");
    });

    await t.test("one service used by parallel clients starts once", async () => {
      const svc = dag
        .container()
        .from("busybox")
        .withMountedCache("/count", dag.cacheVolume("ts-service-starts"))
        .withExposedPort(8080)
        .asService({
          args: [
            "sh",
            "-c",
            "n=$(cat /count/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /count/n; " +
              "mkdir -p /srv; echo started $n > /srv/index.html; exec httpd -f -p 8080 -h /srv",
          ],
        });
      const fetch = (tag) =>
        client()
          .withServiceBinding("svc", svc)
          .withEnvVariable("TAG", tag)
          .withExec(["sh", "-c", "sleep 1; wget -q -O- http://svc:8080/"])
          .stdout();
      const [first, second] = await Promise.all([fetch("one"), fetch("two")]);
      assert.equal(first, second);
      assert.match(first, /^started \d+/);
    });

    await t.test("a service that exits fails its client with its output", async () => {
      const broken = dag
        .container()
        .from("busybox")
        .withExposedPort(5432)
        .asService({ args: ["sh", "-c", "echo 'FATAL: no config' >&2; exit 4"] });
      await assert.rejects(
        client().withServiceBinding("db", broken).withExec(["true"]).sync(),
        (e) => {
          assert.match(e.message, /aliased as db/);
          assert.match(e.message, /exit code: 4/);
          assert.match(e.message, /FATAL: no config/);
          return true;
        },
      );
    });

    await t.test("Service.up opens the service's port on the host", async () => {
      // `up` answers only when its session ends: a process of its own runs
      // it, and is ended once the port answered.
      const script = join(dirname(fileURLToPath(import.meta.url)), `.up-${process.pid}.mjs`);
      writeFileSync(
        script,
        `import { connection, dag } from "@dagger.io/dagger";
await connection(async () => {
  await dag.container().from("busybox").withNewFile("/srv/index.html", "up from ts").withExposedPort(8080)
    .asService({ args: ["httpd", "-f", "-p", "8080", "-h", "/srv"] })
    .up({ ports: [{ frontend: 18790, backend: 8080 }] });
});
`,
      );
      const up = spawn(process.execPath, [script], { stdio: "ignore" });
      try {
        assert.equal(await getRetrying("http://127.0.0.1:18790/"), "up from ts");
      } finally {
        up.kill();
        rmSync(script, { force: true });
      }
    });

    await t.test("Host.service: a container reaches a server on the host's loopback", async () => {
      const server = http.createServer((_, res) => res.end("hello from the ts host"));
      await new Promise((r) => server.listen(0, "127.0.0.1", r));
      try {
        const port = server.address().port;
        const out = await client()
          .withServiceBinding("hostweb", dag.host().service([{ backend: port, frontend: 80 }]))
          .withExec(["wget", "-q", "-O-", "http://hostweb/"])
          .stdout();
        assert.equal(out, "hello from the ts host");
      } finally {
        server.close();
      }
    });

    await t.test("with outbound off, an engine's container cannot reach it", async () => {
      const internet = await standInInternet();
      const work = mkdtempSync(join(tmpdir(), "kiln-ts-outbound-"));
      // Next to the suite, so that the script finds the SDK in node_modules.
      const script = join(dirname(fileURLToPath(import.meta.url)), `.outbound-${process.pid}.mjs`);
      const config = join(work, "kiln.toml");
      const env = { ...process.env, KILN_CONFIG: config, KILN_STATE_DIR: join(work, "state") };
      for (const k of ["DAGGER_SESSION_PORT", "DAGGER_SESSION_TOKEN", "_EXPERIMENTAL_DAGGER_CLI_BIN"]) delete env[k];
      try {
        writeFileSync(
          config,
          readFileSync(process.env.KILN_CONFIG, "utf8") +
            `[network]\nbridge = "kto${N}"\nsubnet = "10.243.${N}.0/24"\noutbound = false\n`,
        );
        writeFileSync(
          script,
          `import { connection, dag, ReturnType } from "@dagger.io/dagger";
await connection(async () => {
  const ctr = dag.container().from("busybox")
    .withExec(["wget", "-q", "-T", "3", "-O-", "${internet.url}"], { expect: ReturnType.Any });
  console.log("exit", await ctr.exitCode());
});
`,
        );
        const run = spawnSync(process.env.KILN_BIN, ["run", "--", "node", script], { env, encoding: "utf8" });
        assert.equal(run.status, 0, run.stderr);
        const exit = run.stdout.split("\n").find((l) => l.startsWith("exit "));
        assert.ok(exit && exit !== "exit 0", `the request got through: ${run.stdout}`);
      } finally {
        const stop = spawnSync(process.env.KILN_BIN, ["engine", "stop", "--remove-network"], { env, encoding: "utf8" });
        rmSync(script, { force: true });
        rmSync(work, { recursive: true, force: true });
        internet.close();
        assert.equal(stop.status, 0, stop.stderr);
      }
      assert.ok(!execFileSync("ip", ["-br", "link"], { encoding: "utf8" }).includes(`kto${N} `));
    });

    await t.test("a container reaches the stand-in internet through NAT", async () => {
      const internet = await standInInternet();
      try {
        const ctr = client()
          .withEnvVariable("NONCE", String(process.hrtime.bigint()))
          .withExec(["wget", "-q", "-O-", internet.url], { expect: ReturnType.Any });
        assert.equal(await ctr.exitCode(), 0, await ctr.stderr());
        assert.equal(await ctr.stdout(), "from the internet\n");
      } finally {
        internet.close();
      }
    });
  });
});
