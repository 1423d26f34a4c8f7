//! Web UI benchmarks (issue 6), `cargo bench --bench web`. The gateway runs as its own process
//! (`printgate serve`, the release binary) so that its CPU time and memory can be read from
//! `/proc/<pid>` without counting the simulators or the HTTP clients, which run in this process.
//!
//! 1. Dashboard weight: what a browser transfers for `/` with 10 printers — the HTML, CSS and
//!    JS, gzip-compressed as served (`Accept-Encoding: gzip`). Target < 30 KB.
//! 2. Server time of `/` and `GET /api/v1/printers` with 20 printers and 500 finished jobs in
//!    the history: p50/p99 of 2000 sequential requests over a keep-alive loopback connection
//!    (so an upper bound: it includes loopback HTTP and the client). Target p99 < 5 ms. The 20
//!    printers are configured at loopback ports where nothing listens (their links keep
//!    retrying); the jobs are written to the database before the gateway starts.
//! 3. 50 concurrent SSE clients on `/live` with 10 simulated printers reporting at 1 Hz while
//!    they heat and print: the gateway's CPU (utime+stime per wall second, 100 ticks/s) and RSS,
//!    first without clients, then with the 50.
//!
//! Knobs: `PRINTGATE_BENCH_SECS` (measurement window of part 3, default 20),
//! `PRINTGATE_BENCH_PARTS` (which parts to run, default `123`). Also printed for part 2: the
//! gateway's own CPU time per request, which does not depend on what else the machine runs.

use printgate::config::{
    Config, DispatchConfig, LinkConfig, Model, PrinterConfig, TlsMode, WebConfig,
};
use printgate::jobs::model::{NewJob, Target};
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use printgate::sim::{SimConfig, SimPrinter};
use printgate::store::Store;
use printgate::web::auth;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const TOKEN: &str = auth::DEMO_API_TOKEN;

/// A `printgate serve` child process.
struct Gateway {
    _child: Child,
    base: String,
    pid: u32,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn base_config(dir: &Path, printers: Vec<PrinterConfig>) -> (Config, u16) {
    let port = free_port();
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        web: WebConfig {
            listen: format!("127.0.0.1:{port}").parse().expect("address"),
            ..WebConfig::default()
        },
        link: LinkConfig::default(),
        dispatch: DispatchConfig::default(),
        printers,
        safety: Default::default(),
        alerts: Default::default(),
        metrics: Default::default(),
        broker: Default::default(),
    };
    config.broker.mode = printgate::broker::config::BrokerMode::Off;
    (config, port)
}

/// Write the config, create the demo account (its API token is used by the clients) and start
/// the gateway; returns once `/healthz` answers.
async fn spawn_gateway(dir: &Path, config: &Config, port: u16) -> Gateway {
    let store = Store::open(&dir.join(printgate::DATABASE_FILE)).expect("database");
    auth::ensure_demo_account(&store).expect("demo account");
    drop(store);
    let path = dir.join("printgate.toml");
    std::fs::write(&path, toml::to_string(config).expect("config as TOML")).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_printgate"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start printgate serve");
    let pid = child.id().expect("pid");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Gateway {
                _child: child,
                base,
                pid,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("printgate serve did not answer /healthz within 10 s");
}

