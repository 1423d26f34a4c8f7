//! FTPS upload client for Bambu printers (docs/bambu-protocol.md §7): implicit TLS on the control
//! connection, `PROT P` data channel whose TLS handshake starts only after the `150` reply and
//! resumes the control connection's TLS session, passive mode that always dials the control
//! host, a data close that never depends on the printer's close_notify (it lingers at most
//! [`DATA_LINGER`] for the printer to close, see [`linger`]), the final reply read only after the
//! data socket is closed, and a mandatory `SIZE` check after every upload.
//!
//! Written on tokio + tokio-rustls rather than on suppaftp: suppaftp starts the data TLS
//! handshake before reading the `150` reply, gives no access to the data handshake's
//! resumption status, keeps implicit TLS behind a deprecated feature and has no per-reply
//! timeouts, all of which matter for these printers.
//!
//! `PROT C` (clear data channel) is used only when the target allows it (a per-printer
//! setting a person enables) **and** the printer refuses `PROT P`.

use md5::{Digest, Md5};
use rustls::pki_types::ServerName;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::printer::{UploadError, UploadProgress};

/// FTP user name of every Bambu printer.
const FTP_USER: &str = "bblp";
/// Longest remote file name accepted (longer names fail or are truncated on the printer).
pub const MAX_REMOTE_NAME_LEN: usize = 64;
/// Size of the pieces read from the local file and written to the data channel.
const CHUNK: usize = 128 * 1024;
/// Longest reply line accepted from the printer.
const MAX_LINE: usize = 4096;
/// Most lines accepted in one multi-line reply.
const MAX_REPLY_LINES: usize = 200;
/// How long to wait for the printer's explanation after the data channel broke.
const EXPLAIN_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the printer to close its side of the data channel after ours (see
/// [`linger`]); never a wait for a close_notify that may not come.
pub const DATA_LINGER: Duration = Duration::from_secs(1);

/// The data channel: TLS or (PROT C) plain TCP.
trait DataChannel: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> DataChannel for T {}

/// Where and how to reach one printer's file service.
#[derive(Clone)]
pub struct FtpsTarget {
    pub host: String,
    pub port: u16,
    /// Printer serial, used as TLS server name on both the control and the data channel.
    pub server_name: String,
    pub access_code: String,
    /// One config for both channels: its resumption store lets the data channel resume the
    /// control session, which vsFTPd on the printers requires.
    pub tls: Arc<rustls::ClientConfig>,
    /// Allow a clear data channel (`PROT C`) when the printer refuses `PROT P`.
    pub allow_prot_c: bool,
}

impl fmt::Debug for FtpsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpsTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("server_name", &self.server_name)
            .field("access_code", &"<hidden>")
            .field("allow_prot_c", &self.allow_prot_c)
            .finish()
    }
}

/// Time limits of one FTPS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpsTimeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// Every ordinary reply, and every stalled write on the data channel.
    pub reply: Duration,
    /// The reply after the data channel closed (H2D takes 30+ s).
    pub final_reply: Duration,
    /// Lower bound of the whole data transfer's deadline.
    pub min_upload: Duration,
    /// Slowest rate still accepted; the deadline is `size / min_rate`, at least `min_upload`.
    pub min_rate_bytes_per_sec: u64,
}

impl Default for FtpsTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            reply: Duration::from_secs(30),
            final_reply: Duration::from_secs(60),
            min_upload: Duration::from_secs(600),
            min_rate_bytes_per_sec: 25_000,
        }
    }
}

impl FtpsTimeouts {
    /// Deadline for sending `size` bytes: `size / min_rate`, at least `min_upload`.
    pub fn upload_deadline(&self, size: u64) -> Duration {
        let rate = self.min_rate_bytes_per_sec.max(1);
        self.min_upload
            .max(Duration::from_secs(size.div_ceil(rate)))
    }
}

