//! Bambu Lab LAN link: MQTT 3.1.1 over TLS 1.2, report merge, commands, FTPS upload.
pub mod ftps;
