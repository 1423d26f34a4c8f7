//! The simulated Moonraker's MQTT side, as Moonraker's `[mqtt]` component (mqtt.py) behaves:
//! one client connection to the configured broker with a fresh clean session each time, the
//! will `{"server":"offline"}` (retained) on `{instance}/moonraker/status`, on CONNACK
//! `{"server":"online"}` (retained) then a subscription to `{instance}/moonraker/api/request`,
//! reconnects after a short pause (slowly after a refused CONNACK), and on clean shutdown
//! `{"server":"offline"}` retained followed by DISCONNECT.
//!
//! The ticker plays Klipper's subscription: every 250 ms of real time it moves simulated time
//! forward and publishes what changed on `{instance}/klipper/status` (or the split
//! `{instance}/klipper/state/{obj}/{field}` topics). As in Moonraker, nothing is published (or
//! buffered) while MQTT is down, and the full status is sent only once after Klippy starts, not
//! after an MQTT reconnect: a gateway that reconnects must ask `printer.objects.query` for the
//! current state. One kindness differs from Moonraker: if Klippy is ready before the first
//! CONNACK, the full status waits for the connection instead of being lost.

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet,
};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::knobs::KlippyState;
use super::model::status_delta;
use super::{Link, Shared, rpc};

/// Pause before reconnecting after a dropped connection.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// Pause before retrying after the broker refused the CONNECT (bad credentials etc.).
const REFUSED_DELAY: Duration = Duration::from_secs(2);
/// Klipper's subscription update interval.
const TICK: Duration = Duration::from_millis(250);
/// Largest packet the simulated client sends or accepts (the oversize knob sends > 1 MiB).
const MAX_PACKET: usize = 4 * 1024 * 1024;

/// How one connection ended.
enum Ended {
    Dropped,
    Refused,
    Offline,
    Stopped,
}

/// Connect, serve, reconnect until `shutdown`.
pub(crate) async fn run_connection(shared: Arc<Shared>) {
    let mut conn: u64 = 0;
    let mut offline = shared.offline.subscribe();
    let mut stopping = shared.stopping.subscribe();
    loop {
        // Stay away while offline (bounded by shutdown).
        tokio::select! {
            ok = until(&mut offline, false) => if !ok { return },
            _ = until(&mut stopping, true) => return,
        }
        conn += 1;
        let ended = serve_once(&shared, conn).await;
        shared.set_link(None);
        {
            let mut st = shared.lock();
            st.mqtt_connected = false;
        }
        shared.refresh_truth();
        let delay = match ended {
            Ended::Stopped => return,
            Ended::Offline => continue,
            Ended::Dropped => RECONNECT_DELAY,
            Ended::Refused => REFUSED_DELAY,
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = until(&mut stopping, true) => return,
            _ = until(&mut offline, true) => {}
        }
    }
}

/// Wait until the flag has value `v`; `false` if the sender is gone.
async fn until(rx: &mut tokio::sync::watch::Receiver<bool>, v: bool) -> bool {
    rx.wait_for(|x| *x == v).await.is_ok()
}

fn options(shared: &Shared, conn: u64) -> MqttOptions {
    let cfg = &shared.cfg;
    let id = cfg.client_id.clone().unwrap_or_default();
    let mut o = MqttOptions::new(id, cfg.broker.ip().to_string(), cfg.broker.port());
    o.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_last_will(LastWill::new(
            shared.topic("moonraker/status"),
            br#"{"server":"offline"}"#.to_vec(),
            shared.qos(),
            true,
        ));
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    tracing::debug!(instance = %cfg.instance_name, conn, "MQTT connecting to {}", cfg.broker);
    o
}

