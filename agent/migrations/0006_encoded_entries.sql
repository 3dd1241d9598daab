-- Each peer's list as signed, in the compact form its digest covers
-- (`mxfed_proto::list::EncodedEntries`): the next changes are applied to
-- it and checked against the signature without reading every entry. NULL
-- for lists stored before this column: their next changes are refused and
-- the whole list is fetched once.
ALTER TABLE peer_lists ADD COLUMN entries BLOB;
