//! Composition: builds every part from a [`Config`] and runs them until shutdown, so that
//! `serve`, `demo`, `bench` and the integration tests run identical code. [`start`] wires the
//! store, the printer links, the dispatcher, the safety runtime, the web server and the MQTT
//! side, and everything stops on one cancellation token.

use super::gateway::{Gateway, PrinterEntry};
use crate::camera;
use crate::config::{self, Config};
use crate::printer::bambu::camera::{CameraError, CameraKind};
use crate::printer::{self, PrinterLink};
use crate::store::{DATABASE_FILE, Store};
use crate::{admission, alerts, broker, jobs, notify, safety, virtual_printer, web};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Command sequence ids reserved (and persisted) at each start.
const SEQUENCE_IDS_PER_BOOT: u64 = 100_000;

/// Write a printer's history rows (link and state changes, HMS) as its snapshots change.
async fn record_printer_events(
    store: Arc<Store>,
    name: String,
    mut rx: tokio::sync::watch::Receiver<printer::PrinterSnapshot>,
    shutdown: CancellationToken,
) {
    let mut prev = rx.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let next = rx.borrow_and_update().clone();
        let at_ms = chrono::Utc::now().timestamp_millis();
        for ev in printer::events::diff(&prev, &next) {
            if let Err(e) = store.record_event(&name, ev.kind, &ev.detail, at_ms) {
                tracing::warn!(printer = %name, "could not record a printer event: {e}");
            }
        }
        prev = next;
    }
}

/// Where a Bambu printer's camera is read: the chamber image on its `camera_port` with the
/// MQTT session's TLS config (same pin); RTSPS models and a TLS setup error say why not.
fn camera_target(
    pc: &config::PrinterConfig,
    bambu: &Arc<printer::bambu::BambuPrinter>,
) -> camera::CameraTarget {
    match CameraKind::of(pc.model) {
        CameraKind::ChamberImage => match bambu.tls_config() {
            Ok(tls) => {
                // A TLS session store of its own: a camera handshake must never replace the
                // session the FTPS data channel resumes (the printer's vsFTPd refuses a data
                // channel that resumes another session: "session reuse required").
                let mut own = (*tls).clone();
                own.resumption = rustls::client::Resumption::in_memory_sessions(8);
                let tls = Arc::new(own);
                let link = bambu.clone();
                camera::CameraTarget::ChamberImage(camera::ChamberTarget {
                    host: pc.host.clone(),
                    port: pc.camera_port,
                    serial: pc.serial.clone(),
                    access_code: pc.access_code.clone(),
                    tls,
                    signed_in: Arc::new(move || link.is_connected()),
                })
            }
            Err(e) => camera::CameraTarget::Unavailable(CameraError::Tls(e)),
        },
        CameraKind::Rtsps => camera::CameraTarget::Unavailable(CameraError::RtspsNotSupported),
        CameraKind::None => camera::CameraTarget::Unavailable(CameraError::NoCamera),
    }
}

/// Printer history kept: this many days, and at most this many events per printer.
pub const EVENT_RETENTION_DAYS: i64 = 90;
pub const EVENTS_PER_PRINTER: usize = 20_000;

/// Remove stored files no job refers to, every [`jobs::files::SWEEP_EVERY`] (the start-up
/// sweep runs when the file store opens).
async fn sweep_unreferenced_files(files: Arc<jobs::files::FileStore>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(jobs::files::SWEEP_EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match files.sweep_unreferenced(jobs::files::UPLOAD_GRACE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed stored files no job refers to"),
            Err(e) => tracing::warn!("could not sweep stored files: {e}"),
        }
    }
}

/// Prune the printer history at start and then daily.
async fn prune_events_daily(store: Arc<Store>, shutdown: CancellationToken) {
    let mut daily = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = daily.tick() => {}
        }
        let cutoff =
            chrono::Utc::now().timestamp_millis() - EVENT_RETENTION_DAYS * 24 * 3600 * 1000;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.prune_events(cutoff, EVENTS_PER_PRINTER))
            .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "pruned old printer history"),
            Ok(Err(e)) => tracing::warn!("could not prune the printer history: {e}"),
            Err(e) => tracing::warn!("printer history pruning stopped: {e}"),
        }
    }
}

