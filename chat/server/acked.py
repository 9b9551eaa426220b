"""
Which events a client's TCP stack has acknowledged, so that those it has
not are stored when the connection dies (PROTOCOL.md section 6, "Nothing
queued is lost with the connection").

Bytes handed to a transport sit in Twisted's buffer and then the
kernel's until the peer acknowledges them; a connection that dies takes
them along.  On Linux, C{TCP_INFO}'s C{tcpi_bytes_acked} counts the bytes
of this connection the peer has acknowledged, so each event written is
kept, with the offset where it ends, until that count passes it.  Twisted
stops a connection's producer before it closes the socket, which is when
the last count is read.  Behind HAProxy the peer is HAProxy, and what it
buffers is its own; over TLS the counts do not match the bytes written,
and nothing is tracked.

This module owns that ledger; it never decides what happens to an event
(the protocol hands the unacknowledged ones back to be stored).
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import Generic, Optional, TypeVar

from twisted.internet.interfaces import ISSLTransport, ITransport

_T = TypeVar("_T")

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
"""Where struct tcp_info keeps tcpi_bytes_acked (Linux 4.1 and later)."""
_INFO_SIZE = _BYTES_ACKED_OFFSET + _BYTES_ACKED.size
SETTLE_EVERY = 64
"""Events written between two reads of the count, to keep the ledger
short for a client that reads as fast as it is written to."""


def plainSocket(transport: ITransport) -> Optional[socket.socket]:
    """
    The TCP socket under C{transport}, if what is written to the transport
    goes to the socket unchanged (not over TLS).
    """
    if ISSLTransport.providedBy(transport):
        return None
    try:
        sock = transport.getHandle()  # type: ignore[attr-defined] # TCP transports provide it
    except AttributeError:
        return None
    return sock if isinstance(sock, socket.socket) else None


def bytesAcked(sock: socket.socket) -> Optional[int]:
    """The peer's count of acknowledged bytes, or L{None} if unknown."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    except OSError:
        return None
    if len(info) < _INFO_SIZE:
        return None
    acked: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]
    return acked


class AckTracker(Generic[_T]):
    """
    The things written to one TCP connection that its peer has not yet
    acknowledged.
    """

    def __init__(self, sock: socket.socket, start: int) -> None:
        self._sock = sock
        self._written = start
        self._acked = start
        self._pending: deque[tuple[int, _T]] = deque()

    @classmethod
    def forSocket(cls, sock: Optional[socket.socket]
                  ) -> Optional["AckTracker[_T]"]:
        """A tracker for C{sock}, if it has one and its counts are known."""
        start = None if sock is None else bytesAcked(sock)
        return None if sock is None or start is None else cls(sock, start)

    def written(self, size: int, thing: Optional[_T]) -> None:
        """C{size} bytes were written, carrying C{thing} if not None."""
        self._written += size
        if thing is not None:
            self._pending.append((self._written, thing))
            if len(self._pending) > SETTLE_EVERY:
                self.settle()

    def settle(self) -> None:
        """Read the count, and forget what it covers."""
        acked = bytesAcked(self._sock)
        if acked is None:
            return
        self._acked = acked
        pending = self._pending
        while pending and pending[0][0] <= acked:
            pending.popleft()

    def unacknowledgedBytes(self) -> int:
        """How many bytes written the peer has not acknowledged (now)."""
        self.settle()
        return self._written - self._acked

    def allAcked(self) -> bool:
        """Whether the peer has acknowledged everything written (as of
        the last L{settle})."""
        return self._acked >= self._written

    def unacknowledged(self) -> list[_T]:
        """What the last count did not cover, oldest first; forgotten."""
        things = [thing for _, thing in self._pending]
        self._pending.clear()
        return things
