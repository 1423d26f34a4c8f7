//! The OctoPrint-compatible file tree (migration `009_octoprint_files.sql`): the folder and the
//! file name a slicer uploaded each job under, and the rows `/api/files/local` lists (every job
//! whose file is stored, newest first). Holds rows only; what a path means is the web room's.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// One job as the OctoPrint file tree shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OctoFileRow {
    pub job_id: i64,
    /// The folder and name given at upload; `None` for jobs uploaded another way.
    pub folder: Option<String>,
    pub name: Option<String>,
    /// The job's own name (without suffix) and its file.
    pub job_name: String,
    pub file_sha256: String,
    /// `3mf` or `gcode` (`None` if the file row is gone).
    pub kind: Option<String>,
    pub size: Option<u64>,
    pub plate: u32,
    pub state: String,
    pub created_by: String,
    pub created_at_ms: i64,
}

impl Store {
    /// Record where a job was uploaded in the OctoPrint file tree. A retried upload of the same
    /// job keeps its first path.
    pub fn record_octoprint_path(
        &self,
        job_id: i64,
        folder: &str,
        name: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO octoprint_files (job_id, folder, name, uploaded_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![job_id, folder, name, at_ms],
        )?;
        Ok(())
    }

    /// The folder and name a job was uploaded under, if it came through the OctoPrint API.
    pub fn octoprint_path_of(&self, job_id: i64) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT folder, name FROM octoprint_files WHERE job_id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The newest `limit` jobs with their upload paths, newest first.
    pub fn octoprint_files(&self, limit: u32) -> Result<Vec<OctoFileRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT j.id, o.folder, o.name, j.name, j.file_sha256, f.kind, f.size, j.plate,
                    j.state, j.created_by, j.created_at_ms
             FROM jobs j
             LEFT JOIN octoprint_files o ON o.job_id = j.id
             LEFT JOIN files f ON f.sha256 = j.file_sha256
             ORDER BY j.id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(OctoFileRow {
                job_id: r.get(0)?,
                folder: r.get(1)?,
                name: r.get(2)?,
                job_name: r.get(3)?,
                file_sha256: r.get(4)?,
                kind: r.get(5)?,
                size: r.get::<_, Option<i64>>(6)?.map(|s| s.max(0) as u64),
                plate: r.get(7)?,
                state: r.get(8)?,
                created_by: r.get(9)?,
                created_at_ms: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The printer of the newest job `user` created that names one (its target, or the printer
    /// it was assigned to).
    pub fn last_printer_used_by(&self, user: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT COALESCE(assigned_printer, target_printer) FROM jobs
                 WHERE created_by = ?1 AND COALESCE(assigned_printer, target_printer) IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
                [user],
                |r| r.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::jobs::model::{NewJob, Target};
    use crate::store::Store;

    fn job(store: &Store, key: &str, name: &str, target: Option<&str>, by: &str) -> i64 {
        store
            .create_job(
                &NewJob {
                    idempotency_key: key.into(),
                    target: target.map_or(Target::AnyCompatible, |p| Target::Printer(p.into())),
                    model_code: "C12".into(),
                    file_sha256: "ab".repeat(32),
                    plate: 1,
                    name: name.into(),
                    deadline: None,
                    created_by: by.into(),
                },
                1_000,
            )
            .expect("job")
            .0
            .id
    }

    #[test]
    fn paths_are_kept_per_job_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let a = job(&store, "k1", "a", Some("P1"), "alice");
        let b = job(&store, "k2", "b", None, "alice");
        store
            .record_octoprint_path(a, "parts", "a.gcode", 5)
            .unwrap();
        store
            .record_octoprint_path(a, "other", "x.gcode", 6)
            .unwrap();
        let rows = store.octoprint_files(10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].job_id, b);
        assert_eq!(rows[0].folder, None);
        assert_eq!(rows[1].folder.as_deref(), Some("parts"));
        assert_eq!(rows[1].name.as_deref(), Some("a.gcode"));
        assert_eq!(
            store.octoprint_path_of(a).unwrap(),
            Some(("parts".into(), "a.gcode".into()))
        );
        assert_eq!(store.octoprint_path_of(b).unwrap(), None);
        assert_eq!(store.octoprint_files(1).unwrap().len(), 1);
        // The newest job naming a printer: b names none, so a's printer.
        assert_eq!(
            store.last_printer_used_by("alice").unwrap().as_deref(),
            Some("P1")
        );
        assert_eq!(store.last_printer_used_by("bob").unwrap(), None);
    }
}
