"""
The C{--metrics} service: the node's metrics and readiness wired to
their sources, served over HTTP.

This module only connects the parts (the connections of the chat
factory, the password hasher, the lease, the database, the bus, the
drain) to L{chat.ops.metrics} and L{chat.ops.web}, and listens.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from twisted.application.service import Service
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.server import Site

from chat.cluster.bus import IMessageBus
from chat.cluster.presence import Lease
from chat.listening import listenNow
from chat.ops.counters import Counters
from chat.ops.drain import Drain
from chat.ops.metrics import Connection, NodeGauges, NodeMetrics
from chat.ops.web import Readiness, opsSite
from chat.passwords import Passwords
from chat.server.protocol import ChatFactory
from chat.storage.store import Store
from chat.wire.jsondialect import CLASSIC, JSON
from chat.wire.textdialect import TEXT

_DIALECT_NAMES = {id(TEXT): "text", id(JSON): "json", id(CLASSIC): "classic"}


class OpsListener(Service):
    """
    Serves the ops site on an endpoint, and says where (a node started
    with C{--metrics tcp:0} can be found from its log).
    """

    _log = Logger()

    def __init__(self, description: str, site: Site) -> None:
        self._description = description
        self._site = site
        self._port: Optional[IListeningPort] = None

    def privilegedStartService(self) -> None:
        """Listen before the reactor runs: a --metrics port that cannot be
        had ends twistd, as a --port does."""
        super().privilegedStartService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        self._port = port = listenNow(_reactor, self._description, self._site,
                                      "--metrics")
        host = port.getHost()
        self._log.info("Metrics, health and readiness on http://{host}:{port}",
                       host=getattr(host, "host", host),
                       port=getattr(host, "port", ""))

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        if self._port is None:
            return succeed(None)
        return maybeDeferred(self._port.stopListening)


def _connections(factory: ChatFactory) -> Iterator[Connection]:
    for protocol in list(factory.connections):
        dialect = protocol.dialect
        yield Connection(
            None if dialect is None else _DIALECT_NAMES.get(id(dialect)),
            protocol.userId is not None, protocol.outputBytes())


def opsService(description: str, counters: Counters, factory: ChatFactory,
               passwords: Passwords, lease: Lease, store: Store,
               bus: IMessageBus, drain: Drain) -> OpsListener:
    """The service of C{--metrics DESCRIPTION}."""
    redisUp = getattr(bus, "connected", None)
    gauges = NodeGauges(
        connections=lambda: _connections(factory),
        passwordChecks=lambda: passwords.waiting,
        leaseAge=lease.age,
        redisUp=redisUp)
    readiness = Readiness(store.ping, lambda: drain.reason, redisUp)
    site = opsSite(NodeMetrics(counters, gauges), readiness, _reactor)
    return OpsListener(description, site)
