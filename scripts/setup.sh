#!/usr/bin/env bash
# Prepare a machine (Debian 12, root) for kiln's tests. Idempotent.
#
#   scripts/setup.sh                  install Debian packages, build fixtures
#   scripts/setup.sh --debian         ... and the debootstrap debian fixture
#   scripts/setup.sh --fixtures-only  skip apt (used by kiln-testkit)
#   scripts/setup.sh --force          rebuild fixtures even if cached
#
# KILN_FIXTURE_DEBIAN=1 is the same as --debian. Fixtures go to
# ${KILN_CACHE_DIR:-<repo>/.cache}/fixtures (see scripts/fixtures/build.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KILN_CACHE_DIR:-$REPO/.cache}"

apt_wanted=1
debian="${KILN_FIXTURE_DEBIAN:-0}"
force=0
for arg in "$@"; do
  case "$arg" in
    --fixtures-only) apt_wanted=0 ;;
    --debian) debian=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------
PACKAGES=(
  # container runtimes
  crun runc
  # fixtures: busybox rootfs, debian rootfs, OCI tooling
  busybox-static debootstrap debian-archive-keyring gpgv wget
  skopeo umoci zstd gzip tar python3 python3-venv ca-certificates
  # loopback registry and its htpasswd files
  docker-registry apache2-utils
  # flock, unshare, mount, ip (netns/veth for services), NAT for containers
  util-linux mount iproute2 iptables nftables
  # a terminal for the test of the live progress display
  tmux
  # foreign-platform containers (arm64 busybox fixture, emulation tests)
  qemu-user-static
  # a dockerd that tests start to `docker load` kiln's exported tarballs
  docker.io
  # git over ssh: an sshd and ssh-agent that the git tests start
  openssh-server openssh-client
  # building the workspace (C parts of zstd-sys etc.) and git sources
  gcc libc6-dev make pkg-config git
)

if [[ $apt_wanted == 1 ]]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]]; then
      say "missing packages: ${missing[*]}; run as root to install them"
      exit 1
    fi
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    say "Debian packages present"
  fi
  # The packaged services are not used: tests start their own registry on a
  # free loopback port, their own dockerd on a private socket and their own
  # sshd on a loopback port. If
  # installing a package just started its service, stop and disable it again.
  for svc in docker-registry docker containerd ssh; do
    pkg=$svc
    [[ $svc == docker ]] && pkg=docker.io
    [[ $svc == ssh ]] && pkg=openssh-server
    [[ " ${missing[*]:-} " == *" $pkg "* ]] || continue
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/$svc ]]; then
      "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
      command -v update-rc.d >/dev/null 2>&1 && update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
fi

# --- Fixtures ----------------------------------------------------------------
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3
mkdir -p "$CACHE/fixtures"

build_args=(--out "$CACHE/fixtures")
[[ $debian == 1 ]] && build_args+=(--debian)
[[ $force == 1 ]] && build_args+=(--force)

start=$(date +%s%N)
if [[ "${KILN_FIXTURES_LOCK_HELD:-0}" == 1 ]]; then
  # kiln-testkit already holds the lock on $CACHE/fixtures.lock.
  "$PY" "$REPO/scripts/fixtures/build.py" "${build_args[@]}"
else
  # Serialise concurrent builders (parallel test binaries, a second shell).
  exec 9>"$CACHE/fixtures.lock"
  flock 9
  "$PY" "$REPO/scripts/fixtures/build.py" "${build_args[@]}"
  flock -u 9
  exec 9>&-
fi
end=$(date +%s%N)
ms=$(((end - start) / 1000000))
say "fixtures ready in $CACHE/fixtures ($((ms / 1000)).$(printf '%03d' $((ms % 1000)))s)"
