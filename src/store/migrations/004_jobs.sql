-- Job queue, plate-clear taps, plate state, queue pause flags and job event rows (docs/architecture.md I1–I7).
-- jobs.file_sha256 refers to the files table loosely (no foreign key).

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    target_printer TEXT,                      -- NULL = any compatible printer of model_code
    model_code TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    plate INTEGER NOT NULL CHECK (plate >= 1),
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    deadline_ms INTEGER,
    created_by TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'staged', 'starting', 'printing', 'finished',
                                         'failed', 'cancelled', 'unconfirmed', 'expired')),
    assigned_printer TEXT,
    subtask_id INTEGER NOT NULL UNIQUE CHECK (subtask_id BETWEEN 1 AND 2147483647),
    stage_failures INTEGER NOT NULL DEFAULT 0,
    start_again_at_ms INTEGER,
    -- the current start attempt
    tap_id TEXT,
    decided_at_ms INTEGER,
    window_deadline_ms INTEGER,
    publish_attempted_at_ms INTEGER,
    publish_epoch INTEGER,
    sequence_id TEXT,
    published_at_ms INTEGER,
    message TEXT,
    CHECK (state <> 'starting' OR (tap_id IS NOT NULL AND assigned_printer IS NOT NULL))
);
CREATE INDEX jobs_by_state ON jobs(state, position, id);

CREATE TABLE plate_taps (
    tap_id TEXT PRIMARY KEY,
    printer TEXT NOT NULL,
    tapped_by TEXT NOT NULL,
    tapped_at_ms INTEGER NOT NULL,
    consumed_by_job INTEGER REFERENCES jobs(id),
    consumed_at_ms INTEGER,
    voided_at_ms INTEGER,
    void_reason TEXT
);
CREATE INDEX plate_taps_by_printer ON plate_taps(printer, tapped_at_ms);

CREATE TABLE plates (
    printer TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('unknown', 'occupied', 'clear')),
    tap_id TEXT REFERENCES plate_taps(tap_id),
    changed_at_ms INTEGER NOT NULL,
    reason TEXT,
    CHECK ((state = 'clear') = (tap_id IS NOT NULL))
);

-- scope '' = the whole queue, otherwise a printer name
CREATE TABLE queue_flags (
    scope TEXT PRIMARY KEY,
    paused INTEGER NOT NULL
);

CREATE TABLE job_events (
    id INTEGER PRIMARY KEY,
    job_id INTEGER,
    printer TEXT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    what TEXT NOT NULL,
    outcome TEXT
);
CREATE INDEX job_events_by_job ON job_events(job_id, id);

CREATE TABLE id_counters (
    name TEXT PRIMARY KEY,
    next_value INTEGER NOT NULL
);
