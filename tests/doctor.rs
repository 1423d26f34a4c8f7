//! `printgate doctor` reports each failure it claims to detect, each with a fix: a bad config,
//! a busy web port, an unreachable printer, a wrong access code, Developer Mode off and a changed
//! certificate (against the simulator), a skewed or unsynchronised clock, a newer database, no
//! GPIO, a full disk — and it leaves a P1/A1 alone while a gateway holds its only session.

use printgate::config::Model;
use printgate::doctor::{self, ClockSync, DoctorOptions, Report, Status, Subject};
use printgate::sim::printer::{SimConfig, SimPrinter};
use printgate::store::{EventKind, Store};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

fn opts() -> DoctorOptions {
    DoctorOptions {
        clock_sync: Some(ClockSync::Synchronised),
        printer_timeout: Duration::from_secs(10),
        disk_fail_below: 0,
        disk_warn_below: 0,
        ..DoctorOptions::default()
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn printer_toml(name: &str, sim: &SimPrinter, access_code: &str) -> String {
    format!(
        "[[printers]]\nname = {name:?}\nmodel = {:?}\nserial = {:?}\nhost = \"127.0.0.1\"\naccess_code = {access_code:?}\nmqtt_port = {}\nftps_port = {}\n",
        sim.model().config_name(),
        sim.serial(),
        sim.mqtt_port(),
        sim.ftps_port()
    )
}

/// Write printgate.toml with `data_dir`, a free web port and `extra`; returns its path.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    write_config_on(dir, &format!("127.0.0.1:{}", free_port()), extra)
}

fn write_config_on(dir: &Path, listen: &str, extra: &str) -> PathBuf {
    let path = dir.join("printgate.toml");
    let data = dir.join("data");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[web]\nlisten = {listen:?}\n[broker]\nmode = \"off\"\n{extra}",
            data.display().to_string()
        ),
    )
    .unwrap();
    path
}

fn finding(report: &Report, subject: Subject) -> &doctor::Finding {
    report
        .get(&subject)
        .unwrap_or_else(|| panic!("no finding for {subject:?} in:\n{}", report.render()))
}

fn assert_status(report: &Report, subject: Subject, status: Status, needle: &str) {
    let f = finding(report, subject.clone());
    assert_eq!(
        f.status,
        status,
        "{subject:?}: {}\n{}",
        f.detail,
        report.render()
    );
    assert!(
        f.detail.contains(needle) || f.fix.as_deref().is_some_and(|x| x.contains(needle)),
        "{subject:?}: expected {needle:?} in {:?} / {:?}",
        f.detail,
        f.fix
    );
    if status == Status::Fail {
        assert!(f.fix.is_some(), "every failure says how to fix it: {f:?}");
    }
}

#[tokio::test]
async fn bad_config_is_reported_with_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[[printers]]\nname = \"X\"\nmodel = \"X9\"\n");
    let report = doctor::run(&cfg, &opts()).await;
    assert_status(&report, Subject::Config, Status::Fail, "printers[0].model");
    assert_eq!(report.failures(), 1);
    assert!(report.render().contains("FAIL  configuration"));
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test]
async fn healthy_install_passes() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimPrinter::start(SimConfig::new(Model::X1C)).await.unwrap();
    let cfg = write_config(
        dir.path(),
        &printer_toml("Workshop", &sim, &sim.access_code()),
    );
    let report = doctor::run(&cfg, &opts()).await;
    let text = report.render();
    eprintln!("{text}");
    assert_status(&report, Subject::Config, Status::Ok, "1 printer");
    assert_status(&report, Subject::DataDir, Status::Ok, "writable");
    assert_status(&report, Subject::WebPort, Status::Ok, "free");
    assert_status(&report, Subject::Clock, Status::Ok, "synchronised");
    let name = || "Workshop".to_string();
    assert_status(
        &report,
        Subject::PrinterReachable(name()),
        Status::Ok,
        "answers",
    );
    assert_status(
        &report,
        Subject::PrinterAccessCode(name()),
        Status::Ok,
        "accepted",
    );
    assert_status(
        &report,
        Subject::PrinterReports(name()),
        Status::Ok,
        "report",
    );
    assert_status(
        &report,
        Subject::PrinterDeveloperMode(name()),
        Status::Ok,
        "on",
    );
    // Never connected by the gateway: not pinned yet, shown with the fingerprint it will pin.
    assert_status(
        &report,
        Subject::PrinterCertificate(name()),
        Status::Warn,
        &sim.fingerprint(),
    );
    assert_eq!(report.failures(), 0, "{text}");
    sim.shutdown().await;
}

