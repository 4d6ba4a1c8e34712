"""Pulling a replica's image when the engine does not have it (``docker pull``).

One pull per image at a time on a node: replicas of one deployment wait for the
pull the first one started. Progress (the engine's JSON stream) is summed over the
layers and reported at the start, at most every ``PROGRESS_EVERY_S`` seconds and at
the end, as ``<done>/<layers> layers, <downloaded> of <total> bytes``: layers the
engine already has count as done with no bytes; a layer's bytes (compressed) count
once its download started, in full once it is downloaded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
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


_DONE = frozenset({"Pull complete", "Already exists"})
_DOWNLOADED = frozenset({"Verifying Checksum", "Download complete", "Extracting", "Pull complete"})


@dataclass
class _Layer:
    status: str = ""
    downloaded_bytes: int = 0
    size_bytes: int = 0  # 0 until its download reports a total


class PullProgress:
    """The layers of one pull, fed the engine's stream items one at a time."""

    def __init__(self) -> None:
        self.layers: dict[str, _Layer] = {}

    def add(self, item: dict[str, Any]) -> None:
        """Take one stream item (``{"status", "id"?, "progressDetail"?}``).

        Items of no layer (``Pulling from <repo>``, whose id is the tag; ``Digest:``;
        ``Status:``) are ignored.
        """
        status, layer_id = str(item.get("status") or ""), item.get("id")
        if not layer_id or status.startswith("Pulling from"):
            return
        layer = self.layers.setdefault(str(layer_id), _Layer())
        layer.status = status
        detail = item.get("progressDetail") or {}
        if status == "Downloading":
            layer.size_bytes = max(layer.size_bytes, int(detail.get("total") or 0))
            layer.downloaded_bytes = int(detail.get("current") or 0)
        elif status in _DOWNLOADED:
            layer.downloaded_bytes = layer.size_bytes

    def summary(self) -> str:
        """``<done>/<layers> layers, <downloaded> of <total> bytes``."""
        layers = self.layers.values()
        done = sum(1 for layer in layers if layer.status in _DONE)
        downloaded = sum(layer.downloaded_bytes for layer in layers)
        total = sum(layer.size_bytes for layer in layers)
        return f"{done}/{len(self.layers)} layers, {downloaded} of {total} bytes"


async def pull(docker: aiodocker.Docker, image: str, progress: Progress) -> None:
    """Pull ``image`` with progress reports.

    Raises:
        ImagePullError: the engine or the registry refused or failed the pull.
    """
    await progress(f"pulling {image}")
    layers = PullProgress()
    last = time.monotonic()
    try:
        async for item in docker.images.pull(image, stream=True):
            if error := item.get("error"):
                raise ImagePullError(image, str(error))
            layers.add(item)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                await progress(f"pulling {image}: {layers.summary()}")
    except aiodocker.DockerError as exc:
        raise ImagePullError(image, exc.message) from exc
    await progress(f"pulled {image}: {layers.summary()}")


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
