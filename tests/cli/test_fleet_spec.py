"""Fleet files: units, errors that name file, line and field, impossible specs, examples."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from agentbus.cli import app
from agentbus.cli.fleet import changed_fields
from agentbus.errors import ContractError
from agentbus.fleet.spec import (
    SpecError,
    check_deployment,
    dump_fleet,
    load_fleet,
    parse_fleet,
    validate_deployment,
)
from agentbus.messages import Backoff, Deployment
from agentbus.messages.fleet import Limits, Resources
from agentbus.units import (
    format_duration_s,
    format_size_bytes,
    parse_cpus,
    parse_duration_s,
    parse_size_bytes,
)

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "fleets").glob("*.yaml"))


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_fleet(text, source="fleet.yaml")
    assert isinstance(info.value, ContractError)
    return str(info.value).splitlines()


def one(body: str) -> str:
    """A fleet with one deployment ``web`` whose fields are ``body`` (indented 4)."""
    lines = "\n".join(f"    {line}" for line in body.strip("\n").splitlines())
    return f"deployments:\n  web:\n{lines}\n"


# -- units ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("45", 45.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("0s", 0.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration_s(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-1s", -1, "10 s", "1d", True, None, "s", "1.5.2s"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like 500ms, 30s or 2m"):
        parse_duration_s(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (4096, 4096),
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("500M", 5 * 10**8),
        ("64KiB", 65536),
        ("64k", 64000),
        ("1.5Gi", 3 * 2**29),
        ("100", 100),
        ("2MB", 2 * 10**6),
        ("1Ti", 2**40),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size_bytes(value) == size


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="expected a size like 512Mi or 1G, got 'lots'"):
        parse_size_bytes("lots")
    with pytest.raises(ValueError, match=r"'512m' is ambiguous: write 512Mi .* or 512M"):
        parse_size_bytes("512m")
    for bad in (-1, True, 1.5, "1Xi"):
        with pytest.raises(ValueError, match="expected a size"):
            parse_size_bytes(bad)


def test_cpus() -> None:
    assert [parse_cpus(v) for v in (0.5, 2, "0.25", "500m", "1500m")] == [0.5, 2, 0.25, 0.5, 1.5]
    for bad in ("half", -1, "0.5m", True):
        with pytest.raises(ValueError, match=r"expected CPU cores like 0\.5 or 500m"):
            parse_cpus(bad)


def test_formatting_inverts_parsing() -> None:
    for text in ("512Mi", "1Gi", "1.5Gi", "64Ki"):
        assert format_size_bytes(parse_size_bytes(text)) == text
    assert [format_duration_s(s) for s in (42, 192, 7500, 273600)] == [
        "42s",
        "3m12s",
        "2h05m",
        "3d04h",
    ]


# -- the shape ---------------------------------------------------------------------------
def test_full_spec_with_units_and_short_names() -> None:
    spec = parse_fleet(
        one("""
