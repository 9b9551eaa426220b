"""
What one connection reads: the client's requests, split from the bytes
and decoded in the dialect the first of them chose, answered one at a
time, in order.

A L{RequestQueue} owns the framing, the choice of dialect, the decoding,
the queue of messages waiting and their order: a request is handed on
only once the one before it is answered (its Deferred fired), so replies
keep the order of the requests.  It owns the backpressure too: the
connection stops being read while L{PAUSE_AT} messages wait, and is read
again once half of them are handled.  It never carries a request out nor
writes a reply: the protocol it is given does.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chat.core.messages import Reply, Request
from chat.logs import logFailure
from chat.server.session import Answer
from chat.wire.dialect import IDialect, Rejected
from chat.wire.framing import MessageSplitter, MessageTooLong
from chat.wire.jsondialect import CLASSIC, JSON
from chat.wire.textdialect import TEXT

BLANK = b" \t"
PAUSE_AT = 64
"""Queued requests at which the connection stops reading, for backpressure."""

Queued = Union[bytes, MessageTooLong]
"""A client message waiting to be handled, or the overlong one that ends
the connection."""


def chooseDialect(firstMessage: bytes, endedInNUL: bool) -> IDialect:
    """
    The dialect a connection's first non-blank message selects.
    """
    if firstMessage.lstrip(BLANK).startswith(b"{"):
        return CLASSIC if endedInNUL else JSON
    return TEXT


class RequestQueue:
    """
    The requests of one connection on their way to their answers.

    @ivar dialect: the connection's dialect, once its first message
        arrived.
    """

    _log = Logger()

    def __init__(self, reading: IPushProducer, maxLine: int, *,
                 spoken: Callable[[IDialect], None],
                 handle: Callable[[Request], Answer],
                 replied: Callable[[Reply, Request], None],
                 failed: Callable[[Failure, Request], None],
                 rejected: Callable[[Rejected], None],
                 tooLong: Callable[[], None]) -> None:
        """
        @param reading: the connection's transport, paused and resumed.
        @param spoken: told the dialect once the first message chose it.
        @param handle: carries out a request (or fails, or raises).
        @param replied: writes a request's reply.
        @param failed: writes why a request failed.
        @param rejected: answers a message that is no request.
        @param tooLong: the overlong message arrived, in its turn (nothing
            is handled after it).
        """
        self.dialect: Optional[IDialect] = None
        self._reading = reading
        self._splitter = MessageSplitter(maxLine)
        self._spoken = spoken
        self._handle = handle
        self._replied = replied
        self._failed = failed
        self._rejected = rejected
        self._tooLong = tooLong
        self._waiting: deque[Queued] = deque()
        self._busy = False
        self._paused = False
        self._stopped = False

    def feed(self, data: bytes) -> None:
        """Queue the messages C{data} completes, and handle what may be."""
        if self._stopped:
            return
        try:
            for message, endedInNUL in self._splitter.feed(data):
                if not message.strip(BLANK):
                    continue
                if self.dialect is None:
                    self._speak(chooseDialect(message, endedInNUL))
                self._waiting.append(message)
        except MessageTooLong as tooLong:
            if self.dialect is None:
                self._speak(chooseDialect(tooLong.head, False))
            self._waiting.append(tooLong)
        self._run()

    def stop(self) -> None:
        """The connection is closing: nothing more is read or handled."""
        self._stopped = True
        self._waiting.clear()

    def _speak(self, dialect: IDialect) -> None:
        self.dialect = dialect
        self._spoken(dialect)

    def _run(self) -> None:
        """
        Handle queued messages in order, stopping at the first that waits
        on a Deferred; its firing restarts the queue.
        """
        while self._waiting and not self._busy and not self._stopped:
            item = self._waiting.popleft()
            if isinstance(item, MessageTooLong):
                self._tooLong()
                return
            assert self.dialect is not None, "chosen by the first message"
            request = self.dialect.decode(item)
            if isinstance(request, Rejected):
                self._rejected(request)
            else:
                self._answer(request)
        if self._stopped:
            return
        if len(self._waiting) >= PAUSE_AT and not self._paused:
            self._paused = True
            self._reading.pauseProducing()
        elif self._paused and len(self._waiting) < PAUSE_AT // 2:
            self._paused = False
            self._reading.resumeProducing()

    def _answer(self, request: Request) -> None:
        """Have C{request} carried out, and its answer written once known."""
        try:
            result = self._handle(request)
        except Exception:
            self._failed(Failure(), request)
            return
        if not isinstance(result, Deferred):
            self._replied(result, request)
            return
        self._busy = True
        result.addCallbacks(self._replied, self._failed,
                            callbackArgs=(request,), errbackArgs=(request,))
        result.addErrback(logFailure(
            self._log, "answering {request}", request=request))
        result.addBoth(self._resume)

    def _resume(self, _: object) -> None:
        self._busy = False
        self._run()
