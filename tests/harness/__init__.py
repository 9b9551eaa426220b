"""
Real processes for end-to-end tests (DESIGN.md 6): chat nodes, redis-server,
mariadbd, haproxy, each on a free port of 127.0.0.1 with its own temp dir,
and blocking line clients to talk to them as a user would.

Everything is synchronous, so trial tests call it from plain test methods:

    node = ChatNode(self)
    client = node.client()
    self.assertEqual(client.command("ping"), "PONG")

    db, redis = SharedMariaDBDatabase(self), RedisServer(self)
    nodes = [ChatNode(self, db=db, redis=redis, haproxy=True) for _ in range(3)]
    proxy = HAProxy(self, nodes)
    alice, bob = proxy.client(), proxy.client()

Each service starts in its constructor and registers its C{cleanup} with
C{testCase.addCleanup}, so cleanups run in reverse order of creation (HAProxy
before the nodes behind it, nodes before their database). A process left over
by a crashed test run is killed at interpreter exit and, on Linux, by the
kernel when the test process dies (PR_SET_PDEATHSIG).
"""

from .chatnode import ChatNode
from .client import LineClient, collectChats, proxyV2Header
from .haproxy import HAPROXY_CFG, HAProxy, renderHAProxyConfig
from .mariadb import OwnMariaDB, SharedMariaDBDatabase
from .process import ROOT, freePort, requireProgram
from .redisserver import RedisError, RedisServer

__all__ = [
    "ChatNode", "HAProxy", "HAPROXY_CFG", "LineClient", "OwnMariaDB", "RedisError",
    "RedisServer", "ROOT", "SharedMariaDBDatabase", "collectChats", "freePort", "proxyV2Header",
    "renderHAProxyConfig", "requireProgram",
]
