//! Protocol-faithful Bambu printer simulator (MQTT over TLS, FTPS, SSDP, chamber camera,
//! print state machine),
//! used by `printgate demo`, `printgate sim` and the tests. See docs/bambu-protocol.md §12.
//!
//! Start one with [`SimPrinter::start`] (or several with [`SimFleet`]), tweak it through
//! [`SimKnobs`], and check what it received with [`SimPrinter::command_log`] and what it is
//! doing with [`SimPrinter::truth`].

pub mod camera;
pub mod cli;
pub mod fixtures;
pub mod ftps;
pub mod knobs;
pub mod log;
pub mod machine;
pub mod moonraker;
mod mqtt;
pub mod printer;
pub mod reports;
pub mod shapes;
pub mod ssdp;
pub mod storage;
pub mod tls;

pub use knobs::{AuthRefusal, Heater, KnobValues, RefusalStyle, SecondClientPolicy, SimKnobs};
pub use log::{LoggedCommand, SimTruth};
pub use machine::{SimSpool, default_external_spool, default_trays};
pub use printer::{SimConfig, SimFleet, SimPrinter};
pub use storage::SimStorage;
pub use tls::SimIdentity;
