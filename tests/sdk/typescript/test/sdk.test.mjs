// End-to-end checks of kiln driven by the official Dagger TypeScript SDK
// (@dagger.io/dagger, pinned in package.json). Run through run.sh, which
// starts the suite under `kiln run` (and again with the SDK spawning
// `kiln session` itself).
//
// The whole suite shares one connection, the way a real pipeline program
// does: the subtests run inside `connection()`.

import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { connect, connection, dag, ExecError, ReturnType } from "@dagger.io/dagger";

// A small host tree: two files to keep, two to exclude.
function makeHostTree() {
  const root = mkdtempSync(join(tmpdir(), "kiln-ts-sdk-"));
  const src = join(root, "src");
  mkdirSync(join(src, "sub"), { recursive: true });
  mkdirSync(join(src, "node_modules", "dep"), { recursive: true });
  writeFileSync(join(src, "a.txt"), "alpha\n");
  writeFileSync(join(src, "sub", "b.txt"), "bravo\n");
  writeFileSync(join(src, "debug.log"), "noise\n");
  writeFileSync(join(src, "node_modules", "dep", "index.js"), "module.exports = 1;\n");
  return { root, src };
}

test("Dagger TypeScript SDK against kiln", async (t) => {
  await connection(async () => {
    await t.test("hello world: stdout of an exec", async () => {
      const out = await dag.container().from("busybox").withExec(["echo", "hi"]).stdout();
      assert.equal(out, "hi\n");
    });

    await t.test("host directory with exclude, mounted and read in a container", async () => {
      const { root, src } = makeHostTree();
      try {
        const dir = dag.host().directory(src, { exclude: ["node_modules", "*.log"] });

        // The directory itself, seen through the API.
        const entries = (await dir.entries()).map((e) => e.replace(/\/$/, "")).sort();
        assert.deepEqual(entries, ["a.txt", "sub"]);
        assert.equal(await dir.file("sub/b.txt").contents(), "bravo\n");

        // Mounted into a container (the SDK sends the directory's ID first).
        const ctr = dag
          .container()
          .from("busybox")
          .withMountedDirectory("/src", dir)
          .withWorkdir("/src");
        const listing = await ctr.withExec(["sh", "-c", "ls -A1 /src | sort"]).stdout();
        assert.equal(listing, "a.txt\nsub\n");
        const text = await ctr.withExec(["cat", "a.txt", "sub/b.txt"]).stdout();
        assert.equal(text, "alpha\nbravo\n");

        // Copied in (withDirectory) and changed, then exported back to the host.
        const out = join(root, "out");
        const exported = await dag
          .container()
          .from("busybox")
          .withDirectory("/work", dir)
          .withExec(["sh", "-c", "tr a-z A-Z < /work/a.txt > /work/upper.txt"])
          .directory("/work")
          .export(out);
        assert.equal(exported, out);
        assert.deepEqual(readdirSync(out).sort(), ["a.txt", "sub", "upper.txt"]);
        assert.equal(readFileSync(join(out, "upper.txt"), "utf8"), "ALPHA\n");
      } finally {
        rmSync(root, { recursive: true, force: true });
      }
    });

    await t.test("a failing command raises ExecError with exit code and output", async () => {
      const script = "echo to-stdout; echo to-stderr >&2; exit 3";
      await assert.rejects(
        dag.container().from("busybox").withExec(["sh", "-c", script]).stdout(),
        (err) => {
          assert.ok(err instanceof ExecError, `expected ExecError, got ${err?.name}: ${err?.message}`);
          assert.equal(err.name, "ExecError");
          assert.equal(err.exitCode, 3);
          // Dagger may or may not keep the final newline here: accept both.
          assert.equal(err.stdout.trimEnd(), "to-stdout");
          assert.equal(err.stderr.trimEnd(), "to-stderr");
          assert.deepEqual(err.cmd, ["sh", "-c", script]);
          assert.equal(err.extensions?._type, "EXEC_ERROR");
          assert.match(err.message, /exit code/);
          return true;
        },
      );
      // sync() is how pipelines usually force a step: it fails the same way.
      await assert.rejects(
        dag.container().from("busybox").withExec(["sh", "-c", "exit 127"]).sync(),
        (err) => err instanceof ExecError && err.exitCode === 127,
      );
    });

    await t.test("expect: ANY lets a failing exit code through", async () => {
      const ctr = dag
        .container()
        .from("busybox")
        .withExec(["sh", "-c", "echo partial; exit 5"], { expect: ReturnType.Any });
      assert.equal(await ctr.exitCode(), 5);
      assert.equal(await ctr.stdout(), "partial\n");
    });
  });
});

test("connect() with an explicit client (checks the engine version)", async () => {
  await connect(async (client) => {
    const out = await client
      .container()
      .from("busybox")
      .withEnvVariable("GREETING", "hello from kiln")
      .withExec(["sh", "-c", 'echo "$GREETING"'])
      .stdout();
    assert.equal(out, "hello from kiln\n");
  });
});
