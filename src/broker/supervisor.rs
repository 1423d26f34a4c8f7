//! Keeps the broker worker ([`crate::broker::worker`]) running: starts it, notices when it
//! dies (its exit) or hangs (a liveness probe over MQTT gets no answer), kills a hung one, and
//! starts a new one with back-off. The safety room never waits on any of this.
//!
//! - Death: the worker's exit is seen at once (a crash, a panic — every panic ends the worker
//!   — SIGKILL, the kernel's OOM killer).
//! - Hang: every [`PROBE_INTERVAL`] the supervisor logs in on both loopback ports with the
//!   internal credentials and does a PINGREQ/PINGRESP round trip; CONNACK and PINGRESP come
//!   from rumqttd's router, so a stuck router is seen as well as a stuck listener. After
//!   [`PROBE_FAILURES`] failed probes in a row (each bounded by [`PROBE_TIMEOUT`]) the worker
//!   is killed (SIGKILL) and replaced: a hang is noticed within about
//!   `PROBE_FAILURES × (PROBE_INTERVAL + PROBE_TIMEOUT)` = 10 s.
//! - Restart: the new worker gets the same loopback ports and internal password, so the front
//!   door ([`crate::broker::gate`]), the gateway's own client and the Klipper links need no new
//!   address: their connections to the old worker ended with it, and they connect again. The
//!   gateway's client republishes the whole retained tree (state, availability, Home Assistant
//!   discovery) after every reconnect ([`crate::broker::publisher`]), and is told at once when
//!   a new worker is ready, so subscribers find everything again. Back-off between restarts:
//!   [`FIRST_BACKOFF`], doubling up to [`MAX_BACKOFF`], back to the first after
//!   [`STABLE_AFTER`] of a healthy worker. Each restart is logged in words (why, how many, the
//!   next back-off) and counted in [`WorkerStatus`].
//! - Shutdown: stdin is closed (the worker exits by itself); a worker that is still there
//!   after [`STOP_GRACE`] is killed. A worker whose gateway dies sees its stdin close and
//!   exits too.
//!
//! - First start: when the first worker cannot start, [`start`] fails and the service runs
//!   the broker on threads of the gateway instead (logged as an error, with what that costs):
//!   a broken worker never keeps the safety path from starting.
//!
//! Limit: the ports are chosen once (free loopback ports at start). Should another program
//! take one while no worker holds it, the new worker cannot listen, says so on stderr, and is
//! retried with the back-off.

use crate::broker::config::BrokerLimits;
use crate::broker::embedded::{self, InternalBroker};
use crate::broker::packets;
use crate::broker::stats::BrokerStats;
use crate::broker::worker::{self, WorkerSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Time between two liveness probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long one probe (connect, CONNACK, PINGRESP on both ports) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Failed probes in a row that make a worker "hung".
pub const PROBE_FAILURES: u32 = 2;
/// How long a new worker may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off before the first restart.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest back-off between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker healthy this long resets the back-off.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a worker may take to exit after its stdin closed.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// The broker worker as the rest of the gateway sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Process id of the running worker (`None` while none runs).
    pub pid: Option<u32>,
    /// A worker is running and answered its last probe (or just became ready).
    pub up: bool,
    /// Workers started after the first one.
    pub restarts: u64,
    /// Why the last worker was replaced, in words.
    pub last_failure: Option<String>,
    /// Counts up each time a worker becomes ready (the first one is 1).
    pub generation: u64,
}

/// A running worker process.
struct Worker {
    child: Child,
    pid: Option<u32>,
    /// Held open: the worker exits when it closes.
    stdin: Option<ChildStdin>,
    /// Held open after the ready line, so the worker never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
    started: Instant,
}

/// Start a worker and wait for its ready line.
async fn spawn_worker(exe: &Path, spec_line: &str) -> anyhow::Result<Worker> {
    let mut command = Command::new(exe);
    // `ps` shows `printgate broker-worker` even when started through /proc/self/exe.
    #[cfg(unix)]
    command.arg0("printgate");
    let mut child = command
        .arg(worker::SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start the MQTT broker worker ({} {}): {e}",
                exe.display(),
                worker::SUBCOMMAND
            )
        })?;
    let pid = child.id();
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    stdin.write_all(spec_line.as_bytes()).await?;
    stdin.write_all(b"\n").await?;
    stdin.flush().await?;
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    let ready = tokio::time::timeout(READY_TIMEOUT, stdout.read_line(&mut line)).await;
    match ready {
        Ok(Ok(_)) if line.trim_end() == worker::READY => Ok(Worker {
            child,
            pid,
            stdin: Some(stdin),
            _stdout: stdout,
            started: Instant::now(),
        }),
        Ok(Ok(0)) => {
            let status = child.wait().await.ok();
            anyhow::bail!(
                "the MQTT broker worker ended before it was ready ({}); see its error above",
                describe_exit(status)
            )
        }
        Ok(Ok(_)) => anyhow::bail!(
            "the MQTT broker worker said {:?} instead of its ready line",
            line.trim_end()
        ),
        Ok(Err(e)) => anyhow::bail!("cannot read the MQTT broker worker's ready line: {e}"),
        Err(_) => anyhow::bail!(
            "the MQTT broker worker was not ready within {} s",
            READY_TIMEOUT.as_secs()
        ),
    }
}

