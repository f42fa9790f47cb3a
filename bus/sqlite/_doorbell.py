"""Doorbells of the SQLite broker: loopback UDP datagrams that wake the other brokers on the file.

The scheme is described in :mod:`bus.sqlite` (wake-ups); the ports are listed in the file's
``doorbells`` table, which the broker reads and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterable
from typing import Any

MAX_RING = 1200  # bytes of topic names in one doorbell datagram; more means "wake everything"
HELLO = "\x00hello"  # a new doorbell was hung: re-read the list (no topic contains NUL)


class _Listener(asyncio.DatagramProtocol):
    """Receives the datagrams other brokers send after their commits."""

    def __init__(self, ring: Callable[[bytes], None]) -> None:
        self._ring = ring

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._ring(data)


class Doorbell:
    """This broker's doorbell (a loopback UDP port) and the socket that rings the others'."""

    def __init__(self, ring: Callable[[bytes], None]) -> None:
        self._ring = ring
        self._transport: asyncio.DatagramTransport | None = None  # hung with the first consumer
        self.port: int | None = None
        self.peers: list[int] = []  # the ports of the other brokers' doorbells
        self._sender: socket.socket | None = None

    @property
    def hung(self) -> bool:
        """Whether the doorbell is open."""
        return self._transport is not None

    def open_sender(self) -> None:
        """Open the socket that rings the other brokers."""
        self._sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sender.setblocking(False)

    async def hang(self) -> int:
        """Open the doorbell on a free loopback port and return it; OSError if none."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Listener(self._ring), local_addr=("127.0.0.1", 0)
        )
        port: int = transport.get_extra_info("sockname")[1]
        self._transport, self.port = transport, port
        return port

    def ring_others(self, names: Iterable[str]) -> None:
        """Tell the other brokers which topics (or inbox addresses) may have something new."""
        if self._sender is None or not self.peers:
            return
        payload = "\n".join(names).encode()
        if not payload:
            return
        if len(payload) > MAX_RING:
            payload = b""  # too many to list: wake everything
        for port in self.peers:
            with contextlib.suppress(OSError):  # a full buffer or a stale port: polling remains
                self._sender.sendto(payload, ("127.0.0.1", port))

    def close(self) -> None:
        """Close the doorbell and the sending socket."""
        if self._transport is not None:
            self._transport.close()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
