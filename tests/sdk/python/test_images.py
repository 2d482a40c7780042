"""Images out and back in: Container.export and asTarball write one tarball
that skopeo reads both as an OCI archive and as a Docker archive, with the
container's config; Container.import reads it back; several platforms make
an index."""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import dagger
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import dockerd  # noqa: E402  (scripts/dockerd.py: a private dockerd)

pytestmark = pytest.mark.anyio


def skopeo(*args: str) -> dict:
    out = subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def built(dag) -> dagger.Container:
    return (
        dag.container()
        .from_("busybox")
        .with_exec(["sh", "-c", "mkdir -p /app && echo built > /app/artifact"])
        .with_env_variable("GREETING", "hello")
        .with_workdir("/app")
        .with_user("1000")
        .with_label("org.example.team", "ci")
        .with_entrypoint(["/bin/sh", "-c"])
        .with_default_args(["cat /app/artifact"])
        .with_exposed_port(8080)
    )


async def test_an_exported_image_is_read_by_skopeo_with_its_config(dag, tmp_path):
    path = tmp_path / "image.tar"
    written = await built(dag).export(str(path))
    assert written == str(path)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names)

    for transport in ("oci-archive", "docker-archive"):
        config = skopeo("inspect", "--config", f"{transport}:{path}")["config"]
        assert "GREETING=hello" in config["Env"], (transport, config)
        assert config["Entrypoint"] == ["/bin/sh", "-c"]
        assert config["Cmd"] == ["cat /app/artifact"]
        assert config["WorkingDir"] == "/app"
        assert config["User"] == "1000"
        assert config["Labels"] == {"org.example.team": "ci"}
        assert "8080/tcp" in config["ExposedPorts"]


# Through `kiln query`: dagger-io 0.21.8's Container.export_image declares
# `-> Void` but returns None, which its own beartype check refuses.
EXPORT_IMAGE = """{ container { from(address: "busybox") {
  withNewFile(path: "/msg", contents: "exported\\n") { withDefaultArgs(args: ["cat", "/msg"]) {
    exportImage(name: "kiln-tests/exported:v1") } } } } }"""


