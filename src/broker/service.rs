//! Starts the MQTT side of the gateway from the config and the running printers: the embedded
//! broker (in its supervised worker process when the binary is known) with its front door (or the client of an external broker), the state bridge from
//! printer snapshots to the topic tree, Home Assistant discovery (including removal of printers
//! that were deleted since the last run) and SSDP printer discovery.

use crate::broker::auth::{Authenticator, PrinterLoginCheck, TokenCheck};
use crate::broker::commands::{BrokerCommand, CommandRouter};
use crate::broker::config::{BrokerConfig, BrokerMode};
use crate::broker::gate::{self, Gate};
use crate::broker::ha::{self, HaGateway, HaPrinter};
use crate::broker::publisher::{self, Outbox, PublisherState, Target};
use crate::broker::ssdp::{self, Discovery, DiscoveryList};
use crate::broker::topics::{self, EventPayload, GatewayFacts, GatewayStatus, OFFLINE, ONLINE};
use crate::printer::Model;
use crate::printer::PrinterSnapshot;
use crate::views::{HmsTextFn, printer_view};
use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// One printer as the broker sees it.
pub struct BrokerPrinter {
    pub name: String,
    /// Stable identity across renames and restarts ([`crate::config::printer_unique_id`]).
    pub unique_id: String,
    pub model: Model,
    pub snapshots: watch::Receiver<PrinterSnapshot>,
    /// A relay switches its power (a `power` switch appears in Home Assistant).
    pub has_relay: bool,
}

/// Everything `start` needs besides the printers.
pub struct BrokerSetup {
    pub config: BrokerConfig,
    pub data_dir: PathBuf,
    /// Web interface address, for Home Assistant's "Visit" link (`None`: no link).
    pub web_url: Option<String>,
    /// Web port announced over mDNS (`_http._tcp`, `_octoprint._tcp`).
    pub web_port: u16,
    pub hms_text: HmsTextFn,
    /// Where MQTT commands go; `None` = results say "not available".
    pub executor: Option<mpsc::Sender<BrokerCommand>>,
    /// The web's API tokens, accepted as MQTT passwords.
    pub tokens: Option<TokenCheck>,
    /// Logins issued to Klipper printers (embedded mode).
    pub printer_logins: Option<PrinterLoginCheck>,
    /// Moonraker instance names of the configured Klipper printers (their topics are reserved).
    pub printer_instances: Vec<String>,
    /// Moves when a token or printer login loses its access
    /// ([`crate::store::Store::credentials`]): the MQTT sessions that used it end.
    pub credentials: Option<watch::Receiver<u64>>,
}

/// The running MQTT side.
pub struct BrokerHandle {
    /// Plain MQTT listener (embedded mode).
    pub mqtt_addr: Option<SocketAddr>,
    /// MQTT over TLS listener (embedded mode).
    pub mqtts_addr: Option<SocketAddr>,
    /// MQTT over WebSocket listener (embedded mode, when configured).
    pub ws_addr: Option<SocketAddr>,
    /// Printers announcing themselves on the LAN (when `[broker.ssdp]` is enabled).
    pub discovery: Option<Discovery>,
    /// Connection state of the gateway's own client.
    pub publisher: watch::Receiver<PublisherState>,
    /// Where the gateway's Moonraker links connect (the internal listener or the external
    /// broker), with the gateway's own credentials.
    pub endpoint: crate::printer::moonraker::BrokerEndpoint,
    /// Clients, messages and refused logins, for the metrics endpoint.
    pub stats: Arc<crate::broker::stats::BrokerStats>,
    /// The embedded broker's worker process (its pid, restarts and why), when it runs in one
    /// ([`crate::broker::supervisor`]).
    pub broker_worker: Option<watch::Receiver<crate::broker::supervisor::WorkerStatus>>,
    outbox: Arc<Outbox>,
    facts: HashMap<String, watch::Sender<GatewayFacts>>,
    topic_ids: HashMap<String, String>,
    tree: topics::Tree,
    /// In a fleet (`[broker] gateway_id`): the other gateways' retained state.
    pub fleet: Option<Arc<crate::broker::fleet::FleetView>>,
    mdns: Option<mdns_sd::ServiceDaemon>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// A cheap, cloneable way to update the gateway facts of the printers' `state` topics.
#[derive(Clone)]
pub struct FactsFeed {
    facts: HashMap<String, watch::Sender<GatewayFacts>>,
}

impl FactsFeed {
    pub fn set(&self, printer: &str, facts: GatewayFacts) {
        if let Some(tx) = self.facts.get(printer) {
            tx.send_if_modified(|f| {
                let changed = *f != facts;
                *f = facts;
                changed
            });
        }
    }
}

impl BrokerHandle {
    /// A handle for a task that keeps plate / safety facts up to date.
    pub fn facts_feed(&self) -> FactsFeed {
        FactsFeed {
            facts: self.facts.clone(),
        }
    }

