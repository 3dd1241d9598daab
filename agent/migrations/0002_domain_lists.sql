-- The domains this agent hosts (its own signed list's entries).
CREATE TABLE my_domains (
    domain   TEXT PRIMARY KEY NOT NULL,
    next_hop TEXT NOT NULL
) STRICT;

-- The current signed version of my list (one row at most).
CREATE TABLE my_list (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    signature  BLOB NOT NULL
) STRICT;

-- Each peer's list as verified and held here. Rows exist only for lists
-- whose signature, version, expiry and bounds were checked.
CREATE TABLE peer_lists (
    peer_id     TEXT PRIMARY KEY NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    signature   BLOB NOT NULL,
    received_at INTEGER NOT NULL
) STRICT;

CREATE TABLE peer_entries (
    peer_id    TEXT NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    domain     TEXT NOT NULL,
    next_hop   TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('accepted', 'refused', 'pending')),
    reason     TEXT,
    checked_at INTEGER NOT NULL,
    PRIMARY KEY (peer_id, domain)
) STRICT;
CREATE INDEX peer_entries_domain ON peer_entries (domain, state);

-- What each peer last said it made of my list.
CREATE TABLE my_list_acks (
    peer_id       TEXT PRIMARY KEY NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    accepted      INTEGER NOT NULL,
    refused_count INTEGER NOT NULL,
    pending_count INTEGER NOT NULL,
    received_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE my_list_ack_notes (
    peer_id TEXT NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    state   TEXT NOT NULL CHECK (state IN ('refused', 'pending')),
    domain  TEXT NOT NULL,
    reason  TEXT NOT NULL
) STRICT;
CREATE INDEX my_list_ack_notes_peer ON my_list_ack_notes (peer_id);
