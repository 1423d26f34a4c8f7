//! Whole-database work outside the gateway's own connection: consistent copies with SQLite's
//! online backup API (`printgate backup`, the automatic copy before a schema migration),
//! checking a copy before it is restored, and the read-only look `printgate doctor` takes at a
//! live database. Nothing here writes to the source database.
//!
//! A copy is made in **one** backup step (`sqlite3_backup_step(-1)`), i.e. inside one read
//! transaction: with WAL the running gateway keeps writing meanwhile and the copy is the state
//! of one instant, never a mix. The copy is switched to `journal_mode = DELETE` so that it is a
//! single self-contained file, and then checked with `PRAGMA integrity_check`.

use super::{StoreError, inspect_existing, migrations};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a busy source is retried before giving up (each wait is short).
const BUSY_RETRIES: u32 = 200;
const BUSY_WAIT: Duration = Duration::from_millis(25);

/// What a finished copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySummary {
    /// `user_version` of the copy.
    pub schema_version: u32,
    /// Rows in `jobs` (0 before the jobs migration).
    pub jobs: u64,
    /// SHA-256 of every stored print file the copy refers to (`files` table).
    pub files: Vec<String>,
}

fn copy_error(dest: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!(
        "cannot write the database copy {}: {what}; check the path and the free disk space",
        dest.display()
    ))
}

/// Open the database at `path` read-only (a running gateway may hold it).
pub(super) fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.is_file() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Copy the main database of `src` into a new file `dest` in one backup step, make the copy a
/// single file and check it. `dest` must not exist.
pub(super) fn copy_connection(src: &Connection, dest: &Path) -> Result<CopySummary, StoreError> {
    if dest.exists() {
        return Err(copy_error(dest, "the file already exists"));
    }
    let mut out = Connection::open(dest).map_err(|e| copy_error(dest, e))?;
    {
        let backup = Backup::new(src, &mut out)?;
        let mut tries = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    tries += 1;
                    if tries > BUSY_RETRIES {
                        return Err(StoreError::Other(
                            "the database stayed locked during the backup; try again".into(),
                        ));
                    }
                    std::thread::sleep(BUSY_WAIT);
                }
                _ => {}
            }
        }
    }
    let _mode: String =
        out.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))?;
    let summary = check_copy(&out, dest)?;
    out.close().map_err(|(_, e)| copy_error(dest, e))?;
    Ok(summary)
}

/// `integrity_check` must say `ok`; then read what the copy holds.
fn check_copy(conn: &Connection, path: &Path) -> Result<CopySummary, StoreError> {
    let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(StoreError::NotPrintgateDatabase {
            path: path.to_path_buf(),
            reason: format!("integrity check of the copy: {verdict}"),
        });
    }
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let jobs = if has_table(conn, "jobs")? {
        conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get::<_, i64>(0))?
    } else {
        0
    };
    let files = if has_table(conn, "files")? {
        let mut stmt = conn.prepare("SELECT sha256 FROM files ORDER BY sha256")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    Ok(CopySummary {
        schema_version: u32::try_from(version).unwrap_or(0),
        jobs: u64::try_from(jobs).unwrap_or(0),
        files,
    })
}

fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )? > 0)
}

/// Copy the database file at `src` (a running gateway may be writing to it) into the new file
/// `dest`: a consistent snapshot, checked with `integrity_check`.
pub fn backup_database(src: &Path, dest: &Path) -> Result<CopySummary, StoreError> {
    let conn = open_read_only(src)?;
    copy_connection(&conn, dest)
}

/// Check a database file before it replaces the live one: a SQLite file, printgate's, intact
/// (`integrity_check`), and not newer than this build. Returns what it holds.
pub fn check_database_file(path: &Path) -> Result<CopySummary, StoreError> {
    if !super::read_header(path)? {
        return Err(StoreError::NotPrintgateDatabase {
            path: path.to_path_buf(),
            reason: "the file is empty".into(),
        });
    }
    let conn = open_read_only(path)?;
    inspect_existing(&conn, path)?;
    check_copy(&conn, path)
}

/// Where the automatic copy before a migration from `version` goes:
/// `<db dir>/backups/printgate-v<version>-<UTC time>.sqlite` (never an existing file).
pub(super) fn pre_migration_path(db: &Path, version: u32) -> PathBuf {
    let dir = db
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("backups");
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut path = dir.join(format!("printgate-v{version}-{stamp}.sqlite"));
    let mut n = 1;
    while path.exists() && n < 1000 {
        path = dir.join(format!("printgate-v{version}-{stamp}-{n}.sqlite"));
        n += 1;
    }
    path
}

/// Before migrating an existing database from `version`: copy it to
/// [`pre_migration_path`]. Returns the copy's path.
pub(super) fn backup_before_migration(
    conn: &Connection,
    db: &Path,
    version: u32,
) -> Result<PathBuf, StoreError> {
    let dest = pre_migration_path(db, version);
    let copied = match dest.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| copy_error(&dest, e)),
        None => Ok(()),
    }
    .and_then(|()| copy_connection(conn, &dest));
    copied.map_err(|e| {
        StoreError::Migration(format!(
            "the database was not migrated because the backup before the migration failed: {e}"
        ))
    })?;
    Ok(dest)
}

impl super::Store {
    /// Whether the database answers a trivial query now (the systemd watchdog's liveness probe;
    /// blocks while another statement holds the connection).
    pub fn is_responsive(&self) -> bool {
        self.conn()
            .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .is_ok_and(|v| v == 1)
    }
}

/// What `printgate doctor` reads from a database without changing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseInfo {
    pub schema_version: u32,
    /// Pinned certificate fingerprint by printer serial.
    pub pins: BTreeMap<String, String>,
    /// The latest time (unix ms) recorded anywhere in the database: events, jobs, printers.
    pub latest_time_ms: Option<i64>,
}

/// Read [`DatabaseInfo`] from the database file at `path` (read-only, a gateway may run).
pub fn inspect_database(path: &Path) -> Result<DatabaseInfo, StoreError> {
    let conn = open_read_only(path)?;
    inspect_existing(&conn, path)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let mut info = DatabaseInfo {
        schema_version: u32::try_from(version).unwrap_or(0),
        ..DatabaseInfo::default()
    };
    if has_table(&conn, "printers")? {
        let mut stmt = conn.prepare(
            "SELECT serial, cert_fingerprint FROM printers WHERE cert_fingerprint IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (serial, fp) = row?;
            info.pins.insert(serial, fp);
        }
    }
    for (table, column) in [
        ("printers", "updated_at"),
        ("printer_events", "at_ms"),
        ("jobs", "updated_at_ms"),
        ("job_events", "at_ms"),
        ("plate_taps", "tapped_at_ms"),
        ("safety_audit", "at_ms"),
    ] {
        if has_table(&conn, table)? {
            // Table and column names come from the list above, never from input.
            let latest: Option<i64> =
                conn.query_row(&format!("SELECT max({column}) FROM {table}"), [], |r| {
                    r.get(0)
                })?;
            info.latest_time_ms = info.latest_time_ms.max(latest);
        }
    }
    Ok(info)
}

/// Test support: create a database at `path` with only the first `version` migrations applied
/// (an older printgate's schema), and return a plain connection to fill it with data.
#[doc(hidden)]
pub fn create_at_version_for_tests(path: &Path, version: u32) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrations::apply_up_to(&mut conn, version)?;
    Ok(conn)
}
