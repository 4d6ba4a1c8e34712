#!/usr/bin/env bash
# Idempotent machine setup shared by the README quickstart and CI (.ci/run).
# Installs: uv + just (PyPI), docker.io + docker-compose + mmdebstrap + postgresql + chromium
# (+ nodejs/npm if missing) (Debian), the Node.js example agent's and the dashboard's npm packages,
# starts dockerd when no engine answers, builds the local base image, syncs the workspace.
# Safe to run twice: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${AGENTBUS_BASE_IMAGE:-agentbus/base:bookworm}"
export PIP_BREAK_SYSTEM_PACKAGES=1  # Debian 12 marks its python3 externally managed
log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. uv and just (PyPI wheels; the PyPI package named "just" is something else).
if ! command -v uv >/dev/null 2>&1; then
  log "installing uv"
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
if ! command -v just >/dev/null 2>&1; then
  log "installing just (rust-just)"
  python3 -m pip install --quiet --disable-pip-version-check rust-just
fi

# 2. Debian packages: Docker engine, compose v1, mmdebstrap for the base image; redis-server
#    (the Celery peer of `just bench tasks`); podman with runc (the Podman runtime path);
#    docker-registry (the distribution v2 registry the image-pull test starts on a free port);
#    iproute2 and iptables (hosts as network namespaces: tests/_harness/netns.py).
#    postgresql (the audit trail's database: tests run initdb/pg_ctl as the postgres user).
#    chromium (the dashboard's browser tests drive it with Playwright: tests/dashboard/).
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
command -v mmdebstrap >/dev/null 2>&1 || need_pkgs+=(mmdebstrap)
command -v npm >/dev/null 2>&1 || need_pkgs+=(nodejs npm)
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v podman >/dev/null 2>&1 || need_pkgs+=(podman runc)
command -v docker-registry >/dev/null 2>&1 || need_pkgs+=(docker-registry)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_pkgs+=(postgresql)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  # The package's own service (port 5000) is not used: the tests start their own registry.
  if [[ " ${need_pkgs[*]} " == *" docker-registry "* ]] && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
  # Nor is the cluster the postgresql package starts on 5432: tests and `agentbus
  # embedded` users run their own (docs/operations.md, "Audit trail").
  if [[ " ${need_pkgs[*]} " == *" postgresql "* ]] && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
fi

# 3. A running Docker engine.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  as_root mkdir -p /var/log
  as_root nohup dockerd >/var/log/agentbus-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/agentbus-dockerd.log"; exit 1; }
fi

# 4. Local base image (no registry here): Debian bookworm with python3 + venv.
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "building base image $BASE_IMAGE with mmdebstrap (~25 s)"
  tmp=$(mktemp -d)
  as_root mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates bookworm "$tmp/base.tar"
  docker import "$tmp/base.tar" "$BASE_IMAGE" >/dev/null
  rm -rf "$tmp"
fi

# 5. The workspace.
log "syncing the uv workspace"
uv sync --all-packages --quiet

# 6. The Node.js example agent (written from docs/protocol.md alone; tests/e2e runs it).
node_agent=examples/node-agent
if [ -f "$node_agent/package-lock.json" ] &&
  { [ ! -d "$node_agent/node_modules" ] || [ "$node_agent/package-lock.json" -nt "$node_agent/node_modules" ]; }; then
  log "installing the Node.js example agent's packages"
  npm ci --prefix "$node_agent" --silent --no-audit --no-fund
  touch "$node_agent/node_modules"
fi

# 7. The dashboard's browser libraries (htmx from npm) into the gateway package.
bash scripts/web.sh
log "done"
