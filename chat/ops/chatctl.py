"""
C{chatctl}: the operator's command for a chat cluster.

    chatctl --db URL [--redis URL] [--json] nodes
    chatctl --db URL online
    chatctl --db URL user USER          (an id or a name)
    chatctl --db URL kick USER
    chatctl --db URL drain NODE

It talks to the cluster's database directly and synchronously (an admin
tool needs no reactor), with the node's own URL parsing and SQL dialects.
Reading is plain SQL over the node's tables; acting is leaving an order
the node carries out within about a second (L{chat.ops.orders}): a row
of C{kicks} for the node holding the session, the node's C{draining}
flag.  Every failure is one line on stderr and a non-zero exit: 1 for a
refused command (unknown node or user, user not online), 2 for bad usage,
3 when the database (or Redis) cannot be reached.

This module owns the command line and its output; it changes nothing but
by those orders.
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import sys
import time
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit

from chat.storage.pool import (
    SQLITE, BadDatabaseURL, SQLDialect, mysqlDialect, mysqlParameters,
    sqlitePath,
)

KICK_WAIT_SECONDS = 5.0
"""How long C{kick} waits for the node to end the session."""


class Refused(Exception):
    """The command cannot be carried out (exit 1)."""


class Unreachable(Exception):
    """The database or Redis does not answer (exit 3)."""


class Admin:
    """The cluster's tables, for an operator."""

    def __init__(self, connection: Any, dialect: SQLDialect) -> None:
        self._connection = connection
        self._dialect = dialect

    @classmethod
    def open(cls, url: str) -> "Admin":
        try:
            if url.startswith("sqlite:"):
                path = sqlitePath(url)
                connection: Any = sqlite3.connect(
                    f"file:{path}?mode=rw", uri=True, timeout=5,
                    isolation_level=None)
                dialect = SQLITE
            elif url.startswith("mysql://"):
                import pymysql

                dialect = mysqlDialect()
                connection = pymysql.connect(**mysqlParameters(url))
            else:
                raise BadDatabaseURL(
                    f"unknown database URL {url!r}: use sqlite:PATH or "
                    "mysql://USER:PASSWORD@HOST:PORT/DBNAME")
        except BadDatabaseURL:
            raise
        except Exception as e:
            raise Unreachable(f"cannot reach the database {url}: {e}")
        return cls(connection, dialect)

    def _rows(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        cursor = self._connection.cursor()
        try:
            cursor.execute(self._dialect.sql(statement), params)
            return list(cursor.fetchall())
        except self._dialect.databaseErrors as e:
            raise Unreachable(f"the database failed: {e}")
        finally:
            cursor.close()

    def _change(self, statement: str, *params: Any) -> int:
        cursor = self._connection.cursor()
        try:
            cursor.execute(self._dialect.sql(statement), params)
            return int(cursor.rowcount)
        except self._dialect.databaseErrors as e:
            raise Unreachable(f"the database failed: {e}")
        finally:
            cursor.close()

    # Reading -------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        now = self._dialect.now
        rows = self._rows(
            f"SELECT n.node_id, n.last_seen, {now} - n.last_seen, n.draining,"
            " (SELECT COUNT(*) FROM sessions s WHERE s.node_id = n.node_id)"
            " FROM nodes n ORDER BY n.node_id")
        return [{"node": r[0], "last_renewal": _timestamp(r[1]),
                 "age_seconds": round(float(r[2]), 1),
                 "draining": bool(r[3]), "sessions": int(r[4])}
                for r in rows]

    def online(self) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT s.user_id, u.name, s.node_id, s.since FROM sessions s"
            " JOIN users u ON u.id = s.user_id ORDER BY s.node_id, s.user_id")
        return [{"id": int(r[0]), "name": r[1], "node": r[2],
                 "since": _timestamp(r[3])} for r in rows]

    def user(self, who: str) -> dict[str, Any]:
        userId, name = self._find(who)
        friends = self._rows(
            "SELECT u.id, u.name FROM friends f JOIN users u"
            " ON u.id = f.friend_id WHERE f.user_id = ? ORDER BY u.id", userId)
        groups = self._rows(
            "SELECT g.id, g.name, m.role FROM group_members m"
            " JOIN chat_groups g ON g.id = m.group_id WHERE m.user_id = ?"
            " ORDER BY g.id", userId)
        waiting = self._rows(
            "SELECT COUNT(*) FROM offline_messages WHERE user_id = ?", userId)
        node = self._rows("SELECT node_id FROM sessions WHERE user_id = ?",
                          userId)
        return {"id": userId, "name": name,
                "online": node[0][0] if node else None,
                "friends": [{"id": int(f[0]), "name": f[1]} for f in friends],
                "groups": [{"id": int(g[0]), "name": g[1], "role": g[2]}
                           for g in groups],
                "stored_messages": int(waiting[0][0])}

    def _find(self, who: str) -> tuple[int, str]:
        """The id and name of the user named or numbered C{who}."""
        rows = self._rows("SELECT id, name FROM users WHERE name = ?", who)
        if not rows and who.isdigit():
            rows = self._rows("SELECT id, name FROM users WHERE id = ?",
                              int(who))
        if not rows:
            raise Refused(f"no such user: {who}")
        return int(rows[0][0]), str(rows[0][1])

    # Orders --------------------------------------------------------------

    def kick(self, who: str, wait: float = KICK_WAIT_SECONDS,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """
        Order the node holding C{who}'s session to end it, and wait until
        it has (its row is gone or belongs to a newer login).
        """
        userId, name = self._find(who)
        rows = self._rows("SELECT node_id, since FROM sessions"
                          " WHERE user_id = ?", userId)
        if not rows:
            raise Refused(f"{name} (id {userId}) is not online")
        node, since = rows[0]
        self._change(f"{self._dialect.insertIgnore} INTO kicks"
                     " (user_id, node_id) VALUES (?, ?)", userId, node)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            now = self._rows("SELECT node_id, since FROM sessions"
                             " WHERE user_id = ?", userId)
            if not now or tuple(now[0]) != (node, since):
                return {"id": userId, "name": name, "node": node,
                        "kicked": True}
            sleep(0.1)
        raise Refused(f"{node} did not end the session of {name} within "
                      f"{wait:g} s (is the node alive?)")

    def drain(self, node: str) -> dict[str, Any]:
        if not self._change("UPDATE nodes SET draining = 1 WHERE node_id = ?",
                            node):
            raise Refused(f"no such node: {node}")
        return {"node": node, "draining": True}


def _timestamp(seconds: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(seconds)))


