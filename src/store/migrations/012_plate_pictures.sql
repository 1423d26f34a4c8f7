-- Camera pictures of a printer's plate kept for history (issue 18):
--   kind 'confirmed': the picture a person saw on the Plate clear confirmation, stored with their
--     tap (tap_id); history shows it for the start that tap allowed. Written just before the tap
--     is submitted, so a picture may belong to a tap that was refused or never recorded (those
--     without a plate_taps row are removed after a day).
--   kind 'print_end': the camera's last frame when a print ended (the finished plate);
--     print_ended_at_ms is when the gateway saw the end.
-- Bounded: every picture is a checked JPEG of at most 1 MiB (camera::picture), and only the
-- newest pictures per printer are kept (store/plate_pictures.rs).
CREATE TABLE plate_pictures (
    id INTEGER PRIMARY KEY,
    printer TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('confirmed', 'print_end')),
    tap_id TEXT UNIQUE,
    print_ended_at_ms INTEGER,
    taken_at_ms INTEGER NOT NULL,
    stored_at_ms INTEGER NOT NULL,
    jpeg BLOB NOT NULL CHECK (length(jpeg) BETWEEN 4 AND 1048576),
    CHECK ((kind = 'confirmed') = (tap_id IS NOT NULL)),
    CHECK ((kind = 'print_end') = (print_ended_at_ms IS NOT NULL))
);
CREATE INDEX plate_pictures_by_printer ON plate_pictures(printer, id);
