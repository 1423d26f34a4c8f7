-- The dashboard looks up the last job started on each printer (its plate thumbnail); without
-- this index that lookup sorts every finished job once per printer and page view.
CREATE INDEX jobs_by_printer ON jobs (assigned_printer, updated_at_ms);
