//! The simulated printer's FTPS server: vsFTPd 3.0.5 as seen on X1C/P2S (docs/bambu-protocol.md §7, §12).
//! Implicit TLS from the first byte (TLS 1.2 only unless the `tls13` knob is on), user `bblp`
//! with the access code, passive data connections whose TLS handshake starts after `150` and
//! must resume the control session, files kept in [`SimStorage`]. The storage starts with the
//! folders `cache/`, `model/` and `timelapse/`; `LIST`/`NLST` list the path they are given (an
//! `NLST` of a folder prefixes the names with it, as vsFTPd does) and a `STOR` into a folder
//! that does not exist fails with `553 Could not create file.`.
//!
//! Fault knobs ([`FtpsKnobs`]) can be changed while the server runs; each new command reads
//! their current values. A `STOR` that breaks mid-way never reaches [`SimStorage`]: the server
//! keeps the short size as a *partial* file of its own, visible to `SIZE`, `LIST` and `NLST`
//! but never to the print state machine.

use chrono::{DateTime, Datelike, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::sim::storage::{SimStorage, StorageError};
use crate::sim::tls::SimIdentity;

/// vsFTPd closes idle control connections after 300 s.
const IDLE: Duration = Duration::from_secs(300);
/// Waits for a client's data connection, TLS handshakes and stalled data reads.
const DATA_WAIT: Duration = Duration::from_secs(30);
/// Longest command line accepted.
const MAX_LINE: usize = 4096;
/// Receive buffer of the data channel.
const DATA_CHUNK: usize = 64 * 1024;

/// Address the server puts into its `227` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasvHost {
    /// The control connection's local address (what a well-configured vsFTPd sends).
    #[default]
    Real,
    /// `0,0,0,0` (P1S across subnets).
    Zero,
    /// Some other address the client must ignore.
    Wrong(Ipv4Addr),
}

/// Current values of every FTPS fault knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpsKnobValues {
    /// `require_ssl_reuse`: a data TLS session that did not resume the control session gets
    /// `522 SSL connection failed: session reuse required`.
    pub require_session_reuse: bool,
    pub pasv_host: PasvHost,
    /// Accept transfers after `PROT C`; when false they get `522 Data connections must be
    /// encrypted.` (X1C).
    pub accept_prot_c: bool,
    /// Answer `PROT P` with `536` (not vsFTPd; lets tests drive a client's `PROT C` fallback).
    pub refuse_prot_p: bool,
    /// Store the file, then answer `426 Failure reading network stream.` (P2S race).
    pub reply_426_after_complete: bool,
    /// Tear the data connection down after this many bytes and answer `426`.
    pub fail_mid_stream_after_bytes: Option<u64>,
    /// Wait this long before the final reply of a transfer (H2D takes 30+ s).
    pub final_reply_delay: Duration,
    /// After the client's close_notify, keep the final reply until the data TCP connection is
    /// closed as well.
    pub hold_226_until_data_close: bool,
    /// Refuse every password with `530 Login incorrect.`.
    pub bad_code: bool,
    /// Answer `STOR` with `553 Could not create file.` (full, write-protected, no card,
    /// outside Developer Mode on P2S).
    pub reply_553: bool,
    /// Cap of the data rate in bytes/s (P1/A1 are slow).
    pub bytes_per_sec: Option<u64>,
    /// Offer TLS 1.3 as well as 1.2 on new control connections (P2S FTPS).
    pub tls13: bool,
    /// Send a multi-line `220-` greeting (vsFTPd with a `banner_file`).
    pub multiline_banner: bool,
}

impl Default for FtpsKnobValues {
    fn default() -> Self {
        Self {
            require_session_reuse: true,
            pasv_host: PasvHost::Real,
            accept_prot_c: false,
            refuse_prot_p: false,
            reply_426_after_complete: false,
            fail_mid_stream_after_bytes: None,
            final_reply_delay: Duration::ZERO,
            hold_226_until_data_close: false,
            bad_code: false,
            reply_553: false,
            bytes_per_sec: None,
            tls13: false,
            multiline_banner: false,
        }
    }
}

