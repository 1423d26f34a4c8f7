//! FTPS upload client against the simulated printer's FTPS server: real sockets, real TLS on
//! loopback, every fault knob of docs/bambu-protocol.md §7 that the client must survive or report.

use md5::{Digest as _, Md5};
use printgate::printer::UploadError;
use printgate::printer::UploadProgress;
use printgate::printer::bambu::ftps::{self, FtpsTarget, FtpsTimeouts};
use printgate::sim::ftps::{
    self as simftps, FtpsEvent, FtpsKnobValues, FtpsServerHandle, PasvHost,
};
use printgate::sim::storage::SimStorage;
use printgate::sim::tls::SimIdentity;
use rustls::pki_types::ServerName;
#[path = "common/tls.rs"]
mod tls;
use rustls::client::Resumption;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::timeout;

const SERIAL: &str = "01P00A123456789";
const CODE: &str = "12345678";
/// Bound for every test-side wait on the system under test.
const WAIT: Duration = Duration::from_secs(120);

fn client_config(
    identity: &SimIdentity,
    versions: &[&'static rustls::SupportedProtocolVersion],
    resumption: bool,
) -> Arc<rustls::ClientConfig> {
    let mut cfg = tls::pinned_client_config(
        &identity.leaf_fingerprint(),
        Some(&identity.serial),
        versions,
    );
    if !resumption {
        cfg.resumption = Resumption::disabled();
    }
    Arc::new(cfg)
}

/// One simulated printer's FTPS server plus a temp dir for local files.
struct Rig {
    identity: SimIdentity,
    storage: SimStorage,
    server: FtpsServerHandle,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn start(knobs: FtpsKnobValues) -> Rig {
        let identity = SimIdentity::generate(SERIAL).expect("identity");
        let storage = SimStorage::default();
        let server = simftps::start(
            identity.clone(),
            storage.clone(),
            CODE.to_string(),
            simftps::FtpsKnobs::new(knobs),
        )
        .await
        .expect("start sim FTPS");
        Rig {
            identity,
            storage,
            server,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn target(&self) -> FtpsTarget {
        FtpsTarget {
            host: "127.0.0.1".to_string(),
            port: self.server.port(),
            server_name: SERIAL.to_string(),
            access_code: CODE.to_string(),
            tls: client_config(&self.identity, &[&rustls::version::TLS12], true),
            allow_prot_c: false,
        }
    }

    /// A local file of `size` deterministic pseudo-random bytes.
    fn file(&self, name: &str, size: usize, seed: u64) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pseudo_random(size, seed)).expect("write local file");
        path
    }

    fn stored_md5(&self, name: &str) -> Option<String> {
        self.storage.get(name).map(|c| md5_hex(&c))
    }
}

fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode_upper(Md5::digest(data))
}

