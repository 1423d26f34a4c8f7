//! Connections that never log in must not lock anyone out (issue 13, pre-login exhaustion).
//!
//! The real `printgate serve` binary runs with the file-descriptor limit a systemd service has
//! unless its unit raises it (soft 1024). This process floods one listener from 127.0.0.1 with
//! 500 connections that never finish logging in — idle sockets, sockets that send one byte a
//! second (of an MQTT CONNECT, a TLS ClientHello or an HTTP request head) and, for MQTT over
//! WebSocket, sockets that complete the upgrade and then say nothing — each reconnected 200 ms
//! after the gateway closes it. Meanwhile a valid client from 127.0.0.2 connects 20 times: each
//! time it must have its CONNACK (web: its answer) within 1 s. Also proved: the gateway holds no
//! more flood connections than its per-address limit for long, and its log stays small (one
//! summary line per interval naming the address and the count, not a line per socket).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

const ATTEMPTS: usize = 20;
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
const VALID_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const USER: &str = "flood-test";
const PASSWORD: &str = "valid-password";
/// Reconnect delay of a flood socket after the gateway closed it.
const RECONNECT: Duration = Duration::from_millis(200);
/// A flood connection open this long is one the gateway holds (not one it is refusing).
const HELD: Duration = Duration::from_secs(2);
/// Log lines the gateway may write while flooded (start-up lines excluded).
const MAX_LOG_LINES: usize = 50;
/// One flood at a time: three gateways and their floods at once would measure the machine's
/// two cores, not the gateway.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Defaults from README "Connections that never log in".
const MQTT_PER_ADDRESS: usize = 8;
const WEB_PER_ADDRESS: usize = 16;

/// Raise this process's soft file-descriptor limit (the flood needs ~600 sockets).
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit are given a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    assert!(
        r.rlim_cur >= 2048,
        "this test needs 2048 open files (ulimit -n is {}, hard limit {}): raise the hard limit",
        r.rlim_cur,
        r.rlim_max
    );
}

fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse().ok()
}

/// `printgate serve` in its own process, with every listener on 127.0.0.1.
struct Serve {
    _child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
    web: SocketAddr,
    mqtt: SocketAddr,
    mqtts: SocketAddr,
    ws: SocketAddr,
}