/// Shared, runtime-settable fault knobs of one FTPS server.
#[derive(Debug, Clone, Default)]
pub struct FtpsKnobs {
    inner: Arc<Mutex<FtpsKnobValues>>,
}

impl FtpsKnobs {
    pub fn new(values: FtpsKnobValues) -> Self {
        Self {
            inner: Arc::new(Mutex::new(values)),
        }
    }
    /// A copy of the current values.
    pub fn get(&self) -> FtpsKnobValues {
        lock(&self.inner).clone()
    }
    /// Change knobs, e.g. `knobs.set(|k| k.reply_553 = true)`.
    pub fn set(&self, change: impl FnOnce(&mut FtpsKnobValues)) {
        change(&mut lock(&self.inner));
    }
}

/// Something the server did, in order, for tests to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FtpsEvent {
    SessionOpened {
        session: u64,
        tls_version: String,
    },
    /// A command line as received (`PASS` arguments are masked).
    Command {
        session: u64,
        line: String,
    },
    /// A data channel TLS handshake finished.
    DataTls {
        session: u64,
        resumed: bool,
    },
    /// A complete upload was written to storage.
    Stored {
        session: u64,
        name: String,
        bytes: u64,
    },
    /// An upload broke off; only `bytes` arrived and nothing went to storage.
    Partial {
        session: u64,
        name: String,
        bytes: u64,
    },
    SessionClosed {
        session: u64,
    },
}

/// Log of [`FtpsEvent`]s shared with tests.
#[derive(Debug, Clone, Default)]
pub struct FtpsRecord {
    events: Arc<Mutex<Vec<FtpsEvent>>>,
}

impl FtpsRecord {
    pub fn events(&self) -> Vec<FtpsEvent> {
        lock(&self.events).clone()
    }
    /// Every command line received, in order, over all sessions.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.events)
            .iter()
            .filter_map(|e| match e {
                FtpsEvent::Command { line, .. } => Some(line.clone()),
                _ => None,
            })
            .collect()
    }
    /// `resumed` of every data TLS handshake, in order.
    pub fn data_tls_resumed(&self) -> Vec<bool> {
        lock(&self.events)
            .iter()
            .filter_map(|e| match e {
                FtpsEvent::DataTls { resumed, .. } => Some(*resumed),
                _ => None,
            })
            .collect()
    }
    /// Number of control sessions opened.
    pub fn sessions(&self) -> usize {
        lock(&self.events)
            .iter()
            .filter(|e| matches!(e, FtpsEvent::SessionOpened { .. }))
            .count()
    }
    fn push(&self, e: FtpsEvent) {
        lock(&self.events).push(e);
    }
}

