"""
Splitting a connection's byte stream into client messages.

A message ends at LF or at NUL (the classic client sends JSON then one
NUL); a CR just before the terminator is dropped.  Unlike LineReceiver,
which copies the rest of its buffer for every line it splits off, a whole
read is split at once, which matters when clients pipeline many messages.
"""

from __future__ import annotations

import re
from typing import Iterator

_TERMINATOR = re.compile(b"[\n\0]")


class MessageTooLong(Exception):
    """
    More than the limit arrived without a terminator.

    @ivar head: the first bytes of the message, enough to tell its dialect.
    """

    def __init__(self, head: bytes) -> None:
        super().__init__("message too long")
        self.head = head


class MessageSplitter:
    """
    Accumulates bytes and yields whole messages.

    @ivar maxLength: the longest message, in bytes before the terminator (a
        CR just before it counts as part of the terminator).
    """

    __slots__ = ("maxLength", "_buffer")

    def __init__(self, maxLength: int) -> None:
        self.maxLength = maxLength
        self._buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        """
        Add C{data}; yield each completed message with whether it ended in
        NUL.

        @raise MessageTooLong: after the messages before the overlong one
            have been yielded.
        """
        buffer = self._buffer + data if self._buffer else data
        start = 0
        limit = self.maxLength
        for match in _TERMINATOR.finditer(buffer):
            end = match.start()
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                self._buffer = b""
                raise MessageTooLong(line[:64])
            yield line, match.group() == b"\0"
        rest = buffer[start:]
        if len(rest) > limit and not (
                len(rest) == limit + 1 and rest.endswith(b"\r")):
            self._buffer = b""
            raise MessageTooLong(rest[:64])
        self._buffer = rest
