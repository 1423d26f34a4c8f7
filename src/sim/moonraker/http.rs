//! The simulated Moonraker's HTTP API (the part printgate uses): `POST /server/files/upload`
//! (multipart `file`, optional `root`, `path`, `checksum`, `print`), `GET /server/files/list`,
//! `GET /server/info`, `DELETE /server/files/gcodes/{path}`. Behaviour follows Moonraker's
//! `FileUploadHandler` (application.py) and `finalize_upload` (file_manager.py): 201 with the
//! uploaded item and a `Location` header, 422 on a checksum mismatch, 400 without a multipart
//! file name, 403 when the file is the one being printed, 500 "Unable to save file" when the disk
//! is full, 401 without the API key. Errors use Moonraker's body shape
//! `{"error": {"code", "message", "traceback"}}`, where `message` is the HTTP reason phrase.
//!
//! Connections are served one by one with hyper so that the `DropMidBody` knob can close a TCP
//! connection in the middle of an upload.

use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::files::{self, FileError, item_json};
use super::knobs::{KlippyState, UploadFailure};
use super::log::UploadRecord;
use super::model::PrintState;
use super::{Shared, SimState};

/// Moonraker's default `max_upload_size` (1024 MiB).
const MAX_UPLOAD: usize = 1024 * 1024 * 1024;

/// Closes this request's TCP connection when notified.
#[derive(Clone)]
struct ConnKill(Arc<Notify>);

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let app = router(shared);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and similar: pause instead of spinning.
                tracing::warn!("simulated Moonraker HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let kill = Arc::new(Notify::new());
        let svc = TowerToHyperService::new(app.clone().layer(Extension(ConnKill(kill.clone()))));
        tokio::spawn(async move {
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {}
            }
        });
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/server/files/upload", post(upload))
        .route("/server/files/list", get(list))
        .route("/server/info", get(info))
        .route("/server/files/gcodes/{*path}", delete(delete_file))
        .fallback(|| async { http_error(StatusCode::NOT_FOUND, "") })
        .layer(middleware::from_fn_with_state(shared.clone(), api_key))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(shared)
}

/// Moonraker's error body: the reason phrase as message, the detail in the traceback.
fn http_error(status: StatusCode, detail: &str) -> Response {
    let phrase = status.canonical_reason().unwrap_or("Unknown");
    let mut exc = format!("tornado.web.HTTPError: HTTP {}: {phrase}", status.as_u16());
    if !detail.is_empty() {
        exc.push_str(&format!(" ({detail})"));
    }
    let body = json!({"error": {
        "code": status.as_u16(),
        "message": phrase,
        "traceback": format!("Traceback (most recent call last):\n  (simulated Moonraker)\n{exc}\n"),
    }});
    (status, Json(body)).into_response()
}

