//! OctoPrint's file API over printgate's queue: `POST /api/files/local` (multipart `file`,
//! `path`, `select`, `print`, `filename`) queues a job and answers `201` with `Location` and
//! OctoPrint's body; `GET /api/files[/local]` lists the files of stored jobs as OctoPrint's
//! tree (folders with `children`); `GET /api/files/local/<path>` is one entry;
//! `POST /api/files/local/<path>` `{"command": "select"}` answers for the job at that path;
//! `/downloads/files/local/<path>` serves the bytes.
//!
//! One path shows one job: the newest upload to it (OctoPrint overwrites a file uploaded to the
//! same path; printgate keeps the older job in its history). Jobs uploaded another way are
//! listed at the root under their own name.

use super::{OctoError, Scope, octo_error};
use crate::app::Gateway;
use crate::jobs::files::{job_name_of, sanitize_display_name};
use crate::jobs::model::{Job, JobState};
use crate::jobs::threemf::{FileInfo, FileKind};
use crate::web::upload::{queue_upload, read_upload, upload_body_limit};
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// At most this many of the newest jobs are listed.
const MAX_LISTED_JOBS: u32 = 1000;
/// OctoPrint's local storage name.
const LOCAL: &str = "local";
/// What OctoPrint reads as true in form fields (`valid_boolean_trues`).
const TRUES: [&str; 4] = ["true", "yes", "y", "1"];

pub(super) fn routes(max_upload: u64) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/api/files", get(list_all))
        .route(
            "/api/files/{origin}",
            get(list_origin)
                .post(upload)
                .layer(upload_body_limit(max_upload)),
        )
        .route("/api/files/{origin}/{*path}", get(details).post(command))
        .route("/downloads/files/{origin}/{*path}", get(download))
}

#[derive(Deserialize)]
struct Origin {
    origin: String,
}

#[derive(Deserialize)]
struct FilePath {
    origin: String,
    path: String,
}

#[derive(Deserialize, Default)]
struct ListQuery {
    recursive: Option<String>,
}

fn is_true(v: &str) -> bool {
    TRUES.contains(&v.trim().to_ascii_lowercase().as_str())
}

/// A job as a file of the tree.
#[derive(Debug, Clone)]
pub(super) struct TreeFile {
    pub job_id: i64,
    /// `''` or `a/b`.
    pub folder: String,
    pub name: String,
    pub size: Option<u64>,
    /// Unix seconds of the upload.
    pub date: i64,
    pub kind: Option<FileKind>,
    pub sha256: String,
    pub plate: u32,
    pub state: String,
    pub user: String,
}

impl TreeFile {
    pub fn path(&self) -> String {
        join(&self.folder, &self.name)
    }

    /// `{base}/api/files/local/<path>`.
    pub fn resource(&self, base: &str) -> String {
        format!("{base}/api/files/{LOCAL}/{}", encode_path(&self.path()))
    }

    fn download(&self, base: &str) -> String {
        format!(
            "{base}/downloads/files/{LOCAL}/{}",
            encode_path(&self.path())
        )
    }

    /// The file's entry as OctoPrint lists it.
    fn entry(&self, gw: &Gateway, base: &str) -> Value {
        let type_path = match self.kind {
            Some(FileKind::ThreeMf) => json!(["machinecode", "3mf"]),
            _ => json!(["machinecode", "gcode"]),
        };
        let mut e = json!({
            "name": self.name,
            "display": self.name,
            "path": self.path(),
            "type": "machinecode",
            "typePath": type_path,
            "origin": LOCAL,
            "date": self.date,
            "refs": { "resource": self.resource(base), "download": self.download(base) },
            "printgate": { "job": self.job_id, "state": self.state, "uploadedBy": self.user },
        });
        if let Some(size) = self.size {
            e["size"] = json!(size);
        }
        let (estimate, filament) = analysis(gw, &self.sha256, self.plate);
        if estimate.is_some() || !filament.is_null() {
            e["gcodeAnalysis"] = json!({ "estimatedPrintTime": estimate, "filament": filament });
        }
        let done = matches!(self.state.as_str(), "finished" | "failed" | "cancelled");
        if done {
            let success = self.state == "finished";
            e["prints"] = json!({
                "success": u32::from(success),
                "failure": u32::from(!success),
                "last": { "success": success, "date": self.date },
            });
        }
        e
    }
}

