//! Requests byte for byte as the slicers send them, over a plain TCP socket: PrusaSlicer and
//! OrcaSlicer go through libcurl (header order `Host`, `User-Agent`, `Accept`, `X-Api-Key`,
//! `Content-Length`, `Content-Type`, and `Expect: 100-continue` for bodies above 1 MiB; mime
//! parts `print`, `path`, `file` with libcurl's boundary), Cura's OctoPrint Connection plugin
//! through Qt (`X-Api-Key`, `User-Agent`, a quoted `boundary_.oOo._…` boundary, parts `path`,
//! `file`, `select`, `print`, each with `Content-Type`).

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// libcurl sends `Expect: 100-continue` for request bodies larger than this.
pub const CURL_EXPECT_THRESHOLD: usize = 1024 * 1024;

pub struct Answer {
    pub status: u16,
    /// Interim answers seen before the final one (e.g. 100).
    pub interim: Vec<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A multipart part: name, optional file name, content type, bytes.
pub struct Part<'a> {
    pub name: &'a str,
    pub file_name: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub bytes: &'a [u8],
}

impl<'a> Part<'a> {
    pub fn text(name: &'a str, value: &'a str) -> Self {
        Part {
            name,
            file_name: None,
            content_type: None,
            bytes: value.as_bytes(),
        }
    }
}

