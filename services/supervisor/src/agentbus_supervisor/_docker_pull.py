"""Pulling a replica's image when the engine does not have it (``docker pull``).

One pull per image at a time on a node: replicas of one deployment wait for the
pull the first one started. Progress (the engine's JSON stream) is summed over the
layers and reported at the start, at most every ``PROGRESS_EVERY_S`` seconds and at
the end.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiodocker

from agentbus.errors import UnavailableError
from agentbus_supervisor.runtime import ImagePullError, Progress

PROGRESS_EVERY_S = 2.0


async def image_present(docker: aiodocker.Docker, image: str) -> bool:
    """Whether the engine has ``image``.

    Raises:
        UnavailableError: the engine failed to answer.
    """
    try:
        await docker.images.inspect(image)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise UnavailableError(f"cannot inspect image {image!r}: {exc.message}") from exc
    return True


def _summary(layers: dict[str, dict[str, Any]]) -> str:
    done = sum(1 for d in layers.values() if d.get("status") in ("Pull complete", "Already exists"))
    current = sum(int((d.get("progressDetail") or {}).get("current") or 0) for d in layers.values())
    total = sum(int((d.get("progressDetail") or {}).get("total") or 0) for d in layers.values())
    return f"{done}/{len(layers)} layers, {current} of {total} bytes"


async def pull(docker: aiodocker.Docker, image: str, progress: Progress) -> None:
    """Pull ``image`` with progress reports.

    Raises:
        ImagePullError: the engine or the registry refused or failed the pull.
    """
    await progress(f"pulling {image}")
    layers: dict[str, dict[str, Any]] = {}
    last = time.monotonic()
    try:
        async for item in docker.images.pull(image, stream=True):
            if error := item.get("error"):
                raise ImagePullError(image, str(error))
            if layer := item.get("id"):
                layers[layer] = item
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                await progress(f"pulling {image}: {_summary(layers)}")
    except aiodocker.DockerError as exc:
        raise ImagePullError(image, exc.message) from exc
    await progress(f"pulled {image}: {_summary(layers)}")


class Puller:
    """Pulls missing images, one pull per image at a time."""

    def __init__(self, docker: aiodocker.Docker) -> None:
        self._docker = docker
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, image: str, progress: Progress) -> None:
        """Pull ``image`` unless the engine has it (checked again after waiting).

        Raises:
            ImagePullError: the pull failed.
            UnavailableError: the engine failed to answer.
        """
        if await image_present(self._docker, image):
            return
        lock = self._locks.setdefault(image, asyncio.Lock())
        async with lock:
            if not await image_present(self._docker, image):
                await pull(self._docker, image, progress)
