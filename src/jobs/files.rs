//! Content-addressed print-file store under `<data_dir>/files/`.
//!
//! An upload streams into `files/tmp/` while being hashed (SHA-256) and counted (the size limit
//! aborts it early), is inspected ([`super::threemf`], on a blocking thread), then renamed
//! atomically to `files/<sha256>` (fsynced) and recorded in SQLite with a reference count. Any
//! failure removes the temporary file and records nothing. A stored file no job refers to (a
//! request refused after its file part, a client gone before its job was made) is removed by
//! [`FileStore::sweep_unreferenced`]: at start and every [`SWEEP_EVERY`], once it has been left
//! alone for [`UPLOAD_GRACE`]; a file a job refers to is never removed. User-supplied names are
//! never used as paths: they are sanitised into a display name, and the name used on a printer
//! comes from [`remote_name_for`].

use super::threemf::{self, FileError, FileInfo, FileKind, ZipLimits};
use crate::store::Store;
use crate::store::files::{FileRelease, FileRow};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Default largest upload in bytes (`web.max_upload_mb`, 512 MiB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = crate::config::DEFAULT_MAX_UPLOAD_MB * 1024 * 1024;

/// A stored file no job refers to is kept this long after it was last uploaded, so the request
/// that brought it can still make its job (its other form fields may arrive after the file).
pub const UPLOAD_GRACE: Duration = Duration::from_secs(3600);

/// How often the gateway looks for stored files no job refers to.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Size limits of stored files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// Largest upload accepted, in bytes (enforced while streaming).
    pub max_file_bytes: u64,
    /// Archive limits for 3MF inspection.
    pub zip: ZipLimits,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            zip: ZipLimits::default(),
        }
    }
}

/// A stored file as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFile {
    /// Lower-case hex SHA-256 of the content; also its file name in the store.
    pub sha256: String,
    pub size: u64,
    pub kind: FileKind,
    /// Sanitised name for people: this upload's name (the stored row keeps the first upload's
    /// name when content repeats; each job keeps the name it was uploaded with).
    pub display_name: String,
    pub info: FileInfo,
    pub refcount: u32,
    /// Unix seconds of the first upload.
    pub created_at: i64,
}

/// Longest display name kept, in characters (suffix included).
pub const MAX_DISPLAY_NAME_CHARS: usize = 120;

/// The content-addressed store.
pub struct FileStore {
    dir: PathBuf,
    tmp: PathBuf,
    store: Arc<Store>,
    limits: FileLimits,
    /// Serialises "rename + record" against "release + delete" so a file is never deleted
    /// under a concurrent upload of the same content.
    commit: tokio::sync::Mutex<()>,
    /// When each hash was last uploaded or acquired in this process (for [`UPLOAD_GRACE`]).
    touched: std::sync::Mutex<HashMap<String, Instant>>,
}

