"""L{LineClient}: a blocking client for both dialects, and PROXY v2 headers."""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any, Callable


def proxyV2Header(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """
    A PROXY protocol v2 header, as HAProxy's send-proxy-v2 writes it, to
    talk to a C{haproxy:} node directly. C{source=None} gives the LOCAL
    header that HAProxy's health checks send.
    """
    prefix = b"\r\n\r\n\x00\r\nQUIT\n"
    if source is None:
        return prefix + b"\x20\x00\x00\x00"
    destination = destination or ("127.0.0.1", 8000)
    body = (socket.inet_aton(source[0]) + socket.inet_aton(destination[0])
            + struct.pack("!HH", source[1], destination[1]))
    return prefix + b"\x21\x11" + struct.pack("!H", len(body)) + body


class LineClient:
    """
    A blocking client for both dialects. Bytes read past a line stay in an
    internal buffer for the next read. Read errors are AssertionErrors so a
    missing reply is a test failure, not an error.
    """

    def __init__(self, host: str, port: int, timeout: float = 5.0,
                 proxyHeader: bytes | None = None,
                 receiveBuffer: int | None = None) -> None:
        """
        @param receiveBuffer: C{SO_RCVBUF}, set before connecting (a slow
            reader's small window).
        """
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receiveBuffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                 receiveBuffer)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self._buffer = bytearray()
        self.closed = False
        """True once the server closed the connection (EOF or reset)."""
        if proxyHeader:
            self.send(proxyHeader)

    def __enter__(self) -> "LineClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def sendLine(self, text: str) -> None:
        self.send(text.encode("utf-8") + b"\r\n")

    def sendJSON(self, obj: Any, classic: bool = False) -> None:
        """Compact UTF-8 JSON like the classic client, ending in NUL when C{classic}."""
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send(data + (b"\0" if classic else b"\n"))

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        except ConnectionResetError:
            data = b""
        if data:
            self._buffer += data
        else:
            self.closed = True

    def readLine(self, timeout: float | None = None) -> bytes:
        """The next server line, without its \\n or \\r\\n."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (end := self._buffer.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if self.closed or remaining <= 0:
                why = "connection closed" if self.closed else "timed out"
                raise AssertionError(f"no line from server ({why}); "
                                     f"partial data: {bytes(self._buffer)!r}")
            self._receive(remaining)
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def readText(self, timeout: float | None = None) -> str:
        return self.readLine(timeout).decode("utf-8")

    def readJSON(self, timeout: float | None = None) -> Any:
        line = self.readLine(timeout)
        try:
            return json.loads(line)
        except ValueError:
            raise AssertionError(f"server line is not JSON: {line!r}") from None

    def command(self, text: str, timeout: float | None = None) -> str:
        """Send a text-dialect line, return the next line (mind pushed events)."""
        self.sendLine(text)
        return self.readText(timeout)

    def request(self, obj: Any, classic: bool = False, timeout: float | None = None) -> Any:
        """Send a JSON request, return the next JSON line (mind pushed events)."""
        self.sendJSON(obj, classic)
        return self.readJSON(timeout)

    def readList(self, timeout: float | None = None) -> tuple[str, list[str]]:
        """A text list reply: C{OK <n> ...} then n lines. Returns (header, lines)."""
        header = self.readText(timeout)
        words = header.split()
        if len(words) < 2 or words[0] != "OK" or not words[1].isdigit():
            raise AssertionError(f"not a list reply: {header!r}")
        return header, [self.readText(timeout) for _ in range(int(words[1]))]

    def expectNothing(self, seconds: float = 0.5) -> None:
        """Assert that the server sends nothing (and does not close) for C{seconds}."""
        deadline = time.monotonic() + seconds
        while not self._buffer and not self.closed and time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())
        if self._buffer:
            raise AssertionError(f"unexpected data from server: {bytes(self._buffer)!r}")
        if self.closed:
            raise AssertionError("server closed the connection")

    def readUntilClosed(self, timeout: float | None = None) -> bytes:
        """Everything until the server closes the connection (fails on timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"server did not close; got {bytes(self._buffer)!r}")
            self._receive(remaining)
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def close(self) -> None:
        self.sock.close()


def collectChats(client: LineClient, texts: list[str], done: Callable[[], bool],
                 quiet: float, timeout: float) -> None:
    """
    Read a JSON client's chat events (msgid 6) into C{texts} until
    C{done()}, or nothing arrived for C{quiet} seconds, or C{timeout}, or
    the server closed the connection.
    """
    deadline = time.monotonic() + timeout
    lastArrival = time.monotonic()
    while not done() and time.monotonic() < deadline and \
            time.monotonic() - lastArrival < quiet:
        try:
            event = client.readJSON(0.5)
        except AssertionError:
            if client.closed:
                return
            continue
        if event.get("msgid") == 6:
            texts.append(event["msg"])
            lastArrival = time.monotonic()
