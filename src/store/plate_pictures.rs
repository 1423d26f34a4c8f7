//! Camera pictures of a plate kept for history (migration `012_plate_pictures.sql`): the
//! picture a person saw when they confirmed Plate clear, by tap id (history shows it for the
//! start that tap allowed), and the last frame when a print ended. Holds rows only: the caller
//! checks the JPEG (`camera::picture`); the tap itself, its commit and its consumption are
//! `store/jobs.rs`'s, untouched by a picture.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;

/// Pictures of taps that were never recorded (a page opened, the tap refused before it was
/// recorded, or never sent) are removed after this long.
pub const UNUSED_PICTURE_MS: i64 = 24 * 3600 * 1000;
/// Pictures kept per printer, newest first (two per print for the 200 prints history lists).
pub const PICTURES_KEPT_PER_PRINTER: i64 = 400;

/// What a picture shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PictureKind {
    /// Shown on the Plate clear confirmation and confirmed with a tap.
    Confirmed,
    /// The camera's last frame when a print ended.
    PrintEnd,
}

impl PictureKind {
    fn as_str(self) -> &'static str {
        match self {
            PictureKind::Confirmed => "confirmed",
            PictureKind::PrintEnd => "print_end",
        }
    }
}

/// A stored picture, bytes and all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPicture {
    pub id: i64,
    pub printer: String,
    pub jpeg: Vec<u8>,
    /// When the camera sent it (Unix ms).
    pub taken_at_ms: i64,
}

/// Where a picture is, without its bytes (for a page that links it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureRef {
    pub id: i64,
    pub taken_at_ms: i64,
}

/// A print-end picture: which end it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintEndPicture {
    pub printer: String,
    pub print_ended_at_ms: i64,
    pub picture: PictureRef,
}

/// What to store.
pub struct NewPicture<'a> {
    pub printer: &'a str,
    pub jpeg: &'a [u8],
    pub taken_at_ms: i64,
    pub now_ms: i64,
}

impl Store {
    /// Keep the picture shown with tap `tap_id` (a retried tap keeps the first one).
    pub fn save_confirmed_picture(
        &self,
        tap_id: &str,
        p: &NewPicture<'_>,
    ) -> Result<(), StoreError> {
        self.save_picture(PictureKind::Confirmed, Some(tap_id), None, p)
    }

    /// Keep the last frame of the print `printer` ended at `ended_at_ms`.
    pub fn save_print_end_picture(
        &self,
        ended_at_ms: i64,
        p: &NewPicture<'_>,
    ) -> Result<(), StoreError> {
        self.save_picture(PictureKind::PrintEnd, None, Some(ended_at_ms), p)
    }

