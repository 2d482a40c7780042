// A multi-step kiln pipeline with the Dagger TypeScript SDK:
//
//   source (host dir) ─┬─ lint  ──┐
//                      ├─ test  ──┼─ package ─ export to the host
//                      └─ build ──┘
//
// lint, test and build are independent, so they run at the same time
// (Promise.all); package waits for all three and uses build's output.
//
//   kiln run -- node examples/typescript/pipeline.mjs [OUT_DIR]
//
// OUT_DIR defaults to a new temporary directory; the script prints it.

import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { connection, dag } from "@dagger.io/dagger";

const here = dirname(fileURLToPath(import.meta.url));
const outDir = resolve(process.argv[2] ?? mkdtempSync(join(tmpdir(), "kiln-pipeline-")));

await connection(async () => {
  // The application's sources, without local build output.
  const source = dag.host().directory(join(here, "app"), { exclude: ["dist"] });

  const base = dag
    .container()
    .from("debian:bookworm")
    .withDirectory("/app", source)
    .withWorkdir("/app")
    .withEnvVariable("APP_VERSION", "1.0.0");

  // Three independent branches. Each one is a lazy pipeline until a value is
  // asked for; asking for all three at once lets kiln run them in parallel.
  const lint = base.withExec(["sh", "-c", "for f in *.sh; do sh -n \"$f\" && echo \"lint ok: $f\"; done"]);
  const test = base.withExec(["sh", "test.sh"]);
  const build = base.withExec([
    "sh",
    "-c",
    [
      "mkdir -p dist",
      "cp greet.sh dist/greet",
      "chmod 0755 dist/greet",
      'echo "$APP_VERSION" > dist/VERSION',
      "cd dist && sha256sum greet VERSION > SHA256SUMS",
    ].join(" && "),
  ]);

  const [lintLog, testLog, buildLog] = await Promise.all([
    lint.stdout(),
    test.stdout(),
    build.sync().then(() => "built dist/\n"),
  ]);
  process.stdout.write(`--- lint\n${lintLog}--- test\n${testLog}--- build\n${buildLog}`);

  // Package: a fresh busybox image with only the build output in it. Check
  // that it runs there, then export the artifacts to the host.
  const dist = build.directory("/app/dist");
  const runtime = dag
    .container()
    .from("busybox")
    .withDirectory("/opt/greet", dist)
    .withEntrypoint(["/opt/greet/greet"]);
  const smoke = await runtime.withExec(["pipeline"], { useEntrypoint: true }).stdout();
  process.stdout.write(`--- smoke test\n${smoke}`);

  await dist.export(outDir);
  const files = await dist.entries();
  process.stdout.write(`--- exported ${files.sort().join(", ")} to ${outDir}\n`);
});