image: agentbus/agent:dev
image_command: python -m agentbus.agents.echo --greeting 'hello world'
replicas: 3
capabilities: [echo, upper]
env: {PORT: 8080, MODE: fast}
limits: {memory: 256Mi, cpus: 500m, pids: 64}
resources: {cpus: 0.25, memory: 128Mi}
backoff: {initial: 250ms, factor: 3, max: 1m, jitter: 0.2}
backoff_reset: 2m
crash_loop: {max_restarts: 4, window: 90s}
health: {command: [sh, -c, "exit 0"], interval: 5s, timeout: 1s, retries: 2, start_period: 3s}
heartbeat_timeout: null
node_selector: {zone: a, tier: 2}
spread: none
stop_grace: 20s
max_concurrency: 4
restart_policy: on-failure
""")
    )
    (d,) = spec.deployments
    assert d.name == "web"
    assert d.image_command == ["python", "-m", "agentbus.agents.echo", "--greeting", "hello world"]
    assert d.env == {"PORT": "8080", "MODE": "fast"}
    assert d.limits == Limits(memory_bytes=256 * 2**20, cpus=0.5, pids=64)
    assert d.resources == Resources(cpus=0.25, memory_bytes=128 * 2**20)
    assert d.backoff == Backoff(initial_s=0.25, factor=3, max_s=60, jitter=0.2)
    assert (d.backoff_reset_s, d.crash_loop.max_restarts, d.crash_loop.window_s) == (120, 4, 90)
    assert d.health is not None
    assert (d.health.command, d.health.interval_s, d.health.start_period_s) == (
        ["sh", "-c", "exit 0"],
        5,
        3,
    )
    assert d.heartbeat_timeout_s is None
    assert d.node_selector == {"zone": "a", "tier": "2"}
    assert (d.spread, d.stop_grace_s, d.max_concurrency, d.restart_policy) == (
        "none",
        20.0,
        4,
        "on-failure",
    )


def test_suffixed_names_take_plain_numbers_and_both_forms_are_equal() -> None:
    short = parse_fleet(
        one("command: [run]\nstop_grace: 1m\nlimits: {memory: 8Mi}\nresources: {memory: 64Ki}")
    )
    long = parse_fleet(
        one(
            "command: [run]\nstop_grace_s: 60\nlimits: {memory_bytes: 8388608}\n"
            "resources: {memory_bytes: 65536}"
        )
    )
    assert short.deployments == long.deployments
    assert errors_of(one("command: [run]\nstop_grace: 1m\nstop_grace_s: 60")) == [
        "fleet.yaml:5: deployments.web.stop_grace_s: given twice (also as 'stop_grace_s' or its "
        "short form)"
    ]


def test_order_of_deployments_is_kept_and_empty_fleet_is_allowed() -> None:
    text = "deployments:\n  b: {command: [x]}\n  a: {command: [y]}\n  c: {command: [z]}\n"
    assert [d.name for d in parse_fleet(text).deployments] == ["b", "a", "c"]
    assert parse_fleet("version: 1\ndeployments: {}\n").deployments == []
    assert parse_fleet("deployments:\n").deployments == []
    assert parse_fleet("x-shared: {a: 1}\ndeployments: {}\n").deployments == []


def test_yaml_anchors_and_merge_keys() -> None:
    text = """
x-base: &base
  image: agentbus/agent:dev
  env: {A: "1"}
deployments:
  one: {<<: *base, replicas: 2}
  two:
    <<: *base
    env: {B: "2"}
"""
    one_, two = parse_fleet(text).deployments
    assert (one_.image, one_.replicas, one_.env) == ("agentbus/agent:dev", 2, {"A": "1"})
    assert (two.image, two.env) == ("agentbus/agent:dev", {"B": "2"})


# -- errors ------------------------------------------------------------------------------
def test_errors_name_file_line_and_field_path() -> None:
    text = """version: 1
deployments:
  web:
    image: agentbus/agent:dev
    limits:
      memory: lots
    replica: 3
  api:
    command: serve
    max_concurrency: 0
    stop_grace: soon
