//! The SQLite store on real files: opening, refusing files it must not touch, printers,
//! events, certificate pins and sequence ids.

use printgate::config::{Model, PrinterConfig, TlsMode};
use printgate::store::{EventKind, FIRST_SEQUENCE_ID, Store, StoreError};
use serde_json::json;
use std::path::{Path, PathBuf};

fn printer(name: &str, model: Model, serial: &str, code: &str) -> PrinterConfig {
    PrinterConfig {
        name: name.into(),
        model,
        serial: serial.into(),
        host: "192.168.1.50".into(),
        access_code: code.into(),
        tls: TlsMode::Pin,
        mqtt_port: 8883,
        ftps_port: 990,
        ..PrinterConfig::default()
    }
}

fn x1c() -> PrinterConfig {
    printer("Workshop X1C", Model::X1C, "00M09A123456789", "S3cr3t!9")
}

fn p1s() -> PrinterConfig {
    printer("Garage P1S", Model::P1S, "01P00A987654321", "Zq8Wn2Lx")
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("printgate.db")
}

/// The database file and its WAL, concatenated (what is on disk).
fn disk_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if let Ok(w) = std::fs::read(wal) {
        bytes.extend(w);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Files in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn fresh_database_gets_the_schema_and_application_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    store.sync_printers(&[x1c()]).unwrap();
    drop(store);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let app_id: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(version, Store::schema_version());
    assert_eq!(app_id, printgate::store::APPLICATION_ID);
    assert_eq!(mode, "wal");
}

#[test]
fn reopening_keeps_printers_events_and_pins() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let store = Store::open(&path).unwrap();
        store.sync_printers(&[x1c(), p1s()]).unwrap();
        store
            .record_event(
                "Garage P1S",
                EventKind::LINK_UP,
                &json!({"ip": "192.168.1.51"}),
                1000,
            )
            .unwrap();
        store
            .store_fingerprint("00M09A123456789", "ab".repeat(32).as_str())
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    // Syncing the same config again changes nothing.
    store.sync_printers(&[x1c(), p1s()]).unwrap();
    let row = store.printer("Workshop X1C").unwrap().unwrap();
    assert_eq!(row.serial, "00M09A123456789");
    assert_eq!(row.model, "X1C");
    assert_eq!(row.host, "192.168.1.50");
    assert_eq!(row.cert_fingerprint, Some("ab".repeat(32)));
    assert!(store.printer_id("Garage P1S").unwrap().is_some());
    let events = store.recent_events(None, 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].printer, "Garage P1S");
}

#[test]
fn newer_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(Store::open(&path).unwrap());
    let newer = Store::schema_version() + 3;
    {
        // What a newer printgate would leave behind: a WAL-mode file, checkpointed on close.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", newer).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    assert_eq!(
        before[18], 2,
        "the file should be in WAL mode, as printgate leaves it"
    );
    let files_before = files_in(dir.path());

    let err = Store::open(&path)
        .err()
        .expect("a newer database must be refused");
    match &err {
        StoreError::NewerSchema { found, known, .. } => {
            assert_eq!(*found, newer);
            assert_eq!(*known, Store::schema_version());
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "{} was written by a newer printgate (database schema version {newer}, this printgate knows versions up to {}); it was left untouched; run the newer printgate again, or restore a backup made with this version",
            path.display(),
            Store::schema_version()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "file bytes changed");
    assert_eq!(
        files_in(dir.path()),
        files_before,
        "files appeared or vanished"
    );
}

/// A newer printgate that stopped without a checkpoint leaves its changes in the WAL: they
/// must not be folded into the main file either.
#[test]
fn newer_changes_still_in_the_wal_are_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(Store::open(&path).unwrap());
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE from_the_future (x INTEGER); PRAGMA user_version = 42;")
            .unwrap();
    }
    let db_before = std::fs::read(&path).unwrap();
    let wal_before = std::fs::read(&wal).unwrap();
    assert!(
        !wal_before.is_empty(),
        "the newer changes should be in the WAL"
    );

    let err = Store::open(&path)
        .err()
        .expect("a newer database must be refused");
    assert!(
        matches!(err, StoreError::NewerSchema { found: 42, .. }),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        db_before,
        "main file changed"
    );
    assert_eq!(std::fs::read(&wal).unwrap(), wal_before, "WAL changed");
}