    /// Update plate / safety / power facts of a printer (re-publishes its state).
    pub fn set_facts(&self, printer: &str, facts: GatewayFacts) {
        if let Some(tx) = self.facts.get(printer) {
            tx.send_replace(facts);
        }
    }

    /// Publish an event on `printgate/<printer>/events` (job started/finished/unconfirmed,
    /// plate, safety). Dropped while the broker connection is down.
    pub fn publish_event(&self, printer: &str, kind: &str, detail: &str) {
        if let Some(id) = self.topic_ids.get(printer) {
            let ev = EventPayload {
                kind: kind.into(),
                detail: detail.into(),
                at_ms: chrono::Utc::now().timestamp_millis(),
            };
            if let Ok(json) = serde_json::to_vec(&ev) {
                self.outbox.send(self.tree.events(id), json);
            }
        }
    }

    /// Stop every task (publishing `offline` first).
    pub async fn shutdown(mut self) {
        if let Some(d) = self.mdns.take() {
            let _ = d.shutdown();
        }
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

const HA_STATE_FILE: &str = "broker-ha-serials.json";

/// Serials whose discovery configs were published by the previous run.
fn load_published(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn tls_acceptor(cfg: &BrokerConfig, data_dir: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_path, key_path) = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = data_dir.join("broker-tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !(c.exists() && k.exists()) {
                std::fs::create_dir_all(&dir)?;
                let names = vec![
                    format!("{}.local", cfg.mdns.hostname),
                    "printgate.local".into(),
                    "localhost".into(),
                    "127.0.0.1".into(),
                ];
                let ck = rcgen::generate_simple_self_signed(names)
                    .context("generating the broker's TLS certificate")?;
                std::fs::write(&k, ck.signing_key.serialize_pem())?;
                std::fs::write(&c, ck.cert.pem())?;
                tracing::info!(path = %c.display(), "generated a TLS certificate for the MQTT broker");
            }
            (c, k)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect())
        .with_context(|| format!("reading the broker certificate {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the broker key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the broker certificate and key do not match")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn external_target(cfg: &BrokerConfig) -> anyhow::Result<Target> {
    let ext = cfg
        .external
        .as_ref()
        .context("broker.mode = \"external\" needs [broker.external] with a url")?;
    let (tls, rest) = if let Some(r) = ext.url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = ext.url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        anyhow::bail!(
            "broker.external.url {:?}: write mqtt://host:port or mqtts://host:port",
            ext.url
        );
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse()
                .with_context(|| format!("broker.external.url: port {p:?} is not a number"))?,
        ),
        None => (rest.to_string(), if tls { 8883 } else { 1883 }),
    };
    let tls = if tls {
        let ca = ext
            .ca_file
            .as_ref()
            .context("broker.external.ca_file: mqtts needs the CA certificate (PEM) that signed the broker's certificate")?;
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Some(Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    } else {
        None
    };
    Ok(Target {
        host,
        port,
        tls,
        username: ext.username.clone(),
        password: ext.password.clone(),
        client_id: ext.client_id.clone(),
        receive_commands: true,
        discovery_prefix: cfg.discovery_prefix.clone(),
        tree: cfg.tree(),
        fleet: None,
        broker_worker: None,
    })
}

/// Start the MQTT side. Returns once the listeners are bound (embedded mode); the broker
/// connection itself comes up in the background (see [`BrokerHandle::publisher`]).
pub async fn start(
    setup: BrokerSetup,
    printers: Vec<BrokerPrinter>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<BrokerHandle>> {
    let cfg = setup.config.clone();
    if cfg.mode == BrokerMode::Off {
        return Ok(None);
    }
    let shutdown = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let names: Vec<&str> = printers.iter().map(|p| p.name.as_str()).collect();
    let ids = topics::topic_ids(&names);
    let topic_ids: HashMap<String, String> = printers
        .iter()
        .zip(&ids)
        .map(|(p, id)| (p.name.clone(), id.clone()))
        .collect();
    let by_id: HashMap<String, String> = topic_ids
        .iter()
        .map(|(n, i)| (i.clone(), n.clone()))
        .collect();

    let outbox = Arc::new(Outbox::default());
    let (results_tx, mut results_rx) = mpsc::channel::<(String, topics::CommandResult)>(64);
    let tree = cfg.tree();
    let router =
        CommandRouter::new(setup.executor.clone(), by_id, results_tx).with_tree(tree.clone());
    {
        let outbox = outbox.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = token.cancelled() => return,
                    r = results_rx.recv() => r,
                };
                let Some((topic, result)) = next else { return };
                if let Ok(json) = serde_json::to_vec(&result) {
                    outbox.send(topic, json);
                }
            }
        });
    }