/// The print time estimate (seconds) and OctoPrint's `filament` map (`tool<N>` → length in
/// mm) of a stored file's plate, from what the 3MF's slicer recorded.
pub(super) fn analysis(gw: &Gateway, sha256: &str, plate: u32) -> (Option<f64>, Value) {
    let Ok(Some(stored)) = gw.files.info(sha256) else {
        return (None, Value::Null);
    };
    let FileInfo::ThreeMf(info) = &stored.info else {
        return (None, Value::Null);
    };
    let Some(p) = info.plate(plate) else {
        return (None, Value::Null);
    };
    let tools: serde_json::Map<String, Value> = p
        .filaments
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            f.used_m.map(|m| {
                (
                    format!("tool{i}"),
                    json!({ "length": m * 1000.0, "volume": null }),
                )
            })
        })
        .collect();
    let filament = if tools.is_empty() {
        Value::Null
    } else {
        Value::Object(tools)
    };
    (p.prediction_secs.map(|s| s as f64), filament)
}

/// The tree file of a job (its upload path, or its name at the root).
pub(super) fn tree_file_of(gw: &Gateway, job: &Job) -> TreeFile {
    let stored = gw.files.info(&job.file_sha256).ok().flatten();
    let kind = stored.as_ref().map(|s| s.kind);
    let (folder, name) = gw
        .store
        .octoprint_path_of(job.id)
        .ok()
        .flatten()
        .unwrap_or_else(|| (String::new(), default_name(&job.name, kind)));
    TreeFile {
        job_id: job.id,
        folder,
        name,
        size: stored.map(|s| s.size),
        date: i64::try_from(job.created_at / 1000).unwrap_or(0),
        kind,
        sha256: job.file_sha256.clone(),
        plate: job.plate,
        state: job.state.as_str().to_string(),
        user: job.created_by.clone(),
    }
}

fn default_name(job_name: &str, kind: Option<FileKind>) -> String {
    format!(
        "{job_name}{}",
        kind.map_or(FileKind::ThreeMf.suffix(), |k| k.suffix())
    )
}

/// Every path's newest job, newest first.
fn tree_files(gw: &Gateway) -> Result<Vec<TreeFile>, OctoError> {
    let rows = gw
        .store
        .octoprint_files(MAX_LISTED_JOBS)
        .map_err(|e| OctoError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for r in rows {
        let kind = r.kind.as_deref().and_then(FileKind::parse);
        let (folder, name) = match (r.folder, r.name) {
            (Some(f), Some(n)) => (f, n),
            _ => (String::new(), default_name(&r.job_name, kind)),
        };
        let f = TreeFile {
            job_id: r.job_id,
            folder,
            name,
            size: r.size,
            date: r.created_at_ms / 1000,
            kind,
            sha256: r.file_sha256,
            plate: r.plate,
            state: r.state,
            user: r.created_by,
        };
        if seen.insert(f.path()) {
            out.push(f);
        }
    }
    Ok(out)
}

/// A folder of the tree being built.
#[derive(Default)]
struct Folder {
    files: Vec<Value>,
    folders: BTreeMap<String, Folder>,
    size: u64,
    date: i64,
}

impl Folder {
    fn insert(&mut self, parts: &[&str], entry: Value, size: u64, date: i64) {
        self.size += size;
        self.date = self.date.max(date);
        match parts.split_first() {
            None => self.files.push(entry),
            Some((first, rest)) => self
                .folders
                .entry((*first).to_string())
                .or_default()
                .insert(rest, entry, size, date),
        }
    }

    /// The folder's children as OctoPrint lists them; `depth` levels of sub-folders keep their
    /// children (OctoPrint's non-recursive listing shows one level).
    fn children(&self, path: &str, base: &str, depth: usize) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .folders
            .iter()
            .map(|(name, f)| f.entry(name, &join(path, name), base, depth))
            .collect();
        out.extend(self.files.iter().cloned());
        out
    }

    fn entry(&self, name: &str, path: &str, base: &str, depth: usize) -> Value {
        let children = if depth == 0 {
            Vec::new()
        } else {
            self.children(path, base, depth - 1)
        };
        json!({
            "name": name,
            "display": name,
            "path": path,
            "type": "folder",
            "typePath": ["folder"],
            "origin": LOCAL,
            "date": self.date,
            "size": self.size,
            "children": children,
            "refs": { "resource": format!("{base}/api/files/{LOCAL}/{}", encode_path(path)) },
        })
    }

    fn find(&self, parts: &[&str]) -> Option<&Folder> {
        match parts.split_first() {
            None => Some(self),
            Some((first, rest)) => self.folders.get(*first)?.find(rest),
        }
    }
}

