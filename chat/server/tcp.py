"""
What a connection asks of its transport beyond L{ITransport}: TCP's
keepalive and no-delay options, an abort, and the peer's address as the
logs and the rate limits name it.

A TCP transport provides all of it; a transport that does not (a UNIX
socket, the tests' L{StringTransport}) is left as it is.  This module
owns those calls only; it never reads or writes a connection's bytes.
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import ITransport


def enableKeepAlive(transport: ITransport) -> None:
    """
    Turn on TCP keepalive, tuned so that a client that vanished without
    closing (power loss, cable pulled) is noticed within about 90 seconds:
    60 s idle, then 3 probes 10 s apart.
    """
    try:
        sock = transport.getHandle()  # type: ignore[attr-defined] # TCP transports provide it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except (AttributeError, OSError):
        pass  # not a TCP socket (tests, UNIX sockets): nothing to tune


def disableNagle(transport: ITransport) -> None:
    """Send each write at once, in a segment of its own."""
    try:
        transport.setTcpNoDelay(True)  # type: ignore[attr-defined] # TCP transports provide it
    except (AttributeError, OSError):
        pass  # not TCP (tests)


def abort(transport: ITransport) -> None:
    """Drop the connection now, whatever waits to be written."""
    transport.abortConnection()  # type: ignore[attr-defined] # TCP transports provide it


def peerOf(transport: ITransport) -> str:
    """
    The client's address and port.  Behind HAProxy it is known only once
    the PROXY header has arrived, so it is asked for when needed.
    """
    address = transport.getPeer()
    return f"{getattr(address, 'host', address)}:" \
        f"{getattr(address, 'port', '')}"


def hostOf(transport: ITransport) -> str:
    """The client's IP address (see L{peerOf}); a UNIX socket's path."""
    address = transport.getPeer()
    return str(getattr(address, "host", None) or
               getattr(address, "name", None) or address)
