"""A TCP proxy on loopback that a test can cut and heal: the network between NATS nodes, and between clients and
nodes, for the cluster's partition scenarios (Debian has no toxiproxy; network namespaces need more than loopback).

Each proxy forwards one listening port to one target port. `cut()` drops every connection through it and refuses
new ones (accepted, then closed at once: the peer sees a reset link, as after a switch failure); `heal()` lets
connections through again. All proxies of a test share one event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shinchoku_runtime.natsserver import free_port

T = TypeVar("T")
CHUNK = 64 * 1024


class ProxyLoop:
    """The event loop every proxy runs on, in a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fault-proxies", daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class TcpProxy:
    """127.0.0.1:`port` → 127.0.0.1:`target`, cut and healed on demand."""

    name: str
    target: int
    loop: ProxyLoop
    port: int = field(default_factory=free_port)
    cut_off: bool = False
    #: Connections refused or dropped while cut (to tell in a report that the fault was really there).
    dropped: int = 0
    _server: asyncio.Server | None = None
    _links: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._server = self.loop.call(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        return self

    def cut(self) -> None:
        self.loop.call(self._cut())

    def heal(self) -> None:
        self.cut_off = False

    def stop(self) -> None:
        self.loop.call(self._stop())

    async def _cut(self) -> None:
        self.cut_off = True
        for writer in list(self._links):
            self.dropped += 1
            writer.transport.abort()
        self._links.clear()

    async def _stop(self) -> None:
        await self._cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.dropped += 1
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_writer.transport.abort()
            return
        if self.cut_off:  # cut while connecting
            client_writer.transport.abort()
            server_writer.transport.abort()
            return
        self._links.update((client_writer, server_writer))
        try:
            await asyncio.gather(
                self._pipe(client_reader, server_writer, client_writer),
                self._pipe(server_reader, client_writer, server_writer),
            )
        finally:
            self._links.discard(client_writer)
            self._links.discard(server_writer)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        """Copy one direction until either side goes; then take both sides down."""
        try:
            while not self.cut_off:
                data = await reader.read(CHUNK)
                if not data or self.cut_off:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            other.transport.abort()
