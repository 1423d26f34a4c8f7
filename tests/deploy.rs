//! Installing printgate as a service: the systemd unit verifies and is hardened, the maintainer
//! scripts pass shellcheck, the shipped configurations are valid, the `.deb` builds with the
//! binary, unit and config, and installs, upgrades (keeping an edited config) and is removed in
//! a throwaway root (an overlay of this machine's `/` in a private mount namespace). The real
//! binary speaks sd_notify (READY, WATCHDOG, STOPPING), holds the instance lock while it runs and
//! keeps access codes out of its logs.
//!
//! Tools: `systemd-analyze` (apt `systemd`), `shellcheck`, `dpkg-deb` (apt `dpkg`), `unshare`
//! (apt `util-linux`), `cargo deb` (`cargo install cargo-deb --locked`). A missing one fails
//! its test with the install command.

use printgate::config::Model;
use printgate::sim::printer::{SimConfig, SimPrinter};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_printgate");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `name` on PATH, or fail with how to install it.
fn require_tool(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("`{name}` is missing; this test needs it: {install}"))
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("deploy/printgate.service")).unwrap()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let sa = require_tool("systemd-analyze", "apt-get install -y systemd");
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = dir.path().join("printgate.service");
    std::fs::write(&unit, unit_text().replace("/usr/bin/printgate", BIN)).unwrap();
    let out = run(Command::new(sa).arg("verify").arg(&unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
}

#[test]
fn unit_is_notify_watchdog_and_hardened() {
    let text = unit_text();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for required in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "User=printgate",
        "SupplementaryGroups=gpio",
        "StateDirectory=printgate",
        "ConfigurationDirectory=printgate",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "ExecStart=/usr/bin/printgate serve --config /etc/printgate/printgate.toml",
    ] {
        assert!(lines.contains(&required), "the unit lacks `{required}`");
    }
}

#[test]
fn maintainer_scripts_pass_shellcheck() {
    let sc = require_tool("shellcheck", "apt-get install -y shellcheck");
    let dir = repo().join("deploy/debian");
    let scripts = ["postinst", "prerm", "postrm"].map(|s| dir.join(s));
    for s in &scripts {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(s).unwrap().permissions());
        assert!(mode & 0o111 != 0, "{} must be executable", s.display());
    }
    run(Command::new(sc)
        .args(["--shell=sh", "--severity=style"])
        .args(&scripts));
}