    // Listeners and the internal broker, or the external target.
    let (mut mqtt_addr, mut mqtts_addr, mut ws_addr) = (None, None, None);
    let mut broker_worker = None;
    let target = match cfg.mode {
        BrokerMode::Embedded => {
            let supervised = match crate::broker::worker::executable() {
                Some(exe) => {
                    match crate::broker::supervisor::start(
                        &cfg.limits,
                        exe,
                        outbox.stats(),
                        shutdown.clone(),
                    )
                    .await
                    {
                        Ok((sup, task)) => {
                            tasks.spawn(task);
                            broker_worker = Some(sup.status);
                            Some(sup.internal)
                        }
                        Err(e) => {
                            // The safety path must run even so: fall back to the broker on
                            // threads, and say what that costs.
                            tracing::error!(
                                "{e:#}; the MQTT broker runs inside the gateway process instead, where a broker crash would end the gateway (relays wired normally-open then cut printer power)"
                            );
                            None
                        }
                    }
                }
                None => None,
            };
            let internal = match supervised {
                Some(internal) => internal,
                None => {
                    if crate::broker::worker::executable().is_none() {
                        tracing::info!(
                            "the MQTT broker runs on threads of this process (no broker worker executable is set): a broker crash would end the process"
                        );
                    }
                    crate::broker::embedded::start(&cfg.limits).await?
                }
            };
            let mut auth = Authenticator::new(&cfg, setup.tokens.clone());
            if let Some(check) = setup.printer_logins.clone() {
                auth = auth.with_printer_logins(check);
            }
            if let Some(signal) = setup.credentials.clone() {
                auth = auth.with_credentials_signal(signal);
            }
            let gate = Arc::new(
                Gate::new(
                    auth,
                    internal.clone(),
                    cfg.limits.clone(),
                    cfg.discovery_prefix.clone(),
                    router.clone(),
                )
                .with_printer_instances(setup.printer_instances.clone())
                .with_stats(outbox.stats()),
            );
            tasks.spawn(gate.admission.clone().log_summaries(shutdown.clone()));
            let plain = crate::admission::listen(cfg.listen)
                .with_context(|| format!("cannot listen for MQTT on {} (broker.listen); is another broker (Mosquitto) running there? Stop it or choose another port", cfg.listen))?;
            let plain_addr = plain.local_addr()?;
            tracing::info!("MQTT broker on {plain_addr}");
            mqtt_addr = Some(plain_addr);
            tasks.spawn(gate::sweep_revoked(gate.clone(), shutdown.clone()));
            tasks.spawn(gate::serve_plain(plain, gate.clone(), shutdown.clone()));
            if let Some(addr) = cfg.websocket_listen {
                let l = crate::admission::listen(addr).with_context(|| {
                    format!(
                        "cannot listen for MQTT over WebSocket on {addr} (broker.websocket_listen)"
                    )
                })?;
                let addr = l.local_addr()?;
                tracing::info!("MQTT over WebSocket on ws://{addr}/mqtt");
                ws_addr = Some(addr);
                tasks.spawn(crate::broker::websocket::serve(
                    l,
                    gate.clone(),
                    shutdown.clone(),
                ));
            }
            if let Some(addr) = cfg.tls_listen {
                let acceptor = tls_acceptor(&cfg, &setup.data_dir)?;
                let l = crate::admission::listen(addr).with_context(|| {
                    format!("cannot listen for MQTT over TLS on {addr} (broker.tls_listen)")
                })?;
                let addr = l.local_addr()?;
                tracing::info!("MQTT over TLS on {addr}");
                mqtts_addr = Some(addr);
                tasks.spawn(gate::serve_tls(l, acceptor, gate, shutdown.clone()));
            }
            Target {
                host: internal.v4.ip().to_string(),
                port: internal.v4.port(),
                tls: None,
                username: Some(internal.username.clone()),
                password: Some(internal.password.clone()),
                client_id: "printgate-gateway".into(),
                receive_commands: false,
                discovery_prefix: cfg.discovery_prefix.clone(),
                tree: tree.clone(),
                fleet: None,
                broker_worker: broker_worker.clone(),
            }
        }
        BrokerMode::External => external_target(&cfg)?,
        BrokerMode::Off => return Ok(None),
    };
    let mut target = target;
    let fleet = match (tree.fleet_prefix(), tree.gateway_id()) {
        (Some(prefix), Some(own)) => {
            Some(Arc::new(crate::broker::fleet::FleetView::new(prefix, own)))
        }
        _ => None,
    };
    target.fleet = fleet.clone();
    let web_url = cfg.gateway_url.clone().or(setup.web_url.clone());