/// What a successful upload produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// Bytes sent (equal to the local file's size and to the printer's `SIZE`).
    pub bytes: u64,
    /// Uppercase hex MD5 of the file as sent (what `project_file` carries).
    pub md5: String,
    /// Things that went oddly but ended verified, for the log and the job history.
    pub warnings: Vec<String>,
}

/// Upload `local` to the printer's storage root as `/<remote_name>` with default timeouts.
pub async fn upload(
    target: &FtpsTarget,
    local: &Path,
    remote_name: &str,
    progress: Option<mpsc::Sender<UploadProgress>>,
) -> Result<UploadReport, UploadError> {
    upload_with(
        target,
        local,
        remote_name,
        progress,
        &FtpsTimeouts::default(),
    )
    .await
}

/// Delete `/<remote_name>`; a missing file (550) counts as deleted.
pub async fn delete(target: &FtpsTarget, remote_name: &str) -> Result<(), UploadError> {
    delete_with(target, remote_name, &FtpsTimeouts::default()).await
}

/// Size of `/<remote_name>` on the printer, `None` when it does not exist.
pub async fn size(target: &FtpsTarget, remote_name: &str) -> Result<Option<u64>, UploadError> {
    size_with(target, remote_name, &FtpsTimeouts::default()).await
}

/// [`delete`] with explicit timeouts.
pub async fn delete_with(
    target: &FtpsTarget,
    remote_name: &str,
    t: &FtpsTimeouts,
) -> Result<(), UploadError> {
    validate_remote_name(remote_name)?;
    let mut ctl = Control::open(target, t).await?;
    ctl.login(target).await?;
    let r = ctl.command(&format!("DELE /{remote_name}")).await?;
    let result = match r.code {
        250 | 550 => Ok(()),
        530 => Err(UploadError::AccessCodeRejected),
        _ => Err(UploadError::Other(format!(
            "the printer did not delete {remote_name}: {r}"
        ))),
    };
    ctl.quit().await;
    result
}

/// [`size`] with explicit timeouts.
pub async fn size_with(
    target: &FtpsTarget,
    remote_name: &str,
    t: &FtpsTimeouts,
) -> Result<Option<u64>, UploadError> {
    validate_remote_name(remote_name)?;
    let mut ctl = Control::open(target, t).await?;
    ctl.login(target).await?;
    ctl.expect("TYPE I", &[200]).await?;
    let result = ctl.size(remote_name).await;
    ctl.quit().await;
    result
}