async fn upload(
    target: &FtpsTarget,
    local: &std::path::Path,
    name: &str,
) -> Result<ftps::UploadReport, UploadError> {
    timeout(WAIT, ftps::upload(target, local, name, None))
        .await
        .expect("upload finished in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_round_trip_with_progress_md5_and_resumed_data_session() {
    let rig = Rig::start(FtpsKnobValues::default()).await;
    assert!(
        rig.server.knobs().get().require_session_reuse,
        "default is vsFTPd's require_ssl_reuse"
    );
    let size = 50 * 1024 * 1024;
    let content = pseudo_random(size, 0xDEC0DE);
    let local = rig.dir.path().join("big.gcode.3mf");
    std::fs::write(&local, &content).expect("write");
    let local_md5 = md5_hex(&content);
    drop(content);
    let target = rig.target();

    let (tx, mut rx) = mpsc::channel::<UploadProgress>(4096);
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(p) = rx.recv().await {
            seen.push(p);
        }
        seen
    });
    let started = Instant::now();
    let report = timeout(
        WAIT,
        ftps::upload(&target, &local, "pg-000418.gcode.3mf", Some(tx)),
    )
    .await
    .expect("in time")
    .expect("upload succeeds");
    let elapsed = started.elapsed();
    let progress = timeout(WAIT, collector)
        .await
        .expect("in time")
        .expect("collector");

    assert_eq!(report.bytes, size as u64);
    assert_eq!(report.md5, local_md5);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(rig.stored_md5("pg-000418.gcode.3mf"), Some(local_md5));
    assert_eq!(
        progress.last(),
        Some(&UploadProgress {
            sent: size as u64,
            total: size as u64
        })
    );
    assert!(progress.len() > 10, "progress arrives while sending");
    assert!(progress.windows(2).all(|w| w[0].sent <= w[1].sent));
    let record = rig.server.record();
    assert_eq!(
        record.data_tls_resumed(),
        vec![true],
        "data channel resumed the control session"
    );
    let commands = record.commands();
    let expected = [
        "USER bblp",
        "PASS ****",
        "PBSZ 0",
        "PROT P",
        "TYPE I",
        "PASV",
        "STOR /pg-000418.gcode.3mf",
        "SIZE /pg-000418.gcode.3mf",
        "QUIT",
    ];
    assert_eq!(
        commands, expected,
        "sequence of docs/bambu-protocol.md §7.1"
    );
    println!(
        "FTPS loopback upload: {size} bytes in {:.2} s = {:.1} MB/s",
        elapsed.as_secs_f64(),
        size as f64 / 1_000_000.0 / elapsed.as_secs_f64()
    );

    // Housekeeping helpers.
    assert_eq!(
        ftps::size(&target, "pg-000418.gcode.3mf")
            .await
            .expect("size"),
        Some(size as u64)
    );
    ftps::delete(&target, "pg-000418.gcode.3mf")
        .await
        .expect("delete");
    assert_eq!(
        ftps::size(&target, "pg-000418.gcode.3mf")
            .await
            .expect("size"),
        None
    );
    ftps::delete(&target, "pg-000418.gcode.3mf")
        .await
        .expect("deleting a file that is already gone is fine");
    rig.server.shutdown().await;
}

#[tokio::test]
async fn without_session_resumption_the_printer_refuses_with_a_clear_522() {
    let rig = Rig::start(FtpsKnobValues::default()).await;
    let local = rig.file("a.gcode.3mf", 300_000, 1);
    let mut target = rig.target();
    target.tls = client_config(&rig.identity, &[&rustls::version::TLS12], false);
    let err = upload(&target, &local, "a.gcode.3mf")
        .await
        .expect_err("522");
    let msg = err.to_string();
    assert!(msg.contains("522") && msg.contains("resume"), "{msg}");
    assert_eq!(rig.server.record().data_tls_resumed(), vec![false]);
    assert!(rig.storage.get("a.gcode.3mf").is_none());

    // Same client, server without require_ssl_reuse: works, with a warning.
    rig.server.knobs().set(|k| k.require_session_reuse = false);
    let report = upload(&target, &local, "a.gcode.3mf")
        .await
        .expect("accepted");
    assert!(
        report.warnings.iter().any(|w| w.contains("did not resume")),
        "{:?}",
        report.warnings
    );
}

#[tokio::test]
async fn tls13_mode_resumes_too() {
    let rig = Rig::start(FtpsKnobValues {
        tls13: true,
        ..Default::default()
    })
    .await;
    let local = rig.file("t.gcode.3mf", 100_000, 2);
    // A TLS 1.2-pinned client still gets 1.2.
    upload(&rig.target(), &local, "t.gcode.3mf")
        .await
        .expect("tls 1.2 client");
    let mut target = rig.target();
    target.tls = client_config(&rig.identity, &[&rustls::version::TLS13], true);
    upload(&target, &local, "t.gcode.3mf")
        .await
        .expect("tls 1.3 client");
    // A tiny file ends before the server's TLS 1.3 session tickets reach the client.
    let tiny = rig.file("tiny.gcode.3mf", 100, 13);
    let report = upload(&target, &tiny, "tiny.gcode.3mf")
        .await
        .expect("tiny tls 1.3 upload");
    assert_eq!(rig.stored_md5("tiny.gcode.3mf"), Some(report.md5));
    assert_eq!(
        rig.server.record().data_tls_resumed(),
        vec![true, true, true]
    );
    let versions: Vec<String> = rig
        .server
        .record()
        .events()
        .into_iter()
        .filter_map(|e| match e {
            FtpsEvent::SessionOpened { tls_version, .. } => Some(tls_version),
            _ => None,
        })
        .collect();
    assert_eq!(versions, ["TLSv1_2", "TLSv1_3", "TLSv1_3"]);
}

