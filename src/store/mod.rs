//! SQLite store: schema migrations and every SQL statement of the gateway live in this module
//! (one file per area: printers, events, files, jobs, …). One connection behind a mutex: the
//! gateway is small and every statement is short.

pub mod jobs;
mod migrations;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Other(String),
}

/// The gateway's database.
pub struct Store {
    conn: Mutex<rusqlite::Connection>,
}

impl Store {
    /// Open (creating if needed) the database file and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        Self::init(conn)
    }

    /// A private in-memory database (tests and simulations).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::init(rusqlite::Connection::open_in_memory()?)
    }

    fn init(mut conn: rusqlite::Connection) -> Result<Store, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::apply(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// The connection; a poisoned lock (a panic while holding it) is recovered, since SQLite
    /// itself keeps the data consistent through transactions.
    fn conn(&self) -> MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}
