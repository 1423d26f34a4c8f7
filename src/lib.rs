//! printgate: a LAN gateway for 3D printers that never starts a print until a person has tapped
//! "plate clear". This crate root builds the whole application from a [`config::Config`] so that
//! `serve`, `demo` and the integration tests run identical code.

pub mod config;
pub mod jobs;
pub mod printer;
pub mod safety;
pub mod sim;
pub mod store;
pub mod web;
