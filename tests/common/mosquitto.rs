//! A real Mosquitto broker on a free loopback port, for tests of external-broker mode (the
//! `mosquitto` package is installed by `.ci/run`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The running broker; killed on drop.
pub struct Mosquitto(Child);
impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn mosquitto_binary() -> Option<String> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .map(String::from)
}

pub async fn start_mosquitto(dir: &Path) -> Option<(Mosquitto, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Some((start_mosquitto_on(dir, port, None).await, port))
}

/// Mosquitto that takes only `user` with `password`, and applies `acl` (the lines of a
/// Mosquitto ACL file, for that user) when given.
pub async fn start_mosquitto_login(
    dir: &Path,
    user: &str,
    password: &str,
    acl: Option<&str>,
) -> Option<(Mosquitto, u16)> {
    let passwords = dir.join("passwords");
    let made = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwords)
        .args([user, password])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_passwd runs (package mosquitto)");
    assert!(made.success(), "mosquitto_passwd made the password file");
    let mut settings = format!(
        "allow_anonymous false\npassword_file {}\n",
        passwords.display()
    );
    if let Some(acl) = acl {
        let file = dir.join("acl");
        std::fs::write(&file, format!("user {user}\n{acl}\n")).unwrap();
        settings += &format!("acl_file {}\n", file.display());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Some((start_mosquitto_with(dir, port, None, &settings).await, port))
}

/// A broker on `port`; with `persistence` (a directory), retained messages are saved there on
/// a graceful stop and loaded at start.
pub async fn start_mosquitto_on(dir: &Path, port: u16, persistence: Option<&Path>) -> Mosquitto {
    start_mosquitto_with(dir, port, persistence, "allow_anonymous true\n").await
}

/// A broker on `port` with these extra settings (authentication, ACL).
async fn start_mosquitto_with(
    dir: &Path,
    port: u16,
    persistence: Option<&Path>,
    settings: &str,
) -> Mosquitto {
    let Some(bin) = mosquitto_binary() else {
        panic!("mosquitto is not installed: run `bash .ci/run` or `apt-get install mosquitto`");
    };
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    let persist = match persistence {
        Some(p) => format!("persistence true\npersistence_location {}/\n", p.display()),
        None => "persistence false\n".to_string(),
    };
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\n{settings}{persist}"),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let m = Mosquitto(child);
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("mosquitto listens within 10 s");
    m
}

impl Mosquitto {
    /// SIGTERM and wait: the broker saves its persistence file before it exits.
    pub fn stop_gracefully(mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signals only the broker this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.0.wait();
    }
}
