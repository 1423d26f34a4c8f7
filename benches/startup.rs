//! Cold start to ready: the real `printgate serve` (release build) with 10 printers configured
//! (simulated printers on loopback), timed from process spawn until it sends sd_notify
//! `READY=1` (web server listening). "fresh" starts on an empty data directory (database created
//! and migrated), "warm" on the database of the previous run. Target: < 300 ms.
//!
//!     cargo bench --bench startup
//!
//! `PRINTGATE_BIN=/path/to/printgate` measures another binary (e.g. the one in a .deb); when
//! several checkouts share one target directory, point it at this checkout's build.

use printgate::config::Model;
use printgate::sim::printer::{SimConfig, SimPrinter};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PRINTERS: usize = 10;
const RUNS: usize = 15;

fn start_once(cfg: &Path, sock_dir: &Path, run: usize) -> Duration {
    let sock_path = sock_dir.join(format!("notify-{run}.sock"));
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let t0 = Instant::now();
    let bin =
        std::env::var_os("PRINTGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_printgate").into());
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn printgate");
    let mut buf = [0u8; 512];
    let elapsed = loop {
        let n = sock.recv(&mut buf).expect("READY within 30 s");
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            break t0.elapsed();
        }
    };
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_file(&sock_path);
    elapsed
}

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms ({} runs, {PRINTERS} printers)",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let models = [Model::P1S, Model::X1C, Model::A1Mini, Model::P1P, Model::A1];
    let sims: Vec<SimPrinter> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..PRINTERS {
            v.push(
                SimPrinter::start(SimConfig::new(models[i % models.len()]))
                    .await
                    .expect("sim"),
            );
        }
        v
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut printers = String::new();
    for (i, s) in sims.iter().enumerate() {
        printers.push_str(&format!(
            "[[printers]]\nname = \"Printer {i}\"\nmodel = {:?}\nserial = {:?}\nhost = \"127.0.0.1\"\naccess_code = {:?}\nmqtt_port = {}\nftps_port = {}\n",
            s.model().config_name(),
            s.serial(),
            s.access_code(),
            s.mqtt_port(),
            s.ftps_port()
        ));
    }
    let (mut fresh, mut warm) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let data = dir.path().join(format!("data-{run}"));
        let cfg = dir.path().join(format!("printgate-{run}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\n[web]\nlisten = \"127.0.0.1:0\"\n[broker]\nmode = \"off\"\n{printers}",
                data.display().to_string()
            ),
        )
        .expect("config");
        fresh.push(start_once(&cfg, dir.path(), run * 2));
        warm.push(start_once(&cfg, dir.path(), run * 2 + 1));
    }
    summary("cold start to READY, fresh data directory", fresh);
    summary("cold start to READY, existing database", warm);
    rt.block_on(async {
        for s in sims {
            s.shutdown().await;
        }
    });
}
