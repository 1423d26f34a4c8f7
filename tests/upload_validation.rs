//! Upload validation and the content-addressed file store, end to end on a real SQLite file and
//! a real data directory: hostile archives are refused with clear messages and leave nothing
//! behind, valid files are stored once by hash with reference counts, and user-supplied names
//! never become paths.

use printgate::config::Model;
use printgate::jobs::files::{FileLimits, FileStore, remote_name_for};
use printgate::jobs::threemf::{
    self, FileError, FileInfo, FileKind, ZipLimits, check_model, inspect,
};
use printgate::sim::fixtures::{self, Fixture3mf};
use printgate::store::Store;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

struct Env {
    root: tempfile::TempDir,
    files: FileStore,
}

fn env_with(limits: FileLimits) -> Env {
    let root = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&root.path().join("printgate.db")).expect("store"));
    let files = FileStore::new(root.path(), store, limits).expect("file store");
    Env { root, files }
}

fn env() -> Env {
    env_with(FileLimits::default())
}

/// Every regular file under `dir`, relative to it.
fn all_files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.insert(rel.to_path_buf());
            }
        }
    }
    out
}

/// The store holds exactly these content files and nothing in `tmp/`.
fn assert_store_holds(env: &Env, shas: &[&str]) {
    assert_store_holds_in(env.files.dir(), shas);
}

/// The store in `dir` holds exactly these content files and nothing in `tmp/`.
fn assert_store_holds_in(dir: &Path, shas: &[&str]) {
    let expected: BTreeSet<PathBuf> = shas.iter().map(PathBuf::from).collect();
    assert_eq!(all_files(dir), expected, "files/ content");
    let tmp: Vec<_> = std::fs::read_dir(dir.join("tmp"))
        .expect("tmp dir")
        .collect();
    assert!(tmp.is_empty(), "stray files in files/tmp: {tmp:?}");
}

/// A queued job that refers to the stored file `sha256`.
fn create_job_for(store: &Store, sha256: &str, key: &str) {
    store
        .create_job(
            &printgate::jobs::model::NewJob {
                idempotency_key: key.into(),
                target: printgate::jobs::model::Target::AnyCompatible,
                model_code: "C12".into(),
                file_sha256: sha256.into(),
                plate: 1,
                name: key.into(),
                deadline: None,
                created_by: "test".into(),
            },
            0,
        )
        .expect("job");
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn refused(env: &Env, name: &str, bytes: &[u8]) -> FileError {
    let err = env
        .files
        .ingest(name, bytes)
        .await
        .expect_err("upload must be refused");
    assert_store_holds(env, &[]);
    err
}

#[tokio::test]
async fn valid_3mf_is_stored_with_its_plate_info_and_thumbnail() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf::default());
    let stored = env
        .files
        .ingest("lid_v2.gcode.3mf", &bytes[..])
        .await
        .expect("valid file accepted");

    assert_eq!(stored.sha256, sha_hex(&bytes));
    assert_eq!(stored.size, bytes.len() as u64);
    assert_eq!(stored.kind, FileKind::ThreeMf);
    assert_eq!(stored.display_name, "lid_v2.gcode.3mf");
    assert_eq!(stored.refcount, 1);
    let FileInfo::ThreeMf(info) = &stored.info else {
        panic!("3MF info expected, got {:?}", stored.info);
    };
    assert_eq!(info.slicer_version.as_deref(), Some("01.09.07.52"));
    assert_eq!(info.plates.len(), 1);
    let plate = &info.plates[0];
    assert_eq!(plate.index, 1);
    assert_eq!(plate.model_code.as_deref(), Some("C12"));
    assert_eq!(plate.model(), Some(Model::P1S));
    assert_eq!(plate.prediction_secs, Some(2718));
    assert_eq!(plate.weight_g, Some(12.34));
    assert_eq!(plate.nozzle_diameter_mm, Some(0.4));
    assert_eq!(plate.bed_type.as_deref(), Some("textured_plate"));
    assert!(plate.has_thumbnail);
    assert!(plate.gcode_bytes > 1000);
    assert_eq!(plate.filaments.len(), 1);
    assert_eq!(plate.filaments[0].material, "PLA");
    assert_eq!(plate.filaments[0].color, "#00AE42");
    assert_eq!(plate.filaments[0].used_g, Some(12.34));
    assert!(plate.filaments[0].used_m.is_some());
    check_model(info, 1, Model::P1S).expect("sliced for a P1S");

    // The stored bytes are the upload, under the hash.
    let path = env.files.path_of(&stored.sha256).expect("stored path");
    assert_eq!(path, env.files.dir().join(&stored.sha256));
    assert_eq!(std::fs::read(&path).expect("read back"), bytes);
    assert_store_holds(&env, &[&stored.sha256]);

    let png = env
        .files
        .thumbnail(&stored.sha256, 1)
        .await
        .expect("thumbnail");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(env.files.thumbnail(&stored.sha256, 2).await, None);

    // The row survives a reopen of the store.
    let again = env.files.info(&stored.sha256).expect("info").expect("row");
    assert_eq!(again, stored);
}

