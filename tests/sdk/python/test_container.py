"""Containers from an image: exec output, exit codes, env variables, errors."""

import dagger
import pytest

pytestmark = pytest.mark.anyio


async def test_exec_stdout_stderr_exit_code(dag):
    ctr = dag.container().from_("busybox").with_exec(
        ["sh", "-c", "echo out-line; echo err-line >&2; echo two >&2"]
    )
    assert await ctr.stdout() == "out-line\n"
    assert await ctr.stderr() == "err-line\ntwo\n"
    assert await ctr.exit_code() == 0


async def test_exec_expect_failure_reports_exit_code(dag):
    ctr = dag.container().from_("busybox").with_exec(
        ["sh", "-c", "echo partial; exit 3"], expect=dagger.ReturnType.FAILURE
    )
    assert await ctr.exit_code() == 3
    assert await ctr.stdout() == "partial\n"


async def test_exec_chain_sees_previous_filesystem(dag):
    ctr = (
        dag.container()
        .from_("busybox")
        .with_exec(["sh", "-c", "echo first > /state.txt"])
        .with_exec(["sh", "-c", "echo second >> /state.txt"])
        .with_exec(["cat", "/state.txt"])
    )
    assert await ctr.stdout() == "first\nsecond\n"


async def test_env_variables(dag):
    ctr = (
        dag.container()
        .from_("busybox")
        .with_env_variable("GREETING", "hello")
        .with_env_variable("TARGET", "kiln")
        .with_env_variable("GREETING", "hi")  # replaces, keeps its place
    )
    assert await ctr.env_variable("GREETING") == "hi"
    assert await ctr.env_variable("TARGET") == "kiln"
    assert await ctr.env_variable("NOT_SET") is None

    pairs = [(await v.name(), await v.value()) for v in await ctr.env_variables()]
    names = [n for n, _ in pairs]
    # The image's own PATH comes first, then ours in the order first set.
    assert "PATH" in names
    assert names.index("GREETING") < names.index("TARGET")
    assert ("GREETING", "hi") in pairs
    assert ("TARGET", "kiln") in pairs
    assert names.count("GREETING") == 1

    out = await ctr.with_exec(["sh", "-c", 'echo "$GREETING, $TARGET"']).stdout()
    assert out == "hi, kiln\n"

    gone = ctr.without_env_variable("TARGET")
    assert await gone.env_variable("TARGET") is None
    assert await gone.with_exec(["sh", "-c", 'echo "[${TARGET-unset}]"']).stdout() == "[unset]\n"


async def test_long_chain_of_calls(dag):
    # Every chained call nests the SDK's query one level deeper.
    ctr = dag.container().from_("busybox")
    for i in range(50):
        ctr = ctr.with_env_variable(f"STEP_{i}", str(i))
    out = await ctr.with_exec(["sh", "-c", "env | grep -c ^STEP_; echo $STEP_49"]).stdout()
    assert out == "50\n49\n"


async def test_workdir_and_new_file(dag):
    ctr = (
        dag.container()
        .from_("busybox")
        .with_workdir("/app")
        .with_new_file("notes/readme.txt", "kiln was here\n")
        .with_exec(["sh", "-c", "pwd; cat notes/readme.txt"])
    )
    assert await ctr.stdout() == "/app\nkiln was here\n"
    assert await ctr.file("/app/notes/readme.txt").contents() == "kiln was here\n"


async def test_exec_error_carries_command_output_and_exit_code(dag):
    cmd = ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 42"]
    with pytest.raises(dagger.ExecError) as info:
        await dag.container().from_("busybox").with_exec(cmd).sync()
    err = info.value
    assert err.exit_code == 42
    assert err.command == cmd
    assert err.stdout == "to-stdout\n"
    assert err.stderr == "to-stderr\n"
    assert "42" in str(err)


async def test_exec_error_for_missing_binary(dag):
    with pytest.raises(dagger.QueryError) as info:
        await dag.container().from_("busybox").with_exec(["/no/such/binary"]).stdout()
    assert "/no/such/binary" in str(info.value)
