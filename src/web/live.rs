//! Live updates for the pages: one Server-Sent Events stream (`GET /live`) per page.
//!
//! The first message (and the first after a reconnect, whatever its `Last-Event-ID`) is a full
//! `state` snapshot; after that only what changed is sent: one `printer` message per printer
//! whose view changed, and a `queue` message when the queue changed. Changes are coalesced to at
//! most a few messages per second, and a comment is sent every 15 s so proxies keep the stream
//! open. The page shows "gateway unreachable" while the stream is down.
//!
//! Each printer in a message carries `card_html`, its card's live part rendered from the same
//! template the pages include (`card_body.html`), and the queue carries `html` (the dashboard's
//! `queue_body.html`), with the stream's own CSRF token in their forms: the page updates in place
//! from them and never reloads, so what it shows cannot drift from the page without JavaScript.

use super::auth::CurrentUser;
use super::queue::{JobView, queue_views};
use crate::app::Gateway;
use crate::views::PrinterView;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::Stream;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Minimum time between two batches of messages on one stream.
const COALESCE: Duration = Duration::from_millis(250);

#[derive(Serialize)]
struct FullState<'a> {
    printers: Vec<PrinterMessage<'a>>,
    jobs: &'a [JobView],
    queue_paused: bool,
    /// The dashboard's queue list.
    queue_html: String,
}

/// A printer's view and its card's live part.
#[derive(Serialize)]
struct PrinterMessage<'a> {
    #[serde(flatten)]
    view: &'a PrinterView,
    card_html: String,
}

impl<'a> PrinterMessage<'a> {
    fn new(view: &'a PrinterView, csrf: &str) -> Self {
        PrinterMessage {
            view,
            card_html: super::card_html(view, csrf),
        }
    }
}

/// What the stream last sent, to compute the next diff.
#[derive(Default)]
struct Sent {
    printers: Vec<String>,
    queue: String,
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The messages that bring a page from `sent` to the current state (all of it when `full`).
fn messages(gw: &Gateway, sent: &mut Sent, full: bool, csrf: &str) -> Vec<(&'static str, String)> {
    let printers = super::printer_views(gw);
    let jobs = queue_views(gw);
    let queue_paused = gw.dispatcher.state().queue_paused;
    let printer_json: Vec<String> = printers.iter().map(to_json).collect();
    let queue_json = to_json(&(&jobs, queue_paused));
    let mut out = Vec::new();
    if full {
        out.push((
            "state",
            to_json(&FullState {
                printers: printers
                    .iter()
                    .map(|p| PrinterMessage::new(p, csrf))
                    .collect(),
                jobs: &jobs,
                queue_paused,
                queue_html: super::queue_html(gw, &jobs, queue_paused, csrf),
            }),
        ));
    } else {
        for (i, json) in printer_json.iter().enumerate() {
            if sent.printers.get(i) != Some(json)
                && let Some(view) = printers.get(i)
            {
                out.push(("printer", to_json(&PrinterMessage::new(view, csrf))));
            }
        }
        if sent.queue != queue_json {
            out.push((
                "queue",
                to_json(&serde_json::json!({
                    "jobs": jobs,
                    "queue_paused": queue_paused,
                    "html": super::queue_html(gw, &jobs, queue_paused, csrf),
                })),
            ));
        }
    }
    sent.printers = printer_json;
    sent.queue = queue_json;
    out
}

/// `GET /live`: the page's event stream.
pub async fn live(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel::<Event>(16);
    tokio::spawn(feed(gw, tx, user.csrf_token().to_string()));
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Produce the messages of one stream until the client goes away or the gateway stops.
async fn feed(gw: Arc<Gateway>, tx: mpsc::Sender<Event>, csrf: String) {
    let mut sent = Sent::default();
    let mut id: u64 = 0;
    let mut dispatch = gw.dispatcher.subscribe();
    let mut links: Vec<_> = gw.printers.iter().map(|p| p.link.subscribe()).collect();
    let mut full = true;
    loop {
        for (name, data) in messages(&gw, &mut sent, full, &csrf) {
            id += 1;
            let event = Event::default().event(name).id(id.to_string()).data(data);
            if tx.send(event).await.is_err() {
                return;
            }
        }
        full = false;
        // Wait for any change, then coalesce whatever else changes right after it.
        let any_link = async {
            if links.is_empty() {
                std::future::pending::<()>().await;
            } else {
                let _ =
                    futures::future::select_all(links.iter_mut().map(|rx| Box::pin(rx.changed())))
                        .await;
            }
        };
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            r = dispatch.changed() => if r.is_err() { return },
            _ = any_link => {},
        }
        tokio::time::sleep(COALESCE).await;
        dispatch.borrow_and_update();
        for rx in &mut links {
            rx.borrow_and_update();
        }
    }
}