#[tokio::test]
async fn multi_plate_file_lists_every_plate() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf {
        plates: 3,
        model: Model::X1C,
        bed_type: "cool_plate".into(),
        ..Fixture3mf::default()
    });
    let stored = env
        .files
        .ingest("three.gcode.3mf", &bytes[..])
        .await
        .expect("stored");
    let FileInfo::ThreeMf(info) = &stored.info else {
        panic!("3MF info expected");
    };
    let indexes: Vec<u32> = info.plates.iter().map(|p| p.index).collect();
    assert_eq!(indexes, vec![1, 2, 3]);
    assert!(
        info.plates
            .iter()
            .all(|p| p.model_code.as_deref() == Some("BL-P001"))
    );
    assert!(
        info.plates
            .iter()
            .all(|p| p.bed_type.as_deref() == Some("cool_plate"))
    );
    check_model(info, 3, Model::X1C).expect("plate 3 fits");
    let err = check_model(info, 4, Model::X1C).expect_err("no plate 4");
    assert!(
        matches!(err, FileError::NoSuchPlate { plate: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("1, 2, 3"), "{err}");
}

#[tokio::test]
async fn file_sliced_for_another_model_is_refused_naming_both() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf::for_model(Model::P1S));
    let stored = env
        .files
        .ingest("p1s.gcode.3mf", &bytes[..])
        .await
        .expect("stored");
    let FileInfo::ThreeMf(info) = &stored.info else {
        panic!("3MF info expected");
    };
    let err = check_model(info, 1, Model::X1C).expect_err("wrong model");
    let msg = err.to_string();
    assert!(matches!(err, FileError::WrongModel { .. }), "{err:?}");
    assert!(msg.contains("P1S"), "{msg}");
    assert!(msg.contains("X1 Carbon"), "{msg}");
    assert!(msg.contains("slice again"), "{msg}");

    let mini = inspect(
        Cursor::new(fixtures::build_3mf(&Fixture3mf::for_model(Model::A1Mini))),
        &ZipLimits::default(),
    )
    .expect("inspect");
    let msg = check_model(&mini, 1, Model::A1)
        .expect_err("mini ≠ A1")
        .to_string();
    assert!(msg.contains("A1 mini") && msg.contains("is a A1"), "{msg}");
}

#[tokio::test]
async fn file_without_model_code_cannot_be_checked_and_is_accepted() {
    let bytes = fixtures::build_3mf(&Fixture3mf {
        slice_info: false,
        ..Fixture3mf::default()
    });
    let info = inspect(Cursor::new(bytes), &ZipLimits::default()).expect("inspect");
    assert_eq!(info.plates[0].model_code, None);
    assert_eq!(info.plates[0].prediction_secs, None);
    assert_eq!(info.plates[0].bed_type.as_deref(), Some("textured_plate"));
    check_model(&info, 1, Model::H2D).expect("unknown model is not refused here");
}