@pytest.mark.skipif(not dockerd.available(), reason="Debian's docker.io is not installed (scripts/setup.sh installs it)")
async def test_an_exported_image_loads_into_docker_and_runs(dag, tmp_path, kiln):
    """`docker load` of kiln's tarball, into a dockerd of the test's own;
    then exportImage, where kiln loads the image itself, and
    Host.containerImage, where kiln takes it back."""
    path = tmp_path / "image.tar"
    await built(dag).export(str(path))
    with dockerd.Dockerd(str(tmp_path / "d")) as d:
        loaded = d.docker("load", "-i", str(path)).stdout
        image = loaded.strip().rsplit(" ", 1)[-1]
        assert loaded.startswith("Loaded image"), loaded
        config = json.loads(d.docker("image", "inspect", image).stdout)[0]["Config"]
        assert config["Entrypoint"] == ["/bin/sh", "-c"] and "GREETING=hello" in config["Env"], config
        assert config["User"] == "1000" and config["WorkingDir"] == "/app", config
        # Run by Docker: its entrypoint and default args, as kiln built them.
        out = d.docker("run", "--rm", "--network", "none", image).stdout
        assert out == "built\n"

        # An engine of the test's own, on the host of this dockerd.
        kiln.env["DOCKER_HOST"] = d.env["DOCKER_HOST"]
        run = subprocess.run(
            [os.environ["KILN_BIN"], "query"], input=EXPORT_IMAGE, env=kiln.env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        out = d.docker("run", "--rm", "--network", "none", "kiln-tests/exported:v1").stdout
        assert out == "exported\n"

        # And back: Host.containerImage takes it from that Docker.
        query = '{ host { containerImage(name: "kiln-tests/exported:v1") { withExec(args: []) { stdout } } } }'
        run = subprocess.run(
            [os.environ["KILN_BIN"], "query"], input=query, env=kiln.env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["data"]["host"]["containerImage"]["withExec"]["stdout"] == "exported\n"


async def test_an_image_tarball_imports_back_and_runs(dag):
    tarball = built(dag).as_tarball(forced_compression=dagger.ImageLayerCompression.Zstd)
    imported = dag.container().import_(tarball)
    assert await imported.with_exec(["cat", "/app/artifact"], use_entrypoint=False).stdout() == "built\n"
    assert await imported.env_variable("GREETING") == "hello"
    assert await imported.workdir() == "/app"
    assert await imported.entrypoint() == ["/bin/sh", "-c"]


async def test_exporting_twice_compresses_nothing_again(dag, tmp_path):
    ctr = built(dag).with_new_file("/app/once", "x")
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    await ctr.export(str(first))
    # Another archive of the same layers (other media types): its layer
    # blobs are the ones made for the first.
    await ctr.export(str(second), media_types=dagger.ImageMediaTypes.DockerMediaTypes)
    layers = lambda p: skopeo("inspect", f"docker-archive:{p}")["Layers"]  # noqa: E731
    assert layers(first) == layers(second)


async def test_two_platforms_make_an_index(dag, tmp_path):
    variants = [
        dag.container(platform=dagger.Platform(p)).with_new_file("/platform", p)
        for p in ("linux/amd64", "linux/arm64")
    ]
    path = tmp_path / "multi.tar"
    await variants[0].export(str(path), platform_variants=[variants[1]])
    with tarfile.open(path) as tar:
        index = json.load(tar.extractfile("index.json"))
    platforms = sorted(m["platform"]["architecture"] for m in index["manifests"])
    assert platforms == ["amd64", "arm64"]


async def test_bad_export_arguments_are_refused_with_a_reason(dag, tmp_path):
    with pytest.raises(dagger.QueryError, match="no zstd layers"):
        await built(dag).export(
            str(tmp_path / "x.tar"),
            media_types=dagger.ImageMediaTypes.DockerMediaTypes,
            forced_compression=dagger.ImageLayerCompression.Zstd,
        )
    same = dag.container().from_("busybox")
    with pytest.raises(dagger.QueryError, match="given twice"):
        await same.export(str(tmp_path / "y.tar"), platform_variants=[same])


async def test_a_published_image_is_read_by_skopeo_and_pulled_back(dag, registry):
    nonce = uuid.uuid4().hex[:12]
    address = f"{registry}/kiln-tests/published:{nonce}"
    published = await built(dag).with_new_file("/app/nonce", nonce).publish(address)
    name, digest = published.split("@")
    assert name == address and digest.startswith("sha256:"), published
    config = skopeo("inspect", "--tls-verify=false", "--config", f"docker://{address}")["config"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"] and "GREETING=hello" in config["Env"]
    pulled = dag.container().from_(published)
    assert await pulled.with_exec(["cat", "/app/nonce"], use_entrypoint=False).stdout() == nonce
    # Published again: the same digest, every blob already there.
    assert await built(dag).with_new_file("/app/nonce", nonce).publish(address) == published


async def test_two_platforms_publish_an_index(dag, registry):
    address = f"{registry}/kiln-tests/multi:{uuid.uuid4().hex[:12]}"
    variants = [
        dag.container(platform=dagger.Platform(p)).with_new_file("/platform", p)
        for p in ("linux/amd64", "linux/arm64")
    ]
    published = await variants[0].publish(address, platform_variants=[variants[1]])
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{address}")
    assert raw["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert sorted(m["platform"]["architecture"] for m in raw["manifests"]) == ["amd64", "arm64"]
    assert published.endswith("@" + skopeo_digest(f"docker://{address}"))


def skopeo_digest(image: str) -> str:
    """The digest of the manifest (or index) `image` names, as served."""
    raw = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", image], check=True, capture_output=True
    ).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.fixture
def private_registry(tmp_path):
    """A registry on loopback that wants a login (kiln / s3cret): its address."""
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", "kiln", "s3cret"], check=True, capture_output=True, text=True
    ).stdout
    (tmp_path / "htpasswd").write_text(htpasswd)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/storage\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: kiln-tests\n    path: {tmp_path}/htpasswd\n"
    )
    with open(tmp_path / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "config.yml")], stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


