# agentbus tasks. `just` lists them. Install just with `uv tool install rust-just`
# (or `bash scripts/setup.sh`, which also installs uv, Docker and the local base image).

set positional-arguments

# Ryuk (testcontainers' reaper) cannot be pulled here: no image registry.
export TESTCONTAINERS_RYUK_DISABLED := "true"

# The `docker compose` plugin when present, else Debian's docker-compose v1 (1.29).
compose_cli := if `docker compose version >/dev/null 2>&1 && echo plugin || true` == "plugin" { "docker compose" } else { "docker-compose" }
compose := compose_cli + " -f compose/compose.yaml -p agentbus"
# Both files: the cluster variant's services too (`just down` stops either stack).
compose_all := compose_cli + " -f compose/compose.yaml -f compose/compose.cluster.yaml -p agentbus"

# The compose stack's credentials (scripts/compose_auth.sh; gitignored). compose.yaml
# refuses to start without this variable.
export AGENTBUS_COMPOSE_AUTH_DIR := justfile_directory() / "compose" / ".auth"

# Built by scripts/setup.sh with mmdebstrap; images build offline on it when it exists.
local_base := env("AGENTBUS_BASE_IMAGE", "agentbus/base:bookworm")

[doc('List the recipes')]
default:
    @{{ just_executable() }} --justfile {{ justfile() }} --list --unsorted

[doc('Install uv, just, Docker, compose and the base image; sync the workspace (idempotent)')]
[group('dev')]
setup:
    bash scripts/setup.sh

[doc('Install every workspace package and the dev tools into .venv')]
[group('dev')]
sync:
    uv sync --all-packages

[doc('Build the images, then run every test, e.g. `just test -m "not slow" -x`')]
[group('dev')]
test *args: images
    uv run pytest "$@"

[doc('Check formatting, lint and types')]
[group('dev')]
lint:
    uv run ruff format --check
    uv run ruff check
    uv run mypy

[doc('Format and apply safe lint fixes')]
[group('dev')]
fmt:
    uv run ruff format
    uv run ruff check --fix

[doc('Regenerate libs/agentbus/schema/messages.json from the msgspec Structs')]
[group('dev')]
schema:
    mkdir -p libs/agentbus/schema
    uv run python -m agentbus.schema > libs/agentbus/schema/messages.json.tmp
    mv libs/agentbus/schema/messages.json.tmp libs/agentbus/schema/messages.json

[doc('Refresh docs/img/dashboard.png from the dashboard browser test')]
[group('dev')]
dashboard-screenshot:
    AGENTBUS_TEST_DASHBOARD_SCREENSHOT=docs/img/dashboard.png uv run pytest tests/dashboard/test_dashboard_browser.py -k overview -q

[doc('Build .wheels/ for offline image builds (workspace + locked third-party wheels)')]
[group('images')]
wheelhouse:
    bash scripts/wheelhouse.sh

[doc('Build agentbus/{nats,services,agent,postgres}:dev; BASE=image overrides the base image')]
[group('images')]
images:
    #!/usr/bin/env bash
    set -euo pipefail
    # One build at a time per machine: builds share .wheels/ and the image tags.
    exec 9>/tmp/agentbus-images.lock
    flock 9
    bash scripts/wheelhouse.sh
    # The local base has no index to reach: install from .wheels only.
    if [ -n "${BASE:-}" ]; then base=$BASE
    elif docker image inspect {{ local_base }} >/dev/null 2>&1; then base={{ local_base }}
    else base=python:3.12-slim
    fi
    no_index=0
    if [ "$base" = {{ local_base }} ]; then no_index=1; fi
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    for img in nats services agent postgres; do
      start=$SECONDS
      # postgres installs Debian's package (apt reaches the mirror from the local base
      # too) and takes its entrypoint from images/; the others build from the wheelhouse.
      context=.wheels
      if [ "$img" = postgres ]; then context=images; fi
      if ! docker build -f images/$img.Dockerfile -t agentbus/$img:dev \
          --build-arg BASE="$base" --build-arg PIP_NO_INDEX=$no_index "$context" >"$log" 2>&1; then
        cat "$log" >&2
        echo "error: building agentbus/$img:dev failed (BASE=$base PIP_NO_INDEX=$no_index)" >&2
        exit 1
      fi
      echo "built agentbus/$img:dev in $((SECONDS - start)) s (BASE=$base PIP_NO_INDEX=$no_index)"
    done
    # Drop the untagged images these tags replaced. Build stages carry no agentbus.image
    # label and stay: they are the layer cache.
    docker image prune --force --filter label=agentbus.image >/dev/null

