//! The `printers` table: the configured printers, upserted by name from `printgate.toml` at
//! start. The access code is never stored.

use super::{Store, StoreError, now_ms};
use crate::config::PrinterConfig;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use std::collections::HashMap;

/// A stored printer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterRow {
    pub id: i64,
    pub name: String,
    pub serial: String,
    /// [`crate::printer::Model::config_name`], e.g. `X1C`, `A1MINI`.
    pub model: String,
    pub host: String,
    /// Pinned SHA-256 of the printer's TLS leaf certificate (lowercase hex), if paired.
    pub cert_fingerprint: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Store {
    /// Make the `printers` table match the configuration, in one transaction. Rows are matched
    /// by name: a new name gets a new row, a known name has its serial, model and host updated.
    /// The pinned fingerprint belongs to the serial: it stays when the serial stays, moves along
    /// when a serial reappears under another name, and is dropped when a name gets a serial
    /// never seen before (also within one sync, so two printers swapping serials keep their
    /// pins apart). Rows of printers no longer configured are kept (their history refers
    /// to them). Never stores the access code.
    pub fn sync_printers(&self, printers: &[PrinterConfig]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        // Pins of serials that a row gave up during this sync, for the row that takes them.
        let mut released: HashMap<String, String> = HashMap::new();
        for p in printers {
            let model = p.model.config_name();
            // Klipper printers have no serial; their unique id takes the column.
            let serial = crate::config::printer_unique_id(p);
            let by_name: Option<(i64, String, String, String, Option<String>)> = tx
                .query_row(
                    "SELECT id, serial, model, host, cert_fingerprint FROM printers WHERE name = ?1",
                    [&p.name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let by_serial: Option<(i64, Option<String>)> = tx
                .query_row(
                    "SELECT id, cert_fingerprint FROM printers WHERE serial = ?1",
                    [&serial],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;

            // The serial is held by another row: take it over, with its pin.
            let mut carried_pin = released.remove(&serial);
            if let Some((other_id, pin)) = by_serial
                && by_name.as_ref().map(|(id, ..)| *id) != Some(other_id)
            {
                tx.execute(
                    "UPDATE printers SET serial = '~retired-' || id, cert_fingerprint = NULL,
                         updated_at = ?2 WHERE id = ?1",
                    params![other_id, now],
                )?;
                carried_pin = pin;
            }

            match by_name {
                Some((id, row_serial, old_model, old_host, _)) if row_serial == serial => {
                    if old_model != model || old_host != p.host {
                        tx.execute(
                            "UPDATE printers SET model = ?2, host = ?3, updated_at = ?4 WHERE id = ?1",
                            params![id, model, p.host, now],
                        )?;
                    }
                }
                Some((id, old_serial, _, _, old_pin)) => {
                    if let Some(pin) = old_pin {
                        released.insert(old_serial, pin);
                    }
                    tx.execute(
                        "UPDATE printers SET serial = ?2, cert_fingerprint = ?3, model = ?4,
                             host = ?5, updated_at = ?6 WHERE id = ?1",
                        params![id, serial, carried_pin, model, p.host, now],
                    )?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO printers
                             (name, serial, model, host, cert_fingerprint, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                        params![p.name, serial, model, p.host, carried_pin, now],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The row id of the printer called `name`.
    pub fn printer_id(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT id FROM printers WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// The stored printer called `name`.
    pub fn printer(&self, name: &str) -> Result<Option<PrinterRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, serial, model, host, cert_fingerprint, created_at, updated_at
                 FROM printers WHERE name = ?1",
                [name],
                |r| {
                    Ok(PrinterRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        serial: r.get(2)?,
                        model: r.get(3)?,
                        host: r.get(4)?,
                        cert_fingerprint: r.get(5)?,
                        created_at_ms: r.get(6)?,
                        updated_at_ms: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }
}