async fn serve_once(shared: &Arc<Shared>, conn: u64) -> Ended {
    let (client, mut el) = AsyncClient::new(options(shared, conn), 1024);
    let mut offline = shared.offline.subscribe();
    let mut stopping = shared.stopping.subscribe();
    let request_topic = shared.topic("moonraker/api/request");
    let mut acked = false;
    loop {
        tokio::select! {
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        return refused(shared, ack.code);
                    }
                    acked = true;
                    on_connected(shared, &client, conn, &request_topic);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => on_subscribed(shared, conn),
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == request_topic => {
                    on_request(shared, conn, &p.payload);
                }
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return refused(shared, code),
                Err(e) if !acked => {
                    // rumqttd closes the socket instead of sending CONNACK 4/5 for bad credentials.
                    let msg = format!(
                        "the broker at {} closed the connection before accepting it ({e}); check the broker address and the [mqtt] username/password in moonraker.conf",
                        shared.cfg.broker
                    );
                    tracing::warn!(instance = %shared.cfg.instance_name, conn, "{msg}");
                    shared.lock().mqtt_error = Some(msg);
                    shared.refresh_truth();
                    return Ended::Refused;
                }
                Err(e) => {
                    tracing::info!(instance = %shared.cfg.instance_name, conn, "MQTT connection lost: {e}");
                    return Ended::Dropped;
                }
            },
            _ = until(&mut offline, true) => {
                // Dropping the event loop closes the TCP connection without DISCONNECT.
                tracing::info!(instance = %shared.cfg.instance_name, conn, "MQTT going offline (no DISCONNECT)");
                return Ended::Offline;
            }
            _ = until(&mut stopping, true) => {
                clean_disconnect(shared, &client, &mut el).await;
                return Ended::Stopped;
            }
        }
    }
}

fn refused(shared: &Shared, code: ConnectReturnCode) -> Ended {
    let msg = format!(
        "the broker refused the connection ({code:?}); check [mqtt] username/password in moonraker.conf"
    );
    tracing::warn!(instance = %shared.cfg.instance_name, "{msg}");
    shared.lock().mqtt_error = Some(msg);
    shared.refresh_truth();
    Ended::Refused
}

fn on_connected(shared: &Shared, client: &AsyncClient, conn: u64, request_topic: &str) {
    let qos = shared.qos();
    let _ = client.try_publish(
        shared.topic("moonraker/status"),
        qos,
        true,
        br#"{"server":"online"}"#.to_vec(),
    );
    let _ = client.try_subscribe(request_topic, qos);
    shared.set_link(Some(Link {
        client: client.clone(),
    }));
    tracing::info!(instance = %shared.cfg.instance_name, conn, "MQTT connected");
}

/// The request subscription is in place: from now on requests reach the simulator, so this is
/// when `truth().mqtt_connected` turns true. (Real Moonraker publishes "online" before it
/// subscribes, so a request sent the instant "online" arrives can be lost.)
fn on_subscribed(shared: &Shared, conn: u64) {
    {
        let mut st = shared.lock();
        if st.mqtt_connected {
            return;
        }
        st.mqtt_connected = true;
        st.mqtt_error = None;
        st.mqtt_connections += 1;
    }
    tracing::debug!(instance = %shared.cfg.instance_name, conn, "MQTT request topic subscribed");
    shared.refresh_truth();
}

fn on_request(shared: &Shared, conn: u64, payload: &[u8]) {
    let (response, entries) = rpc::handle(shared, conn, payload);
    let knobs = shared.knobs.get();
    let mut sent = false;
    let withheld = knobs.drop_responses
        || entries
            .iter()
            .any(|e| knobs.drop_responses_to.contains(&e.method));
    if let Some(resp) = response
        && !withheld
    {
        let bytes = resp.to_string().into_bytes();
        let topic = shared.topic("moonraker/api/response");
        sent = shared.publish(topic.clone(), bytes.clone(), false);
        if knobs.duplicate_responses {
            shared.publish(topic, bytes, false);
        }
    }
    for mut e in entries {
        e.response_sent = sent && e.response.is_some();
        shared.log.record(e);
    }
}

