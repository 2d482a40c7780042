# shellcheck shell=bash
# The environment the SDK suites and the demo run in. Source it (bash):
#
#   source scripts/sdk-env.sh        # or: . scripts/sdk-env.sh
#
# It prepares, idempotently:
#   - a Python venv at ${KILN_CACHE_DIR:-.cache}/sdk/python with the pinned SDK
#     (tests/sdk/python/requirements.txt; reinstalled only when that changes),
#     put first on PATH;
#   - a loopback registry (Debian's docker-registry) on a free 127.0.0.1 port,
#     with the fixture images pushed as library/busybox:{latest,1.36},
#     library/busybox:multiplatform (the host platform and arm64) and
#     library/debian:{bookworm,latest};
#   - a kiln config that mirrors docker.io to that registry, so pipelines say
#     `busybox` or `debian:bookworm` as they would with Dagger (mirrors_only:
#     other docker.io images fail instead of reaching Docker Hub);
#   - the kiln binary (cargo build -p kiln; a no-op when up to date), unless
#     KILN_BIN already names one (an installed or prebuilt kiln).
#
# Exports: KILN_BIN, KILN_CONFIG, KILN_STATE_DIR, KILN_REGISTRY (host:port),
# KILN_REGISTRY_PID, KILN_SDK_TMP, KILN_SDK_VENV, KILN_FIXTURES, VIRTUAL_ENV, PATH.
# Defines kiln_sdk_cleanup (stops the registry by PID, removes the temp dir)
# and installs it as the EXIT trap unless KILN_SDK_NO_TRAP=1 (then call it
# yourself). A KILN_STATE_DIR set before sourcing is kept (and not removed).
# Needs the fixtures from `scripts/setup.sh --debian` (debian is optional:
# without it only busybox is served).

_kiln_sdk_say() { printf '[sdk-env] %s\n' "$*" >&2; }

_kiln_sdk_main() {
  local repo cache
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
  cache="${KILN_CACHE_DIR:-$repo/.cache}"
  export KILN_REPO="$repo"
  export KILN_FIXTURES="$cache/fixtures"
  # Everything here talks to 127.0.0.1 only: keep any configured proxy out of it.
  case ",${NO_PROXY:-}," in *,127.0.0.1,*) ;; *) export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" ;; esac
  case ",${no_proxy:-}," in *,127.0.0.1,*) ;; *) export no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}" ;; esac

  # Already set up in this shell, registry still alive: nothing to do.
  if [[ -n "${KILN_REGISTRY_PID:-}" && -n "${KILN_SDK_TMP:-}" && -d "${KILN_SDK_TMP}" ]] \
    && kill -0 "$KILN_REGISTRY_PID" 2>/dev/null && _kiln_sdk_ready "$KILN_REGISTRY"; then
    _kiln_sdk_say "reusing registry $KILN_REGISTRY (pid $KILN_REGISTRY_PID)"
    return 0
  fi

  _kiln_sdk_venv "$repo" "$cache" || return 1
  _kiln_sdk_kiln "$repo" || return 1

  if [[ ! -f "$KILN_FIXTURES/busybox/index.json" ]]; then
    _kiln_sdk_say "no fixtures in $KILN_FIXTURES: run scripts/setup.sh --debian first"
    return 1
  fi

  KILN_SDK_TMP="$(mktemp -d "${TMPDIR:-/tmp}/kiln-sdk.XXXXXX")" || return 1
  export KILN_SDK_TMP
  _kiln_sdk_registry || return 1
  _kiln_sdk_push || return 1

  export KILN_CONFIG="$KILN_SDK_TMP/kiln.toml"
  cat >"$KILN_CONFIG" <<EOF
