//! The `printer_events` table: a per-printer history (link changes, state changes, HMS codes,
//! print errors, and job/plate/safety events recorded by other parts), newest first on read.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// The kind of a printer event, stored as its snake_case name. Other parts define their own
/// kinds next to their code: `pub const PLATE_CLEARED: EventKind = EventKind::new("plate_cleared");`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventKind(&'static str);

impl EventKind {
    pub const LINK_UP: EventKind = EventKind::new("link_up");
    pub const LINK_DOWN: EventKind = EventKind::new("link_down");
    pub const LINK_STATE: EventKind = EventKind::new("link_state");
    pub const GCODE_STATE: EventKind = EventKind::new("gcode_state");
    pub const HMS_RAISED: EventKind = EventKind::new("hms_raised");
    pub const HMS_CLEARED: EventKind = EventKind::new("hms_cleared");
    pub const PRINT_ERROR: EventKind = EventKind::new("print_error");

    /// A kind name: 1–40 characters of `a-z`, `0-9` and `_`. Meant for constants, where a bad
    /// name fails the build.
    pub const fn new(name: &'static str) -> EventKind {
        let b = name.as_bytes();
        assert!(
            !b.is_empty() && b.len() <= 40,
            "event kind: 1-40 characters"
        );
        let mut i = 0;
        while i < b.len() {
            assert!(
                b[i].is_ascii_lowercase() || b[i].is_ascii_digit() || b[i] == b'_',
                "event kind: only a-z, 0-9 and _"
            );
            i += 1;
        }
        EventKind(name)
    }

    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: i64,
    /// Printer name.
    pub printer: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The kind's name (compare with [`EventKind::as_str`]).
    pub kind: String,
    pub detail: serde_json::Value,
}

/// One row of `SELECT e.id, p.name, e.at_ms, e.kind, e.detail`.
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    let detail: String = r.get(4)?;
    Ok(EventRow {
        id: r.get(0)?,
        printer: r.get(1)?,
        at_ms: r.get(2)?,
        kind: r.get(3)?,
        // The column is CHECKed to be valid JSON; keep the text if it ever is not.
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
    })
}

impl Store {
    /// Append an event for the printer called `printer`; returns the event id.
    pub fn record_event(
        &self,
        printer: &str,
        kind: EventKind,
        detail: &serde_json::Value,
        at_ms: i64,
    ) -> Result<i64, StoreError> {
        let conn = self.conn();
        let printer_id: i64 = conn
            .query_row("SELECT id FROM printers WHERE name = ?1", [printer], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::UnknownPrinter(printer.to_string()))?;
        conn.execute(
            "INSERT INTO printer_events (printer_id, at_ms, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![printer_id, at_ms, kind.as_str(), detail.to_string()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// The newest `limit` events (newest first), of one printer or of all.
    pub fn recent_events(
        &self,
        printer: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        let conn = self.conn();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let printer_id: Option<i64> = match printer {
            None => None,
            Some(name) => Some(
                conn.query_row("SELECT id FROM printers WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?
                .ok_or_else(|| StoreError::UnknownPrinter(name.to_string()))?,
            ),
        };
        let mut stmt = conn.prepare_cached(
            "SELECT e.id, p.name, e.at_ms, e.kind, e.detail
             FROM printer_events e JOIN printers p ON p.id = e.printer_id
             WHERE ?1 IS NULL OR e.printer_id = ?1
             ORDER BY e.at_ms DESC, e.id DESC
             LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![printer_id, limit], event_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The newest `limit` events of one kind, of every printer, oldest first (e.g. every
    /// `gcode_state` change, from which the history derives each print the gateway saw).
    pub fn events_of_kind(
        &self,
        kind: EventKind,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        let conn = self.conn();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = conn.prepare_cached(
            "SELECT e.id, p.name, e.at_ms, e.kind, e.detail
             FROM printer_events e JOIN printers p ON p.id = e.printer_id
             WHERE e.kind = ?1
             ORDER BY e.at_ms DESC, e.id DESC
             LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![kind.as_str(), limit], event_row)?;
        let mut rows = rows.collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    /// Forget events older than `older_than_ms` and, per printer, all but the newest
    /// `keep_per_printer`, so the history cannot fill a Pi's SD card. Returns how many went.
    pub fn prune_events(
        &self,
        older_than_ms: i64,
        keep_per_printer: usize,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut removed = tx.execute(
            "DELETE FROM printer_events WHERE at_ms < ?1",
            [older_than_ms],
        )?;
        let keep = i64::try_from(keep_per_printer).unwrap_or(i64::MAX);
        let printers: Vec<i64> = {
            let mut stmt = tx.prepare("SELECT DISTINCT printer_id FROM printer_events")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        for printer_id in printers {
            removed += tx.execute(
                "DELETE FROM printer_events WHERE id IN (
                   SELECT id FROM printer_events WHERE printer_id = ?1
                   ORDER BY at_ms DESC, id DESC LIMIT -1 OFFSET ?2)",
                params![printer_id, keep],
            )?;
        }
        tx.commit()?;
        Ok(removed)
    }
}
