-- Safety trips (docs/architecture.md I5): every trip, latched until a person resets it.
CREATE TABLE safety_trips (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    cause_kind TEXT NOT NULL,
    -- JSON: SafetyCause, TripScope, [printer], [pin], [PrinterReading]
    cause TEXT NOT NULL,
    scope TEXT NOT NULL,
    affected_printers TEXT NOT NULL,
    relays_off TEXT NOT NULL,
    readings TEXT NOT NULL,
    reset_at_ms INTEGER,
    reset_by TEXT,
    CHECK ((reset_at_ms IS NULL) = (reset_by IS NULL))
);
CREATE INDEX safety_trips_open ON safety_trips (id) WHERE reset_at_ms IS NULL;

-- Last commanded state of each relay, so a restart never switches a relay back on by itself.
CREATE TABLE safety_relays (
    pin INTEGER PRIMARY KEY,
    on_state INTEGER NOT NULL CHECK (on_state IN (0, 1)),
    updated_at_ms INTEGER NOT NULL
);

-- Who did what: trips, resets, manual power changes.
CREATE TABLE safety_audit (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
