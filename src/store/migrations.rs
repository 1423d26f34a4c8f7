//! Versioned schema migrations (rusqlite_migration). Each migration is one SQL file in
//! `migrations/`, applied in order; the list only ever grows.

use rusqlite_migration::{M, Migrations};

/// The migrations in order. Append; never edit a released one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_foundation.sql"),
    include_str!("migrations/004_jobs.sql"),
];

pub(super) fn apply(conn: &mut rusqlite::Connection) -> Result<(), super::StoreError> {
    let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
    migrations
        .to_latest(conn)
        .map_err(|e| super::StoreError::Other(format!("database migration failed: {e}")))
}