#[tokio::test]
async fn busy_port_unreachable_printer_and_wrong_access_code() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = busy.local_addr().unwrap().to_string();
    let sim = SimPrinter::start(SimConfig::new(Model::P1S)).await.unwrap();
    let dead_port = free_port();
    let extra = format!(
        "{}[[printers]]\nname = \"Gone\"\nmodel = \"P1S\"\nserial = \"01P00A000000001\"\nhost = \"127.0.0.1\"\naccess_code = \"12345678\"\nmqtt_port = {dead_port}\n",
        printer_toml("Wrong code", &sim, "00000000"),
    );
    let cfg = write_config_on(dir.path(), &listen, &extra);
    let report = doctor::run(&cfg, &opts()).await;
    assert_status(&report, Subject::WebPort, Status::Fail, "already in use");
    assert_status(
        &report,
        Subject::PrinterReachable("Gone".into()),
        Status::Fail,
        "cannot connect",
    );
    assert_status(
        &report,
        Subject::PrinterReachable("Wrong code".into()),
        Status::Ok,
        "answers",
    );
    assert_status(
        &report,
        Subject::PrinterAccessCode("Wrong code".into()),
        Status::Fail,
        "refused the access code",
    );
    eprintln!("{}", report.render());
    assert_eq!(report.failures(), 3, "{}", report.render());
    drop(busy);
    sim.shutdown().await;
}

#[tokio::test]
async fn busy_broker_port() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = dir.path().join("printgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[web]\nlisten = \"127.0.0.1:{}\"\n[broker]\nlisten = \"{}\"\ntls_listen = \"127.0.0.1:{}\"\n",
            dir.path().join("data").display().to_string(),
            free_port(),
            busy.local_addr().unwrap(),
            free_port()
        ),
    )
    .unwrap();
    let report = doctor::run(&cfg, &opts()).await;
    assert_status(&report, Subject::BrokerPorts, Status::Fail, "cannot listen");
    assert_eq!(report.failures(), 1, "{}", report.render());
}

#[tokio::test]
async fn developer_mode_off_and_changed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut off = SimConfig::new(Model::X1C);
    off.developer_mode = false;
    let off = SimPrinter::start(off).await.unwrap();
    let repinned = SimPrinter::start(SimConfig::new(Model::X1C)).await.unwrap();
    let extra = format!(
        "{}{}",
        printer_toml("No dev mode", &off, &off.access_code()),
        printer_toml("Replaced", &repinned, &repinned.access_code())
    );
    let cfg = write_config(dir.path(), &extra);
    // The gateway pinned both certificates earlier; one printer was reset since.
    {
        let config = printgate::config::Config::load(&cfg).unwrap();
        let store = Store::open(&config.data_dir.join(printgate::DATABASE_FILE)).unwrap();
        store.sync_printers(&config.printers).unwrap();
        store
            .store_fingerprint(off.serial(), &off.fingerprint())
            .unwrap();
        store
            .store_fingerprint(repinned.serial(), &repinned.fingerprint())
            .unwrap();
    }
    repinned.regenerate_certificate().unwrap();

    let report = doctor::run(&cfg, &opts()).await;
    assert_status(
        &report,
        Subject::PrinterDeveloperMode("No dev mode".into()),
        Status::Fail,
        "Developer Mode",
    );
    assert_status(
        &report,
        Subject::PrinterCertificate("No dev mode".into()),
        Status::Ok,
        "pinned",
    );
    assert_status(
        &report,
        Subject::PrinterCertificate("Replaced".into()),
        Status::Fail,
        "certificate changed",
    );
    assert_eq!(report.failures(), 2, "{}", report.render());
    off.shutdown().await;
    repinned.shutdown().await;
}

