"""Dockerfile builds (Directory.dockerBuild, Container.build): multi-stage
with a scratch final stage, ARG/ENV interplay and build args, .dockerignore,
USER/WORKDIR, targets, and clear errors for what kiln does not support."""

import json
import subprocess
import textwrap
import uuid
from pathlib import Path

import dagger
import pytest

pytestmark = pytest.mark.anyio


def context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "ctx"
    root.mkdir(parents=True)
    (root / "Dockerfile").write_text(textwrap.dedent(dockerfile).lstrip())
    for name, text in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


async def round_trip(dag, image: dagger.Container, registry: str, name: str) -> tuple[dict, dagger.Container]:
    """Publishes `image` to the loopback registry; returns its config as
    `skopeo inspect --config` reads it there, and the image pulled back
    through kiln."""
    address = f"{registry}/kiln-tests/dockerfile-{name}:{uuid.uuid4().hex[:12]}"
    published = await image.publish(address)
    assert published.startswith(address + "@sha256:"), published
    # --raw: the config as stored (skopeo would drop Docker-only fields).
    inspected = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--config", "--raw", f"docker://{address}"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(inspected), dag.container().from_(published)


async def test_a_multi_stage_build_with_a_scratch_final_stage(dag, tmp_path, registry):
    root = context(
        tmp_path,
        """
        FROM busybox AS builder
        ARG VERSION=1.0
        WORKDIR /src
        COPY main.txt .
        RUN mkdir /out && cat main.txt > /out/app && echo "version $VERSION" >> /out/app

        FROM scratch
        COPY --from=builder /out/app /app
        ENTRYPOINT ["/app"]
        """,
        {"main.txt": "main program\n"},
    )
    image = dag.host().directory(str(root)).docker_build(build_args=[dagger.BuildArg("VERSION", "2.5")])
    assert await image.file("/app").contents() == "main program\nversion 2.5\n"
    assert await image.entrypoint() == ["/app"]
    assert await image.directory("/").entries() == ["app"]
    config, pulled = await round_trip(dag, image, registry, "scratch")
    assert config["config"]["Entrypoint"] == ["/app"] and len(config["rootfs"]["diff_ids"]) == 1, config
    assert await pulled.file("/app").contents() == "main program\nversion 2.5\n"


