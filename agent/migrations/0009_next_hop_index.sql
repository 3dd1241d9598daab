-- The distinct next hops of the accepted entries (what the TLS policy map is
-- made of) are read by seeking from one to the next in this index, not by
-- scanning every entry: an apply for one domain of 100,000 needs them all.
CREATE INDEX peer_entries_hops ON peer_entries (state, peer_id, next_hop, addrs);
