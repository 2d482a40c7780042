"""User-facing errors: one precise line that names the bad input."""

from pathlib import Path

import dagger
import pytest

pytestmark = pytest.mark.anyio


def one_line(err: Exception) -> str:
    msg = str(err).strip()
    assert msg, "empty error message"
    assert "\n" not in msg, f"error spans several lines:\n{msg}"
    assert "internal error" not in msg.lower(), msg
    return msg


@pytest.mark.parametrize("ref", ["busybox:::bad", "Not A Reference", "busybox@sha256:nothex"])
async def test_malformed_image_reference(dag, ref):
    with pytest.raises(dagger.QueryError) as info:
        await dag.container().from_(ref).sync()
    assert ref in one_line(info.value)


@pytest.mark.parametrize("name", ["direct", "mirrored"])
async def test_image_missing_from_registry(dag, registry, name):
    # "mirrored" is a docker.io name: sdk-env.sh's config sets mirrors_only,
    # so kiln asks the loopback mirror and stops there (no Docker Hub).
    ref = f"{registry}/library/no-such-image:1.0" if name == "direct" else "no-such-image:1.0"
    with pytest.raises(dagger.QueryError) as info:
        await dag.container().from_(ref).sync()
    msg = one_line(info.value)
    assert ref in msg, msg


async def test_missing_host_directory(dag, tmp_path: Path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(dagger.QueryError) as info:
        await dag.host().directory(str(missing)).entries()
    assert str(missing) in one_line(info.value)


async def test_missing_host_file(dag, tmp_path: Path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(dagger.QueryError) as info:
        await dag.host().file(str(missing)).contents()
    assert str(missing) in one_line(info.value)


async def test_missing_path_in_container(dag):
    ctr = dag.container().from_("busybox")
    with pytest.raises(dagger.QueryError) as info:
        await ctr.file("/etc/no-such-file").contents()
    assert "/etc/no-such-file" in one_line(info.value)
    with pytest.raises(dagger.QueryError) as info:
        await ctr.directory("/no/such/dir").entries()
    assert "/no/such/dir" in one_line(info.value)


async def test_entries_of_a_file_says_so(dag):
    d = dag.directory().with_new_file("notes.txt", "x")
    with pytest.raises(dagger.QueryError) as info:
        await d.entries(path="notes.txt")
    assert one_line(info.value) == "/notes.txt is a file, not a directory"


async def test_host_directory_that_is_a_file_says_so(dag, tmp_path: Path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(dagger.QueryError) as info:
        await dag.host().directory(str(f)).entries()
    msg = one_line(info.value)
    assert str(f) in msg and "is a file, not a directory" in msg, msg


async def test_host_file_that_is_a_directory_says_so(dag, tmp_path: Path):
    with pytest.raises(dagger.QueryError) as info:
        await dag.host().file(str(tmp_path)).contents()
    msg = one_line(info.value)
    assert str(tmp_path) in msg and "is a directory, not a file" in msg, msg


async def test_files_of_several_megabytes_go_through_the_api(dag):
    contents = "0123456789abcdef" * (3 << 16)  # 3 MiB, over axum's default body limit
    f = dag.directory().with_new_file("big.txt", contents).file("big.txt")
    assert await f.size() == len(contents)
