"""
The baseline: a bare Twisted relay speaking just enough of the JSON dialect
for the load generator (register, login, one-to-one and group chat, logout,
ping), with no database, no Redis and no password hashing.

Why it exists: this machine is noisy, so absolute numbers drift from run to
run; a ratio against this relay, measured by the same generator in the same
run, is far more stable.  It is also the ceiling DESIGN.md 5b speaks of: a
node cannot relay faster than a LineReceiver that does nothing else.

It is deliberately naive in the way a first Twisted server is (LineReceiver,
one decode and one encode per message), and it keeps messages for offline
users in memory so the generator's final re-login check works unchanged.
Like the server, it takes the framing from a connection's first message: a
NUL makes it classic (no ACK for what succeeds), a newline makes it send
an ACK 11 for every silent request, so that the many-users pattern costs
it the same replies it costs a node.

    python -m bench.relay --port 0 [--codec orjson|json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver


class Relay(LineReceiver):
    """
    One client; its messages end in NUL, as the classic client sends them,
    or in a newline, whichever its first message ends in.
    """

    delimiter = b"\0"
    MAX_LENGTH = 65536

    def __init__(self, hub: "Hub") -> None:
        self.hub = hub
        self.userId: Optional[int] = None
        self.name = ""
        self.classic: Optional[bool] = None

    def dataReceived(self, data: bytes) -> None:
        if self.classic is None:
            # the first terminator to arrive fixes the framing for good
            nul, newline = data.find(b"\0"), data.find(b"\n")
            if nul >= 0 or newline >= 0:
                self.classic = newline < 0 or 0 <= nul < newline
                self.delimiter = b"\0" if self.classic else b"\n"
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        line = line.strip(b"\r\n \t")
        if not line:
            return
        try:
            request = self.hub.loads(line)
            msgid = request["msgid"]
        except Exception:
            self.reply({"msgid": 11, "req": None, "errno": 100, "errmsg": "bad request"})
            return
        handler = self.hub.handlers.get(msgid)
        if handler is None:
            self.reply({"msgid": 11, "req": msgid, "errno": 100, "errmsg": "unknown msgid"})
            return
        handler(self, request)

    def reply(self, obj: dict[str, Any]) -> None:
        self.transport.write(self.hub.dumps(obj) + b"\n")

    def ack(self, req: int, **fields: Any) -> None:
        """The ACK 11 a non-classic connection gets for a silent request."""
        if not self.classic:
            self.reply({"msgid": 11, "req": req, "errno": 0, **fields})

    def connectionLost(self, reason: Any = None) -> None:
        if self.userId is not None and self.hub.online.get(self.userId) is self:
            del self.hub.online[self.userId]


class Hub(Factory):
    """The relay's state: accounts, who is online, offline messages."""

    def __init__(self, codec: str) -> None:
        if codec == "orjson":
            import orjson

            self.loads: Callable[[bytes], Any] = orjson.loads
            self.dumps: Callable[[Any], bytes] = orjson.dumps
        else:
            self.loads = json.loads
            self.dumps = lambda obj: json.dumps(obj, ensure_ascii=False,
                                                separators=(",", ":")).encode()
        self.ids = itertools.count(1)
        self.accounts: dict[int, tuple[str, str]] = {}
        self.groups: dict[int, set[int]] = {}
        self.online: dict[int, Relay] = {}
        self.offline: dict[int, list[bytes]] = {}
        self.handlers = {1: self.login, 3: self.logout, 4: self.register, 6: self.chat,
                         8: self.createGroup, 9: self.joinGroup, 10: self.groupChat,
                         12: self.ping, 16: self.groupList}

    def buildProtocol(self, addr: Any) -> Relay:
        return Relay(self)

    def register(self, client: Relay, request: dict[str, Any]) -> None:
        userId = next(self.ids)
        self.accounts[userId] = (request["name"], request["password"])
        client.reply({"msgid": 5, "errno": 0, "id": userId})

    def login(self, client: Relay, request: dict[str, Any]) -> None:
        account = self.accounts.get(request.get("id"))
        if account is None or account[1] != request.get("password"):
            client.reply({"msgid": 2, "errno": 1, "errmsg": "id or password is invalid!"})
            return
        if request["id"] in self.online:
            client.reply({"msgid": 2, "errno": 2,
                          "errmsg": "this account is using, input another!"})
            return
        client.userId, client.name = request["id"], account[0]
        self.online[client.userId] = client
        stored = self.offline.pop(client.userId, [])
        client.reply({"msgid": 2, "errno": 0, "id": client.userId, "name": client.name,
                      "friends": [], "groups": [],
                      "offlinemsg": [p.decode() for p in stored]})

    def logout(self, client: Relay, request: dict[str, Any]) -> None:
        if client.userId is not None:
            self.online.pop(client.userId, None)
            client.userId = None
        client.ack(3)

    def _deliver(self, userId: int, payload: bytes) -> bool:
        """Push to the online user or keep it for the next login; True if pushed."""
        target = self.online.get(userId)
        if target is not None:
            target.transport.write(payload + b"\n")
            return True
        self.offline.setdefault(userId, []).append(payload)
        return False

    def chat(self, client: Relay, request: dict[str, Any]) -> None:
        if client.userId is None:
            client.reply({"msgid": 11, "req": 6, "errno": 102, "errmsg": "log in first"})
            return
        toId = request["toid"]
        if toId not in self.accounts:
            client.reply({"msgid": 11, "req": 6, "errno": 104, "errmsg": "no such user"})
            return
        online = self._deliver(toId, self.dumps({
            "msgid": 6, "id": client.userId, "name": client.name, "toid": toId,
            "msg": request["msg"], "time": request.get("time", "")}))
        client.ack(6, delivery="online" if online else "offline")

    def createGroup(self, client: Relay, request: dict[str, Any]) -> None:
        groupId = next(self.ids)
        self.groups[groupId] = {client.userId}
        self.groupNames = getattr(self, "groupNames", {})
        self.groupNames[groupId] = request["groupname"]
        client.ack(8, groupid=groupId)

    def joinGroup(self, client: Relay, request: dict[str, Any]) -> None:
        self.groups.setdefault(request["groupid"], set()).add(client.userId)
        client.ack(9, groupid=request["groupid"])

    def groupChat(self, client: Relay, request: dict[str, Any]) -> None:
        groupId = request["groupid"]
        payload = self.dumps({"msgid": 10, "id": client.userId, "name": client.name,
                              "groupid": groupId, "msg": request["msg"],
                              "time": request.get("time", "")})
        pushed = stored = 0
        for member in self.groups.get(groupId, ()):
            if member != client.userId:
                if self._deliver(member, payload):
                    pushed += 1
                else:
                    stored += 1
        client.ack(10, online=pushed, offline=stored)

    def ping(self, client: Relay, request: dict[str, Any]) -> None:
        client.reply({"msgid": 13})

    def groupList(self, client: Relay, request: dict[str, Any]) -> None:
        names = getattr(self, "groupNames", {})
        client.reply({"msgid": 17, "groups": [
            {"id": g, "groupname": names.get(g, ""), "groupdesc": "", "users": []}
            for g, members in self.groups.items() if client.userId in members]})


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--codec", choices=["orjson", "json"], default="orjson")
    options = parser.parse_args(argv)
    port = reactor.listenTCP(options.port, Hub(options.codec), interface="127.0.0.1",
                             backlog=4096)
    host = port.getHost()
    print(f"Chat server listening on {host.host}:{host.port}", flush=True)
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