/// (utime + stime) in clock ticks, and VmRSS / VmHWM in KiB, of a process.
fn proc_stats(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let cpu = ticks(11) + ticks(12);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kib("VmRSS:"), kib("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn gzip_size(http: &reqwest::Client, url: &str) -> (usize, bool) {
    let resp = http
        .get(url)
        .header(auth::API_KEY_HEADER, TOKEN)
        .header(reqwest::header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("request");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let gz = resp
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .is_some_and(|v| v == "gzip");
    (resp.bytes().await.expect("body").len(), gz)
}

async fn start_sims(n: usize, report_interval: Duration) -> Vec<SimPrinter> {
    let mut sims = Vec::new();
    for i in 0..n {
        let mut cfg = SimConfig::new(Model::P1S);
        cfg.name = format!("bench sim {i}");
        cfg.report_interval = report_interval;
        sims.push(SimPrinter::start(cfg).await.expect("simulator starts"));
    }
    sims
}

fn sim_printer(i: usize, sim: &SimPrinter) -> PrinterConfig {
    PrinterConfig {
        name: format!("printer {}", i + 1),
        model: sim.model(),
        serial: sim.serial().to_string(),
        host: sim.host(),
        access_code: sim.access_code(),
        tls: TlsMode::Pin,
        mqtt_port: sim.mqtt_port(),
        ftps_port: sim.ftps_port(),
        ..PrinterConfig::default()
    }
}

/// Wait (bounded) until every printer reports online through the API.
async fn wait_online(http: &reqwest::Client, base: &str, n: usize) {
    for _ in 0..600 {
        let online = http
            .get(format!("{base}/api/v1/printers"))
            .header(auth::API_KEY_HEADER, TOKEN)
            .send()
            .await
            .ok()
            .map(|r| r.json::<serde_json::Value>());
        if let Some(f) = online
            && let Ok(v) = f.await
            && v.as_array()
                .is_some_and(|a| a.iter().filter(|p| p["online"] == true).count() == n)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the printers did not come online within 60 s");
}

/// Queue one long print per printer and tap Plate clear everywhere, so the printers heat and
/// print (their reports change every second) during the measurement.
async fn start_prints(http: &reqwest::Client, base: &str, n: usize) {
    let file = build_3mf(&Fixture3mf {
        prediction_secs: 4 * 3600,
        layers: 400,
        ..Fixture3mf::for_model(Model::P1S)
    });
    for i in 1..=n {
        let form = reqwest::multipart::Form::new()
            .text("printer", format!("printer {i}"))
            .part(
                "file",
                reqwest::multipart::Part::bytes(file.clone()).file_name("bench.gcode.3mf"),
            );
        let resp = http
            .post(format!("{base}/api/v1/jobs"))
            .header(auth::API_KEY_HEADER, TOKEN)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        assert!(resp.status().is_success(), "upload: {}", resp.status());
        let resp = http
            .post(format!("{base}/api/v1/printers/printer%20{i}/plate-clear"))
            .header(auth::API_KEY_HEADER, TOKEN)
            .send()
            .await
            .expect("tap");
        assert!(resp.status().is_success(), "tap: {}", resp.status());
    }
}

async fn dashboard_weight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sims = start_sims(10, Duration::from_secs(1)).await;
    let printers = sims
        .iter()
        .enumerate()
        .map(|(i, s)| sim_printer(i, s))
        .collect();
    let (config, port) = base_config(dir.path(), printers);
    let gw = spawn_gateway(dir.path(), &config, port).await;
    let http = reqwest::Client::new();
    wait_online(&http, &gw.base, 10).await;
    start_prints(&http, &gw.base, 10).await;
    // A few seconds of printing so every card shows temperatures, progress and the job.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut total = 0;
    println!(
        "\n1. dashboard weight, 10 printers (each printing, one job each in the queue), gzip:"
    );
    for path in ["/", "/static/style.css", "/static/app.js"] {
        let (bytes, gz) = gzip_size(&http, &format!("{}{path}", gw.base)).await;
        let (raw, _) = {
            let r = http
                .get(format!("{}{path}", gw.base))
                .header(auth::API_KEY_HEADER, TOKEN)
                .send()
                .await
                .expect("request");
            (r.bytes().await.expect("body").len(), ())
        };
        println!(
            "   {path:<20} {bytes:>7} B transferred ({raw} B uncompressed{})",
            if gz { ", gzip" } else { ", NOT compressed" }
        );
        total += bytes;
    }
    println!(
        "   total                {total:>7} B = {:.1} KB (target < 30 KB): {}",
        total as f64 / 1024.0,
        if total < 30 * 1024 { "ok" } else { "OVER" }
    );
    drop(gw);
    for s in sims {
        s.shutdown().await;
    }
}

/// 500 finished jobs spread over the printers, written before the gateway starts.
fn seed_history(dir: &Path, printers: usize) {
    let path = dir.join(printgate::DATABASE_FILE);
    let store = Store::open(&path).expect("database");
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    for i in 0..500 {
        store
            .create_job(
                &NewJob {
                    idempotency_key: format!("bench-{i}"),
                    target: Target::Printer(format!("printer {}", i % printers + 1)),
                    model_code: Model::P1S.model_code().to_string(),
                    file_sha256: format!("{i:064x}"),
                    plate: 1,
                    name: format!("history job {i}"),
                    deadline: None,
                    created_by: "bench".into(),
                },
                now - 1000 * (500 - i as u64),
            )
            .expect("job");
    }
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("database");
    conn.execute(
        "UPDATE jobs SET state = 'finished', assigned_printer = target_printer,
         published_at_ms = updated_at_ms",
        [],
    )
    .expect("mark the jobs finished");
}

async fn server_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let printers = (0..20)
        .map(|i| PrinterConfig {
            name: format!("printer {}", i + 1),
            model: Model::P1S,
            serial: format!("01P00A{:09}", 100 + i),
            host: "127.0.0.1".into(),
            access_code: "12345678".into(),
            tls: TlsMode::Pin,
            mqtt_port: free_port(),
            ftps_port: free_port(),
            ..PrinterConfig::default()
        })
        .collect();
    let (config, port) = base_config(dir.path(), printers);
    // The schema and the printers' rows exist once the store has been opened with the config.
    let store = Store::open(&dir.path().join(printgate::DATABASE_FILE)).expect("database");
    store.sync_printers(&config.printers).expect("printers");
    drop(store);
    seed_history(dir.path(), 20);
    let gw = spawn_gateway(dir.path(), &config, port).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    println!(
        "\n2. server time, 20 printers (unreachable), 500 finished jobs; 2000 sequential requests, keep-alive, gzip:"
    );
    for path in ["/", "/api/v1/printers"] {
        let url = format!("{}{path}", gw.base);
        let mut times = Vec::with_capacity(2000);
        let mut cpu0 = 0;
        for i in 0..2200 {
            if i == 200 {
                cpu0 = proc_stats(gw.pid).0;
            }
            let t = Instant::now();
            let resp = http
                .get(&url)
                .header(auth::API_KEY_HEADER, TOKEN)
                .header(reqwest::header::ACCEPT_ENCODING, "gzip")
                .send()
                .await
                .expect("request");
            assert!(resp.status().is_success());
            resp.bytes().await.expect("body");
            if i >= 200 {
                times.push(t.elapsed());
            }
        }
        let cpu_ms = (proc_stats(gw.pid).0 - cpu0) as f64 * 10.0 / times.len() as f64;
        times.sort();
        let p99 = percentile(&times, 0.99);
        println!(
            "   {path:<18} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms (target p99 < 5 ms): {}; gateway CPU {cpu_ms:.3} ms/request",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            if p99 < Duration::from_millis(5) {
                "ok"
            } else {
                "OVER"
            }
        );
    }
    drop(gw);
}

async fn sse_clients() {
    let secs: u64 = std::env::var("PRINTGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("temp dir");
    let sims = start_sims(10, Duration::from_secs(1)).await;
    let printers = sims
        .iter()
        .enumerate()
        .map(|(i, s)| sim_printer(i, s))
        .collect();
    let (config, port) = base_config(dir.path(), printers);
    let gw = spawn_gateway(dir.path(), &config, port).await;
    let http = reqwest::Client::new();
    wait_online(&http, &gw.base, 10).await;
    start_prints(&http, &gw.base, 10).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "\n3. SSE fan-out: 10 simulated printers reporting at 1 Hz while heating/printing; gateway process {}; {secs} s windows:",
        gw.pid
    );

    let measure = |label: &'static str, pid: u32| async move {
        let (c0, _, _) = proc_stats(pid);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (c1, rss, hwm) = proc_stats(pid);
        let cpu = (c1 - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
        println!(
            "   {label:<22} CPU {cpu:>5.1} % of one core   RSS {:>6.1} MiB (peak {:.1} MiB)",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    };
    measure("no SSE clients", gw.pid).await;

    let messages = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = format!("{}/live", gw.base);
        let http = http.clone();
        let (messages, bytes) = (messages.clone(), bytes.clone());
        clients.spawn(async move {
            let Ok(mut resp) = http
                .get(url)
                .header(auth::API_KEY_HEADER, TOKEN)
                .send()
                .await
            else {
                return;
            };
            while let Ok(Some(chunk)) = resp.chunk().await {
                let n = chunk.windows(7).filter(|w| w == b"event: ").count();
                messages.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                bytes.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m0 = messages.load(std::sync::atomic::Ordering::Relaxed);
    let b0 = bytes.load(std::sync::atomic::Ordering::Relaxed);
    measure("50 SSE clients", gw.pid).await;
    let m = messages.load(std::sync::atomic::Ordering::Relaxed) - m0;
    let b = bytes.load(std::sync::atomic::Ordering::Relaxed) - b0;
    println!(
        "   SSE traffic during the window: {:.1} messages/s and {:.1} KB/s per client",
        m as f64 / 50.0 / secs as f64,
        b as f64 / 50.0 / secs as f64 / 1024.0
    );
    clients.abort_all();
    drop(gw);
    for s in sims {
        s.shutdown().await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("web benchmarks: run with `cargo bench --bench web`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let parts = std::env::var("PRINTGATE_BENCH_PARTS").unwrap_or_else(|_| "123".into());
    rt.block_on(async {
        if parts.contains('1') {
            dashboard_weight().await;
        }
        if parts.contains('2') {
            server_time().await;
        }
        if parts.contains('3') {
            sse_clients().await;
        }
    });
}
