"""Foreign platforms: an arm64 image runs under qemu-user-static emulation
(the binfmt_misc handler registered by kiln when none is there), an image
index gives each platform its own variant, an image without the wanted
platform is an error (no fallback to the host's), and a two-platform publish
yields an index whose variants each ran their own architecture.

Needs root (binfmt_misc registration), qemu-user-static and the
`busybox:multiplatform` fixture (host platform + arm64) that
scripts/sdk-env.sh pushes."""

import json
import platform
import subprocess
import uuid
from pathlib import Path

import dagger
import pytest

pytestmark = pytest.mark.anyio

MULTI = "busybox:multiplatform"
HOST_MACHINE = platform.machine()
FOREIGN = "linux/arm64" if HOST_MACHINE != "aarch64" else "linux/amd64"
FOREIGN_MACHINE = "aarch64" if HOST_MACHINE != "aarch64" else "x86_64"


def machine_of(dag, plat: str) -> dagger.Container:
    return dag.container(platform=dagger.Platform(plat)).from_(MULTI).with_exec(["uname", "-m"])


async def test_a_foreign_image_runs_under_emulation(dag):
    assert await machine_of(dag, FOREIGN).stdout() == f"{FOREIGN_MACHINE}\n"
    # The same index gives the host its own variant, run natively.
    host = await dag.container().platform()
    assert await machine_of(dag, host).stdout() == f"{HOST_MACHINE}\n"
    assert await dag.container(platform=dagger.Platform(FOREIGN)).from_(MULTI).platform() in (
        FOREIGN,
        FOREIGN + "/v8",
    )


async def test_the_binfmt_handler_used_has_the_fix_binary_flag(dag):
    await machine_of(dag, FOREIGN).sync()
    qemu = f"qemu-{FOREIGN_MACHINE}"
    handlers = [
        p.read_text().splitlines()
        for p in Path("/proc/sys/fs/binfmt_misc").iterdir()
        if p.name not in ("register", "status")
    ]
    ours = [h for h in handlers if h[0] == "enabled" and any(qemu in line for line in h if line.startswith("interpreter"))]
    assert ours, handlers
    flags = [line.split(":", 1)[1] for h in ours for line in h if line.startswith("flags:")]
    assert all("F" in f for f in flags), flags


async def test_an_image_without_the_platform_is_an_error(dag):
    with pytest.raises(dagger.QueryError) as e:
        await dag.container(platform=dagger.Platform(FOREIGN)).from_("busybox:latest").sync()
    assert f"not {FOREIGN}" in str(e.value) and "the image is for linux/" in str(e.value), str(e.value)


async def test_a_dockerfile_builds_for_a_foreign_platform(dag):
    context = dag.directory().with_new_file(
        "Dockerfile",
        f"FROM --platform={FOREIGN} {MULTI}\nRUN uname -m > /arch\n",
    )
    built = context.docker_build()
    assert await built.file("/arch").contents() == f"{FOREIGN_MACHINE}\n"
    # The build's own platform applies to a FROM without --platform.
    plain = dag.directory().with_new_file("Dockerfile", f"FROM {MULTI}\nRUN uname -m > /arch\n")
    built = plain.docker_build(platform=dagger.Platform(FOREIGN))
    assert await built.file("/arch").contents() == f"{FOREIGN_MACHINE}\n"


async def test_a_two_platform_publish_holds_what_each_platform_ran(dag, registry):
    address = f"{registry}/kiln-tests/platforms:{uuid.uuid4().hex[:12]}"
    host = await dag.container().platform()
    variants = [machine_of(dag, p).with_exec(["sh", "-c", "uname -m > /arch"]) for p in (host, FOREIGN)]
    published = await variants[0].publish(address, platform_variants=variants[1:])
    raw = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{address}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert raw["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert len(raw["manifests"]) == 2
    for plat, machine in ((host, HOST_MACHINE), (FOREIGN, FOREIGN_MACHINE)):
        pulled = dag.container(platform=dagger.Platform(plat)).from_(published)
        assert await pulled.file("/arch").contents() == f"{machine}\n", plat
