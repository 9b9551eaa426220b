"""
What waits to be written to one connection, bounded in bytes
(PROTOCOL.md section 6, "Slow readers" and "Nothing queued is lost").

Twisted buffers whatever is written to a transport, without limit.  So the
connection registers this queue as the streaming producer of its
transport: Twisted pauses it when the transport's own buffer passes its
C{bufferSize} (64 KiB) and resumes it once that has drained.  While
paused, what the connection has to say waits here, counted: replies and
notices always (a client that pipelines is bounded by the protocol's
window), chat events up to the limit.  An event that would pass it is
refused, and so is every later one, until the client has read what was
waiting (the queue is below a quarter of the limit); the router stores
what is refused, and pushes it back when told the backlog is readable.
A queue that stays over the limit for the stall timeout gives up on its
client.  What was written but not yet acknowledged by the client's TCP
stack is tracked too (L{chat.server.acked}), so that a connection that
dies hands back every event its client did not get; it counts toward the
limit, and the socket's send buffer is fixed at a fraction of it
(L{SEND_BUFFER_SHARE}), since the kernel's autotuning would otherwise let
it grow to megabytes per connection (on loopback at once) and hold that
much unacknowledged, and so tracked, for a client that does not read.

This module owns the bytes on their way out and the events among them;
it never decides what happens to a refused event (the router does) and
never reads from the connection.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Callable, Optional, Sequence

from twisted.internet.interfaces import (
    IDelayedCall, IPushProducer, IReactorTime, ITransport,
)
from zope.interface import implementer

from chat.core.messages import ChatEvent
from chat.server.acked import AckTracker, plainSocket
from chat.server.pacing import Pacer

DEFAULT_MAX_OUTPUT = 1 << 20
Owned = tuple[int, ChatEvent]
"""An event and the user it was delivered to (a connection may log out
and in as another user while events wait)."""
DEFAULT_STALL_TIMEOUT = 120.0
SEND_BUFFER_SHARE = 8
"""The socket's SO_SNDBUF is the limit divided by this (the kernel doubles
it for its own bookkeeping): a quarter of the limit at most in the kernel."""
MIN_SEND_BUFFER = 16 << 10
CLOSE_POLL_SECONDS = 0.01
"""How often a closing connection looks whether its client has
acknowledged everything."""


def _cost(data: bytes, event: Optional[ChatEvent]) -> int:
    """What an item costs the queue: its bytes, and its event's."""
    return len(data) + (event.heldBytes() if event is not None else 0)


