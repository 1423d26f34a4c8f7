//! Protocol-faithful Bambu printer simulator (MQTT over TLS, FTPS, SSDP, print state machine),
//! used by `printgate demo`, `printgate sim` and the tests. See BAMBU-LAN.md §12.

pub mod fixtures;
pub mod ftps;
pub mod storage;
pub mod tls;
