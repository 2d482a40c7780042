"""Image benchmarks: Dockerfile builds (kiln's dockerBuild vs `docker build`
with BuildKit) and publishing a 100 MB image (kiln vs `skopeo copy` of the
same layers)."""

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid

import dockerd as dockerd_lib
from measure import (
    Series,
    build_context,
    busybox_rootfs_blob,
    cache_dir,
    engine_hwm_kib,
    kiln_query,
    repeat,
    run_measured,
    with_state,
)

# A two-stage build: an early ARG that every build-stage RUN sees, a source
# COPY, work on it, and a final stage that takes the results.
DOCKERFILE = """\
ARG BASE=busybox
FROM ${BASE} AS build
ARG VERSION=1
RUN mkdir -p /out && echo "version $VERSION" > /out/version
COPY src /src
RUN ls /src | wc -l > /out/files
RUN cat /src/*.txt | md5sum > /out/sum
RUN tar -cf /out/src.tar /src

FROM ${BASE}
COPY --from=build /out /app
RUN ls -l /app > /app/listing
CMD ["cat", "/app/version"]
"""


class Changes:
    """The edits between runs: one source file, or the early ARG."""

    def __init__(self, victim):
        self.victim, self.original, self.n = victim, open(victim).read(), 0
        self.version = 1

    def source(self):
        self.n += 1
        with open(self.victim, "w") as f:
            f.write(self.original + f"change {self.n}\n")

    def arg(self):
        self.version += 1


def bench_dockerfile(kiln, env, runs):
    if not dockerd_lib.available():
        raise SystemExit("the dockerfile benchmark needs Debian's docker.io (apt-get install docker.io)")
    work = tempfile.mkdtemp(prefix="kiln-bench-dockerfile-")
    ctx, victim = build_context(work, DOCKERFILE)
    change = Changes(victim)
    state = os.path.join(work, "kiln-state")
    kenv = with_state(env, state)

    def kiln_build():
        query = (
            '{ host { directory(path: "%s") { dockerBuild(buildArgs: [{name: "VERSION", value: "%d"}]) '
            "{ sync } } } }" % (ctx, change.version)
        )
        return kiln_query(kiln, kenv, query)

    def fresh_kiln():
        shutil.rmtree(state, ignore_errors=True)
        # The base image is local for docker (imported): pull it for kiln.
        kiln_query(kiln, kenv, '{ container { from(address: "busybox") { sync } } }')

    results, engine_rss = {}, {}
    for name, before in (
        ("cold", fresh_kiln),
        ("warm", None),
        ("after a one-file change", change.source),
        ("after an early ARG change", change.arg),
    ):
        results["kiln", name] = repeat(kiln_build, runs, before=before)
        engine_rss[name] = engine_hwm_kib(kenv)

    dockerd = dockerd_lib.Dockerd(work)
    try:
        run_measured(dockerd.command("import", busybox_rootfs_blob(env), "kiln-bench-busybox"), env=dockerd.env)

        def docker_build():
            return run_measured(
                dockerd.command(
                    "build", "--network=none", "-q", "-t", "kiln-bench-app", "--build-arg", "BASE=kiln-bench-busybox",
                    "--build-arg", f"VERSION={change.version}", ctx,
                ),
                env=dockerd.env,
            )

        def prune():
            run_measured(dockerd.command("builder", "prune", "-af"), env=dockerd.env)

        docker_build()  # a fresh daemon's first build (not measured)
        results["docker", "cold"] = repeat(docker_build, runs, before=prune)
        results["docker", "warm"] = repeat(docker_build, runs)
        results["docker", "after a one-file change"] = repeat(docker_build, runs, before=change.source)
        results["docker", "after an early ARG change"] = repeat(docker_build, runs, before=change.arg)
        daemon_rss = dockerd.peak_rss_kib()
    finally:
        dockerd.stop()
    shutil.rmtree(work, ignore_errors=True)

    rows = []
    for name in ("cold", "warm", "after a one-file change", "after an early ARG change"):
        k, d = results["kiln", name], results["docker", name]
        target = 3 if name == "warm" else 2
        rows += [
            (f"Dockerfile build {name}: kiln dockerBuild (kiln query; RSS: engine)", k.ms(), engine_rss[name]),
            (f"Dockerfile build {name}: docker build (BuildKit; RSS: dockerd+containerd)", d.ms(), daemon_rss),
            (f"ratio: docker build / kiln, {name} (target >= {target})", d.ms() / k.ms(), None),
        ]
    return rows


