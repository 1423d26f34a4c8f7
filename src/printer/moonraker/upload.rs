//! File transfer to a Klipper printer: Moonraker's MQTT API carries no files, so printgate
//! uploads over Moonraker's HTTP API (`POST /server/files/upload`, multipart field `file`,
//! `root=gcodes`, `checksum` = SHA-256 so Moonraker verifies the bytes it stored; never the
//! `print` field — starts go through the dispatcher only). `X-Api-Key` when the printer's
//! Moonraker requires one. The answer's `item.size` must equal the local size.

use crate::printer::{UploadError, UploadProgress};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Where and how to upload.
#[derive(Clone)]
pub struct HttpTarget {
    /// `http://host:port` without a trailing slash.
    pub base_url: String,
    pub api_key: Option<String>,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// The base URL for a host and port (IPv6 literals in brackets).
pub fn base_url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

async fn sha256_of(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
        total += n as u64;
    }
    Ok((hex::encode(h.finalize()), total))
}

/// Upload `local` as `remote_name` into the `gcodes` root.
pub async fn upload(
    client: &reqwest::Client,
    target: &HttpTarget,
    local: &Path,
    remote_name: &str,
    progress: Option<mpsc::Sender<UploadProgress>>,
) -> Result<(), UploadError> {
    let (checksum, total) = sha256_of(local)
        .await
        .map_err(|e| UploadError::Other(format!("cannot read the local file: {e}")))?;
    let file = tokio::fs::File::open(local)
        .await
        .map_err(|e| UploadError::Other(format!("cannot read the local file: {e}")))?;
    let mut sent = 0u64;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map(move |chunk| {
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
            if let Some(tx) = &progress {
                let _ = tx.try_send(UploadProgress { sent, total });
            }
        }
        chunk
    });
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), total)
            .file_name(remote_name.to_string())
            .mime_str("application/octet-stream")
            .map_err(|e| UploadError::Other(e.to_string()))?;
    let form = reqwest::multipart::Form::new()
        .text("root", "gcodes")
        .text("checksum", checksum)
        .part("file", part);
    let mut req = client
        .post(format!("{}/server/files/upload", target.base_url))
        .multipart(form);
    if let Some(key) = &target.api_key {
        req = req.header("X-Api-Key", key);
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_connect() {
            UploadError::Connect(format!(
                "{} ({e}); check host and http_port of this printer and that Moonraker runs",
                target.base_url
            ))
        } else {
            UploadError::Interrupted {
                sent: 0,
                total,
                reason: e.to_string(),
            }
        }
    })?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let message = moonraker_message(&body);
    match status.as_u16() {
        200 | 201 => {}
        401 | 403 => {
            return Err(UploadError::Other(format!(
                "Moonraker refused the upload ({status}: {message}); set api_key for this printer in printgate.toml to a key from Moonraker (or allow printgate's address in [authorization] trusted_clients)"
            )));
        }
        422 => {
            return Err(UploadError::Other(format!(
                "Moonraker stored different bytes than were sent ({message}); the file was not accepted"
            )));
        }
        413 | 507 => return Err(UploadError::StorageRefused(format!("{status}: {message}"))),
        _ if message.to_ascii_lowercase().contains("space") => {
            return Err(UploadError::StorageRefused(format!("{status}: {message}")));
        }
        _ => {
            return Err(UploadError::Other(format!(
                "Moonraker answered the upload with {status}: {message}"
            )));
        }
    }
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| UploadError::Other(format!("Moonraker's upload answer is not JSON ({e})")))?;
    let item = answer.get("result").unwrap_or(&answer).get("item");
    let size = item.and_then(|i| i.get("size")).and_then(|s| s.as_u64());
    match size {
        Some(s) if s == total => Ok(()),
        Some(s) => Err(UploadError::SizeMismatch {
            local: total,
            remote: s,
        }),
        None => Err(UploadError::Other(
            "Moonraker's upload answer has no item.size; cannot verify the file".into(),
        )),
    }
}

/// Moonraker's error text from an HTTP error body (`{"error":{"message":…}}`), bounded.
fn moonraker_message(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let text = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(|m| m.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_messages() {
        assert_eq!(base_url("192.168.1.60", 7125), "http://192.168.1.60:7125");
        assert_eq!(base_url("::1", 7125), "http://[::1]:7125");
        assert_eq!(
            moonraker_message(br#"{"error":{"code":401,"message":"Unauthorized"}}"#),
            "Unauthorized"
        );
        assert_eq!(moonraker_message(b"plain text"), "plain text");
    }
}