/// [`upload`] with explicit timeouts.
pub async fn upload_with(
    target: &FtpsTarget,
    local: &Path,
    remote_name: &str,
    progress: Option<mpsc::Sender<UploadProgress>>,
    t: &FtpsTimeouts,
) -> Result<UploadReport, UploadError> {
    validate_remote_name(remote_name)?;
    let mut file = tokio::fs::File::open(local).await.map_err(|e| {
        UploadError::Other(format!(
            "cannot read the file to upload ({}): {e}",
            local.display()
        ))
    })?;
    let total = file
        .metadata()
        .await
        .map_err(|e| {
            UploadError::Other(format!(
                "cannot read the file to upload ({}): {e}",
                local.display()
            ))
        })?
        .len();
    let mut warnings = Vec::new();

    let mut ctl = Control::open(target, t).await?;
    ctl.login(target).await?;
    ctl.expect("PBSZ 0", &[200]).await?;
    let clear_data = ctl.protect(target).await?;
    if clear_data {
        warnings.push("data sent over a clear channel (PROT C fallback enabled)".to_string());
    }
    ctl.expect("TYPE I", &[200]).await?;
    let port = ctl.passive().await?;
    // Always dial the control host: the address in the PASV reply is unreliable (0,0,0,0).
    let data_addr = SocketAddr::new(ctl.peer_ip, port);
    let data_tcp = match timeout(t.connect, TcpStream::connect(data_addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(connect_error(&data_addr.to_string(), "data connection", &e)),
        Err(_) => {
            return Err(UploadError::Connect(format!(
                "data connection to {data_addr} timed out after {:?}; check no firewall blocks \
                 the printer's passive ports",
                t.connect
            )));
        }
    };
    let _ = data_tcp.set_nodelay(true);

    let stor = ctl.command(&format!("STOR /{remote_name}")).await?;
    match stor.code {
        125 | 150 => {}
        452 | 552 | 553 => return Err(UploadError::StorageRefused(stor.to_string())),
        530 => return Err(UploadError::AccessCodeRejected),
        522 => return Err(data_tls_refused(&stor, None)),
        _ => {
            return Err(UploadError::Other(format!(
                "the printer refused to store {remote_name}: {stor}"
            )));
        }
    }

    // vsFTPd starts its side of the data TLS handshake only after sending 150.
    let mut resumed = None;
    let data: Box<dyn DataChannel> = if clear_data {
        Box::new(data_tcp)
    } else {
        let tls = match data_handshake(target, data_tcp, t).await {
            Ok(tls) => tls,
            Err(reason) => return Err(ctl.explain_interruption(0, total, reason, None).await),
        };
        let kind = tls.get_ref().1.handshake_kind();
        let was_resumed = kind == Some(rustls::HandshakeKind::Resumed);
        if !was_resumed {
            tracing::debug!(
                ?kind,
                "FTPS data channel did not resume the control TLS session"
            );
        }
        resumed = Some(was_resumed);
        Box::new(tls)
    };

    let deadline = t.upload_deadline(total);
    let sent = SentCounter::default();
    let streamed = timeout(
        deadline,
        send_file(&mut file, data, total, progress, t.reply, &sent),
    )
    .await;
    let md5 = match streamed {
        Ok(Ok(md5)) => md5,
        Ok(Err(reason)) => {
            return Err(ctl
                .explain_interruption(sent.get(), total, reason, resumed)
                .await);
        }
        Err(_) => {
            let reason = format!("the transfer did not finish within {deadline:?}");
            return Err(ctl
                .explain_interruption(sent.get(), total, reason, resumed)
                .await);
        }
    };

    // The data socket is closed now; only then read the final reply (some printers hold it).
    let final_reply = ctl.read_reply(t.final_reply).await;
    let outcome = match final_reply {
        Ok(r) if r.code == 226 || r.code == 250 => match ctl.size(remote_name).await? {
            Some(n) if n == total => Ok(()),
            Some(n) => Err(UploadError::SizeMismatch {
                local: total,
                remote: n,
            }),
            None => Err(UploadError::Other(format!(
                "the printer confirmed the upload ({r}) but then reported no file {remote_name}; \
                 the file is not usable, upload again"
            ))),
        },
        Ok(r) if r.code == 522 => Err(data_tls_refused(&r, resumed)),
        Ok(r) => match ctl.size(remote_name).await? {
            Some(n) if n == total => {
                warnings.push(format!("{r} after complete upload, verified by SIZE"));
                Ok(())
            }
            _ if matches!(r.code, 451 | 452 | 552 | 553) => {
                Err(UploadError::StorageRefused(r.to_string()))
            }
            Some(n) => Err(UploadError::SizeMismatch {
                local: total,
                remote: n,
            }),
            None => Err(UploadError::Interrupted {
                sent: total,
                total,
                reason: format!("the printer answered {r} and kept no file"),
            }),
        },
        Err(e) => {
            // The control channel is in an unknown state: verify on a fresh session.
            drop(ctl);
            let what = format!("no final reply ({e})");
            return match size_with(target, remote_name, t).await? {
                Some(n) if n == total => {
                    warnings.push(format!("{what} after complete upload, verified by SIZE"));
                    Ok(UploadReport {
                        bytes: total,
                        md5,
                        warnings,
                    })
                }
                Some(n) => Err(UploadError::SizeMismatch {
                    local: total,
                    remote: n,
                }),
                None => Err(UploadError::Interrupted {
                    sent: total,
                    total,
                    reason: format!("{what} and the printer kept no file"),
                }),
            };
        }
    };
    ctl.quit().await;
    outcome?;
    if resumed == Some(false) {
        warnings.push(
            "data channel did not resume the control TLS session (the printer accepted it)"
                .to_string(),
        );
    }
    Ok(UploadReport {
        bytes: total,
        md5,
        warnings,
    })
}

/// Refuse names the printer firmware cannot handle: 1–64 ASCII `[A-Za-z0-9._-]`, not only dots.
pub fn validate_remote_name(name: &str) -> Result<(), UploadError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let only_dots = name.bytes().all(|b| b == b'.');
    if name.is_empty() || name.len() > MAX_REMOTE_NAME_LEN || !ok_chars || only_dots {
        return Err(UploadError::Other(format!(
            "remote file name {name:?} is not allowed: use 1 to {MAX_REMOTE_NAME_LEN} characters \
             from A-Z a-z 0-9 . _ - (printer firmware rejects or truncates other names)"
        )));
    }
    Ok(())
}