#[test]
fn shipped_configurations_are_valid() {
    for name in ["printgate.toml", "printgate.example.toml"] {
        let text = std::fs::read_to_string(repo().join("deploy").join(name)).unwrap();
        let config = printgate::config::Config::parse_toml(
            &text.replace(
                "/var/lib/printgate",
                &std::env::temp_dir().join("pg-cfg").display().to_string(),
            ),
            name,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(config.data_dir.file_name().unwrap(), "pg-cfg");
    }
    // The commented-out printer and safety sections of the installed config are valid when a
    // user removes the '#'.
    let text = std::fs::read_to_string(repo().join("deploy/printgate.toml")).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = printgate::config::Config::parse_toml(
        &uncommented.replace(
            "/var/lib/printgate",
            &std::env::temp_dir().join("pg-cfg").display().to_string(),
        ),
        "uncommented printgate.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.printers.len(), 1);
    assert!(config.safety.smoke.is_some());
    assert_eq!(config.safety.relays.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// The .deb
// ---------------------------------------------------------------------------------------------

/// Build a .deb of the binary under test (dev profile, not stripped: fast) with `version`.
fn build_deb(out_dir: &Path, version: &str) -> PathBuf {
    require_tool(
        "cargo-deb",
        "cargo install cargo-deb --locked (about a minute)",
    );
    let bin = PathBuf::from(BIN);
    let profile_dir = bin.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
        "debug" => "dev",
        other => other,
    };
    let deb = out_dir.join(format!("printgate_{version}.deb"));
    run(Command::new(env!("CARGO"))
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", target_dir)
        .args([
            "deb",
            "--no-build",
            "--no-strip",
            "--fast",
            "--profile",
            profile,
        ])
        .args(["--deb-version", version, "--output"])
        .arg(&deb));
    deb
}

#[test]
fn deb_builds_lists_its_files_and_installs_upgrades_and_purges_in_a_throwaway_root() {
    let dpkg_deb = require_tool("dpkg-deb", "apt-get install -y dpkg");
    let work = tempfile::tempdir().unwrap();
    let v1 = build_deb(work.path(), "0.1.0-1");
    let v2 = build_deb(work.path(), "0.1.0-2");

    let listing =
        String::from_utf8(run(Command::new(&dpkg_deb).arg("-c").arg(&v1)).stdout).unwrap();
    for path in [
        "./usr/bin/printgate",
        "./usr/lib/systemd/system/printgate.service",
        "./usr/lib/udev/rules.d/60-printgate-gpio.rules",
        "./etc/printgate/printgate.toml",
        "./usr/share/doc/printgate/printgate.example.toml",
        "./usr/share/doc/printgate/WIRING.md",
        "./usr/share/doc/printgate/README.md",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} is not in the .deb:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-r-----") && l.ends_with("./etc/printgate/printgate.toml")),
        "the config (access codes) must not be world-readable:\n{listing}"
    );
    let info = String::from_utf8(run(Command::new(&dpkg_deb).arg("-I").arg(&v1)).stdout).unwrap();
    for needle in [
        "Package: printgate",
        "Depends:",
        "passwd",
        "postinst",
        "prerm",
        "postrm",
        "conffiles",
    ] {
        assert!(
            info.contains(needle),
            "{needle} missing in dpkg-deb -I:\n{info}"
        );
    }
    let conffiles = String::from_utf8(
        run(Command::new(&dpkg_deb)
            .arg("--info")
            .arg(&v1)
            .arg("conffiles"))
        .stdout,
    )
    .unwrap();
    assert_eq!(conffiles.trim(), "/etc/printgate/printgate.toml");

    install_in_throwaway_root(work.path(), &v1, &v2);
}

/// The install / upgrade / remove / purge script run inside the throwaway root.
const ROOT_SCRIPT: &str = r##"
set -eu
fail() { echo "CHECK FAILED: $*"; exit 1; }
dpkg -i /tmp/v1.deb </dev/null
test -x /usr/bin/printgate || fail "binary"
test -f /usr/lib/systemd/system/printgate.service || fail "unit"
test "$(stat -c '%U:%G %a' /etc/printgate/printgate.toml)" = "root:printgate 640" || fail "config owner/mode: $(stat -c '%U:%G %a' /etc/printgate/printgate.toml)"
getent passwd printgate | grep -q ':/var/lib/printgate:/usr/sbin/nologin$' || fail "user: $(getent passwd printgate)"
id -nG printgate | tr ' ' '\n' | grep -qx gpio || fail "gpio group: $(id -nG printgate)"
test "$(stat -c '%U:%G %a' /var/lib/printgate)" = "printgate:printgate 750" || fail "state dir"
test -L /etc/systemd/system/multi-user.target.wants/printgate.service || fail "service not enabled"
printgate check-config --config /etc/printgate/printgate.toml || fail "installed config invalid"
systemd-analyze verify /usr/lib/systemd/system/printgate.service || fail "installed unit"
echo "# edited by the user" >> /etc/printgate/printgate.toml
chmod 600 /etc/printgate/printgate.toml
dpkg -i /tmp/v2.deb </dev/null
test "$(dpkg-query -W -f '${Version}' printgate)" = "0.1.0-2" || fail "upgrade"
grep -q '^# edited by the user$' /etc/printgate/printgate.toml || fail "config edit lost on upgrade"
test "$(stat -c '%U:%G %a' /etc/printgate/printgate.toml)" = "root:printgate 640" || fail "config mode after upgrade"
dpkg -r printgate </dev/null
test ! -e /usr/bin/printgate || fail "binary left after remove"
grep -q '^# edited by the user$' /etc/printgate/printgate.toml || fail "config removed by remove (only purge may)"
test ! -L /etc/systemd/system/multi-user.target.wants/printgate.service || fail "still enabled after remove"
dpkg -P printgate </dev/null
test ! -e /etc/printgate/printgate.toml || fail "config left after purge"
test -d /var/lib/printgate || fail "data directory must survive purge"
getent passwd printgate >/dev/null || fail "user must survive purge"
echo ALL-CHECKS-PASSED
"##;

fn install_in_throwaway_root(work: &Path, v1: &Path, v2: &Path) {
    let unshare = require_tool("unshare", "apt-get install -y util-linux");
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "installing a .deb into a throwaway root needs root (a private mount namespace with an overlay of /); run the tests as root, e.g. in the CI container"
    );
    let root = work.join("root");
    let (up, ovl_work, merged) = (root.join("up"), root.join("work"), root.join("merged"));
    for d in [&up, &ovl_work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::create_dir_all(up.join("tmp")).unwrap();
    std::fs::copy(v1, up.join("tmp/v1.deb")).unwrap();
    std::fs::copy(v2, up.join("tmp/v2.deb")).unwrap();
    let script = format!(
        "set -eu\nmount -t overlay overlay -o lowerdir=/,upperdir={},workdir={} {m}\nmount -t proc proc {m}/proc\nmount --rbind /dev {m}/dev\nexec chroot {m} /bin/sh -c {script}\n",
        up.display(),
        ovl_work.display(),
        m = merged.display(),
        script = shell_quote(ROOT_SCRIPT),
    );
    let out = Command::new(unshare)
        .args([
            "--mount",
            "--fork",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
        ])
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL-CHECKS-PASSED"),
        "install in the throwaway root failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------------------------
// sd_notify, instance lock, logs
// ---------------------------------------------------------------------------------------------

/// Receive one notification (bounded wait).
fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("no sd_notify message within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_notifies_ready_pings_the_watchdog_and_keeps_secrets_out_of_logs() {
    let dir = tempfile::tempdir().unwrap();
    // A printer whose access code the gateway gets wrong, so the link logs a refusal.
    let sim = SimPrinter::start(SimConfig::new(Model::P1S)).await.unwrap();
    let wrong_code = "Wr0ngC0d";
    let data = dir.path().join("data");
    let cfg = dir.path().join("printgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[web]\nlisten = \"127.0.0.1:0\"\n[broker]\nmode = \"off\"\n[[printers]]\nname = \"Garage\"\nmodel = \"P1S\"\nserial = {:?}\nhost = \"127.0.0.1\"\naccess_code = {wrong_code:?}\nmqtt_port = {}\nftps_port = {}\n",
            data.display().to_string(),
            sim.serial(),
            sim.mqtt_port(),
            sim.ftps_port()
        ),
    )
    .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain stdout and stderr from the start: a full pipe would block the gateway's logging.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
                .take(100_000)
            {
                let _ = tx.send(line);
            }
        })
    })
    .collect();
    drop(tx);
    let ready = recv(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // The instance lock names the process.
    assert_eq!(
        printgate::notify::running_gateway(&data).as_deref(),
        Some(child.id().to_string().as_str())
    );
    // Watchdog pings every WATCHDOG_USEC / 2.
    for _ in 0..3 {
        assert_eq!(recv(&sock).trim(), "WATCHDOG=1");
    }
    // Wait for the refusal in the log (stdout or stderr), then stop with SIGTERM.
    let mut log = String::new();
    let mut refused = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("refused the access code") {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the gateway should log the refused access code:\n{log}"
    );
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    // Pings may still arrive before STOPPING; every loop is bounded.
    let mut stopping = false;
    for _ in 0..50 {
        if recv(&sock).lines().any(|l| l == "STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on shutdown");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    for r in readers {
        r.join().unwrap();
    }
    log.extend(rx.try_iter().map(|l| l + "\n"));
    assert!(
        !log.contains(wrong_code),
        "the access code appeared in the log:\n{log}"
    );
    assert!(!log.contains(&sim.access_code()));
    assert_eq!(
        printgate::notify::running_gateway(&data),
        None,
        "lock released"
    );
    sim.shutdown().await;
}

#[test]
fn second_gateway_on_one_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = printgate::notify::take_instance_lock(dir.path()).unwrap();
    let err = printgate::notify::take_instance_lock(dir.path()).unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
    drop(first);
    assert!(printgate::notify::take_instance_lock(dir.path()).is_ok());
}

#[test]
fn journald_priorities() {
    use printgate::notify::syslog_prefix;
    use tracing::Level;
    assert_eq!(syslog_prefix(Level::ERROR), "<3>");
    assert_eq!(syslog_prefix(Level::WARN), "<4>");
    assert_eq!(syslog_prefix(Level::INFO), "<6>");
    assert_eq!(syslog_prefix(Level::DEBUG), "<7>");
}
