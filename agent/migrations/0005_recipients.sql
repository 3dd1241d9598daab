-- My recipient list's header (one row at most). Its items are read from
-- Postfix (or the `recipients` file) each run; the stored signature tells
-- whether they are the items signed last time, so a restart keeps the
-- version when nothing changed.
CREATE TABLE my_recipient_list (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    delimiter  TEXT NOT NULL,
    signature  BLOB NOT NULL
) STRICT;

-- Each peer's recipient list as verified and held here. Rows exist only for
-- lists whose signature, version, expiry and bounds were checked.
CREATE TABLE peer_recipient_lists (
    peer_id     TEXT PRIMARY KEY NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    delimiter   TEXT NOT NULL,
    -- The peer's backup_mode is `when-down` (1) or `always` (0).
    when_down   INTEGER NOT NULL,
    -- Its SMTP server key fingerprints (space-separated), pinned when
    -- relaying to it; the ones before the last change, and when that was
    -- (both are allowed for a while: a certificate rollover).
    tls            TEXT NOT NULL,
    tls_previous   TEXT NOT NULL DEFAULT '',
    tls_changed_at INTEGER NOT NULL DEFAULT 0,
    signature   BLOB NOT NULL,
    received_at INTEGER NOT NULL
) STRICT;

-- Its items: an address, or `@domain` for every address of the domain.
CREATE TABLE peer_recipients (
    peer_id TEXT NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    domain  TEXT NOT NULL,
    item    TEXT NOT NULL,
    PRIMARY KEY (peer_id, item)
) STRICT, WITHOUT ROWID;
CREATE INDEX peer_recipients_domain ON peer_recipients (domain);