fn tree(gw: &Gateway, base: &str) -> Result<Folder, OctoError> {
    let mut root = Folder::default();
    for f in tree_files(gw)? {
        let parts: Vec<&str> = f.folder.split('/').filter(|p| !p.is_empty()).collect();
        root.insert(&parts, f.entry(gw, base), f.size.unwrap_or(0), f.date);
    }
    Ok(root)
}

fn listing(gw: &Gateway, scope: &Scope, q: &ListQuery) -> Response {
    let root = match tree(gw, &scope.base) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let recursive = q.recursive.as_deref().is_some_and(is_true);
    let files = root.children("", &scope.base, if recursive { usize::MAX } else { 1 });
    let (free, total) = disk_space(gw);
    Json(json!({ "files": files, "free": free, "total": total })).into_response()
}

/// Free and total bytes of the disk holding the stored files.
fn disk_space(gw: &Gateway) -> (Option<u64>, Option<u64>) {
    let Ok(path) = std::ffi::CString::new(gw.files.dir().as_os_str().as_encoded_bytes()) else {
        return (None, None);
    };
    // SAFETY: `statvfs` only writes into the zeroed struct we pass; `path` is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
        return (None, None);
    }
    let block = s.f_frsize as u64;
    (
        Some((s.f_bavail as u64).saturating_mul(block)),
        Some((s.f_blocks as u64).saturating_mul(block)),
    )
}

async fn list_all(
    State(gw): State<Arc<Gateway>>,
    scope: Scope,
    Query(q): Query<ListQuery>,
) -> Response {
    listing(&gw, &scope, &q)
}

async fn list_origin(
    State(gw): State<Arc<Gateway>>,
    scope: Scope,
    Path(o): Path<Origin>,
    Query(q): Query<ListQuery>,
) -> Response {
    match o.origin.as_str() {
        LOCAL => listing(&gw, &scope, &q),
        "sdcard" => Json(json!({ "files": [] })).into_response(),
        _ => not_found_origin(&o.origin).into_response(),
    }
}

fn not_found_origin(origin: &str) -> OctoError {
    OctoError::new(
        StatusCode::NOT_FOUND,
        format!("unknown storage {origin:?}: printgate stores files in \"local\""),
    )
}

/// The entry at `path`: a file (the newest job uploaded there) or a folder.
fn lookup(
    gw: &Gateway,
    base: &str,
    path: &str,
) -> Result<Option<(Value, Option<TreeFile>)>, OctoError> {
    let path = path.trim_matches('/');
    if let Some(f) = tree_files(gw)?.into_iter().find(|f| f.path() == path) {
        return Ok(Some((f.entry(gw, base), Some(f))));
    }
    let root = tree(gw, base)?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((name, _)) = parts.split_last() else {
        return Ok(None);
    };
    Ok(root
        .find(&parts)
        .map(|folder| (folder.entry(name, path, base, 1), None)))
}

async fn details(
    State(gw): State<Arc<Gateway>>,
    scope: Scope,
    Path(p): Path<FilePath>,
) -> Response {
    if p.origin != LOCAL {
        return not_found_origin(&p.origin).into_response();
    }
    match lookup(&gw, &scope.base, &p.path) {
        Ok(Some((entry, _))) => Json(entry).into_response(),
        Ok(None) => no_such_file(&p.path).into_response(),
        Err(r) => r.into_response(),
    }
}

fn no_such_file(path: &str) -> OctoError {
    OctoError::new(
        StatusCode::NOT_FOUND,
        format!("File not found: no upload at {path:?}"),
    )
}

