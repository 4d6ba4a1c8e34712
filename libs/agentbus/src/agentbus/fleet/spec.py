"""Fleet files: a YAML declaration of deployments, validated into ``Deployment`` Structs.

Shape (``docs/operations.md``, "Fleet files", has a full example)::

    version: 1                        # optional; 1 is the only version
    x-common: &common {image: agentbus/agent:dev}   # x-*: free, for YAML anchors
    deployments:                      # deployment name -> spec
      echo:
        <<: *common
        image_command: python -m agentbus.agents.echo
        replicas: 2
        limits: {memory: 256Mi, cpus: 0.5, pids: 128}
        backoff: {initial: 500ms, max: 30s}

The fields are those of ``agentbus.messages.Deployment`` and its nested Structs, with
one rule for quantities: a field whose Struct name ends in ``_s`` (seconds) or
``_bytes`` may drop the suffix, and its value may carry a unit (``agentbus.units``):
durations ``500ms``, ``30s``, ``2m`` (a bare number is seconds), sizes ``512Mi``,
``1G`` (a bare number is bytes; ``512m``/``1g`` are refused as ambiguous), ``cpus``
``0.5`` or ``500m``. Commands: an argv list or one shell-quoted string. An ``env``
value may be a secret (``agentbus.fleet._env``): kept apart in ``FleetSpec.secrets``
and sealed by ``FleetSpec.sealed`` (``agentbus apply``), never in a ``Deployment``.
Unknown fields, duplicate keys and impossible combinations (``agentbus.fleet.checks``)
are errors; every error names the file, line and field path
(``deployments.echo.limits.memory``).
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import msgspec
import yaml
from nacl.public import PublicKey

from agentbus.errors import ContractError, SpecError, SpecIssue
from agentbus.fleet._env import env_map, kind, plain_scalar, string_map
from agentbus.fleet.checks import check_deployment, check_env_names, validate_deployment
from agentbus.fleet.secrets import seal_env
from agentbus.messages import Deployment
from agentbus.names import check_token
from agentbus.units import parse_cpus, parse_duration_s, parse_size_bytes

__all__ = [
    "FleetSpec",
    "SpecError",
    "SpecIssue",
    "check_deployment",
    "dump_fleet",
    "load_fleet",
    "parse_fleet",
    "validate_deployment",
]
YamlPath = tuple[str | int, ...]


@dataclass(frozen=True)
class FleetSpec:
    """A validated fleet file: its deployments in file order.

    ``secrets`` holds the plaintext of the secret env values, by deployment and env
    name; those deployments lack them until ``sealed`` puts them in ``secret_env``.
    """

    source: str
    deployments: list[Deployment]
    secrets: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def sealed(self, public_key: PublicKey) -> list[Deployment]:
        """The deployments with every secret sealed to ``public_key`` in ``secret_env``."""
        out = []
        for d in self.deployments:
            if plaintexts := self.secrets.get(d.name):
                sealed = {**d.secret_env, **seal_env(plaintexts, public_key)}
                d = msgspec.structs.replace(d, secret_env=sealed)
            out.append(d)
        return out


# -- loading ----------------------------------------------------------------------------
def load_fleet(path: str | Path) -> FleetSpec:
    """Read and validate the fleet file at ``path``.

    Raises:
        SpecError: unreadable file, bad YAML or invalid spec (every issue found).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [SpecIssue("file", f"cannot read it: {exc}")]) from exc
    return parse_fleet(text, source=str(path), base_dir=Path(path).parent)


def parse_fleet(
    text: str, *, source: str = "<fleet>", base_dir: str | Path | None = None
) -> FleetSpec:
    """Validate fleet YAML ``text``; ``source`` names it in errors.

    ``base_dir`` (default: the working directory) resolves ``secret_from_file`` paths;
    ``secret_from_env`` reads this process's environment.

    Raises:
        SpecError: bad YAML or invalid spec (every issue found).
    """
    lines: dict[YamlPath, int] = {}
    issues: list[SpecIssue] = []
    data = _load_yaml(text, source, lines, issues)
    deployments: list[Deployment] = []
    converter = _Converter(lines, issues, Path(base_dir or "."))
    if not any(i.field == "yaml" for i in issues):
        deployments = converter.fleet(data)
    if issues:
        raise SpecError(source, issues)
    return FleetSpec(source=source, deployments=deployments, secrets=converter.secrets)


def _load_yaml(text: str, source: str, lines: dict[YamlPath, int], issues: list[SpecIssue]) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _index(node, (), lines, issues)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        issues.append(SpecIssue("yaml", f"not valid YAML: {problem}", line))
        return None
    finally:
        loader.dispose()


