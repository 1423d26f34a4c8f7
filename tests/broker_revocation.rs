//! MQTT logins end when access ends. Against the real gateway (embedded broker, web API) with
//! real MQTT client sessions: revoking an API token, deleting an account (its tokens go with
//! it) and withdrawing or re-issuing a Klipper printer's login each close the live MQTT
//! sessions that logged in with that credential within 1 s, and a new CONNECT with it is
//! refused ("bad user name or password"). A password change ends the account's web sessions
//! but keeps its API tokens working (the web's rule), so MQTT sessions opened with those tokens
//! stay, and a web password never was an MQTT login.

mod common;

use common::{Api, TestGateway, demo_api_token};
use printgate::broker::config::{BrokerConfig, BrokerMode};
use printgate::config::{Config, Model, PrinterConfig, PrinterKind};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const PRINTER: &str = "Voron";
const INSTANCE: &str = "voron";
/// How soon a live session must end after the revoking request was answered.
const WITHIN: Duration = Duration::from_secs(1);

struct Rig {
    tg: TestGateway,
    api: Api,
    mqtt: SocketAddr,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A gateway with one Klipper printer and the embedded broker on loopback.
async fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg: Config = common::config_for(dir.path(), &[]);
    cfg.printers = vec![PrinterConfig {
        name: PRINTER.into(),
        kind: PrinterKind::Moonraker,
        model: Model::Klipper,
        host: "127.0.0.1".into(),
        instance_name: INSTANCE.into(),
        http_port: free_port(),
        ..PrinterConfig::default()
    }];
    let mut broker = BrokerConfig {
        mode: BrokerMode::Embedded,
        listen: "127.0.0.1:0".parse().expect("address"),
        tls_listen: None,
        ..BrokerConfig::default()
    };
    broker.mdns.enabled = false;
    broker.ssdp.enabled = false;
    cfg.broker = broker;
    let tg = TestGateway::start_with(Vec::new(), dir, cfg).await;
    let token = demo_api_token(&tg.gw().store);
    let running = tg.running.as_ref().expect("running");
    let api = Api::new(running.web_addr, Some(token));
    let mqtt = running
        .broker
        .as_ref()
        .and_then(|b| b.mqtt_addr)
        .expect("embedded broker listens");
    Rig {
        tg,
        api,
        mqtt,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client"),
    }
}

impl Rig {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.base)
    }

    fn key(&self) -> String {
        self.api.token.clone().expect("demo token")
    }
}

fn options(mqtt: SocketAddr, id: &str, user: &str, password: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// The answer to one CONNECT: `Ok` when accepted, else the refusal.
async fn login(mqtt: SocketAddr, id: &str, user: &str, password: &str) -> Result<(), String> {
    let (_client, mut el) = AsyncClient::new(options(mqtt, id, user, password), 8);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) if a.code == ConnectReturnCode::Success => {
                    return Ok(());
                }
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(format!("{code:?}")),
                Err(e) => return Err(format!("connection failed: {e}")),
            }
        }
    })
    .await
    .expect("a CONNACK within 10 s")
}

async fn assert_refused(mqtt: SocketAddr, user: &str, password: &str, what: &str) {
    assert_eq!(
        login(mqtt, "after-revocation", user, password).await,
        Err("BadUserNamePassword".to_string()),
        "{what}: a new login must be refused"
    );
}

/// A logged-in client that keeps its connection; `ended` fires when the connection ends.
struct Live {
    client: AsyncClient,
    ended: oneshot::Receiver<String>,
    task: tokio::task::JoinHandle<()>,
    echoes: tokio::sync::mpsc::Receiver<Vec<u8>>,
}