/// The file (not folder) at `origin`/`path`, or OctoPrint's 404.
fn file_at(gw: &Gateway, base: &str, p: &FilePath) -> Result<TreeFile, OctoError> {
    if p.origin != LOCAL {
        return Err(OctoError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown storage {:?}: printgate stores files in \"local\"",
                p.origin
            ),
        ));
    }
    match lookup(gw, base, &p.path)? {
        Some((_, Some(f))) => Ok(f),
        _ => Err(no_such_file(&p.path)),
    }
}

/// `GET /downloads/files/local/<path>`: the stored bytes of the file at `path`.
async fn download(
    State(gw): State<Arc<Gateway>>,
    scope: Scope,
    Path(p): Path<FilePath>,
) -> Response {
    let file = match file_at(&gw, &scope.base, &p) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let Some(disk) = gw.files.path_of(&file.sha256) else {
        return no_such_file(&p.path).into_response();
    };
    match tokio::fs::File::open(&disk).await {
        Ok(f) => {
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
            let disposition = format!(
                "attachment; filename*=UTF-8''{}",
                crate::web::urlencode(&file.name)
            );
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                body,
            )
                .into_response()
        }
        Err(_) => no_such_file(&p.path).into_response(),
    }
}

#[derive(Deserialize)]
struct FileCommand {
    command: String,
    #[serde(default)]
    print: Option<Value>,
}

/// `POST /api/files/local/<path>`: `select` (with or without `print`) answers for the job at
/// that path: a job waiting in the queue is already selected (`204`; with `print` it still
/// waits for Plate clear); a job that ended or is printing cannot be selected (`409`).
async fn command(
    State(gw): State<Arc<Gateway>>,
    scope: Scope,
    Path(p): Path<FilePath>,
    body: Result<Json<FileCommand>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(cmd)) = body else {
        return octo_error(
            StatusCode::BAD_REQUEST,
            "Malformed JSON body or wrong content type in request: send {\"command\": \"select\"}",
        );
    };
    let file = match file_at(&gw, &scope.base, &p) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    if cmd.command != "select" {
        return octo_error(
            StatusCode::BAD_REQUEST,
            format!(
                "command {:?} is not supported by printgate; use \"select\" (printgate queues every upload)",
                cmd.command
            ),
        );
    }
    let _print = cmd.print.as_ref().is_some_and(|v| match v {
        Value::Bool(b) => *b,
        Value::String(s) => is_true(s),
        _ => false,
    });
    let state = gw
        .dispatcher
        .state()
        .jobs
        .get(&file.job_id)
        .map(|j| j.state);
    match state {
        Some(s) if s.is_pre_start() => StatusCode::NO_CONTENT.into_response(),
        Some(JobState::Starting | JobState::Printing) => octo_error(
            StatusCode::CONFLICT,
            "Printer is already printing this file",
        ),
        other => octo_error(
            StatusCode::CONFLICT,
            format!(
                "the job of {:?} is {}; to print it again use Start again in printgate's history: it starts after a new Plate clear tap",
                file.path(),
                other.map_or(file.state.as_str(), |s| s.as_str())
            ),
        ),
    }
}

/// A folder path from a client: `/`-separated, each element cleaned like a file name, `.`
/// and empty elements dropped; `..` is refused.
fn clean_folder(raw: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for part in raw.split(['/', '\\']) {
        let part = part.trim();
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "the path {raw:?} leaves the upload folder (\"..\")"
                ));
            }
            p => {
                let clean: String = p
                    .chars()
                    .filter(|c| !c.is_control() && !";|&?$*<>\"".contains(*c))
                    .collect();
                let clean = clean.trim().trim_start_matches('.').trim().to_string();
                if !clean.is_empty() {
                    out.push(clean.chars().take(100).collect::<String>());
                }
            }
        }
    }
    Ok(out.join("/"))
}

fn join(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_string()
    } else {
        format!("{folder}/{name}")
    }
}

/// Percent-encode each element of a path (the `/` between them kept).
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(crate::web::urlencode)
        .collect::<Vec<_>>()
        .join("/")
}

