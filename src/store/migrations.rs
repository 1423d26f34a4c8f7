//! Versioned schema migrations (rusqlite_migration). Each migration is one SQL file in
//! `migrations/`, applied in order; the list only ever grows. The schema version is SQLite's
//! `user_version`, which equals the number of migrations applied.

use rusqlite_migration::{M, Migrations};

/// The migrations in order. Append; never edit a released one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_foundation.sql"),
    include_str!("migrations/002_files.sql"),
    include_str!("migrations/003_safety.sql"),
    include_str!("migrations/004_jobs.sql"),
    include_str!("migrations/005_users.sql"),
    include_str!("migrations/006_jobs_by_printer.sql"),
    include_str!("migrations/007_printer_credentials.sql"),
    include_str!("migrations/008_alert_targets.sql"),
    include_str!("migrations/009_octoprint_files.sql"),
    include_str!("migrations/010_job_filaments.sql"),
    include_str!("migrations/011_start_mapping.sql"),
    include_str!("migrations/012_plate_pictures.sql"),
];

/// The schema version this build writes (= number of known migrations).
pub(super) fn latest_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

pub(super) fn apply(conn: &mut rusqlite::Connection) -> Result<(), super::StoreError> {
    let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
    migrations
        .to_latest(conn)
        .map_err(|e| super::StoreError::Migration(e.to_string()))
}

/// Apply only the first `version` migrations (tests build older schemas with it).
pub(super) fn apply_up_to(
    conn: &mut rusqlite::Connection,
    version: u32,
) -> Result<(), super::StoreError> {
    let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
    migrations
        .to_version(conn, version as usize)
        .map_err(|e| super::StoreError::Migration(e.to_string()))
}