#[tokio::test]
async fn clock_skew_unsynchronised_clock_and_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let config = printgate::config::Config::load(&cfg).unwrap();
    let now = SystemTime::now();
    {
        // The gateway recorded something "now"; then the clock is set back one hour.
        let store = Store::open(&config.data_dir.join(printgate::DATABASE_FILE)).unwrap();
        let p = printgate::config::PrinterConfig {
            name: "P".into(),
            model: Model::P1S,
            serial: "01P00A000000002".into(),
            host: "127.0.0.1".into(),
            access_code: "12345678".into(),
            tls: Default::default(),
            mqtt_port: 8883,
            ftps_port: 990,
            ..printgate::config::PrinterConfig::default()
        };
        store.sync_printers(&[p]).unwrap();
        let at = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        store
            .record_event("P", EventKind::LINK_UP, &serde_json::json!({}), at)
            .unwrap();
    }
    let skewed = DoctorOptions {
        now: now - Duration::from_secs(3600),
        ..opts()
    };
    let report = doctor::run(&cfg, &skewed).await;
    assert_status(&report, Subject::Clock, Status::Fail, "60 min behind");

    let unsynced = DoctorOptions {
        clock_sync: Some(ClockSync::Unsynchronised),
        ..opts()
    };
    let report = doctor::run(&cfg, &unsynced).await;
    assert_status(&report, Subject::Clock, Status::Fail, "not synchronised");

    let never_set = DoctorOptions {
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
        ..opts()
    };
    let report = doctor::run(&cfg, &never_set).await;
    assert_status(&report, Subject::Clock, Status::Fail, "1970-01-02");

    let full = DoctorOptions {
        disk_fail_below: u64::MAX,
        ..opts()
    };
    let report = doctor::run(&cfg, &full).await;
    assert_status(&report, Subject::Disk, Status::Fail, "MiB free");

    // The kernel's answer on this machine is one of the three; it must not panic.
    let _ = doctor::kernel_clock_sync();
}

#[tokio::test]
async fn newer_database_and_missing_gpio() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[safety]\ngpio_backend = \"rppal\"\nrelay_fail_safe = \"power_off_when_gateway_down\"\n[safety.smoke]\npin = 17\n",
    );
    let config = printgate::config::Config::load(&cfg).unwrap();
    let db = config.data_dir.join(printgate::DATABASE_FILE);
    drop(Store::open(&db).unwrap());
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", Store::schema_version() + 1)
            .unwrap();
    }
    let report = doctor::run(&cfg, &opts()).await;
    assert_status(&report, Subject::Database, Status::Fail, "newer printgate");
    if !printgate::safety::gpio::has_gpio_device() {
        assert_status(&report, Subject::Gpio, Status::Fail, "no GPIO device");
    }

    let simulated = write_config(
        dir.path(),
        "[safety]\ngpio_backend = \"simulated\"\n[safety.smoke]\npin = 17\n",
    );
    let report = doctor::run(&simulated, &opts()).await;
    assert_status(&report, Subject::Gpio, Status::Warn, "SIMULATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_gateway_keeps_its_p1_session() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimPrinter::start(SimConfig::new(Model::P1S)).await.unwrap();
    let cfg = write_config(
        dir.path(),
        &printer_toml("Garage", &sim, &sim.access_code()),
    );
    let config = printgate::config::Config::load(&cfg).unwrap();
    let gateway = printgate::start(config, CancellationToken::new())
        .await
        .unwrap();
    let report = doctor::run(&cfg, &opts()).await;
    assert_status(&report, Subject::Gateway, Status::Ok, "is running");
    assert_status(&report, Subject::WebPort, Status::Ok, "running gateway");
    assert_status(
        &report,
        Subject::PrinterReachable("Garage".into()),
        Status::Skip,
        "only MQTT session",
    );
    assert!(
        report
            .get(&Subject::PrinterAccessCode("Garage".into()))
            .is_none()
    );
    gateway.shutdown().await;
    sim.shutdown().await;
}
