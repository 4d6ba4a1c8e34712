"""A TCP forwarder that a test can cut and restore: one client's view of a partition.

``TcpProxy(target_port)`` listens on a free loopback port and forwards each connection
to ``127.0.0.1:<target_port>``. ``cut("close")`` ends every connection and refuses new
ones (the client sees the server gone and reconnects in a loop); ``cut("stall")``
keeps the connections open but holds every byte in both directions (the client stays
"connected" while its requests time out, as on a nats-server without quorum). The
held bytes flow again, in order, on ``restore``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

CutMode = Literal["close", "stall"]
_CHUNK_BYTES = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>`` until cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._mode: CutMode | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self, mode: CutMode) -> None:
        """Partition the client side from the target (see the module docstring)."""
        self._mode = mode
        self._open.clear()
        if mode == "close":
            for writer in list(self._writers):
                writer.close()

    def restore(self) -> None:
        """Forward again (held bytes first)."""
        self._mode = None
        self._open.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode == "close":
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pipes = {
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        }
        self._pipes |= pipes
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes -= pipes
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK_BYTES):
                await self._open.wait()  # a stall holds what was read until ``restore``
                if writer.is_closing():
                    return
                writer.write(data)
                await writer.drain()
