//! What the process-level benchmarks share: child processes that are always stopped, `/proc`
//! sampling (RSS, CPU), `printgate sim` started in its own process and its printers read from its
//! output, and small helpers for configs and figures.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The models `printgate sim` runs, in turn.
pub const MODELS: &str = "P1S,X1C,A1MINI";
/// The log line `serve` writes when a printer link is up.
pub const MARKER_CONNECTED: &str = "connected to the printer";

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

pub fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

// ---------------------------------------------------------------------------------------------
// Children that are always stopped
// ---------------------------------------------------------------------------------------------

/// A child process that is stopped when dropped: SIGINT (what both `sim` and `serve` shut down
/// on), a bounded wait, then SIGKILL.
pub struct Guard {
    pub name: &'static str,
    pub child: Child,
}

impl Guard {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Res<Guard> {
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Guard { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop politely (SIGINT, like Ctrl-C), then by force after 5 s.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{} did not stop on SIGINT within 5 s; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copy a child's output into `log` (so the pipe never fills), counting lines with `marker`.
pub fn drain(
    out: impl Read + Send + 'static,
    log: PathBuf,
    marker: &'static str,
) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(&log).ok();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.contains(marker) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    count
}

/// Wait (bounded by `limit`) until `connected` reaches `n`; fails early if the child exits.
pub async fn wait_connected(
    child: &mut Guard,
    connected: &AtomicUsize,
    n: usize,
    limit: Duration,
) -> Res<Duration> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if let Ok(Some(st)) = child.child.try_wait() {
            return Err(format!("{} exited: {st}", child.name).into());
        }
        if connected.load(Ordering::Relaxed) >= n {
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "only {}/{n} printers connected within {limit:?}",
        connected.load(Ordering::Relaxed)
    )
    .into())
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// Memory of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub anon_kb: u64,
    pub file_kb: u64,
    pub threads: u64,
}

pub fn mem(pid: u32) -> Res<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut m = Mem::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let key = it.next().unwrap_or("");
        let val: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match key {
            "VmRSS:" => m.rss_kb = val,
            "VmHWM:" => m.hwm_kb = val,
            "RssAnon:" => m.anon_kb = val,
            "RssFile:" => m.file_kb = val,
            "Threads:" => m.threads = val,
            _ => {}
        }
    }
    if m.rss_kb == 0 {
        return Err(format!("no VmRSS in /proc/{pid}/status").into());
    }
    Ok(m)
}

/// utime + stime of a process in clock ticks.
pub fn cpu_ticks(pid: u32) -> Res<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unreadable /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15 → indices 11, 12.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("no utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("no stime")?;
    Ok(utime + stime)
}

/// Clock ticks per second (`cpu_ticks` unit).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------------
// printgate sim in its own process, printgate hash-password
// ---------------------------------------------------------------------------------------------

/// One line of `printgate sim`:
/// `name model serial host mqtt_port ftps_port camera_port access_code fingerprint`.
#[derive(Debug, Clone)]
pub struct SimPrinter {
    pub name: String,
    pub model: String,
    pub serial: String,
    pub host: String,
    pub mqtt_port: u16,
    pub ftps_port: u16,
    pub access_code: String,
}

impl SimPrinter {
    /// This printer as a `[[printers]]` block of printgate's config (pinned TLS).
    pub fn toml_block(&self) -> String {
        format!(
            "\n[[printers]]\nname = {}\nmodel = {}\nserial = {}\nhost = {}\naccess_code = {}\n\
             tls = \"pin\"\nmqtt_port = {}\nftps_port = {}\n",
            toml_str(&self.name),
            toml_str(&self.model),
            toml_str(&self.serial),
            toml_str(&self.host),
            toml_str(&self.access_code),
            self.mqtt_port,
            self.ftps_port
        )
    }
}

pub fn parse_sim_line(line: &str) -> Option<SimPrinter> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [
        name,
        model,
        serial,
        host,
        mqtt,
        ftps,
        _camera,
        code,
        _fingerprint,
    ] = f.as_slice()
    else {
        return None;
    };
    Some(SimPrinter {
        name: name.to_string(),
        model: model.to_string(),
        serial: serial.to_string(),
        host: host.to_string(),
        mqtt_port: mqtt.parse().ok()?,
        ftps_port: ftps.parse().ok()?,
        access_code: code.to_string(),
    })
}

/// Start `n` simulated printers and read their addresses (header line, then one line per
/// printer); the rest of the output goes to `dir/sim-<n>.log`.
pub fn start_sim(bin: &Path, n: usize, dir: &Path) -> Res<(Guard, Vec<SimPrinter>)> {
    let mut guard = Guard::spawn(
        "printgate sim",
        Command::new(bin)
            .args(["sim", "--printers", &n.to_string(), "--models", MODELS])
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let out = guard.child.stdout.take().ok_or("sim stdout not captured")?;
    let mut lines = BufReader::new(out).lines();
    let mut printers = Vec::new();
    let mut header = false;
    // Bounded: the header, n printer lines and at most 200 other (log) lines.
    for _ in 0..(n + 201) {
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.starts_with("# name model serial") {
            header = true;
        } else if header && let Some(p) = parse_sim_line(&line) {
            printers.push(p);
            if printers.len() == n {
                break;
            }
        }
    }
    if printers.len() != n {
        return Err(format!("printgate sim described {} of {n} printers", printers.len()).into());
    }
    let log = dir.join(format!("sim-{n}.log"));
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(log).ok();
        for line in lines.map_while(Result::ok) {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    Ok((guard, printers))
}

/// An argon2 hash for `[[broker.users]]`, made by `printgate hash-password`.
pub fn hash_password(bin: &Path, pw: &str) -> Res<String> {
    let mut child = Command::new(bin)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(format!("{pw}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let hash = String::from_utf8(out.stdout)?.trim().to_string();
    if !out.status.success() || !hash.starts_with("$argon2") {
        return Err(format!("printgate hash-password failed: {hash:?}").into());
    }
    Ok(hash)
}
