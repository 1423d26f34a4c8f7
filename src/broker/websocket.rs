//! MQTT over WebSocket for browser clients (MQTT.js and the like): `ws://<gateway>:<port>/mqtt`
//! with the `mqtt` subprotocol (`[broker] websocket_listen`). Each WebSocket is turned back into
//! a byte stream (binary frames in, binary frames out) and handed to the same front door as
//! plain and TLS clients ([`crate::broker::gate`]): same login, ACL, limits and connection
//! slots. Nothing else is served on this port.
//!
//! Connections are accepted by [`crate::admission::http`] with the front door's pre-login budget:
//! from accept to the MQTT login (HTTP request head, upgrade, CONNECT) a connection holds one
//! place of it and has one deadline (`broker.limits.connect_timeout_ms`).

use crate::admission::http::{HttpLimits, PendingTicket};
use crate::broker::gate::{self, Gate};
use axum::Extension;
use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bytes buffered between the WebSocket and the front door in each direction.
const PIPE_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct WsState {
    gate: Arc<Gate>,
    shutdown: CancellationToken,
}

/// Accept MQTT-over-WebSocket clients until `shutdown`.
pub async fn serve(listener: TcpListener, gate: Arc<Gate>, shutdown: CancellationToken) {
    let state = WsState {
        gate: gate.clone(),
        shutdown: shutdown.clone(),
    };
    let limits = HttpLimits {
        admission: gate.admission.clone(),
        header_timeout: Duration::from_millis(gate.limits.connect_timeout_ms),
        hand_over: true,
    };
    let app = Router::new()
        .route("/mqtt", get(upgrade))
        .route("/", get(upgrade))
        .with_state(state);
    crate::admission::http::serve(listener, app, limits, shutdown).await;
}

async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(pending): Extension<PendingTicket>,
    State(state): State<WsState>,
) -> Response {
    // The connection's place in the pre-login budget goes with it to the MQTT login.
    let Some(ticket) = pending.take() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this connection has already been upgraded once; open a new one",
        )
            .into_response();
    };
    let frame_limit = state.gate.limits.max_packet_bytes + 16;
    ws.protocols(["mqtt", "mqttv3.1"])
        .max_message_size(frame_limit)
        .on_upgrade(move |socket| async move {
            bridge(socket, peer, ticket, state).await;
        })
}

/// Pump frames between the WebSocket and a pipe whose other end the front door serves.
async fn bridge(socket: WebSocket, peer: SocketAddr, ticket: gate::Ticket, state: WsState) {
    let (door_side, ws_side) = tokio::io::duplex(PIPE_BYTES);
    let (mut from_door, mut to_door) = tokio::io::split(ws_side);
    let (mut sink, mut frames) = socket.split();
    let inbound = async {
        while let Some(Ok(msg)) = frames.next().await {
            match msg {
                Message::Binary(bytes) if to_door.write_all(&bytes).await.is_err() => break,
                Message::Binary(_) => {}
                Message::Close(_) => break,
                // MQTT over WebSocket is binary only; pings are answered by the library.
                _ => {}
            }
        }
        let _ = to_door.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_door.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = bytes::Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                    if sink.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    let door = gate::client(door_side, peer, &state.gate, ticket, state.shutdown.clone());
    // When either side of the pipe ends, the other pump is dropped (closing the WebSocket or
    // the front door's input), so a client that never answers a close cannot hold the task.
    let pumps = async {
        tokio::select! {
            _ = inbound => {}
            _ = outbound => {}
        }
    };
    tokio::join!(door, pumps);
}
