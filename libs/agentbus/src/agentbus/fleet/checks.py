"""Checks of a deployment spec that its types cannot express, and the error they raise.

``check_deployment`` lists every problem of a well-typed ``Deployment`` (token names,
image or command, backoff cap, resources within limits, environment names (plain
and secret), node selector, subscription patterns); ``validate_deployment`` raises them as one
``SpecError``. Fleet files run them on load (``agentbus.fleet.spec``), the scheduler on
every deploy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agentbus.errors import ContractError, SpecError, SpecIssue
from agentbus.messages import Deployment
from agentbus.names import check_token, check_topic_pattern

_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV = frozenset(
    {
        "AGENTBUS_NATS_URL",
        "AGENTBUS_PREFIX",
        "AGENTBUS_AGENT_ID",
        "AGENTBUS_AGENT_NODE_ID",
        "AGENTBUS_AGENT_DEPLOYMENT",
        "AGENTBUS_AGENT_REPLICA",
        "AGENTBUS_AGENT_MAX_CONCURRENCY",
        "AGENTBUS_AGENT_CAPABILITIES",
    }
)
"""Set by the supervisor for every replica (use ``capabilities``, ``max_concurrency``)."""


def check_deployment(d: Deployment) -> list[SpecIssue]:
    """Problems of a well-typed spec that its types cannot express.

    Fields are dotted Struct paths (``backoff.initial_s``). Empty if the spec is fine.
    """
    issues: list[SpecIssue] = []

    def bad(field: str, message: str) -> None:
        issues.append(SpecIssue(field, message))

    tokens = [("name", "deployment name", d.name)]
    tokens += [(f"capabilities[{i}]", "capability", c) for i, c in enumerate(d.capabilities)]
    for field, kind, value in tokens:
        try:
            check_token(kind, value)
        except ContractError as exc:
            bad(field, str(exc))
    if not d.image and not d.command:
        bad("image", "needs an image or a command (image: docker nodes, command: processes)")
    if d.command is not None and not d.command:
        bad("command", "must not be empty")
    if d.image_command is not None and not (d.image and d.image_command):
        bad("image_command", "needs an image and must not be empty")
    if d.backoff.initial_s > d.backoff.max_s:
        cap_s = d.backoff.max_s
        bad("backoff.initial_s", f"{d.backoff.initial_s:g} s is above the cap max_s = {cap_s:g} s")
    lim, res = d.limits, d.resources
    if lim.cpus is not None and res.cpus > lim.cpus:
        bad("resources.cpus", f"{res.cpus:g} declared is above limits.cpus = {lim.cpus:g}")
    if lim.memory_bytes is not None and res.memory_bytes > lim.memory_bytes:
        limit = lim.memory_bytes
        bad("resources.memory_bytes", f"{res.memory_bytes} is above limits.memory_bytes = {limit}")
    if d.health is not None and not d.health.command:
        bad("health.command", "must not be empty")
    issues += check_env_names("env", d.env)
    issues += check_env_names("secret_env", d.secret_env)
    for key in sorted(set(d.env) & set(d.secret_env)):
        bad(f"secret_env.{key}", "is also in env (a name is either plain or secret)")
    seen: set[tuple[str, str | None]] = set()
    for i, sub in enumerate(d.subscriptions):
        try:
            check_topic_pattern(sub.pattern)
        except ContractError as exc:
            bad(f"subscriptions[{i}].pattern", str(exc))
        if (sub.pattern, sub.name) in seen:
            bad(f"subscriptions[{i}]", f"{sub.pattern!r} is declared twice with one name")
        seen.add((sub.pattern, sub.name))
    for key, value in d.node_selector.items():
        if not key or not value:
            bad(f"node_selector.{key}", "label keys and values must not be empty")
    return issues


def check_env_names(field: str, names: Iterable[str]) -> list[SpecIssue]:
    """Problems of environment variable ``names`` of ``field`` (``env``, ``secret_env``)."""
    issues = []
    for key in names:
        if not _ENV_KEY_RE.fullmatch(key):
            issues.append(SpecIssue(f"{field}.{key}", "is not a valid environment variable name"))
        elif key in RESERVED_ENV:
            issues.append(SpecIssue(f"{field}.{key}", "is set by the supervisor for every replica"))
    return issues


def validate_deployment(d: Deployment) -> Deployment:
    """Return ``d`` if ``check_deployment`` finds nothing.

    Raises:
        SpecError: every problem found, on one line, the source naming the deployment.
    """
    if issues := check_deployment(d):
        raise SpecError(f"deployment {d.name!r}", issues, one_line=True)
    return d