#[test]
fn garbage_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();

    let err = Store::open(&path).err().expect("garbage must be refused");
    assert!(
        matches!(err, StoreError::NotPrintgateDatabase { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a printgate database or is damaged (it does not start with a SQLite database header); it was left untouched; restore from a backup or move it aside",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
    assert_eq!(files_in(dir.path()), vec!["printgate.db".to_string()]);
}

#[test]
fn damaged_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let store = Store::open(&path).unwrap();
        store.sync_printers(&[x1c(), p1s()]).unwrap();
        for i in 0..200 {
            store
                .record_event(
                    "Workshop X1C",
                    EventKind::GCODE_STATE,
                    &json!({"n": i, "pad": "x".repeat(200)}),
                    i,
                )
                .unwrap();
        }
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let _: String = conn
            .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
            .unwrap();
    }
    // Overwrite everything after the first page (the header stays valid).
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 4 * page);
    for (i, b) in bytes.iter_mut().enumerate().skip(page) {
        *b = (i * 7 % 256) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();

    let err = Store::open(&path)
        .err()
        .expect("a damaged database must be refused");
    assert!(
        matches!(err, StoreError::NotPrintgateDatabase { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{} is not a printgate database or is damaged (",
            path.display()
        )),
        "{text}"
    );
    assert!(
        text.ends_with("; it was left untouched; restore from a backup or move it aside"),
        "{text}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn another_programs_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path)
        .err()
        .expect("a foreign database must be refused");
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a printgate database or is damaged (it holds data of another program (no printgate application id)); it was left untouched; restore from a backup or move it aside",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn empty_file_becomes_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    std::fs::write(&path, b"").unwrap();
    let store = Store::open(&path).unwrap();
    store.sync_printers(&[x1c()]).unwrap();
}

#[test]
fn missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("printgate.db");
    let err = Store::open(&path).err().expect("must fail");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot open the database {}: ", path.display()))
    );
}

#[test]
fn events_round_trip_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(&dir)).unwrap();
    store.sync_printers(&[x1c(), p1s()]).unwrap();
    let a = store
        .record_event("Workshop X1C", EventKind::LINK_UP, &json!({}), 1_000)
        .unwrap();
    let b = store
        .record_event(
            "Garage P1S",
            EventKind::HMS_RAISED,
            &json!({"code": "0300_0100_0001_0007", "severity": 2}),
            2_000,
        )
        .unwrap();
    let c = store
        .record_event(
            "Workshop X1C",
            EventKind::GCODE_STATE,
            &json!({"from": "IDLE", "to": "PREPARE"}),
            3_000,
        )
        .unwrap();
    const PLATE_CLEARED: EventKind = EventKind::new("plate_cleared");
    let d = store
        .record_event("Workshop X1C", PLATE_CLEARED, &json!(null), 3_000)
        .unwrap();

    let all = store.recent_events(None, 10).unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![d, c, b, a]
    );
    assert_eq!(all[1].kind, "gcode_state");
    assert_eq!(all[1].detail, json!({"from": "IDLE", "to": "PREPARE"}));
    assert_eq!(all[1].at_ms, 3_000);
    assert_eq!(all[0].kind, "plate_cleared");
    assert_eq!(all[0].detail, json!(null));

    let x1 = store.recent_events(Some("Workshop X1C"), 2).unwrap();
    assert_eq!(x1.iter().map(|e| e.id).collect::<Vec<_>>(), vec![d, c]);
    let p1 = store.recent_events(Some("Garage P1S"), 10).unwrap();
    assert_eq!(p1.len(), 1);
    assert_eq!(p1[0].kind, EventKind::HMS_RAISED.as_str());
    assert_eq!(p1[0].detail["severity"], 2);

    assert!(matches!(
        store.record_event("Nobody", EventKind::LINK_UP, &json!({}), 1),
        Err(StoreError::UnknownPrinter(name)) if name == "Nobody"
    ));
    assert!(matches!(
        store.recent_events(Some("Nobody"), 5),
        Err(StoreError::UnknownPrinter(_))
    ));
}

