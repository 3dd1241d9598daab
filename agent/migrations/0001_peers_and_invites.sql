-- Paired peers. `id` is the peer ID in its display form.
CREATE TABLE peers (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    mail_host     TEXT NOT NULL,
    -- Advertised addresses, space-separated "ip:port".
    addresses     TEXT NOT NULL,
    agent_version TEXT,
    paired_at     INTEGER NOT NULL,
    last_seen     INTEGER,
    last_address  TEXT
) STRICT;

-- Invites this agent issued. The secret is never stored: `key` is a one-way
-- hash of it (InviteToken::key), which is what a joiner's proof is made with.
CREATE TABLE invites (
    token_id    BLOB PRIMARY KEY NOT NULL,
    key         BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    used_by     TEXT
) STRICT;
