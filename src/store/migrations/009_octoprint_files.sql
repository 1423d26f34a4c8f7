-- Where a slicer put each upload in the OctoPrint-compatible file tree (`/api/files/local`):
-- the folder and the file name as uploaded (sanitised), one row per job. The job row keeps its
-- own name; the same bytes uploaded under two names are two jobs with two rows.
CREATE TABLE octoprint_files (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
    folder TEXT NOT NULL,              -- '' = the root; 'a/b' without leading or trailing '/'
    name TEXT NOT NULL,
    uploaded_at_ms INTEGER NOT NULL
);
CREATE INDEX octoprint_files_by_path ON octoprint_files(folder, name, job_id);
