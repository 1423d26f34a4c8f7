//! `printgate backup FILE` / `printgate restore FILE`: the database and the stored print files
//! in one zip archive.
//!
//! Archive layout (inspect it with `unzip -l`):
//! - `printgate-backup.json` — manifest: format, printgate version, time, schema version, job
//!   count, the file hashes it holds;
//! - `printgate.sqlite` — a consistent copy of the database (SQLite online backup API, one read
//!   transaction, so a gateway may keep running and writing meanwhile);
//! - `files/<sha256>` — every print file the copied database refers to, verified against its
//!   hash while it is read;
//! - `identity/<path>` — what makes the gateway the same one on the LAN, so that slicers and
//!   Home Assistant stay paired after a restore on a new machine: the virtual printers' CA, serials
//!   and access codes, the broker's generated certificate and its Home Assistant serials (only
//!   the names in [`IDENTITY_FILES`] are written or accepted).
//!
//! Stored files are content-addressed and never change, so the database snapshot decides which
//! files belong to the backup. `restore` refuses while a gateway runs on the data directory,
//! checks the archived database (intact, printgate's, not newer than this build) before it
//! touches anything, keeps a copy of the database it replaces under `backups/`, and accepts only
//! archive entries it knows (no paths from the archive are trusted).

use crate::config::Config;
use crate::store::DATABASE_FILE;
use crate::store::backup::{self as db_backup, CopySummary};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Name of the manifest entry.
pub const MANIFEST: &str = "printgate-backup.json";
/// Name of the database entry.
pub const DATABASE_ENTRY: &str = "printgate.sqlite";
/// Archive format written by this build.
pub const FORMAT: u32 = 1;

/// Largest database or file accepted from an archive (a zip bomb must not fill the disk).
const MAX_ENTRY_BYTES: u64 = 8 << 30;

/// The identity files of a data directory, relative to it (the places `virtual_printer::identity`
/// and `broker::service` keep them). Restored with mode 0600: some are private keys.
pub const IDENTITY_FILES: &[&str] = &[
    "virtual-printers/ca.pem",
    "virtual-printers/ca.key.pem",
    "virtual-printers/identities.json",
    "broker-tls/cert.pem",
    "broker-tls/key.pem",
    "broker-ha-serials.json",
];
/// Archive folder of the identity files.
const IDENTITY_ENTRY: &str = "identity/";
/// Largest identity file accepted from an archive.
const MAX_IDENTITY_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(String),
    #[error(
        "{archive} is not a printgate backup ({reason}); give the file written by `printgate backup`"
    )]
    NotABackup { archive: PathBuf, reason: String },
    #[error(
        "a printgate gateway (process {pid}) is running on {dir}; stop it first (`sudo systemctl stop printgate`), restore, then start it again"
    )]
    GatewayRunning { dir: PathBuf, pid: String },
}

fn io(what: impl std::fmt::Display, path: &Path, e: impl std::fmt::Display) -> BackupError {
    BackupError::Io(format!("{what} {}: {e}", path.display()))
}

/// The manifest inside every archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub printgate_version: String,
    pub created_at: String,
    pub schema_version: u32,
    pub jobs: u64,
    /// Hashes of the files in `files/`.
    pub files: Vec<String>,
    /// Files the database refers to that were missing or damaged on disk (not in the archive).
    #[serde(default)]
    pub missing_files: Vec<String>,
    /// The identity files in `identity/` (paths from [`IDENTITY_FILES`]); none in archives
    /// written before they were kept.
    #[serde(default)]
    pub identity_files: Vec<String>,
}