/// libcurl's mime body (curl_mime: `Content-Disposition`, then `Content-Type` for files).
pub fn curl_multipart(boundary: &str, parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match p.file_name {
            Some(f) => out.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"; filename=\"{f}\"\r\n",
                    p.name
                )
                .as_bytes(),
            ),
            None => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{}\"\r\n", p.name).as_bytes(),
            ),
        }
        if let Some(ct) = p.content_type {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p.bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// Qt's QHttpMultiPart body as Cura's plugin builds it (`Content-Disposition` then
/// `Content-Type` on every part).
pub fn qt_multipart(boundary: &str, parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disp = match p.file_name {
            Some(f) => format!("form-data; name=\"{}\"; filename=\"{f}\"", p.name),
            None => format!("form-data; name=\"{}\"", p.name),
        };
        out.extend_from_slice(format!("content-disposition: {disp}\r\n").as_bytes());
        if let Some(ct) = p.content_type {
            out.extend_from_slice(format!("content-type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p.bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// libcurl's boundary shape: 24 dashes and 16 hex digits.
pub const CURL_BOUNDARY: &str = "------------------------d74496d66958873e";
/// Qt's boundary shape.
pub const QT_BOUNDARY: &str = "boundary_.oOo._MjE0NzQ4MzY0Nw==MTk2NDA1NDk4";

/// PrusaSlicer's `GET /api/version` ("Test" button), libcurl's header order.
pub async fn prusaslicer_get(addr: SocketAddr, path: &str, key: Option<&str>) -> Answer {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: PrusaSlicer/2.8.1\r\nAccept: */*\r\n"
    );
    if let Some(k) = key {
        head.push_str(&format!("X-Api-Key: {k}\r\n"));
    }
    exchange(addr, &head, &[], false).await
}

/// PrusaSlicer's upload: parts `print`, `path`, `file`, `Expect: 100-continue` above 1 MiB.
pub async fn prusaslicer_upload(
    addr: SocketAddr,
    url_path: &str,
    key: &str,
    print: bool,
    folder: &str,
    file_name: &str,
    bytes: &[u8],
) -> Answer {
    let body = curl_multipart(
        CURL_BOUNDARY,
        &[
            Part::text("print", if print { "true" } else { "false" }),
            Part::text("path", folder),
            Part {
                name: "file",
                file_name: Some(file_name),
                content_type: Some("application/octet-stream"),
                bytes,
            },
        ],
    );
    let expect = body.len() > CURL_EXPECT_THRESHOLD;
    let mut head = format!(
        "POST {url_path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: PrusaSlicer/2.8.1\r\nAccept: */*\r\nX-Api-Key: {key}\r\nContent-Length: {}\r\nContent-Type: multipart/form-data; boundary={CURL_BOUNDARY}\r\n",
        body.len()
    );
    if expect {
        head.push_str("Expect: 100-continue\r\n");
    }
    exchange(addr, &head, &body, expect).await
}

/// Cura's request headers (Qt), without `Accept-Encoding` (Qt inflates gzip itself; this client
/// reads plain bodies).
fn cura_head(method: &str, addr: SocketAddr, path: &str, key: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\nUser-Agent: Cura/5.8.1 OctoPrintPlugin/3.7.3\r\nConnection: Keep-Alive\r\nAccept-Language: en-US,*\r\n"
    )
}

/// Cura's polls (`GET printer`, `GET job`, …).
pub async fn cura_get(addr: SocketAddr, path: &str, key: &str) -> Answer {
    exchange(addr, &cura_head("GET", addr, path, key), &[], false).await
}

/// Cura's upload: parts `path`, `file`, then `select` and `print` when chosen.
pub async fn cura_upload(
    addr: SocketAddr,
    key: &str,
    folder: &str,
    file_name: &str,
    bytes: &[u8],
    select: bool,
    print: bool,
) -> Answer {
    let mut parts = vec![
        Part {
            name: "path",
            file_name: None,
            content_type: Some("text/plain"),
            bytes: folder.as_bytes(),
        },
        Part {
            name: "file",
            file_name: Some(file_name),
            content_type: Some("application/octet-stream"),
            bytes,
        },
    ];
    if select || print {
        parts.push(Part {
            name: "select",
            file_name: None,
            content_type: Some("text/plain"),
            bytes: b"true",
        });
    }
    if print {
        parts.push(Part {
            name: "print",
            file_name: None,
            content_type: Some("text/plain"),
            bytes: b"true",
        });
    }
    let body = qt_multipart(QT_BOUNDARY, &parts);
    let mut head = cura_head("POST", addr, "/api/files/local", key);
    head.push_str(&format!(
        "Content-Type: multipart/form-data; boundary=\"{QT_BOUNDARY}\"\r\nMIME-Version: 1.0\r\nContent-Length: {}\r\n",
        body.len()
    ));
    exchange(addr, &head, &body, false).await
}

/// Cura's JSON commands (`POST job`, `POST files/local/<path>`).
pub async fn cura_post_json(addr: SocketAddr, path: &str, key: &str, json: &str) -> Answer {
    let mut head = cura_head("POST", addr, path, key);
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n",
        json.len()
    ));
    exchange(addr, &head, json.as_bytes(), false).await
}

/// Send `head` (request line and headers, each ending in CRLF) and `body`; with `expect`, the
/// body is sent only after a `100 Continue` (a final answer before it ends the exchange, the
/// body unsent, as libcurl does).
pub async fn exchange(addr: SocketAddr, head: &str, body: &[u8], expect: bool) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(b"\r\n").await.expect("write head end");
    let mut buf = Vec::new();
    let mut interim = Vec::new();
    if expect {
        let (status, headers, rest) = read_head(&mut s, &mut buf).await;
        if status != 100 {
            return finish(&mut s, status, headers, rest, interim).await;
        }
        interim.push(status);
        buf = rest;
    }
    s.write_all(body).await.expect("write body");
    loop {
        let (status, headers, rest) = read_head(&mut s, &mut buf).await;
        if (100..200).contains(&status) {
            interim.push(status);
            buf = rest;
            continue;
        }
        return finish(&mut s, status, headers, rest, interim).await;
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    let n = s.read(&mut chunk).await.expect("read");
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// Read one answer head; returns status, headers and the bytes after the head.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let rest = buf[end + 4..].to_vec();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
            return (status, headers, rest);
        }
        assert!(
            read_more(s, buf).await > 0,
            "connection closed before an answer"
        );
    }
}

async fn finish(
    s: &mut TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    mut rest: Vec<u8>,
    interim: Vec<u16>,
) -> Answer {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length").and_then(|l| l.parse::<usize>().ok()) {
        while rest.len() < len {
            assert!(read_more(s, &mut rest).await > 0, "body cut short");
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut out = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                assert!(read_more(s, &mut rest).await > 0, "chunk cut short");
            };
            let size_line = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
                .expect("chunk size");
            while rest.len() < line_end + 2 + size + 2 {
                assert!(read_more(s, &mut rest).await > 0, "chunk cut short");
            }
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break out;
            }
        }
    } else {
        Vec::new()
    };
    Answer {
        status,
        interim,
        headers,
        body,
    }
}
