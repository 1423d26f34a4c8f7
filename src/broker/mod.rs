//! The gateway's MQTT side: Bambu printer discovery (SSDP), the `printgate/<printer>/…` topic
//! tree, Home Assistant discovery, the embedded broker with its authentication and ACL (run in
//! a supervised child process, `worker` / `supervisor`), mDNS announcements, and
//! external-broker mode.

pub mod acl;
pub mod auth;
pub mod commands;
pub mod config;
pub mod embedded;
pub mod executor;
pub mod fleet;
pub mod gate;
pub mod ha;
pub mod mdns;
pub mod packets;
pub mod publisher;
pub mod service;
pub mod ssdp;
pub mod stats;
pub mod supervisor;
pub mod topics;
pub mod websocket;
pub mod worker;
