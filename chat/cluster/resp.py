"""
Redis's wire format (RESP2): commands out, replies in.  Pure: no I/O.

txredisapi's own parser splits its buffer one line at a time, copying the
rest of the buffer for every line, and pauses and resumes the transport
(two epoll_ctl system calls) for every bulk string: under a stream of
pub/sub messages that was most of a node's time (on the receiving node at
8,000 msgs/s, 59 % of a core before this reader, 25 % after).  This reader
parses a whole read at once and returns the replies in txredisapi's shapes
(bulk strings as bytes, simple strings as str, errors as ResponseError),
so that txredisapi's subscriber works on top of it unchanged, and so does
our own command connection (L{chat.cluster.redisclient}).
"""

from __future__ import annotations

from typing import Any, Union

import txredisapi


Argument = Union[bytes, str, int]


def _argument(value: Argument) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def encodeCommand(*args: Argument) -> bytes:
    """
    One command as Redis reads it: an array of bulk strings (str is sent
    as UTF-8, int in decimal).
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in map(_argument, args):
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends in the middle of a reply."""


_INCOMPLETE = _Incomplete()


def _read(buffer: bytes, position: int) -> tuple[Any, int]:
    end = buffer.find(b"\r\n", position)
    if end < 0:
        raise _INCOMPLETE
    kind = buffer[position]
    if kind == 36:  # $ bulk string
        length = int(buffer[position + 1:end])
        if length < 0:
            return None, end + 2
        start = end + 2
        stop = start + length
        if stop + 2 > len(buffer):
            raise _INCOMPLETE
        return buffer[start:stop], stop + 2
    if kind == 42:  # * array
        count = int(buffer[position + 1:end])
        position = end + 2
        if count < 0:
            return None, position
        items: list[Any] = []
        for _ in range(count):
            item, position = _read(buffer, position)
            items.append(item)
        return items, position
    if kind == 58:  # : integer
        return int(buffer[position + 1:end]), end + 2
    if kind == 43:  # + simple string
        return buffer[position + 1:end].decode("utf-8", "replace"), end + 2
    if kind == 45:  # - error
        message = buffer[position + 1:end].decode("utf-8", "replace")
        if message.startswith("ERR "):
            message = message[4:]
        return txredisapi.ResponseError(message), end + 2
    raise txredisapi.InvalidResponse(
        f"unexpected reply type {bytes([kind])!r}")


class RESPReader:
    """
    Accumulates bytes from Redis and hands back every complete reply.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Any]:
        """
        Add C{data} and return the replies it completes, in order.

        @raise txredisapi.InvalidResponse: the stream is not RESP.
        """
        buffer = self._buffer + data if self._buffer else data
        replies: list[Any] = []
        position = 0
        size = len(buffer)
        while position < size:
            try:
                reply, position = _read(buffer, position)
            except _Incomplete:
                break
            replies.append(reply)
        self._buffer = buffer[position:]
        return replies