#[tokio::test]
async fn pasv_host_from_the_reply_is_ignored_and_multiline_greeting_read() {
    for host in [
        PasvHost::Zero,
        PasvHost::Wrong(Ipv4Addr::new(203, 0, 113, 7)),
    ] {
        let rig = Rig::start(FtpsKnobValues {
            pasv_host: host,
            multiline_banner: true,
            ..Default::default()
        })
        .await;
        let local = rig.file("p.gcode.3mf", 200_000, 3);
        let report = upload(&rig.target(), &local, "p.gcode.3mf")
            .await
            .expect("upload");
        assert!(report.warnings.is_empty());
        assert_eq!(rig.stored_md5("p.gcode.3mf"), Some(report.md5));
    }
}

#[tokio::test]
async fn reply_426_after_a_complete_upload_is_success_verified_by_size() {
    let rig = Rig::start(FtpsKnobValues {
        reply_426_after_complete: true,
        ..Default::default()
    })
    .await;
    let local = rig.file("w.gcode.3mf", 500_000, 4);
    let report = upload(&rig.target(), &local, "w.gcode.3mf")
        .await
        .expect("verified");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("426") && report.warnings[0].contains("verified by SIZE"),
        "{:?}",
        report.warnings
    );
    assert!(
        rig.server
            .record()
            .commands()
            .contains(&"SIZE /w.gcode.3mf".to_string())
    );
}

#[tokio::test]
async fn failure_mid_transfer_is_interrupted_and_leaves_no_good_file() {
    let rig = Rig::start(FtpsKnobValues {
        fail_mid_stream_after_bytes: Some(1_000_000),
        ..Default::default()
    })
    .await;
    let total = 32 * 1024 * 1024;
    let local = rig.file("m.gcode.3mf", total, 5);
    // An older complete file of the same name is truncated by the broken STOR.
    rig.storage.put("m.gcode.3mf", vec![1; 10]).expect("put");
    let err = upload(&rig.target(), &local, "m.gcode.3mf")
        .await
        .expect_err("interrupted");
    match &err {
        UploadError::Interrupted {
            sent,
            total: t,
            reason,
        } => {
            assert_eq!(*t, total as u64);
            assert!(*sent < total as u64, "{err}");
            assert!(
                reason.contains("426"),
                "printer's reply is part of the reason: {reason}"
            );
        }
        other => panic!("expected Interrupted, got {other:?}"),
    }
    assert!(
        rig.storage.get("m.gcode.3mf").is_none(),
        "nothing usable in storage"
    );
    assert_eq!(
        ftps::size(&rig.target(), "m.gcode.3mf")
            .await
            .expect("size"),
        Some(1_000_000),
        "SIZE shows the short partial file"
    );
    assert!(rig.server.record().events().iter().any(|e| matches!(
        e,
        FtpsEvent::Partial {
            bytes: 1_000_000,
            ..
        }
    )));
}

#[tokio::test]
async fn wrong_access_code_is_rejected() {
    let rig = Rig::start(FtpsKnobValues::default()).await;
    let local = rig.file("c.gcode.3mf", 1000, 6);
    let mut target = rig.target();
    target.access_code = "87654321".to_string();
    assert_eq!(
        upload(&target, &local, "c.gcode.3mf").await,
        Err(UploadError::AccessCodeRejected)
    );
    rig.server.knobs().set(|k| k.bad_code = true);
    assert_eq!(
        upload(&rig.target(), &local, "c.gcode.3mf").await,
        Err(UploadError::AccessCodeRejected)
    );
    assert_eq!(
        ftps::size(&rig.target(), "c.gcode.3mf").await,
        Err(UploadError::AccessCodeRejected)
    );
}