async def test_arg_env_user_workdir_and_dockerignore(dag, tmp_path, registry):
    root = context(
        tmp_path,
        """
        FROM busybox
        ARG GREETING=hi
        ENV MESSAGE="${GREETING} there" OTHER=plain
        LABEL org.example.role="test image"
        WORKDIR /work
        COPY . ./ctx/
        RUN echo "$MESSAGE/$GREETING" > /work/message && ls -A ctx | sort > /work/listing
        USER 1000:1000
        EXPOSE 8080 53/udp
        CMD ["cat", "/work/message"]
        """,
        {
            "keep.txt": "kept",
            "secret.env": "TOKEN=x",
            "public.env": "MODE=demo",
            "logs/debug.log": "noise",
            ".dockerignore": "*.env\n!public.env\nlogs\n",
        },
    )
    image = dag.host().directory(str(root)).docker_build(build_args=[dagger.BuildArg("GREETING", "hello")])
    assert await image.file("/work/message").contents() == "hello there/hello\n"
    assert await image.file("/work/listing").contents() == ".dockerignore\nDockerfile\nkeep.txt\npublic.env\n"
    assert await image.env_variable("MESSAGE") == "hello there"
    # A build arg is not part of the image's environment.
    assert await image.env_variable("GREETING") is None
    assert await image.workdir() == "/work"
    assert await image.user() == "1000:1000"
    assert await image.label("org.example.role") == "test image"
    assert await image.default_args() == ["cat", "/work/message"]
    ports = [(await p.port(), await p.protocol()) for p in await image.exposed_ports()]
    assert ports == [(8080, dagger.NetworkProtocol.TCP), (53, dagger.NetworkProtocol.UDP)]
    assert await image.with_user("0").with_exec(["cat", "/work/message"]).stdout() == "hello there/hello\n"
    config, pulled = await round_trip(dag, image, registry, "args")
    c = config["config"]
    assert "MESSAGE=hello there" in c["Env"] and not any(e.startswith("GREETING=") for e in c["Env"]), c
    assert (c["User"], c["WorkingDir"], c["Cmd"]) == ("1000:1000", "/work", ["cat", "/work/message"]), c
    assert c["Labels"] == {"org.example.role": "test image"} and set(c["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert await pulled.with_exec([]).stdout() == "hello there/hello\n"


async def test_a_target_stage(dag, tmp_path):
    root = context(
        tmp_path,
        """
        FROM busybox AS test
        RUN echo tested > /result

        FROM busybox AS release
        RUN echo released > /result
        """,
    )
    ctx = dag.host().directory(str(root))
    assert await ctx.docker_build(target="test").file("/result").contents() == "tested\n"
    assert await ctx.docker_build().file("/result").contents() == "released\n"


async def test_what_kiln_cannot_build_yet_is_named_with_its_line(dag, tmp_path):
    root = context(
        tmp_path,
        """
        FROM busybox
        RUN true
        ONBUILD RUN true
        """,
    )
    with pytest.raises(dagger.QueryError, match=r"Dockerfile:3: ONBUILD: ONBUILD is not supported"):
        await dag.host().directory(str(root)).docker_build().sync()
    missing = context(tmp_path / "m", "FROM busybox\nCOPY nothing-here /x\n")
    with pytest.raises(dagger.QueryError, match=r"Dockerfile:2: COPY: nothing-here: no such file"):
        await dag.host().directory(str(missing)).docker_build().sync()


async def test_run_mounts_cache_secret_tmpfs_and_bind(dag, tmp_path, registry):
    root = context(
        tmp_path,
        """
        FROM busybox
        RUN --mount=type=cache,target=/cache,id=counter sh -c 'echo x >> /cache/n; wc -l < /cache/n > /seen'
        RUN --mount=type=secret,id=token sh -c 'wc -c < /run/secrets/token > /token-length'
        RUN --mount=type=tmpfs,target=/scratch sh -c 'touch /scratch/x && ls /scratch > /tmpfs-listing'
        RUN --mount=type=bind,source=data,target=/data cat /data/input > /copied
        """,
        {"data/input": "from the context\n"},
    )
    secret_value = "s3cr3t-value-" + root.name
    token = dag.set_secret("token", secret_value)
    image = dag.host().directory(str(root)).docker_build(secrets=[token])
    assert int(await image.file("/seen").contents()) >= 1
    assert int(await image.file("/token-length").contents()) == len(secret_value)
    assert await image.file("/tmpfs-listing").contents() == "x\n"
    assert await image.file("/copied").contents() == "from the context\n"
    for gone in ("/scratch/x", "/data/input", "/run/secrets/token", "/cache/n"):
        listing = await image.with_exec(["sh", "-c", f"test -e {gone} && echo present || echo absent"]).stdout()
        assert listing == "absent\n", gone
    # The secret is in no layer, no config and no history of the image.
    tarball = tmp_path / "image.tar"
    await image.export(str(tarball), forced_compression=dagger.ImageLayerCompression.Uncompressed)
    assert secret_value.encode() not in tarball.read_bytes()
    config, pulled = await round_trip(dag, image, registry, "mounts")
    assert secret_value not in json.dumps(config) and len(config["history"]) == len(config["rootfs"]["diff_ids"]), config
    assert await pulled.file("/copied").contents() == "from the context\n"


async def test_a_missing_build_secret_is_named(dag, tmp_path):
    root = context(tmp_path, "FROM busybox\nRUN --mount=type=secret,id=npmrc,required=true cat /run/secrets/npmrc\n")
    with pytest.raises(dagger.QueryError, match=r'Dockerfile:2: RUN: secret "npmrc" is required'):
        await dag.host().directory(str(root)).docker_build().sync()


async def test_volume_stopsignal_and_default_values_reach_the_image_config(dag, tmp_path):
    root = context(
        tmp_path,
        """
        ARG BASE
        FROM ${BASE:-busybox}
        ARG MODE
        ENV MODE=${MODE:-release} EXTRA=${MODE:+debug-extra}
        VOLUME /data /var/cache
        VOLUME ["/srv"]
        STOPSIGNAL SIGINT
        """,
    )
    image = dag.host().directory(str(root)).docker_build()
    assert await image.env_variable("MODE") == "release"
    assert await image.env_variable("EXTRA") == ""
    tarball = tmp_path / "image.tar"
    await image.export(str(tarball))
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", f"oci-archive:{tarball}"], check=True, capture_output=True, text=True
        ).stdout
    )["config"]
    assert sorted(config["Volumes"]) == ["/data", "/srv", "/var/cache"]
    assert config["StopSignal"] == "SIGINT"
    debug = dag.host().directory(str(root)).docker_build(build_args=[dagger.BuildArg("MODE", "debug")])
    assert await debug.env_variable("EXTRA") == "debug-extra"