/// Start the MQTT side and keep its gateway facts (plate, safety) in step with the dispatcher.
async fn start_broker(
    gateway: &Arc<Gateway>,
    web_addr: SocketAddr,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Option<broker::service::BrokerHandle>> {
    let cfg = &gateway.config;
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(64);
    let setup = broker::service::BrokerSetup {
        config: cfg.broker.clone(),
        data_dir: cfg.data_dir.clone(),
        web_url: Some(format!(
            "http://{}.local:{}/",
            cfg.broker.mdns.hostname,
            web_addr.port()
        )),
        web_port: web_addr.port(),
        hms_text: gateway.hms_text,
        executor: Some(cmd_tx),
        tokens: Some(broker::executor::token_check(gateway.store.clone())),
        printer_logins: Some(printer_login_check(gateway.store.clone())),
        credentials: Some(gateway.store.credentials()),
        printer_instances: cfg
            .printers
            .iter()
            .filter(|p| p.kind == config::PrinterKind::Moonraker)
            .map(|p| p.instance_name.clone())
            .collect(),
    };
    let printers = broker_printers(gateway);
    let Some(handle) = broker::service::start(setup, printers, shutdown.clone()).await? else {
        return Ok(None);
    };
    gateway.metrics.set_broker(handle.stats.clone());
    if let Some(f) = &handle.fleet {
        let _ = gateway.fleet.set(f.clone());
    }
    if let Some(d) = &handle.discovery {
        let _ = gateway.discovery.set(d.clone());
    }
    gateway
        .broker_endpoint
        .send_replace(Some(handle.endpoint.clone()));
    tasks.spawn(broker::executor::run(
        Arc::downgrade(gateway),
        cmd_rx,
        shutdown.clone(),
    ));
    tasks.spawn(feed_broker_facts(
        gateway.clone(),
        handle.facts_feed(),
        shutdown.clone(),
    ));
    Ok(Some(handle))
}

/// The broker accepts the logins issued to Klipper printers (checked against the store at each
/// CONNECT, so a re-issued or withdrawn login applies at once).
fn printer_login_check(store: Arc<Store>) -> broker::auth::PrinterLoginCheck {
    Arc::new(move |user, password| {
        store
            .check_printer_credential(user, password)
            .unwrap_or_else(|e| {
                tracing::warn!("could not check a printer login: {e}");
                None
            })
    })
}

/// The gateway's printers as the broker publishes them (state tree, Home Assistant devices).
pub fn broker_printers(gateway: &Gateway) -> Vec<broker::service::BrokerPrinter> {
    let cfg = &gateway.config;
    gateway
        .printers
        .iter()
        .map(|p| broker::service::BrokerPrinter {
            name: p.name.clone(),
            unique_id: cfg
                .printers
                .iter()
                .find(|c| c.name == p.name)
                .map(config::printer_unique_id)
                .unwrap_or_default(),
            model: p.model,
            snapshots: p.link.subscribe(),
            has_relay: cfg.safety.relays.iter().any(|r| r.printer == p.name),
        })
        .collect()
}

/// Publish plate and safety state on MQTT as the dispatcher's state changes.
async fn feed_broker_facts(
    gateway: Arc<Gateway>,
    broker: broker::service::FactsFeed,
    shutdown: CancellationToken,
) {
    let mut rx = gateway.dispatcher.subscribe();
    loop {
        let state = rx.borrow_and_update().clone();
        for p in &gateway.printers {
            let plate_clear = state
                .printers
                .get(&p.name)
                .is_some_and(|r| matches!(r.plate, jobs::plate::PlateState::Clear(_)));
            broker.set(
                &p.name,
                broker::topics::GatewayFacts {
                    plate_clear: Some(plate_clear),
                    safety_tripped: Some(state.safety_tripped),
                    power_on: None,
                },
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// A started gateway: its address and the handle to stop it.
pub struct RunningGateway {
    pub web_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// The MQTT side (embedded broker or external connection), unless `[broker] mode = "off"`.
    pub broker: Option<broker::service::BrokerHandle>,
    tasks: JoinSet<()>,
}

impl RunningGateway {
    /// Stop every task and wait for them to finish.
    pub async fn shutdown(mut self) {
        self.gateway.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }

    /// Wait until the shutdown token is cancelled (signal or test) and every task has stopped.
    pub async fn wait(mut self) {
        self.gateway.shutdown.cancelled().await;
        while self.tasks.join_next().await.is_some() {}
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }
}

/// Build every part from `config` and start it. Returns once the web server is listening.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<RunningGateway> {
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Arc::new(Store::open(&config.data_dir.join(DATABASE_FILE))?);
    store.sync_printers(&config.printers)?;
    // Command sequence ids are never reused, also not across restarts (docs/bambu-protocol.md §4).
    let first_id = store.reserve_sequence_ids(SEQUENCE_IDS_PER_BOOT)?;
    let seq = printer::bambu::commands::SequenceIds::new(first_id);
    let mut printers = Vec::new();
    let (broker_endpoint, endpoint_rx) = tokio::sync::watch::channel(None);
    for pc in &config.printers {
        let (link, camera): (Arc<dyn PrinterLink>, _) = match pc.kind {
            config::PrinterKind::Bambu => {
                let bambu = printer::bambu::BambuPrinter::spawn(
                    pc.clone(),
                    config.link.clone(),
                    store.clone(),
                    seq.clone(),
                    shutdown.child_token(),
                );
                let camera = camera_target(pc, &bambu);
                (bambu, camera)
            }
            config::PrinterKind::Moonraker => (
                printer::moonraker::MoonrakerPrinter::spawn(
                    pc.clone(),
                    config.link.clone(),
                    endpoint_rx.clone(),
                    seq.clone(),
                    shutdown.child_token(),
                ),
                camera::CameraTarget::Unavailable(CameraError::NoCamera),
            ),
        };
        printers.push(PrinterEntry {
            name: pc.name.clone(),
            model: pc.model,
            link,
            camera: camera::CameraHub::new(
                &pc.name,
                camera,
                camera::HubTimings::default(),
                shutdown.child_token(),
            ),
        });
    }
    let mirror_feeds = virtual_printer::take_feeds(&printers, &config.printers);
    let files = Arc::new(jobs::files::FileStore::new(
        &config.data_dir,
        store.clone(),
        jobs::files::FileLimits {
            max_file_bytes: config.web.max_upload_bytes(),
            ..jobs::files::FileLimits::default()
        },
    )?);
    let mut tasks = JoinSet::new();
    let dispatcher = jobs::runner::spawn(
        jobs::runner::RunnerParts {
            store: store.clone(),
            files: files.clone(),
            printers: printers
                .iter()
                .map(|p| jobs::runner::DispatchPrinter {
                    name: p.name.clone(),
                    model_code: p.model.model_code().to_string(),
                    link: p.link.clone(),
                })
                .collect(),
            timings: jobs::dispatcher::DispatchTimings::from(&config.dispatch),
            safety_tripped: store.latched_trip()?.is_some(),
            tick: std::time::Duration::from_secs(1),
        },
        shutdown.clone(),
        &mut tasks,
    )?;
    let safety = safety::runtime::spawn_safety(
        safety::runtime::SafetyParts {
            config: config.safety.clone(),
            store: store.clone(),
            printers: printers
                .iter()
                .map(|p| (p.name.clone(), p.model, p.link.clone()))
                .collect(),
            dispatcher: dispatcher.clone(),
            notifier: Arc::new(alerts::Notifier::new(config.alerts.clone())?),
        },
        shutdown.clone(),
        &mut tasks,
    )?;
    let gateway = Arc::new(Gateway {
        config,
        store,
        printers,
        files,
        dispatcher,
        shutdown: shutdown.clone(),
        discovery: std::sync::OnceLock::new(),
        hms_text: |attr, code| {
            let entry = printer::HmsEntry { attr, code };
            printer::bambu::errors::hms_text(&entry)
                .unwrap_or("health message not in printgate's list; see the printer's screen")
                .to_string()
        },
        safety: Some(safety),
        broker_endpoint,
        metrics: Arc::default(),
        fleet: std::sync::OnceLock::new(),
        virtual_printers: std::sync::OnceLock::new(),
    });
    let listener = admission::listen(gateway.config.web.listen)?;
    let web_addr = listener.local_addr()?;
    tasks.spawn(prune_events_daily(gateway.store.clone(), shutdown.clone()));
    tasks.spawn(sweep_unreferenced_files(
        gateway.files.clone(),
        shutdown.clone(),
    ));
    for p in &gateway.printers {
        tasks.spawn(record_printer_events(
            gateway.store.clone(),
            p.name.clone(),
            p.link.subscribe(),
            shutdown.clone(),
        ));
        tasks.spawn(super::plate_at_end::keep_end_pictures(
            gateway.store.clone(),
            p.name.clone(),
            p.camera.clone(),
            p.link.subscribe(),
            shutdown.clone(),
        ));
    }
    let app = web::router(gateway.clone());
    let admission = admission::http::web_admission();
    tasks.spawn(admission.clone().log_summaries(shutdown.clone()));
    tasks.spawn(admission::http::serve(
        listener,
        app,
        admission::http::HttpLimits {
            admission,
            header_timeout: admission::http::WEB_HEADER_TIMEOUT,
            hand_over: false,
        },
        shutdown.clone(),
    ));
    tracing::info!("web interface on http://{web_addr}");
    let broker = start_broker(&gateway, web_addr, &shutdown, &mut tasks).await?;
    let virtual_printers =
        virtual_printer::start(&gateway, mirror_feeds, &shutdown, &mut tasks).await?;
    if let Some(d) = gateway.discovery.get() {
        d.hide_serials(virtual_printers.iter().map(|v| v.serial.clone()));
    }
    let _ = gateway.virtual_printers.set(virtual_printers);
    notify::gateway_ready(&gateway, &mut tasks, shutdown.clone())?;
    Ok(RunningGateway {
        web_addr,
        gateway,
        broker,
        tasks,
    })
}