#[tokio::test]
async fn storage_refusals_are_storage_refused() {
    let rig = Rig::start(FtpsKnobValues {
        reply_553: true,
        ..Default::default()
    })
    .await;
    let local = rig.file("s.gcode.3mf", 10_000, 7);
    let target = rig.target();
    let err = upload(&target, &local, "s.gcode.3mf")
        .await
        .expect_err("553");
    assert!(
        matches!(&err, UploadError::StorageRefused(t) if t.contains("553")),
        "{err:?}"
    );

    rig.server.knobs().set(|k| k.reply_553 = false);
    rig.storage.set_missing(true);
    let err = upload(&target, &local, "s.gcode.3mf")
        .await
        .expect_err("no card");
    assert!(matches!(err, UploadError::StorageRefused(_)), "{err:?}");

    rig.storage.set_missing(false);
    rig.storage.set_quota(Some(5_000));
    let err = upload(&target, &local, "s.gcode.3mf")
        .await
        .expect_err("full");
    assert!(matches!(err, UploadError::StorageRefused(_)), "{err:?}");
    assert!(rig.storage.get("s.gcode.3mf").is_none());
}

#[tokio::test]
async fn delayed_or_held_final_reply_is_handled() {
    let rig = Rig::start(FtpsKnobValues {
        final_reply_delay: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let local = rig.file("d.gcode.3mf", 400_000, 8);
    let report = upload(&rig.target(), &local, "d.gcode.3mf")
        .await
        .expect("waits for 226");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // A final reply later than the client's limit: verified by SIZE on a fresh session.
    let short = FtpsTimeouts {
        final_reply: Duration::from_millis(200),
        ..Default::default()
    };
    let report = timeout(
        WAIT,
        ftps::upload_with(&rig.target(), &local, "d2.gcode.3mf", None, &short),
    )
    .await
    .expect("in time")
    .expect("verified by SIZE");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("no final reply") && w.contains("SIZE")),
        "{:?}",
        report.warnings
    );

    rig.server.knobs().set(|k| {
        k.final_reply_delay = Duration::ZERO;
        k.hold_226_until_data_close = true;
    });
    let report = upload(&rig.target(), &local, "d3.gcode.3mf")
        .await
        .expect("226 after close");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(rig.stored_md5("d3.gcode.3mf"), Some(report.md5));
}

#[tokio::test]
async fn bad_remote_names_are_refused_before_connecting() {
    let rig = Rig::start(FtpsKnobValues::default()).await;
    let local = rig.file("ok.gcode.3mf", 100, 9);
    let long = "x".repeat(65);
    for name in [
        "",
        "..",
        "../up.3mf",
        "sub/dir.3mf",
        "a b.3mf",
        "ü.3mf",
        "a\r\nDELE b",
        &long,
    ] {
        let err = upload(&rig.target(), &local, name).await.expect_err(name);
        assert!(err.to_string().contains("not allowed"), "{name:?}: {err}");
        assert!(ftps::delete(&rig.target(), name).await.is_err());
        assert!(ftps::size(&rig.target(), name).await.is_err());
    }
    assert_eq!(
        rig.server.record().sessions(),
        0,
        "nothing was sent to the printer"
    );
}