fn describe_exit(status: Option<std::process::ExitStatus>) -> String {
    let Some(status) = status else {
        return "its exit status is unknown".into();
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL: killed, e.g. by the out-of-memory killer)",
                libc::SIGABRT => " (SIGABRT: it panicked)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGTERM => " (SIGTERM)",
                _ => "",
            };
            return format!("killed by signal {sig}{name}");
        }
    }
    match status.code() {
        Some(c) => format!("exit status {c}"),
        None => "no exit status".into(),
    }
}

/// A CONNECT of the liveness probe (MQTT 3.1.1 or 5, clean session, keep-alive 10 s).
fn probe_connect(level: u8, client_id: &str, user: &str, password: &str) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&s[..s.len().min(usize::from(u16::MAX))]);
    }
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(level);
    body.push(0b1100_0010); // user name, password, clean session
    body.extend_from_slice(&10u16.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    string(&mut body, client_id.as_bytes());
    string(&mut body, user.as_bytes());
    string(&mut body, password.as_bytes());
    let mut out = vec![packets::CONNECT << 4];
    packets::encode_varint(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// One probe of one port: log in, ping, disconnect. `Err` says what did not answer.
async fn probe_port(addr: SocketAddr, level: u8, internal: &InternalBroker) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let id = format!("printgate-liveness-v{level}");
    s.write_all(&probe_connect(
        level,
        &id,
        &internal.username,
        &internal.password,
    ))
    .await
    .map_err(|e| format!("{addr}: {e}"))?;
    let ack = packets::read_packet(&mut s, 1024)
        .await
        .map_err(|e| format!("no CONNACK on {addr}: {e}"))?;
    if ack.kind() != packets::CONNACK || ack.body.get(1) != Some(&0) {
        return Err(format!("{addr} refused the internal login"));
    }
    s.write_all(&[0xC0, 0x00]) // PINGREQ
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    // The PINGRESP (2 bytes); anything else first is a broken broker.
    let mut resp = [0u8; 2];
    s.read_exact(&mut resp)
        .await
        .map_err(|e| format!("no PINGRESP on {addr}: {e}"))?;
    if resp != [0xD0, 0x00] {
        return Err(format!("{addr} answered a PINGREQ with {resp:02x?}"));
    }
    let _ = s.write_all(&[0xE0, 0x00]).await; // DISCONNECT
    Ok(())
}

/// Probe both ports within [`PROBE_TIMEOUT`].
async fn probe(internal: &InternalBroker) -> Result<(), String> {
    let both = async {
        probe_port(internal.v4, 4, internal).await?;
        probe_port(internal.v5, 5, internal).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, both).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer to a login and ping within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// Probe until [`PROBE_FAILURES`] probes in a row failed; returns the last failure.
async fn until_hung(internal: &InternalBroker) -> String {
    let mut failures = 0;
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        match probe(internal).await {
            Ok(()) => failures = 0,
            Err(why) => {
                failures += 1;
                tracing::warn!(
                    "the MQTT broker worker failed a liveness probe ({failures} of {PROBE_FAILURES} in a row): {why}"
                );
                if failures >= PROBE_FAILURES {
                    return why;
                }
            }
        }
    }
}

/// The running supervisor: the internal broker's address and the worker's status.
pub struct Supervisor {
    pub internal: InternalBroker,
    pub status: watch::Receiver<WorkerStatus>,
}

/// Start the first worker (an error if it cannot start: the gateway cannot run its broker) and
/// the task that keeps one running until `shutdown`.
pub async fn start(
    limits: &BrokerLimits,
    exe: &Path,
    stats: Arc<BrokerStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    Supervisor,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let internal = embedded::new_internal()?;
    let spec_line = serde_json::to_string(&WorkerSpec::new(limits, &internal))?;
    let first = spawn_worker(exe, &spec_line).await?;
    tracing::info!(
        pid = first.pid,
        "the MQTT broker runs in its own process (printgate {}); a broker failure costs clients a reconnect, never the safety path",
        worker::SUBCOMMAND
    );
    let (tx, rx) = watch::channel(WorkerStatus {
        pid: first.pid,
        up: true,
        restarts: 0,
        last_failure: None,
        generation: 1,
    });
    stats.set_worker(true, 0);
    let task = supervise(
        first,
        exe.to_path_buf(),
        spec_line,
        internal.clone(),
        Report { status: tx, stats },
        shutdown,
    );
    Ok((
        Supervisor {
            internal,
            status: rx,
        },
        task,
    ))
}

async fn stop(mut w: Worker) {
    drop(w.stdin.take());
    if tokio::time::timeout(STOP_GRACE, w.child.wait())
        .await
        .is_err()
    {
        let _ = w.child.kill().await;
    }
}

/// Where the worker's status goes: the watch for the gateway, the counters for the metrics.
struct Report {
    status: watch::Sender<WorkerStatus>,
    stats: Arc<BrokerStats>,
}

impl Report {
    fn update(&self, f: impl FnOnce(&mut WorkerStatus)) {
        self.status.send_modify(f);
        let s = self.status.borrow();
        self.stats.set_worker(s.up, s.restarts);
    }
}

/// The back-off after `current`: doubled, at most [`MAX_BACKOFF`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

async fn supervise(
    first: Worker,
    exe: PathBuf,
    spec_line: String,
    internal: InternalBroker,
    report: Report,
    shutdown: CancellationToken,
) {
    let mut worker = first;
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Watch the running worker until it dies, hangs, or the gateway stops.
        enum Ended {
            Shutdown,
            Exited(Option<std::process::ExitStatus>),
            Hung(String),
        }
        let ended = tokio::select! {
            _ = shutdown.cancelled() => Ended::Shutdown,
            exit = worker.child.wait() => Ended::Exited(exit.ok()),
            hung = until_hung(&internal) => Ended::Hung(hung),
        };
        let why = match ended {
            Ended::Shutdown => return stop(worker).await,
            Ended::Exited(exit) => format!("ended ({})", describe_exit(exit)),
            Ended::Hung(hung) => {
                let _ = worker.child.kill().await;
                format!("stopped answering ({hung}); it was killed")
            }
        };
        if worker.started.elapsed() >= STABLE_AFTER {
            backoff = FIRST_BACKOFF;
        }
        let old_pid = worker.pid;
        report.update(|s| {
            s.pid = None;
            s.up = false;
            s.last_failure = Some(why.clone());
        });
        // Start a new one, retrying with the back-off until one is ready.
        loop {
            let restarts = report.status.borrow().restarts + 1;
            let next = next_backoff(backoff);
            tracing::warn!(
                "the MQTT broker worker (pid {}) {why}; its MQTT clients were disconnected and reconnect by themselves. Restart {restarts} in {} ms (the next back-off, should this one fail too: {} ms); the safety path is not affected",
                old_pid.map_or_else(|| "?".into(), |p| p.to_string()),
                backoff.as_millis(),
                next.as_millis()
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = next;
            report.update(|s| s.restarts = restarts);
            match spawn_worker(&exe, &spec_line).await {
                Ok(w) => {
                    tracing::info!(
                        pid = w.pid,
                        restarts,
                        "a new MQTT broker worker is ready on the same loopback ports"
                    );
                    report.update(|s| {
                        s.pid = w.pid;
                        s.up = true;
                        s.generation += 1;
                    });
                    worker = w;
                    break;
                }
                Err(e) => {
                    tracing::error!("{e:#}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_connect_is_a_valid_connect_for_the_front_door_parser() {
        for level in [4u8, 5] {
            let bytes = probe_connect(level, "printgate-liveness", "internal", "pw");
            assert_eq!(bytes[0] >> 4, packets::CONNECT);
            let (len, used) = packets::decode_varint(&bytes[1..]).expect("length");
            let body = &bytes[1 + used..];
            assert_eq!(body.len(), len);
            let info = packets::parse_connect(body).expect("parses");
            assert_eq!(info.level, level);
            assert_eq!(info.client_id, "printgate-liveness");
            assert_eq!(info.username.as_deref(), Some("internal"));
            assert_eq!(info.keep_alive, 10);
        }
    }

    #[test]
    fn the_back_off_doubles_from_100_ms_up_to_30_s() {
        let mut b = FIRST_BACKOFF;
        let mut seen = vec![b];
        for _ in 0..12 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[..4], [100, 200, 400, 800].map(Duration::from_millis));
        assert_eq!(*seen.last().unwrap(), MAX_BACKOFF);
        assert!(seen.windows(2).all(|w| w[1] >= w[0]));
    }

    #[cfg(unix)]
    #[test]
    fn exits_are_told_in_words() {
        use std::os::unix::process::ExitStatusExt;
        let killed = std::process::ExitStatus::from_raw(libc::SIGKILL);
        assert!(describe_exit(Some(killed)).contains("SIGKILL"));
        let code = std::process::ExitStatus::from_raw(1 << 8);
        assert_eq!(describe_exit(Some(code)), "exit status 1");
    }
}
