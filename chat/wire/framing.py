"""
Splitting a connection's byte stream into client messages.

A message ends at LF or at NUL (the classic client sends JSON then one
NUL); a CR just before the terminator is dropped.  Unlike LineReceiver,
which copies the rest of its buffer for every line it splits off, a whole
read is split at once, which matters when clients pipeline many messages.
This module owns the message boundaries and the length limit; it never
looks inside a message.
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

    __slots__ = ("maxLength", "_pending", "_pendingSize")

    def __init__(self, maxLength: int) -> None:
        self.maxLength = maxLength
        self._pending: list[bytes] = []
        """The start of an unfinished message: reads with no terminator."""
        self._pendingSize = 0

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        """
        Add C{data}; yield each completed message with whether it ended in
        NUL.

        Only C{data} is searched for a terminator and the unfinished start
        is joined once, when its end arrives, so a message sent a byte at a
        time costs time linear in its length.

        @raise MessageTooLong: after the messages before the overlong one
            have been yielded.
        """
        limit = self.maxLength
        if not data:
            return
        if self._pending:
            if _TERMINATOR.search(data) is None:
                self._pending.append(data)
                self._pendingSize += len(data)
                if self._pendingSize > limit and not (
                        self._pendingSize == limit + 1 and
                        data.endswith(b"\r")):
                    head = _head(b"".join(self._pending))
                    self._pending, self._pendingSize = [], 0
                    raise MessageTooLong(head)
                return
            buffer = b"".join(self._pending) + data
            self._pending, self._pendingSize = [], 0
        else:
            buffer = data
        start = 0
        for match in _TERMINATOR.finditer(buffer):
            end = match.start()
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                raise MessageTooLong(_head(line))
            yield line, match.group() == b"\0"
        rest = buffer[start:]
        if len(rest) > limit and not (
                len(rest) == limit + 1 and rest.endswith(b"\r")):
            raise MessageTooLong(_head(rest))
        if rest:
            self._pending, self._pendingSize = [rest], len(rest)


def _head(message: bytes) -> bytes:
    """
    Enough of an overlong message to tell its dialect by its first
    non-space byte, however many spaces and tabs come before it.
    """
    return message.lstrip(b" \t")[:64]