impl Serve {
    async fn start() -> Serve {
        raise_fd_limit();
        let dir = tempfile::tempdir().unwrap();
        let hash = printgate::broker::auth::hash_password(PASSWORD).unwrap();
        let config = dir.path().join("printgate.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = '{}'\n\n[web]\nlisten = \"127.0.0.1:0\"\n\n[broker]\n\
                 listen = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
                 websocket_listen = \"127.0.0.1:0\"\n\n\
                 [broker.mdns]\nenabled = false\n\n[broker.ssdp]\nenabled = false\n\n\
                 [[broker.users]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\naccess = \"read\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_printgate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            // The binary's own default level (info; the embedded rumqttd, which only ever
            // sees printgate's front door, logs nothing).
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The soft limit of a systemd service (DefaultLimitNOFILE=1024:524288).
                let mut r = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
                    r.rlim_cur = r.rlim_max.min(1024);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &r);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start printgate serve");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let pipes: [Box<dyn tokio::io::AsyncRead + Unpin + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let (lines, tx) = (lines.clone(), tx.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let (mut web, mut mqtt, mut mqtts, mut ws) = (None, None, None, None);
        let up = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = rx.recv().await {
                web = web.or(addr_after(&line, "web interface on http://"));
                mqtt = mqtt.or(addr_after(&line, "MQTT broker on "));
                mqtts = mqtts.or(addr_after(&line, "MQTT over TLS on "));
                ws = ws.or(addr_after(&line, "MQTT over WebSocket on ws://"));
                if web.is_some() && mqtt.is_some() && mqtts.is_some() && ws.is_some() {
                    return;
                }
            }
        })
        .await;
        let serve = Serve {
            _child: child,
            lines,
            dir,
            web: web.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            mqtt: mqtt.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            mqtts: mqtts.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            ws: ws.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        };
        assert!(
            up.is_ok() && web.is_some() && mqtt.is_some() && mqtts.is_some() && ws.is_some(),
            "printgate serve did not log its listeners within 60 s:\n{}",
            serve.lines.lock().unwrap().join("\n")
        );
        serve
    }

    fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Wait (bounded: 30 s) for a log line after `from` that names 127.0.0.1 with a count and
    /// mentions `what`.
    async fn wait_summary(&self, from: usize, what: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let lines = self.lines.lock().unwrap();
                let found = lines.iter().skip(from).find(|l| {
                    l.contains(what)
                        && l.split("127.0.0.1: ")
                            .nth(1)
                            .and_then(|r| r.split(' ').next())
                            .and_then(|n| n.parse::<u64>().ok())
                            .is_some_and(|n| n > 0)
                });
                if let Some(l) = found {
                    return Some(l.clone());
                }
                if Instant::now() >= deadline {
                    return None;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_since(&self, from: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines[from.min(lines.len())..].to_vec()
    }
}

fn tail(lines: &[String]) -> String {
    let skip = lines.len().saturating_sub(40);
    format!(
        "({} lines, last 40:)\n{}",
        lines.len(),
        lines[skip..].join("\n")
    )
}

/// What one flood socket sends: `preamble` at once, then `trickle` one byte a second.
#[derive(Clone)]
struct Pattern {
    preamble: Vec<u8>,
    trickle: Vec<u8>,
}

fn idle() -> Pattern {
    Pattern {
        preamble: Vec::new(),
        trickle: Vec::new(),
    }
}

fn trickle(bytes: Vec<u8>) -> Pattern {
    Pattern {
        preamble: Vec::new(),
        trickle: bytes,
    }
}

/// Flood sockets from 127.0.0.1, each reconnected after the gateway closes it.
struct Flood {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    /// Per socket: since when its current connection is open.
    open_since: Arc<Mutex<Vec<Option<Instant>>>>,
    connects: Arc<AtomicUsize>,
}

impl Flood {
    fn start(groups: &[(SocketAddr, Pattern, usize)]) -> Flood {
        let stop = CancellationToken::new();
        let total: usize = groups.iter().map(|g| g.2).sum();
        let open_since = Arc::new(Mutex::new(vec![None; total]));
        let connects = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let mut slot = 0;
        for (addr, pattern, n) in groups {
            for _ in 0..*n {
                tasks.spawn(flood_socket(
                    *addr,
                    pattern.clone(),
                    slot,
                    open_since.clone(),
                    connects.clone(),
                    stop.clone(),
                ));
                slot += 1;
            }
        }
        Flood {
            stop,
            tasks,
            open_since,
            connects,
        }
    }

    /// Ages of the flood connections the gateway has held open for at least [`HELD`].
    fn held(&self) -> Vec<Duration> {
        let now = Instant::now();
        let mut ages: Vec<Duration> = self
            .open_since
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|t| now.duration_since(*t))
            .filter(|age| *age >= HELD)
            .collect();
        ages.sort();
        ages
    }

    /// Wait (bounded) until every flood socket has connected at least once.
    async fn wait_started(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.connects.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} flood sockets connected within 20 s",
                self.connects.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

async fn flood_socket(
    addr: SocketAddr,
    pattern: Pattern,
    slot: usize,
    open_since: Arc<Mutex<Vec<Option<Instant>>>>,
    connects: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut buf = [0u8; 1024];
    while !stop.is_cancelled() {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            r = TcpStream::connect(addr) => r,
        };
        if let Ok(mut s) = connected {
            connects.fetch_add(1, Ordering::Relaxed);
            open_since.lock().unwrap()[slot] = Some(Instant::now());
            let mut open = s.write_all(&pattern.preamble).await.is_ok();
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            let mut pos = 0;
            while open {
                tokio::select! {
                    _ = stop.cancelled() => open = false,
                    r = s.read(&mut buf) => open = matches!(r, Ok(n) if n > 0),
                    _ = tick.tick(), if !pattern.trickle.is_empty() => {
                        let b = pattern.trickle[pos % pattern.trickle.len()];
                        pos += 1;
                        open = s.write_all(&[b]).await.is_ok();
                    }
                }
            }
            open_since.lock().unwrap()[slot] = None;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

/// An MQTT 3.1.1 CONNECT with user name and password (clean session, keepalive 30 s).
fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 30];
    for s in [client_id, user, password] {
        body.extend((s.len() as u16).to_be_bytes());
        body.extend(s.as_bytes());
    }
    let mut p = vec![0x10];
    printgate::broker::packets::encode_varint(body.len(), &mut p);
    p.extend(body);
    p
}

const CONNACK_OK: [u8; 4] = [0x20, 2, 0, 0];

async fn valid_socket(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((VALID_FROM, 0)))?;
    socket.connect(addr).await
}