async def test_a_built_image_is_published_inspected_and_pulled_back(dag, tmp_path, registry):
    root = context(
        tmp_path,
        """
        FROM busybox AS build
        ARG TAG=dev
        RUN mkdir -p /out && echo "tool $TAG" > /out/tool

        FROM busybox
        ENV PATH=/opt/tool:$PATH
        COPY --from=build --chmod=0755 /out/tool /opt/tool/tool
        WORKDIR /opt/tool
        USER 65534
        CMD ["cat", "tool"]
        """,
    )
    nonce = root.parent.name[-12:]
    address = f"{registry}/kiln-tests/dockerfile:{nonce}"
    image = dag.host().directory(str(root)).docker_build(build_args=[dagger.BuildArg("TAG", nonce)])
    published = await image.publish(address)
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--config", f"docker://{address}"],
            check=True, capture_output=True, text=True,
        ).stdout
    )["config"]
    assert config["Cmd"] == ["cat", "tool"] and config["User"] == "65534" and config["WorkingDir"] == "/opt/tool"
    assert config["Env"][0].startswith("PATH=/opt/tool:")
    pulled = dag.container().from_(published)
    assert await pulled.with_exec(["cat", "tool"]).stdout() == f"tool {nonce}\n"
    assert await pulled.with_exec(["stat", "-c", "%a", "tool"]).stdout() == "755\n"


async def test_heredocs_in_run_and_copy(dag, tmp_path):
    root = context(
        tmp_path,
        """
        FROM busybox
        ARG NAME=kiln
        RUN <<EOF
        echo one > /one
        echo two >> /one
        EOF
        RUN cat <<A > /a && \\
            cat <<-'B' > /b
        hello $HOME
        A
        \tliteral $HOME
        \tB
        COPY <<EOF /etc/greeting
        hi ${NAME}
        EOF
        COPY <<X <<Y /files/
        x
        X
        y
        Y
        RUN <<EOF
        #!/bin/sh
        echo "script $0" > /shebang
        EOF
        RUN echo after > /after
        """,
    )
    image = dag.host().directory(str(root)).docker_build()
    assert await image.file("/one").contents() == "one\ntwo\n"
    assert await image.file("/a").contents() == "hello /root\n"
    assert await image.file("/b").contents() == "literal $HOME\n"
    assert await image.file("/etc/greeting").contents() == "hi kiln\n"
    assert await image.directory("/files").entries() == ["X", "Y"]
    assert await image.file("/files/Y").contents() == "y\n"
    assert await image.file("/shebang").contents() == "script /dev/stdin\n"
    assert await image.file("/after").contents() == "after\n"
    unterminated = context(tmp_path / "u", "FROM busybox\nRUN cat <<EOF\nnever ends\n")
    with pytest.raises(dagger.QueryError, match=r"Dockerfile:2: RUN: heredoc <<EOF does not end"):
        await dag.host().directory(str(unterminated)).docker_build().sync()


