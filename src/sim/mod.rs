//! Protocol-faithful Bambu printer simulator (MQTT over TLS, FTPS, SSDP, print state machine).