/// A running FTPS server.
pub struct FtpsServerHandle {
    port: u16,
    knobs: FtpsKnobs,
    record: FtpsRecord,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl FtpsServerHandle {
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn knobs(&self) -> FtpsKnobs {
        self.knobs.clone()
    }
    pub fn record(&self) -> FtpsRecord {
        self.record.clone()
    }
    /// Stop accepting, end every session and wait for the accept loop to finish.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for FtpsServerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Start an FTPS server on `127.0.0.1:0`.
pub async fn start(
    identity: SimIdentity,
    storage: SimStorage,
    access_code: String,
    knobs: FtpsKnobs,
) -> anyhow::Result<FtpsServerHandle> {
    start_on(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        identity,
        storage,
        access_code,
        knobs,
    )
    .await
}

/// Start an FTPS server on `addr` (port 0 = ephemeral; 990 is a printer's).
pub async fn start_on(
    addr: SocketAddr,
    identity: SimIdentity,
    storage: SimStorage,
    access_code: String,
    knobs: FtpsKnobs,
) -> anyhow::Result<FtpsServerHandle> {
    let listener = TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    let shared = Arc::new(Shared {
        tls12: identity.server_config(false)?,
        tls13: identity.server_config(true)?,
        storage,
        access_code,
        knobs: knobs.clone(),
        record: FtpsRecord::default(),
        files: Mutex::new(FileMeta::with_default_folders()),
        started: Utc::now(),
        next_session: AtomicU64::new(1),
    });
    let cancel = CancellationToken::new();
    let record = shared.record.clone();
    let task = tokio::spawn(accept_loop(listener, shared, cancel.clone()));
    Ok(FtpsServerHandle {
        port,
        knobs,
        record,
        cancel,
        task,
    })
}

struct Shared {
    tls12: Arc<rustls::ServerConfig>,
    tls13: Arc<rustls::ServerConfig>,
    storage: SimStorage,
    access_code: String,
    knobs: FtpsKnobs,
    record: FtpsRecord,
    files: Mutex<FileMeta>,
    started: DateTime<Utc>,
    next_session: AtomicU64,
}

/// What the server knows beyond [`SimStorage`]: directories, times, partial uploads.
#[derive(Default)]
struct FileMeta {
    dirs: BTreeSet<String>,
    mtimes: BTreeMap<String, DateTime<Utc>>,
    /// Broken uploads: name → bytes that arrived.
    partial: BTreeMap<String, u64>,
}

/// Folders a printer's storage has from the start (Studio stores sent files in `cache/`).
pub const DEFAULT_FOLDERS: [&str; 3] = ["cache", "model", "timelapse"];

impl FileMeta {
    fn with_default_folders() -> Self {
        Self {
            dirs: DEFAULT_FOLDERS.iter().map(|d| d.to_string()).collect(),
            ..Self::default()
        }
    }
}

/// vsFTPd's `FEAT` answer for what this server implements (implicit TLS, so no `AUTH`; passive
/// only, so no `EPRT`; no `REST`).
const FEATURES: &[&str] = &[
    " EPSV", " MDTM", " PASV", " PBSZ", " PROT", " SIZE", " TVFS", " UTF8",
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let shared = shared.clone();
                    let cancel = cancel.clone();
                    sessions.spawn(async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = run_session(shared, tcp) => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("sim FTPS accept failed: {e}");
                    sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    sessions.shutdown().await;
}

async fn run_session(shared: Arc<Shared>, tcp: TcpStream) {
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let local_ip = tcp
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let _ = tcp.set_nodelay(true);
    let cfg = if shared.knobs.get().tls13 {
        shared.tls13.clone()
    } else {
        shared.tls12.clone()
    };
    let io = match timeout(DATA_WAIT, TlsAcceptor::from(cfg.clone()).accept(tcp)).await {
        Ok(Ok(io)) => io,
        _ => return,
    };
    let tls_version = io
        .get_ref()
        .1
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    shared.record.push(FtpsEvent::SessionOpened {
        session: id,
        tls_version,
    });
    let mut s = Session {
        id,
        shared: shared.clone(),
        ctl: LineIo::new(io),
        tls: cfg,
        local_ip,
        user_given: false,
        user_ok: false,
        logged_in: false,
        prot_private: false,
        cwd: "/".to_string(),
        pasv: None,
    };
    let _ = s.serve().await;
    shared.record.push(FtpsEvent::SessionClosed { session: id });
}

/// Control channel with line reading.
struct LineIo<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineIo<S> {
    fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }
    /// Next line without CR LF; `None` on EOF, error, overlong line or idle timeout.
    async fn line(&mut self) -> Option<String> {
        let deadline = Instant::now() + IDLE;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&raw);
                return Some(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_LINE {
                return None;
            }
            let mut chunk = [0u8; 1024];
            let n = match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return None,
            };
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
    async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }
    async fn reply(&mut self, code: u16, text: &str) -> std::io::Result<()> {
        let line = format!("{code} {text}\r\n");
        self.io.write_all(line.as_bytes()).await?;
        self.io.flush().await
    }
}

/// The data connection of one transfer, encrypted or clear.
enum Data {
    Tls(Box<TlsStream<TcpStream>>),
    Clear(TcpStream),
}

/// Why a session ends.
type SessionEnd = std::io::Result<()>;

struct Session {
    id: u64,
    shared: Arc<Shared>,
    ctl: LineIo<TlsStream<TcpStream>>,
    tls: Arc<rustls::ServerConfig>,
    local_ip: IpAddr,
    user_given: bool,
    user_ok: bool,
    logged_in: bool,
    prot_private: bool,
    cwd: String,
    pasv: Option<TcpListener>,
}

impl Session {
    async fn serve(&mut self) -> SessionEnd {
        if self.shared.knobs.get().multiline_banner {
            self.ctl
                .raw(b"220-Welcome to the printgate simulator.\r\n220-Files go to the root.\r\n")
                .await?;
        }
        self.ctl.reply(220, "(vsFTPd 3.0.5)").await?;
        // Bounded by the idle timeout of every read and by the 4 KiB line limit.
        while let Some(line) = self.ctl.line().await {
            let (verb, arg) = match line.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
                None => (line.to_ascii_uppercase(), String::new()),
            };
            let shown = if verb == "PASS" {
                "PASS ****".to_string()
            } else {
                line.clone()
            };
            self.shared.record.push(FtpsEvent::Command {
                session: self.id,
                line: shown,
            });
            if verb == "QUIT" {
                self.ctl.reply(221, "Goodbye.").await?;
                return Ok(());
            }
            self.command(&verb, &arg).await?;
        }
        Ok(())
    }