async fn clean_disconnect(shared: &Shared, client: &AsyncClient, el: &mut rumqttc::EventLoop) {
    if shared.link().is_none() {
        return;
    }
    let _ = client.try_publish(
        shared.topic("moonraker/status"),
        shared.qos(),
        true,
        br#"{"server":"offline"}"#.to_vec(),
    );
    let _ = client.try_disconnect();
    // Drive the event loop until DISCONNECT is written (bounded like Moonraker's 2 s wait).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    tracing::info!(instance = %shared.cfg.instance_name, "MQTT disconnected cleanly");
}

/// Klipper's status subscription: advance the model and publish changes every 250 ms.
pub(crate) async fn run_ticker(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut oversize_sent = false;
    loop {
        interval.tick().await;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64() * shared.cfg.time_scale;
        last = now;
        tick(&shared, dt, &mut oversize_sent);
        shared.refresh_truth();
    }
}

/// One status tick: what to publish, decided under the lock, published after it.
fn tick(shared: &Shared, dt: f64, oversize_sent: &mut bool) {
    let knobs = shared.knobs.get();
    let connected = shared.link().is_some();
    let update = {
        let mut st = shared.lock();
        shared.sync_klippy(&mut st);
        st.printer.advance(dt);
        let klippy = st.printer.klippy();
        let now = st.printer.query(&shared.subscription);
        if klippy == KlippyState::Disconnected {
            None
        } else if st.printer.klippy_started_pending {
            // First status after Klippy leaves startup, once MQTT is up.
            if klippy == KlippyState::Startup || !connected {
                None
            } else {
                st.printer.klippy_started_pending = false;
                st.last_status = now.clone();
                Some(now)
            }
        } else {
            let delta = status_delta(&st.last_status, &now);
            st.last_status = now;
            (!delta.is_empty()).then_some(delta)
        }
    };
    if !knobs.oversize_status {
        *oversize_sent = false;
    }
    if !connected || knobs.status_silence {
        return;
    }
    let eventtime = shared.eventtime();
    let status_topic = shared.topic("klipper/status");
    if knobs.malformed_status {
        let garbage = format!(
            "{{\"eventtime\": {eventtime}, \"status\": {{\"print_stats\": {{\"state\": \"printing\""
        )
        .into_bytes();
        if shared.publish(status_topic, garbage, false) {
            shared.lock().status_publishes += 1;
        }
        return;
    }
    if knobs.oversize_status && !*oversize_sent {
        let mut status = update.clone().unwrap_or_default();
        status.insert(
            "gcode_macro SIM_PADDING".into(),
            json!({"blob": "x".repeat(1024 * 1024 + 512)}),
        );
        let payload = json!({"eventtime": eventtime, "status": status}).to_string();
        if shared.publish(status_topic.clone(), payload.into_bytes(), false) {
            *oversize_sent = true;
            shared.lock().status_publishes += 1;
            return;
        }
    }
    let Some(status) = update else { return };
    let published = if shared.cfg.publish_split_status {
        publish_split(shared, &status, eventtime)
    } else {
        let payload = json!({"eventtime": eventtime, "status": status}).to_string();
        shared.publish(status_topic, payload.into_bytes(), false)
    };
    if published {
        shared.lock().status_publishes += 1;
    }
}

/// `publish_split_status`: one retained message per field.
fn publish_split(shared: &Shared, status: &Map<String, Value>, eventtime: f64) -> bool {
    let mut ok = true;
    for (obj, fields) in status {
        let Some(fields) = fields.as_object() else {
            continue;
        };
        for (field, value) in fields {
            let payload = json!({"eventtime": eventtime, "value": value}).to_string();
            let topic = shared.topic(&format!("klipper/state/{obj}/{field}"));
            ok &= shared.publish(topic, payload.into_bytes(), true);
        }
    }
    ok
}