# Written by scripts/sdk-env.sh: docker.io images come from the loopback
# registry that holds the fixtures (loopback registries are plain HTTP),
# and only from there: an image missing from it fails, never reaching Docker Hub.
[registry]
mirrors_only = true
[registry.mirrors]
"docker.io" = ["$KILN_REGISTRY"]
# Tests make many state dirs: their engines need not wait long for clients.
[engine]
idle_timeout = "15s"
EOF
  if [[ -z "${KILN_STATE_DIR:-}" ]]; then
    export KILN_STATE_DIR="$KILN_SDK_TMP/state" KILN_SDK_OWN_STATE=1
    mkdir -p "$KILN_STATE_DIR"
  fi
  if [[ "${KILN_SDK_NO_TRAP:-0}" != 1 ]]; then
    trap kiln_sdk_cleanup EXIT
  fi
  _kiln_sdk_say "registry $KILN_REGISTRY (pid $KILN_REGISTRY_PID), config $KILN_CONFIG, state $KILN_STATE_DIR"
}

# --- Python venv with the pinned SDK -----------------------------------------
_kiln_sdk_venv() {
  local repo="$1" cache="$2"
  local req="$repo/tests/sdk/python/requirements.txt"
  local venv="$cache/sdk/python"
  local lock rc=0
  mkdir -p "$(dirname "$venv")" || return 1
  # Other suites may source this at the same time: one (re)builds, the rest wait.
  exec {lock}>"$venv.lock" || return 1
  if flock "$lock"; then
    _kiln_sdk_venv_build "$req" "$venv" || rc=1
  else
    rc=1
  fi
  exec {lock}>&-
  ((rc == 0)) || return 1
  export KILN_SDK_VENV="$venv"
  export VIRTUAL_ENV="$venv"
  case ":$PATH:" in
    *":$venv/bin:"*) ;;
    *) export PATH="$venv/bin:$PATH" ;;
  esac
}

