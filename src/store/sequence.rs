//! MQTT command `sequence_id`s: never reused, also not across restarts (a reused id is refused
//! by the printer as 0x05024008, docs/bambu-protocol.md §4). Ids are handed out in blocks whose end is
//! committed to the `meta` table before the block is returned.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

/// The first id ever handed out.
pub const FIRST_SEQUENCE_ID: u64 = 20_000;
/// The last id ever handed out (printers parse ids as 32-bit signed integers).
pub const LAST_SEQUENCE_ID: u64 = i32::MAX as u64;

const KEY: &str = "sequence_next";

impl Store {
    /// Reserve `n` consecutive ids and return the first; none of them was handed out before.
    /// The reservation is on disk when this returns. `n = 0` returns the next free id without
    /// reserving anything.
    pub fn reserve_sequence_ids(&self, n: u64) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [KEY], |r| r.get(0))
            .optional()?;
        let first = match stored {
            None => FIRST_SEQUENCE_ID,
            Some(text) => text.parse::<u64>().map_err(|_| {
                StoreError::Other(format!(
                    "the stored sequence_next value {text:?} is not a number; the database may be damaged"
                ))
            })?,
        };
        if first > LAST_SEQUENCE_ID {
            return Err(StoreError::SequenceIdsExhausted);
        }
        let next = first
            .checked_add(n)
            .filter(|next| *next <= LAST_SEQUENCE_ID + 1)
            .ok_or(StoreError::SequenceIdsExhausted)?;
        if n > 0 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![KEY, next.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(first)
    }
}
