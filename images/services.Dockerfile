# All five agentbus services, and the optional archiver, in one image; the command picks one:
#   docker run agentbus/services:dev python -m agentbus_scheduler     (or agentbus-scheduler)
#
# The build context is the wheelhouse, not the repo (scripts/wheelhouse.sh fills .wheels/):
#   docker build -f images/services.Dockerfile -t agentbus/services:dev .wheels
# On this project's machines (no registry, no PyPI from containers) `just images` adds
#   --build-arg BASE=agentbus/base:bookworm --build-arg PIP_NO_INDEX=1
# With the default base, pip takes the workspace wheels from /wheels and the rest from PyPI,
# pinned to uv.lock by requirements-services.txt.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
# PIP_NO_INDEX=1 installs from /wheels only (pip reads build args from the environment).
ARG PIP_NO_INDEX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# Third-party wheels first: this layer survives changes to agentbus code.
COPY *.whl requirements-services.txt /wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --find-links /wheels --requirement /wheels/requirements-services.txt
# Workspace wheels by path, so a same-named project on an index can never shadow them.
# pip and setuptools then leave the venv: nothing installs at run time.
COPY workspace/ /wheels/workspace/
RUN /opt/venv/bin/pip install --find-links /wheels \
      --constraint /wheels/requirements-services.txt \
      /wheels/workspace/agentbus_runtime-*.whl \
      /wheels/workspace/agentbus_registry-*.whl \
      /wheels/workspace/agentbus_scheduler-*.whl \
      /wheels/workspace/agentbus_supervisor-*.whl \
      /wheels/workspace/agentbus_checkpoint-*.whl \
      /wheels/workspace/agentbus_gateway-*.whl \
      /wheels/workspace/agentbus_archiver-*.whl \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

FROM ${BASE}
LABEL agentbus.image="services" \
      org.opencontainers.image.title="agentbus-services" \
      org.opencontainers.image.description="agentbus registry, scheduler, supervisor, checkpoint, gateway and archiver"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# The services write no files: they run as this user, also on a read-only root
# filesystem (compose: user 10001, read_only). The supervisor runs as root
# (`user: root` in compose): it talks to the host's /var/run/docker.sock.
RUN useradd --system --uid 10001 --user-group --no-create-home agentbus
USER agentbus
# Health probe (compose healthcheck): python -m agentbus.service.health <service>
CMD ["python", "-m", "agentbus_gateway"]