impl FileStore {
    /// Open the store in `<data_dir>/files/`, creating it; clears leftovers of interrupted
    /// uploads in `files/tmp/`, content files no row refers to and files no job refers to
    /// (nothing is being uploaded yet, so no grace applies).
    pub fn new(
        data_dir: &Path,
        store: Arc<Store>,
        limits: FileLimits,
    ) -> Result<FileStore, FileError> {
        let dir = data_dir.join("files");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| io_error("creating the files directory", &e))?;
        let fs = FileStore {
            dir,
            tmp,
            store,
            limits,
            commit: tokio::sync::Mutex::new(()),
            touched: std::sync::Mutex::new(HashMap::new()),
        };
        fs.clean_leftovers()?;
        Ok(fs)
    }

    /// `<data_dir>/files`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> &FileLimits {
        &self.limits
    }

    /// Store an upload given as a byte reader. On success the file holds one more reference
    /// (a new file starts at 1). See the module doc for the steps.
    pub async fn ingest<R: AsyncRead + Unpin>(
        &self,
        original_name: &str,
        mut body: R,
    ) -> Result<StoredFile, FileError> {
        let kind = FileKind::from_name(original_name)?;
        let mut upload = Upload::start(&self.tmp, self.limits.max_file_bytes).await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body
                .read(&mut buf)
                .await
                .map_err(|e| FileError::UploadInterrupted {
                    detail: e.to_string(),
                })?;
            if n == 0 {
                break;
            }
            upload.write(buf.get(..n).unwrap_or_default()).await?;
        }
        self.finish(original_name, kind, upload).await
    }

    /// Store an upload given as a stream of chunks (e.g. an HTTP body or multipart field). A
    /// chunk error says why the stream ended ([`FileError::UploadInterrupted`], or
    /// [`FileError::TooLarge`] when the transport's own limit cut it).
    pub async fn ingest_stream<S, B, E>(
        &self,
        original_name: &str,
        mut body: S,
    ) -> Result<StoredFile, FileError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: Into<FileError>,
    {
        let kind = FileKind::from_name(original_name)?;
        let mut upload = Upload::start(&self.tmp, self.limits.max_file_bytes).await?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Into::into)?;
            upload.write(chunk.as_ref()).await?;
        }
        self.finish(original_name, kind, upload).await
    }

    async fn finish(
        &self,
        original_name: &str,
        kind: FileKind,
        upload: Upload,
    ) -> Result<StoredFile, FileError> {
        let (temp, sha256, size) = upload.close().await?;
        if size == 0 {
            return Err(FileError::Empty);
        }
        let path = temp.path().to_path_buf();
        let zip_limits = self.limits.zip;
        let info = tokio::task::spawn_blocking(move || {
            let file =
                std::fs::File::open(&path).map_err(|e| io_error("reopening the upload", &e))?;
            threemf::inspect_file(kind, std::io::BufReader::new(file), &zip_limits)
        })
        .await
        .map_err(|e| FileError::Io {
            detail: format!("the file check stopped unexpectedly: {e}"),
        })??;
        let info_json = serde_json::to_string(&info).map_err(|e| FileError::Database {
            detail: format!("encoding the file info: {e}"),
        })?;
        let row = FileRow {
            sha256: sha256.clone(),
            size,
            kind: kind.as_str().to_string(),
            display_name: sanitize_display_name(original_name, kind),
            info_json,
            refcount: 0,
            created_at: chrono::Utc::now().timestamp(),
        };

        let _guard = self.commit.lock().await;
        let dest = self.dir.join(&sha256);
        let created = if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            drop(temp);
            false
        } else {
            tokio::fs::rename(temp.path(), &dest)
                .await
                .map_err(|e| io_error("moving the upload into the store", &e))?;
            temp.disarm();
            if let Err(e) = sync_dir(&self.dir).await {
                remove_quietly(&dest).await;
                return Err(e);
            }
            true
        };
        let display_name = row.display_name.clone();
        match self.store.file_insert_or_acquire(&row) {
            Ok(stored) => {
                self.touch(&stored.sha256);
                to_stored(stored).map(|s| StoredFile { display_name, ..s })
            }
            Err(e) => {
                if created {
                    remove_quietly(&dest).await;
                }
                Err(db_error(e))
            }
        }
    }

    /// Add a reference (a job starts using the file). Returns the new count.
    pub async fn acquire(&self, sha256: &str) -> Result<u32, FileError> {
        let sha = valid_sha(sha256)?;
        let _guard = self.commit.lock().await;
        let count = self
            .store
            .file_acquire(sha)
            .map_err(db_error)?
            .ok_or_else(|| not_found(sha))?;
        self.touch(sha);
        Ok(count)
    }

    fn touch(&self, sha256: &str) {
        if let Ok(mut touched) = self.touched.lock() {
            touched.insert(sha256.to_string(), Instant::now());
        }
    }

    /// Remove every stored file no job refers to that was not uploaded or acquired in the last
    /// `grace` (rows and bytes), and content files no row refers to. A file a job refers to is
    /// never removed. Returns how many files were removed.
    pub async fn sweep_unreferenced(&self, grace: Duration) -> Result<usize, FileError> {
        let _guard = self.commit.lock().await;
        let recent: std::collections::HashSet<String> = match self.touched.lock() {
            Ok(mut touched) => {
                touched.retain(|_, at| at.elapsed() < grace);
                touched.keys().cloned().collect()
            }
            Err(_) => return Ok(0),
        };
        let mut removed = 0;
        for sha in self.store.files_without_job().map_err(db_error)? {
            if recent.contains(&sha) || !self.store.file_delete_if_unused(&sha).map_err(db_error)? {
                continue;
            }
            tracing::info!(sha256 = %sha, "removing a stored file no job refers to");
            remove_quietly(&self.dir.join(&sha)).await;
            removed += 1;
        }
        removed += self.remove_rowless_content()?;
        if removed > 0 {
            let _ = sync_dir(&self.dir).await;
        }
        Ok(removed)
    }

    /// Drop a reference. At 0 the row and the bytes are deleted, unless a job row still refers
    /// to the file (then both stay). Returns the remaining count.
    pub async fn release(&self, sha256: &str) -> Result<u32, FileError> {
        let sha = valid_sha(sha256)?;
        let _guard = self.commit.lock().await;
        match self.store.file_release(sha).map_err(db_error)? {
            None => Err(not_found(sha)),
            Some(FileRelease::Remaining(n)) => Ok(n),
            Some(FileRelease::StillReferenced) => {
                tracing::info!(
                    sha256 = sha,
                    "file unreferenced but still used by a job; kept"
                );
                Ok(0)
            }
            Some(FileRelease::Deleted) => {
                match tokio::fs::remove_file(self.dir.join(sha)).await {
                    Ok(()) => {
                        let _ = sync_dir(&self.dir).await;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(sha256 = sha, "could not delete a released file: {e}"),
                }
                Ok(0)
            }
        }
    }

    /// Path of the stored bytes, if `sha256` is a well-formed hash and the file exists.
    pub fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        let sha = valid_sha(sha256).ok()?;
        let path = self.dir.join(sha);
        path.is_file().then_some(path)
    }

    /// The recorded file.
    pub fn info(&self, sha256: &str) -> Result<Option<StoredFile>, FileError> {
        let sha = valid_sha(sha256)?;
        match self.store.file_get(sha).map_err(db_error)? {
            None => Ok(None),
            Some(row) => to_stored(row).map(Some),
        }
    }

    /// PNG thumbnail of `plate` of a stored 3MF, if it has one.
    pub async fn thumbnail(&self, sha256: &str, plate: u32) -> Option<Vec<u8>> {
        let path = self.path_of(sha256)?;
        let limits = self.limits.zip;
        let result = tokio::task::spawn_blocking(move || {
            let file =
                std::fs::File::open(&path).map_err(|e| io_error("opening a stored file", &e))?;
            threemf::read_thumbnail(std::io::BufReader::new(file), plate, &limits)
        })
        .await;
        match result {
            Ok(Ok(png)) => png,
            Ok(Err(e)) => {
                tracing::warn!(sha256, plate, "thumbnail unreadable: {e}");
                None
            }
            Err(_) => None,
        }
    }

    fn clean_leftovers(&self) -> Result<(), FileError> {
        let entries =
            std::fs::read_dir(&self.tmp).map_err(|e| io_error("listing files/tmp", &e))?;
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        for sha in self.store.files_without_job().map_err(db_error)? {
            if self.store.file_delete_if_unused(&sha).map_err(db_error)? {
                tracing::info!(sha256 = %sha, "removing a stored file no job refers to");
                let _ = std::fs::remove_file(self.dir.join(&sha));
            }
        }
        self.remove_rowless_content()?;
        Ok(())
    }

    /// Remove content files no row refers to; how many.
    fn remove_rowless_content(&self) -> Result<usize, FileError> {
        let known: std::collections::HashSet<String> = self
            .store
            .file_hashes()
            .map_err(db_error)?
            .into_iter()
            .collect();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error("listing files", &e))?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(name) = name.to_str()
                && valid_sha(name).is_ok()
                && !known.contains(name)
            {
                tracing::info!(sha256 = name, "removing a stored file no row refers to");
                if std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// The ASCII name (`[A-Za-z0-9._-]`, ≤ 64 characters) a job's file gets on the printer,
/// e.g. `pg-000418.gcode.3mf` (docs/bambu-protocol.md §7.2).
pub fn remote_name_for(job_id: u64, kind: FileKind) -> String {
    format!("pg-{job_id:06}{}", kind.suffix())
}

/// A safe display name from a user-supplied file name: directories, `..`, NUL and control
/// characters (and bidi overrides) removed, length limited to [`MAX_DISPLAY_NAME_CHARS`], with a
/// `.gcode.3mf` / `.3mf` / `.gcode` suffix matching `kind`. Never used as a path.
pub fn sanitize_display_name(original: &str, kind: FileKind) -> String {
    let base = original.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let lower = cleaned.to_ascii_lowercase();
    let suffix = match kind {
        FileKind::ThreeMf if lower.ends_with(".gcode.3mf") => ".gcode.3mf",
        FileKind::ThreeMf if lower.ends_with(".3mf") => ".3mf",
        FileKind::ThreeMf => ".gcode.3mf",
        FileKind::Gcode => threemf::GCODE_SUFFIXES
            .into_iter()
            .find(|s| lower.ends_with(s))
            .unwrap_or(".gcode"),
    };
    let stem_chars = if lower.ends_with(suffix) {
        cleaned.chars().count().saturating_sub(suffix.len())
    } else {
        cleaned.chars().count()
    };
    let stem: String = cleaned.chars().take(stem_chars).collect();
    let stem = stem.trim().trim_start_matches('.').trim();
    let stem = if stem.is_empty() || stem.chars().all(|c| c == '.') {
        "upload"
    } else {
        stem
    };
    let keep = MAX_DISPLAY_NAME_CHARS - suffix.len();
    let stem: String = stem.chars().take(keep).collect();
    format!("{}{suffix}", stem.trim_end())
}

/// A display name without its print-file suffix (`.gcode.3mf`, `.3mf`, `.gcode`, `.gco`, `.g`):
/// the name a job is shown under.
pub fn job_name_of(display_name: &str) -> &str {
    let lower = display_name.to_ascii_lowercase();
    [".gcode.3mf", ".3mf"]
        .into_iter()
        .chain(threemf::GCODE_SUFFIXES)
        .find(|s| lower.ends_with(s) && lower.len() > s.len())
        .and_then(|s| display_name.get(..display_name.len() - s.len()))
        .unwrap_or(display_name)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

fn valid_sha(sha: &str) -> Result<&str, FileError> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(sha)
    } else {
        Err(not_found(sha))
    }
}