#[tokio::test]
async fn prot_c_only_as_an_enabled_fallback() {
    let rig = Rig::start(FtpsKnobValues {
        refuse_prot_p: true,
        ..Default::default()
    })
    .await;
    let local = rig.file("c.gcode.3mf", 250_000, 10);
    let err = upload(&rig.target(), &local, "c.gcode.3mf")
        .await
        .expect_err("not enabled");
    assert!(err.to_string().contains("encrypted data channel"), "{err}");

    let mut target = rig.target();
    target.allow_prot_c = true;
    // X1C style: PROT C accepted as a command, transfers refused with 522.
    let err = upload(&target, &local, "c.gcode.3mf")
        .await
        .expect_err("522");
    assert!(err.to_string().contains("must be encrypted"), "{err}");

    rig.server.knobs().set(|k| k.accept_prot_c = true);
    let report = upload(&target, &local, "c.gcode.3mf")
        .await
        .expect("clear channel");
    assert!(
        report.warnings.iter().any(|w| w.contains("PROT C")),
        "{:?}",
        report.warnings
    );
    assert_eq!(rig.stored_md5("c.gcode.3mf"), Some(report.md5));
}

#[tokio::test]
async fn unreachable_printer_is_a_connect_error() {
    let rig = Rig::start(FtpsKnobValues::default()).await;
    let local = rig.file("u.gcode.3mf", 100, 11);
    let mut target = rig.target();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    target.port = closed.local_addr().expect("addr").port();
    drop(closed);
    let err = upload(&target, &local, "u.gcode.3mf")
        .await
        .expect_err("closed port");
    assert!(matches!(err, UploadError::Connect(_)), "{err:?}");
}

/// Minimal FTPS control client for exercising server commands the upload client never sends.
struct RawSession {
    io: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
    tls: Arc<rustls::ClientConfig>,
    port: u16,
}

impl RawSession {
    async fn open(rig: &Rig) -> RawSession {
        let tls = client_config(&rig.identity, &[&rustls::version::TLS12], true);
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", rig.server.port()))
            .await
            .expect("connect");
        let name = ServerName::try_from(SERIAL.to_string()).expect("name");
        let io = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .expect("tls");
        let mut s = RawSession {
            io,
            buf: Vec::new(),
            tls,
            port: rig.server.port(),
        };
        assert!(s.reply().await.starts_with("220 (vsFTPd 3.0.5)"));
        s
    }

    async fn reply(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return String::from_utf8_lossy(&line).trim_end().to_string();
            }
            let mut chunk = [0u8; 512];
            let n = timeout(WAIT, self.io.read(&mut chunk))
                .await
                .expect("in time")
                .expect("read");
            assert!(n > 0, "server closed the control connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        use tokio::io::AsyncWriteExt;
        self.io
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        self.reply().await
    }

    /// EPSV, connect, send `line`, expect 150, TLS (resumed), read everything, expect 226.
    async fn data(&mut self, line: &str) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let tcp = self.epsv_connect().await;
        assert!(self.cmd(line).await.starts_with("150 "), "{line}");
        let name = ServerName::try_from(SERIAL.to_string()).expect("name");
        let mut data = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .expect("data tls");
        assert_eq!(
            data.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        let mut out = Vec::new();
        timeout(WAIT, data.read_to_end(&mut out))
            .await
            .expect("in time")
            .expect("read data");
        drop(data);
        assert_eq!(&self.reply().await[..4], "226 ");
        out
    }
}

