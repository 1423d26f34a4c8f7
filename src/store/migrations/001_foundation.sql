-- 001: printers, their event history, and small key/value state.
-- Times are unix milliseconds (UTC).

-- Marks the file as a printgate database (checked before every open; 0x50724774 = "PrGt").
PRAGMA application_id = 1349666676;

-- Printers come from printgate.toml and are upserted by name at start. The access code is
-- never stored. cert_fingerprint is the pinned SHA-256 (lowercase hex) of the printer's TLS
-- leaf, set on first successful connect and cleared only by an explicit re-pair. A row whose
-- name left the configuration is kept for its history; if its serial is later configured under
-- another name, the serial (and its pin) moves there and the old row gets `~retired-<id>`.
CREATE TABLE printers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    serial TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    host TEXT NOT NULL,
    cert_fingerprint TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- What happened to a printer: link_up, link_down, link_state, gcode_state, hms_raised,
-- hms_cleared, print_error, and job/plate/safety kinds added by other parts.
CREATE TABLE printer_events (
    id INTEGER PRIMARY KEY,
    printer_id INTEGER NOT NULL REFERENCES printers(id),
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
) STRICT;

CREATE INDEX printer_events_by_printer_time ON printer_events (printer_id, at_ms);

-- Small persistent values, e.g. `sequence_next` (first MQTT sequence_id not yet handed out).
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
