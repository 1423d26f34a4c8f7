//! MQTT logins for Klipper printers: one per printer, issued from the web UI or API, each
//! limited by the broker's ACL to its printer's `{instance_name}/…` topics. Only the SHA-256 of
//! the (random, 128-bit) password is stored.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

/// A stored login (never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterCredential {
    pub printer: String,
    pub username: String,
    pub instance_name: String,
    pub created_at_ms: i64,
}

/// SHA-256 hex of a password as stored.
pub fn secret_hash(password: &str) -> String {
    hex::encode(Sha256::digest(password.as_bytes()))
}

/// The user name printgate gives a printer's login.
pub fn username_for(instance_name: &str) -> String {
    format!("moonraker-{instance_name}")
}

impl Store {
    /// Issue a new random password for `printer` (replacing any earlier one) and return it;
    /// it is shown once and never stored in the clear.
    pub fn issue_printer_credential(
        &self,
        printer: &str,
        instance_name: &str,
        now_ms: i64,
    ) -> Result<(PrinterCredential, String), StoreError> {
        let password = hex::encode(rand::random::<[u8; 16]>());
        let cred = PrinterCredential {
            printer: printer.to_string(),
            username: username_for(instance_name),
            instance_name: instance_name.to_string(),
            created_at_ms: now_ms,
        };
        let conn = self.conn();
        conn.execute(
            "INSERT INTO printer_credentials (printer, username, instance_name, secret_hash, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (printer) DO UPDATE SET username = excluded.username,
               instance_name = excluded.instance_name, secret_hash = excluded.secret_hash,
               created_at_ms = excluded.created_at_ms",
            params![
                cred.printer,
                cred.username,
                cred.instance_name,
                secret_hash(&password),
                now_ms
            ],
        )?;
        drop(conn);
        // A re-issued login replaces the earlier password.
        self.credentials_changed();
        Ok((cred, password))
    }

    /// The login of `printer`, if one was issued.
    pub fn printer_credential(
        &self,
        printer: &str,
    ) -> Result<Option<PrinterCredential>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT printer, username, instance_name, created_at_ms FROM printer_credentials WHERE printer = ?1",
                [printer],
                |r| {
                    Ok(PrinterCredential {
                        printer: r.get(0)?,
                        username: r.get(1)?,
                        instance_name: r.get(2)?,
                        created_at_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// The instance name a user name + password may use, if they match an issued login.
    pub fn check_printer_credential(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT instance_name FROM printer_credentials WHERE username = ?1 AND secret_hash = ?2",
                params![username, secret_hash(password)],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Withdraw a printer's login.
    pub fn revoke_printer_credential(&self, printer: &str) -> Result<bool, StoreError> {
        let removed = self.conn().execute(
            "DELETE FROM printer_credentials WHERE printer = ?1",
            [printer],
        )? > 0;
        if removed {
            self.credentials_changed();
        }
        Ok(removed)
    }
}