#[tokio::test]
async fn server_speaks_the_other_vsftpd_commands() {
    let rig = Rig::start(FtpsKnobValues::default()).await;
    rig.storage.put("verify_job", b"job".to_vec()).expect("put");
    let mut s = RawSession::open(&rig).await;
    assert!(s.cmd("PWD").await.starts_with("530 "), "login first");
    s.login().await;
    assert_eq!(s.cmd("PWD").await, "257 \"/\" is the current directory");
    assert_eq!(s.cmd("MKD logger").await, "257 \"/logger\" created");
    assert_eq!(
        s.cmd("RETR /verify_job").await.get(..4),
        Some("425 "),
        "no PASV yet"
    );
    assert_eq!(s.data("RETR /verify_job").await, b"job");
    let list = String::from_utf8(s.data("LIST").await).expect("utf8");
    assert!(
        list.contains("drwxr-xr-x") && list.ends_with(" verify_job\r\n"),
        "{list}"
    );
    assert_eq!(
        s.data("NLST").await,
        b"cache\r\nlogger\r\nmodel\r\ntimelapse\r\nverify_job\r\n"
    );
    assert!(s.cmd("MDTM /verify_job").await.starts_with("213 20"));
    assert_eq!(s.cmd("SIZE /verify_job").await, "213 3");
    assert_eq!(s.cmd("SIZE /nothing").await, "550 Could not get file size.");
    assert_eq!(
        s.cmd("CWD cache").await,
        "250 Directory successfully changed."
    );
    assert_eq!(
        s.cmd("PWD").await,
        "257 \"/cache\" is the current directory"
    );
    assert_eq!(
        s.cmd("CWD /missing").await,
        "550 Failed to change directory."
    );
    assert_eq!(
        s.cmd("DELE /verify_job").await,
        "250 Delete operation successful."
    );
    assert_eq!(
        s.cmd("DELE /verify_job").await,
        "550 Delete operation failed."
    );
    assert_eq!(s.cmd("XCRC /verify_job").await, "500 Unknown command.");
    assert_eq!(s.cmd("QUIT").await, "221 Goodbye.");
    assert!(rig.storage.get("verify_job").is_none());
}

#[tokio::test]
async fn slow_link_cap_still_delivers_the_whole_file() {
    let rig = Rig::start(FtpsKnobValues {
        bytes_per_sec: Some(2_000_000),
        ..Default::default()
    })
    .await;
    let local = rig.file("slow.gcode.3mf", 300_000, 12);
    let report = upload(&rig.target(), &local, "slow.gcode.3mf")
        .await
        .expect("upload");
    assert_eq!(rig.stored_md5("slow.gcode.3mf"), Some(report.md5));
}

impl RawSession {
    /// EPSV and connect the data socket to the port it names.
    async fn epsv_connect(&mut self) -> tokio::net::TcpStream {
        let epsv = self.cmd("EPSV").await;
        let port: u16 = epsv
            .split("|||")
            .nth(1)
            .and_then(|r| r.split('|').next())
            .and_then(|p| p.parse().ok())
            .expect("EPSV port");
        assert_ne!(port, self.port);
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("data")
    }

    /// Log in as a client does (USER, PASS, PBSZ, PROT P, TYPE I).
    async fn login(&mut self) {
        assert_eq!(
            self.cmd("USER bblp").await,
            "331 Please specify the password."
        );
        assert_eq!(
            self.cmd(&format!("PASS {CODE}")).await,
            "230 Login successful."
        );
        assert_eq!(self.cmd("PBSZ 0").await, "200 PBSZ set to 0.");
        assert_eq!(self.cmd("PROT P").await, "200 PROT now Private.");
        assert_eq!(self.cmd("TYPE I").await, "200 Switching to Binary mode.");
    }

    /// EPSV, connect, send `line`; the first reply (150 when the server takes the upload, then
    /// the bytes are sent over resumed TLS and the final reply is returned instead).
    async fn store(&mut self, line: &str, content: &[u8]) -> String {
        use tokio::io::AsyncWriteExt;
        let tcp = self.epsv_connect().await;
        let first = self.cmd(line).await;
        if !first.starts_with("150 ") {
            return first;
        }
        let name = ServerName::try_from(SERIAL.to_string()).expect("name");
        let mut data = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .expect("data tls");
        data.write_all(content).await.expect("send");
        data.shutdown().await.expect("close_notify");
        drop(data);
        self.reply().await
    }

    /// Reply lines of a multi-line answer up to and including the line starting `last`.
    async fn lines_until(&mut self, first: String, last: &str) -> Vec<String> {
        // A single-line reply (no `211-`) ends at once.
        let multi = first.as_bytes().get(3) == Some(&b'-');
        let mut lines = vec![first];
        if !multi {
            return lines;
        }
        // Bounded: a FEAT answer has a dozen lines; each read is bounded by WAIT.
        for _ in 0..64 {
            if lines.last().is_some_and(|l| l.starts_with(last)) {
                return lines;
            }
            lines.push(self.reply().await);
        }
        panic!("no {last:?} line in {lines:?}");
    }
}

