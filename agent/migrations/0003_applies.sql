-- Every attempt to change the Postfix maps, for `mxfed history`.
CREATE TABLE applies (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    trigger  TEXT NOT NULL,
    result   TEXT NOT NULL CHECK (result IN ('applied', 'failed')),
    step     TEXT,
    message  TEXT,
    added    INTEGER NOT NULL,
    removed  INTEGER NOT NULL,
    changed  INTEGER NOT NULL,
    total    INTEGER NOT NULL
) STRICT;
