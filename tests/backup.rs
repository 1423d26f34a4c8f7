//! `printgate backup` / `restore`: a backup taken while the gateway runs and writes jobs is a
//! consistent copy (opens, passes integrity_check, holds every job committed before it began and
//! the stored files); restore refuses while a gateway runs, refuses archives it cannot trust
//! and keeps the database it replaces.

use printgate::backup::{self, BackupError};
use printgate::config::Config;
use printgate::jobs::model::{NewJob, Target};
use printgate::store::Store;
use printgate::store::files::FileRow;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn config(data_dir: &Path) -> Config {
    Config::parse_toml(
        &format!(
            "data_dir = {:?}\n[web]\nlisten = \"127.0.0.1:0\"\n[broker]\nmode = \"off\"\n",
            data_dir.display().to_string()
        ),
        "test",
    )
    .unwrap()
}

fn write_config(dir: &Path, data_dir: &Path) -> PathBuf {
    let path = dir.join("printgate.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[web]\nlisten = \"127.0.0.1:0\"\n[broker]\nmode = \"off\"\n",
            data_dir.display().to_string()
        ),
    )
    .unwrap();
    path
}

/// Store a print file the way the gateway does: content under files/<sha256>, a row with it.
fn store_file(store: &Store, data_dir: &Path, content: &[u8]) -> String {
    let sha = hex::encode(Sha256::digest(content));
    let dir = data_dir.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&sha), content).unwrap();
    store
        .file_insert_or_acquire(&FileRow {
            sha256: sha.clone(),
            size: content.len() as u64,
            kind: "gcode".into(),
            display_name: "cube.gcode".into(),
            info_json: "{}".into(),
            refcount: 1,
            created_at: 1_760_000_000,
        })
        .unwrap();
    sha
}

fn job(n: usize, sha: &str) -> NewJob {
    NewJob {
        idempotency_key: format!("job-{n}"),
        target: Target::AnyCompatible,
        model_code: "C12".into(),
        file_sha256: sha.into(),
        plate: 1,
        name: format!("cube {n}"),
        deadline: None,
        created_by: "test".into(),
    }
}

fn job_keys(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT idempotency_key FROM jobs ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_busy_restores_a_consistent_copy_with_every_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let running = printgate::start(config(&data), CancellationToken::new())
        .await
        .unwrap();
    let store = running.gateway.store.clone();
    let sha = store_file(&store, &data, b"G28\nG1 X10\n");

    // A writer committing jobs as fast as it can for the whole backup.
    let committed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (first_batch_tx, first_batch_rx) = tokio::sync::oneshot::channel();
    let writer = {
        let (store, committed, stop, sha) =
            (store.clone(), committed.clone(), stop.clone(), sha.clone());
        std::thread::spawn(move || {
            let mut tx = Some(first_batch_tx);
            for n in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                store.create_job(&job(n, &sha), 1_760_000_000_000).unwrap();
                committed.store(n + 1, Ordering::SeqCst);
                if n + 1 == 300
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(60), first_batch_rx)
        .await
        .expect("the writer should commit 300 jobs")
        .unwrap();

    let before = committed.load(Ordering::SeqCst);
    let archive = dir.path().join("printgate-backup.zip");
    let (d, a) = (data.clone(), archive.clone());
    let outcome = tokio::task::spawn_blocking(move || backup::backup(&d, &a))
        .await
        .unwrap()
        .unwrap();
    let after = committed.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    let m = &outcome.manifest;
    assert!(
        m.jobs as usize >= before && m.jobs as usize <= after,
        "the copy holds {} jobs; {before} were committed when it began, {after} when it ended",
        m.jobs
    );
    assert_eq!(m.files, vec![sha.clone()]);
    assert!(m.missing_files.is_empty());

    // Restore is refused while the gateway runs on that data directory.
    let err = backup::restore(&data, &archive).unwrap_err();
    assert!(matches!(err, BackupError::GatewayRunning { .. }), "{err}");
    assert!(
        err.to_string().contains("systemctl stop printgate"),
        "{err}"
    );
    running.shutdown().await;

    // Restore into an empty data directory.
    let restored = dir.path().join("restored");
    let out = backup::restore(&restored, &archive).unwrap();
    assert_eq!(out.previous_database, None);
    let db = restored.join(printgate::DATABASE_FILE);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");
    drop(conn);
    let keys = job_keys(&db);
    assert_eq!(keys.len() as u64, m.jobs);
    for n in 0..before {
        assert_eq!(
            keys.get(n).map(String::as_str),
            Some(format!("job-{n}").as_str()),
            "job {n} was committed before the backup began"
        );
    }
    assert_eq!(
        std::fs::read(restored.join("files").join(&sha)).unwrap(),
        b"G28\nG1 X10\n"
    );
    // The gateway runs on the restored data.
    let again = printgate::start(config(&restored), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        again
            .gateway
            .store
            .jobs_in_states(&[printgate::jobs::model::JobState::Queued])
            .unwrap()
            .len() as u64,
        m.jobs
    );
    again.shutdown().await;
}

#[test]
fn restore_over_an_existing_database_keeps_it_under_backups() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join(printgate::DATABASE_FILE);
    {
        let store = Store::open(&db).unwrap();
        let sha = store_file(&store, &data, b"first");
        store.create_job(&job(1, &sha), 1).unwrap();
    }
    let archive = dir.path().join("one-job.zip");
    backup::backup(&data, &archive).unwrap();
    {
        let store = Store::open(&db).unwrap();
        store
            .create_job(&job(2, "0".repeat(64).as_str()), 2)
            .unwrap();
    }
    assert_eq!(job_keys(&db).len(), 2);

    let out = backup::restore(&data, &archive).unwrap();
    assert_eq!(job_keys(&db), vec!["job-1".to_string()]);
    let kept = out
        .previous_database
        .expect("the replaced database is kept");
    assert!(kept.starts_with(data.join("backups")), "{}", kept.display());
    assert_eq!(job_keys(&kept).len(), 2);
    for side in ["-wal", "-shm"] {
        assert!(!PathBuf::from(format!("{}{side}", db.display())).exists());
    }
}

/// Rewrite `src` into `dest`, passing each entry through `edit` (name, bytes) → bytes or drop.
fn rewrite_archive(src: &Path, dest: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dest).unwrap());
    for i in 0..zin.len() {
        let mut entry = zin.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if let Some(bytes) = edit(&name, bytes) {
            zout.start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zout.write_all(&bytes).unwrap();
        }
    }
    zout.finish().unwrap();
}