fn not_found(sha: &str) -> FileError {
    FileError::NotFound {
        sha256: threemf::printable(sha, 64),
    }
}

fn to_stored(row: FileRow) -> Result<StoredFile, FileError> {
    let kind = FileKind::parse(&row.kind).ok_or_else(|| FileError::Database {
        detail: format!("stored file {} has an unknown kind", row.sha256),
    })?;
    let info = serde_json::from_str(&row.info_json).map_err(|e| FileError::Database {
        detail: format!("stored info of file {} is unreadable: {e}", row.sha256),
    })?;
    Ok(StoredFile {
        sha256: row.sha256,
        size: row.size,
        kind,
        display_name: row.display_name,
        info,
        refcount: row.refcount,
        created_at: row.created_at,
    })
}

fn db_error(e: crate::store::StoreError) -> FileError {
    FileError::Database {
        detail: e.to_string(),
    }
}

/// Map an I/O error, recognising a full disk.
fn io_error(doing: &str, e: &std::io::Error) -> FileError {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    if e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(ENOSPC) | Some(EDQUOT))
    {
        FileError::DiskFull {
            detail: format!("{doing}: {e}"),
        }
    } else {
        FileError::Io {
            detail: format!("{doing}: {e}"),
        }
    }
}

async fn sync_dir(dir: &Path) -> Result<(), FileError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
        .await
        .map_err(|e| FileError::Io {
            detail: format!("syncing the files directory: {e}"),
        })?
        .map_err(|e| io_error("syncing the files directory", &e))
}

