//! One MQTT packet must not end the gateway: an MQTT 5 PUBLISH with properties (user property,
//! content type, response topic, correlation data, message expiry) delivered to an MQTT 3.1.1
//! subscriber once panicked in the vendored rumqttd's v4 writer, and release builds abort on
//! panic, so any user allowed to publish could stop the whole gateway (smoke input and relays
//! included). Reproduced with the real Mosquitto command-line clients and with paho-mqtt, against
//! the real gateway; afterwards the gateway must still serve the web, hand the message to the
//! 3.1.1 subscriber (without the properties, which 3.1.1 cannot carry) and accept new clients.
//!
//! The audit of rumqttd's read paths found two more packets that panicked it, both tested here:
//! a CONNACK or UNSUBACK with a body sent by a client over MQTT 5, and a persistent session
//! leaving a shared subscription with unacknowledged messages (which panicked the router
//! thread, so every client lost the broker).
//!
//! Test builds unwind instead of aborting, so a panic would only end one rumqttd task here; a
//! panic hook records every panic raised inside rumqttd and the tests fail on any.

mod common;

use common::{TestGateway, require_paho};
use printgate::broker::config::Access;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const USER: &str = "U";
const PASSWORD: &str = "P";

/// Panics raised in rumqttd's code (location and message), recorded by [`watch_panics`].
static RUMQTTD_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(loc) = info.location()
                && loc.file().contains("rumqttd")
                && let Ok(mut p) = RUMQTTD_PANICS.lock()
            {
                p.push(format!("{loc}: {info}"));
            }
            default(info);
        }));
    });
}

fn assert_no_rumqttd_panic() {
    let panics = RUMQTTD_PANICS.lock().map(|p| p.clone()).unwrap_or_default();
    assert!(
        panics.is_empty(),
        "rumqttd panicked (a release build would have aborted the gateway): {panics:?}"
    );
}

async fn gateway() -> (TestGateway, SocketAddr) {
    watch_panics();
    TestGateway::start_broker(USER, PASSWORD, Access::Control).await
}

fn mosquitto_client(bin: &str) -> String {
    let path = format!("/usr/bin/{bin}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{bin} is not installed: run `bash .ci/run` or `apt-get install mosquitto-clients`"
    );
    path
}

/// The gateway is alive: the web answers and the broker logs a new client in, which then
/// receives a message published after the incident.
async fn assert_alive(tg: &TestGateway, mqtt: SocketAddr) {
    let health = tokio::time::timeout(Duration::from_secs(5), reqwest::get(tg.url("/healthz")))
        .await
        .expect("web answers within 5 s")
        .expect("web answers");
    assert_eq!(health.status(), 200);

    let mut o = MqttOptions::new("after-incident", mqtt.ip().to_string(), mqtt.port());
    o.set_credentials(USER, PASSWORD);
    let (client, mut el) = AsyncClient::new(o, 8);
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    assert_eq!(a.code, ConnectReturnCode::Success);
                    client
                        .subscribe("alive/check", QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    client
                        .publish("alive/check", QoS::AtLeastOnce, false, "yes")
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == "alive/check" => {
                    return p.payload;
                }
                Ok(_) => {}
                Err(e) => panic!("a new MQTT client after the incident failed: {e}"),
            }
        }
    })
    .await
    .expect("a new client connects, subscribes and receives within 10 s");
    assert_eq!(&got[..], b"yes");
}

/// The reproduction, verbatim apart from host and port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_user_property_to_v311_subscriber() {
    let sub_bin = mosquitto_client("mosquitto_sub");
    let pub_bin = mosquitto_client("mosquitto_pub");
    let (tg, mqtt) = gateway().await;
    let port = mqtt.port().to_string();
    // -d prints the SUBACK, so the publish is sent only once the subscription exists (stdbuf:
    // line by line, not in one block at exit); -C 1 ends the subscriber after one message; -W
    // bounds it.
    let mut sub = tokio::process::Command::new("stdbuf")
        .args(["-oL", &sub_bin])
        .args(["-V", "mqttv311", "-h", "127.0.0.1", "-p", &port])
        .args(["-u", USER, "-P", PASSWORD, "-t", "crash/#", "-v", "-d"])
        .args(["-C", "1", "-W", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub starts");
    let mut lines = BufReader::new(sub.stdout.take().expect("stdout")).lines();
    let mut log = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(l)) = lines.next_line().await {
            let suback = l.contains("SUBACK");
            log.push(l);
            if suback {
                return;
            }
        }
        panic!("mosquitto_sub ended before its SUBACK: {log:?}");
    })
    .await
    .expect("mosquitto_sub subscribed within 10 s");

    let publish = tokio::process::Command::new(&pub_bin)
        .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p", &port])
        .args(["-u", USER, "-P", PASSWORD, "-t", "crash/b", "-m", "x"])
        .args(["-D", "publish", "user-property", "k", "v"])
        .output()
        .await
        .expect("mosquitto_pub runs");
    assert!(
        publish.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&publish.stderr)
    );

    // The 3.1.1 subscriber receives the message (-v prints "topic payload") and ends by itself.
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l == "crash/b x" {
                return true;
            }
            log.push(l);
        }
        false
    })
    .await
    .unwrap_or(false);
    let status = tokio::time::timeout(Duration::from_secs(10), sub.wait()).await;
    assert_no_rumqttd_panic();
    assert!(
        received,
        "the MQTT 3.1.1 subscriber never received crash/b; its output: {log:?}"
    );
    assert!(
        matches!(status, Ok(Ok(s)) if s.success()),
        "mosquitto_sub did not end cleanly after its message: {status:?}"
    );
    assert_alive(&tg, mqtt).await;
    assert_no_rumqttd_panic();
    tg.shutdown().await;
}