async def test_run_network_none_has_only_loopback(dag, tmp_path):
    root = context(
        tmp_path,
        """
        FROM busybox
        RUN --network=none sh -c 'grep -c : /proc/net/dev > /none'
        RUN sh -c 'grep -c : /proc/net/dev > /default'
        """,
    )
    image = dag.host().directory(str(root)).docker_build()
    assert await image.file("/none").contents() == "1\n"
    assert int(await image.file("/default").contents()) >= 2


async def test_healthchecks_reach_the_image_config_and_are_inherited(dag, tmp_path, registry):
    root = context(
        tmp_path,
        """
        FROM busybox
        HEALTHCHECK --interval=30s --timeout=3s --start-period=1m30s --retries=2 CMD wget -qO- http://localhost/ || exit 1
        """,
    )
    image = dag.host().directory(str(root)).docker_build()
    config, _ = await round_trip(dag, image, registry, "healthcheck")
    assert config["config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -qO- http://localhost/ || exit 1"],
        "Interval": 30_000_000_000,
        "Timeout": 3_000_000_000,
        "StartPeriod": 90_000_000_000,
        "Retries": 2,
    }
    # A build FROM it keeps it; HEALTHCHECK NONE switches it off.
    base = await image.publish(f"{registry}/kiln-tests/healthcheck-base:{uuid.uuid4().hex[:12]}")
    child = context(tmp_path / "child", f"FROM {base}\nRUN true\n")
    config, _ = await round_trip(dag, dag.host().directory(str(child)).docker_build(), registry, "healthcheck-child")
    assert config["config"]["Healthcheck"]["Test"][0] == "CMD-SHELL", config
    off = context(tmp_path / "off", f"FROM {base}\nHEALTHCHECK NONE\n")
    config, _ = await round_trip(dag, dag.host().directory(str(off)).docker_build(), registry, "healthcheck-off")
    assert config["config"]["Healthcheck"] == {"Test": ["NONE"]}
    # The API's own: exec form, then removed.
    api = dag.container().from_("busybox").with_docker_healthcheck(["true"], interval="5s")
    config, _ = await round_trip(dag, api, registry, "healthcheck-api")
    assert config["config"]["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 5_000_000_000}
    config, _ = await round_trip(dag, api.without_docker_healthcheck(), registry, "healthcheck-api")
    assert "Healthcheck" not in config["config"]


def write_tar(path: Path, files: dict[str, str], mode: str) -> None:
    import io
    import tarfile

    with tarfile.open(path, mode) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


async def test_add_extracts_local_archives_by_their_content(dag, tmp_path):
    root = context(
        tmp_path,
        """
        FROM busybox
        ADD app.tar.gz /opt/app/
        ADD bundle.bin /opt/bundle
        ADD plain.tar /opt/plain.tar
        ADD notes.txt /opt/
        """,
        {"plain.tar": "not really a tar", "notes.txt": "notes"},
    )
    write_tar(root / "app.tar.gz", {"bin/run": "#!/bin/sh\necho run\n", "README": "app"}, "w:gz")
    # A tar by content, whatever its name says.
    write_tar(root / "bundle.bin", {"inside.txt": "inside"}, "w")
    image = dag.host().directory(str(root)).docker_build()
    assert await image.file("/opt/app/README").contents() == "app"
    assert await image.file("/opt/app/bin/run").contents() == "#!/bin/sh\necho run\n"
    assert await image.file("/opt/bundle/inside.txt").contents() == "inside"
    assert await image.file("/opt/plain.tar").contents() == "not really a tar"
    assert await image.file("/opt/notes.txt").contents() == "notes"
    # bzip2 and xz archives too.
    more = context(tmp_path / "more", "FROM busybox\nADD data.tar.bz2 /bz/\nADD data.tar.xz /xz/\n")
    write_tar(more / "data.tar.bz2", {"b": "bzip2"}, "w:bz2")
    write_tar(more / "data.tar.xz", {"x": "xz"}, "w:xz")
    image = dag.host().directory(str(more)).docker_build()
    assert await image.file("/bz/b").contents() == "bzip2"
    assert await image.file("/xz/x").contents() == "xz"
