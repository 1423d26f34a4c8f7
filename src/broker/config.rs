//! `[broker]` in printgate.toml: embedded or external broker, listeners, users and their access,
//! limits, Home Assistant discovery, mDNS and SSDP discovery. Every limit has an explicit,
//! reasoned default sized for a Raspberry Pi with ~10 printers and ~50 clients.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the `printgate/…` tree lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BrokerMode {
    /// printgate runs its own broker (rumqttd behind printgate's authentication and ACL).
    #[default]
    Embedded,
    /// printgate publishes to and subscribes on an existing broker (Mosquitto, EMQX).
    External,
    /// No MQTT at all.
    Off,
}

/// What a broker user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Subscribe to everything; publish nothing.
    #[default]
    Read,
    /// Also send `cmd/*` and publish outside the `printgate/` and discovery trees.
    Control,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerUser {
    pub name: String,
    /// Argon2 PHC string (`$argon2id$v=19$…`), e.g. from `printgate hash-password`.
    pub password_hash: String,
    #[serde(default)]
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerLimits {
    /// Clients connected at once (all listeners together).
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// Largest MQTT packet accepted from a client, in bytes.
    #[serde(default = "d_max_packet")]
    pub max_packet_bytes: usize,
    /// A client must have logged in (TLS handshake, WebSocket upgrade and CONNECT) within this
    /// many milliseconds of connecting.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Connections that have not logged in yet, from all addresses together. They do not take
    /// a `max_connections` slot: a flood of them cannot lock out logged-in clients.
    #[serde(default = "d_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Connections that have not logged in yet, from one address; more are closed at once.
    #[serde(default = "d_max_unauthenticated_per_address")]
    pub max_unauthenticated_per_address: usize,
    /// Publishes per second one client may send (sustained; bursts of the same size).
    #[serde(default = "d_publish_rate")]
    pub publishes_per_sec: u32,
    /// QoS 1/2 messages in flight per client.
    #[serde(default = "d_inflight")]
    pub max_inflight: usize,
}

fn d_max_connections() -> usize {
    64
}
fn d_max_packet() -> usize {
    64 * 1024
}
fn d_connect_timeout() -> u64 {
    5000
}
fn d_max_unauthenticated() -> usize {
    128
}
fn d_max_unauthenticated_per_address() -> usize {
    8
}
fn d_publish_rate() -> u32 {
    50
}
fn d_inflight() -> usize {
    32
}

impl Default for BrokerLimits {
    fn default() -> Self {
        toml::from_str("").unwrap_or(BrokerLimits {
            max_connections: d_max_connections(),
            max_packet_bytes: d_max_packet(),
            connect_timeout_ms: d_connect_timeout(),
            max_unauthenticated: d_max_unauthenticated(),
            max_unauthenticated_per_address: d_max_unauthenticated_per_address(),
            publishes_per_sec: d_publish_rate(),
            max_inflight: d_inflight(),
        })
    }
}

/// `[broker.external]`: the broker printgate connects to in external mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalBroker {
    /// `mqtt://host:1883` or `mqtts://host:8883`.
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file with the CA that signed the broker's certificate (mqtts); system roots otherwise
    /// are not used: give the CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "d_client_id")]
    pub client_id: String,
}

fn d_client_id() -> String {
    "printgate".into()
}

/// `[broker.mdns]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdnsConfig {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Service instance name shown in browsers and slicers.
    #[serde(default = "d_instance")]
    pub instance: String,
    /// Host name announced as `<hostname>.local`.
    #[serde(default = "d_instance")]
    pub hostname: String,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        MdnsConfig {
            enabled: true,
            instance: d_instance(),
            hostname: d_instance(),
        }
    }
}

fn d_true() -> bool {
    true
}
fn d_instance() -> String {
    "printgate".into()
}

/// `[broker.ssdp]`: listening for Bambu printers' announcements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsdpConfig {
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(default = "d_ssdp_listen")]
    pub listen: SocketAddr,
}

impl Default for SsdpConfig {
    fn default() -> Self {
        SsdpConfig {
            enabled: true,
            listen: d_ssdp_listen(),
        }
    }
}

fn d_ssdp_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 2021))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(default)]
    pub mode: BrokerMode,
    /// Plain MQTT listener (embedded mode).
    #[serde(default = "d_listen")]
    pub listen: SocketAddr,
    /// TLS listener (embedded mode); `None` (written `"off"`) = no TLS listener.
    #[serde(default = "d_tls_listen", with = "listen_or_off")]
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket for browser clients (path `/mqtt`, subprotocol `mqtt`), embedded
    /// mode; `None` (default, or `"off"`) = no WebSocket listener.
    #[serde(default, with = "listen_or_off")]
    pub websocket_listen: Option<SocketAddr>,
    /// Certificate chain and key (PEM) for the TLS listener; generated in `data_dir` on first
    /// run when not given.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Allow clients without credentials (read-only). Off by default.
    #[serde(default)]
    pub allow_anonymous: bool,
    #[serde(default)]
    pub users: Vec<BrokerUser>,
    #[serde(default)]
    pub limits: BrokerLimits,
    /// Home Assistant discovery prefix.
    #[serde(default = "d_prefix")]
    pub discovery_prefix: String,
    #[serde(default = "d_true")]
    pub home_assistant: bool,
    #[serde(default)]
    pub external: Option<ExternalBroker>,
    #[serde(default)]
    pub mdns: MdnsConfig,
    #[serde(default)]
    pub ssdp: SsdpConfig,
    /// This gateway's id in a fleet of gateways sharing one external broker: its topics move
    /// to `<topic_prefix>/<gateway_id>/…` and its Home Assistant ids carry the id. `None`
    /// (default): a single gateway, topics under `<topic_prefix>/…`.
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// First topic level of the tree (`printgate`).
    #[serde(default = "d_topic_prefix")]
    pub topic_prefix: String,
    /// This gateway's web address as other gateways' fleet pages link to it (default
    /// `http://<mdns hostname>.local:<web port>/`).
    #[serde(default)]
    pub gateway_url: Option<String>,
}

