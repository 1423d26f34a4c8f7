//! printgate: a LAN gateway for 3D printers that never starts a print until a person has tapped
//! "plate clear". This crate root builds the whole application from a [`config::Config`] so that
//! `serve`, `demo` and the integration tests run identical code: [`start`] wires the store, the
//! printer links, the recorder and the web server, and everything stops on one cancellation token.

pub mod config;
pub mod jobs;
pub mod printer;
pub mod safety;
pub mod sim;
pub mod store;
pub mod web;

use config::{Config, Model};
use printer::PrinterLink;
use std::net::SocketAddr;
use std::sync::Arc;
use store::Store;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// One configured printer and its live link.
pub struct PrinterEntry {
    pub name: String,
    pub model: Model,
    pub link: Arc<dyn PrinterLink>,
}

/// Everything the running parts share.
pub struct Gateway {
    pub config: Config,
    pub store: Arc<Store>,
    pub printers: Vec<PrinterEntry>,
    pub shutdown: CancellationToken,
    /// Readable text for an HMS code (from the printer vendor's catalogue).
    pub hms_text: web::views::HmsTextFn,
}

/// A started gateway: its address and the handle to stop it.
pub struct RunningGateway {
    pub web_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    tasks: JoinSet<()>,
}

impl RunningGateway {
    /// Stop every task and wait for them to finish.
    pub async fn shutdown(mut self) {
        self.gateway.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Wait until the shutdown token is cancelled (signal or test) and every task has stopped.
    pub async fn wait(mut self) {
        self.gateway.shutdown.cancelled().await;
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Build every part from `config` and start it. Returns once the web server is listening.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<RunningGateway> {
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Arc::new(Store::open(&config.data_dir.join("printgate.sqlite"))?);
    let printers = Vec::new();
    let gateway = Arc::new(Gateway {
        config,
        store,
        printers,
        shutdown: shutdown.clone(),
        hms_text: |attr, code| format!("HMS {attr:08X} {code:08X}"),
    });
    let listener = tokio::net::TcpListener::bind(gateway.config.web.listen).await?;
    let web_addr = listener.local_addr()?;
    let mut tasks = JoinSet::new();
    let app = web::router(gateway.clone());
    let token = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("web server stopped: {e}");
        }
    });
    tracing::info!("web interface on http://{web_addr}");
    Ok(RunningGateway {
        web_addr,
        gateway,
        tasks,
    })
}