#[tokio::test]
async fn zip_bomb_with_honest_sizes_is_refused_before_decompressing() {
    let env = env();
    let bomb = fixtures::zip_bomb();
    let err = refused(&env, "bomb.gcode.3mf", &bomb).await;
    assert!(matches!(err, FileError::ZipBomb { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("zip bomb") && msg.contains("1 GiB"), "{msg}");
}

#[tokio::test]
async fn zip_bomb_that_understates_its_size_is_caught_while_reading() {
    let env = env();
    let bomb = fixtures::zip_bomb_understated();
    let err = refused(&env, "bomb.gcode.3mf", &bomb).await;
    assert!(matches!(err, FileError::ZipBomb { .. }), "{err:?}");
    assert!(
        err.to_string().contains("more than the 4 KiB it declares"),
        "{err}"
    );
}

#[tokio::test]
async fn archive_expanding_past_the_total_limit_is_refused() {
    let env = env_with(FileLimits {
        zip: ZipLimits {
            max_total_uncompressed: 1024 * 1024,
            ..ZipLimits::default()
        },
        ..FileLimits::default()
    });
    let bytes = fixtures::build_3mf(&Fixture3mf {
        gcode_padding_bytes: 2 * 1024 * 1024,
        ..Fixture3mf::default()
    });
    let err = refused(&env, "big.gcode.3mf", &bytes).await;
    assert!(matches!(err, FileError::ZipBomb { .. }), "{err:?}");
    assert!(err.to_string().contains("1 MiB in total"), "{err}");
}

#[tokio::test]
async fn many_small_entries_are_bounded_together_while_reading() {
    // Every entry is 1 MiB (below the per-entry ratio check) and the entry count is allowed:
    // the total and the overall ratio, counted as the bytes come out, still stop it.
    let env = env_with(FileLimits {
        zip: ZipLimits {
            max_entries: 10_000,
            ..ZipLimits::default()
        },
        ..FileLimits::default()
    });
    let base = fixtures::build_3mf(&Fixture3mf::default());
    let bomb = fixtures::with_zero_entries(base.clone(), 1100, 1 << 20);
    let err = refused(&env, "bomb.gcode.3mf", &bomb).await;
    assert!(matches!(err, FileError::ZipBomb { .. }), "{err:?}");
    assert!(err.to_string().contains(":1 overall"), "{err}");
    // Under the total, over the ratio.
    let quiet = fixtures::with_zero_entries(base.clone(), 100, 1 << 20);
    let err = refused(&env, "quiet.gcode.3mf", &quiet).await;
    assert!(err.to_string().contains("more than 40:1 overall"), "{err}");
    // Past the total limit whatever the ratio (here a total of 8 MiB).
    let env = env_with(FileLimits {
        zip: ZipLimits {
            max_total_uncompressed: 8 << 20,
            ..ZipLimits::default()
        },
        ..FileLimits::default()
    });
    let err = refused(
        &env,
        "some.gcode.3mf",
        &fixtures::with_zero_entries(base, 10, 1 << 20),
    )
    .await;
    assert!(
        err.to_string().contains("more than 8 MiB in total"),
        "{err}"
    );
}

#[tokio::test]
async fn a_real_file_with_many_plates_passes_the_limits() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf {
        plates: 100,
        ..Fixture3mf::default()
    });
    let stored = env
        .files
        .ingest("plates.gcode.3mf", &bytes[..])
        .await
        .expect("100 plates are accepted");
    assert_eq!(stored.info.plates().len(), 100);
}

