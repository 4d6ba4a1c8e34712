"""A local image registry for the pull tests: the distribution v2 registry of Debian's
``docker-registry`` package, and an image pushed to it that the engine then lacks.

Docker treats registries on ``127.0.0.0/8`` as insecure by default, so the engine pushes
to and pulls from ``127.0.0.1:<port>`` over plain HTTP without daemon configuration.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import httpx
import pytest

from agentbus.embedded import free_port
from tests._harness.supervisor import TEST_LABELS

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
BLOB_SIZE_BYTES = 2 * 1024 * 1024  # random bytes: the layer stays about this big compressed


@contextmanager
def registry_process(work_dir: Path, *, ready_timeout_s: float = 20.0) -> Iterator[str]:
    """``docker-registry serve`` on a free 127.0.0.1 port, storing under ``work_dir``.

    Yields its address ``127.0.0.1:<port>`` once ``GET /v2/`` answers 200; ends the
    process (by its PID) on exit. Fails the test if the binary is missing or the
    registry does not answer within ``ready_timeout_s``.
    """
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is missing: run `bash scripts/setup.sh`")
    port = free_port()
    config = work_dir / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work_dir / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log_path = work_dir / "registry.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/v2/", log_path, ready_timeout_s)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"docker-registry exited ({proc.returncode}): {log.read_text()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"docker-registry not answering {url} within {timeout_s} s: {log.read_text()}")


@dataclass(frozen=True)
class PushedImage:
    """An image in the registry that the engine lacks (one layer of it, at least)."""

    ref: str
    """``<registry>/agentbus-pull-test/agent:<random tag>``."""
    layers: int
    """Distinct layers of its manifest."""
    missing_layer_bytes: int
    """Compressed size of the one layer the engine does not have."""


def _tar_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@asynccontextmanager
async def pushed_image(
    docker: aiodocker.Docker, registry: str, base: str
) -> AsyncIterator[PushedImage]:
    """``base`` plus a layer of random bytes, committed, pushed to ``registry`` and then
    removed locally, so the engine has the layers of ``base`` but not the new one.

    The tag (and the image, if something pulled it) is removed on exit; remove the
    containers of it first.
    """
    repo, tag = f"{registry}/agentbus-pull-test/agent", uuid.uuid4().hex[:12]
    ref = f"{repo}:{tag}"
    container = await docker.containers.create({"Image": base, "Labels": TEST_LABELS})
    try:
        layer = _tar_of("agentbus-pull-test.bin", os.urandom(BLOB_SIZE_BYTES))
        await container.put_archive("/", layer)  # type: ignore[no-untyped-call]
        await container.commit(repository=repo, tag=tag)
    finally:
        await container.delete(force=True)
    try:
        await docker.images.push(repo, tag=tag)  # DockerStreamError if refused
        await docker.images.delete(ref)  # its only tag: the new layer goes too
        async with httpx.AsyncClient(timeout=10.0) as http:
            reply = await http.get(
                f"http://{registry}/v2/agentbus-pull-test/agent/manifests/{tag}",
                headers={"Accept": MANIFEST_V2},
            )
        reply.raise_for_status()
        layers = reply.json()["layers"]
        yield PushedImage(ref, len({layer["digest"] for layer in layers}), int(layers[-1]["size"]))
    finally:
        try:
            await docker.images.delete(ref, force=True)
        except aiodocker.DockerError:
            pass