    let endpoint = crate::printer::moonraker::BrokerEndpoint {
        host: target.host.clone(),
        port: target.port,
        tls: target.tls.clone(),
        username: target.username.clone(),
        password: target.password.clone(),
    };

    // Home Assistant discovery, with removal of printers deleted since the last run.
    let gateway = HaGateway {
        id: ha::id_safe(cfg.gateway_id.as_deref().unwrap_or(&cfg.mdns.instance)),
        name: cfg
            .gateway_id
            .clone()
            .unwrap_or_else(|| cfg.mdns.instance.clone()),
        version: env!("CARGO_PKG_VERSION").into(),
        configuration_url: web_url.clone(),
        tree: tree.clone(),
    };
    let ha_printers: Vec<HaPrinter> = printers
        .iter()
        .zip(&ids)
        .map(|(p, id)| HaPrinter {
            name: p.name.clone(),
            topic_id: id.clone(),
            unique_id: p.unique_id.clone(),
            serial: p.model.is_bambu().then(|| p.unique_id.clone()),
            manufacturer: p.model.is_bambu().then(|| "Bambu Lab".to_string()),
            model: p.model.display_name().into(),
            has_chamber_sensor: p.model.has_chamber_sensor(),
            has_relay: p.has_relay,
            firmware: None,
        })
        .collect();
    if cfg.home_assistant {
        let state_file = setup.data_dir.join(HA_STATE_FILE);
        let current: Vec<String> = ha_printers.iter().map(|p| p.unique_id.clone()).collect();
        for old in load_published(&state_file) {
            if !current.contains(&old) {
                for t in ha::printer_config_topics(&cfg.discovery_prefix, &gateway, &old) {
                    outbox.set_retained(t, Vec::new());
                }
                tracing::info!(printer = %old, "removing a deleted printer from Home Assistant");
            }
        }
        if let Ok(json) = serde_json::to_vec(&current) {
            let _ = std::fs::write(&state_file, json);
        }
        for m in ha::gateway_configs(&cfg.discovery_prefix, &gateway) {
            outbox.set_retained(m.topic, m.payload.to_string().into_bytes());
        }
        for p in &ha_printers {
            for m in ha::printer_configs(&cfg.discovery_prefix, p, &gateway) {
                outbox.set_retained(m.topic, m.payload.to_string().into_bytes());
            }
        }
    }

    // State bridge: one task per printer, plus the gateway status.
    let online = Arc::new(GatewayScope {
        online: Mutex::default(),
        tree: tree.clone(),
        web_url: web_url.clone(),
    });
    let mut facts = HashMap::new();
    for (p, id) in printers.into_iter().zip(ids) {
        let (ftx, frx) = watch::channel(GatewayFacts::default());
        facts.insert(p.name.clone(), ftx);
        tasks.spawn(bridge_printer(
            p,
            id,
            frx,
            outbox.clone(),
            online.clone(),
            setup.hms_text,
            shutdown.clone(),
        ));
    }

