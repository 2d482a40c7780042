"""Host directories (include/exclude), new files, entries, exports."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small host tree with files a pipeline would want to leave out."""
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.sh").write_text("echo main\n")
    (root / "src" / "debug.log").write_text("noise\n")
    (root / "node_modules" / "dep").mkdir(parents=True)
    (root / "node_modules" / "dep" / "index.js").write_text("x\n")
    (root / "README.md").write_text("# project\n")
    (root / "build.log").write_text("old build\n")
    return root


def listing(out: str) -> set[str]:
    return {line for line in out.splitlines() if line}


FIND = ["sh", "-c", "cd /src && find . -mindepth 1 | sort"]


async def test_host_directory_exclude_with_directory(dag, project):
    src = dag.host().directory(str(project), exclude=["node_modules", "*.log", "**/*.log"])
    out = await dag.container().from_("busybox").with_directory("/src", src).with_exec(FIND).stdout()
    assert listing(out) == {"./README.md", "./src", "./src/main.sh"}


async def test_host_directory_include_with_directory(dag, project):
    src = dag.host().directory(str(project), include=["src/**", "README.md"], exclude=["**/*.log"])
    out = await dag.container().from_("busybox").with_directory("/src", src).with_exec(FIND).stdout()
    assert listing(out) == {"./README.md", "./src", "./src/main.sh"}


async def test_with_directory_exclude_argument(dag, project):
    src = dag.host().directory(str(project))
    ctr = dag.container().from_("busybox").with_directory("/src", src, exclude=["node_modules", "build.log"])
    out = await ctr.with_exec(FIND).stdout()
    assert listing(out) == {"./README.md", "./src", "./src/main.sh", "./src/debug.log"}


async def test_host_directory_exclude_with_mounted_directory(dag, project):
    src = dag.host().directory(str(project), exclude=["node_modules", "**/*.log", "*.log"])
    ctr = dag.container().from_("busybox").with_mounted_directory("/src", src)
    out = await ctr.with_exec(FIND).stdout()
    assert listing(out) == {"./README.md", "./src", "./src/main.sh"}
    # The mount is not part of the image: without it the path is empty.
    out = await ctr.without_mount("/src").with_exec(["sh", "-c", "ls -A /src 2>/dev/null | wc -l"]).stdout()
    assert out.strip() == "0"


async def test_mounted_directory_writes_stay_out_of_the_host(dag, project):
    src = dag.host().directory(str(project), exclude=["node_modules"])
    ctr = (
        dag.container()
        .from_("busybox")
        .with_mounted_directory("/src", src)
        .with_exec(["sh", "-c", "echo built > /src/out.txt"])
    )
    assert await ctr.directory("/src").file("out.txt").contents() == "built\n"
    assert not (project / "out.txt").exists()


async def test_host_file(dag, project):
    f = dag.host().file(str(project / "README.md"))
    assert await f.name() == "README.md"
    assert await f.contents() == "# project\n"
    out = await dag.container().from_("busybox").with_file("/r.md", f).with_exec(["cat", "/r.md"]).stdout()
    assert out == "# project\n"


async def test_new_file_contents_and_entries(dag):
    d = (
        dag.directory()
        .with_new_file("a.txt", "alpha\n")
        .with_new_file("sub/b.txt", "beta\n")
        .with_new_directory("empty")
    )
    assert await d.file("a.txt").contents() == "alpha\n"
    assert await d.file("sub/b.txt").contents() == "beta\n"
    # Directories carry a trailing slash, as Dagger 0.21 reports them.
    assert sorted(await d.entries()) == ["a.txt", "empty/", "sub/"]
    assert await d.entries(path="sub") == ["b.txt"]
    assert await d.directory("sub").entries() == ["b.txt"]


async def test_container_new_file_and_entries(dag):
    ctr = dag.container().from_("busybox").with_new_file("/data/hello.txt", "hi there\n", permissions=0o600)
    assert await ctr.file("/data/hello.txt").contents() == "hi there\n"
    assert await ctr.directory("/data").entries() == ["hello.txt"]
    mode = await ctr.with_exec(["stat", "-c", "%a", "/data/hello.txt"]).stdout()
    assert mode.strip() == "600"


async def test_export_directory(dag, tmp_path: Path):
    out_dir = tmp_path / "exported"
    d = (
        dag.container()
        .from_("busybox")
        .with_exec(["sh", "-c", "mkdir -p /out/bin && echo v1 > /out/VERSION && echo '#!/bin/sh' > /out/bin/tool"])
        .directory("/out")
    )
    written = await d.export(str(out_dir))
    assert Path(written) == out_dir
    assert (out_dir / "VERSION").read_text() == "v1\n"
    assert (out_dir / "bin" / "tool").read_text() == "#!/bin/sh\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["VERSION", "bin"]


async def test_export_file(dag, tmp_path: Path):
    target = tmp_path / "artifacts" / "report.txt"
    f = dag.container().from_("busybox").with_exec(["sh", "-c", "echo report > /r.txt"]).file("/r.txt")
    written = await f.export(str(target))
    assert Path(written) == target
    assert target.read_text() == "report\n"