async def test_publishing_to_a_registry_that_wants_a_login_uses_with_registry_auth(dag, private_registry):
    address = f"{private_registry}/kiln-tests/private:{uuid.uuid4().hex[:12]}"
    image = built(dag)
    with pytest.raises(dagger.QueryError, match=f"push {private_registry}/kiln-tests/private"):
        await image.publish(address)
    password = dag.set_secret("registry-password", "s3cret")
    published = await image.with_registry_auth(private_registry, "kiln", password).publish(address)
    assert published.startswith(address + "@sha256:")
    creds = "--creds=kiln:s3cret"
    config = skopeo("inspect", "--tls-verify=false", creds, "--config", f"docker://{address}")["config"]
    assert config["WorkingDir"] == "/app"
    # Pulls of the session use the login too.
    pulled = dag.container().from_(published)
    assert await pulled.with_exec(["cat", "/app/artifact"], use_entrypoint=False).stdout() == "built\n"


PUBLISH = """
import sys

import anyio
import dagger


async def main():
    async with dagger.connection():
        ctr = dagger.dag.container().from_("busybox").with_new_file("/nonce", sys.argv[2])
        print(await ctr.publish(sys.argv[1]))


anyio.run(main)
"""


async def test_publish_progress_says_what_was_sent_mounted_or_there(kiln, tmp_path, registry):
    # Repositories of their own: nothing is there before.
    address = f"{registry}/kiln-tests/progress-{uuid.uuid4().hex[:12]}:v1"
    script = tmp_path / "publish.py"
    script.write_text(PUBLISH)
    first = kiln.run_python(script, address, address)
    assert first.returncode == 0, first.stderr
    assert f"RUN    publish {address}" in first.stderr and f"DONE   publish {address}" in first.stderr
    said = re.compile(r"NOTICE publish .*: sent (\d+) blob\(s\), [^;]+; mounted (\d+) from other repositories; (\d+) already")
    sent, mounted, there = map(int, said.search(first.stderr).groups())
    # busybox's own layer is mounted from library/busybox, where it was
    # pulled from: kiln publishes the registry's bytes for pulled layers.
    assert (sent, mounted) == (2, 1), first.stderr
    base = skopeo("inspect", "--tls-verify=false", f"docker://{registry}/library/busybox:latest")["Layers"]
    assert skopeo("inspect", "--tls-verify=false", f"docker://{address}")["Layers"][:1] == base
    again = kiln.run_python(script, address, address)
    assert again.stdout == first.stdout
    assert said.search(again.stderr).groups() == ("0", "0", str(sent + mounted + there)), again.stderr
    # Publishing is not an operation of the cache's: the summary counts none.
    assert again.summary() == (0, 2, 0)
    # The same image into another repository: its layers are mounted from
    # the first one, not sent again.
    other = f"{registry}/kiln-tests/progress-other-{uuid.uuid4().hex[:12]}:v1"
    third = kiln.run_python(script, other, address)
    sent3, mounted3, _ = map(int, said.search(third.stderr).groups())
    assert mounted3 >= 1 and sent3 <= 1, third.stderr  # at most the config is sent
    assert third.stdout.split("@")[1] == first.stdout.split("@")[1]


async def test_annotations_reach_the_manifest(dag, tmp_path, registry):
    ctr = (
        dag.container()
        .from_("busybox")
        .with_annotation("org.opencontainers.image.source", "https://example.com/repo")
        .with_annotation("org.example.build", "1")
        .with_annotation("org.example.gone", "x")
        .without_annotation("org.example.gone")
    )
    path = tmp_path / "annotated.tar"
    await ctr.export(str(path))
    manifest = skopeo("inspect", "--raw", f"oci-archive:{path}")
    assert manifest["annotations"] == {
        "org.opencontainers.image.source": "https://example.com/repo",
        "org.example.build": "1",
    }
    address = f"{registry}/kiln-tests/annotated:{uuid.uuid4().hex[:12]}"
    await ctr.publish(address)
    assert skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{address}")["annotations"]["org.example.build"] == "1"
