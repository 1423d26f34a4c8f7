//! The standard `process_*` metrics of Prometheus client libraries, read from `/proc/self`
//! (Linux): resident memory, CPU seconds, open and allowed file descriptors, start time.
//! Where `/proc` cannot be read the metric is left out rather than shown as 0.

use super::{FGauge, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Resident memory and CPU time of this process: (bytes, seconds).
pub fn rss_and_cpu() -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name in parentheses (which may contain spaces): state is 3rd,
    // utime 14th, stime 15th, rss 24th of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let (hz, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let page = if page > 0 { page as u64 } else { 4096 };
    Some((rss_pages * page, ticks as f64 / hz))
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

fn max_fds() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    ok.then_some(lim.rlim_cur)
}

pub(super) fn register(reg: &mut Registry, m: &Metrics) {
    if let Some((rss, cpu)) = rss_and_cpu() {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(rss).unwrap_or(i64::MAX));
        reg.register("process_resident_memory_bytes", "Resident memory size", g);
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(cpu);
        reg.register("process_cpu_seconds", "User and system CPU time spent", c);
    }
    if let Some(n) = open_fds() {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(n).unwrap_or(i64::MAX));
        reg.register("process_open_fds", "Open file descriptors", g);
    }
    if let Some(n) = max_fds() {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(n).unwrap_or(i64::MAX));
        reg.register(
            "process_max_fds",
            "Largest number of open file descriptors allowed",
            g,
        );
    }
    let start = FGauge::default();
    start.set(
        m.started_at
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
    );
    reg.register(
        "process_start_time_seconds",
        "Start time of the gateway (Unix time)",
        start,
    );
}
