//! SQL of the `files` table: one row per stored print file (content hash, size, kind, sanitised
//! display name, inspection JSON, reference count). The bytes live on disk under
//! `<data_dir>/files/<sha256>`, managed by `jobs::files::FileStore`.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// One row of `files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub sha256: String,
    pub size: u64,
    /// `3mf` or `gcode`.
    pub kind: String,
    pub display_name: String,
    pub info_json: String,
    pub refcount: u32,
    /// Unix seconds.
    pub created_at: i64,
}

/// What [`Store::file_release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRelease {
    /// References remain.
    Remaining(u32),
    /// The count reached 0 and the row was deleted: the caller removes the bytes.
    Deleted,
    /// The count reached 0 but a job still refers to the file: row and bytes stay.
    StillReferenced,
}

const COLUMNS: &str = "sha256, size, kind, display_name, info_json, refcount, created_at";

fn row_to_file(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        sha256: r.get(0)?,
        size: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        kind: r.get(2)?,
        display_name: r.get(3)?,
        info_json: r.get(4)?,
        refcount: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        created_at: r.get(6)?,
    })
}

impl Store {
    /// Insert a file with one reference, or add one reference if the content is already stored
    /// (the existing row's name and info are kept). Returns the row as it is now.
    pub fn file_insert_or_acquire(&self, row: &FileRow) -> Result<FileRow, StoreError> {
        let size = i64::try_from(row.size)
            .map_err(|_| StoreError::Other("file size out of range".into()))?;
        let conn = self.conn();
        let sql = format!(
            "INSERT INTO files ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)
             ON CONFLICT(sha256) DO UPDATE SET refcount = refcount + 1
             RETURNING {COLUMNS}"
        );
        Ok(conn.query_row(
            &sql,
            params![
                row.sha256,
                size,
                row.kind,
                row.display_name,
                row.info_json,
                row.created_at
            ],
            row_to_file,
        )?)
    }

    /// The row of a stored file.
    pub fn file_get(&self, sha256: &str) -> Result<Option<FileRow>, StoreError> {
        let conn = self.conn();
        let sql = format!("SELECT {COLUMNS} FROM files WHERE sha256 = ?1");
        Ok(conn
            .query_row(&sql, params![sha256], row_to_file)
            .optional()?)
    }

    /// Add one reference; the new count, or `None` if no such file.
    pub fn file_acquire(&self, sha256: &str) -> Result<Option<u32>, StoreError> {
        let conn = self.conn();
        let count: Option<i64> = conn
            .query_row(
                "UPDATE files SET refcount = refcount + 1 WHERE sha256 = ?1 RETURNING refcount",
                params![sha256],
                |r| r.get(0),
            )
            .optional()?;
        Ok(count.map(|c| u32::try_from(c).unwrap_or(u32::MAX)))
    }

    /// Drop one reference (never below 0); at 0 the row is deleted unless a job still refers
    /// to the file (the store is shared by content). `None` if no such file.
    pub fn file_release(&self, sha256: &str) -> Result<Option<FileRelease>, StoreError> {
        let conn = self.conn();
        let count: Option<i64> = conn
            .query_row(
                "UPDATE files SET refcount = MAX(refcount - 1, 0) WHERE sha256 = ?1
                 RETURNING refcount",
                params![sha256],
                |r| r.get(0),
            )
            .optional()?;
        let Some(count) = count else {
            return Ok(None);
        };
        if count > 0 {
            return Ok(Some(FileRelease::Remaining(
                u32::try_from(count).unwrap_or(u32::MAX),
            )));
        }
        let deleted = conn.execute(
            "DELETE FROM files WHERE sha256 = ?1 AND refcount = 0
               AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.file_sha256 = files.sha256)",
            params![sha256],
        )?;
        Ok(Some(if deleted > 0 {
            FileRelease::Deleted
        } else {
            FileRelease::StillReferenced
        }))
    }

    /// Hashes of stored files no job refers to (left by refused or abandoned uploads).
    pub fn files_without_job(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT sha256 FROM files
             WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.file_sha256 = files.sha256)",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Delete the row of a file whatever its count, if no job refers to it (checked in the same
    /// statement). Whether it was deleted: the caller then removes the bytes.
    pub fn file_delete_if_unused(&self, sha256: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let deleted = conn.execute(
            "DELETE FROM files WHERE sha256 = ?1
               AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.file_sha256 = files.sha256)",
            params![sha256],
        )?;
        Ok(deleted > 0)
    }

    /// Every stored hash (start-up reconciliation with the files on disk).
    pub fn file_hashes(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT sha256 FROM files")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sha: &str) -> FileRow {
        FileRow {
            sha256: sha.to_string(),
            size: 10,
            kind: "3mf".into(),
            display_name: "a.gcode.3mf".into(),
            info_json: "{}".into(),
            refcount: 0,
            created_at: 1,
        }
    }

    #[test]
    fn refcounting() {
        let store = Store::open_in_memory().expect("store");
        let sha = "a".repeat(64);
        assert_eq!(
            store
                .file_insert_or_acquire(&row(&sha))
                .expect("insert")
                .refcount,
            1
        );
        let mut other = row(&sha);
        other.display_name = "b.gcode.3mf".into();
        let again = store.file_insert_or_acquire(&other).expect("again");
        assert_eq!(again.refcount, 2);
        assert_eq!(again.display_name, "a.gcode.3mf");
        assert_eq!(store.file_acquire(&sha).expect("acquire"), Some(3));
        assert_eq!(store.file_acquire(&"b".repeat(64)).expect("acquire"), None);
        assert_eq!(
            store.file_release(&sha).expect("release"),
            Some(FileRelease::Remaining(2))
        );
        store.file_release(&sha).expect("release");
        assert_eq!(
            store.file_release(&sha).expect("release"),
            Some(FileRelease::Deleted)
        );
        assert_eq!(store.file_get(&sha).expect("get"), None);
        assert_eq!(store.file_release(&sha).expect("release"), None);
    }
}