    async fn command(&mut self, verb: &str, arg: &str) -> SessionEnd {
        let knobs = self.shared.knobs.get();
        match verb {
            "USER" => {
                // vsFTPd asks for a password whatever the user name; PASS then fails.
                self.user_ok = arg == "bblp";
                self.user_given = true;
                self.logged_in = false;
                self.ctl.reply(331, "Please specify the password.").await
            }
            "PASS" => {
                if !self.user_given {
                    return self.ctl.reply(503, "Login with USER first.").await;
                }
                if knobs.bad_code || !self.user_ok || arg != self.shared.access_code {
                    self.ctl.reply(530, "Login incorrect.").await
                } else {
                    self.logged_in = true;
                    self.ctl.reply(230, "Login successful.").await
                }
            }
            "PBSZ" => self.ctl.reply(200, "PBSZ set to 0.").await,
            "PROT" => match arg.to_ascii_uppercase().as_str() {
                "P" if knobs.refuse_prot_p => {
                    self.ctl
                        .reply(536, "Requested PROT level not supported.")
                        .await
                }
                "P" => {
                    self.prot_private = true;
                    self.ctl.reply(200, "PROT now Private.").await
                }
                "C" => {
                    self.prot_private = false;
                    self.ctl.reply(200, "PROT now Clear.").await
                }
                _ => self.ctl.reply(536, "Bad PROT command.").await,
            },
            // vsFTPd answers FEAT and OPTS before login too.
            "FEAT" => {
                let mut text = String::from("211-Features:\r\n");
                for f in FEATURES {
                    text.push_str(f);
                    text.push_str("\r\n");
                }
                self.ctl.raw(text.as_bytes()).await?;
                self.ctl.reply(211, "End").await
            }
            "OPTS" => {
                if arg.trim().eq_ignore_ascii_case("UTF8 ON") {
                    self.ctl.reply(200, "Always in UTF8 mode.").await
                } else {
                    self.ctl.reply(501, "Option not understood.").await
                }
            }
            _ if !self.logged_in => {
                self.ctl
                    .reply(530, "Please login with USER and PASS.")
                    .await
            }
            "SYST" => self.ctl.reply(215, "UNIX Type: L8").await,
            "TYPE" => match arg.to_ascii_uppercase().as_str() {
                "I" | "L 8" => self.ctl.reply(200, "Switching to Binary mode.").await,
                "A" | "A N" => self.ctl.reply(200, "Switching to ASCII mode.").await,
                _ => self.ctl.reply(500, "Unrecognised TYPE command.").await,
            },
            "PASV" => self.passive(false, &knobs).await,
            "EPSV" => self.passive(true, &knobs).await,
            "PWD" => {
                let text = format!("\"{}\" is the current directory", self.cwd);
                self.ctl.reply(257, &text).await
            }
            "CWD" => {
                let dir = self.resolve(arg);
                if self.dir_exists(&dir) {
                    self.cwd = format!("/{dir}");
                    self.ctl.reply(250, "Directory successfully changed.").await
                } else {
                    self.ctl.reply(550, "Failed to change directory.").await
                }
            }
            "MKD" => {
                let dir = self.resolve(arg);
                // Like mkdir(2): the parent must exist and the name must be free.
                let created = !dir.is_empty()
                    && !self.shared.storage.is_missing()
                    && self.dir_exists(parent(&dir))
                    && self.file_size(&dir).is_none()
                    && !self.dir_exists(&dir)
                    && lock(&self.shared.files).dirs.insert(dir.clone());
                if created {
                    let text = format!("\"/{dir}\" created");
                    self.ctl.reply(257, &text).await
                } else {
                    self.ctl
                        .reply(550, "Create directory operation failed.")
                        .await
                }
            }
            "SIZE" => {
                let key = self.resolve(arg);
                match self.file_size(&key) {
                    Some(n) => self.ctl.reply(213, &n.to_string()).await,
                    None => self.ctl.reply(550, "Could not get file size.").await,
                }
            }
            "MDTM" => {
                let key = self.resolve(arg);
                if self.file_size(&key).is_some() {
                    let t = self.mtime(&key).format("%Y%m%d%H%M%S").to_string();
                    self.ctl.reply(213, &t).await
                } else {
                    self.ctl
                        .reply(550, "Could not get file modification time.")
                        .await
                }
            }
            "DELE" => {
                let key = self.resolve(arg);
                let partial = lock(&self.shared.files).partial.remove(&key).is_some();
                let removed = self.shared.storage.remove(&key);
                if removed || partial {
                    lock(&self.shared.files).mtimes.remove(&key);
                    self.ctl.reply(250, "Delete operation successful.").await
                } else {
                    self.ctl.reply(550, "Delete operation failed.").await
                }
            }
            "STOR" => self.store(arg, &knobs).await,
            "RETR" => {
                let key = self.resolve(arg);
                match self.shared.storage.get(&key) {
                    Some(content) => {
                        let opening = format!(
                            "Opening BINARY mode data connection for {key} ({} bytes).",
                            content.len()
                        );
                        self.send_data(&content, &opening, "Transfer complete.", &knobs)
                            .await
                    }
                    None => self.ctl.reply(550, "Failed to open file.").await,
                }
            }
            "LIST" | "NLST" => {
                if self.shared.storage.is_missing() {
                    return self.ctl.reply(550, "Failed to open directory.").await;
                }
                let (listing, final_text) = match self.listing(arg, verb == "LIST") {
                    Some(listing) => (listing, "Directory send OK."),
                    None => (
                        String::new(),
                        "Transfer done (but failed to open directory).",
                    ),
                };
                self.send_data(
                    listing.as_bytes(),
                    "Here comes the directory listing.",
                    final_text,
                    &knobs,
                )
                .await
            }
            "NOOP" => self.ctl.reply(200, "NOOP ok.").await,
            _ => self.ctl.reply(500, "Unknown command.").await,
        }
    }