"""
    assert errors_of(text) == [
        "fleet.yaml:6: deployments.web.limits.memory: expected a size like 512Mi or 1G, got 'lots'",
        "fleet.yaml:7: deployments.web.replica: unknown field (did you mean 'replicas'?)",
        "fleet.yaml:11: deployments.api.stop_grace: expected a duration like 500ms, 30s or 2m, "
        "got 'soon'",
    ]
    # The type checks of a deployment run once its fields convert.
    assert errors_of(one("command: serve\nmax_concurrency: 0")) == [
        "fleet.yaml:4: deployments.web.max_concurrency: expected int >= 1, got 0"
    ]
    assert errors_of(one("command: serve\nreplicas: many")) == [
        "fleet.yaml:4: deployments.web.replicas: expected int, got str"
    ]
    assert errors_of(one("command: serve\nlimits: {memory: 1Ki}")) == [
        "fleet.yaml:4: deployments.web.limits.memory: expected int >= 4194304, got 1024"
    ]


def test_load_fleet_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(one("image: x\nlimits: {cpus: lots}"))
    with pytest.raises(SpecError) as info:
        load_fleet(path)
    assert str(info.value) == (
        f"{path}:4: deployments.web.limits.cpus: expected CPU cores like 0.5 or 500m, got 'lots'"
    )
    assert info.value.issues[0].field == "deployments.web.limits.cpus"
    with pytest.raises(SpecError, match=r"missing\.yaml: file: cannot read it"):
        load_fleet(tmp_path / "missing.yaml")


FILE_ERRORS = [
    ("deployments:\n  web: {image: [}\n", "2: yaml: not valid YAML"),
    ("- a\n- b\n", "1: (top level): expected a mapping with 'deployments', got a list"),
    ("", " (top level): expected a mapping with 'deployments', got null"),
    ("version: 2\ndeployments: {}\n", "1: version: unsupported version 2 (expected 1)"),
    ("deployment: {}\n", "1: deployment: unknown top-level key"),
    ("version: 1\n", "1: deployments: missing (use 'deployments: {}'"),
    ("deployments: [web]\n", "1: deployments: expected a mapping of name -> spec, got a list"),
    ("deployments:\n  web: 3\n", "2: deployments.web: expected a mapping, got int"),
]


@pytest.mark.parametrize(("text", "error"), FILE_ERRORS)
def test_file_level_errors(text: str, error: str) -> None:
    assert errors_of(text)[0].startswith(f"fleet.yaml:{error}")


def test_duplicate_names_and_keys_are_refused() -> None:
    text = "deployments:\n  web: {image: a}\n  api: {image: b}\n  web: {image: c}\n"
    assert errors_of(text) == ["fleet.yaml:4: deployments.web: duplicate key"]
    assert errors_of(one("image: a\nreplicas: 1\nreplicas: 2")) == [
        "fleet.yaml:5: deployments.web.replicas: duplicate key"
    ]
    assert errors_of(one("name: api\nimage: a")) == [
        "fleet.yaml:3: deployments.web.name: 'api' differs from the key 'web'"
    ]
    assert parse_fleet(one("name: web\nimage: a")).deployments[0].name == "web"


IMPOSSIBLE = [
    ("replicas: 2", "image: needs an image or a command (image: docker nodes, command: processes)"),
    ("image: ''", "image: needs an image or a command"),
    ("image: a\ncommand: []", "command: must not be empty"),
    ("command: [run]\nimage_command: [x]", "image_command: needs an image"),
    (
        "image: a\nbackoff: {initial: 1m, max: 10s}",
        "backoff.initial: 60 s is above the cap max_s = 10 s",
    ),
    (
        "image: a\nlimits: {cpus: 0.5}\nresources: {cpus: 1}",
        "resources.cpus: 1 declared is above limits.cpus = 0.5",
    ),
    (
        "image: a\nlimits: {memory: 64Mi}\nresources: {memory: 128Mi}",
        "resources.memory: 134217728 is above limits.memory_bytes = 67108864",
    ),
    (
        "image: a\ncapabilities: [echo, Not Ok]",
        "capabilities[1]: capability 'Not Ok' is not a valid token",
    ),
    ("image: a\nenv: {AGENTBUS_AGENT_ID: x}", "env.AGENTBUS_AGENT_ID: is set by the supervisor"),
    ("image: a\nenv: {1BAD: x}", "env.1BAD: is not a valid environment variable name"),
    ("image: a\nenv: {DEBUG: yes}", "env: value of 'DEBUG' is True: quote it"),
    ("image: a\nenv: [A=1, B]", "env: expected KEY=VALUE items, got 'B'"),
    ("image: a\nnode_selector: {gpu: on}", "node_selector: value of 'gpu' is True: quote it"),
    ("image: a\nhealth: {command: []}", "health.command: must not be empty"),
    ("image: a\nhealth: {command: [true]}", "health.command: argv item True is not a string"),
    ("image: a\nhealth: {interval: 5s}", "health: object missing required field command"),
    ('image: a\ncommand: "run \'x"', "command: cannot split the command line"),
    ("image: a\ncommand: {run: x}", "command: expected an argv list or a shell-quoted string"),
    ("image: a\nlimits: 512Mi", "limits: expected a mapping, got a string"),
    ("image: a\nspread: zone", "spread: expected one of 'node', 'none', got 'zone'"),
    (
        "image: a\nrestart_policy: sometimes",
        "restart_policy: expected one of 'always', 'on-failure', 'never', got 'sometimes'",
    ),
    ("image: a\nlimits: {memroy: 1Gi}", "limits.memroy: unknown field (did you mean 'memory'?)"),
    ("image: a\ntype: Deployment", "type: unknown field; known: asks, backoff,"),
]


@pytest.mark.parametrize(("body", "error"), IMPOSSIBLE)
def test_impossible_specs_are_refused(body: str, error: str) -> None:
    found = errors_of(one(body))
    assert len(found) == 1, found
    assert found[0].startswith("fleet.yaml:") and f": deployments.web.{error}" in found[0], found[0]


def test_bad_deployment_name() -> None:
    assert errors_of("deployments:\n  Web.App: {image: a}\n") == [
        "fleet.yaml:2: deployments.Web.App: deployment name 'Web.App' is not a valid token: use "
        "1-64 characters of [a-z0-9_-], starting with a letter or digit"
    ]


def test_every_deployment_is_checked() -> None:
    text = "deployments:\n  a: {}\n  b: {image: x, replicas: -1}\n  c: {image: x}\n"
    found = errors_of(text)
    assert [line.split(": ")[1] for line in found] == [
        "deployments.a.image",
        "deployments.b.replicas",
    ]


def test_check_deployment_on_structs() -> None:
    """The same checks the loader applies, on a Struct (the scheduler's view)."""
    good = Deployment(name="web", image="a")
    assert check_deployment(good) == []
    assert validate_deployment(good) is good
    bad = Deployment(name="web", backoff=Backoff(initial_s=5, max_s=1))
    assert [i.field for i in check_deployment(bad)] == ["image", "backoff.initial_s"]
    with pytest.raises(SpecError, match=r"deployment 'web': image: needs an image or a command"):
        validate_deployment(bad)


# -- round trips and examples -------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load_and_round_trip(path: Path) -> None:
    spec = load_fleet(path)
    assert spec.deployments
    assert parse_fleet(dump_fleet(spec.deployments)).deployments == spec.deployments
    wire = msgspec.json.encode(spec.deployments)
    assert msgspec.json.decode(wire, type=list[Deployment]) == spec.deployments


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"compose.yaml", "local.yaml"}
    compose = load_fleet(EXAMPLES[0].with_name("compose.yaml"))
    assert all(d.image == "agentbus/agent:dev" for d in compose.deployments)
    local = load_fleet(EXAMPLES[0].with_name("local.yaml"))
    assert all(d.command and not d.image for d in local.deployments)


