//! A virtual printer's implicit FTPS server (docs/bambu-protocol.md §7): what a slicer or a
//! client library needs to upload a sliced project to "the printer" — TLS from the first byte,
//! `USER bblp` / `PASS <access code>` (wrong codes count towards the same lockout as MQTT),
//! `PBSZ 0`, `PROT P` (clear data connections are refused), passive data connections whose TLS
//! may resume the control session, `STOR` into the root, `SIZE`, `LIST`/`NLST` and `DELE` of
//! what was uploaded. A `STOR` is streamed into printgate's file store with the web upload's
//! validation and limits; a file that fails them is answered `552` with the reason and kept
//! nowhere. Nothing here starts a print.

use super::server::VirtualPrinter;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep, timeout};
use tokio_util::sync::CancellationToken;

/// Idle control connections are closed after this (vsFTPd: 300 s).
const IDLE: Duration = Duration::from_secs(300);
/// Waits for a data connection, its TLS handshake and each read of an upload.
const DATA_WAIT: Duration = Duration::from_secs(30);
const MAX_LINE: usize = 4096;
/// FTPS sessions one virtual printer holds at most.
const MAX_SESSIONS: usize = 16;

/// Accept FTPS sessions until shutdown.
pub async fn run_listener(
    vp: Arc<VirtualPrinter>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let vp = vp.clone();
        let open = open.clone();
        let cancel = shutdown.child_token();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = session(&vp, tcp, peer) => {}
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn session(vp: &Arc<VirtualPrinter>, tcp: TcpStream, peer: SocketAddr) {
    let local_ip = tcp.local_addr().map(|a| a.ip()).unwrap_or(peer.ip());
    let io = match timeout(DATA_WAIT, vp.acceptor().accept(tcp)).await {
        Ok(Ok(io)) => io,
        _ => return,
    };
    let mut s = Session {
        vp: vp.clone(),
        ctl: Lines {
            io,
            buf: Vec::new(),
        },
        peer: peer.ip(),
        local_ip,
        user: false,
        logged_in: false,
        prot_private: false,
        pasv: None,
    };
    let _ = s.serve().await;
}

struct Lines<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lines<S> {
    async fn line(&mut self) -> Option<String> {
        let deadline = Instant::now() + IDLE;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(
                    String::from_utf8_lossy(&raw)
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                );
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

    async fn reply(&mut self, code: u16, text: &str) -> std::io::Result<()> {
        // One line: a reason with a line break must not end the reply early.
        let text = text.replace(['\r', '\n'], " ");
        self.io
            .write_all(format!("{code} {text}\r\n").as_bytes())
            .await?;
        self.io.flush().await
    }
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

struct Session {
    vp: Arc<VirtualPrinter>,
    ctl: Lines<Tls>,
    peer: IpAddr,
    local_ip: IpAddr,
    user: bool,
    logged_in: bool,
    prot_private: bool,
    pasv: Option<TcpListener>,
}

/// The root-level file a path argument names, if it names one (`/a.3mf`, `a.3mf`).
fn root_file(arg: &str) -> Option<&str> {
    let name = arg.trim().trim_start_matches('/');
    (!name.is_empty() && !name.contains('/') && name != "." && name != "..").then_some(name)
}

impl Session {
    async fn serve(&mut self) -> std::io::Result<()> {
        self.ctl.reply(220, "(vsFTPd 3.0.5)").await?;
        // Bounded by the idle timeout of every read and the line limit.
        while let Some(line) = self.ctl.line().await {
            let (verb, arg) = match line.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
                None => (line.to_ascii_uppercase(), String::new()),
            };
            if verb == "QUIT" {
                return self.ctl.reply(221, "Goodbye.").await;
            }
            self.command(&verb, &arg).await?;
        }
        Ok(())
    }

    async fn command(&mut self, verb: &str, arg: &str) -> std::io::Result<()> {
        match verb {
            "USER" => {
                self.user = arg == "bblp";
                self.logged_in = false;
                self.ctl.reply(331, "Please specify the password.").await
            }
            "PASS" => {
                if self.user && self.vp.ftps_login(arg, self.peer) {
                    self.logged_in = true;
                    self.ctl.reply(230, "Login successful.").await
                } else {
                    self.ctl.reply(530, "Login incorrect.").await
                }
            }
            "PBSZ" => self.ctl.reply(200, "PBSZ set to 0.").await,
            "PROT" => {
                self.prot_private = arg.eq_ignore_ascii_case("P");
                self.ctl.reply(200, "PROT now set.").await
            }
            "FEAT" => {
                self.ctl
                    .io
                    .write_all(b"211-Features:\r\n EPSV\r\n PASV\r\n PBSZ\r\n PROT\r\n SIZE\r\n UTF8\r\n211 End\r\n")
                    .await?;
                self.ctl.io.flush().await
            }
            "OPTS" => self.ctl.reply(200, "Always in UTF8 mode.").await,
            _ if !self.logged_in => {
                self.ctl
                    .reply(530, "Please login with USER and PASS.")
                    .await
            }
            "SYST" => self.ctl.reply(215, "UNIX Type: L8").await,
            "TYPE" => self.ctl.reply(200, "Switching to Binary mode.").await,
            "NOOP" => self.ctl.reply(200, "NOOP ok.").await,
            "PWD" => self.ctl.reply(257, "\"/\" is the current directory").await,
            "CWD" => {
                if matches!(arg.trim(), "/" | "" | ".") {
                    self.ctl.reply(250, "Directory successfully changed.").await
                } else {
                    self.ctl
                        .reply(550, "Failed to change directory: uploads go to the root.")
                        .await
                }
            }
            "PASV" => self.passive(false).await,
            "EPSV" => self.passive(true).await,
            "SIZE" => match root_file(arg).and_then(|n| self.vp.uploads().size(n)) {
                Some(size) => self.ctl.reply(213, &size.to_string()).await,
                None => self.ctl.reply(550, "Could not get file size.").await,
            },
            "DELE" => match root_file(arg).and_then(|n| self.vp.uploads().remove(n)) {
                Some(release) => {
                    if let Some(sha) = release {
                        self.vp.release_file(sha);
                    }
                    self.ctl.reply(250, "Delete operation successful.").await
                }
                None => self.ctl.reply(550, "Delete operation failed.").await,
            },
            "LIST" | "NLST" => {
                let long = verb == "LIST";
                let mut out = String::new();
                for (name, size) in self.vp.uploads().list() {
                    if long {
                        out.push_str(&format!(
                            "-rw-r--r--    1 0        0        {size:>8} Jan 01 00:00 {name}\r\n"
                        ));
                    } else {
                        out.push_str(&format!("{name}\r\n"));
                    }
                }
                self.send_listing(out.as_bytes()).await
            }
            "STOR" => self.store(arg).await,
            "RETR" => self.ctl.reply(550, "Failed to open file.").await,
            "MKD" | "RMD" => {
                self.ctl
                    .reply(550, "Create directory operation failed.")
                    .await
            }
            _ => self.ctl.reply(500, "Unknown command.").await,
        }
    }

    async fn passive(&mut self, extended: bool) -> std::io::Result<()> {
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
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            return self
                .ctl
                .reply(425, "Could not listen for passive connection.")
                .await;
        };
        self.pasv = Some(listener);
        if extended {
            return self
                .ctl
                .reply(229, &format!("Entering Extended Passive Mode (|||{port}|)"))
                .await;
        }
        let [a, b, c, d] = match self.local_ip {
            IpAddr::V4(ip) => ip.octets(),
            IpAddr::V6(_) => [0, 0, 0, 0],
        };
        let text = format!(
            "Entering Passive Mode ({a},{b},{c},{d},{},{}).",
            port / 256,
            port % 256
        );
        self.ctl.reply(227, &text).await
    }

    /// The data connection of one transfer (TLS), after `150`; `None` when a reply was sent.
    async fn open_data(&mut self, opening: &str) -> std::io::Result<Option<Tls>> {
        let Some(listener) = self.pasv.take() else {
            self.ctl.reply(425, "Use PORT or PASV first.").await?;
            return Ok(None);
        };
        if !self.prot_private {
            self.ctl
                .reply(522, "Data connections must be encrypted (PROT P).")
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
        match timeout(DATA_WAIT, self.vp.acceptor().accept(tcp)).await {
            Ok(Ok(tls)) => Ok(Some(tls)),
            _ => {
                self.ctl.reply(522, "SSL connection failed.").await?;
                Ok(None)
            }
        }
    }

    async fn send_listing(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let Some(mut data) = self.open_data("Here comes the directory listing.").await? else {
            return Ok(());
        };
        let sent = timeout(DATA_WAIT, async {
            data.write_all(payload).await?;
            data.shutdown().await
        })
        .await;
        if matches!(sent, Ok(Ok(()))) {
            self.ctl.reply(226, "Directory send OK.").await
        } else {
            self.ctl.reply(426, "Failure writing network stream.").await
        }
    }

    async fn store(&mut self, arg: &str) -> std::io::Result<()> {
        let Some(name) = root_file(arg).map(str::to_string) else {
            self.pasv = None;
            return self
                .ctl
                .reply(553, "Could not create file: uploads go to the root folder.")
                .await;
        };
        let Some(data) = self.open_data("Ok to send data.").await? else {
            return Ok(());
        };
        let body = Upload::new(data);
        match self.vp.files().ingest(&name, body).await {
            Ok(stored) => {
                tracing::info!(printer = %self.vp.printer, file = %name, bytes = stored.size, "a client uploaded a file to the virtual printer");
                for sha in self.vp.uploads().add(&name, stored) {
                    self.vp.release_file(sha);
                }
                self.ctl.reply(226, "Transfer complete.").await
            }
            Err(e) => {
                tracing::info!(printer = %self.vp.printer, file = %name, "a virtual printer upload was refused: {e}");
                self.ctl.reply(552, &format!("Upload refused: {e}")).await
            }
        }
    }
}

/// An upload's data connection as a reader for the file store: the client's close_notify or a
/// TCP end without one (as vsFTPd with `strict_ssl_read_eof=NO`; a cut-off project fails the
/// 3MF checks) ends the file; a read that stalls for [`DATA_WAIT`] fails it.
struct Upload {
    io: Tls,
    stall: Pin<Box<Sleep>>,
}

impl Upload {
    fn new(io: Tls) -> Self {
        Self {
            io,
            stall: Box::pin(tokio::time::sleep(DATA_WAIT)),
        }
    }
}

impl AsyncRead for Upload {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + DATA_WAIT;
                    self.stall.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.stall.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no data for {} s", DATA_WAIT.as_secs()),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::root_file;

    #[test]
    fn only_root_files_are_named() {
        assert_eq!(root_file("/a.gcode.3mf"), Some("a.gcode.3mf"));
        assert_eq!(root_file("a.gcode.3mf"), Some("a.gcode.3mf"));
        assert_eq!(root_file("/cache/a.3mf"), None);
        assert_eq!(root_file("../etc/passwd"), None);
        assert_eq!(root_file(""), None);
        assert_eq!(root_file(".."), None);
    }
}
