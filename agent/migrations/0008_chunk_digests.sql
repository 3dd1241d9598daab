-- Each chunk of a list kept as signed is cut where its content says
-- (content-defined chunking), and carries the SHA-256 of its bytes: a new
-- version of the list rewrites only the chunks whose digest changed, so a
-- one-entry change to a list of 100,000 writes one chunk, not 4.6 MB.
-- Rows from before have no digest and are rewritten at the next change.
ALTER TABLE peer_list_chunks ADD COLUMN digest BLOB;