/// `POST /api/files/local`: store and queue the upload (see the module doc).
async fn upload(
    State(gw): State<Arc<Gateway>>,
    scope: Scope,
    Path(o): Path<Origin>,
    mp: Multipart,
) -> Response {
    if o.origin != LOCAL {
        return match o.origin.as_str() {
            "sdcard" => octo_error(
                StatusCode::NOT_FOUND,
                "printgate has no SD card storage: upload to /api/files/local",
            ),
            other => not_found_origin(other).into_response(),
        };
    }
    let mut form = match read_upload(&gw, mp).await {
        Ok(f) => f,
        Err(e) => return octo_error(e.status, e.message),
    };
    let field = |name: &str| {
        form.extra
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let (path, select, print, filename, foldername) = (
        field("path"),
        field("select").is_some_and(|v| is_true(&v)),
        field("print").is_some_and(|v| is_true(&v)),
        field("filename"),
        field("foldername"),
    );
    let Some(stored) = form.stored.clone() else {
        if foldername.is_some() {
            return octo_error(
                StatusCode::BAD_REQUEST,
                "printgate makes folders as files are uploaded into them: send the file with the folder in the \"path\" field",
            );
        }
        return octo_error(
            StatusCode::BAD_REQUEST,
            "No file to upload: send the sliced file in the multipart field \"file\"",
        );
    };
    // The folder: the `path` field, else a folder in the file name (OctoPrint splits it off).
    let sent_name = filename
        .or_else(|| form.file_name.clone())
        .unwrap_or_default();
    let (name_folder, _) = sent_name
        .rsplit_once(['/', '\\'])
        .unwrap_or(("", sent_name.as_str()));
    let folder = match clean_folder(
        path.as_deref()
            .filter(|p| !p.trim().is_empty())
            .unwrap_or(name_folder),
    ) {
        Ok(f) => f,
        Err(why) => {
            let _ = gw.files.release(&stored.sha256).await;
            return octo_error(
                StatusCode::BAD_REQUEST,
                format!("{why}; nothing was stored"),
            );
        }
    };
    let name = sanitize_display_name(&sent_name, stored.kind);
    if let Some(s) = form.stored.as_mut() {
        s.display_name = name.clone();
    }
    let user = scope.actor.0.clone();
    if form.printer.is_none() {
        form.printer = scope.upload_printer();
    }
    let job = match queue_upload(&gw, form, &user).await {
        Ok((job, _)) => job,
        Err(e) => {
            let status = match e.status {
                s @ (StatusCode::UNSUPPORTED_MEDIA_TYPE
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::NOT_FOUND
                | StatusCode::CONFLICT) => s,
                s if s.is_server_error() => s,
                _ => StatusCode::BAD_REQUEST,
            };
            return octo_error(status, e.message);
        }
    };
    if let Err(e) = gw.store.record_octoprint_path(
        job.id,
        &folder,
        &name,
        i64::try_from(gw.dispatcher.now()).unwrap_or(i64::MAX),
    ) {
        tracing::warn!(job = job.id, "could not record the upload path: {e}");
    }
    let file = tree_file_of(&gw, &job);
    let location = file.resource(&scope.base);
    let target = job
        .assigned_printer
        .clone()
        .or(match &job.target {
            crate::jobs::model::Target::Printer(p) => Some(p.clone()),
            crate::jobs::model::Target::AnyCompatible => None,
        })
        .unwrap_or_else(|| "the first free compatible printer".into());
    let body = json!({
        "done": true,
        "files": { LOCAL: {
            "name": file.name,
            "display": file.name,
            "path": file.path(),
            "origin": LOCAL,
            "refs": { "resource": location, "download": file.download(&scope.base) },
        }},
        // Queued (OctoPrint's "selected"), never printing: the job waits for Plate clear.
        "effectiveSelect": select || print,
        "effectivePrint": false,
        "printgate": {
            "job": job.id,
            "name": job.name,
            "state": job.state.as_str(),
            "message": format!(
                "{} is queued for {target}; it starts only after Plate clear is tapped on printgate",
                job_name_of(&file.name)
            ),
        },
    });
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_cleaned_and_never_leave_the_tree() {
        assert_eq!(clean_folder("").unwrap(), "");
        assert_eq!(clean_folder("/a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(clean_folder("win\\dir").unwrap(), "win/dir");
        assert_eq!(clean_folder(".hidden/x;|y").unwrap(), "hidden/xy");
        assert!(clean_folder("a/../../etc").is_err());
        assert_eq!(encode_path("my parts/a b.gcode"), "my%20parts/a%20b.gcode");
    }
}
