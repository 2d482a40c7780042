"""IDs: sync, loading objects back by ID, IDs that outlive their session."""

from pathlib import Path

import dagger
import pytest

from conftest import write_script

pytestmark = pytest.mark.anyio

UUID = ["cat", "/proc/sys/kernel/random/uuid"]


async def test_sync_then_field_through_node(dag):
    # sync() returns the ID; the SDK then reads fields through node(id:).
    ctr = await dag.container().from_("busybox").with_exec(["sh", "-c", "echo synced"]).sync()
    assert await ctr.stdout() == "synced\n"


async def test_load_container_from_id(dag):
    ctr = dag.container().from_("busybox").with_env_variable("STAGE", "one").with_exec(UUID)
    first = await ctr.stdout()
    ctr_id = await ctr.id()
    # dagger-io 0.21 returns IDs as str but types the loaders with the
    # legacy per-type scalars, so the caller wraps them.
    loaded = dag.load_container_from_id(dagger.ContainerID(ctr_id))
    # Same exec, not a new one: the output is identical.
    assert await loaded.stdout() == first
    assert await loaded.env_variable("STAGE") == "one"
    # dag.node(obj) sends the object's ID to node(id:): the same object back.
    assert await dag.node(loaded).id() == ctr_id
    # A loaded object is a normal object to build on.
    nxt = loaded.with_exec(["sh", "-c", 'echo "stage=$STAGE"'])
    assert await nxt.stdout() == "stage=one\n"


async def test_directory_and_file_ids_as_arguments(dag):
    d = dag.directory().with_new_file("x.txt", "x\n")
    d_id = await d.id()
    f_id = await d.file("x.txt").id()
    assert d_id != f_id
    again = dag.load_directory_from_id(dagger.DirectoryID(d_id))
    assert await again.entries() == ["x.txt"]
    assert await dag.load_file_from_id(dagger.FileID(f_id)).contents() == "x\n"


async def test_wrong_type_id_is_rejected(dag):
    f_id = await dag.directory().with_new_file("x.txt", "x\n").file("x.txt").id()
    with pytest.raises(dagger.QueryError) as info:
        await dag.load_container_from_id(dagger.ContainerID(f_id)).stdout()
    assert "File" in str(info.value)


FIRST = """
import sys, anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection():
        ctr = dag.container().from_("busybox").with_exec(["cat", "/proc/sys/kernel/random/uuid"])
        ctr = await ctr.sync()
        print(await ctr.id())
        print(await ctr.stdout(), end="")

anyio.run(main)
"""

SECOND = """
import sys, anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection():
        ctr = dag.load_container_from_id(dagger.ContainerID(sys.argv[1]))
        print(await ctr.stdout(), end="")
        print(await ctr.with_exec(["echo", "built on a loaded ID"]).stdout(), end="")

anyio.run(main)
"""


@pytest.mark.slow
def test_ids_survive_across_sessions(kiln, tmp_path: Path):
    first = kiln.run_python(write_script(tmp_path / "first.py", FIRST)).check()
    ctr_id, uuid = first.stdout.splitlines()
    assert len(uuid) == 36

    second = kiln.run_python(write_script(tmp_path / "second.py", SECOND), ctr_id).check()
    assert second.stdout.splitlines() == [uuid, "built on a loaded ID"]
    ran, cached, failed = second.summary()
    # Only the new echo runs; the uuid exec comes from the cache.
    assert (ran, failed) == (1, 0), second.stderr
    assert cached >= 1


@pytest.mark.slow
def test_unknown_id_is_a_clear_error(kiln, tmp_path: Path):
    script = write_script(tmp_path / "second.py", SECOND)
    res = kiln.run_python(script, "kiln1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert res.returncode != 0
    assert "ID" in res.stderr and "kiln1.AAAA" in res.stderr, res.stderr