#[tokio::test]
async fn archive_with_too_many_entries_is_refused() {
    let env = env_with(FileLimits {
        zip: ZipLimits {
            max_entries: 20,
            ..ZipLimits::default()
        },
        ..FileLimits::default()
    });
    let bytes = fixtures::build_3mf(&Fixture3mf {
        extra_entries: 30,
        ..Fixture3mf::default()
    });
    let err = refused(&env, "many.gcode.3mf", &bytes).await;
    assert!(
        matches!(err, FileError::TooManyEntries { limit: 20, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("more than the limit of 20"),
        "{err}"
    );
}

#[tokio::test]
async fn truncated_archives_are_refused() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf::default());
    for keep in [bytes.len() - 1, bytes.len() / 2, 100, 4] {
        let err = refused(&env, "cut.gcode.3mf", &fixtures::truncated(&bytes, keep)).await;
        assert_eq!(err, FileError::Truncated, "keeping {keep} bytes");
        assert!(err.to_string().contains("upload the file again"), "{err}");
    }
}

#[tokio::test]
async fn text_named_3mf_is_not_a_zip() {
    let env = env();
    let err = refused(&env, "fake.gcode.3mf", b"this is not a zip at all\n").await;
    assert_eq!(err, FileError::NotAZip);
}

#[tokio::test]
async fn unsliced_project_without_plate_gcode_is_refused() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf {
        plate_gcode: false,
        ..Fixture3mf::default()
    });
    let err = refused(&env, "project.3mf", &bytes).await;
    assert_eq!(err, FileError::NoPlateGcode);
    assert!(
        err.to_string()
            .contains("slice the model and export/send the plate as .gcode.3mf"),
        "{err}"
    );
}

#[tokio::test]
async fn empty_upload_is_refused() {
    let env = env();
    assert_eq!(
        refused(&env, "empty.gcode.3mf", b"").await,
        FileError::Empty
    );
    assert_eq!(refused(&env, "empty.gcode", b"").await, FileError::Empty);
}

#[tokio::test]
async fn unsupported_extension_is_refused_before_anything_is_written() {
    let env = env();
    let err = refused(&env, "model.stl", b"solid cube\n").await;
    assert!(
        matches!(&err, FileError::UnsupportedExtension { extension } if extension == "stl"),
        "{err:?}"
    );
    assert!(err.to_string().contains(".gcode.3mf"), "{err}");
}

#[tokio::test]
async fn hostile_names_are_sanitised_and_never_used_as_paths() {
    let env = env();
    let outside_before = all_files(env.root.path());
    let names = [
        ("../../../../etc/passwd.gcode.3mf", "passwd.gcode.3mf"),
        ("/etc/shadow.gcode.3mf", "shadow.gcode.3mf"),
        ("..\\..\\windows\\evil.gcode.3mf", "evil.gcode.3mf"),
        ("a\0b\r\n.gcode.3mf", "ab.gcode.3mf"),
        ("../..", ""),
    ];
    let mut shas = Vec::new();
    for (i, (name, expected)) in names.iter().enumerate() {
        // Different content each time so that each name is recorded on its own row.
        let bytes = fixtures::build_3mf(&Fixture3mf {
            prediction_secs: 1000 + i as u64,
            ..Fixture3mf::default()
        });
        let result = env.files.ingest(name, &bytes[..]).await;
        if expected.is_empty() {
            // No extension at all: refused, nothing written.
            assert!(
                matches!(result, Err(FileError::UnsupportedExtension { .. })),
                "{result:?}"
            );
            continue;
        }
        let stored = result.expect("stored under its hash");
        assert_eq!(stored.display_name, *expected);
        assert_eq!(stored.sha256, sha_hex(&bytes));
        shas.push(stored.sha256);
    }
    let sha_refs: Vec<&str> = shas.iter().map(String::as_str).collect();
    assert_store_holds(&env, &sha_refs);
    // Nothing appeared anywhere else under the data directory.
    let mut expected_outside = outside_before;
    for sha in &shas {
        expected_outside.insert(Path::new("files").join(sha));
    }
    let now: BTreeSet<PathBuf> = all_files(env.root.path())
        .into_iter()
        .filter(|p| !p.to_string_lossy().starts_with("printgate.db"))
        .collect();
    let expected_outside: BTreeSet<PathBuf> = expected_outside
        .into_iter()
        .filter(|p| !p.to_string_lossy().starts_with("printgate.db"))
        .collect();
    assert_eq!(now, expected_outside);
    assert!(!env.root.path().join("etc").exists());
    assert_eq!(env.files.path_of("../printgate.db"), None);
    assert_eq!(env.files.path_of(&"A".repeat(64)), None);
}

