"""The examples in examples/python/, run as a user runs them: `kiln run -- python3 X.py`.

They start their own kiln processes (one state dir for the module, so later
runs see earlier runs' cache), so they do not depend on the suite's mode;
run.sh runs them in mode 1 only.
"""

import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import Kiln

pytestmark = [pytest.mark.slow, pytest.mark.examples]

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "python"


@pytest.fixture(scope="module")
def kiln_shared(tmp_path_factory) -> Kiln:
    state = tmp_path_factory.mktemp("examples-state")
    return Kiln(state)


def skip_without_python(run):
    if "has no python3" in run.stderr:
        pytest.skip("the debian:bookworm fixture has no python3 (rebuild it: scripts/setup.sh --debian --force)")


def test_hello(kiln_shared):
    run = kiln_shared.run_python(EXAMPLES / "hello.py").check()
    assert run.stdout == "Hello from kiln, in a container running Linux!\n"
    assert run.summary()[2] == 0


def test_build_and_test_exports_a_working_artifact(kiln_shared, tmp_path):
    out = tmp_path / "dist"
    run = kiln_shared.run_python(EXAMPLES / "build_and_test.py", str(out))
    skip_without_python(run)
    run.check()
    assert "5 passed, 0 failed" in run.stdout
    assert "    3 the\n    2 and\n" in run.stdout  # the smoke test ran the built tool
    tarball = out / "wordcount-1.0.0.tar.gz"
    assert run.stdout.rstrip().endswith(f"artifact: {tarball}")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"wordcount-1.0.0/wordcount.py", "wordcount-1.0.0/bin/wordcount"} <= names


def test_build_and_test_stops_on_a_failing_test(kiln_shared, tmp_path):
    # A copy of the examples whose project has a broken test.
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    test_file = copy / "project" / "tests" / "test_wordcount.py"
    test_file.write_text(test_file.read_text().replace('{"a": 3, "b": 2, "c": 1}', '{"a": 3}'))
    out = tmp_path / "dist"
    run = kiln_shared.run_python(copy / "build_and_test.py", str(out))
    skip_without_python(run)
    assert run.returncode != 0
    assert "FAIL test_wordcount.py::test_count" in run.stderr
    assert "ExecError" in run.stderr
    assert not out.exists(), "nothing may be exported when the tests fail"


def test_parallel_branches_overlap_and_join(kiln_shared):
    run = kiln_shared.run_python(EXAMPLES / "parallel.py")
    skip_without_python(run)
    run.check()
    done = re.findall(r"^\[(\w+) *\] done in", run.stdout, re.M)
    assert sorted(done) == ["docs", "lint", "package", "test"]
    manifest = re.findall(r"^[0-9a-f]{64}  \./(\S+)$", run.stdout, re.M)
    assert manifest == ["docs/API.txt", "lint/lint-report.txt", "package/wordcount-1.0.0.tar.gz", "test/test-report.txt"]
    wall = float(re.search(r"done in ([\d.]+)s wall time", run.stdout).group(1))
    if (os.cpu_count() or 1) >= 2:
        # Four branches that each sleep 1 s: run one after another they take 4 s.
        assert wall < 4.0, run.stdout


def test_parallel_again_is_fully_cached(kiln_shared):
    run = kiln_shared.run_python(EXAMPLES / "parallel.py")
    skip_without_python(run)
    run.check()
    ran, cached, failed = run.summary()
    assert (ran, failed) == (0, 0), run.stderr
    assert cached > 0
