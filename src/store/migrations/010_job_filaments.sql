-- The filaments each job's plate needs, read from its 3MF at upload (issue 21): a JSON array of
-- {id, material, color, used_g, used_m} in slice_info order. No row = not read (a job queued
-- before this migration, plain G-code, or a stored file whose list could not be read).
CREATE TABLE job_filaments (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    filaments_json TEXT NOT NULL
);
