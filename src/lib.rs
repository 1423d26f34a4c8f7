//! printgate: a LAN gateway for 3D printers that never starts a print until a person has tapped
//! "plate clear". The crate root only declares the rooms (docs/architecture.md has the map);
//! [`app::start`] builds the whole application from a [`config::Config`] so that `serve`,
//! `demo` and the integration tests run identical code. The re-exports below serve `main.rs`,
//! the tests and the benchmarks; rooms name the room that defines an item.

pub mod admission;
pub mod alerts;
pub mod app;
pub mod backup;
pub mod broker;
pub mod camera;
pub mod config;
pub mod controls;
pub mod doctor;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod printer;
pub mod safety;
pub mod sim;
pub mod store;
pub mod views;
pub mod virtual_printer;
pub mod web;

pub use app::{Gateway, PrinterEntry, RunningGateway, broker_printers, start};
pub use config::printer_unique_id;
pub use store::DATABASE_FILE;
