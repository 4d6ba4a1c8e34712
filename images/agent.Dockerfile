# An agentbus agent: the agentbus library only, run as a non-root user.
#   docker run agentbus/agent:dev                  (the demo reviewer agent)
#
# The build context is the wheelhouse, not the repo (scripts/wheelhouse.sh fills .wheels/):
#   docker build -f images/agent.Dockerfile -t agentbus/agent:dev .wheels
# On this project's machines (no registry, no PyPI from containers) `just images` adds
#   --build-arg BASE=agentbus/base:bookworm --build-arg PIP_NO_INDEX=1
# With the default base, pip takes the agentbus wheel from /wheels and the rest from PyPI,
# pinned to uv.lock by requirements-agent.txt.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
# PIP_NO_INDEX=1 installs from /wheels only (pip reads build args from the environment).
ARG PIP_NO_INDEX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# Third-party wheels first: this layer survives changes to agentbus code.
COPY *.whl requirements-agent.txt /wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --find-links /wheels --requirement /wheels/requirements-agent.txt
# The workspace wheel by path, so a same-named project on an index can never shadow it.
# pip and setuptools then leave the venv: nothing installs at run time.
COPY workspace/agentbus_runtime-*.whl /wheels/workspace/
RUN /opt/venv/bin/pip install --find-links /wheels \
      --constraint /wheels/requirements-agent.txt /wheels/workspace/agentbus_runtime-*.whl \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

FROM ${BASE}
LABEL agentbus.image="agent" \
      org.opencontainers.image.title="agentbus-agent" \
      org.opencontainers.image.description="agentbus agent runtime (default: the demo reviewer)"
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/agent agent
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/agent
CMD ["python", "-m", "agentbus.agents.reviewer"]