fn d_topic_prefix() -> String {
    crate::broker::topics::ROOT.into()
}

/// An optional listener written as `"ADDR:PORT"` or `"off"`.
mod listen_or_off {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::net::SocketAddr;

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        text.trim().parse().map(Some).map_err(|_| {
            D::Error::custom(format!(
                "{text:?} is not an IP address with a port; write e.g. \"0.0.0.0:8883\", or \"off\" for no listener"
            ))
        })
    }
}

fn d_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1883))
}
fn d_tls_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([0, 0, 0, 0], 8883)))
}
fn d_prefix() -> String {
    "homeassistant".into()
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            mode: BrokerMode::default(),
            listen: d_listen(),
            tls_listen: d_tls_listen(),
            websocket_listen: None,
            tls_cert: None,
            tls_key: None,
            allow_anonymous: false,
            users: Vec::new(),
            limits: BrokerLimits::default(),
            discovery_prefix: d_prefix(),
            home_assistant: true,
            external: None,
            mdns: MdnsConfig::default(),
            ssdp: SsdpConfig::default(),
            gateway_id: None,
            topic_prefix: d_topic_prefix(),
            gateway_url: None,
        }
    }
}

impl BrokerConfig {
    /// Values for `demo` and tests: embedded broker on `listen` (loopback), no TLS, no mDNS, no
    /// SSDP socket, user `demo`/`demo` with control access (password hashed here).
    pub fn demo(listen: SocketAddr) -> anyhow::Result<Self> {
        Ok(BrokerConfig {
            listen,
            tls_listen: None,
            users: vec![BrokerUser {
                name: "demo".into(),
                password_hash: crate::broker::auth::hash_password("demo")?,
                access: Access::Control,
            }],
            mdns: MdnsConfig {
                enabled: false,
                ..MdnsConfig::default()
            },
            ssdp: SsdpConfig {
                enabled: false,
                ..SsdpConfig::default()
            },
            ..BrokerConfig::default()
        })
    }

    /// The topic tree of this gateway (see [`crate::broker::topics::Tree`]).
    pub fn tree(&self) -> crate::broker::topics::Tree {
        crate::broker::topics::Tree::new(&self.topic_prefix, self.gateway_id.as_deref())
    }

    /// Problems, each naming the key and the fix.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let topic_ok = |t: &str| {
            !t.is_empty() && !t.contains(['+', '#']) && !t.starts_with('/') && !t.ends_with('/')
        };
        if !topic_ok(&self.topic_prefix) {
            p.push(format!(
                "broker.topic_prefix = {:?}: must be a topic without wildcards or leading/trailing /, e.g. \"printgate\"",
                self.topic_prefix
            ));
        }
        if let Some(id) = &self.gateway_id
            && (id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            p.push(format!(
                "broker.gateway_id = {id:?}: use letters, digits, - and _ only, e.g. \"farm-a\""
            ));
        }
        let fleet = self.gateway_id.is_some() || self.topic_prefix != d_topic_prefix();
        if fleet && self.mode == BrokerMode::Embedded {
            p.push("broker.gateway_id / broker.topic_prefix: a fleet shares one external broker; set broker.mode = \"external\" with [broker.external], or remove them for the embedded broker".into());
        }
        if self.discovery_prefix.is_empty() || self.discovery_prefix.contains(['+', '#']) {
            p.push("broker.discovery_prefix: must be a topic without wildcards, e.g. \"homeassistant\"".into());
        }
        if self.mode == BrokerMode::External && self.external.is_none() {
            p.push("broker.mode = \"external\" needs a [broker.external] section with url = \"mqtt://host:1883\"".into());
        }
        if let Some(e) = &self.external
            && !(e.url.starts_with("mqtt://") || e.url.starts_with("mqtts://"))
        {
            p.push(format!(
                "broker.external.url = {:?}: write mqtt://host:port or mqtts://host:port",
                e.url
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            p.push("broker.tls_cert and broker.tls_key: give both, or neither to generate a certificate".into());
        }
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                p.push(format!("broker.users[{i}].name: must not be empty"));
            }
            if argon2::PasswordHash::new(&u.password_hash).is_err() {
                p.push(format!("broker.users[{i}].password_hash: not an argon2 hash; create one with `printgate hash-password`"));
            }
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_packet_bytes < 1024
            || l.connect_timeout_ms == 0
            || l.max_unauthenticated == 0
            || l.max_unauthenticated_per_address == 0
            || l.publishes_per_sec == 0
            || l.max_inflight == 0
        {
            p.push(
                "broker.limits: every limit must be positive (max_packet_bytes at least 1024)"
                    .into(),
            );
        }
        p
    }
}
