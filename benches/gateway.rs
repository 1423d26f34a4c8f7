//! Gateway process figures from issue 3, measured on the real release binary (nothing is built
//! here): `printgate sim --printers 10` runs in its own process, `printgate serve` is pointed at
//! it through a generated printgate.toml, and this program measures
//!
//! - cold start: spawn of `printgate serve` → first HTTP 200 on `/healthz` and on `/`
//!   (several starts; the first on a fresh data directory, the rest reusing it);
//! - idle memory: the serve process's VmRSS / VmHWM (and its anon/file split, thread count)
//!   from `/proc/<pid>/status`, sampled while all 10 printers are connected;
//! - idle CPU: utime + stime from `/proc/<pid>/stat` over the same period;
//! - report freshness: every printer's report age at the gateway's API (`GET /metrics`,
//!   `printgate_printer_report_age_seconds`) at each sample (target < 2 s at 200 printers);
//! - cost per printer: RSS and CPU divided by the printer count (run it with 10, 50, 100, 200
//!   printers to see how cost grows).
//!
//! Run with `cargo bench --bench gateway`. Environment knobs:
//! `PRINTGATE_BENCH_SECS` (idle period, default 300), `PRINTGATE_BENCH_INTERVAL_SECS` (RSS sample
//! interval, default 10), `PRINTGATE_BENCH_COLD_RUNS` (cold starts measured, default 5),
//! `PRINTGATE_BENCH_PRINTERS` (default 10, at most 250). Everything listens on 127.0.0.1; every child is
//! stopped when this program ends, also on a panic.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The release binary cargo built for this package. It is copied into the work directory first,
/// so that a rebuild of the shared target directory during a long run cannot swap it.
const BIN: &str = env!("CARGO_BIN_EXE_printgate");
/// Pause between two polls of an HTTP endpoint during cold start.
const POLL_PAUSE: Duration = Duration::from_millis(2);
/// A cold start slower than this is reported as a failure.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long the printers may take to come online.
const ONLINE_LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// The simulator and the config built from its output
// ---------------------------------------------------------------------------------------------

/// The `[metrics]` token the bench scrapes with.
const METRICS_TOKEN: &str = "bench-metrics-token-0123456789";

fn write_config(path: &Path, data_dir: &Path, port: u16, printers: &[SimPrinter]) -> Res<()> {
    let mut t = String::new();
    t.push_str(&format!(
        "data_dir = {}\n\n[web]\nlisten = \"127.0.0.1:{port}\"\n\n[broker]\nmode = \"off\"\n\n[metrics]\nenabled = true\ntoken = \"{METRICS_TOKEN}\"\n",
        toml_str(&data_dir.display().to_string())
    ));
    for p in printers {
        t.push_str(&p.toml_block());
    }
    std::fs::write(path, t)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// printgate serve
// ---------------------------------------------------------------------------------------------

struct Serve {
    guard: Guard,
    spawned: Instant,
    connected: Arc<AtomicUsize>,
}

fn start_serve(bin: &Path, config: &Path, log: PathBuf) -> Res<Serve> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("PRINTGATE_BENCH_LOG").unwrap_or("info".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let spawned = Instant::now();
    let mut guard = Guard::spawn("printgate serve", &mut cmd)?;
    // The log (with the "connected" lines) is on stderr.
    let out = guard
        .child
        .stderr
        .take()
        .ok_or("serve stderr (its log) not captured")?;
    let connected = drain(out, log, MARKER_CONNECTED);
    Ok(Serve {
        guard,
        spawned,
        connected,
    })
}

fn http() -> Res<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()?)
}

/// What polling one URL during start-up found.
enum FirstAnswer {
    /// 200 after this long since spawn.
    Ok(Duration),
    /// The first non-connection-error answer was not 200 (e.g. a login redirect).
    Other(u16, Duration),
}

/// Poll `url` until it answers (bounded in time and count), measured from `since`.
fn first_answer(
    client: &reqwest::blocking::Client,
    url: &str,
    since: Instant,
    serve: &mut Guard,
) -> Res<FirstAnswer> {
    let max_polls = START_LIMIT.as_millis() / POLL_PAUSE.as_millis();
    for _ in 0..max_polls {
        if let Ok(resp) = client.get(url).send() {
            let at = since.elapsed();
            let status = resp.status().as_u16();
            return Ok(if status == 200 {
                FirstAnswer::Ok(at)
            } else {
                FirstAnswer::Other(status, at)
            });
        }
        if let Ok(Some(st)) = serve.child.try_wait() {
            return Err(format!("printgate serve exited during start-up: {st}").into());
        }
        if since.elapsed() > START_LIMIT {
            break;
        }
        std::thread::sleep(POLL_PAUSE);
    }
    Err(format!("{url} did not answer within {START_LIMIT:?}").into())
}

/// One cold start: spawn → first 200 on `/healthz`, then on `/`.
struct ColdStart {
    healthz: Duration,
    page: FirstAnswer,
}

