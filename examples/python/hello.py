"""Hello world: the smallest pipeline.

Starts a container from the `busybox` image, runs one command in it and
prints what the command wrote. Run it with kiln serving the session:

    kiln run -- python3 examples/python/hello.py

(or `_EXPERIMENTAL_DAGGER_CLI_BIN=$(command -v kiln) python3 examples/python/hello.py`).
It uses nothing but the official Dagger SDK (`pip install dagger-io==0.21.11`).
"""

import anyio
import dagger
from dagger import dag


async def main():
    async with dagger.connection():
        greeting = await (
            dag.container()
            .from_("busybox")
            .with_env_variable("NAME", "kiln")
            .with_exec(["sh", "-c", 'echo "Hello from $NAME, in a container running $(uname -s)!"'])
            .stdout()
        )
    print(greeting, end="")


anyio.run(main)
