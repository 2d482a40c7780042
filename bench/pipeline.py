"""The benchmark's Dockerfile-equivalent pipeline through the Python SDK:
FROM busybox; RUN; COPY a source directory; three RUNs.

    kiln run -- python3 bench/pipeline.py SRC_DIR
"""

import sys

import anyio
import dagger
from dagger import dag

STEPS = [
    "mkdir -p /app && echo prepared > /app/prepared",
    None,  # COPY src /app/src
    "cd /app && ls src | wc -l > files.txt",
    "cd /app && cat src/* | md5sum > sum.txt",
    "cd /app && tar -cf /app.tar src files.txt sum.txt",
]


async def main(src_dir: str):
    async with dagger.connection():
        ctr = dag.container().from_("busybox")
        for step in STEPS:
            if step is None:
                ctr = ctr.with_directory("/app/src", dag.host().directory(src_dir))
            else:
                ctr = ctr.with_exec(["sh", "-c", step])
        await ctr.sync()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