fn cold_start(
    bin: &Path,
    client: &reqwest::blocking::Client,
    config: &Path,
    log: PathBuf,
    port: u16,
) -> Res<(Serve, ColdStart)> {
    let mut serve = start_serve(bin, config, log)?;
    let base = format!("http://127.0.0.1:{port}");
    let healthz = match first_answer(
        client,
        &format!("{base}/healthz"),
        serve.spawned,
        &mut serve.guard,
    )? {
        FirstAnswer::Ok(d) => d,
        FirstAnswer::Other(s, _) => return Err(format!("/healthz answered {s}, not 200").into()),
    };
    let page = first_answer(client, &format!("{base}/"), serve.spawned, &mut serve.guard)?;
    Ok((serve, ColdStart { healthz, page }))
}

/// Wait until all printers are online: `GET /api/v1/printers` when it is reachable without a
/// login, else the serve log's "connected to the printer" lines. Returns how it was decided.
fn wait_online(
    client: &reqwest::blocking::Client,
    port: u16,
    serve: &mut Serve,
    n: usize,
) -> Res<&'static str> {
    let url = format!("http://127.0.0.1:{port}/api/v1/printers");
    let pause = Duration::from_millis(200);
    let polls = ONLINE_LIMIT.as_millis() / pause.as_millis();
    let mut last = String::new();
    for _ in 0..polls {
        if let Ok(Some(st)) = serve.guard.child.try_wait() {
            return Err(format!("printgate serve exited: {st}").into());
        }
        match client.get(&url).send() {
            Ok(resp) if resp.status().is_success() => {
                let v: serde_json::Value = resp.json()?;
                let online = v
                    .as_array()
                    .map(|a| a.iter().filter(|p| p["online"] == true).count())
                    .unwrap_or(0);
                if online >= n {
                    return Ok("GET /api/v1/printers");
                }
                last = format!("{online}/{n} online per the API");
            }
            _ => {
                let c = serve.connected.load(Ordering::Relaxed);
                if c >= n {
                    return Ok("serve log");
                }
                last = format!("{c}/{n} \"{MARKER_CONNECTED}\" lines in the log");
            }
        }
        std::thread::sleep(pause);
    }
    Err(format!("printers not online within {ONLINE_LIMIT:?}: {last}").into())
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// Every printer's report age (seconds) from `GET /metrics`.
fn report_ages(client: &reqwest::blocking::Client, port: u16) -> Res<Vec<f64>> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()?
        .text()?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("printgate_printer_report_age_seconds{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median_dur(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------

fn describe_page(p: &FirstAnswer) -> String {
    match p {
        FirstAnswer::Ok(d) => format!("200 after {}", ms(*d)),
        FirstAnswer::Other(s, d) => format!("{s} (login required?) after {}", ms(*d)),
    }
}

fn main() -> Res<()> {
    let secs = env_u64("PRINTGATE_BENCH_SECS", 300);
    let interval = env_u64("PRINTGATE_BENCH_INTERVAL_SECS", 10).max(1);
    let cold_runs = env_u64("PRINTGATE_BENCH_COLD_RUNS", 5).clamp(1, 50);
    let n = env_u64("PRINTGATE_BENCH_PRINTERS", 10).clamp(1, 250) as usize;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let bin = dir.path().join("printgate");
    std::fs::copy(BIN, &bin).map_err(|e| format!("cannot copy {BIN}: {e}"))?;
    println!("printgate bench: {BIN}");
    println!("work dir {} (deleted at exit)", dir.path().display());

    let (_sim, printers) = start_sim(&bin, n, dir.path())?;
    println!("{n} simulated printers ({MODELS}) in pid {}", _sim.pid());
    let port = free_port()?;
    let config = dir.path().join("printgate.toml");
    write_config(&config, &data_dir, port, &printers)?;
    let client = http()?;

    // Cold starts: the first on a fresh data directory (migrations), the others reusing it.
    let mut warm_healthz = Vec::new();
    let mut warm_page = Vec::new();
    let mut fresh: Option<ColdStart> = None;
    for run in 0..cold_runs {
        let log = dir.path().join(format!("serve-cold-{run}.log"));
        let (mut serve, c) = cold_start(&bin, &client, &config, log, port)?;
        println!(
            "cold start {run} ({}): /healthz 200 after {}, / {}",
            if run == 0 {
                "fresh data dir"
            } else {
                "existing data dir"
            },
            ms(c.healthz),
            describe_page(&c.page)
        );
        serve.guard.stop();
        if run == 0 {
            fresh = Some(c);
        } else {
            warm_healthz.push(c.healthz);
            if let FirstAnswer::Ok(d) = c.page {
                warm_page.push(d);
            }
        }
    }

    // The instance that is measured idle.
    let log = dir.path().join("serve.log");
    let (mut serve, c) = cold_start(&bin, &client, &config, log.clone(), port)?;
    warm_healthz.push(c.healthz);
    if let FirstAnswer::Ok(d) = c.page {
        warm_page.push(d);
    }
    let pid = serve.guard.pid();
    let t_online = Instant::now();
    let how = wait_online(&client, port, &mut serve, n)?;
    println!(
        "all {n} printers online {} after the page answered (seen via {how})",
        ms(t_online.elapsed())
    );

    let ticks = clock_ticks();
    let cpu0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    let first = mem(pid)?;
    println!(
        "t=0 s: RSS {} (anon {}, file {}), peak {}, {} threads",
        mb(first.rss_kb),
        mb(first.anon_kb),
        mb(first.file_kb),
        mb(first.hwm_kb),
        first.threads
    );
    let mut samples = vec![first];
    let mut ages: Vec<f64> = Vec::new();
    let mut age_samples = 0usize;
    let steps = secs / interval;
    for i in 1..=steps {
        // Sleep to the next mark on the schedule (so the total stays `secs`).
        let mark = Duration::from_secs(i * interval);
        if let Some(wait) = mark.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        if let Ok(Some(st)) = serve.guard.child.try_wait() {
            return Err(format!("printgate serve exited during the idle period: {st}").into());
        }
        let s = mem(pid)?;
        let now_ages = report_ages(&client, port).unwrap_or_default();
        let worst = now_ages.iter().copied().fold(0.0f64, f64::max);
        println!(
            "t={} s: RSS {} (anon {}, file {}), peak {}, {} threads; report age max {:.2} s over {} printers",
            t0.elapsed().as_secs(),
            mb(s.rss_kb),
            mb(s.anon_kb),
            mb(s.file_kb),
            mb(s.hwm_kb),
            s.threads,
            worst,
            now_ages.len()
        );
        if now_ages.len() == n {
            age_samples += 1;
        }
        ages.extend(now_ages);
        samples.push(s);
    }
    let idle = t0.elapsed();
    let cpu1 = cpu_ticks(pid)?;
    let online_now = match client
        .get(format!("http://127.0.0.1:{port}/api/v1/printers"))
        .send()
        .and_then(|r| r.json::<serde_json::Value>())
    {
        Ok(v) => v
            .as_array()
            .map(|a| a.iter().filter(|p| p["online"] == true).count().to_string())
            .unwrap_or_else(|| "?".into()),
        Err(_) => "?".into(),
    };
    let reconnects = serve.connected.load(Ordering::Relaxed).saturating_sub(n);
    serve.guard.stop();

    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kb).collect();
    let peak = samples.iter().map(|s| s.hwm_kb).max().unwrap_or(0);
    let last = samples.last().copied().unwrap_or_default();
    let cpu_s = cpu1.saturating_sub(cpu0) as f64 / ticks as f64;

    println!();
    println!("== summary (printgate serve, {n} printers in another process) ==");
    if let Some(f) = &fresh {
        println!(
            "cold start, fresh data dir: /healthz {}, / {}",
            ms(f.healthz),
            describe_page(&f.page)
        );
    }
    println!(
        "cold start, existing data dir ({} starts): /healthz min {} median {} max {}",
        warm_healthz.len(),
        ms(warm_healthz.iter().min().copied().unwrap_or_default()),
        ms(median_dur(warm_healthz.clone())),
        ms(warm_healthz.iter().max().copied().unwrap_or_default()),
    );
    if warm_page.is_empty() {
        println!("cold start to /: not measured (the page did not answer 200 without a login)");
    } else {
        println!(
            "cold start, existing data dir ({} starts): /        min {} median {} max {} (target < 300 ms)",
            warm_page.len(),
            ms(warm_page.iter().min().copied().unwrap_or_default()),
            ms(median_dur(warm_page.clone())),
            ms(warm_page.iter().max().copied().unwrap_or_default()),
        );
    }
    println!(
        "idle RSS over {} s ({} samples): min {} median {} max {}; VmHWM peak {} (target < 20 MB)",
        idle.as_secs(),
        rss.len(),
        mb(rss.iter().min().copied().unwrap_or(0)),
        mb(median(rss.clone())),
        mb(rss.iter().max().copied().unwrap_or(0)),
        mb(peak)
    );
    println!(
        "idle RSS split at the end: anon {}, file-backed {}; {} threads",
        mb(last.anon_kb),
        mb(last.file_kb),
        last.threads
    );
    println!(
        "idle CPU over {} s: {:.2} s (utime+stime) = {:.2} % of one core",
        idle.as_secs(),
        cpu_s,
        100.0 * cpu_s / idle.as_secs_f64().max(1e-9)
    );
    println!(
        "printers online at the end: {online_now}/{n}; extra connects during the run: {reconnects}"
    );
    let worst = ages.iter().copied().fold(0.0f64, f64::max);
    let over = ages.iter().filter(|a| **a >= 2.0).count();
    println!(
        "report age at the API (GET /metrics, {age_samples} full samples, {} readings): max {:.2} s, {} readings ≥ 2 s (target: all < 2 s)",
        ages.len(),
        worst,
        over
    );
    println!(
        "per printer: RSS {:.2} MB median, CPU {:.3} % of one core ({n} printers; targets at 200: RSS < 64 MB, CPU < 25 %)",
        median(rss.clone()) as f64 / 1024.0 / n as f64,
        100.0 * cpu_s / idle.as_secs_f64().max(1e-9) / n as f64
    );
    Ok(())
}
