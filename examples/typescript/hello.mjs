// The smallest kiln pipeline with the Dagger TypeScript SDK: run one command
// in a busybox container and print what it wrote.
//
//   kiln run -- node examples/typescript/hello.mjs
//
// (Install the SDK first: see examples/typescript/README.md.)

import { connection, dag } from "@dagger.io/dagger";

await connection(async () => {
  const out = await dag
    .container()
    .from("busybox")
    .withExec(["echo", "hello from kiln"])
    .stdout();
  process.stdout.write(out);
});