def redisAnswers(url: str) -> bool:
    """Whether the Redis at C{url} answers PING (one plain command)."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise BadDatabaseURL(f"bad --redis {url!r}: expected "
                             "redis://HOST:PORT[/DB]")
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379),
                                      timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# Output ------------------------------------------------------------------

def _text(command: str, result: Any) -> list[str]:
    if command == "nodes":
        lines = [f"{'NODE':<24} {'LAST RENEWAL':<19} {'AGE':>6} "
                 f"{'SESSIONS':>8}  STATE"]
        for n in result["nodes"]:
            lines.append(f"{n['node']:<24} {n['last_renewal']:<19} "
                         f"{n['age_seconds']:>5}s {n['sessions']:>8}  "
                         f"{'draining' if n['draining'] else 'serving'}")
        if "redis" in result:
            lines.append(f"redis: {'up' if result['redis'] else 'DOWN'}")
        return lines
    if command == "online":
        return [f"{u['id']:>6} {u['name']:<32} {u['node']:<24} since "
                f"{u['since']}" for u in result] or ["nobody is online"]
    if command == "user":
        r = result
        return [f"id {r['id']}", f"name {r['name']}",
                f"online {r['online'] or 'no'}",
                "friends " + (", ".join(f"{f['name']} ({f['id']})"
                                        for f in r["friends"]) or "none"),
                "groups " + (", ".join(f"{g['name']} ({g['id']}, {g['role']})"
                                       for g in r["groups"]) or "none"),
                f"stored messages {r['stored_messages']}"]
    if command == "kick":
        return [f"kicked {result['name']} (id {result['id']}) off "
                f"{result['node']}"]
    return [f"draining {result['node']}: it stops being ready now and "
            "exits once its sessions have moved"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatctl", description="Look at and steer a chat cluster.")
    p.add_argument("--db", required=True,
                   help="the cluster's database: sqlite:PATH or "
                   "mysql://USER:PASSWORD@HOST:PORT/DBNAME")
    p.add_argument("--redis", help="redis://HOST:PORT: also check Redis")
    p.add_argument("--json", action="store_true",
                   help="print JSON, for scripts")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("nodes", help="nodes, their last lease renewal, sessions")
    sub.add_parser("online", help="who is online on which node")
    sub.add_parser("user", help="a user's id, name, friends, groups and "
                   "stored messages").add_argument("user")
    sub.add_parser("kick", help="end a user's session, wherever it is"
                   ).add_argument("user")
    sub.add_parser("drain", help="move a node's users off it, then stop "
                   "it").add_argument("node")
    return p


def run(argv: Sequence[str]) -> Any:
    """Carry out one command line; the result, as --json prints it."""
    args = parser().parse_args(argv)
    admin = Admin.open(args.db)
    command: str = args.command
    result: Any
    if command == "nodes":
        result = {"nodes": admin.nodes()}
        if args.redis:
            result["redis"] = redisAnswers(args.redis)
    elif command == "online":
        result = admin.online()
    elif command == "user":
        result = admin.user(args.user)
    elif command == "kick":
        result = admin.kick(args.user)
    else:
        result = admin.drain(args.node)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print("\n".join(_text(command, result)))
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The console script: one line on stderr and a status on failure."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except (Refused, BadDatabaseURL) as e:
        sys.exit(f"chatctl: {e}")
    except Unreachable as e:
        print(f"chatctl: {e}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
