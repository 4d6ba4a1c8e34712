#!/usr/bin/env bash
# Browser libraries of the gateway's dashboard, from npm (services/gateway/web/package-lock.json):
# `npm ci`, then copy their dist files into the gateway package's static/vendor/ (gitignored),
# where the gateway serves them at /static/vendor/ and the gateway wheel ships them.
# Called by scripts/setup.sh and scripts/wheelhouse.sh (before the wheels are built).
# Idempotent: npm ci runs only when the lock file is newer than node_modules; a file is only
# rewritten when its bytes change (docker's cache keys on content).
set -euo pipefail
cd "$(dirname "$0")/.."

web=services/gateway/web
vendor=services/gateway/src/agentbus_gateway/dashboard/static/vendor
log() { printf '[web] %s\n' "$*" >&2; }

if ! command -v npm >/dev/null 2>&1; then
  log "npm is missing (scripts/setup.sh installs Debian's nodejs and npm)"
  exit 1
fi
if [ ! -d "$web/node_modules" ] || [ "$web/package-lock.json" -nt "$web/node_modules" ]; then
  log "installing the dashboard's npm packages"
  npm ci --prefix "$web" --silent --no-audit --no-fund
  touch "$web/node_modules"
fi

mkdir -p "$vendor"
# source in node_modules -> name under static/vendor
files=(
  "htmx.org/dist/htmx.min.js htmx.min.js"
  "htmx-ext-sse/dist/sse.js sse.js"
  "htmx-ext-json-enc/dist/json-enc.js json-enc.js"
  "htmx.org/LICENSE LICENSE.htmx.txt"
)
for pair in "${files[@]}"; do
  read -r src name <<<"$pair"
  cmp -s "$web/node_modules/$src" "$vendor/$name" || cp -f "$web/node_modules/$src" "$vendor/$name"
done
log "dashboard libraries in $vendor: $(ls "$vendor" | tr '\n' ' ')"