def random_file(size):
    """A file of `size` random bytes (incompressible, like built binaries),
    made once under the cache dir."""
    path = os.path.join(cache_dir(), "bench", f"random-{size}.bin")
    if not os.path.exists(path) or os.path.getsize(path) != size:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rng = random.Random(size)
        with open(path + ".tmp", "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(rng.randbytes(n))
                left -= n
        os.replace(path + ".tmp", path)
    return path


class FreshRegistry:
    """Debian's docker-registry on a free loopback port with an empty
    storage dir: nothing to mount or skip, every blob is sent."""

    def __init__(self, work):
        self.dir = tempfile.mkdtemp(prefix="registry-", dir=work)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n"
                f"  filesystem:\n    rootdirectory: {self.dir}/storage\n"
                f"http:\n  addr: {self.address}\n  secret: bench-{port}\n"
            )
        self.log = open(os.path.join(self.dir, "registry.log"), "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", config], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise SystemExit(f"docker-registry did not start; see {self.log.name}")
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_publish(kiln, env, runs, size=100 << 20):
    """Publishing an image with a 100 MB layer, kiln vs `skopeo copy` of the
    same image from kiln's OCI archive: into a fresh registry (every blob
    sent), and into a new repository of a registry that holds the blobs in
    another (mounted)."""
    registry = env["KILN_REGISTRY"]
    work = tempfile.mkdtemp(prefix="kiln-bench-publish-")
    data = os.path.join(work, "data")
    os.makedirs(data)
    shutil.copy(random_file(size), os.path.join(data, "payload.bin"))
    state = os.path.join(work, "kiln-state")
    kenv = with_state(env, state)
    image = '{ host { directory(path: "%s") { id } } }' % data
    data_id = json.loads(kiln_query(kiln, kenv, image).stdout)["data"]["host"]["directory"]["id"]
    ctr = 'container { from(address: "busybox") { withDirectory(path: "/data", source: "%s") { %s } } }'

    def publish(to=registry):
        address = f"{to}/kiln-bench/publish-{uuid.uuid4().hex[:12]}:latest"
        return kiln_query(kiln, kenv, "{ %s }" % (ctr % (data_id, f'publish(address: "{address}")')))

    # The first publish makes the layer blobs (gzip): measured on its own.
    first = repeat(publish, 1)
    kiln_runs = repeat(publish, runs)
    kiln_fresh = repeat_fresh(work, runs, publish)
    rss = engine_hwm_kib(kenv)

    archive = os.path.join(work, "image.tar")
    kiln_query(kiln, kenv, "{ %s }" % (ctr % (data_id, f'export(path: "{archive}")')))

    def skopeo_copy(to=registry):
        address = f"{to}/kiln-bench/skopeo-{uuid.uuid4().hex[:12]}:latest"
        return run_measured(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci-archive:{archive}", f"docker://{address}"],
            env=env,
        )

    skopeo = repeat(skopeo_copy, runs)
    skopeo_fresh = repeat_fresh(work, runs, skopeo_copy)
    shutil.rmtree(work, ignore_errors=True)
    return [
        ("publish 100 MB image, first (layers compressed, all sent): kiln (RSS: engine)", first.ms(), rss),
        ("publish 100 MB image to a fresh registry (all sent): kiln (RSS: engine)", kiln_fresh.ms(), rss),
        ("publish 100 MB image to a fresh registry (all sent): skopeo copy", skopeo_fresh.ms(), skopeo_fresh.rss()),
        ("ratio: kiln / skopeo copy, all sent", kiln_fresh.ms() / skopeo_fresh.ms(), None),
        ("publish 100 MB image to a new repository (layers mounted): kiln (RSS: engine)", kiln_runs.ms(), rss),
        ("publish 100 MB image to a new repository (layers mounted): skopeo copy", skopeo.ms(), skopeo.rss()),
        ("ratio: kiln / skopeo copy, mounted", kiln_runs.ms() / skopeo.ms(), None),
    ]


def repeat_fresh(work, runs, push):
    """`runs` pushes, each into a registry of its own."""
    series = Series()
    for _ in range(runs):
        registry = FreshRegistry(work)
        try:
            series.add(push(registry.address))
        finally:
            registry.stop()
    return series
