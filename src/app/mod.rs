//! Composition: the room above every other. It builds the gateway from a `Config` in one place
//! ([`serve::start`]) and holds the shared handle the running parts receive
//! ([`gateway::Gateway`]), the `demo` wiring (simulators + a real gateway in one process) and
//! the gateway-level benchmark of `printgate bench`, and the task that keeps a picture of the
//! plate when a print ends (`plate_at_end`). Only `main.rs`, the tests and the
//! benchmarks name the wiring; the web handlers and the broker's command executor name only
//! `app::Gateway` (docs/architecture.md, "Walls").

pub mod bench;
pub mod demo;
pub mod gateway;
pub mod plate_at_end;
pub mod serve;

pub use gateway::{Gateway, PrinterEntry};
pub use serve::{RunningGateway, broker_printers, start};
