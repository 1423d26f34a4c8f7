//! SQLite store: schema migrations and every SQL statement of the gateway live in this module
//! (one file per area: printers, events, pins, sequence ids, files, jobs, …). One connection
//! behind a mutex: the gateway is small and every statement is short.
//!
//! The database file is treated as precious: before anything is written, [`Store::open`] checks
//! that the file is a SQLite database, that it belongs to printgate, that it is intact and that
//! no newer printgate wrote it. Any doubt leaves the file untouched and returns an error that
//! says what to do.

pub mod alert_targets;
pub mod backup;
mod events;
pub mod files;
pub mod jobs;
mod migrations;
pub mod octoprint_files;
mod pins;
pub mod plate_pictures;
pub mod printer_credentials;
mod printers;
mod safety;
mod sequence;
pub mod stats;
pub mod users;

pub use safety::SafetyAuditEntry;

pub use events::{EventKind, EventRow};
pub use printers::PrinterRow;
pub use sequence::{FIRST_SEQUENCE_ID, LAST_SEQUENCE_ID};

use rusqlite::OpenFlags;
use rusqlite::config::DbConfig;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// SHA-256 as lowercase hex: how session ids, API tokens and setup codes are stored.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()))
}

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "printgate.sqlite";

/// SQLite `application_id` of printgate databases ("PrGt"), set by migration 001.
pub const APPLICATION_ID: i64 = 0x5072_4774;

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "cannot open the database {path}: {reason}; check that data_dir exists and printgate may read and write it"
    )]
    Open { path: PathBuf, reason: String },
    #[error(
        "{path} is not a printgate database or is damaged ({reason}); it was left untouched; restore from a backup or move it aside"
    )]
    NotPrintgateDatabase { path: PathBuf, reason: String },
    #[error(
        "{path} was written by a newer printgate (database schema version {found}, this printgate knows versions up to {known}); it was left untouched; run the newer printgate again, or restore a backup made with this version"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error(
        "the database {path} is read-only; give the printgate user write access to it and to its directory"
    )]
    ReadOnly { path: PathBuf },
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("no printer named {0:?} is known; printers are added from printgate.toml at start")]
    UnknownPrinter(String),
    #[error(
        "no printer with serial {0:?} is known; printers are added from printgate.toml at start"
    )]
    UnknownSerial(String),
    #[error(
        "printer {serial} already has a different pinned certificate fingerprint; accepting a new certificate needs an explicit re-pair (clear the pin first)"
    )]
    FingerprintAlreadyPinned { serial: String },
    #[error(
        "command sequence ids are used up (the next would exceed {LAST_SEQUENCE_ID}); reset the `sequence_next` entry in the meta table"
    )]
    SequenceIdsExhausted,
    #[error("{0}")]
    Other(String),
}

/// The gateway's database.
pub struct Store {
    conn: Mutex<rusqlite::Connection>,
    /// Counts changes that take access away from a credential (see [`Store::credentials`]).
    credentials: tokio::sync::watch::Sender<u64>,
}

