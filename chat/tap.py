"""
twistd options to a running chat node: C{twistd -n chat [options]}.

L{makeService} does the blocking preparation (options checked, database
reached, tables created, node registered) before the reactor runs, so a
bad option or an unreachable database ends twistd with one clear line and
a non-zero exit, and nothing is served before the node is ready.  This is
the only module that knows twistd; it wires the parts and decides nothing
else.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional
from urllib.parse import urlsplit

from twisted.application.service import IService, MultiService, Service
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from chat.cluster.bus import IMessageBus
from chat.cluster.localbus import LocalBus
from chat.cluster.presence import DEFAULT_LEASE_SECONDS, Lease, Presence
from chat.limits import (
    DEFAULT_CHAT_BURST, DEFAULT_CHAT_RATE, DEFAULT_TRUSTED_NETS,
    ILimitCounters, MemoryCounters, RedisCounters, TrustedNets,
    parseTrustedNets,
)
from chat.listening import listenNow
from chat.logs import logFailure, setNode
from chat.ops.counters import Counters, NoCounters
from chat.ops.drain import DEFAULT_DRAIN_GRACE, DEFAULT_DRAIN_RATE, Drain
from chat.ops.orders import OrderPoller
from chat.passwords import (
    DEFAULT_MAX_PENDING, DEFAULT_MEMORY_KIB, DEFAULT_TIME_COST, Passwords,
)
from chat.server.admission import Admission, SharedCounters
from chat.server.output import DEFAULT_MAX_OUTPUT, DEFAULT_STALL_TIMEOUT
from chat.server.protocol import (
    DEFAULT_LOGIN_TIMEOUT, ChatFactory, ConnectionLimits,
)
from chat.server.service import ChatService
from chat.server.session import IChatService
from chat.storage.pool import BadDatabaseURL, openDatabase
from chat.storage.store import Store


def _positive(option: str, kind: type = int) -> Any:
    """
    The coercion of option C{--option}: a positive C{kind}.  Its error
    names the option, since twistd's message ("Parameter type enforcement
    failed: ...") does not.
    """
    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = 0
        if not number > 0:
            raise ValueError(f"--{option} must be a positive "
                             f"{'integer' if kind is int else 'number'}, "
                             f"not {value!r}")
        return number

    coerce.coerceDoc = (  # type: ignore[attr-defined] # usage.Options reads it
        "A positive integer." if kind is int else "A positive number.")
    return coerce


def _nonNegative(option: str) -> Any:
    """The coercion of option C{--option}: a number, 0 or more."""
    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number >= 0:
            raise ValueError(f"--{option} must be a number, 0 or more, "
                             f"not {value!r}")
        return number

    coerce.coerceDoc = "A number, 0 or more."  # type: ignore[attr-defined] # usage.Options reads it
    return coerce


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("A chat server: text dialect for telnet, JSON dialect for "
                "the classic cluster chat client.  One node on SQLite by "
                "default; a cluster with --redis and a mysql:// --db.")

    optParameters = [
        ["port", "p", "tcp:6000",
         "Twisted server endpoint to listen on (haproxy:tcp:6001 behind "
         "HAProxy's PROXY v2; ssl:6443:privateKey=...:certKey=... for TLS)."],
        ["db", None, "sqlite:chat.sqlite3",
         "sqlite:PATH or mysql://USER:PASSWORD@HOST:PORT/DBNAME."],
        ["redis", None, None,
         "redis://HOST:PORT[/DB]: join a cluster through Redis pub/sub."],
        ["node-id", None, None,
         "This node's unique name in a cluster (default: host and port)."],
        ["max-line", None, 65536, "Longest client message, in bytes.",
         _positive("max-line")],
        ["max-output", None, DEFAULT_MAX_OUTPUT,
         "Most bytes of events waiting to be written to one connection; "
         "past it, events are stored offline until the client reads.",
         _positive("max-output")],
        ["stall-timeout", None, DEFAULT_STALL_TIMEOUT,
         "Seconds a connection may stay over --max-output before it is "
         "closed.", _positive("stall-timeout", float)],
        ["password-time", None, DEFAULT_TIME_COST,
         "argon2id time cost (passes).", _positive("password-time")],
        ["password-memory", None, DEFAULT_MEMORY_KIB,
         "argon2id memory cost, in KiB (at least 8).",
         _positive("password-memory")],
        ["max-pending-logins", None, DEFAULT_MAX_PENDING,
         "Most logins waiting for a password check at once; more are "
         "answered errno 106 (busy).", _positive("max-pending-logins")],
        ["login-timeout", None, DEFAULT_LOGIN_TIMEOUT,
         "Seconds a connection may stay without a login before it is "
         "closed.", _positive("login-timeout", float)],
        ["chat-rate", None, DEFAULT_CHAT_RATE,
         "Chat messages a second per session (0: no limit).",
         _nonNegative("chat-rate")],
        ["chat-burst", None, DEFAULT_CHAT_BURST,
         "Most chat messages a session may send at once.",
         _positive("chat-burst")],
        ["trusted-net", None, DEFAULT_TRUSTED_NETS,
         "Comma-separated networks exempt from the per-address limits "
         "(an empty value trusts none)."],
        ["lease", None, DEFAULT_LEASE_SECONDS,
         "Seconds after which a silent node's sessions may be taken over.",
         _positive("lease", float)],
        # Operating the node (chat.ops): keep these last.
        ["metrics", None, None,
         "Twisted server endpoint for /metrics, /health and /ready "
         "(e.g. tcp:9100:interface=127.0.0.1); off by default."],
        ["drain-rate", None, DEFAULT_DRAIN_RATE,
         "Sessions closed per second while draining (SIGUSR1, "
         "chatctl drain).", _positive("drain-rate", float)],
        ["drain-grace", None, DEFAULT_DRAIN_GRACE,
         "Seconds a drain waits, not ready, before it closes the first "
         "session (for the load balancer's checks to notice).",
         _nonNegative("drain-grace")],
    ]

    def parseOptions(self, options: Any = None) -> None:
        """
        A bad option ends twistd with one line on stderr and exit status 1
        (DESIGN.md 7), not with twistd's whole usage text on stdout.
        """
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call] # unannotated in Twisted
        except usage.UsageError as e:
            raise SystemExit(f"chat: {e} (see twistd chat --help)")

    def postOptions(self) -> None:
        if self["password-memory"] < 8:
            raise usage.UsageError("--password-memory must be at least 8")
        try:
            parseTrustedNets(self["trusted-net"])
        except ValueError as e:
            raise usage.UsageError(f"bad --trusted-net: {e}")
        try:
            serverFromString(_reactor, self["port"])
        except (ValueError, TypeError, KeyError) as e:
            raise usage.UsageError(f"bad --port {self['port']!r}: {e}")
        if self["metrics"] is not None:
            try:
                serverFromString(_reactor, self["metrics"])
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(
                    f"bad --metrics {self['metrics']!r}: {e}")
        redis = self["redis"]
        if redis is not None:
            parts = urlsplit(redis)
            if parts.scheme != "redis" or not parts.hostname:
                raise usage.UsageError(
                    f"bad --redis {redis!r}: expected redis://HOST:PORT[/DB]")
            if self["db"].startswith("sqlite:"):
                raise usage.UsageError(
                    "a cluster (--redis) needs a shared database: give a "
                    "mysql:// --db; nodes on one SQLite file are not a "
                    "cluster")
        if self["node-id"] is None:
            self["node-id"] = defaultNodeId(self["port"])


def defaultNodeId(port: str) -> str:
    """
    The host name and the listening endpoint; a port chosen by the kernel
    (0) says nothing, so the process id stands in for it.
    """
    nodeId = f"{socket.gethostname()}:{port}"
    if port.rstrip().split(":")[1:2] == ["0"] or ":0:" in f"{port}:":
        nodeId += f":pid{os.getpid()}"
    return nodeId


DEFAULT_BACKLOG = 1024
_BACKLOG_TYPES = {"tcp", "tcp6", "ssl", "unix"}


def withBacklog(description: str) -> str:
    """
    C{description} with a listen backlog of L{DEFAULT_BACKLOG} unless it
    names one (C{backlog=}): Twisted's default of 50 makes a burst of
    reconnecting clients queue at the door (PROTOCOL.md section 6).
    """
    kinds = description.split(":")
    kind = kinds[1] if kinds[0] == "haproxy" and len(kinds) > 1 else kinds[0]
    if kind not in _BACKLOG_TYPES or "backlog=" in description:
        return description
    return f"{description}:backlog={DEFAULT_BACKLOG}"


STOP_SECONDS = 5.0
"""How long a stopping node waits for the messages still being stored."""


class ChatListener(Service):
    """
    Listens on the endpoint before the reactor runs (as root, if need be),
    and says where, so that a node started on port 0 can be found.
    """

    _log = Logger()

    def __init__(self, description: str, factory: ChatFactory) -> None:
        self._description = description
        self._factory = factory
        self._port: Optional[IListeningPort] = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        self._port = outcome = listenNow(
            _reactor, withBacklog(self._description), self._factory,
            "--port")
        host = outcome.getHost()
        self._log.info("Chat server listening on {host}:{port}",
                       host=getattr(host, "host", host),
                       port=getattr(host, "port", ""))

    def stopService(self) -> Deferred[Any]:
        """
        Stop accepting, then tell every client that the server is going
        away and close it; fires once what their connections still held
        is stored.
        """
        super().stopService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        stopped = maybeDeferred(self._port.stopListening) \
            if self._port is not None else succeed(None)
        self._factory.closeAll("the server is shutting down; please reconnect")
        # Bounded: a database that is down would otherwise hold the
        # shutdown for as long as the stores keep retrying.
        settled = self._factory.service.settled().addTimeout(
            STOP_SECONDS, _reactor).addErrback(logFailure(
                self._log, "stopping: messages still being stored after "
                f"{STOP_SECONDS} s"))
        return DeferredList([stopped, settled], consumeErrors=True)


def makeBus(options: Options) -> tuple[IMessageBus, ILimitCounters]:
    """
    The message bus, and the counters of the rate limits: in Redis when
    the node is in a cluster, so that every node sees the same counts
    (PROTOCOL.md 6), falling back to this node's own while Redis fails.
    """
    local = MemoryCounters(_reactor)
    if options["redis"] is None:
        return LocalBus(), local
    from chat.cluster.redisbus import RedisBus  # txredisapi only when used

    bus = RedisBus.fromURL(options["redis"], _reactor)
    return bus, SharedCounters(RedisCounters(bus.commands), local, _reactor)


def makeService(options: Options) -> IService:
    setNode(options["node-id"])
    try:
        database = openDatabase(options["db"])
    except BadDatabaseURL as e:
        raise SystemExit(f"chat: bad --db: {e}")
    metered = options["metrics"] is not None
    counters = Counters() if metered else NoCounters()
    if metered:
        database.observe = counters.database
    store = Store(database, counters)
    try:
        store.prepare(options["node-id"])
    except Exception as e:
        raise SystemExit(
            f"chat: cannot use the database {options['db']}: {e}")
    bus, limitCounters = makeBus(options)
    admission = Admission(
        limitCounters, TrustedNets.fromString(options["trusted-net"]),
        _reactor, options["chat-rate"], options["chat-burst"], counters)
    passwords = Passwords(options["password-time"],
                          options["password-memory"],
                          options["max-pending-logins"])
    lease = Lease(options["lease"])
    chat = ChatService(store, bus, passwords, options["node-id"], lease,
                       counters=counters,
                       admission=admission)
    limits = ConnectionLimits(options["max-line"], options["max-output"],
                              options["stall-timeout"],
                              options["login-timeout"])
    presence = Presence(store, options["node-id"], lease, chat.sessions,
                        _reactor)
    drain = Drain(chat.sessions, _reactor, options["drain-rate"],
                  options["drain-grace"])
    orders = OrderPoller(store, options["node-id"], chat.sessions, drain,
                         _reactor)
    served: IChatService = chat
    if metered:
        from chat.ops.metered import MeteredService

        served = MeteredService(chat, counters)
    factory = ChatFactory(served, limits, _reactor)
    listener = ChatListener(options["port"], factory)
    top = MultiService()
    parts: list[object] = [bus, presence, drain, orders, listener]
    if metered:
        from chat.ops.service import opsService  # prometheus_client when used

        parts.append(opsService(options["metrics"], counters, factory,
                                passwords, lease, store, bus, drain))
    for part in parts:
        if IService.providedBy(part):
            IService(part).setServiceParent(top)
    return top