/// Counts how many bytes the store pulled from the upload.
struct CountingReader<'a> {
    data: &'a [u8],
    pos: usize,
    pulled: &'a AtomicU64,
}

impl AsyncRead for CountingReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.remaining()).min(16 * 1024);
        buf.put_slice(&rest[..n]);
        self.pos += n;
        self.pulled.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn file_above_the_size_limit_is_refused_while_streaming() {
    let limit = 1024 * 1024;
    let env = env_with(FileLimits {
        max_file_bytes: limit,
        ..FileLimits::default()
    });
    let bytes = fixtures::build_3mf(&Fixture3mf {
        gcode_padding_bytes: 8 * 1024 * 1024,
        ..Fixture3mf::default()
    });
    let pulled = AtomicU64::new(0);
    let reader = CountingReader {
        data: &bytes,
        pos: 0,
        pulled: &pulled,
    };
    let err = env
        .files
        .ingest("huge.gcode.3mf", reader)
        .await
        .expect_err("too large");
    assert_eq!(err, FileError::TooLarge { limit });
    assert!(err.to_string().contains("1 MiB"), "{err}");
    // Aborted early: at most the limit plus one read buffer was consumed, not 8 MiB.
    let consumed = pulled.load(Ordering::SeqCst);
    assert!(consumed <= limit + 256 * 1024, "consumed {consumed} bytes");
    assert_store_holds(&env, &[]);
}

#[tokio::test]
async fn interrupted_upload_leaves_nothing() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf::default());
    let half = bytes.len() / 2;
    let chunks: Vec<Result<Vec<u8>, FileError>> = vec![
        Ok(bytes[..half].to_vec()),
        Err(FileError::UploadInterrupted {
            detail: "client went away".into(),
        }),
    ];
    let err = env
        .files
        .ingest_stream("x.gcode.3mf", futures::stream::iter(chunks))
        .await
        .expect_err("interrupted");
    assert!(
        matches!(err, FileError::UploadInterrupted { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("client went away"), "{err}");
    assert_store_holds(&env, &[]);
}

/// Yields some bytes, signals, then never finishes (a stalled client).
struct StallingReader {
    first: Option<Vec<u8>>,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
}

impl AsyncRead for StallingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(data) = self.first.take() {
            buf.put_slice(&data);
            return Poll::Ready(Ok(()));
        }
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
        Poll::Pending
    }
}

#[tokio::test]
async fn cancelled_upload_removes_its_temporary_file() {
    let env = env();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = StallingReader {
        first: Some(vec![b'P'; 4096]),
        sent: Some(tx),
    };
    let upload = env.files.ingest("stall.gcode.3mf", reader);
    tokio::select! {
        r = upload => panic!("a stalled upload cannot finish: {r:?}"),
        r = rx => r.expect("reader signalled"),
    }
    // The upload future was dropped by select!: its temp file must be gone.
    assert_store_holds(&env, &[]);
}