    /// Path argument → storage key relative to the root (`/a/b`, `b` in `/a` → `a/b`).
    fn resolve(&self, arg: &str) -> String {
        let joined = if arg.starts_with('/') {
            arg.to_string()
        } else {
            format!("{}/{arg}", self.cwd.trim_end_matches('/'))
        };
        let parts: Vec<&str> = joined
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .fold(Vec::new(), |mut acc, p| {
                if p == ".." {
                    acc.pop();
                } else {
                    acc.push(p);
                }
                acc
            });
        parts.join("/")
    }

    fn file_size(&self, key: &str) -> Option<u64> {
        if let Some(content) = self.shared.storage.get(key) {
            return Some(content.len() as u64);
        }
        if self.shared.storage.is_missing() {
            return None;
        }
        lock(&self.shared.files).partial.get(key).copied()
    }

    fn mtime(&self, key: &str) -> DateTime<Utc> {
        lock(&self.shared.files)
            .mtimes
            .get(key)
            .copied()
            .unwrap_or(self.shared.started)
    }

    /// A directory: the root, a folder made by `MKD` (or there from the start), or a folder
    /// holding a stored file.
    fn dir_exists(&self, dir: &str) -> bool {
        if dir.is_empty() || lock(&self.shared.files).dirs.contains(dir) {
            return true;
        }
        let prefix = format!("{dir}/");
        self.shared
            .storage
            .list()
            .iter()
            .any(|(name, _)| name.starts_with(&prefix))
    }

