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
    let Some(bin) = mosquitto_binary() else {
        panic!("mosquitto is not installed: run `bash .ci/run` or `apt-get install mosquitto`");
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
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
    Some((m, port))
}