#[test]
fn sequence_ids_never_repeat_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut handed_out = std::collections::HashSet::new();
    let mut take = |store: &Store, n: u64| {
        let first = store.reserve_sequence_ids(n).unwrap();
        for id in first..first + n {
            assert!(handed_out.insert(id), "sequence id {id} handed out twice");
        }
        first
    };
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(take(&store, 1), FIRST_SEQUENCE_ID);
        assert_eq!(take(&store, 100), FIRST_SEQUENCE_ID + 1);
        assert_eq!(
            store.reserve_sequence_ids(0).unwrap(),
            FIRST_SEQUENCE_ID + 101
        );
    }
    for _ in 0..3 {
        let store = Store::open(&path).unwrap();
        take(&store, 7);
        take(&store, 1);
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.reserve_sequence_ids(1).unwrap(),
        FIRST_SEQUENCE_ID + 101 + 3 * 8
    );
}

#[test]
fn fingerprint_pin_refuse_change_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let serial = "00M09A123456789";
    let fp1 = "11".repeat(32);
    let fp2 = "22".repeat(32);
    {
        let store = Store::open(&path).unwrap();
        store.sync_printers(&[x1c()]).unwrap();
        assert_eq!(store.pinned_fingerprint(serial).unwrap(), None);
        store.store_fingerprint(serial, &fp1).unwrap();
        store.store_fingerprint(serial, &fp1).unwrap(); // same pin again: fine
        assert!(matches!(
            store.store_fingerprint(serial, &fp2),
            Err(StoreError::FingerprintAlreadyPinned { .. })
        ));
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.pinned_fingerprint(serial).unwrap(), Some(fp1.clone()));
    assert!(store.clear_fingerprint(serial).unwrap());
    assert!(!store.clear_fingerprint(serial).unwrap());
    assert_eq!(store.pinned_fingerprint(serial).unwrap(), None);
    store.store_fingerprint(serial, &fp2).unwrap();
    assert_eq!(store.pinned_fingerprint(serial).unwrap(), Some(fp2));
    assert!(matches!(
        store.pinned_fingerprint("01P00A000000000"),
        Err(StoreError::UnknownSerial(_))
    ));
    assert!(matches!(
        store.store_fingerprint("01P00A000000000", &fp1),
        Err(StoreError::UnknownSerial(_))
    ));
}

