-- Each peer's list as signed, in the compact form its digest covers
-- (`mxfed_proto::list::EncodedEntries`): the next changes are applied to
-- it and checked against the signature without reading every entry. NULL
-- for lists stored before this column: their next changes are refused and
-- the whole list is fetched once.
ALTER TABLE peer_lists ADD COLUMN entries BLOB;

-- A peer's entries by state: the acknowledgement's counts and first notes
-- (`list_summary`) without walking every entry of the list.
CREATE INDEX peer_entries_state ON peer_entries (peer_id, state, domain);

-- Each peer's recipient list as signed, in the form its digest covers
-- (`mxfed_proto::recipients::EncodedItems`), for the same reason; NULL
-- for lists stored before.
ALTER TABLE peer_recipient_lists ADD COLUMN items BLOB;