# (Re)creates the venv when missing or when the requirements changed.
_kiln_sdk_venv_build() {
  local req="$1" venv="$2"
  local py=python3 want have
  [[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
  want="$(sha256sum "$req" | cut -d' ' -f1)" || return 1
  have="$(cat "$venv/.requirements.sha256" 2>/dev/null || true)"
  [[ -x "$venv/bin/python" && "$want" == "$have" ]] && return 0
  if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      _kiln_sdk_say "installing python3-venv"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null || return 1
    else
      _kiln_sdk_say "$py cannot create venvs: install python3-venv"
      return 1
    fi
  fi
  _kiln_sdk_say "creating $venv (dagger-io and pytest from $req)"
  rm -rf "$venv"
  "$py" -m venv "$venv" || return 1
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" || {
    _kiln_sdk_say "pip install failed"
    return 1
  }
  echo "$want" >"$venv/.requirements.sha256"
}

# --- kiln binary ----------------------------------------------------------------
_kiln_sdk_kiln() {
  local repo="$1"
  local target="${CARGO_TARGET_DIR:-$repo/target}"
  if [[ -n "${KILN_BIN:-}" ]]; then
    # Given by the caller (an installed or prebuilt kiln): use it as is.
    [[ -x "$KILN_BIN" ]] || {
      _kiln_sdk_say "KILN_BIN=$KILN_BIN is not an executable"
      return 1
    }
    export KILN_BIN
    return 0
  fi
  if command -v cargo >/dev/null; then
    (cd "$repo" && cargo build -q -p kiln) || {
      _kiln_sdk_say "cargo build -p kiln failed"
      return 1
    }
  elif [[ ! -x "$target/debug/kiln" ]]; then
    _kiln_sdk_say "no cargo and no $target/debug/kiln"
    return 1
  fi
  export KILN_BIN="$target/debug/kiln"
}

# --- loopback registry ------------------------------------------------------------
_kiln_sdk_ready() {
  local code
  if command -v curl >/dev/null; then
    code="$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/v2/" 2>/dev/null)"
  else
    code="$("$KILN_SDK_VENV/bin/python" - "$1" 2>/dev/null <<'PY'
import sys, urllib.error, urllib.request
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(direct.open(f"http://{sys.argv[1]}/v2/", timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print(0)
PY
)"
  fi
  [[ "$code" == 200 || "$code" == 401 ]]
}

_kiln_sdk_free_port() {
  "${KILN_SDK_VENV}/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_kiln_sdk_registry() {
  local dir="$KILN_SDK_TMP/registry" attempt port pid i
  mkdir -p "$dir/storage"
  for attempt in 1 2 3 4 5; do
    port="$(_kiln_sdk_free_port)" || return 1
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: kiln-sdk-$port
EOF
    docker-registry serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
    pid=$!
    for i in $(seq 1 300); do
      if ! kill -0 "$pid" 2>/dev/null; then
        break
      fi
      if _kiln_sdk_ready "127.0.0.1:$port"; then
        export KILN_REGISTRY="127.0.0.1:$port" KILN_REGISTRY_PID="$pid"
        return 0
      fi
      sleep 0.1
    done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if ! grep -q "address already in use" "$dir/registry.log"; then
      _kiln_sdk_say "docker-registry did not start (attempt $attempt); its log:"
      cat "$dir/registry.log" >&2
      return 1
    fi
  done
  _kiln_sdk_say "docker-registry did not start: no free port after 5 attempts"
  return 1
}

# _kiln_sdk_copy LAYOUT DEST [skopeo copy flags...] (--all for every platform
# of an index)
_kiln_sdk_copy() {
  local layout="$1" dest="$2"
  shift 2
  skopeo --insecure-policy copy --quiet --dest-tls-verify=false --preserve-digests "$@" \
    "oci:$layout:latest" "docker://$KILN_REGISTRY/$dest" || {
    _kiln_sdk_say "skopeo copy $layout -> $dest failed"
    return 1
  }
}

_kiln_sdk_push() {
  local f="$KILN_FIXTURES"
  _kiln_sdk_copy "$f/busybox" library/busybox:latest || return 1
  _kiln_sdk_copy "$f/busybox" library/busybox:1.36 || return 1
  # Two platforms: the host's and a foreign one (emulation tests).
  _kiln_sdk_copy "$f/multiplatform" library/busybox:multiplatform --all || return 1
  if [[ -f "$f/debian/index.json" ]]; then
    _kiln_sdk_copy "$f/debian" library/debian:bookworm || return 1
    _kiln_sdk_copy "$f/debian" library/debian:latest || return 1
    if [[ -f "$f/postgres/index.json" ]]; then
      _kiln_sdk_copy "$f/postgres" library/postgres:15 || return 1
      _kiln_sdk_copy "$f/postgres" library/postgres:latest || return 1
    else
      _kiln_sdk_say "no postgres fixture (scripts/setup.sh --debian): postgres is not served"
    fi
  else
    _kiln_sdk_say "no debian fixture (scripts/setup.sh --debian): only busybox is served"
  fi
}

# --- cleanup ---------------------------------------------------------------------
# Safe under `set -e` (the caller's exit status is kept).
kiln_sdk_cleanup() {
  if [[ -n "${KILN_REGISTRY_PID:-}" ]]; then
    kill "$KILN_REGISTRY_PID" 2>/dev/null || true
    wait "$KILN_REGISTRY_PID" 2>/dev/null || true
    unset KILN_REGISTRY_PID
  fi
  if [[ -n "${KILN_SDK_TMP:-}" && -d "$KILN_SDK_TMP" && "${KILN_SDK_KEEP:-0}" != 1 ]]; then
    rm -rf "$KILN_SDK_TMP" || true
  fi
  if [[ "${KILN_SDK_OWN_STATE:-0}" == 1 ]]; then
    unset KILN_STATE_DIR KILN_SDK_OWN_STATE
  fi
  unset KILN_SDK_TMP
  return 0
}

_kiln_sdk_main || {
  _kiln_sdk_say "setup failed"
  kiln_sdk_cleanup
  return 1 2>/dev/null || exit 1
}