/// Send a valid CONNECT and expect a CONNACK that accepts it.
async fn log_in<S>(s: &mut S, client_id: &str) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(&connect_packet(client_id, USER, PASSWORD))
        .await
        .map_err(|e| format!("send CONNECT: {e}"))?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)
        .await
        .map_err(|e| format!("no CONNACK: {e}"))?;
    if ack != CONNACK_OK {
        return Err(format!("CONNACK {ack:?}"));
    }
    Ok(())
}

/// Log in over plain MQTT from 127.0.0.2; the time until the CONNACK.
async fn mqtt_login(addr: SocketAddr, i: usize) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut s = valid_socket(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    log_in(&mut s, &format!("valid-{i}")).await?;
    let took = t0.elapsed();
    let _ = s.write_all(&[0xe0, 0]).await;
    Ok(took)
}

fn tls_connector(dir: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let cert = std::fs::read(dir.join("broker-tls/cert.pem")).expect("generated certificate");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&cert) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Log in over MQTT with TLS from 127.0.0.2; the time until the CONNACK.
async fn mqtts_login(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    i: usize,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let s = valid_socket(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tls
        .connect(name, s)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    log_in(&mut s, &format!("valid-tls-{i}")).await?;
    Ok(t0.elapsed())
}

fn ws_upgrade_request(addr: SocketAddr) -> Vec<u8> {
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    .into_bytes()
}

/// Log in over MQTT-over-WebSocket from 127.0.0.2; the time until the CONNACK.
async fn ws_login(addr: SocketAddr, i: usize) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut s = valid_socket(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(&ws_upgrade_request(addr))
        .await
        .map_err(|e| format!("send upgrade: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.map_err(|e| {
            format!(
                "upgrade answer: {e}; got {:?}",
                String::from_utf8_lossy(&head)
            )
        })?;
        head.push(byte[0]);
        if head.len() > 4096 {
            return Err("upgrade answer too long".into());
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(&head)
        ));
    }
    let connect = connect_packet(&format!("valid-ws-{i}"), USER, PASSWORD);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x82, 0x80 | connect.len() as u8];
    frame.extend(mask);
    frame.extend(connect.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame)
        .await
        .map_err(|e| format!("send CONNECT: {e}"))?;
    let mut payload = Vec::new();
    while payload.len() < 4 {
        let mut h = [0u8; 2];
        s.read_exact(&mut h)
            .await
            .map_err(|e| format!("no CONNACK frame: {e}"))?;
        let len = usize::from(h[1] & 0x7f);
        if h[0] & 0x0f != 0x2 || len >= 126 {
            return Err(format!("unexpected frame header {h:?}"));
        }
        let mut p = vec![0u8; len];
        s.read_exact(&mut p)
            .await
            .map_err(|e| format!("CONNACK frame: {e}"))?;
        payload.extend(p);
    }
    if payload[..4] != CONNACK_OK {
        return Err(format!("CONNACK {payload:?}"));
    }
    Ok(t0.elapsed())
}

/// Run `attempt` [`ATTEMPTS`] times, each bounded by [`ANSWER_WITHIN`]; every one must succeed.
async fn measure<F, Fut>(what: &str, mut attempt: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Duration, String>>,
{
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for i in 0..ATTEMPTS {
        match tokio::time::timeout(ANSWER_WITHIN, attempt(i)).await {
            Ok(Ok(t)) => times.push(t),
            Ok(Err(e)) => failures.push(format!("attempt {i}: {e}")),
            Err(_) => failures.push(format!("attempt {i}: no answer within {ANSWER_WITHIN:?}")),
        }
    }
    times.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "{what} under the flood: {} of {ATTEMPTS} within {ANSWER_WITHIN:?}; median {:.1} ms, max {:.1} ms",
        times.len(),
        times.get(times.len() / 2).map(ms).unwrap_or(f64::NAN),
        times.last().map(ms).unwrap_or(f64::NAN),
    );
    assert!(
        failures.is_empty(),
        "{what}: {} of {ATTEMPTS} attempts failed: {failures:#?}",
        failures.len()
    );
}

