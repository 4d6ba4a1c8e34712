# PostgreSQL 15 from Debian for the compose stack's audit trail (the archiver's database).
#   docker run -d -e POSTGRES_PASSWORD=... -v agentbus-pg:/var/lib/postgresql/data agentbus/postgres:dev
#
# The build context is images/ (the entrypoint), not the wheelhouse; the packages come from
# Debian's mirror, which builds on the local base reach:
#   docker build -f images/postgres.Dockerfile -t agentbus/postgres:dev images
# First start on an empty data directory: initdb, then the role and database
# POSTGRES_USER / POSTGRES_DB (default agentbus) with POSTGRES_PASSWORD. Clients on the
# container's own networks (pg_hba `samenet`) log in with that password; nothing else
# is let in from outside the container (images/postgres-entrypoint.sh).
ARG BASE=python:3.12-slim
FROM ${BASE}
LABEL agentbus.image="postgres" \
      org.opencontainers.image.title="agentbus-postgres" \
      org.opencontainers.image.description="Debian's PostgreSQL 15 for the agentbus audit trail"
# No Debian "main" cluster: the entrypoint makes one on the data volume.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/agentbus.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
 && rm -rf /var/lib/apt/lists/* \
 && test -x /usr/lib/postgresql/15/bin/postgres \
 && mkdir -p /var/lib/postgresql/data \
 && chown postgres:postgres /var/lib/postgresql/data \
 && chmod 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
# Ready once the server accepts connections (pg_isready needs no password).
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s --retries=5 \
  CMD ["pg_isready", "--quiet", "--host", "127.0.0.1", "--port", "5432"]
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
# Sockets in /tmp: the root filesystem may be read-only (compose: read_only, tmpfs /tmp).
CMD ["-c", "listen_addresses=*", "-c", "unix_socket_directories=/tmp"]