def test_dump_leaves_defaults_out() -> None:
    text = dump_fleet([Deployment(name="web", image="a", replicas=3)])
    assert text == "version: 1\ndeployments:\n  web:\n    replicas: 3\n    image: a\n"


def test_changed_fields_hides_env_values() -> None:
    old = Deployment(name="web", image="a", env={"TOKEN": "s1", "GONE": "x"})
    new = Deployment(
        name="web",
        image="b",
        replicas=3,
        env={"TOKEN": "s2", "NEW": "y"},
        limits=Limits(memory_bytes=2**30),
    )
    assert changed_fields(old, new) == [
        "replicas: 1 → 3",
        "image: 'a' → 'b'",
        "env.TOKEN changed",
        "env.GONE removed",
        "limits.memory_bytes: None → 1073741824",
        "env.NEW added",
    ]


# -- the CLI on a bad file ------------------------------------------------------------------
def test_apply_rejects_a_bad_file_before_connecting(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(one("image: a\nlimits: {memory: lots}\nreplica: 2"))
    result = CliRunner().invoke(app, ["apply", "-f", str(path), "--nats-url", "nats://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        f"error: {path}:4: deployments.web.limits.memory: expected a size like 512Mi or 1G, "
        "got 'lots'",
        f"error: {path}:5: deployments.web.replica: unknown field (did you mean 'replicas'?)",
    ]
    result = CliRunner().invoke(app, ["apply", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: file: cannot read it" in result.stderr


def test_the_operations_doc_example_is_valid() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = doc[doc.index("## Fleet files") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```\n", 8)]
    spec = parse_fleet(example, source="operations.md")
    (d,) = spec.deployments
    assert (d.name, d.replicas, d.limits.memory_bytes, d.resources.cpus) == ("echo", 3, 2**28, 0.25)
    assert spec.secrets == {"echo": {"API_KEY": "s3cr3t"}} and "API_KEY" not in d.env


def test_apply_warns_only_about_an_image_no_docker_node_has() -> None:
    from agentbus.cli.fleet import image_on_no_node, image_ref
    from agentbus.messages import NodeInfo, RuntimeKind, utcnow

    now = utcnow()

    def node(runtime: RuntimeKind, images: list[str]) -> NodeInfo:
        return NodeInfo(
            node_id="n",
            runtime=runtime,
            started_at=now,
            heartbeat_at=now,
            images=images,
        )

    assert image_ref("python") == "python:latest"
    assert image_ref("docker.io/library/python:3") == "python:3"
    assert image_ref("127.0.0.1:5000/x") == "127.0.0.1:5000/x:latest"
    docker = node("docker", ["agentbus/agent:dev", "python:latest"])
    assert not image_on_no_node("agentbus/agent:dev", [docker])
    assert not image_on_no_node("docker.io/library/python", [docker])
    assert image_on_no_node("agentbus/agent:v2", [docker, node("process", [])])
    assert not image_on_no_node("anything:1", [node("process", [])])  # no docker node
    assert not image_on_no_node("x@sha256:" + "0" * 64, [docker])  # digests: cannot tell