/// What a backup or restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub manifest: Manifest,
    /// Where the replaced database was kept (restore only).
    pub previous_database: Option<PathBuf>,
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Copy `data_dir`'s database and stored files into the archive `dest` (replaced atomically if
/// it exists). Works while a gateway runs.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<Outcome, BackupError> {
    let db = data_dir.join(DATABASE_FILE);
    let dest_dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".printgate-backup-")
        .tempdir_in(&dest_dir)
        .map_err(|e| io("cannot write in", &dest_dir, e))?;
    let snapshot = work.path().join(DATABASE_ENTRY);
    let summary = db_backup::backup_database(&db, &snapshot);
    give_back_to_service_user(data_dir);
    let summary = summary?;

    let part = work.path().join("archive.zip");
    let file = std::fs::File::create(&part).map_err(|e| io("cannot create", &part, e))?;
    let mut zip = zip::ZipWriter::new(file);
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    let zip_err = |e: zip::result::ZipError| io("cannot write", dest, e);

    zip.start_file(DATABASE_ENTRY, deflated).map_err(zip_err)?;
    let mut src = std::fs::File::open(&snapshot).map_err(|e| io("cannot read", &snapshot, e))?;
    std::io::copy(&mut src, &mut zip).map_err(|e| io("cannot write", dest, e))?;

    let files_dir = data_dir.join("files");
    let (mut files, mut missing) = (Vec::new(), Vec::new());
    for sha in &summary.files {
        if !is_sha256(sha) {
            missing.push(sha.clone());
            continue;
        }
        let path = files_dir.join(sha);
        let Ok(mut f) = std::fs::File::open(&path) else {
            tracing::warn!("stored file {sha} is missing from {}", files_dir.display());
            missing.push(sha.clone());
            continue;
        };
        // Print files are zip archives (3MF) or gcode: store them as they are.
        zip.start_file(format!("files/{sha}"), stored)
            .map_err(zip_err)?;
        let digest = copy_hashing(&mut f, &mut zip).map_err(|e| io("cannot copy", &path, e))?;
        if digest != *sha {
            tracing::warn!("stored file {sha} is damaged (its content hash differs); left out");
            zip.abort_file().map_err(zip_err)?;
            missing.push(sha.clone());
        } else {
            files.push(sha.clone());
        }
    }
    let mut identity_files = Vec::new();
    for name in IDENTITY_FILES {
        let path = data_dir.join(name);
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue; // not made on this gateway (that feature never ran)
        };
        zip.start_file(format!("{IDENTITY_ENTRY}{name}"), deflated)
            .map_err(zip_err)?;
        std::io::copy(&mut f, &mut zip).map_err(|e| io("cannot copy", &path, e))?;
        identity_files.push(name.to_string());
    }
    let manifest = Manifest {
        format: FORMAT,
        printgate_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: chrono::Utc::now().to_rfc3339(),
        schema_version: summary.schema_version,
        jobs: summary.jobs,
        files,
        missing_files: missing,
        identity_files,
    };
    zip.start_file(MANIFEST, deflated).map_err(zip_err)?;
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::Io(format!("cannot encode the manifest: {e}")))?;
    zip.write_all(&json)
        .map_err(|e| io("cannot write", dest, e))?;
    let file = zip.finish().map_err(zip_err)?;
    file.sync_all().map_err(|e| io("cannot write", dest, e))?;
    drop(file);
    std::fs::rename(&part, dest).map_err(|e| io("cannot write", dest, e))?;
    record_backup(data_dir, dest);
    Ok(Outcome {
        manifest,
        previous_database: None,
    })
}

/// File in the data directory that notes the last archive written (its time is the backup's).
pub const LAST_BACKUP_FILE: &str = "last-backup.json";

/// Note a finished backup for the metrics endpoint (a failure to note it only logs).
fn record_backup(data_dir: &Path, dest: &Path) {
    let note = serde_json::json!({
        "at": chrono::Utc::now().to_rfc3339(),
        "archive": dest.display().to_string(),
    });
    let path = data_dir.join(LAST_BACKUP_FILE);
    if let Err(e) = std::fs::write(&path, note.to_string()) {
        tracing::warn!("could not note the backup in {}: {e}", path.display());
    }
    give_back_to_service_user(data_dir);
}