/// paho-mqtt publishing MQTT 5 with every publish property, retained and live at QoS 0, 1
/// and 2, to a paho MQTT 3.1.1 subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_properties_to_v311_subscriber() {
    require_paho();
    let (tg, mqtt) = gateway().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/v5_to_v311.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .args([
                script,
                "127.0.0.1",
                &mqtt.port().to_string(),
                USER,
                PASSWORD,
            ])
            .arg("props")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the paho script ends within 60 s")
    .expect("python3 runs");
    assert_no_rumqttd_panic();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paho: exit {:?}: {stdout} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    // Topic, payload and retain flag. (The delivery QoS is not checked: rumqttd delivers at
    // the subscription's QoS, not at the lower of the two as MQTT says; that is the broker
    // conformance work, not this crash.)
    let mut got: Vec<(String, String, bool)> = v["received"]
        .as_array()
        .expect("received")
        .iter()
        .map(|m| {
            (
                m[0].as_str().unwrap_or_default().to_string(),
                m[1].as_str().unwrap_or_default().to_string(),
                m[3].as_bool().unwrap_or(false),
            )
        })
        .collect();
    got.sort();
    let want = |t: &str, r: bool| (format!("props/{t}"), t.to_string(), r);
    assert_eq!(
        got,
        vec![
            want("live0", false),
            want("live1", false),
            want("live2", false),
            want("retained", true),
        ],
        "{v}"
    );
    assert_alive(&tg, mqtt).await;
    assert_no_rumqttd_panic();
    tg.shutdown().await;
}

/// An MQTT string or binary field: two length bytes, then the bytes.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).expect("short").to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A CONNECT of protocol `level` (4 or 5) with user name and password, clean session.
fn connect_packet(level: u8, client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    field(&mut body, b"MQTT");
    body.extend_from_slice(&[level, 0xC2, 0, 30]);
    if level == 5 {
        body.push(0); // no properties
    }
    field(&mut body, client_id.as_bytes());
    field(&mut body, USER.as_bytes());
    field(&mut body, PASSWORD.as_bytes());
    let mut p = vec![0x10, u8::try_from(body.len()).expect("short CONNECT")];
    p.extend_from_slice(&body);
    p
}

/// Packets a broker never expects from a client, each with a body: CONNACK and UNSUBACK.
/// rumqttd's MQTT 5 reader did not know either and hit `unreachable!()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_packets_sent_by_a_client() {
    let (tg, mqtt) = gateway().await;
    for level in [4u8, 5] {
        let mut s = tokio::net::TcpStream::connect(mqtt).await.expect("connect");
        s.write_all(&connect_packet(level, &format!("raw-v{level}")))
            .await
            .unwrap();
        let mut head = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
            .await
            .expect("CONNACK within 5 s")
            .expect("CONNACK");
        assert_eq!(head[0], 0x20, "CONNACK expected");
        let mut rest = vec![0u8; usize::from(head[1])];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest[1], 0, "login accepted (MQTT {level})");
        let junk: &[u8] = if level == 5 {
            // CONNACK (flags, reason, no properties); UNSUBACK (id 1, no properties, success).
            &[0x20, 0x03, 0, 0, 0, 0xB0, 0x04, 0, 1, 0, 0]
        } else {
            &[0x20, 0x02, 0, 0, 0xB0, 0x02, 0, 1]
        };
        s.write_all(junk).await.unwrap();
        // Whatever the broker does with this client (ignore or close), it must not panic.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            s.write_all(&[0xC0, 0]).await?; // PINGREQ
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await?;
            sink.extend_from_slice(&b);
            Ok::<_, std::io::Error>(())
        })
        .await;
        assert_no_rumqttd_panic();
    }
    assert_alive(&tg, mqtt).await;
    assert_no_rumqttd_panic();
    tg.shutdown().await;
}

/// A persistent session subscribed to a shared subscription goes away while a QoS 1 message
/// to it is unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_shared_subscriber_leaves_with_unacked_message() {
    let (tg, mqtt) = gateway().await;
    let mut o = MqttOptions::new("shared-persistent", mqtt.ip().to_string(), mqtt.port());
    o.set_credentials(USER, PASSWORD);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    let (sub, mut sub_el) = AsyncClient::new(o, 8);
    let mut o = MqttOptions::new("shared-publisher", mqtt.ip().to_string(), mqtt.port());
    o.set_credentials(USER, PASSWORD);
    let (publisher, mut pub_el) = AsyncClient::new(o, 8);
    let pub_task = tokio::spawn(async move { while pub_el.poll().await.is_ok() {} });
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sub_el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    sub.subscribe("$share/g/shared/t", QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    publisher
                        .publish("shared/t", QoS::AtLeastOnce, false, "unacked")
                        .await
                        .unwrap();
                }
                // Received and deliberately not acknowledged.
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == "shared/t" => return,
                Ok(_) => {}
                Err(e) => panic!("shared subscriber failed: {e}"),
            }
        }
    })
    .await
    .expect("the shared subscriber receives the message within 10 s");
    // Drop the connection without DISCONNECT: the session stays, with the message in flight.
    drop(sub_el);
    drop(sub);
    // The router handles the disconnect before it serves the next client.
    assert_alive(&tg, mqtt).await;
    assert_no_rumqttd_panic();
    pub_task.abort();
    tg.shutdown().await;
}