#[test]
fn untrustworthy_archives_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join(printgate::DATABASE_FILE);
    let sha = {
        let store = Store::open(&db).unwrap();
        let sha = store_file(&store, &data, b"content");
        store.create_job(&job(1, &sha), 1).unwrap();
        sha
    };
    let good = dir.path().join("good.zip");
    backup::backup(&data, &good).unwrap();

    let target = dir.path().join("target");
    let cases: Vec<(&str, PathBuf)> = {
        let not_zip = dir.path().join("not-a-zip.zip");
        std::fs::write(&not_zip, b"hello").unwrap();

        let damaged_file = dir.path().join("damaged-file.zip");
        let file_entry = format!("files/{sha}");
        rewrite_archive(&good, &damaged_file, |name, bytes| {
            Some(if name == file_entry {
                b"tampered".to_vec()
            } else {
                bytes
            })
        });

        let damaged_db = dir.path().join("damaged-db.zip");
        rewrite_archive(&good, &damaged_db, |name, mut bytes| {
            if name == backup::DATABASE_ENTRY {
                bytes.truncate(100);
                bytes.extend(vec![0xA5; 4096]);
            }
            Some(bytes)
        });

        let newer = dir.path().join("newer.zip");
        rewrite_archive(&good, &newer, |name, bytes| {
            if name != backup::DATABASE_ENTRY {
                return Some(bytes);
            }
            let tmp = tempfile::tempdir().unwrap();
            let p = tmp.path().join("db.sqlite");
            std::fs::write(&p, &bytes).unwrap();
            let conn = rusqlite::Connection::open(&p).unwrap();
            conn.pragma_update(None, "user_version", Store::schema_version() + 1)
                .unwrap();
            drop(conn);
            Some(std::fs::read(&p).unwrap())
        });

        let no_manifest = dir.path().join("no-manifest.zip");
        rewrite_archive(&good, &no_manifest, |name, bytes| {
            (name != backup::MANIFEST).then_some(bytes)
        });
        vec![
            ("not a zip", not_zip),
            ("damaged print file", damaged_file),
            ("damaged database", damaged_db),
            ("newer database", newer),
            ("no manifest", no_manifest),
        ]
    };
    // The target holds a database that must survive every refused restore.
    std::fs::create_dir_all(&target).unwrap();
    let target_db = target.join(printgate::DATABASE_FILE);
    {
        let store = Store::open(&target_db).unwrap();
        store.create_job(&job(9, &sha), 9).unwrap();
    }
    for (what, archive) in cases {
        let err = backup::restore(&target, &archive)
            .err()
            .unwrap_or_else(|| panic!("{what}: must be refused"));
        eprintln!("{what}: {err}");
        assert_eq!(job_keys(&target_db), vec!["job-9".to_string()], "{what}");
        if what == "newer database" {
            assert!(err.to_string().contains("newer printgate"), "{err}");
        }
    }
    // And the good one works.
    backup::restore(&target, &good).unwrap();
    assert_eq!(job_keys(&target_db), vec!["job-1".to_string()]);
}