/// When `printgate backup` last finished an archive for this data directory.
pub fn last_backup_at(data_dir: &Path) -> Option<std::time::SystemTime> {
    let text = std::fs::read_to_string(data_dir.join(LAST_BACKUP_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(v.get("at")?.as_str()?).ok()?;
    let ms = u64::try_from(at.timestamp_millis()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// When printgate runs as root (`sudo printgate backup|restore|doctor`) on a data directory
/// that belongs to the service user, everything it (or SQLite: `-wal`, `-shm`) created there
/// must belong to that user too, or the service can no longer open its database. Gives every
/// root-owned entry of `data_dir`, `files/` and `backups/` to the directory's owner. Does nothing
/// when not root or when the directory belongs to root.
pub fn give_back_to_service_user(data_dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let Ok(meta) = std::fs::metadata(data_dir) else {
        return;
    };
    if meta.uid() == 0 {
        return;
    }
    let (uid, gid) = (meta.uid(), meta.gid());
    for dir in [
        data_dir.to_path_buf(),
        data_dir.join("files"),
        data_dir.join("backups"),
        data_dir.join("virtual-printers"),
        data_dir.join("broker-tls"),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.push(dir);
        for path in paths {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.uid() == 0)
                && let Err(e) = std::os::unix::fs::chown(&path, Some(uid), Some(gid))
            {
                tracing::warn!("cannot give {} to the service user: {e}", path.display());
            }
        }
    }
}

/// Copy `from` into `to`, returning the lowercase hex SHA-256 of what was copied.
fn copy_hashing(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        to.write_all(chunk)?;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Read one archive entry into `dest`, at most [`MAX_ENTRY_BYTES`]; returns its SHA-256.
fn extract(entry: &mut impl Read, dest: &Path) -> Result<String, BackupError> {
    extract_limited(entry, dest, MAX_ENTRY_BYTES, false)
}

/// Read one archive entry into `dest` (mode 0600 when `private`), at most `limit` bytes;
/// returns its SHA-256.
fn extract_limited(
    entry: &mut impl Read,
    dest: &Path,
    limit: u64,
    private: bool,
) -> Result<String, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut out = options
        .open(dest)
        .map_err(|e| io("cannot create", dest, e))?;
    let mut limited = entry.take(limit + 1);
    let digest = copy_hashing(&mut limited, &mut out).map_err(|e| io("cannot write", dest, e))?;
    let len = out
        .metadata()
        .map_err(|e| io("cannot read", dest, e))?
        .len();
    if len > limit {
        return Err(BackupError::Io(format!(
            "an archive entry is larger than {limit} bytes; refusing to unpack it"
        )));
    }
    out.sync_all().map_err(|e| io("cannot write", dest, e))?;
    Ok(digest)
}

/// Replace `data_dir`'s database (and add the archived print files) with the archive `src`.
/// Refuses while a gateway runs on `data_dir`.
pub fn restore(data_dir: &Path, src: &Path) -> Result<Outcome, BackupError> {
    if let Some(pid) = crate::notify::running_gateway(data_dir) {
        return Err(BackupError::GatewayRunning {
            dir: data_dir.to_path_buf(),
            pid,
        });
    }
    let not_backup = |reason: String| BackupError::NotABackup {
        archive: src.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(src).map_err(|e| io("cannot open", src, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| not_backup(e.to_string()))?;

    let manifest: Manifest = {
        let mut entry = zip
            .by_name(MANIFEST)
            .map_err(|_| not_backup(format!("it has no {MANIFEST}")))?;
        let mut text = Vec::new();
        entry
            .by_ref()
            .take(1 << 20)
            .read_to_end(&mut text)
            .map_err(|e| not_backup(e.to_string()))?;
        serde_json::from_slice(&text).map_err(|e| not_backup(format!("bad manifest: {e}")))?
    };
    if manifest.format != FORMAT {
        return Err(not_backup(format!(
            "archive format {} is not the format {FORMAT} this printgate reads; restore it with the printgate version that wrote it ({})",
            manifest.format, manifest.printgate_version
        )));
    }

    if let Some(unknown) = manifest
        .identity_files
        .iter()
        .find(|name| !IDENTITY_FILES.contains(&name.as_str()))
    {
        return Err(not_backup(format!(
            "it names {unknown:?} as an identity file; printgate keeps only {}",
            IDENTITY_FILES.join(", ")
        )));
    }

    std::fs::create_dir_all(data_dir).map_err(|e| io("cannot create", data_dir, e))?;
    let work = tempfile::Builder::new()
        .prefix(".printgate-restore-")
        .tempdir_in(data_dir)
        .map_err(|e| io("cannot write in", data_dir, e))?;

    // 1. The database: unpacked and checked before anything in data_dir changes.
    let new_db = work.path().join(DATABASE_ENTRY);
    {
        let mut entry = zip
            .by_name(DATABASE_ENTRY)
            .map_err(|_| not_backup(format!("it has no {DATABASE_ENTRY}")))?;
        extract(&mut entry, &new_db)?;
    }
    let summary: CopySummary = db_backup::check_database_file(&new_db)?;

    // 2. The print files the database refers to, each verified against its name.
    let files_dir = data_dir.join("files");
    std::fs::create_dir_all(&files_dir).map_err(|e| io("cannot create", &files_dir, e))?;
    for sha in &manifest.files {
        if !is_sha256(sha) {
            return Err(not_backup(format!("bad file name {sha:?} in the manifest")));
        }
        let target = files_dir.join(sha);
        if target.is_file() {
            continue; // content-addressed: same name, same bytes
        }
        let mut entry = zip
            .by_name(&format!("files/{sha}"))
            .map_err(|_| not_backup(format!("files/{sha} is listed but missing")))?;
        let part = work.path().join(sha);
        let digest = extract(&mut entry, &part)?;
        if digest != *sha {
            return Err(not_backup(format!(
                "files/{sha} is damaged (its content hash is {digest})"
            )));
        }
        std::fs::rename(&part, &target).map_err(|e| io("cannot write", &target, e))?;
    }
    let missing: Vec<&String> = summary
        .files
        .iter()
        .filter(|sha| !files_dir.join(sha.as_str()).is_file())
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            "{} print file(s) the restored database refers to are not in the backup; jobs using them cannot start",
            missing.len()
        );
    }

    // 2b. The identity files, unpacked (private) beside the new database until it is in place.
    let mut identities = Vec::new();
    for (i, name) in manifest.identity_files.iter().enumerate() {
        let mut entry = zip
            .by_name(&format!("{IDENTITY_ENTRY}{name}"))
            .map_err(|_| not_backup(format!("{IDENTITY_ENTRY}{name} is listed but missing")))?;
        let part = work.path().join(format!("identity-{i}"));
        extract_limited(&mut entry, &part, MAX_IDENTITY_BYTES, true)?;
        identities.push((part, data_dir.join(name)));
    }

    // 3. Keep the current database, then put the restored one in its place.
    let db = data_dir.join(DATABASE_FILE);
    let previous = if db.is_file() {
        let keep = data_dir.join("backups").join(format!(
            "printgate-before-restore-{}.sqlite",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        if let Some(dir) = keep.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        }
        db_backup::backup_database(&db, &keep)?;
        Some(keep)
    } else {
        None
    };
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", db.display()));
        match std::fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &side, e)),
        }
    }
    std::fs::rename(&new_db, &db).map_err(|e| io("cannot write", &db, e))?;

    // 4. The identity files; one that is replaced is kept under backups/ first.
    let kept_identities = data_dir.join("backups").join(format!(
        "identity-before-restore-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    ));
    for (part, target) in identities {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        }
        if target.is_file()
            && let Ok(relative) = target.strip_prefix(data_dir)
        {
            let keep = kept_identities.join(relative);
            if let Some(dir) = keep.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
            }
            std::fs::copy(&target, &keep).map_err(|e| io("cannot keep", &target, e))?;
        }
        std::fs::rename(&part, &target).map_err(|e| io("cannot write", &target, e))?;
    }
    give_back_to_service_user(data_dir);
    Ok(Outcome {
        manifest: Manifest {
            schema_version: summary.schema_version,
            jobs: summary.jobs,
            ..manifest
        },
        previous_database: previous,
    })
}