@implementer(IPushProducer)
class OutputQueue:
    """
    The output of one connection.

    @ivar queuedBytes: what waits here, in bytes of memory: what is to be
        written, and for an event also what the event holds (its text and
        encodings), so that the limit bounds the memory a connection
        costs, not only its bytes on the wire.
    @ivar overflowed: whether events are being refused (a backlog exists
        in the offline store).
    """

    def __init__(self, transport: ITransport, clock: IReactorTime,
                 limit: int = DEFAULT_MAX_OUTPUT,
                 stallTimeout: float = DEFAULT_STALL_TIMEOUT,
                 readable: Callable[[], None] = lambda: None,
                 stalled: Callable[[], None] = lambda: None) -> None:
        self._transport = transport
        self._clock = clock
        self._limit = limit
        self._stallTimeout = stallTimeout
        self._readable = readable
        self._stalled = stalled
        self._items: deque[tuple[bytes, Optional[Owned], int]] = deque()
        self.queuedBytes = 0
        self.overflowed = False
        self._paused = False
        self._holding = False
        self._closing = False
        self._stopped = False
        self._stallTimer: Optional[IDelayedCall] = None
        self._socket = plainSocket(transport)
        if self._socket is not None:
            self._socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF,
                max(MIN_SEND_BUFFER, limit // SEND_BUFFER_SHARE))
        self._acks: Optional[AckTracker[Owned]] = AckTracker.forSocket(
            self._socket)
        self._pacer: Optional[Pacer] = None
        # Over a plain TCP socket, a pull producer: Twisted calls
        # resumeProducing each time its buffer runs empty, which is when
        # the socket may be written to directly again (see _send).
        # Elsewhere (TLS, tests), a streaming producer, paused past
        # Twisted's buffer size.
        transport.registerProducer(  # type: ignore[attr-defined] # TCP transports provide it
            self, self._socket is None)

    # IPushProducer: Twisted's flow control of the write direction -------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        """Twisted's buffer has drained (or passed below its size)."""
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        """
        The connection is going (Twisted calls this before it closes the
        socket): nothing more is written, and the client's last count of
        what it got is read.
        """
        self._paused = True
        self._stopped = True
        self._cancelStallTimer()
        if self._pacer is not None:
            self._pacer.stop()
        if self._acks is not None:
            self._acks.settle()

    # Writing ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        A reply, an error or a notice: never refused, and never overtaking
        what waits.
        """
        if self._open():
            self._send(data, None)
        else:
            self._queue(data, None)

    def offer(self, data: bytes, event: ChatEvent, userId: int,
              force: bool = False) -> bool:
        """
        A chat event for user C{userId}, encoded as C{data}: written, or
        queued, or refused (returns C{False}) when the queue is over its
        limit or events are being refused already.  With C{force} it is
        never refused: a drain took it from the store by L{room}.
        """
        if self.overflowed and not force:
            return False
        if self._open():
            self._send(data, (userId, event))
            return True
        if not force and self._waiting() + _cost(data, event) > self._limit:
            self.backlog()
            return False
        self._queue(data, (userId, event))
        return True

    def _queue(self, data: bytes, owned: Optional[Owned]) -> None:
        cost = _cost(data, owned[1] if owned else None)
        self._items.append((data, owned, cost))
        self.queuedBytes += cost
        if self._pacer is not None and not (self._paused or self._holding):
            self._pacer.wait()  # it was only the pacing that held it

    def room(self) -> int:
        """How many bytes of events would be taken now."""
        if self.overflowed:
            return 0
        if self._open():
            return self._limit
        return max(0, self._limit - self._waiting())

    def _waiting(self) -> int:
        """The bytes that wait for the client: queued here, or written and
        not acknowledged."""
        unacknowledged = 0 if self._acks is None else \
            self._acks.unacknowledgedBytes()
        return self.queuedBytes + unacknowledged

    def backlog(self) -> None:
        """
        Refuse events from now on, until the client has read what waits
        here: a backlog exists in the store.
        """
        self.overflowed = True
        if self._stallTimer is None:
            self._stallTimer = self._clock.callLater(
                self._stallTimeout, self._stallTimedOut)

    def _send(self, data: bytes, owned: Optional[Owned]) -> None:
        """
        Write C{data} now.  Over a plain socket, with Twisted's buffer
        empty, it goes straight to the socket: Twisted's own path costs a
        reactor round trip and two epoll_ctl calls per write, which was
        the largest part of a node's time when every message comes and
        goes in a segment of its own.  What the socket does not take goes
        to Twisted, and the queue waits until Twisted has written it.
        """
        if self._acks is not None:
            self._acks.written(len(data), owned)
        sock = self._socket
        if sock is None:
            self._transport.write(data)
        else:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # Twisted finds the error, and ends the connection
            if sent < len(data):
                self._paused = True
                self._transport.write(data[sent:] if sent else data)
        if self._pacer is not None:
            self._pacer.sent()

    def _open(self) -> bool:
        """Whether bytes may go straight to the transport."""
        return not (self._paused or self._holding or self._items) and (
            self._pacer is None or self._pacer.ready())

    def pace(self) -> None:
        """
        From now on, one object per write, each once the previous one was
        acknowledged (a classic client's connection: L{chat.server.pacing}).
        """
        if self._pacer is None:
            self._pacer = Pacer(self._clock, self._acks, self._flush)

    def hold(self) -> None:
        """Keep events here until L{release}: a login reply is pending,
        and no event may overtake it or the offline messages it brings."""
        self._holding = True

    def release(self, first: Optional[bytes] = None,
                then: Sequence[tuple[bytes, Owned]] = ()) -> None:
        """
        Write C{first} (the login reply) and the events C{then} (offline
        messages that did not fit in it), then what was held.
        """
        self._holding = False
        for data, owned in reversed(then):
            cost = _cost(data, owned[1])
            self._items.appendleft((data, owned, cost))
            self.queuedBytes += cost
        if first is not None:
            self._items.appendleft((first, None, len(first)))
            self.queuedBytes += len(first)
        self._flush()

    def _flush(self) -> None:
        items = self._items
        pacer = self._pacer
        while items and not (self._paused or self._holding):
            if pacer is not None and not pacer.ready():
                pacer.wait()
                break
            data, owned, cost = items.popleft()
            self.queuedBytes -= cost
            # May pause this producer at once, when the transport's buffer
            # passes its size.
            self._send(data, owned)
        if self.overflowed and not self._holding and \
                self.queuedBytes < self._limit // 4:
            self.overflowed = False
            self._cancelStallTimer()
            self._readable()
        if self._closing and not items:
            self._closeTransport()

    def _stallTimedOut(self) -> None:
        self._stallTimer = None
        if self.overflowed:
            self._stalled()

    def _cancelStallTimer(self) -> None:
        if self._stallTimer is not None:
            if self._stallTimer.active():
                self._stallTimer.cancel()
            self._stallTimer = None

    # Ending -------------------------------------------------------------

    def takeUndelivered(self) -> list[Owned]:
        """
        The connection is lost: the events its client's TCP stack did not
        acknowledge, and those still waiting here, with their users, in
        order.
        """
        unacknowledged = self._acks.unacknowledged() if self._acks else []
        return unacknowledged + self.takeEvents()

    def takeEvents(self) -> list[Owned]:
        """
        The events still waiting here, with their users, in order, no
        longer to be written (their session ended: they are to be
        stored).  Replies stay.
        """
        events = [owned for _, owned, _ in self._items if owned is not None]
        if events:
            self._items = deque(
                item for item in self._items if item[1] is None)
            self.queuedBytes = sum(cost for _, _, cost in self._items)
        return events

    def close(self, last: Optional[bytes] = None) -> None:
        """
        Write C{last} (a notice), then close the connection once what
        waits here has been written.  Events held for a login reply are
        not written: the reply will not come, and they stay for
        L{takeEvents}.
        """
        self._closing = True
        self._cancelStallTimer()
        if self._holding:
            if last is not None:
                self._transport.write(last)
            self._closeTransport()
            return
        if last is not None:
            self.write(last)
        if not self._items:
            self._closeTransport()

    def _closeTransport(self) -> None:
        """
        Close once the client has acknowledged all that was written, so
        that nothing it was sent dies with the socket unaccounted for.
        (The protocol drops a client that takes too long.)
        """
        if self._stopped:
            return  # the connection is gone already
        acks = self._acks
        if acks is not None:
            acks.settle()
            if not acks.allAcked():
                self._clock.callLater(CLOSE_POLL_SECONDS,
                                      self._closeTransport)
                return
        # Twisted does not close a transport whose streaming producer is
        # paused, so unregister first.
        self._transport.unregisterProducer()  # type: ignore[attr-defined] # TCP transports provide it
        self._transport.loseConnection()
