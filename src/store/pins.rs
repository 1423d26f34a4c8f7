//! Certificate pins (trust on first use, docs/bambu-protocol.md §2.1): the SHA-256 fingerprint of each
//! printer's TLS leaf, keyed by serial. Once pinned, a different fingerprint is never stored
//! automatically; a person re-pairs explicitly ([`Store::clear_fingerprint`]).

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

impl Store {
    /// The pinned fingerprint of the printer with this serial (`None` = not paired yet).
    pub fn pinned_fingerprint(&self, serial: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT cert_fingerprint FROM printers WHERE serial = ?1",
                [serial],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::UnknownSerial(serial.to_string()))
    }

    /// Pin `fingerprint` for this serial on first use. Storing the same pin again is fine; a
    /// different one while a pin exists is refused ([`StoreError::FingerprintAlreadyPinned`]).
    pub fn store_fingerprint(&self, serial: &str, fingerprint: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE printers SET cert_fingerprint = ?2, updated_at = ?3
             WHERE serial = ?1 AND cert_fingerprint IS NULL",
            params![serial, fingerprint, super::now_ms()],
        )?;
        if changed == 1 {
            return Ok(());
        }
        let current: Option<String> = conn
            .query_row(
                "SELECT cert_fingerprint FROM printers WHERE serial = ?1",
                [serial],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::UnknownSerial(serial.to_string()))?;
        if current.as_deref() == Some(fingerprint) {
            Ok(())
        } else {
            Err(StoreError::FingerprintAlreadyPinned {
                serial: serial.to_string(),
            })
        }
    }

    /// Forget the pin (explicit re-pair by a person): the next successful connect pins anew.
    /// Returns whether a pin was removed.
    pub fn clear_fingerprint(&self, serial: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let pinned: Option<String> = conn
            .query_row(
                "SELECT cert_fingerprint FROM printers WHERE serial = ?1",
                [serial],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::UnknownSerial(serial.to_string()))?;
        if pinned.is_none() {
            return Ok(false);
        }
        conn.execute(
            "UPDATE printers SET cert_fingerprint = NULL, updated_at = ?2 WHERE serial = ?1",
            params![serial, super::now_ms()],
        )?;
        Ok(true)
    }
}

/// The Bambu link pins printer certificates in this database.
impl crate::printer::bambu::tls::PinStore for Store {
    fn pinned(&self, serial: &str) -> Option<String> {
        match self.pinned_fingerprint(serial) {
            Ok(fp) => fp,
            Err(e) => {
                tracing::error!("reading the pinned certificate of {serial}: {e}");
                None
            }
        }
    }
    fn store_pin(&self, serial: &str, fingerprint: &str) -> Result<(), String> {
        self.store_fingerprint(serial, fingerprint)
            .map_err(|e| e.to_string())
    }
}
