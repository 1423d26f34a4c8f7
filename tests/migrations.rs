//! Schema upgrades: a database of every earlier schema version, filled with data written by the
//! real store code, is opened by the current printgate. Every row survives unchanged, the
//! current code reads it, and a copy of the old database is made before the migration. A
//! database of a newer printgate is refused untouched.

use printgate::config::{Model, PrinterConfig, TlsMode};
use printgate::jobs::model::{NewJob, Target};
use printgate::safety::latch::{SafetyCause, TripRecord, TripScope};
use printgate::store::backup::create_at_version_for_tests;
use printgate::store::files::FileRow;
use printgate::store::{EventKind, Store, StoreError};
use std::path::{Path, PathBuf};

const SERIAL: &str = "01P00A451200318";
const PIN: &str = "ab12000000000000000000000000000000000000000000000000000000000000";
const SHA: &str = "5f0c1b0e9d1b5b0f3bdbb0b0a4a3f6e2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6";

fn printer() -> PrinterConfig {
    PrinterConfig {
        name: "Garage P1S".into(),
        model: Model::P1S,
        serial: SERIAL.into(),
        host: "192.168.1.57".into(),
        access_code: "Zq8Wn2Lx".into(),
        tls: TlsMode::Pin,
        mqtt_port: 8883,
        ftps_port: 990,
        ..PrinterConfig::default()
    }
}

/// A current-version database with rows in every table, written through the store's own API.
fn template(dir: &Path) -> PathBuf {
    let path = dir.join("template.sqlite");
    let store = Store::open(&path).unwrap();
    store.sync_printers(&[printer()]).unwrap();
    store.store_fingerprint(SERIAL, PIN).unwrap();
    store
        .record_event(
            "Garage P1S",
            EventKind::LINK_UP,
            &serde_json::json!({"conn": 1}),
            1_760_000_000_000,
        )
        .unwrap();
    store.reserve_sequence_ids(777).unwrap();
    store
        .file_insert_or_acquire(&FileRow {
            sha256: SHA.into(),
            size: 1234,
            kind: "3mf".into(),
            display_name: "benchy.3mf".into(),
            info_json: "{}".into(),
            refcount: 1,
            created_at: 1_760_000_000,
        })
        .unwrap();
    store
        .record_trip(&TripRecord {
            id: None,
            cause: SafetyCause::Smoke,
            scope: TripScope::All,
            affected_printers: vec!["Garage P1S".into()],
            relays_off: vec![27],
            at_unix_ms: 1_760_000_100_000,
            readings: vec![],
            reset: None,
            relays_off_at: None,
        })
        .unwrap();
    store
        .create_job_with_filaments(
            &NewJob {
                idempotency_key: "upload-1".into(),
                target: Target::Printer("Garage P1S".into()),
                model_code: Model::P1S.model_code().into(),
                file_sha256: SHA.into(),
                plate: 1,
                name: "benchy".into(),
                deadline: None,
                created_by: "test".into(),
            },
            Some(r##"[{"id":1,"material":"PLA","color":"#FFFFFF","used_g":12.3,"used_m":4.1}]"##),
            1_760_000_200_000,
        )
        .unwrap();
    store
        .issue_printer_credential("Voron", "voron", 1_760_000_250_000)
        .unwrap();
    // Rows the dispatcher and the safety room write, in the shape they write them.
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "INSERT INTO plate_taps (tap_id, printer, tapped_by, tapped_at_ms) VALUES ('tap-1', 'Garage P1S', 'alice', 1760000300000);
         INSERT INTO plates (printer, state, tap_id, changed_at_ms, reason) VALUES ('Garage P1S', 'clear', 'tap-1', 1760000300000, 'tapped');
         INSERT INTO queue_flags (scope, paused) VALUES ('', 0), ('Garage P1S', 1);
         INSERT OR IGNORE INTO safety_relays (pin, on_state, updated_at_ms) VALUES (27, 0, 1760000100000);
         INSERT INTO users (id, username, password_hash, is_admin, created_at_ms) VALUES (1, 'alice', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g', 1, 1760000400000);
         INSERT INTO sessions (id_hash, user_id, csrf_token, created_at_ms, last_seen_ms, expires_at_ms) VALUES ('s-hash', 1, 'csrf', 1760000400000, 1760000400000, 1762592400000);
         INSERT INTO api_tokens (user_id, name, token_hash, default_printer, created_at_ms) VALUES (1, 'slicer', 't-hash', 'Garage P1S', 1760000400000);
         INSERT INTO setup_code (id, code_hash, created_at_ms) VALUES (1, 'code-hash', 1760000400000);
         INSERT INTO alert_targets (name, kind, url, token, created_by, created_at_ms) VALUES ('phone', 'ntfy', 'https://ntfy.lan/printgate', NULL, 'alice', 1760000400000);
         INSERT INTO octoprint_files (job_id, folder, name, uploaded_at_ms) SELECT id, 'parts', 'benchy.3mf', 1760000200000 FROM jobs;
         INSERT INTO job_start_mappings (job_id, mapping_json) SELECT id, '{\"model\":\"P1S\",\"use_ams\":true,\"assignments\":[]}' FROM jobs;",
    )
    .unwrap();
    path
}

fn tables(conn: &rusqlite::Connection, schema: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT name FROM {schema}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ))
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn count(conn: &rusqlite::Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Build a database at `version` holding the template's rows of every table that exists then.
fn old_database(path: &Path, version: u32, template: &Path) -> Vec<String> {
    let conn = create_at_version_for_tests(path, version).unwrap();
    conn.execute("ATTACH DATABASE ?1 AS tpl", [template.to_str().unwrap()])
        .unwrap();
    let old_tables = tables(&conn, "main");
    conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    for t in &old_tables {
        conn.execute(&format!("INSERT INTO main.{t} SELECT * FROM tpl.{t}"), [])
            .unwrap_or_else(|e| panic!("copy rows of {t} into schema {version}: {e}"));
        assert!(
            count(&conn, &format!("main.{t}")) > 0,
            "the template has no rows in {t}: add some in template() so that migrations are tested with data in every table"
        );
    }
    let v: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, version);
    old_tables
}

