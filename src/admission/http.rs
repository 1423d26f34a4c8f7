//! The HTTP accept loop of the web interface and of MQTT over WebSocket, in place of
//! `axum::serve`, which has no header timeout and no limit on connections that never send a
//! request (slowloris: each holds a task and a file descriptor for ever).
//!
//! Every accepted connection first needs a [`Ticket`] from its listener's [`Admission`]
//! (limited per source address and in total; refused ones are closed at once and counted for
//! the summary line). It keeps the ticket until its first complete request head arrives (web)
//! or until the WebSocket upgrade handler takes it over for the MQTT login
//! ([`PendingTicket::take`]); a connection still holding it at the ticket's deadline is
//! closed. Request heads must arrive within `header_timeout` (hyper's header read timeout, which
//! also closes keep-alive connections idle for that long).

use crate::admission::{Admission, Limits, Ticket};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A request head must be complete this long after the connection opened or went idle.
pub const WEB_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Web connections without a complete first request, per source address (a browser opens at
/// most ~6 at once).
pub const WEB_PENDING_PER_ADDRESS: usize = 16;
/// Web connections without a complete first request, from all addresses together.
pub const WEB_PENDING_TOTAL: usize = 256;

/// The web interface's budget of connections that have not sent a request yet.
pub fn web_admission() -> Arc<Admission> {
    Admission::new(Limits {
        what: "web",
        before: "before a complete request",
        per_address: WEB_PENDING_PER_ADDRESS,
        total: WEB_PENDING_TOTAL,
        deadline: WEB_HEADER_TIMEOUT,
        settings: "README \"Connections that never log in\"",
    })
}

/// How one listener serves its connections.
#[derive(Clone)]
pub struct HttpLimits {
    pub admission: Arc<Admission>,
    pub header_timeout: Duration,
    /// `false`: the ticket ends with the first request head (web). `true`: every request
    /// carries the connection's [`PendingTicket`] for its handler to take (WebSocket upgrade).
    pub hand_over: bool,
}

/// The ticket of the connection a request came on, while nobody has taken it.
#[derive(Clone, Default)]
pub struct PendingTicket(Arc<Mutex<Option<Ticket>>>);

impl PendingTicket {
    fn new(ticket: Ticket) -> Self {
        PendingTicket(Arc::new(Mutex::new(Some(ticket))))
    }

    /// The ticket, once: whoever takes it answers for the connection's login from now on.
    pub fn take(&self) -> Option<Ticket> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Serve `app` on `listener` until `shutdown`; then let open connections finish their current
/// request and return when all have closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors or the like: wait for connections to close.
                    tracing::warn!(listener = limits.admission.limits().what, "accepting a connection failed: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let Some(ticket) = limits.admission.admit(peer.ip()) else {
            continue;
        };
        connections.spawn(connection(
            stream,
            peer,
            app.clone(),
            ticket,
            limits.clone(),
            shutdown.clone(),
        ));
    }
    while connections.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    ticket: Ticket,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let deadline = ticket.deadline;
    let pending = PendingTicket::new(ticket);
    let for_requests = pending.clone();
    let hand_over = limits.hand_over;
    let inner = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if hand_over {
            req.extensions_mut().insert(for_requests.clone());
        } else {
            // A complete request head: this connection is no longer one that never sends one.
            drop(for_requests.take());
        }
        hyper::service::Service::call(&inner, req)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
    );
    let mut expire = pin!(tokio::time::sleep_until(deadline));
    let (mut expired, mut closing) = (false, false);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout()
                        && let Some(t) = pending.take()
                    {
                        t.timed_out();
                    }
                    tracing::debug!(%peer, "HTTP connection ended: {e}");
                }
                return;
            }
            _ = &mut expire, if !expired => {
                expired = true;
                if let Some(t) = pending.take() {
                    t.timed_out();
                    return;
                }
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
