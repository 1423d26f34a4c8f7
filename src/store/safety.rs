//! Safety rows: latched trips, the last commanded relay states and the safety audit log
//! (trips, resets, manual power changes). Structured parts of a trip are stored as JSON columns.

use super::{Store, StoreError};
use crate::safety::latch::{BootState, PowerChange, TripRecord, TripReset};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

/// One line of the safety audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SafetyAuditEntry {
    pub id: i64,
    pub at_unix_ms: i64,
    /// A user name, or `printgate` for automatic actions.
    pub actor: String,
    /// `trip`, `reset`, `power_on`, `power_off`.
    pub action: String,
    pub detail: String,
}

fn json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Other(format!("cannot encode trip: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(col: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Other(format!("stored safety trip has an unreadable {col}: {e}")))
}

const TRIP_COLUMNS: &str =
    "id, at_ms, cause, scope, affected_printers, relays_off, readings, reset_at_ms, reset_by";

type RawTrip = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<String>,
);

fn raw_trip(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawTrip> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
    ))
}

fn decode(raw: RawTrip) -> Result<TripRecord, StoreError> {
    let (id, at_ms, cause, scope, affected, relays, readings, reset_at, reset_by) = raw;
    Ok(TripRecord {
        id: Some(id),
        cause: parse("cause", &cause)?,
        scope: parse("scope", &scope)?,
        affected_printers: parse("affected_printers", &affected)?,
        relays_off: parse("relays_off", &relays)?,
        at_unix_ms: at_ms,
        readings: parse("readings", &readings)?,
        reset: match (reset_at, reset_by) {
            (Some(at_unix_ms), Some(by_user)) => Some(TripReset {
                at_unix_ms,
                by_user,
            }),
            _ => None,
        },
        relays_off_at: None,
    })
}

impl Store {
    /// Persist a trip, mark its relays off and log it. Returns the row id.
    pub fn record_trip(&self, rec: &TripRecord) -> Result<i64, StoreError> {
        let cause = json(&rec.cause)?;
        let scope = json(&rec.scope)?;
        let affected = json(&rec.affected_printers)?;
        let relays = json(&rec.relays_off)?;
        let readings = json(&rec.readings)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO safety_trips (at_ms, cause_kind, cause, scope, affected_printers, relays_off, readings)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![rec.at_unix_ms, rec.cause.kind(), cause, scope, affected, relays, readings],
        )?;
        let id = tx.last_insert_rowid();
        for pin in &rec.relays_off {
            tx.execute(
                "INSERT INTO safety_relays (pin, on_state, updated_at_ms) VALUES (?1, 0, ?2)
                 ON CONFLICT (pin) DO UPDATE SET on_state = 0, updated_at_ms = excluded.updated_at_ms",
                params![pin, rec.at_unix_ms],
            )?;
        }
        tx.execute(
            "INSERT INTO safety_audit (at_ms, actor, action, detail) VALUES (?1, 'printgate', 'trip', ?2)",
            params![rec.at_unix_ms, format!("#{id}: {}", rec.cause.describe())],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// The oldest trip not reset yet.
    pub fn latched_trip(&self) -> Result<Option<TripRecord>, StoreError> {
        let raw = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {TRIP_COLUMNS} FROM safety_trips WHERE reset_at_ms IS NULL ORDER BY id LIMIT 1"
                ),
                [],
                raw_trip,
            )
            .optional()?;
        raw.map(decode).transpose()
    }

    /// Every trip not reset yet, oldest first.
    pub fn open_trips(&self) -> Result<Vec<TripRecord>, StoreError> {
        let raws = {
            let conn = self.conn();
            let mut stmt = conn.prepare(&format!(
                "SELECT {TRIP_COLUMNS} FROM safety_trips WHERE reset_at_ms IS NULL ORDER BY id"
            ))?;
            stmt.query_map([], raw_trip)?
                .collect::<Result<Vec<_>, _>>()?
        };
        raws.into_iter().map(decode).collect()
    }

    /// The most recent trips, newest first (reset or not).
    pub fn trip_history(&self, limit: usize) -> Result<Vec<TripRecord>, StoreError> {
        let raws = {
            let conn = self.conn();
            let mut stmt = conn.prepare(&format!(
                "SELECT {TRIP_COLUMNS} FROM safety_trips ORDER BY id DESC LIMIT ?1"
            ))?;
            stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], raw_trip)?
                .collect::<Result<Vec<_>, _>>()?
        };
        raws.into_iter().map(decode).collect()
    }

    /// Reset every open trip, provided the newest open one is `confirmed_trip_id` (what the user
    /// saw and confirmed). Writes an audit row. Returns how many trips were reset. Relay states
    /// are left as they are (off).
    pub fn reset_trip(
        &self,
        by_user: &str,
        at_unix_ms: i64,
        confirmed_trip_id: i64,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let newest: Option<i64> = tx.query_row(
            "SELECT MAX(id) FROM safety_trips WHERE reset_at_ms IS NULL",
            [],
            |r| r.get(0),
        )?;
        match newest {
            None => return Err(StoreError::Other("no safety trip is latched".into())),
            Some(id) if id != confirmed_trip_id => {
                return Err(StoreError::Other(format!(
                    "trip #{id} was recorded after the one you confirmed (#{confirmed_trip_id}); review it and confirm again"
                )));
            }
            Some(_) => {}
        }
        let n = tx.execute(
            "UPDATE safety_trips SET reset_at_ms = ?1, reset_by = ?2 WHERE reset_at_ms IS NULL",
            params![at_unix_ms, by_user],
        )?;
        tx.execute(
            "INSERT INTO safety_audit (at_ms, actor, action, detail) VALUES (?1, ?2, 'reset', ?3)",
            params![
                at_unix_ms,
                by_user,
                format!("reset {n} trip(s) up to #{confirmed_trip_id}; relays left off")
            ],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Remember a manual relay change and log who made it.
    pub fn record_power_change(
        &self,
        change: &PowerChange,
        actor: &str,
        at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO safety_relays (pin, on_state, updated_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (pin) DO UPDATE SET on_state = excluded.on_state, updated_at_ms = excluded.updated_at_ms",
            params![change.pin, change.on, at_unix_ms],
        )?;
        tx.execute(
            "INSERT INTO safety_audit (at_ms, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
            params![
                at_unix_ms,
                actor,
                if change.on { "power_on" } else { "power_off" },
                format!(
                    "GPIO {} ({}){}",
                    change.pin,
                    change.printers.join(", "),
                    if change.forced {
                        ", forced while printing"
                    } else {
                        ""
                    }
                )
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Open trips and last relay states, for [`crate::safety::latch::TripController::new`].
    pub fn safety_boot_state(&self) -> Result<BootState, StoreError> {
        let open_trips = self.open_trips()?;
        let relay_states = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT pin, on_state FROM safety_relays")?;
            stmt.query_map([], |r| Ok((r.get::<_, u8>(0)?, r.get::<_, bool>(1)?)))?
                .collect::<Result<_, _>>()?
        };
        Ok(BootState {
            open_trips,
            relay_states,
        })
    }

    /// The most recent audit entries, newest first.
    pub fn safety_audit(&self, limit: usize) -> Result<Vec<SafetyAuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, at_ms, actor, action, detail FROM safety_audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(SafetyAuditEntry {
                    id: r.get(0)?,
                    at_unix_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
