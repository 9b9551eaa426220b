-- The chat schema for MySQL/MariaDB: schema/sqlite.sql translated (its
-- comments say what each table and column is for).
-- InnoDB for transactions and row locks; utf8mb4 for every character;
-- names use utf8mb4_bin, because the default collations treat "Alice" and
-- "alice" (and many emoji) as equal, and names compare exactly.

CREATE TABLE IF NOT EXISTS users (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    password VARCHAR(255) NOT NULL,
    -- Bytes, compared as bytes: no collation may pad or fold the key.
    -- 1024 holds any 32-letter name's (at most 30 bytes a letter).
    skeleton VARBINARY(1024) NULL,
    UNIQUE KEY users_by_name (name),
    UNIQUE KEY users_by_skeleton (skeleton)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS friends (
    user_id BIGINT NOT NULL,
    friend_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS chat_groups (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(50) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    description VARCHAR(200) NOT NULL DEFAULT '',
    creator_id BIGINT NOT NULL,
    UNIQUE KEY chat_groups_by_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS group_members (
    group_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    role ENUM('creator', 'normal') NOT NULL,
    PRIMARY KEY (group_id, user_id),
    KEY group_members_by_user (user_id, group_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS offline_messages (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    msg_id VARCHAR(40) CHARACTER SET ascii NULL,
    sort_key BIGINT NOT NULL DEFAULT 0,
    payload MEDIUMTEXT NOT NULL,
    KEY offline_messages_in_order (user_id, sort_key, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS nodes (
    node_id VARCHAR(191) NOT NULL PRIMARY KEY,
    last_seen DOUBLE NOT NULL,
    draining TINYINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS kicks (
    user_id BIGINT NOT NULL,
    node_id VARCHAR(191) NOT NULL,
    PRIMARY KEY (user_id, node_id),
    KEY kicks_by_node (node_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS sessions (
    user_id BIGINT NOT NULL PRIMARY KEY,
    node_id VARCHAR(191) NOT NULL,
    since DOUBLE NOT NULL,
    KEY sessions_by_node (node_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
