"""A private dockerd (Debian's docker.io) for benchmarks and tests: its own
data root, exec root and socket under a directory of the caller's, no
iptables rules, no bridge; stopped by PID. Never touches a system dockerd.

    with Dockerd(workdir) as d:
        d.docker("load", "-i", "image.tar")
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

DOCKERD = "/usr/sbin/dockerd"
# Debian's client, which matches its daemon (another `docker` may come
# first on PATH).
DOCKER = "/usr/bin/docker"


def available() -> bool:
    """Whether Debian's docker.io is installed."""
    return os.path.exists(DOCKERD) and os.path.exists(DOCKER)


class Dockerd:
    def __init__(self, work: str, start_timeout: float = 60):
        if not available():
            raise RuntimeError("Debian's docker.io is not installed (apt-get install --no-install-recommends docker.io)")
        self.root = os.path.join(work, "docker")
        os.makedirs(self.root)
        # Sockets (dockerd's, containerd's) live in a short directory of their
        # own: a unix socket's path must fit in 108 bytes.
        self.run_dir = tempfile.mkdtemp(prefix="kiln-dockerd-")
        self.sock = os.path.join(self.run_dir, "docker.sock")
        self.log_path = os.path.join(self.root, "dockerd.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [DOCKERD, "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--data-root", os.path.join(self.root, "data"), "--exec-root", os.path.join(self.run_dir, "exec"),
             "--pidfile", os.path.join(self.run_dir, "dockerd.pid"), "-H", f"unix://{self.sock}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.env = dict(os.environ)
        self.env["DOCKER_HOST"] = f"unix://{self.sock}"
        self.env["DOCKER_BUILDKIT"] = "1"
        deadline = time.time() + start_timeout
        while subprocess.run([DOCKER, "info"], env=self.env, capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd did not start; see {self.log_path}")
            time.sleep(0.2)

    def __enter__(self) -> Dockerd:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def command(self, *args: str) -> list[str]:
        """The argv of `docker ARGS...` (run it with env=self.env)."""
        return [DOCKER, *args]

    def docker(self, *args: str) -> subprocess.CompletedProcess:
        """Runs `docker ARGS...` against this daemon; raises with its output
        when it fails."""
        done = subprocess.run(self.command(*args), env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    def peak_rss_kib(self) -> int:
        """Peak RSS of dockerd and the containerd it started."""
        total = 0
        for pid in [self.proc.pid] + children_of(self.proc.pid):
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        # dockerd mounts its data root over itself and may leave that (and
        # more, when it was stopped while starting) behind.
        for point in mounts_under(self.root, self.run_dir):
            subprocess.run(["umount", "--lazy", point], check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def mounts_under(*dirs: str) -> list[str]:
    """Mount points at or below `dirs`, deepest first."""
    roots = [os.path.realpath(d) for d in dirs]
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if any(point == r or point.startswith(r + "/") for r in roots):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []
