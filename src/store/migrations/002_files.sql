-- Print files stored by content hash under <data_dir>/files/<sha256>.
CREATE TABLE files (
    sha256 TEXT PRIMARY KEY NOT NULL CHECK (length(sha256) = 64),
    size INTEGER NOT NULL CHECK (size > 0),
    kind TEXT NOT NULL CHECK (kind IN ('3mf', 'gcode')),
    display_name TEXT NOT NULL,
    info_json TEXT NOT NULL,
    refcount INTEGER NOT NULL DEFAULT 0 CHECK (refcount >= 0),
    created_at INTEGER NOT NULL
);
