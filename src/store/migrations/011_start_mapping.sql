-- The trays a start uses (issue 21): the mapping decided with the start, as JSON written by
-- `jobs::ams_mapping`, written in the same transaction that consumes the plate-clear tap and
-- sent exactly so. Read only together with the job's current start attempt; no row = no
-- filament list was known for the job (sent as use_ams false).
CREATE TABLE job_start_mappings (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    mapping_json TEXT NOT NULL
);