#[tokio::test]
async fn same_content_twice_is_one_file_with_two_references() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf::default());
    let first = env
        .files
        .ingest("a.gcode.3mf", &bytes[..])
        .await
        .expect("first");
    let second = env
        .files
        .ingest("b.gcode.3mf", &bytes[..])
        .await
        .expect("second");
    assert_eq!(first.sha256, second.sha256);
    assert_eq!(first.refcount, 1);
    assert_eq!(second.refcount, 2);
    // Each upload keeps the name it came with; the shared row keeps the first one.
    assert_eq!(second.display_name, "b.gcode.3mf");
    let row = env.files.info(&first.sha256).expect("info").expect("row");
    assert_eq!(row.display_name, "a.gcode.3mf");
    assert_store_holds(&env, &[&first.sha256]);

    assert_eq!(env.files.acquire(&first.sha256).await.expect("acquire"), 3);
    assert_eq!(env.files.release(&first.sha256).await.expect("release"), 2);
    assert_eq!(env.files.release(&first.sha256).await.expect("release"), 1);
    assert!(env.files.path_of(&first.sha256).is_some());
    assert_eq!(env.files.release(&first.sha256).await.expect("release"), 0);
    // Released to zero: bytes and row are gone.
    assert_store_holds(&env, &[]);
    assert_eq!(env.files.path_of(&first.sha256), None);
    assert_eq!(env.files.info(&first.sha256).expect("info"), None);
    assert!(matches!(
        env.files.release(&first.sha256).await,
        Err(FileError::NotFound { .. })
    ));
    assert!(matches!(
        env.files.acquire(&first.sha256).await,
        Err(FileError::NotFound { .. })
    ));
    // Uploading it again after deletion works.
    let third = env
        .files
        .ingest("c.gcode.3mf", &bytes[..])
        .await
        .expect("third");
    assert_eq!(third.refcount, 1);
    assert_store_holds(&env, &[&third.sha256]);
}

#[tokio::test]
async fn concurrent_uploads_of_the_same_content_count_both() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf::default());
    let (a, b) = tokio::join!(
        env.files.ingest("a.gcode.3mf", &bytes[..]),
        env.files.ingest("b.gcode.3mf", &bytes[..])
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_eq!(a.sha256, b.sha256);
    let row = env.files.info(&a.sha256).expect("info").expect("row");
    assert_eq!(row.refcount, 2);
    assert_store_holds(&env, &[&a.sha256]);
}

#[tokio::test]
async fn plain_gcode_is_accepted_and_binary_gcode_refused() {
    let env = env();
    let gcode = fixtures::plain_gcode(20);
    let stored = env
        .files
        .ingest("benchy.gcode", &gcode[..])
        .await
        .expect("gcode");
    assert_eq!(stored.kind, FileKind::Gcode);
    assert!(stored.info.plates().is_empty());
    match &stored.info {
        FileInfo::Gcode(g) => {
            assert!(
                g.slicer
                    .as_deref()
                    .is_some_and(|s| s.starts_with("PrusaSlicer 2.7.1")),
                "{g:?}"
            )
        }
        other => panic!("gcode info expected, got {other:?}"),
    }
    // A zip renamed to .gcode is binary, not G-code.
    let zip = fixtures::build_3mf(&Fixture3mf::default());
    let env2 = self::env();
    let err = refused(&env2, "renamed.gcode", &zip).await;
    assert!(matches!(err, FileError::NotGcode { .. }), "{err:?}");
}

#[tokio::test]
async fn reopening_the_store_clears_leftovers() {
    let root = tempfile::tempdir().expect("tempdir");
    let db = root.path().join("printgate.db");
    let bytes = fixtures::build_3mf(&Fixture3mf::default());
    let sha = {
        let store = Arc::new(Store::open(&db).expect("store"));
        let files =
            FileStore::new(root.path(), store.clone(), FileLimits::default()).expect("files");
        let sha = files
            .ingest("a.gcode.3mf", &bytes[..])
            .await
            .expect("stored")
            .sha256;
        create_job_for(&store, &sha, "a");
        sha
    };
    // A crash left a partial upload and a content file without a row.
    let files_dir = root.path().join("files");
    std::fs::write(files_dir.join("tmp").join("upload-dead.part"), b"partial").expect("write");
    let orphan = "0".repeat(64);
    std::fs::write(files_dir.join(&orphan), b"orphan").expect("write");

    let store = Arc::new(Store::open(&db).expect("store"));
    let files = FileStore::new(root.path(), store, FileLimits::default()).expect("files");
    assert_eq!(
        all_files(files.dir()),
        BTreeSet::from([PathBuf::from(&sha)]),
        "only the recorded file remains"
    );
    assert_eq!(files.info(&sha).expect("info").expect("row").refcount, 1);
}