    fn save_picture(
        &self,
        kind: PictureKind,
        tap_id: Option<&str>,
        ended_at_ms: Option<i64>,
        p: &NewPicture<'_>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO plate_pictures
                 (printer, kind, tap_id, print_ended_at_ms, taken_at_ms, stored_at_ms, jpeg)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(tap_id) DO NOTHING",
            params![
                p.printer,
                kind.as_str(),
                tap_id,
                ended_at_ms,
                p.taken_at_ms,
                p.now_ms,
                p.jpeg
            ],
        )?;
        tx.execute(
            "DELETE FROM plate_pictures WHERE kind = 'confirmed' AND stored_at_ms < ?1
             AND tap_id NOT IN (SELECT tap_id FROM plate_taps)",
            [p.now_ms - UNUSED_PICTURE_MS],
        )?;
        tx.execute(
            "DELETE FROM plate_pictures WHERE printer = ?1 AND id NOT IN
                 (SELECT id FROM plate_pictures WHERE printer = ?1 ORDER BY id DESC LIMIT ?2)",
            params![p.printer, PICTURES_KEPT_PER_PRINTER],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Picture `id`, bytes and all.
    pub fn plate_picture(&self, id: i64) -> Result<Option<StoredPicture>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT id, printer, jpeg, taken_at_ms FROM plate_pictures WHERE id = ?1",
                [id],
                |r| {
                    Ok(StoredPicture {
                        id: r.get(0)?,
                        printer: r.get(1)?,
                        jpeg: r.get(2)?,
                        taken_at_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// The pictures confirmed with the taps `tap_ids`, by tap id (taps without one are absent).
    pub fn confirmed_pictures(
        &self,
        tap_ids: &[&str],
    ) -> Result<HashMap<String, PictureRef>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, taken_at_ms FROM plate_pictures WHERE kind = 'confirmed' AND tap_id = ?1",
        )?;
        let mut found = HashMap::new();
        for tap in tap_ids {
            let row = stmt
                .query_row([tap], |r| {
                    Ok(PictureRef {
                        id: r.get(0)?,
                        taken_at_ms: r.get(1)?,
                    })
                })
                .optional()?;
            if let Some(p) = row {
                found.insert((*tap).to_string(), p);
            }
        }
        Ok(found)
    }

    /// Every print-end picture kept, oldest first.
    pub fn print_end_pictures(&self) -> Result<Vec<PrintEndPicture>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT printer, print_ended_at_ms, id, taken_at_ms FROM plate_pictures
             WHERE kind = 'print_end' ORDER BY print_ended_at_ms, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PrintEndPicture {
                printer: r.get(0)?,
                print_ended_at_ms: r.get(1)?,
                picture: PictureRef {
                    id: r.get(2)?,
                    taken_at_ms: r.get(3)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture<'a>(printer: &'a str, jpeg: &'a [u8], now_ms: i64) -> NewPicture<'a> {
        NewPicture {
            printer,
            jpeg,
            taken_at_ms: now_ms - 500,
            now_ms,
        }
    }

    fn record_tap(store: &Store, tap_id: &str) {
        store
            .conn()
            .execute(
                "INSERT INTO plate_taps (tap_id, printer, tapped_by, tapped_at_ms) VALUES (?1, 'P1', 'ann', 1)",
                [tap_id],
            )
            .unwrap();
    }

    #[test]
    fn a_confirmed_picture_is_found_by_its_tap_and_a_retry_keeps_the_first() {
        let store = Store::open_in_memory().unwrap();
        store
            .save_confirmed_picture("tap-1", &picture("P1", b"\xff\xd8first\xff\xd9", 10_000))
            .unwrap();
        store
            .save_confirmed_picture("tap-1", &picture("P1", b"\xff\xd8again\xff\xd9", 11_000))
            .unwrap();
        let found = store.confirmed_pictures(&["tap-1", "tap-2"]).unwrap();
        assert_eq!(found.len(), 1, "no picture for tap-2");
        let r = found["tap-1"];
        assert_eq!(r.taken_at_ms, 9_500);
        let p = store.plate_picture(r.id).unwrap().unwrap();
        assert_eq!(p.jpeg, b"\xff\xd8first\xff\xd9");
        assert_eq!(p.printer, "P1");
        assert!(store.plate_picture(r.id + 1).unwrap().is_none());
    }

    #[test]
    fn pictures_of_taps_never_recorded_go_after_a_day_and_each_printer_keeps_the_newest() {
        let store = Store::open_in_memory().unwrap();
        let jpeg = b"\xff\xd8x\xff\xd9";
        store
            .save_confirmed_picture("recorded", &picture("P1", jpeg, 1_000))
            .unwrap();
        record_tap(&store, "recorded");
        store
            .save_confirmed_picture("never-sent", &picture("P1", jpeg, 1_000))
            .unwrap();
        let later = 1_000 + UNUSED_PICTURE_MS + 1;
        store
            .save_print_end_picture(later, &picture("P1", jpeg, later))
            .unwrap();
        let found = store
            .confirmed_pictures(&["recorded", "never-sent"])
            .unwrap();
        assert!(found.contains_key("recorded"), "its tap was recorded");
        assert!(!found.contains_key("never-sent"), "a day old, no tap");

        for i in 0..PICTURES_KEPT_PER_PRINTER + 5 {
            store
                .save_print_end_picture(later + i, &picture("P2", jpeg, later + i))
                .unwrap();
        }
        let ends = store.print_end_pictures().unwrap();
        let p2: Vec<_> = ends.iter().filter(|e| e.printer == "P2").collect();
        assert_eq!(p2.len() as i64, PICTURES_KEPT_PER_PRINTER);
        assert_eq!(p2[0].print_ended_at_ms, later + 5, "the oldest went first");
        assert_eq!(ends.iter().filter(|e| e.printer == "P1").count(), 1);
        assert!(
            store
                .confirmed_pictures(&["recorded"])
                .unwrap()
                .contains_key("recorded"),
            "another printer's pictures do not push P1's out"
        );
    }

    #[test]
    fn the_table_refuses_what_is_not_a_bounded_picture() {
        let store = Store::open_in_memory().unwrap();
        let big = vec![0u8; 1024 * 1024 + 1];
        assert!(
            store
                .save_confirmed_picture("t", &picture("P1", &big, 1))
                .is_err()
        );
        assert!(
            store
                .save_confirmed_picture("t", &picture("P1", b"", 1))
                .is_err()
        );
    }
}