def _index(
    node: yaml.Node, path: YamlPath, lines: dict[YamlPath, int], issues: list[SpecIssue]
) -> None:
    """Record the line of every path and report duplicate keys (safe_load keeps the last)."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key == "<<":
                continue
            if key in seen:
                line = key_node.start_mark.line + 1
                issues.append(SpecIssue(_dotted((*path, key)), "duplicate key", line))
            seen.add(key)
            _index(value_node, (*path, key), lines, issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, issues)


def _dotted(path: YamlPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _struct_type(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct class of ``tp`` (``S`` or ``S | None``), else None."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    found = [t for t in get_args(tp) if isinstance(t, type) and issubclass(t, msgspec.Struct)]
    return found[0] if len(found) == 1 else None


def _list_struct_type(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct class ``S`` of ``list[S]``, else None."""
    if get_origin(tp) is list and (args := get_args(tp)):
        return _struct_type(args[0])
    return None


_SPEC_PATH_RE = re.compile(r"\.(\w+)|\[(\d+)\]|\[\.\.\.\]")


class _Converter:
    """Turns the YAML tree into ``Deployment``s, collecting issues with YAML paths."""

    def __init__(self, lines: dict[YamlPath, int], issues: list[SpecIssue], base_dir: Path) -> None:
        self.lines = lines
        self.issues = issues
        self.base_dir = base_dir
        self.paths: dict[YamlPath, YamlPath] = {}  # Struct path -> YAML path
        self.secrets: dict[str, dict[str, str]] = {}  # deployment -> env name -> plaintext
        self.current = ""  # the deployment being converted

    def issue(self, path: YamlPath, message: str) -> None:
        line = next(
            (self.lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in self.lines), None
        )
        self.issues.append(SpecIssue(_dotted(path), message, line))

    def fleet(self, data: Any) -> list[Deployment]:
        if not isinstance(data, dict):
            self.issue((), f"expected a mapping with 'deployments', got {kind(data)}")
            return []
        for key in data:
            if key not in ("version", "deployments") and not str(key).startswith("x-"):
                self.issue((key,), "unknown top-level key (expected version, deployments, x-*)")
        if data.get("version", 1) != 1:
            self.issue(("version",), f"unsupported version {data['version']!r} (expected 1)")
        if "deployments" not in data:
            self.issue(("deployments",), "missing (use 'deployments: {}' for an empty fleet)")
            return []
        entries = data["deployments"]
        if entries is None:
            entries = {}
        if not isinstance(entries, dict):
            got = kind(entries)
            self.issue(("deployments",), f"expected a mapping of name -> spec, got {got}")
            return []
        out = []
        for name, raw in entries.items():
            if (d := self.deployment(str(name), raw)) is not None:
                out.append(d)
        return out

    def deployment(self, name: str, raw: Any) -> Deployment | None:
        at: YamlPath = ("deployments", name)
        self.paths = {(): at}
        self.current = name
        if raw is None:
            raw = {}
        if isinstance(raw, dict) and "name" in raw and str(raw["name"]) != name:
            self.issue((*at, "name"), f"{raw['name']!r} differs from the key {name!r}")
            return None
        before = len(self.issues)
        try:
            check_token("deployment name", name)
        except ContractError as exc:
            self.issue(at, str(exc))
        fields = self.struct(Deployment, raw, at, ())
        if fields is None or len(self.issues) > before:
            return None
        fields["name"] = name
        self.paths[("name",)] = at
        try:
            d = msgspec.convert(fields, Deployment)
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).partition(" - at `$")
            spath = tuple(
                a or int(b) if (a or b) else "..."
                for a, b in _SPEC_PATH_RE.findall(where.rstrip("`"))
            )
            message = message[:1].lower() + message[1:].replace("`", "")
            if not message.startswith("object missing") and "got" not in message:
                message += f", got {_lookup(fields, spath)!r}"
            self.issue(self.yaml_path(spath), message)
            return None
        secret_names = sorted(self.secrets.get(name, {}))
        for key in set(secret_names) & set(d.secret_env):
            self.issue((*at, "env", key), "is also in secret_env (give it once)")
        for problem in [*check_deployment(d), *check_env_names("env", secret_names)]:
            spath = tuple(a or int(b) for a, b in _SPEC_PATH_RE.findall("." + problem.field))
            self.issue(self.yaml_path(spath), problem.message)
        return d if len(self.issues) == before else None

    def yaml_path(self, spath: tuple[str | int, ...]) -> YamlPath:
        """The YAML path of a Struct path (longest known prefix, rest appended)."""
        for n in range(len(spath), -1, -1):
            if (known := self.paths.get(spath[:n])) is not None:
                return (*known, *(p for p in spath[n:] if p != "..."))
        return ("deployments",)

    def struct(
        self, cls: type[msgspec.Struct], raw: Any, at: YamlPath, spath: tuple[str | int, ...]
    ) -> dict[str, Any] | None:
        if not isinstance(raw, dict):
            self.issue(at, f"expected a mapping, got {kind(raw)}")
            return None
        fields = {
            f.name: f
            for f in msgspec.structs.fields(cls)
            if not (cls is Deployment and f.name == "name")
        }
        out: dict[str, Any] = {}
        for key, value in raw.items():
            key = str(key)
            if cls is Deployment and key == "name":
                continue
            name = next((n for n in (key, f"{key}_s", f"{key}_bytes") if n in fields), None)
            if name is None:
                self.issue((*at, key), self.unknown(key, fields))
                continue
            if name in out:
                self.issue((*at, key), f"given twice (also as {name!r} or its short form)")
                continue
            self.paths[(*spath, name)] = (*at, key)
            try:
                out[name] = self.value(name, fields[name].type, value, (*at, key), (*spath, name))
            except ValueError as exc:
                self.issue((*at, key), str(exc))
        return out

    @staticmethod
    def unknown(key: str, fields: dict[str, Any]) -> str:
        known = sorted({n.removesuffix("_s").removesuffix("_bytes") for n in fields} | set(fields))
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"unknown field (did you mean {close[0]!r}?)"
        return f"unknown field; known: {', '.join(sorted(fields))}"

    def value(
        self, name: str, tp: Any, value: Any, at: YamlPath, spath: tuple[str | int, ...]
    ) -> Any:
        if value is None:
            return None
        if (item := _list_struct_type(tp)) is not None:
            if not isinstance(value, list):
                raise ValueError(f"expected a list, got {kind(value)}")
            return [self.struct(item, v, (*at, i), (*spath, i)) for i, v in enumerate(value)]
        if get_origin(tp) is dict and (sub := _struct_type(get_args(tp)[1])) is not None:
            if not isinstance(value, dict):
                raise ValueError(f"expected a mapping, got {kind(value)}")
            return {str(k): self.struct(sub, v, (*at, k), (*spath, k)) for k, v in value.items()}
        if (sub := _struct_type(tp)) is not None:
            return self.struct(sub, value, at, spath)
        if name == "start":  # a subscription's start: YAML reads times and numbers itself
            return value.isoformat() if isinstance(value, datetime) else str(value)
        if name.endswith("_s"):
            return parse_duration_s(value)
        if name.endswith("_bytes"):
            return parse_size_bytes(value)
        if name == "cpus":
            return parse_cpus(value)
        if name in ("command", "image_command"):
            return _argv(value)
        if name == "env":
            plain, secrets = env_map(value, self.base_dir)
            if secrets:
                self.secrets[self.current] = secrets
            return plain
        if name == "node_selector":
            return string_map(value)
        if get_origin(tp) is Literal and value not in (choices := get_args(tp)):
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value


def _lookup(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return "?"
    return data


def _argv(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command line: {exc}") from None
    if isinstance(value, list):
        if bad := [v for v in value if not plain_scalar(v)]:
            raise ValueError(f"argv item {bad[0]!r} is not a string: quote it")
        return [str(v) for v in value]
    raise ValueError(f"expected an argv list or a shell-quoted string, got {kind(value)}")


# -- writing ----------------------------------------------------------------------------
def dump_fleet(deployments: Iterable[Deployment]) -> str:
    """Fleet YAML that ``parse_fleet`` reads back to the same deployments.

    Fields equal to their default are left out; quantities keep their unit-suffixed
    names with plain numbers (seconds, bytes).
    """
    out: dict[str, Any] = {}
    for d in deployments:
        spec = _strip_tags(msgspec.to_builtins(d))
        default = _strip_tags(msgspec.to_builtins(Deployment(name=d.name)))
        out[d.name] = {k: v for k, v in spec.items() if k != "name" and v != default.get(k)}
    return yaml.safe_dump({"version": 1, "deployments": out}, sort_keys=False)


def _strip_tags(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_tags(v) for k, v in value.items() if k != "type"}
    if isinstance(value, list):
        return [_strip_tags(v) for v in value]
    return value