#[tokio::test]
async fn unreferenced_files_are_swept_after_their_grace_but_a_jobs_file_never() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&root.path().join("printgate.db")).expect("store"));
    let files = FileStore::new(root.path(), store.clone(), FileLimits::default()).expect("files");
    let file = |secs: u64| {
        fixtures::build_3mf(&Fixture3mf {
            prediction_secs: secs,
            ..Fixture3mf::default()
        })
    };
    let orphan = files
        .ingest("orphan.gcode.3mf", &file(1)[..])
        .await
        .expect("stored");
    let used = files
        .ingest("used.gcode.3mf", &file(2)[..])
        .await
        .expect("stored");
    create_job_for(&store, &used.sha256, "used");
    // Just uploaded: its request may still make its job.
    let grace = std::time::Duration::from_secs(3600);
    assert_eq!(files.sweep_unreferenced(grace).await.expect("sweep"), 0);
    assert!(files.path_of(&orphan.sha256).is_some());
    // Past the grace: the orphan goes, the job's file stays (even with no reference left).
    assert_eq!(files.release(&used.sha256).await.expect("release"), 0);
    assert!(files.path_of(&used.sha256).is_some(), "a job refers to it");
    let none = std::time::Duration::ZERO;
    assert_eq!(files.sweep_unreferenced(none).await.expect("sweep"), 1);
    assert_store_holds_in(files.dir(), &[&used.sha256]);
    assert_eq!(files.info(&orphan.sha256).expect("info"), None);
    assert!(files.info(&used.sha256).expect("info").is_some());
    // A content file without any row goes too.
    std::fs::write(files.dir().join("1".repeat(64)), b"x").expect("write");
    assert_eq!(files.sweep_unreferenced(none).await.expect("sweep"), 1);
    assert_store_holds_in(files.dir(), &[&used.sha256]);
}

#[tokio::test]
async fn larger_stored_padding_file_streams_through() {
    let env = env();
    let bytes = fixtures::build_3mf(&Fixture3mf {
        gcode_padding_bytes: 20 * 1024 * 1024,
        ..Fixture3mf::default()
    });
    assert!(bytes.len() > 20 * 1024 * 1024);
    let stored = env
        .files
        .ingest("big.gcode.3mf", &bytes[..])
        .await
        .expect("stored");
    assert_eq!(stored.size, bytes.len() as u64);
    assert!(stored.info.plates()[0].gcode_bytes > 20 * 1024 * 1024);
    assert_store_holds(&env, &[&stored.sha256]);
}

#[test]
fn remote_names_follow_the_printer_rules() {
    assert_eq!(
        remote_name_for(418, FileKind::ThreeMf),
        "pg-000418.gcode.3mf"
    );
    assert_eq!(remote_name_for(7, FileKind::Gcode), "pg-000007.gcode");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn inspect_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = inspect(Cursor::new(data.clone()), &ZipLimits::default());
            let _ = threemf::inspect_gcode(&data[..]);
        }

        #[test]
        fn inspect_zip_like_bytes(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut data = b"PK\x03\x04".to_vec();
            data.extend_from_slice(&tail);
            data.extend_from_slice(b"PK\x05\x06");
            data.extend_from_slice(&tail[..tail.len().min(18)]);
            let _ = inspect(Cursor::new(data), &ZipLimits::default());
        }

        #[test]
        fn inspect_mutated_fixture(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut data = fixture_bytes().to_vec();
            for (at, value) in flips {
                let i = at.index(data.len());
                data[i] = value;
            }
            let _ = inspect(Cursor::new(data), &ZipLimits::default());
        }
    }

    fn fixture_bytes() -> &'static [u8] {
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        BYTES.get_or_init(|| {
            fixtures::build_3mf(&Fixture3mf {
                thumbnails: true,
                ..Fixture3mf::default()
            })
        })
    }
}