async fn api_key(
    State(shared): State<Arc<Shared>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    if let Some(key) = &shared.cfg.api_key {
        let given = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
        if given != Some(key.as_str()) {
            return http_error(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
    }
    next.run(req).await
}

async fn info(State(shared): State<Arc<Shared>>) -> Response {
    let klippy = shared.lock().printer.klippy();
    Json(json!({"result": {
        "klippy_connected": klippy != KlippyState::Disconnected,
        "klippy_state": klippy.as_str(),
        "components": ["file_manager", "klippy_apis", "machine", "job_state", "history", "authorization", "mqtt"],
        "failed_components": [],
        "registered_directories": ["config", "logs", "gcodes"],
        "warnings": [],
        "websocket_count": 0,
        "moonraker_version": "v0.9.3-sim",
        "api_version": [1, 5, 0],
        "api_version_string": "1.5.0",
    }}))
    .into_response()
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match q.get("root").map(String::as_str).unwrap_or("gcodes") {
        "gcodes" => Json(json!({"result": shared.lock().files.list_json()})).into_response(),
        "config" => Json(json!({"result": []})).into_response(),
        other => http_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid root path ({other})"),
        ),
    }
}

async fn delete_file(State(shared): State<Arc<Shared>>, Path(path): Path<String>) -> Response {
    let Some(rel) = files::normalise(&path) else {
        return http_error(StatusCode::BAD_REQUEST, &format!("Invalid path ({path})"));
    };
    let mut st = shared.lock();
    if loaded_and_busy(&st, &rel) {
        return http_error(StatusCode::FORBIDDEN, "File currently in use");
    }
    match st.files.remove(&rel) {
        Some(f) => Json(json!({"result": {"item": item_json(&rel, &f), "action": "delete_file"}}))
            .into_response(),
        None => http_error(
            StatusCode::NOT_FOUND,
            &format!("File does not exist ({rel})"),
        ),
    }
}

fn loaded_and_busy(st: &SimState, rel: &str) -> bool {
    matches!(
        st.printer.print_state,
        PrintState::Printing | PrintState::Paused
    ) && st.printer.filename == rel
}

/// The parts of an upload form Moonraker looks at.
#[derive(Default)]
struct UploadForm {
    filename: Option<String>,
    bytes: Vec<u8>,
    sha256: String,
    root: Option<String>,
    path: Option<String>,
    checksum: Option<String>,
    print: Option<String>,
}

async fn read_form(mut mp: Multipart, kill: Option<&ConnKill>) -> Result<UploadForm, Response> {
    let parse_failed = |e: axum::extract::multipart::MultipartError| {
        tracing::info!("simulated Moonraker: upload parsing failed: {e}");
        http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "File Upload Parsing Failed",
        )
    };
    let mut form = UploadForm::default();
    let mut hasher = Sha256::new();
    while let Some(mut field) = mp.next_field().await.map_err(parse_failed)? {
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            form.filename = field.file_name().map(str::to_string);
            while let Some(chunk) = field.chunk().await.map_err(parse_failed)? {
                if let Some(kill) = kill {
                    // DropMidBody: part of the body has arrived; close the connection now.
                    kill.0.notify_one();
                    std::future::pending::<()>().await;
                }
                hasher.update(&chunk);
                form.bytes.extend_from_slice(&chunk);
            }
            continue;
        }
        let text = field.text().await.map_err(parse_failed)?;
        match name.as_str() {
            "root" => form.root = Some(text),
            "path" => form.path = Some(text),
            "checksum" => form.checksum = Some(text),
            "print" => form.print = Some(text),
            _ => {}
        }
    }
    form.sha256 = hex::encode(hasher.finalize());
    Ok(form)
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
    mp: Multipart,
) -> Response {
    let knobs = shared.knobs.get();
    let drop_mid_body = knobs.upload_failure == UploadFailure::DropMidBody;
    let form = match read_form(mp, drop_mid_body.then_some(&kill)).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(expected) = form.checksum.as_deref().filter(|c| !c.is_empty()) {
        let expected = expected.to_lowercase();
        if expected != form.sha256 {
            return http_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!(
                    "File checksum mismatch: expected {expected}, calculated {}",
                    form.sha256
                ),
            );
        }
    }
    let Some(mp_name) = form.filename.as_deref().filter(|n| !n.trim().is_empty()) else {
        return http_error(StatusCode::BAD_REQUEST, "Multipart filename omitted");
    };
    let root = form.root.as_deref().unwrap_or("gcodes").to_lowercase();
    if root != "gcodes" {
        // Real Moonraker also accepts `config`; printgate only ever uploads gcode.
        return http_error(
            StatusCode::BAD_REQUEST,
            &format!("Root {root} not available"),
        );
    }
    let dir = form.path.as_deref().unwrap_or("").trim_start_matches('/');
    let joined = if dir.is_empty() {
        mp_name.trim().to_string()
    } else {
        format!("{dir}/{}", mp_name.trim())
    };
    let Some(rel) = files::normalise(&joined) else {
        return http_error(
            StatusCode::BAD_REQUEST,
            &format!("Cannot write to path: {joined}"),
        );
    };
    let start_print = form.print.as_deref() == Some("true");
    if knobs.upload_failure == UploadFailure::Http500 {
        return http_error(StatusCode::INTERNAL_SERVER_ERROR, "simulated failure");
    }
    let mut print_started = false;
    let item = {
        let mut st = shared.lock();
        shared.sync_klippy(&mut st);
        let busy = matches!(
            st.printer.print_state,
            PrintState::Printing | PrintState::Paused
        ) && st.printer.klippy() == KlippyState::Ready;
        if busy && st.printer.filename == rel {
            return http_error(
                StatusCode::FORBIDDEN,
                "File is loaded, upload not permitted",
            );
        }
        let capacity = if knobs.upload_failure == UploadFailure::DiskFull {
            Some(0)
        } else {
            knobs.storage_capacity
        };
        let item = match st.files.put(&rel, form.bytes, capacity) {
            Ok(f) => item_json(&rel, f),
            Err(e @ FileError::Full { .. }) => {
                tracing::info!("simulated Moonraker: upload of {rel} refused: {e}");
                return http_error(StatusCode::INTERNAL_SERVER_ERROR, "Unable to save file");
            }
            Err(e) => return http_error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        if start_print {
            // printgate must never ask for this: it starts prints only through the dispatcher.
            tracing::warn!(
                instance = %shared.cfg.instance_name,
                "upload of {rel} asked to start printing (print=true)"
            );
            if !busy && st.printer.klippy() == KlippyState::Ready && !knobs.refuse_start {
                let SimState { printer, files, .. } = &mut *st;
                if let Some((name, f)) = files.resolve(&rel) {
                    print_started = !knobs.ignore_start
                        && printer
                            .start_print(
                                &name,
                                &f.bytes,
                                knobs.default_print_secs,
                                knobs.default_total_layers,
                            )
                            .is_ok();
                }
            }
        }
        item
    };
    let size = item.get("size").and_then(Value::as_u64).unwrap_or(0);
    shared.record_upload(UploadRecord {
        path: rel.clone(),
        size,
        print_requested: start_print,
        print_started,
        at: std::time::Instant::now(),
    });
    shared.refresh_truth();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let location = format!("http://{host}/server/files/gcodes/{}", url_path(&rel));
    let body = json!({
        "item": item,
        "print_started": print_started,
        "print_queued": false,
        "action": "create_file",
    });
    let mut resp = (StatusCode::CREATED, Json::<Value>(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Percent-encode each path segment (Moonraker's `url_escape(p, plus=False)`).
fn url_path(rel: &str) -> String {
    rel.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}