    /// `LIST`/`NLST` of `arg` as vsFTPd does it: leading `-options` are skipped; a directory is
    /// listed; anything else is split at its last `/` into a directory and a name to show.
    /// `ls -l` lines (numeric owner/group, UTC) for `LIST`; names for `NLST`, prefixed with
    /// the directory as the client wrote it. `None` when the directory does not exist.
    fn listing(&self, arg: &str, long: bool) -> Option<String> {
        let path = match arg.strip_prefix('-') {
            Some(opts) => opts.split_once(' ').map_or("", |(_, p)| p),
            None => arg,
        }
        .trim();
        let (dir_arg, filter) = if path.is_empty() || self.dir_exists(&self.resolve(path)) {
            (path, None)
        } else {
            match path.rsplit_once('/') {
                Some(("", name)) => ("/", Some(name)),
                Some((dir, name)) => (dir, Some(name)),
                None => ("", Some(path)),
            }
        };
        let dir = self.resolve(dir_arg);
        if !self.dir_exists(&dir) {
            return None;
        }
        let shown_prefix = match dir_arg {
            "" | "." => String::new(),
            d if d.ends_with('/') => d.to_string(),
            d => format!("{d}/"),
        };
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut entries: BTreeMap<String, Option<u64>> = BTreeMap::new();
        for (name, size) in self.shared.storage.list() {
            if let Some(rest) = name.strip_prefix(&prefix) {
                match rest.split_once('/') {
                    Some((sub, _)) => entries.insert(sub.to_string(), None),
                    None => entries.insert(rest.to_string(), Some(size)),
                };
            }
        }
        {
            let files = lock(&self.shared.files);
            for (name, size) in &files.partial {
                if let Some(rest) = name.strip_prefix(&prefix)
                    && !rest.contains('/')
                {
                    entries.insert(rest.to_string(), Some(*size));
                }
            }
            for d in &files.dirs {
                if let Some(rest) = d.strip_prefix(&prefix)
                    && !rest.is_empty()
                    && !rest.contains('/')
                {
                    entries.insert(rest.to_string(), None);
                }
            }
        }
        if let Some(only) = filter {
            entries.retain(|name, _| name == only);
        }
        let now = Utc::now();
        let mut out = String::new();
        for (name, size) in entries {
            if !long {
                out.push_str(&shown_prefix);
                out.push_str(&name);
                out.push_str("\r\n");
                continue;
            }
            let key = format!("{prefix}{name}");
            let t = self.mtime(&key);
            let when = if t.year() == now.year() {
                t.format("%b %d %H:%M").to_string()
            } else {
                t.format("%b %d  %Y").to_string()
            };
            let (mode, len) = match size {
                Some(n) => ("-rw-r--r--", n),
                None => ("drwxr-xr-x", 4096),
            };
            out.push_str(&format!(
                "{mode}    1 0        0        {len:>8} {when} {name}\r\n"
            ));
        }
        Some(out)
    }

    async fn passive(&mut self, extended: bool, knobs: &FtpsKnobValues) -> SessionEnd {
        self.pasv = None;
        let listener = match TcpListener::bind(SocketAddr::new(self.local_ip, 0)).await {
            Ok(l) => l,
            Err(_) => {
                return self
                    .ctl
                    .reply(425, "Could not listen for passive connection.")
                    .await;
            }
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(_) => {
                return self
                    .ctl
                    .reply(425, "Could not listen for passive connection.")
                    .await;
            }
        };
        self.pasv = Some(listener);
        if extended {
            let text = format!("Entering Extended Passive Mode (|||{port}|)");
            return self.ctl.reply(229, &text).await;
        }
        let host = match knobs.pasv_host {
            PasvHost::Real => match self.local_ip {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            },
            PasvHost::Zero => Ipv4Addr::UNSPECIFIED,
            PasvHost::Wrong(ip) => ip,
        };
        let [a, b, c, d] = host.octets();
        let text = format!(
            "Entering Passive Mode ({a},{b},{c},{d},{},{}).",
            port / 256,
            port % 256
        );
        self.ctl.reply(227, &text).await
    }