/// Every row of `tables` in the database at `path` equals the template's.
fn assert_rows_equal(path: &Path, template: &Path, tables: &[String], what: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute("ATTACH DATABASE ?1 AS tpl", [template.to_str().unwrap()])
        .unwrap();
    for t in tables {
        for (a, b) in [("main", "tpl"), ("tpl", "main")] {
            let differing: i64 = conn
                .query_row(
                    &format!(
                        "SELECT count(*) FROM (SELECT * FROM {a}.{t} EXCEPT SELECT * FROM {b}.{t})"
                    ),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(differing, 0, "{what}: rows of {t} differ ({a} vs {b})");
        }
    }
}

fn backups_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir.join("backups")) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn every_earlier_schema_with_data_upgrades_and_keeps_every_row() {
    let work = tempfile::tempdir().unwrap();
    let tpl = template(work.path());
    let latest = Store::schema_version();
    assert!(latest >= 2, "nothing to migrate from");
    for version in 1..latest {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("printgate.sqlite");
        let old_tables = old_database(&path, version, &tpl);

        let store = Store::open(&path)
            .unwrap_or_else(|e| panic!("upgrade from schema {version} failed: {e}"));
        // The current code reads the old data.
        assert_eq!(
            store.pinned_fingerprint(SERIAL).unwrap().as_deref(),
            Some(PIN),
            "from {version}"
        );
        assert!(
            !store
                .recent_events(Some("Garage P1S"), 10)
                .unwrap()
                .is_empty(),
            "from {version}"
        );
        assert!(
            store.reserve_sequence_ids(0).unwrap() >= printgate::store::FIRST_SEQUENCE_ID + 777,
            "sequence ids must never go back (from {version})"
        );
        if old_tables.iter().any(|t| t == "files") {
            assert!(store.file_get(SHA).unwrap().is_some(), "from {version}");
        }
        if old_tables.iter().any(|t| t == "safety_trips") {
            assert!(
                store.latched_trip().unwrap().is_some(),
                "a latched trip must survive an upgrade (from {version})"
            );
        }
        drop(store);
        assert_rows_equal(
            &path,
            &tpl,
            &old_tables,
            &format!("upgraded from {version}"),
        );
        let conn = rusqlite::Connection::open(&path).unwrap();
        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, latest);
        drop(conn);

        // The copy made before the migration: schema `version`, same rows, intact.
        let copies = backups_in(dir.path());
        assert_eq!(copies.len(), 1, "one copy before the migration: {copies:?}");
        let name = copies[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(&format!("printgate-v{version}-")) && name.ends_with(".sqlite"),
            "{name}"
        );
        let summary = printgate::store::backup::check_database_file(&copies[0]).unwrap();
        assert_eq!(summary.schema_version, version);
        assert_rows_equal(&copies[0], &tpl, &old_tables, &format!("copy of {version}"));

        // Opening again migrates nothing and copies nothing.
        drop(Store::open(&path).unwrap());
        assert_eq!(backups_in(dir.path()).len(), 1);
    }
}

#[test]
fn a_new_or_current_database_is_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printgate.sqlite");
    drop(Store::open(&path).unwrap());
    drop(Store::open(&path).unwrap());
    assert!(backups_in(dir.path()).is_empty());
}

#[test]
fn no_migration_without_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printgate.sqlite");
    let work = tempfile::tempdir().unwrap();
    let tpl = template(work.path());
    old_database(&path, 1, &tpl);
    // Something in the way of the backups directory: the copy fails, so nothing is migrated.
    std::fs::write(dir.path().join("backups"), b"not a directory").unwrap();
    let err = Store::open(&path).err().expect("must refuse to migrate");
    assert!(
        err.to_string().contains("not migrated because the backup"),
        "{err}"
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 1, "the database must stay at its old schema");
}

#[test]
fn a_newer_database_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printgate.sqlite");
    drop(Store::open(&path).unwrap());
    let newer = Store::schema_version() + 1;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", newer).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).err().expect("newer must be refused");
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == newer),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("written by a newer printgate"), "{text}");
    assert!(text.contains("left untouched"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(backups_in(dir.path()).is_empty(), "no copy for a refusal");
}
