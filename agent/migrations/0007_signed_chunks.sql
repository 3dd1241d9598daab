-- Each peer's lists as signed (`peer_lists.entries`, `peer_recipient_lists.items`)
-- are kept in chunks of 256 KiB, not one blob: sqlx and SQLite each copy a
-- value they bind, and the record it goes into is a third copy, so storing a
-- list of 100,000 domains (4.6 MB) held three extra copies of it at once.
-- `entries_chunks` / `items_chunks`: how many chunks make the list (NULL: no
-- list kept as signed, as a NULL blob meant before).
CREATE TABLE peer_list_chunks (
    peer_id TEXT NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    list    TEXT NOT NULL CHECK (list IN ('domains', 'recipients')),
    seq     INTEGER NOT NULL,
    bytes   BLOB NOT NULL,
    PRIMARY KEY (peer_id, list, seq)
) STRICT;

ALTER TABLE peer_lists ADD COLUMN entries_chunks INTEGER;
INSERT INTO peer_list_chunks (peer_id, list, seq, bytes)
    SELECT peer_id, 'domains', 0, entries FROM peer_lists WHERE entries IS NOT NULL;
UPDATE peer_lists SET entries_chunks = 1, entries = NULL WHERE entries IS NOT NULL;

ALTER TABLE peer_recipient_lists ADD COLUMN items_chunks INTEGER;
INSERT INTO peer_list_chunks (peer_id, list, seq, bytes)
    SELECT peer_id, 'recipients', 0, items FROM peer_recipient_lists WHERE items IS NOT NULL;
UPDATE peer_recipient_lists SET items_chunks = 1, items = NULL WHERE items IS NOT NULL;