    /// Accept the passive data connection and send `150`, then start TLS (when `PROT P`).
    /// `Ok(None)` means a reply was already sent and the transfer is off.
    async fn open_data(
        &mut self,
        opening: &str,
        knobs: &FtpsKnobValues,
    ) -> std::io::Result<Option<Data>> {
        let Some(listener) = self.pasv.take() else {
            self.ctl.reply(425, "Use PORT or PASV first.").await?;
            return Ok(None);
        };
        if !self.prot_private && !knobs.accept_prot_c {
            self.ctl
                .reply(522, "Data connections must be encrypted.")
                .await?;
            return Ok(None);
        }
        let tcp = match timeout(DATA_WAIT, listener.accept()).await {
            Ok(Ok((tcp, _))) => tcp,
            _ => {
                self.ctl
                    .reply(425, "Failed to establish connection.")
                    .await?;
                return Ok(None);
            }
        };
        drop(listener);
        let _ = tcp.set_nodelay(true);
        self.ctl.reply(150, opening).await?;
        if !self.prot_private {
            return Ok(Some(Data::Clear(tcp)));
        }
        let tls = match timeout(DATA_WAIT, TlsAcceptor::from(self.tls.clone()).accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            _ => {
                self.ctl.reply(522, "SSL connection failed.").await?;
                return Ok(None);
            }
        };
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        self.shared.record.push(FtpsEvent::DataTls {
            session: self.id,
            resumed,
        });
        if !resumed && knobs.require_session_reuse {
            drop(tls);
            self.ctl
                .reply(522, "SSL connection failed: session reuse required")
                .await?;
            return Ok(None);
        }
        Ok(Some(Data::Tls(Box::new(tls))))
    }

    async fn send_data(
        &mut self,
        payload: &[u8],
        opening: &str,
        final_text: &str,
        knobs: &FtpsKnobValues,
    ) -> SessionEnd {
        let Some(data) = self.open_data(opening, knobs).await? else {
            return Ok(());
        };
        let sent = match data {
            Data::Tls(mut tls) => write_and_close(&mut *tls, payload).await,
            Data::Clear(mut tcp) => write_and_close(&mut tcp, payload).await,
        };
        if sent {
            self.ctl.reply(226, final_text).await
        } else {
            self.ctl.reply(426, "Failure writing network stream.").await
        }
    }

    async fn store(&mut self, arg: &str, knobs: &FtpsKnobValues) -> SessionEnd {
        let key = self.resolve(arg);
        if key.is_empty() {
            return self.ctl.reply(553, "Could not create file.").await;
        }
        // vsFTPd cannot create the file in a folder that does not exist (open(2) fails).
        if knobs.reply_553 || self.shared.storage.is_missing() || !self.dir_exists(parent(&key)) {
            self.pasv = None;
            return self.ctl.reply(553, "Could not create file.").await;
        }
        let Some(data) = self.open_data("Ok to send data.", knobs).await? else {
            return Ok(());
        };
        let received = match data {
            Data::Tls(tls) => receive(*tls, knobs).await,
            Data::Clear(tcp) => receive_clear(tcp, knobs).await,
        };
        let content = match received {
            Received::Complete(content) => content,
            Received::Broken(bytes) => {
                // Like a real card: the old file is gone, a short one is left behind.
                self.shared.storage.remove(&key);
                {
                    let mut files = lock(&self.shared.files);
                    files.partial.insert(key.clone(), bytes);
                    files.mtimes.insert(key.clone(), Utc::now());
                }
                self.shared.record.push(FtpsEvent::Partial {
                    session: self.id,
                    name: key,
                    bytes,
                });
                return self.ctl.reply(426, "Failure reading network stream.").await;
            }
        };
        let bytes = content.len() as u64;
        match self.shared.storage.put(&key, content) {
            Ok(()) => {}
            Err(StorageError::Full | StorageError::Missing) => {
                lock(&self.shared.files).partial.remove(&key);
                return self.ctl.reply(553, "Could not create file.").await;
            }
        }
        {
            let mut files = lock(&self.shared.files);
            files.partial.remove(&key);
            files.mtimes.insert(key.clone(), Utc::now());
        }
        self.shared.record.push(FtpsEvent::Stored {
            session: self.id,
            name: key,
            bytes,
        });
        if !knobs.final_reply_delay.is_zero() {
            sleep(knobs.final_reply_delay).await;
        }
        if knobs.reply_426_after_complete {
            self.ctl.reply(426, "Failure reading network stream.").await
        } else {
            self.ctl.reply(226, "Transfer complete.").await
        }
    }
}