/// The common end of each test: the gateway held no more than `limit` flood connections, wrote
/// one summary naming the address, and few lines in all.
async fn check_flood_effects(serve: &Serve, flood: Flood, from: usize, what: &str, limit: usize) {
    let summary = serve.wait_summary(from, what).await;
    let held = flood.held();
    flood.stop().await;
    assert!(
        held.len() <= limit,
        "the gateway held {} flood connections from one address open for {HELD:?} or more (limit {limit}); their ages: {held:?}",
        held.len()
    );
    let log = serve.log_since(from);
    let Some(summary) = summary else {
        panic!(
            "no {what} summary line naming 127.0.0.1 and a count within 30 s; log since the flood began:\n{}",
            tail(&log)
        );
    };
    eprintln!(
        "{} log lines during the flood; summary: {summary}",
        log.len()
    );
    assert!(
        log.len() < MAX_LOG_LINES,
        "the gateway wrote {} log lines during the flood (at most {MAX_LOG_LINES} expected):\n{}",
        log.len(),
        tail(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_mqtts_logins_pass_a_flood_of_sockets_that_never_log_in() {
    let _one = ONE_AT_A_TIME.lock().await;
    let serve = Serve::start().await;
    let tls = tls_connector(serve.dir.path());
    let from = serve.line_count();
    let never_completes = connect_packet(&"t".repeat(200), "nobody", "nothing");
    // A TLS record header announcing a 16 KiB ClientHello, then nothing but its first bytes.
    let mut hello = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01];
    hello.extend([0u8; 64]);
    let flood = Flood::start(&[
        (serve.mqtt, idle(), 250),
        (serve.mqtt, trickle(never_completes), 100),
        (serve.mqtts, idle(), 100),
        (serve.mqtts, trickle(hello), 50),
    ]);
    flood.wait_started(500).await;
    measure("MQTT login (plain)", |i| mqtt_login(serve.mqtt, i)).await;
    measure("MQTT login (TLS)", |i| mqtts_login(serve.mqtts, &tls, i)).await;
    check_flood_effects(&serve, flood, from, "MQTT", MQTT_PER_ADDRESS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_logins_pass_a_flood_of_sockets_that_never_log_in() {
    let _one = ONE_AT_A_TIME.lock().await;
    let serve = Serve::start().await;
    let from = serve.line_count();
    let upgraded_then_silent = Pattern {
        preamble: ws_upgrade_request(serve.ws),
        trickle: Vec::new(),
    };
    let flood = Flood::start(&[
        (serve.ws, idle(), 200),
        (serve.ws, trickle(ws_upgrade_request(serve.ws)), 100),
        (serve.ws, upgraded_then_silent, 200),
    ]);
    flood.wait_started(500).await;
    measure("MQTT login (WebSocket)", |i| ws_login(serve.ws, i)).await;
    check_flood_effects(&serve, flood, from, "MQTT", MQTT_PER_ADDRESS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_answer_during_a_slow_header_flood() {
    let _one = ONE_AT_A_TIME.lock().await;
    let serve = Serve::start().await;
    let from = serve.line_count();
    let mut slow_head = b"GET /login HTTP/1.1\r\nHost: printgate\r\nX-Slow: ".to_vec();
    slow_head.extend([b'a'; 4000]);
    let flood = Flood::start(&[
        (serve.web, idle(), 250),
        (serve.web, trickle(slow_head), 250),
    ]);
    flood.wait_started(500).await;
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::V4(VALID_FROM))
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("http://{}/login", serve.web);
    measure("GET /login", |_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let t0 = Instant::now();
            let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            resp.bytes().await.map_err(|e| e.to_string())?;
            if status.is_server_error() || status.is_client_error() {
                return Err(format!("status {status}"));
            }
            Ok(t0.elapsed())
        }
    })
    .await;
    check_flood_effects(&serve, flood, from, "web", WEB_PER_ADDRESS).await;
}