impl Live {
    async fn open(mqtt: SocketAddr, id: &str, user: &str, password: &str, topic: &str) -> Live {
        let (client, mut el) = AsyncClient::new(options(mqtt, id, user, password), 8);
        let (subscribed_tx, subscribed) = oneshot::channel();
        let (ended_tx, ended) = oneshot::channel();
        let (echo_tx, echoes) = tokio::sync::mpsc::channel(8);
        let sub = client.clone();
        let topic_owned = topic.to_string();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        assert_eq!(a.code, ConnectReturnCode::Success, "live login accepted");
                        let _ = sub.subscribe(topic_owned.as_str(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = echo_tx.send(p.payload.to_vec()).await;
                    }
                    Ok(Event::Incoming(Packet::Disconnect)) => {
                        let _ = ended_tx.send("DISCONNECT".into());
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = ended_tx.send(e.to_string());
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("live session subscribed within 10 s")
            .expect("live session subscribed");
        Live {
            client,
            ended,
            task,
            echoes,
        }
    }

    /// The broker closes this session within [`WITHIN`] from `t0` (when the revoking request
    /// was answered).
    async fn assert_closed_soon(self, t0: Instant, what: &str) {
        let how = tokio::time::timeout(WITHIN.saturating_sub(t0.elapsed()), self.ended)
            .await
            .unwrap_or_else(|_| panic!("{what}: the live MQTT session was still open after 1 s"))
            .expect("session task reports");
        eprintln!("{what}: session closed after {:?} ({how})", t0.elapsed());
    }

    /// The session still works: a message published on it comes back to it.
    async fn assert_open(&mut self, topic: &str, what: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, what.as_bytes().to_vec())
            .await
            .expect("publish queued");
        let got = tokio::time::timeout(Duration::from_secs(5), self.echoes.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: the session no longer delivers"));
        assert_eq!(got.as_deref(), Some(what.as_bytes()), "{what}");
        assert!(!self.task.is_finished(), "{what}: the session ended");
    }
}

/// An MQTT 5 client session: it must be told why it ends (DISCONNECT "not authorized").
struct LiveV5 {
    _client: rumqttc::v5::AsyncClient,
    ended: oneshot::Receiver<String>,
}

impl LiveV5 {
    async fn open(mqtt: SocketAddr, id: &str, user: &str, password: &str) -> LiveV5 {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        let mut o = rumqttc::v5::MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
        o.set_credentials(user, password);
        let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 8);
        let (up_tx, up) = oneshot::channel();
        let (ended_tx, ended) = oneshot::channel();
        tokio::spawn(async move {
            let mut up_tx = Some(up_tx);
            loop {
                match el.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(P5::ConnAck(a))) => {
                        if let Some(tx) = up_tx.take() {
                            let _ = tx.send(format!("{:?}", a.code));
                        }
                    }
                    Ok(rumqttc::v5::Event::Incoming(P5::Disconnect(d))) => {
                        let _ = ended_tx.send(format!("{:?}", d.reason_code));
                        return;
                    }
                    Ok(_) => {}
                    // rumqttc reports the server's DISCONNECT as this error.
                    Err(rumqttc::v5::ConnectionError::MqttState(
                        rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                    )) => {
                        let _ = ended_tx.send(format!("{reason_code:?}"));
                        return;
                    }
                    Err(e) => {
                        let _ = ended_tx.send(format!("closed without DISCONNECT: {e}"));
                        return;
                    }
                }
            }
        });
        let code = tokio::time::timeout(Duration::from_secs(10), up)
            .await
            .expect("MQTT 5 CONNACK within 10 s")
            .expect("MQTT 5 session");
        assert_eq!(code, "Success", "MQTT 5 login accepted");
        LiveV5 {
            _client: client,
            ended,
        }
    }

    async fn assert_not_authorized_soon(self, t0: Instant) {
        let how = tokio::time::timeout(WITHIN.saturating_sub(t0.elapsed()), self.ended)
            .await
            .expect("the MQTT 5 session was still open 1 s after the revocation")
            .expect("session task reports");
        assert_eq!(how, "NotAuthorized", "MQTT 5 clients are told why");
    }
}

