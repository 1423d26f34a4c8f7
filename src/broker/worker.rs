//! The embedded broker in a process of its own: `printgate broker-worker` (a hidden
//! subcommand) runs rumqttd for the gateway, which starts it and watches it
//! ([`crate::broker::supervisor`]).
//!
//! Why a process: rumqttd parses every client's packets, and release builds abort on a panic
//! (Cargo.toml explains why: a panicking safety worker must not die silently). With rumqttd on
//! threads of the gateway, one panic in it ended the relay control, the smoke input and the
//! thermal watchdog with it, and a stalled broker thread was not noticed at all. In its own
//! process a broker crash or hang costs MQTT clients a reconnect and nothing else.
//!
//! The hand-over: the parent writes one JSON line ([`WorkerSpec`]: limits, the two loopback
//! addresses, the internal user and password) to the worker's stdin — never on the command
//! line, where `ps` would show the password — and keeps stdin open. The worker starts rumqttd,
//! waits until both ports accept connections, prints [`READY`] on stdout, and exits when stdin
//! closes (its parent stopped or died, however it died). It ignores SIGINT and SIGTERM (Ctrl-C
//! and `systemctl stop` reach the whole process group / cgroup): its gateway stops it. Any panic in the worker ends the
//! worker process (debug builds too: a hook aborts), so a half-dead broker with a dead thread
//! never keeps answering.

use crate::broker::config::BrokerLimits;
use crate::broker::embedded::{InternalBroker, rumqttd_config};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The subcommand that runs the worker.
pub const SUBCOMMAND: &str = "broker-worker";
/// The line the worker prints on stdout once both its ports accept connections.
pub const READY: &str = "printgate broker-worker ready";
/// How long the worker waits for rumqttd to listen before giving up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the gateway hands to its broker worker on stdin (one JSON line).
#[derive(Serialize, Deserialize)]
pub struct WorkerSpec {
    pub limits: BrokerLimits,
    pub v4: SocketAddr,
    pub v5: SocketAddr,
    pub username: String,
    pub password: String,
}

impl WorkerSpec {
    pub fn new(limits: &BrokerLimits, internal: &InternalBroker) -> Self {
        WorkerSpec {
            limits: limits.clone(),
            v4: internal.v4,
            v5: internal.v5,
            username: internal.username.clone(),
            password: internal.password.clone(),
        }
    }

    fn internal(&self) -> InternalBroker {
        InternalBroker {
            v4: self.v4,
            v5: self.v5,
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }
}

static EXECUTABLE: OnceLock<PathBuf> = OnceLock::new();

/// Run the embedded broker as `<path> broker-worker`. `printgate`'s `main` sets this to its
/// own binary; a program that uses printgate as a library (most tests) leaves it unset and
/// gets the broker on threads of its own process ([`crate::broker::embedded::start`]).
/// Only the first call counts.
pub fn use_executable(path: PathBuf) {
    let _ = EXECUTABLE.set(path);
}

/// The binary that runs broker workers, if one was set ([`use_executable`]).
pub fn executable() -> Option<&'static Path> {
    EXECUTABLE.get().map(PathBuf::as_path)
}

/// The running binary as a path that still names it after a package upgrade replaced the
/// file (`/proc/self/exe` on Linux), so parent and worker always speak the same hand-over.
pub fn this_executable() -> std::io::Result<PathBuf> {
    let proc_self = Path::new("/proc/self/exe");
    if proc_self.exists() {
        Ok(proc_self.to_path_buf())
    } else {
        std::env::current_exe()
    }
}

/// `printgate broker-worker`: read the [`WorkerSpec`] from stdin, run rumqttd, print
/// [`READY`], run until stdin closes. Returns the exit code (errors in words on stderr).
pub fn worker_main() -> i32 {
    // Started through /proc/self/exe the process would be called `exe` in `ps -o comm` and in
    // the journal; call it what it is.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, given here.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"printgate".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // Ctrl-C in a terminal signals the whole process group and `systemctl stop` the whole
    // cgroup: the gateway shuts down in order and then closes our stdin, which ends us. Dying
    // first would only look like a crash to the supervisor.
    #[cfg(unix)]
    // SAFETY: installs SIG_IGN for two signals; no handler code runs.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    // A panic on any thread (rumqttd's router, a link, a listener) ends the whole worker: the
    // gateway notices the exit and starts a fresh one.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("printgate broker-worker: a broker thread panicked; ending the worker");
        std::process::abort();
    }));
    let stdin = std::io::stdin();
    let mut line = String::new();
    if let Err(e) = stdin.lock().read_line(&mut line) {
        eprintln!("printgate broker-worker: cannot read its settings from stdin: {e}");
        return 2;
    }
    let spec: WorkerSpec = match serde_json::from_str(line.trim_end()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "printgate broker-worker: its settings on stdin are not valid ({e}); this \
                 subcommand is started by `printgate serve`, not by hand"
            );
            return 2;
        }
    };
    let internal = spec.internal();
    let config = rumqttd_config(&spec.limits, &internal);
    let started = std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("printgate broker-worker: the MQTT broker stopped: {e}");
            }
            // rumqttd returned: no broker any more, so no worker either.
            std::process::exit(1);
        });
    if let Err(e) = started {
        eprintln!("printgate broker-worker: cannot start the broker thread: {e}");
        return 1;
    }
    for addr in [internal.v4, internal.v5] {
        if !wait_listening(addr, LISTEN_TIMEOUT) {
            eprintln!(
                "printgate broker-worker: the MQTT broker did not listen on {addr} within {} s \
                 (is the port taken?)",
                LISTEN_TIMEOUT.as_secs()
            );
            return 1;
        }
    }
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{READY}").and_then(|()| out.flush()).is_err() {
            return 1;
        }
    }
    #[cfg(debug_assertions)]
    panic_once_if_asked();
    // Run until the parent closes stdin (it stopped us, or it is gone).
    let mut rest = Vec::new();
    let _ = stdin.lock().read_to_end(&mut rest);
    0
}

/// Debug builds only, the fault hook of `tests/broker_fault.rs`: with this variable set to a
/// file path that does not exist yet, the worker creates the file and a thread of it panics
/// right after the ready line (so exactly one worker panics, as a rumqttd thread would).
#[cfg(debug_assertions)]
pub const PANIC_ONCE_ENV: &str = "PRINTGATE_TEST_BROKER_WORKER_PANIC_ONCE";

#[cfg(debug_assertions)]
fn panic_once_if_asked() {
    let Some(marker) = std::env::var_os(PANIC_ONCE_ENV) else {
        return;
    };
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_ok();
    if first {
        let _ = std::thread::Builder::new()
            .name("fault-hook".into())
            .spawn(|| panic!("{PANIC_ONCE_ENV} asked this broker worker to panic once"));
    }
}

/// Poll until `addr` accepts a TCP connection (bounded by `timeout`).
fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
