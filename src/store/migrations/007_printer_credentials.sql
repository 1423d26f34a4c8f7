-- MQTT logins printgate issues to Klipper printers (Moonraker's [mqtt] username/password). Each
-- login may only use its printer's `{instance_name}/…` topics. The password is random (128 bits)
-- and stored as its SHA-256 (hex), like API tokens: a copy of this file gives no login.
CREATE TABLE printer_credentials (
    printer TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    instance_name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