fn load_config(config: &Path) -> Option<Config> {
    match Config::load(config) {
        Ok(c) => Some(c),
        Err(errors) => {
            eprintln!("{} is not valid:\n{errors}", config.display());
            None
        }
    }
}

/// `printgate backup --config CONFIG FILE`: exit 0 on success, 1 on failure, 2 on a bad config.
pub fn backup_cli(config: &Path, file: &Path) -> i32 {
    let Some(cfg) = load_config(config) else {
        return 2;
    };
    match backup(&cfg.data_dir, file) {
        Ok(out) => {
            let m = &out.manifest;
            println!(
                "backup written to {}: database schema {}, {} jobs, {} print files",
                file.display(),
                m.schema_version,
                m.jobs,
                m.files.len()
            );
            if !m.missing_files.is_empty() {
                eprintln!(
                    "warning: {} print file(s) were missing or damaged and are not in the backup: {}",
                    m.missing_files.len(),
                    m.missing_files.join(", ")
                );
            }
            0
        }
        Err(e) => {
            eprintln!("error: backup failed: {e}");
            1
        }
    }
}

/// `printgate restore --config CONFIG FILE`: exit 0 on success, 1 on failure, 2 on a bad config.
pub fn restore_cli(config: &Path, file: &Path) -> i32 {
    let Some(cfg) = load_config(config) else {
        return 2;
    };
    match restore(&cfg.data_dir, file) {
        Ok(out) => {
            let m = &out.manifest;
            println!(
                "restored {} (made {} by printgate {}): database schema {}, {} jobs, {} print files",
                file.display(),
                m.created_at,
                m.printgate_version,
                m.schema_version,
                m.jobs,
                m.files.len()
            );
            if let Some(prev) = &out.previous_database {
                println!("the database it replaced was kept as {}", prev.display());
            }
            0
        }
        Err(e) => {
            eprintln!("error: restore failed: {e}");
            1
        }
    }
}
