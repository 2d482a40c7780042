"""Directory and File operations beyond the basics (issue 4)."""

from pathlib import Path

import dagger
import pytest

pytestmark = pytest.mark.anyio


async def test_glob_exists_filter_and_names(dag):
    d = (
        dag.directory()
        .with_new_file("src/main.py", "print(1)")
        .with_new_file("src/util.py", "x = 1")
        .with_new_file("docs/readme.md", "# hi")
        .with_new_directory("empty")
    )
    assert sorted(await d.glob("**/*.py")) == ["src/main.py", "src/util.py"]
    assert await d.glob("*.md") == []
    assert await d.exists("src/main.py", expected_type=dagger.ExistsType.REGULAR_TYPE)
    assert not await d.exists("src", expected_type=dagger.ExistsType.REGULAR_TYPE)
    assert await d.exists("empty", expected_type=dagger.ExistsType.DIRECTORY_TYPE)
    assert not await d.exists("nope")
    assert await d.filter(include=["src/**"]).entries() == ["src/"]
    assert sorted(await d.filter(exclude=["src"]).entries()) == ["docs/", "empty/"]
    assert await d.directory("src").name() == "src/"
    assert await d.file("src/main.py").name() == "main.py"


async def test_with_files_without_files_and_with_name(dag):
    a = dag.directory().with_new_file("a.txt", "A").file("a.txt")
    b = dag.directory().with_new_file("b.txt", "B").file("b.txt")
    d = dag.directory().with_files("bin", [a, b], permissions=0o755)
    assert await d.directory("bin").entries() == ["a.txt", "b.txt"]
    assert await d.without_files(["bin/a.txt"]).directory("bin").entries() == ["b.txt"]
    renamed = a.with_name("renamed.txt")
    assert await renamed.name() == "renamed.txt"
    assert await renamed.contents() == "A"
    out = await dag.container().from_("busybox").with_file("/x", renamed).with_exec(["stat", "-c", "%a", "/x"]).stdout()
    assert out == "644\n"
    stat = await dag.container().from_("busybox").with_directory("/d", d).with_exec(["stat", "-c", "%a", "/d/bin/a.txt"]).stdout()
    assert stat == "755\n"


async def test_digest_is_content_based(dag, tmp_path: Path):
    one = dag.directory().with_new_file("f", "same")
    two = dag.container().from_("busybox").with_new_file("/elsewhere/f", "same").directory("/elsewhere")
    assert await one.digest() == await two.digest()
    assert (await one.digest()).startswith("sha256:")
    assert await one.digest() != await one.with_new_file("g", "more").digest()
    assert await one.file("f").digest() == await two.file("f").digest()


async def test_diff_keeps_only_new_and_changed_entries(dag):
    old = dag.directory().with_new_file("keep", "k").with_new_file("change", "1")
    new = old.with_new_file("change", "2").with_new_file("add/x", "x").without_file("keep")
    delta = old.diff(new)
    assert sorted(await delta.entries()) == ["add/", "change"]
    assert await delta.file("change").contents() == "2"


async def test_directory_file_of_host_tree_is_keyed_by_its_content(kiln, tmp_path: Path):
    from conftest import write_script

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("A")
    (src / "b.txt").write_text("B1")
    script = write_script(
        tmp_path / "p.py",
        f"""
import anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection():
        a = dag.host().directory({str(src)!r}).file("a.txt")
        print(await dag.container().from_("busybox").with_file("/a.txt", a).with_exec(["cat", "/a.txt"]).stdout())

anyio.run(main)
""",
    )
    kiln.run_python(script).check()
    (src / "b.txt").write_text("B2")
    second = kiln.run_python(script).check()
    # The upload of the changed directory runs again; nothing that reads
    # only a.txt does.
    assert second.summary()[0] == 1, second.stderr
    assert "RUN    upload" in second.stderr
    assert "CACHED exec cat /a.txt" in second.stderr, f"an edit to b.txt re-ran the exec:\n{second.stderr}"


async def test_mounts_with_an_owner(dag):
    d = dag.directory().with_new_file("f", "x")
    ctr = (
        dag.container().from_("busybox")
        .with_mounted_directory("/m", d, owner="app")
        .with_mounted_file("/one", d.file("f"), owner="1234:4321")
        .with_exec(["stat", "-c", "%u %g", "/m/f", "/one"])
    )
    assert await ctr.stdout() == "1000 1000\n1234 4321\n"