/// One reply from the server: its code and the text of all its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// A line's code and whether it is the last line of its reply (`"226 "` vs `"220-"`).
fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let code_part = line.get(..3)?;
    if !code_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code_part.parse().ok()?;
    match line.as_bytes().get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, line.get(4..).unwrap_or(""))),
        Some(b'-') => Some((code, false, line.get(4..).unwrap_or(""))),
        Some(_) => None,
    }
}

/// Data port from a `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).` text; the host is ignored.
pub fn parse_pasv_port(text: &str) -> Option<u16> {
    let open = text.find('(')?;
    let close = open + text.get(open..)?.find(')')?;
    let inner = text.get(open + 1..close)?;
    let nums: Vec<u16> = inner
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|n| *n <= 255))
        .collect::<Option<Vec<_>>>()?;
    let [_, _, _, _, p1, p2] = nums.as_slice() else {
        return None;
    };
    let port = p1 * 256 + p2;
    (port != 0).then_some(port)
}

/// Data port from a `229 Entering Extended Passive Mode (|||port|)` text.
pub fn parse_epsv_port(text: &str) -> Option<u16> {
    let open = text.find('(')?;
    let close = open + text.get(open..)?.find(')')?;
    let inner = text.get(open + 1..close)?;
    let mut chars = inner.chars();
    let delim = chars.next()?;
    let parts: Vec<&str> = inner.split(delim).collect();
    let [_, _, _, port, _] = parts.as_slice() else {
        return None;
    };
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Why talking on the control channel failed.
#[derive(Debug)]
enum CtlError {
    Timeout(Duration),
    Closed,
    Io(std::io::Error),
    Garbled(String),
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Timeout(d) => write!(f, "no reply within {d:?}"),
            CtlError::Closed => write!(f, "the printer closed the connection"),
            CtlError::Io(e) => write!(f, "network error: {e}"),
            CtlError::Garbled(s) => write!(f, "unreadable reply: {s}"),
        }
    }
}

/// The control connection: TLS from the first byte, line-oriented replies.
struct Control {
    io: TlsStream<TcpStream>,
    buf: Vec<u8>,
    peer_ip: IpAddr,
    reply_timeout: Duration,
}