[doc('Start nats, postgres + the six services (`just up cluster`: three clustered nats-servers); wait for the gateway (AGENTBUS_UP_TIMEOUT_S, default 90)')]
[group('stack')]
up variant="": images
    #!/usr/bin/env bash
    set -euo pipefail
    case "{{ variant }}" in
      "") files="-f compose/compose.yaml"; urls=nats://127.0.0.1:4222 ;;
      cluster)
        # compose.cluster.yaml: nats-1..3 (host ports 4222-4224), every stream R3
        files="-f compose/compose.yaml -f compose/compose.cluster.yaml"
        urls=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 ;;
      *) echo "error: unknown variant {{ variant }} (none, or cluster)" >&2; exit 2 ;;
    esac
    compose="{{ compose_cli }} $files -p agentbus"
    bash scripts/compose_auth.sh "$AGENTBUS_COMPOSE_AUTH_DIR"
    $compose up -d --remove-orphans
    timeout_s=${AGENTBUS_UP_TIMEOUT_S:-90}
    want=$($compose config --services | sort | tr '\n' ' ')
    deadline=$((SECONDS + timeout_s))
    prev=
    while :; do
      # "service status health restarts" per container of the project
      ids=$(docker ps -aq --filter label=com.docker.compose.project=agentbus)
      states=$(docker inspect -f '{{{{index .Config.Labels "com.docker.compose.service"}} {{{{.State.Status}} {{{{if .State.Health}}{{{{.State.Health.Status}}{{{{else}}none{{{{end}} {{{{.RestartCount}}' $ids 2>/dev/null | sort || true)
      running=$(awk '$2 == "running" && ($3 == "none" || $3 == "healthy") {print $1}' <<<"$states" | tr '\n' ' ')
      # Ready: everything up on two polls in a row with no restart between (no crash loop),
      # and the gateway answering on the published port.
      if [ "$running" = "$want" ] && [ "$states" = "$prev" ] \
          && python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" 2>/dev/null; then
        echo "agentbus is up: gateway http://127.0.0.1:8080  nats $urls"
        echo "the CLI's credentials: export AGENTBUS_CREDS_FILE=$AGENTBUS_COMPOSE_AUTH_DIR/creds/operator.creds"
        exit 0
      fi
      prev=$states
      if [ "$SECONDS" -ge "$deadline" ]; then
        $compose logs --no-color --tail=10 >&2 || true
        echo "error: the stack was not ready within ${timeout_s} s (AGENTBUS_UP_TIMEOUT_S)" >&2
        echo "  want running and healthy: $want" >&2
        echo "  ready: ${running:-none}" >&2
        echo "  containers (service status health restarts):" >&2
        sed 's/^/    /' <<<"${states:-none}" >&2
        echo "  or GET http://127.0.0.1:8080/healthz did not answer 2xx" >&2
        echo "see \`just logs <service>\` (above: the last 10 lines each); clean up with \`just down\`" >&2
        exit 1
      fi
      sleep 1
    done

[doc('Stop the stack (either variant), drop its volumes, remove agents its supervisor started')]
[group('stack')]
down:
    #!/usr/bin/env bash
    set -euo pipefail
    # Supervisor first, so it starts no agent while its agents are removed.
    {{ compose_all }} stop supervisor >/dev/null 2>&1 || true
    agents=$(docker ps -aq --filter label=agentbus.node=compose-node-1)
    if [ -n "$agents" ]; then
      echo "removing $(wc -w <<<"$agents") agent container(s)"
      docker rm -f -v $agents >/dev/null
    fi
    {{ compose_all }} down -v --remove-orphans

[doc('Follow logs, e.g. `just logs gateway supervisor`')]
[group('stack')]
logs *svc:
    {{ compose_all }} logs -f --tail=200 "$@"

[doc('Run a benchmark: `just bench tasks|fleet|state|events|cluster|idle|cli [--json FILE]` (figures, not tests)')]
[group('run')]
bench name *args: images
    #!/usr/bin/env bash
    set -euo pipefail
    shift  # the name; the rest are the benchmark's own options
    exec uv run python -m bench.{{ name }} "$@"

[doc('Run the review demo against the compose stack, e.g. `just demo --help`')]
[group('run')]
demo *args: images
    #!/usr/bin/env bash
    set -euo pipefail
    # The compose stack's operator creds while it runs (else the demo uses an embedded
    # stack, which has its own).
    operator=$AGENTBUS_COMPOSE_AUTH_DIR/creds/operator.creds
    running=$(docker ps -q --filter label=com.docker.compose.project=agentbus \
      --filter label=com.docker.compose.service=nats 2>/dev/null || true)
    if [ -z "${AGENTBUS_CREDS_FILE:-}" ] && [ -n "$running" ] && [ -f "$operator" ]; then
      export AGENTBUS_CREDS_FILE=$operator
    fi
    exec uv run agentbus demo review "$@"

[doc('Run nats-server (from the wheel) and the five services as local processes')]
[group('run')]
embedded *args:
    uv run agentbus embedded "$@"