/// D4 (issue 14): the storage starts with `cache/`, `model/`, `timelapse/`; `LIST`/`NLST` honour
/// their path (vsFTPd's NLST prefixes the path it was given); a `STOR` into a folder that was
/// never created fails with 553 as vsFTPd does; `SYST`, `FEAT` and `OPTS UTF8 ON` are answered
/// with vsFTPd's texts.
#[tokio::test]
async fn listing_paths_missing_folders_and_vsftpd_informational_commands() {
    let rig = Rig::start(FtpsKnobValues::default()).await;
    let mut s = RawSession::open(&rig).await;
    // FEAT and OPTS are answered before login, SYST only after (vsFTPd's prelogin).
    let feat = s.cmd("FEAT").await;
    let feat = s.lines_until(feat, "211 ").await;
    assert_eq!(feat.first().map(String::as_str), Some("211-Features:"));
    assert_eq!(feat.last().map(String::as_str), Some("211 End"));
    for f in [
        " EPSV", " MDTM", " PASV", " PBSZ", " PROT", " SIZE", " UTF8",
    ] {
        assert!(feat.iter().any(|l| l == f), "FEAT lacks {f:?}: {feat:?}");
    }
    assert_eq!(s.cmd("OPTS UTF8 ON").await, "200 Always in UTF8 mode.");
    assert_eq!(s.cmd("SYST").await, "530 Please login with USER and PASS.");
    s.login().await;
    assert_eq!(s.cmd("SYST").await, "215 UNIX Type: L8");
    assert_eq!(s.cmd("opts utf8 on").await, "200 Always in UTF8 mode.");
    assert_eq!(s.cmd("OPTS MLST type;").await, "501 Option not understood.");

    assert_eq!(s.data("NLST").await, b"cache\r\nmodel\r\ntimelapse\r\n");
    assert_eq!(
        s.cmd("MKD cache").await,
        "550 Create directory operation failed.",
        "cache/ exists from the start"
    );
    assert_eq!(
        s.store("STOR /cache/a.gcode.3mf", b"abc").await,
        "226 Transfer complete."
    );
    assert_eq!(
        rig.storage.get("cache/a.gcode.3mf").as_deref(),
        Some(&b"abc".to_vec())
    );
    assert_eq!(s.data("NLST cache").await, b"cache/a.gcode.3mf\r\n");
    assert_eq!(s.data("NLST /cache/").await, b"/cache/a.gcode.3mf\r\n");
    let list = String::from_utf8(s.data("LIST /cache").await).expect("utf8");
    assert!(
        list.starts_with("-rw-r--r--")
            && list.ends_with(" a.gcode.3mf\r\n")
            && list.lines().count() == 1,
        "{list}"
    );
    let list = String::from_utf8(s.data("LIST -la model").await).expect("utf8");
    assert_eq!(list, "", "model/ is empty");
    assert_eq!(s.data("NLST timelapse").await, b"");
    // A path that is no folder: vsFTPd sends an empty listing and says so.
    assert_eq!(s.data("NLST nowhere").await, b"");

    assert_eq!(
        s.store("STOR /never/made.gcode.3mf", b"x").await,
        "553 Could not create file."
    );
    assert_eq!(
        s.store("STOR model/ok.gcode.3mf", b"yz").await,
        "226 Transfer complete."
    );
    assert!(rig.storage.get("never/made.gcode.3mf").is_none());
    assert_eq!(
        rig.storage.get("model/ok.gcode.3mf").map(|c| c.len()),
        Some(2)
    );
    assert_eq!(s.cmd("MKD never").await, "257 \"/never\" created");
    assert_eq!(
        s.store("STOR /never/made.gcode.3mf", b"x").await,
        "226 Transfer complete."
    );
    assert_eq!(s.cmd("QUIT").await, "221 Goodbye.");
}