/// Create an API token for the demo account through the tokens page (as a script would, with
/// the demo token); returns (id, token).
async fn new_token(r: &Rig, name: &str) -> (i64, String) {
    let resp = r
        .http
        .post(r.url("/settings/tokens"))
        .header("x-api-key", r.key())
        .form(&[("name", name)])
        .send()
        .await
        .expect("token page");
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.expect("html");
    let at = html.find("<code>pg_").expect("new token shown") + "<code>".len();
    let token = html[at..]
        .split('<')
        .next()
        .expect("token text")
        .to_string();
    let store = &r.tg.gw().store;
    let demo = store
        .user_by_name("demo")
        .expect("store")
        .expect("demo account");
    let id = store
        .list_api_tokens(demo.id)
        .expect("tokens")
        .into_iter()
        .find(|t| t.name == name)
        .expect("the new token is listed")
        .id;
    (id, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_api_token_ends_its_mqtt_sessions() {
    let r = rig().await;
    let (id, token) = new_token(&r, "Home Assistant").await;
    // Logged in once before (so a cache would know it), and live now.
    login(r.mqtt, "ha-probe", "ha", &token)
        .await
        .expect("token logs in");
    let live = Live::open(r.mqtt, "ha", "ha", &token, "tok/echo").await;
    let live_v5 = LiveV5::open(r.mqtt, "ha-v5", "ha", &token).await;
    let resp = r
        .http
        .post(r.url(&format!("/settings/tokens/{id}/revoke")))
        .header("x-api-key", r.key())
        .form(&[("confirm", "1")])
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status(), 303, "revoked");
    let t0 = Instant::now();
    assert_refused(r.mqtt, "ha", &token, "revoked API token").await;
    assert_refused(
        r.mqtt,
        "someone-else",
        &token,
        "revoked API token, other name",
    )
    .await;
    live.assert_closed_soon(t0, "revoked API token").await;
    live_v5.assert_not_authorized_soon(t0).await;
    r.tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_account_ends_the_mqtt_sessions_of_its_tokens() {
    let r = rig().await;
    let resp = r
        .http
        .post(r.url("/api/v1/users"))
        .header("x-api-key", r.key())
        .json(&serde_json::json!({"username": "alice", "password": "alice-password-1"}))
        .send()
        .await
        .expect("add user");
    assert_eq!(resp.status(), 201);
    let alice: serde_json::Value = resp.json().await.expect("json");
    let alice_id = alice["id"].as_i64().expect("id");
    // Alice's own token, stored as the tokens page stores it (by hash).
    let token = printgate::web::auth::secrets::new_api_token();
    r.tg.gw()
        .store
        .insert_api_token(
            alice_id,
            "alice's dashboard",
            &printgate::web::auth::secrets::sha256_hex(&token),
            None,
            chrono::Utc::now().timestamp_millis(),
        )
        .expect("token stored");
    login(r.mqtt, "alice-probe", "alice", &token)
        .await
        .expect("alice's token logs in");
    let live = Live::open(r.mqtt, "alice", "alice", &token, "alice/echo").await;
    let resp = r
        .http
        .delete(r.url(&format!("/api/v1/users/{alice_id}")))
        .header("x-api-key", r.key())
        .send()
        .await
        .expect("delete user");
    assert_eq!(resp.status(), 204);
    let t0 = Instant::now();
    assert_refused(r.mqtt, "alice", &token, "deleted account's token").await;
    live.assert_closed_soon(t0, "deleted account").await;
    r.tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_or_reissuing_a_printer_login_ends_its_session() {
    let r = rig().await;
    let issue = || async {
        let resp = r
            .http
            .post(r.url(&format!("/api/v1/printers/{PRINTER}/mqtt-login")))
            .header("x-api-key", r.key())
            .send()
            .await
            .expect("issue login");
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.expect("json");
        (
            body["username"].as_str().expect("username").to_string(),
            body["password"].as_str().expect("password").to_string(),
        )
    };

    // Re-issued: the old password's session ends, the new password works.
    let (user, old) = issue().await;
    let live = Live::open(r.mqtt, "moonraker", &user, &old, "voron/echo").await;
    let (user2, new) = issue().await;
    assert_eq!(user, user2);
    let t0 = Instant::now();
    assert_refused(r.mqtt, &user, &old, "replaced printer password").await;
    live.assert_closed_soon(t0, "re-issued printer login").await;

    // Withdrawn: the session with the current password ends too.
    let live = Live::open(r.mqtt, "moonraker", &user, &new, "voron/echo").await;
    let resp = r
        .http
        .delete(r.url(&format!("/api/v1/printers/{PRINTER}/mqtt-login")))
        .header("x-api-key", r.key())
        .send()
        .await
        .expect("withdraw");
    assert_eq!(resp.status(), 204);
    let t0 = Instant::now();
    assert_refused(r.mqtt, &user, &new, "withdrawn printer login").await;
    live.assert_closed_soon(t0, "withdrawn printer login").await;
    r.tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_keeps_token_sessions_as_the_web_keeps_tokens() {
    let r = rig().await;
    let mut live = Live::open(r.mqtt, "script", "script", &r.key(), "pw/echo").await;
    let before = *r.tg.gw().store.credentials().borrow();
    let resp = r
        .http
        .post(r.url("/api/v1/users/me/password"))
        .header("x-api-key", r.key())
        .json(&serde_json::json!({"current": "demo", "password": "a new password 42"}))
        .send()
        .await
        .expect("change password");
    assert_eq!(resp.status(), 204);
    // The change was signalled to the broker (it re-checked the live sessions) …
    assert_ne!(*r.tg.gw().store.credentials().borrow(), before);
    // … and the token still works on the web, for a new MQTT login and on the live session.
    let web = r
        .http
        .get(r.url("/api/v1/printers"))
        .header("x-api-key", r.key())
        .send()
        .await
        .expect("web");
    assert_eq!(
        web.status(),
        200,
        "API tokens keep working after a password change"
    );
    login(r.mqtt, "script-2", "script", &r.key())
        .await
        .expect("the token still logs in to MQTT");
    live.assert_open("pw/echo", "still open after the password change")
        .await;
    // A web password (old or new) never was an MQTT login.
    assert_refused(r.mqtt, "demo", "demo", "old web password").await;
    assert_refused(r.mqtt, "demo", "a new password 42", "new web password").await;
    r.tg.shutdown().await;
}
