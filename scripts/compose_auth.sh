#!/usr/bin/env bash
# Credentials of the compose stack (`just up` runs this before `docker-compose up`):
#   bash scripts/compose_auth.sh DIR
# Makes (or keeps) the fleet's keys in DIR with `agentbus auth init` (server.conf names
# the resolver store on nats' /data volume), the compose supervisor's node identity,
# the directory the supervisor writes agent creds into, and gives the creds files of
# the services that run as uid 10001 to that user (they are 0600). Idempotent; DIR is
# gitignored (compose/.auth): nothing secret is committed.
set -euo pipefail
dir=${1:?usage: compose_auth.sh DIR}
node=${AGENTBUS_COMPOSE_NODE_ID:-compose-node-1}
service_uid=10001

uv run agentbus auth init "$dir" --resolver-dir /data/resolver >/dev/null
if [ ! -s "$dir/creds/supervisor-$node.creds" ]; then
  uv run agentbus auth creds supervisor --node "$node" --dir "$dir" >/dev/null
fi
mkdir -p "$dir/agents"
chmod 0700 "$dir/agents"

files=()
for svc in registry scheduler checkpoint gateway archiver; do
  f="$dir/creds/$svc.creds"
  [ "$(stat -c %u "$f")" = "$service_uid" ] || files+=("$svc.creds")
done
if [ "${#files[@]}" -gt 0 ]; then
  if ! (cd "$dir/creds" && chown "$service_uid:$service_uid" "${files[@]}") 2>/dev/null; then
    # Not root: let a container (root inside) change the owner.
    docker run --rm --user 0 --network none --entrypoint chown \
      -v "$(cd "$dir/creds" && pwd):/creds" agentbus/nats:dev \
      "$service_uid:$service_uid" "${files[@]/#//creds/}"
  fi
fi
echo "credentials: $dir (operator: $dir/creds/operator.creds)"
