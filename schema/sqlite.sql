-- The chat schema for SQLite (the embedded default).  schema/mysql.sql is
-- the same tables for MySQL/MariaDB.  Applied at start; every statement is
-- idempotent.

-- Accounts.  Names compare exactly (SQLite's default BINARY collation).
-- skeleton is the name's look-alike key (chat.core.names.nameSkeleton,
-- PROTOCOL.md 3.3); its unique index users_by_skeleton refuses a name
-- that looks like another user's.  The index is made by
-- chat/storage/schema.py, which also fills the column at each start.  It
-- is NULL for an account that already looked like another one when the
-- column came, and, until the next start, for one that a node of an
-- older version registered (see _userSkeletons there).
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,         -- an argon2id hash, never the password
    skeleton TEXT
);

-- One-way friendships: user_id has friend_id on its list.
CREATE TABLE IF NOT EXISTS friends (
    user_id INTEGER NOT NULL REFERENCES users(id),
    friend_id INTEGER NOT NULL REFERENCES users(id),
    PRIMARY KEY (user_id, friend_id)
);

-- "groups" is a reserved word in MySQL 8, hence chat_groups.
CREATE TABLE IF NOT EXISTS chat_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    creator_id INTEGER NOT NULL REFERENCES users(id)
);

CREATE TABLE IF NOT EXISTS group_members (
    group_id INTEGER NOT NULL REFERENCES chat_groups(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    role TEXT NOT NULL CHECK (role IN ('creator', 'normal')),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX IF NOT EXISTS group_members_by_user
    ON group_members (user_id, group_id);

-- Messages waiting for their recipient's next login, in the order of
-- (sort_key, id): sort_key is 0 but for messages put back in front of a
-- user's others (taken for a connection that died before writing them),
-- which get one less than the user's smallest.  payload is the classic
-- JSON event exactly as it would have been pushed; msg_id is the message's
-- identity in the cluster (NULL for one that was stored by the node that
-- accepted it and never left it), so that a copy stored because its
-- delivery was uncertain is recognised at the drain.
CREATE TABLE IF NOT EXISTS offline_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    msg_id TEXT,
    sort_key INTEGER NOT NULL DEFAULT 0,
    payload TEXT NOT NULL
);
-- Its index, offline_messages_in_order (user_id, sort_key, id), is made
-- by chat/storage/schema.py: a database from before sort_key gets the
-- column first.

-- Servers of the cluster and their lease: last_seen is renewed about
-- every second, in seconds since the epoch by the database's clock.
-- draining is set by `chatctl drain` and read by the node (an older
-- database gets the column from chat/storage/schema.py).
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    last_seen REAL NOT NULL,
    draining INTEGER NOT NULL DEFAULT 0
);

-- Sessions an operator ended (`chatctl kick`): the node that holds the
-- session closes it and deletes the row, within about a second.
CREATE TABLE IF NOT EXISTS kicks (
    user_id INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    PRIMARY KEY (user_id, node_id)
);

-- The live session of each logged-in user and the server that holds it.
CREATE TABLE IF NOT EXISTS sessions (
    user_id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_node ON sessions (node_id);