impl Control {
    /// Connect, do the TLS handshake and read the `220` banner.
    async fn open(target: &FtpsTarget, t: &FtpsTimeouts) -> Result<Self, UploadError> {
        let where_ = format!("{}:{}", target.host, target.port);
        let server_name = tls_server_name(target)?;
        let tcp = match timeout(
            t.connect,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(connect_error(&where_, "file service", &e)),
            Err(_) => {
                return Err(UploadError::Connect(format!(
                    "{where_} did not answer within {:?}; check the printer is on and its IP \
                     address is right",
                    t.connect
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        let peer_ip = tcp
            .peer_addr()
            .map_err(|e| connect_error(&where_, "file service", &e))?
            .ip();
        let connector = TlsConnector::from(target.tls.clone());
        let io = match timeout(t.connect, connector.connect(server_name, tcp)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                return Err(UploadError::Connect(format!(
                    "TLS handshake with {where_} failed: {e}; if the printer was replaced or its \
                     certificate changed, pair it again"
                )));
            }
            Err(_) => {
                return Err(UploadError::Connect(format!(
                    "TLS handshake with {where_} did not finish within {:?}",
                    t.connect
                )));
            }
        };
        let mut ctl = Control {
            io,
            buf: Vec::new(),
            peer_ip,
            reply_timeout: t.reply,
        };
        let banner = ctl
            .read_reply(t.reply)
            .await
            .map_err(|e| UploadError::Connect(format!("{where_} sent no greeting: {e}")))?;
        if banner.code != 220 {
            return Err(UploadError::Connect(format!(
                "{where_} refused the session: {banner}"
            )));
        }
        Ok(ctl)
    }

    async fn login(&mut self, target: &FtpsTarget) -> Result<(), UploadError> {
        let user = self.command(&format!("USER {FTP_USER}")).await?;
        match user.code {
            230 => return Ok(()),
            331 => {}
            530 => return Err(UploadError::AccessCodeRejected),
            _ => {
                return Err(UploadError::Other(format!(
                    "the printer refused the login: {user}"
                )));
            }
        }
        let pass = self
            .command_logged(
                &format!("PASS {}", target.access_code),
                "PASS <access code>",
            )
            .await?;
        match pass.code {
            230 | 202 => Ok(()),
            530 => Err(UploadError::AccessCodeRejected),
            _ => Err(UploadError::Other(format!(
                "the printer refused the login: {pass}"
            ))),
        }
    }

    /// `PROT P`, or `PROT C` when allowed and `P` is refused. Returns true for a clear channel.
    async fn protect(&mut self, target: &FtpsTarget) -> Result<bool, UploadError> {
        let p = self.command("PROT P").await?;
        if p.code == 200 {
            return Ok(false);
        }
        if !target.allow_prot_c {
            return Err(UploadError::Other(format!(
                "the printer refused an encrypted data channel ({p}); enable the clear data \
                 channel fallback for this printer only if you accept unencrypted uploads"
            )));
        }
        let c = self.command("PROT C").await?;
        if c.code == 200 {
            Ok(true)
        } else {
            Err(UploadError::Other(format!(
                "the printer refused both encrypted ({p}) and clear ({c}) data channels"
            )))
        }
    }

    /// `PASV` (or `EPSV` when `PASV` is not understood); returns only the port.
    async fn passive(&mut self) -> Result<u16, UploadError> {
        let r = self.command("PASV").await?;
        if r.code == 227 {
            return parse_pasv_port(&r.text).ok_or_else(|| {
                UploadError::Other(format!(
                    "the printer's passive-mode reply is unreadable: {r}"
                ))
            });
        }
        let e = self.command("EPSV").await?;
        if e.code == 229 {
            return parse_epsv_port(&e.text).ok_or_else(|| {
                UploadError::Other(format!(
                    "the printer's passive-mode reply is unreadable: {e}"
                ))
            });
        }
        Err(UploadError::Other(format!(
            "the printer refused passive mode ({r}; {e})"
        )))
    }

    async fn size(&mut self, remote_name: &str) -> Result<Option<u64>, UploadError> {
        let r = self.command(&format!("SIZE /{remote_name}")).await?;
        match r.code {
            213 => r
                .text
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| UploadError::Other(format!("unreadable SIZE reply: {r}"))),
            550 => Ok(None),
            _ => Err(UploadError::Other(format!(
                "the printer could not report the size of {remote_name}: {r}"
            ))),
        }
    }

    /// Send a command that must get one of `ok` codes.
    async fn expect(&mut self, cmd: &str, ok: &[u16]) -> Result<Reply, UploadError> {
        let r = self.command(cmd).await?;
        if ok.contains(&r.code) {
            Ok(r)
        } else if r.code == 530 {
            Err(UploadError::AccessCodeRejected)
        } else {
            Err(UploadError::Other(format!(
                "the printer refused {cmd}: {r}"
            )))
        }
    }

    async fn command(&mut self, cmd: &str) -> Result<Reply, UploadError> {
        self.command_logged(cmd, cmd).await
    }

    /// Send `cmd`, read its reply; `shown` is what errors and logs may contain.
    async fn command_logged(&mut self, cmd: &str, shown: &str) -> Result<Reply, UploadError> {
        tracing::trace!(cmd = shown, "FTPS >");
        let line = format!("{cmd}\r\n");
        let t = self.reply_timeout;
        match timeout(t, self.io.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(UploadError::Connect(format!("sending {shown} failed: {e}")));
            }
            Err(_) => {
                return Err(UploadError::Connect(format!(
                    "sending {shown} did not finish within {t:?}"
                )));
            }
        }
        let r = self
            .read_reply(t)
            .await
            .map_err(|e| UploadError::Connect(format!("after {shown}: {e}")))?;
        tracing::trace!(code = r.code, text = %r.text, "FTPS <");
        Ok(r)
    }

    /// Read one (possibly multi-line) reply within `limit`.
    async fn read_reply(&mut self, limit: Duration) -> Result<Reply, CtlError> {
        match timeout(limit, self.read_reply_inner()).await {
            Ok(r) => r,
            Err(_) => Err(CtlError::Timeout(limit)),
        }
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, CtlError> {
        let first = self.read_line().await?;
        let (code, last, text) =
            parse_reply_line(&first).ok_or_else(|| CtlError::Garbled(first.clone()))?;
        let mut lines = vec![text.to_string()];
        if !last {
            loop {
                if lines.len() >= MAX_REPLY_LINES {
                    return Err(CtlError::Garbled(format!(
                        "reply {code} longer than {MAX_REPLY_LINES} lines"
                    )));
                }
                let line = self.read_line().await?;
                match parse_reply_line(&line) {
                    Some((c, true, text)) if c == code => {
                        lines.push(text.to_string());
                        break;
                    }
                    _ => lines.push(line),
                }
            }
        }
        Ok(Reply {
            code,
            text: lines.join("\n"),
        })
    }

    /// One line without its CR LF.
    async fn read_line(&mut self) -> Result<String, CtlError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&raw);
                return Ok(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_LINE {
                return Err(CtlError::Garbled(format!(
                    "reply line longer than {MAX_LINE} bytes"
                )));
            }
            let mut chunk = [0u8; 1024];
            let n = self.io.read(&mut chunk).await.map_err(CtlError::Io)?;
            if n == 0 {
                return Err(CtlError::Closed);
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// Turn a broken data transfer into an error, using the printer's reply if one comes soon.
    async fn explain_interruption(
        &mut self,
        sent: u64,
        total: u64,
        reason: String,
        resumed: Option<bool>,
    ) -> UploadError {
        match self.read_reply(EXPLAIN_WAIT).await {
            Ok(r) if r.code == 522 => data_tls_refused(&r, resumed),
            Ok(r) if matches!(r.code, 451 | 452 | 552 | 553) => {
                UploadError::StorageRefused(r.to_string())
            }
            Ok(r) => UploadError::Interrupted {
                sent,
                total,
                reason: format!("{reason}; the printer said: {r}"),
            },
            Err(_) => UploadError::Interrupted {
                sent,
                total,
                reason,
            },
        }
    }

    /// Polite goodbye; failures do not matter any more.
    async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(2), async {
            if self.io.write_all(b"QUIT\r\n").await.is_ok() {
                let _ = self.read_reply_inner().await;
            }
        })
        .await;
    }
}

/// The data channel's TLS handshake, with the same config and server name as the control one.
async fn data_handshake(
    target: &FtpsTarget,
    tcp: TcpStream,
    t: &FtpsTimeouts,
) -> Result<TlsStream<TcpStream>, String> {
    let connector = TlsConnector::from(target.tls.clone());
    let server_name = ServerName::try_from(target.server_name.clone())
        .map_err(|_| format!("invalid TLS server name {:?}", target.server_name))?;
    match timeout(t.reply, connector.connect(server_name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake on the data channel failed: {e}")),
        Err(_) => Err(format!(
            "TLS handshake on the data channel did not finish within {:?} (some A1 firmware \
             needs the clear data channel fallback)",
            t.reply
        )),
    }
}

fn tls_server_name(target: &FtpsTarget) -> Result<ServerName<'static>, UploadError> {
    ServerName::try_from(target.server_name.clone()).map_err(|_| {
        UploadError::Connect(format!(
            "printer serial {:?} cannot be used as TLS server name; check the configured serial",
            target.server_name
        ))
    })
}

fn connect_error(where_: &str, what: &str, e: &std::io::Error) -> UploadError {
    UploadError::Connect(format!(
        "{what} at {where_}: {e}; check the printer is on, in LAN mode, and its IP address is right"
    ))
}

/// A 522 reply: the data channel was not acceptable to the printer.
fn data_tls_refused(r: &Reply, resumed: Option<bool>) -> UploadError {
    let text = r.text.to_ascii_lowercase();
    if text.contains("reuse") {
        let ours = match resumed {
            Some(false) => "it did not",
            Some(true) => "it reported a resumed session",
            None => "it was not established",
        };
        UploadError::Other(format!(
            "the printer requires the data connection to resume the control connection's TLS \
             session ({r}) and {ours}; the TLS client config must keep session resumption on \
             and use the same server name for both connections"
        ))
    } else if text.contains("encrypt") {
        UploadError::Other(format!(
            "the printer requires an encrypted data channel ({r}); disable the clear data \
             channel fallback for this printer"
        ))
    } else {
        UploadError::Other(format!("the printer rejected the data channel: {r}"))
    }
}

/// Bytes handed to the data channel so far (kept outside the send future so a timeout can
/// still report them).
#[derive(Default)]
struct SentCounter(std::sync::atomic::AtomicU64);

impl SentCounter {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Stream exactly `total` bytes of `file` to `data`, then close it without waiting for the
/// peer's close_notify. Returns the uppercase MD5 of what was sent.
async fn send_file<R, W>(
    file: &mut R,
    mut data: W,
    total: u64,
    progress: Option<mpsc::Sender<UploadProgress>>,
    stall: Duration,
    sent: &SentCounter,
) -> Result<String, String>
where
    R: AsyncRead + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done: u64 = 0;
    while done < total {
        let want = usize::try_from(total - done).unwrap_or(CHUNK).min(CHUNK);
        let piece = buf.get_mut(..want).unwrap_or_default();
        let n = file
            .read(piece)
            .await
            .map_err(|e| format!("reading the local file failed: {e}"))?;
        if n == 0 {
            return Err(format!(
                "the local file shrank while uploading ({done} of {total} bytes read)"
            ));
        }
        let chunk = piece.get(..n).unwrap_or_default();
        hasher.update(chunk);
        match timeout(stall, data.write_all(chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("network error: {e}")),
            Err(_) => return Err(format!("the printer accepted no data for {stall:?}")),
        }
        done += n as u64;
        sent.add(n as u64);
        if let Some(tx) = &progress {
            // Intermediate events may be dropped when the listener lags; the last one is not.
            let _ = tx.try_send(UploadProgress { sent: done, total });
        }
    }
    // Flush, send close_notify and FIN; then linger briefly (bounded) before closing.
    match timeout(stall, data.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("closing the data channel failed: {e}")),
        Err(_) => {
            return Err(format!(
                "closing the data channel took longer than {stall:?}"
            ));
        }
    }
    linger(&mut data, DATA_LINGER).await;
    drop(data);
    if let Some(tx) = &progress {
        let _ = timeout(
            Duration::from_secs(1),
            tx.send(UploadProgress { sent: done, total }),
        )
        .await;
    }
    Ok(hex::encode_upper(hasher.finalize()))
}

/// After our close_notify and FIN: read and discard until the printer closes its side, at most
/// `limit`. Closing a socket that holds unread bytes (TLS 1.3 session tickets, the printer's
/// close_notify) sends a TCP reset, and a reset makes the printer's kernel discard upload data
/// its FTP server has not read yet: the file ends up truncated. vsFTPd closes right after
/// reading the end of the upload, so this normally takes one round trip.
async fn linger<R: AsyncRead + Unpin>(data: &mut R, limit: Duration) {
    let mut sink = [0u8; 4096];
    let _ = timeout(limit, async {
        // Bounded by `limit`; also by the count, in case the peer keeps sending.
        for _ in 0..4096 {
            match data.read(&mut sink).await {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line("226 Transfer complete."),
            Some((226, true, "Transfer complete."))
        );
        assert_eq!(parse_reply_line("220-hello"), Some((220, false, "hello")));
        assert_eq!(parse_reply_line("221"), Some((221, true, "")));
        assert_eq!(parse_reply_line("22x ok"), None);
        assert_eq!(parse_reply_line("2200 ok"), None);
        assert_eq!(parse_reply_line(""), None);
        assert_eq!(parse_reply_line("é"), None);
    }

    #[test]
    fn pasv_port_ignores_host() {
        assert_eq!(
            parse_pasv_port("Entering Passive Mode (0,0,0,0,195,80)."),
            Some(195 * 256 + 80)
        );
        assert_eq!(
            parse_pasv_port("Entering Passive Mode (10,9,8,7,0,21)"),
            Some(21)
        );
        assert_eq!(parse_pasv_port("Entering Passive Mode (1,2,3,4,0,0)"), None);
        assert_eq!(
            parse_pasv_port("Entering Passive Mode (1,2,3,4,300,1)"),
            None
        );
        assert_eq!(parse_pasv_port("Entering Passive Mode (1,2,3,4,5)"), None);
        assert_eq!(parse_pasv_port("no parens"), None);
        assert_eq!(parse_pasv_port(")("), None);
    }

    #[test]
    fn epsv_port() {
        assert_eq!(
            parse_epsv_port("Entering Extended Passive Mode (|||50123|)"),
            Some(50123)
        );
        assert_eq!(
            parse_epsv_port("Entering Extended Passive Mode (!!!21!)"),
            Some(21)
        );
        assert_eq!(
            parse_epsv_port("Entering Extended Passive Mode (|||0|)"),
            None
        );
        assert_eq!(parse_epsv_port("Entering Extended Passive Mode (||)"), None);
        assert_eq!(parse_epsv_port("()"), None);
    }

    #[test]
    fn remote_names() {
        for ok in ["pg-000418.gcode.3mf", "a", "A_b-c.9", &"x".repeat(64)] {
            assert!(validate_remote_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a b.3mf",
            "../etc",
            "dir/file",
            "é.3mf",
            "a\r\nDELE x",
            &"x".repeat(65),
        ] {
            assert!(validate_remote_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deadline_has_floor_and_scales() {
        let t = FtpsTimeouts::default();
        assert_eq!(t.upload_deadline(0), Duration::from_secs(600));
        assert_eq!(t.upload_deadline(40_000_000), Duration::from_secs(1600));
    }
}