impl Store {
    /// Open the database file at `path`, creating it if it does not exist (its directory must),
    /// and bring its schema up to date.
    ///
    /// An existing file is inspected before anything is written to it, and refused (left
    /// byte-for-byte untouched) when:
    /// - it is not a SQLite database, belongs to another program, or fails `PRAGMA quick_check`
    ///   → [`StoreError::NotPrintgateDatabase`];
    /// - its schema version is above the migrations this build knows (a newer printgate wrote
    ///   it; printgate never migrates down) → [`StoreError::NewerSchema`];
    /// - it cannot be written → [`StoreError::ReadOnly`].
    ///
    /// Before migrating an existing database to a newer schema, it is copied (online backup
    /// API) to `<dir>/backups/printgate-v<old version>-<UTC time>.sqlite`; if that copy fails,
    /// nothing is migrated.
    ///
    /// The connection uses WAL, `synchronous = FULL` (a commit is on disk when the call returns),
    /// foreign keys and a 5 s busy timeout.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let existing = read_header(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            rusqlite::Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        if existing {
            // A WAL left by another run may hold changes of a newer printgate: closing this
            // connection after a refusal must not checkpoint them into the main file.
            let wal = PathBuf::from(format!("{}-wal", path.display()));
            let pending_wal = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
            if pending_wal {
                conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
            }
            let found = inspect_existing(&conn, path)?;
            if pending_wal {
                conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)?;
            }
            // About to migrate a database holding data: keep a copy of it as it was first.
            if found > 0 && found < migrations::latest_version() {
                let copy = backup::backup_before_migration(&conn, path, found)?;
                tracing::info!(
                    "database schema {found} will be upgraded to {}; copy of the old database: {}",
                    migrations::latest_version(),
                    copy.display()
                );
            }
        }
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(StoreError::ReadOnly {
                path: path.to_path_buf(),
            });
        }
        Self::init(conn)
    }

    /// A private in-memory database (tests and simulations).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::init(rusqlite::Connection::open_in_memory()?)
    }

    /// The schema version this build writes.
    pub fn schema_version() -> u32 {
        migrations::latest_version()
    }

    fn init(mut conn: rusqlite::Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // In-memory databases answer "memory"; files switch to WAL.
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        // FULL, not NORMAL: with WAL, NORMAL does not sync the log at each commit, so a power
        // cut (the common failure of a Raspberry Pi) may lose the last commits, e.g. a start's
        // consumed tap (I1) or its publish mark (I2). Speed comes from fewer commits instead
        // (one per dispatcher batch, see `commit_batch`).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::apply(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            credentials: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A counter that moves on, after the change is committed, whenever a credential loses
    /// its access: an API token revoked, an account deleted (its tokens with it), a password
    /// changed, a printer's MQTT login withdrawn or re-issued. Whoever keeps sessions that
    /// were opened with credentials (the MQTT broker) re-checks them when it moves.
    pub fn credentials(&self) -> tokio::sync::watch::Receiver<u64> {
        self.credentials.subscribe()
    }

    /// Signal [`Store::credentials`] (call after the commit).
    fn credentials_changed(&self) {
        self.credentials.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The connection; a poisoned lock (a panic while holding it) is recovered, since SQLite
    /// itself keeps the data consistent through transactions.
    fn conn(&self) -> MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Current time in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether `path` holds an existing, non-empty file, which must then start with the SQLite
/// header. A missing or empty file is a new database. Reads only.
fn read_header(path: &Path) -> Result<bool, StoreError> {
    let open_error = |reason: String| StoreError::Open {
        path: path.to_path_buf(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(open_error(e.to_string())),
    };
    let meta = file.metadata().map_err(|e| open_error(e.to_string()))?;
    if meta.is_dir() {
        return Err(open_error("it is a directory".into()));
    }
    if meta.len() == 0 {
        return Ok(false);
    }
    let mut header = Vec::with_capacity(100);
    file.take(100)
        .read_to_end(&mut header)
        .map_err(|e| open_error(e.to_string()))?;
    if header.len() < 100 || !header.starts_with(SQLITE_HEADER) {
        return Err(StoreError::NotPrintgateDatabase {
            path: path.to_path_buf(),
            reason: "it does not start with a SQLite database header".into(),
        });
    }
    Ok(true)
}

/// Checks on an existing database before anything is written: intact, printgate's, not newer.
/// Returns its schema version (0 for an empty database).
fn inspect_existing(conn: &rusqlite::Connection, path: &Path) -> Result<u32, StoreError> {
    let refuse = |reason: String| StoreError::NotPrintgateDatabase {
        path: path.to_path_buf(),
        reason,
    };
    let damaged = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            refuse(format!("SQLite: {e}"))
        }
        _ => StoreError::Sqlite(e),
    };

    let problems: Vec<String> = {
        let mut stmt = conn.prepare("PRAGMA quick_check").map_err(damaged)?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(damaged)?;
        let mut problems = Vec::new();
        for row in rows.take(5) {
            problems.push(row.map_err(damaged)?);
        }
        problems
    };
    if problems.first().map(String::as_str) != Some("ok") {
        return Err(refuse(format!("integrity check: {}", problems.join("; "))));
    }

    let application_id: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(damaged)?;
    let user_version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(damaged)?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(damaged)?;

    if application_id == 0 {
        if user_version == 0 && objects == 0 {
            return Ok(0); // an empty database: initialise it
        }
        return Err(refuse(
            "it holds data of another program (no printgate application id)".into(),
        ));
    }
    if application_id != APPLICATION_ID {
        return Err(refuse(format!(
            "its application id {application_id:#x} belongs to another program"
        )));
    }
    let known = migrations::latest_version();
    let found = u32::try_from(user_version).unwrap_or(u32::MAX);
    if user_version < 0 || found > known {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    Ok(found)
}
