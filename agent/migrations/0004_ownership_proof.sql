-- Addresses at which each peer's authenticated endpoint has been seen: the
-- remote address of every session with it, whichever side dialled. An
-- entry's next hop that resolves to one of them proves the peer speaks for
-- the domain (the automatic ownership proof). Kept per address with the
-- time it was last seen; the store keeps the most recent few per peer.
CREATE TABLE peer_seen (
    peer_id   TEXT NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    ip        TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (peer_id, ip)
) STRICT;

-- The addresses an accepted entry's next hop resolved to when it was
-- checked, space-separated: Postfix relays to these, never to a name that
-- could resolve elsewhere later. Empty for entries judged before this
-- column existed; those are due for a re-check at once.
ALTER TABLE peer_entries ADD COLUMN addrs TEXT NOT NULL DEFAULT '';
UPDATE peer_entries SET checked_at = 0 WHERE state = 'accepted';