#[test]
fn sync_updates_by_name_and_pins_follow_the_serial() {
    let store = Store::open_in_memory().unwrap();
    store.sync_printers(&[x1c(), p1s()]).unwrap();
    let x1c_id = store.printer_id("Workshop X1C").unwrap().unwrap();
    store
        .store_fingerprint("00M09A123456789", &"aa".repeat(32))
        .unwrap();

    // Host and model edits keep the row and its pin.
    let mut moved = x1c();
    moved.host = "x1c.lan".into();
    store.sync_printers(&[moved.clone(), p1s()]).unwrap();
    let row = store.printer("Workshop X1C").unwrap().unwrap();
    assert_eq!((row.id, row.host.as_str()), (x1c_id, "x1c.lan"));
    assert_eq!(row.cert_fingerprint, Some("aa".repeat(32)));

    // Renamed: a new row by name; the serial and its pin move there, the old row keeps history.
    let mut renamed = moved.clone();
    renamed.name = "Studio X1C".into();
    store.sync_printers(&[renamed, p1s()]).unwrap();
    let new_row = store.printer("Studio X1C").unwrap().unwrap();
    assert_ne!(new_row.id, x1c_id);
    assert_eq!(new_row.serial, "00M09A123456789");
    assert_eq!(new_row.cert_fingerprint, Some("aa".repeat(32)));
    let old_row = store.printer("Workshop X1C").unwrap().unwrap();
    assert_eq!(old_row.serial, format!("~retired-{x1c_id}"));
    assert_eq!(old_row.cert_fingerprint, None);

    // A name given a serial never seen before loses the pin (a different printer).
    let mut replaced = p1s();
    replaced.serial = "01P00A111111111".into();
    store
        .store_fingerprint("01P00A987654321", &"bb".repeat(32))
        .unwrap();
    store.sync_printers(&[replaced]).unwrap();
    let row = store.printer("Garage P1S").unwrap().unwrap();
    assert_eq!(row.serial, "01P00A111111111");
    assert_eq!(row.cert_fingerprint, None);

    // Two printers swapping serials: each serial keeps its own pin.
    let a = printer("A", Model::P1S, "01P00A000000001", "aaaaaaaa");
    let b = printer("B", Model::P1S, "01P00A000000002", "bbbbbbbb");
    store.sync_printers(&[a.clone(), b.clone()]).unwrap();
    store
        .store_fingerprint(&a.serial, &"0a".repeat(32))
        .unwrap();
    store
        .store_fingerprint(&b.serial, &"0b".repeat(32))
        .unwrap();
    let (mut a2, mut b2) = (a.clone(), b.clone());
    std::mem::swap(&mut a2.serial, &mut b2.serial);
    store.sync_printers(&[a2, b2]).unwrap();
    assert_eq!(store.printer("A").unwrap().unwrap().serial, b.serial);
    assert_eq!(
        store.pinned_fingerprint(&a.serial).unwrap(),
        Some("0a".repeat(32))
    );
    assert_eq!(
        store.pinned_fingerprint(&b.serial).unwrap(),
        Some("0b".repeat(32))
    );
}

#[test]
fn access_codes_are_never_written_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    store.sync_printers(&[x1c(), p1s()]).unwrap();
    store
        .record_event("Workshop X1C", EventKind::LINK_UP, &json!({}), 1)
        .unwrap();
    let bytes = disk_bytes(&path);
    assert!(
        contains(&bytes, b"00M09A123456789"),
        "the serial should be stored"
    );
    for code in [x1c().access_code, p1s().access_code] {
        assert!(
            !contains(&bytes, code.as_bytes()),
            "access code found in the database"
        );
    }
}

#[test]
fn pruning_drops_old_events_and_caps_each_printer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(&dir)).unwrap();
    store.sync_printers(&[x1c(), p1s()]).unwrap();
    // X1C: 10 old events (t = 0..9) and 30 recent ones (t = 100..129); P1S: 5 recent.
    for t in (0..10).chain(100..130) {
        store
            .record_event("Workshop X1C", EventKind::LINK_UP, &json!({"t": t}), t)
            .unwrap();
    }
    for t in 100..105 {
        store
            .record_event("Garage P1S", EventKind::LINK_UP, &json!({"t": t}), t)
            .unwrap();
    }
    let removed = store.prune_events(100, 20).unwrap();
    assert_eq!(
        removed,
        10 + 10,
        "10 too old, then 10 over the cap of the X1C"
    );
    let x1c = store.recent_events(Some("Workshop X1C"), 1000).unwrap();
    assert_eq!(x1c.len(), 20);
    assert_eq!(x1c.first().unwrap().at_ms, 129, "the newest are kept");
    assert_eq!(x1c.last().unwrap().at_ms, 110);
    assert_eq!(
        store.recent_events(Some("Garage P1S"), 1000).unwrap().len(),
        5,
        "a printer under the cap loses nothing"
    );
    assert_eq!(store.prune_events(100, 20).unwrap(), 0, "idempotent");
}
