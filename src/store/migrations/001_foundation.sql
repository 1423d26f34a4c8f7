CREATE TABLE printers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    serial TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    cert_fingerprint TEXT,
    created_at INTEGER NOT NULL
);