    let (state_tx, state_rx) = watch::channel(PublisherState::Connecting);
    tasks.spawn(publisher::run(
        target,
        outbox.clone(),
        router,
        state_tx,
        shutdown.clone(),
    ));

    let discovery = if cfg.ssdp.enabled {
        let socket = ssdp::bind_socket(cfg.ssdp.listen, !cfg.ssdp.listen.ip().is_loopback())
            .with_context(|| format!("cannot listen for printer announcements on {} (broker.ssdp.listen); set broker.ssdp.enabled = false to skip discovery", cfg.ssdp.listen))?;
        let d = Discovery::new(DiscoveryList::default());
        tasks.spawn(ssdp::run_listener(socket, d.clone(), shutdown.clone()));
        Some(d)
    } else {
        None
    };

    let mdns = if cfg.mdns.enabled {
        let specs = crate::broker::mdns::service_specs(
            &cfg.mdns.instance,
            setup.web_port,
            mqtt_addr.map(|a| a.port()),
            mqtts_addr.map(|a| a.port()),
        );
        match crate::broker::mdns::announce(&specs, &cfg.mdns.hostname) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(
                    "mDNS announcements are off: {e}; reach the gateway by its IP address"
                );
                None
            }
        }
    } else {
        None
    };

    Ok(Some(BrokerHandle {
        mdns,
        mqtt_addr,
        mqtts_addr,
        ws_addr,
        discovery,
        publisher: state_rx,
        endpoint,
        stats: outbox.stats(),
        broker_worker,
        outbox,
        facts,
        topic_ids,
        tree,
        fleet,
        shutdown,
        tasks,
    }))
}

/// What every printer's bridge task shares: the printers' online flags for the gateway status,
/// the topic tree and the gateway's web address.
struct GatewayScope {
    online: Mutex<HashMap<String, bool>>,
    tree: topics::Tree,
    web_url: Option<String>,
}

async fn bridge_printer(
    mut p: BrokerPrinter,
    id: String,
    mut facts: watch::Receiver<GatewayFacts>,
    outbox: Arc<Outbox>,
    online: Arc<GatewayScope>,
    hms_text: HmsTextFn,
    shutdown: CancellationToken,
) {
    let mut prev = p.snapshots.borrow_and_update().clone();
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = p.snapshots.changed() => if r.is_err() { return },
                r = facts.changed() => if r.is_err() { return },
            }
        }
        first = false;
        let snap = p.snapshots.borrow_and_update().clone();
        let f = *facts.borrow_and_update();
        let view = printer_view(
            &p.name,
            p.model,
            &snap,
            Instant::now(),
            hms_text,
            crate::views::PlateView::default(),
            false,
        );
        let is_online = view.online;
        let mut payload = topics::state_payload(view, f, chrono::Utc::now());
        // Report age changes every second; keep it out of the retained message.
        payload.printer.report_age_secs = None;
        if let Ok(json) = serde_json::to_vec(&payload) {
            outbox.set_retained(online.tree.state(&id), json);
        }
        outbox.set_retained(
            online.tree.availability(&id),
            if is_online { ONLINE } else { OFFLINE }.into(),
        );
        for ev in crate::printer::events::diff(&prev, &snap) {
            let e = EventPayload {
                kind: ev.kind.as_str().into(),
                detail: ev.detail.to_string(),
                at_ms: chrono::Utc::now().timestamp_millis(),
            };
            if let Ok(json) = serde_json::to_vec(&e) {
                outbox.send(online.tree.events(&id), json);
            }
        }
        prev = snap;
        let status = online.online.lock().ok().map(|mut m| {
            m.insert(p.name.clone(), is_online);
            GatewayStatus {
                version: env!("CARGO_PKG_VERSION").into(),
                printers: m.len(),
                printers_online: m.values().filter(|o| **o).count(),
                safety_tripped: None,
                gateway_id: online.tree.gateway_id().map(str::to_string),
                web_url: online.web_url.clone(),
            }
        });
        if let Some(s) = status
            && let Ok(json) = serde_json::to_vec(&s)
        {
            outbox.set_retained(online.tree.gateway_status(), json);
        }
    }
}
