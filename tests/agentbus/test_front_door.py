"""The package's public surface: lazy front door, complete ``__all__`` lists."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import msgspec
import pytest

import agentbus
import agentbus.embedded
import agentbus.messages

_MESSAGE_MODULES = sorted(m.name for m in pkgutil.iter_modules(agentbus.messages.__path__))
_HEAVY = ("litestar", "aiodocker", "langgraph", "prometheus_client", "nats")


def test_public_names_import_from_the_package() -> None:
    from agentbus import Agent, Bus, Client, ContractError, TaskContext  # noqa: F401

    for name in agentbus.__all__:
        assert getattr(agentbus, name) is not None, name
    assert agentbus.Agent.__module__ == "agentbus.runtime.agent"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        agentbus.Nope  # noqa: B018


def test_import_agentbus_pulls_in_no_heavy_dependency() -> None:
    code = f"import sys, agentbus; print(','.join(m for m in {_HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def _loaded_after(statement: str, modules: tuple[str, ...]) -> str:
    code = f"import sys; {statement}; print(','.join(m for m in {modules!r} if m in sys.modules))"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_an_agent_loads_no_websocket_client_and_no_jwt_library() -> None:
    # aiohttp is nats-py's WebSocket transport; PyJWT/cryptography sign and verify JWTs.
    heavy = ("aiohttp.client", "jwt", "cryptography", "agentbus.auth.nats_jwt")
    assert _loaded_after("import agentbus.agents.echo", heavy) == ""


def test_a_deferred_module_loads_on_first_use() -> None:
    statement = "import agentbus.agents.echo; from aiohttp import web; assert web.Application"
    assert _loaded_after(statement, ("aiohttp.client",)) == "aiohttp.client"
    submodule_first = "import agentbus, aiohttp.web; assert aiohttp.ClientSession"
    assert _loaded_after(submodule_first, ("aiohttp.client",)) == "aiohttp.client"


THREADS_FIRST_USE = """
import threading
import agentbus, aiohttp
errors = []
go = threading.Barrier(8)
def use(n):
    go.wait()
    try:
        if n % 2:
            assert aiohttp.ClientSession
        else:
            from aiohttp import web
            assert web.Application
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=use, args=(n,)) for n in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors)
"""


@pytest.mark.parametrize("run", range(3))
def test_threads_using_a_deferred_module_at_once_all_see_it_whole(run: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", THREADS_FIRST_USE], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_messages_all_lists_every_struct_of_the_contract() -> None:
    missing = []
    for info in _MESSAGE_MODULES:
        module = importlib.import_module(f"agentbus.messages.{info}")
        for name, value in vars(module).items():
            if (
                not name.startswith("_")
                and inspect.isclass(value)
                and issubclass(value, msgspec.Struct)
                and value.__module__ == module.__name__
                and name not in agentbus.messages.__all__
            ):
                missing.append(f"{info}.{name}")
    assert missing == []


def test_all_matches_the_lazy_exports() -> None:
    assert set(agentbus.__all__) == {"__version__", *agentbus._EXPORTS}
    assert set(agentbus.embedded.__all__) == set(agentbus.embedded._EXPORTS)
    for name in agentbus.embedded.__all__:
        assert getattr(agentbus.embedded, name) is not None