async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), "could not remove a file: {e}");
    }
}

/// A temporary file in `files/tmp/` that is removed when dropped unless disarmed (also when
/// the upload future is cancelled).
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An upload in progress: temp file, running hash and byte count.
struct Upload {
    temp: TempFile,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Upload {
    async fn start(tmp: &Path, limit: u64) -> Result<Upload, FileError> {
        let name = format!(
            "upload-{:016x}{:016x}.part",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let path = tmp.join(name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_error("creating a temporary file", &e))?;
        Ok(Upload {
            temp: TempFile { path, armed: true },
            file,
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), FileError> {
        let new_size = self.size.saturating_add(chunk.len() as u64);
        if new_size > self.limit {
            return Err(FileError::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| io_error("writing the upload", &e))?;
        self.size = new_size;
        Ok(())
    }

    /// Flush and fsync; the temp file (still armed), the hex hash and the size.
    async fn close(mut self) -> Result<(TempFile, String, u64), FileError> {
        self.file
            .flush()
            .await
            .map_err(|e| io_error("writing the upload", &e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| io_error("syncing the upload to disk", &e))?;
        drop(self.file);
        Ok((self.temp, hex::encode(self.hasher.finalize()), self.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_drop_the_suffix() {
        assert_eq!(job_name_of("lid_v2.gcode.3mf"), "lid_v2");
        assert_eq!(job_name_of("lid.3MF"), "lid");
        assert_eq!(job_name_of("cube.gco"), "cube");
        assert_eq!(job_name_of("cube.g"), "cube");
        assert_eq!(job_name_of("cube.gcode"), "cube");
        assert_eq!(job_name_of(".gcode"), ".gcode");
        assert_eq!(
            sanitize_display_name("cube.GCO", FileKind::Gcode),
            "cube.gco"
        );
    }

    #[test]
    fn display_names_are_sanitised() {
        let k = FileKind::ThreeMf;
        assert_eq!(
            sanitize_display_name("lid_v2.gcode.3mf", k),
            "lid_v2.gcode.3mf"
        );
        assert_eq!(
            sanitize_display_name("../../etc/passwd.gcode.3mf", k),
            "passwd.gcode.3mf"
        );
        assert_eq!(sanitize_display_name("/abs/x.3mf", k), "x.3mf");
        assert_eq!(
            sanitize_display_name("C:\\Users\\a\\b.gcode.3mf", k),
            "b.gcode.3mf"
        );
        assert_eq!(
            sanitize_display_name("a\0b\nc.gcode.3mf", k),
            "abc.gcode.3mf"
        );
        assert_eq!(sanitize_display_name("...gcode.3mf", k), "upload.gcode.3mf");
        assert_eq!(sanitize_display_name("..", k), "upload.gcode.3mf");
        assert_eq!(
            sanitize_display_name("evil\u{202E}fdp.gcode", FileKind::Gcode),
            "evilfdp.gcode"
        );
        let long = format!("{}.gcode.3mf", "é".repeat(500));
        let s = sanitize_display_name(&long, k);
        assert_eq!(s.chars().count(), MAX_DISPLAY_NAME_CHARS);
        assert!(s.ends_with(".gcode.3mf"));
    }

    #[test]
    fn remote_names_are_printer_safe() {
        assert_eq!(
            remote_name_for(418, FileKind::ThreeMf),
            "pg-000418.gcode.3mf"
        );
        let n = remote_name_for(u64::MAX, FileKind::ThreeMf);
        assert!(n.len() <= 64);
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
    }

    #[test]
    fn full_disk_is_named() {
        let e = std::io::Error::from_raw_os_error(28);
        let msg = io_error("writing the upload", &e).to_string();
        assert!(msg.contains("no space left on the gateway's disk"), "{msg}");
        assert!(msg.contains("free space or lower the size limit"), "{msg}");
    }
}