#[test]
fn cli_entry_points_report_and_exit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        let store = Store::open(&data.join(printgate::DATABASE_FILE)).unwrap();
        store.create_job(&job(1, &"1".repeat(64)), 1).unwrap();
    }
    let cfg = write_config(dir.path(), &data);
    let archive = dir.path().join("b.zip");
    assert_eq!(backup::backup_cli(&cfg, &archive), 0);
    assert!(archive.is_file());
    assert_eq!(backup::restore_cli(&cfg, &archive), 0);
    assert_eq!(
        backup::restore_cli(&cfg, &dir.path().join("missing.zip")),
        1
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "data_dir = 5").unwrap();
    assert_eq!(backup::backup_cli(&bad, &archive), 2);
}

/// What gives the gateway its identity on the LAN (the virtual printers' CA, serials and access
/// codes, the broker's generated certificate) is in the archive and comes back with a restore:
/// without it every slicer and Home Assistant would have to be paired again. An archive naming
/// any other identity file is refused before anything changes.
#[test]
fn identities_come_back_with_a_restore_and_unknown_ones_are_refused() {
    use printgate::printer::Model;
    use printgate::virtual_printer::identity::IdentityStore;
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    drop(Store::open(&data.join(printgate::DATABASE_FILE)).unwrap());
    let ids = IdentityStore::new(&data);
    let before = ids.credentials("printer 1", Model::P1S).unwrap();
    ids.authority().unwrap();
    let ca = std::fs::read(ids.ca_cert_path()).unwrap();
    std::fs::create_dir_all(data.join("broker-tls")).unwrap();
    std::fs::write(data.join("broker-tls/cert.pem"), b"broker cert").unwrap();
    std::fs::write(data.join("broker-tls/key.pem"), b"broker key").unwrap();
    let archive = dir.path().join("with-identities.zip");
    let made = backup::backup(&data, &archive).unwrap();
    assert!(
        made.manifest
            .identity_files
            .contains(&"virtual-printers/identities.json".to_string()),
        "{:?}",
        made.manifest.identity_files
    );

    // A new machine: an empty data directory.
    let fresh = dir.path().join("fresh");
    backup::restore(&fresh, &archive).unwrap();
    let ids = IdentityStore::new(&fresh);
    assert_eq!(
        ids.credentials("printer 1", Model::P1S).unwrap(),
        before,
        "the virtual printer keeps its serial and access code"
    );
    assert_eq!(
        std::fs::read(ids.ca_cert_path()).unwrap(),
        ca,
        "the same CA"
    );
    assert_eq!(
        std::fs::read(fresh.join("broker-tls/key.pem")).unwrap(),
        b"broker key"
    );
    for key in [
        "virtual-printers/ca.key.pem",
        "broker-tls/key.pem",
        "virtual-printers/identities.json",
    ] {
        let mode = std::fs::metadata(fresh.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} is readable by others: {mode:o}");
    }

    // An archive that names another file as an identity is refused and changes nothing.
    let bad = dir.path().join("bad-identity.zip");
    rewrite_archive(&archive, &bad, |name, bytes| {
        if name == backup::MANIFEST {
            let text = String::from_utf8(bytes).unwrap();
            Some(
                text.replace(
                    "\"virtual-printers/identities.json\"",
                    "\"../../etc/passwd\"",
                )
                .into_bytes(),
            )
        } else {
            Some(bytes)
        }
    });
    let other = dir.path().join("other");
    let err = backup::restore(&other, &bad).unwrap_err();
    assert!(matches!(err, BackupError::NotABackup { .. }), "{err}");
    assert!(err.to_string().contains("../../etc/passwd"), "{err}");
    assert!(!other.join(printgate::DATABASE_FILE).exists());
}