/// The folder a storage key lives in (`""` = the root).
fn parent(key: &str) -> &str {
    key.rsplit_once('/').map_or("", |(dir, _)| dir)
}

enum Received {
    Complete(Vec<u8>),
    /// The stream broke (or was torn down by a knob) after this many bytes.
    Broken(u64),
}

/// Read an upload over TLS. Ends at the client's close_notify or at TCP EOF without one (like
/// vsFTPd with `strict_ssl_read_eof=NO`); with `hold_226_until_data_close` a close_notify is
/// followed by waiting for the TCP connection to close too.
async fn receive(mut tls: TlsStream<TcpStream>, knobs: &FtpsKnobValues) -> Received {
    let (content, close_notify) = match read_all(&mut tls, knobs).await {
        Ok(r) => r,
        Err(n) => return Received::Broken(n),
    };
    if knobs.hold_226_until_data_close && close_notify {
        let (mut tcp, _) = tls.into_inner();
        let mut sink = [0u8; 1024];
        // Bounded: each read waits at most DATA_WAIT and EOF or an error ends the loop.
        for _ in 0..4096 {
            match timeout(DATA_WAIT, tcp.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
    }
    Received::Complete(content)
}

async fn receive_clear(mut tcp: TcpStream, knobs: &FtpsKnobValues) -> Received {
    match read_all(&mut tcp, knobs).await {
        Ok((c, _)) => Received::Complete(c),
        Err(n) => Received::Broken(n),
    }
}

/// Read until the end of the stream, applying the rate cap and the mid-stream failure knob.
/// `Ok((content, clean))`: `clean` when the stream ended with a read of 0 bytes (TLS:
/// close_notify), false on EOF without close_notify. `Err(bytes)` when the stream broke.
async fn read_all<S: AsyncRead + Unpin>(
    io: &mut S,
    knobs: &FtpsKnobValues,
) -> Result<(Vec<u8>, bool), u64> {
    let started = Instant::now();
    let mut content = Vec::new();
    let mut buf = vec![0u8; DATA_CHUNK];
    // Bounded: every read either makes progress, ends the stream or times out.
    loop {
        let n = match timeout(DATA_WAIT, io.read(&mut buf)).await {
            Ok(Ok(0)) => return Ok((content, true)),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok((content, false));
            }
            _ => return Err(content.len() as u64),
        };
        content.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(limit) = knobs.fail_mid_stream_after_bytes
            && content.len() as u64 >= limit
        {
            return Err(limit);
        }
        if let Some(rate) = knobs.bytes_per_sec.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(content.len() as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                sleep(due - elapsed).await;
            }
        }
    }
}

/// Send `payload` and close (close_notify + FIN for TLS). True when everything went out.
async fn write_and_close<S: AsyncWrite + Unpin>(io: &mut S, payload: &[u8]) -> bool {
    let written = timeout(DATA_WAIT, io.write_all(payload)).await;
    let closed = timeout(DATA_WAIT, io.shutdown()).await;
    matches!(written, Ok(Ok(()))) && matches!(closed, Ok(Ok(())))
}
