//! The History page: every print the gateway saw, whoever started it (web::prints), with
//! its thumbnail, duration, result, who tapped Plate clear, the camera picture they confirmed
//! and the camera picture when it ended (web/plate_pictures.rs, app/plate_at_end.rs); statistics per printer and per
//! week; printgate jobs that never printed; and the recent events in sentences.

use super::auth::CurrentUser;
use super::event_text::{LocalTime, event_sentence, job_event_sentence, local_time};
use super::prints::{self, Outcome, Print, StartedJob, StateChange, Totals};
use super::queue::JobView;
use super::render;
use crate::app::Gateway;
use crate::jobs::model::JobState;
use crate::store::EventKind;
use crate::store::plate_pictures::{PictureRef, PrintEndPicture};
use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use std::collections::HashMap;
use std::sync::Arc;

/// How many recorded state changes the print list is derived from (the store prunes old events
/// per printer, so this bounds the page, not the history).
const STATE_CHANGES_READ: usize = 20_000;
/// Prints listed on the page.
const PRINTS_SHOWN: usize = 200;
/// Weeks in the statistics.
const WEEKS_SHOWN: usize = 8;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new().route("/history", get(page))
}

pub struct HistoryRow {
    pub at: LocalTime,
    pub printer: String,
    /// What happened, as a sentence (web::event_text).
    pub what: String,
}

/// One print as a table row.
pub struct PrintRow {
    pub started: LocalTime,
    pub printer: String,
    pub name: String,
    pub thumbnail_url: Option<String>,
    pub duration: String,
    pub outcome: Outcome,
    /// "printgate job 12", "at the printer or by another app", …
    pub started_by: String,
    /// Who tapped Plate clear for it, and when.
    pub tapped: Option<(String, LocalTime)>,
    /// The camera picture confirmed with that tap.
    pub confirmed: PlateShot,
    /// The camera picture when the print ended (the finished plate).
    pub at_end: PlateShot,
}

/// A camera picture of the plate a print row shows.
pub enum PlateShot {
    /// Stored: its address and when the camera took it.
    Picture { url: String, taken: LocalTime },
    /// There should be one, but the camera gave none (a tap without a picture; a print that
    /// ended while the camera was busy, off, or printgate cannot read it).
    NoPicture,
    /// Nothing to show: not started by printgate (no tap was confirmed), or still printing.
    Nothing,
}

/// An end picture belongs to the print that ended at most this far from when the picture's
/// recorder saw the end (both see the same report; they are different tasks).
const END_MATCH_MS: i64 = 60_000;

/// The end picture of print `p`: on its printer, nearest to its end within [`END_MATCH_MS`].
fn end_picture(p: &Print, ends: &[PrintEndPicture]) -> Option<PictureRef> {
    let ended = p.ended_ms?;
    ends.iter()
        .filter(|e| e.printer == p.printer && (e.print_ended_at_ms - ended).abs() <= END_MATCH_MS)
        .min_by_key(|e| (e.print_ended_at_ms - ended).abs())
        .map(|e| e.picture)
}

fn shot(pic: Option<PictureRef>) -> PlateShot {
    match pic {
        Some(pic) => PlateShot::Picture {
            url: super::plate_pictures::url(pic.id),
            taken: local_time(pic.taken_at_ms, &chrono::Local),
        },
        None => PlateShot::NoPicture,
    }
}

pub struct TotalsRow {
    pub label: String,
    pub prints: u32,
    pub finished: u32,
    pub failed: u32,
    pub hours: String,
    pub success: String,
}

impl TotalsRow {
    fn new(label: String, t: &Totals) -> TotalsRow {
        TotalsRow {
            label,
            prints: t.prints,
            finished: t.finished,
            failed: t.failed,
            hours: t.hours_text(),
            success: t
                .success_percent()
                .map(|p| format!("{p} %"))
                .unwrap_or_else(|| "–".into()),
        }
    }
}

#[derive(Template)]
#[template(path = "history.html")]
struct HistoryPage {
    prints: Vec<PrintRow>,
    per_printer: Vec<TotalsRow>,
    per_week: Vec<TotalsRow>,
    rows: Vec<HistoryRow>,
    /// printgate jobs that ended without printing (cancelled, expired, unconfirmed).
    unprinted: Vec<JobView>,
    csrf: String,
}

fn print_row(
    p: &Print,
    confirmed: &HashMap<String, PictureRef>,
    ends: &[PrintEndPicture],
) -> PrintRow {
    let started_by = match &p.job {
        Some(j) => format!("printgate job {}", j.id),
        None if p.joined_midway => "already printing when printgate first saw the printer".into(),
        None => "at the printer or by another app".into(),
    };
    let tapped = p
        .job
        .as_ref()
        .and_then(|j| j.tapped.as_ref())
        .map(|(by, at)| (by.clone(), local_time(*at, &chrono::Local)));
    let confirmed = match p.job.as_ref().and_then(|j| j.tap_id.as_ref()) {
        Some(tap) => shot(confirmed.get(tap).copied()),
        None => PlateShot::Nothing,
    };
    let at_end = match p.outcome {
        Outcome::Printing => PlateShot::Nothing,
        _ => shot(end_picture(p, ends)),
    };
    PrintRow {
        confirmed,
        at_end,
        started: local_time(p.started_ms, &chrono::Local),
        printer: p.printer.clone(),
        name: p.name.clone(),
        thumbnail_url: p.job.as_ref().and_then(|j| j.thumbnail_url.clone()),
        duration: match p.duration_ms() {
            Some(ms) => super::card::fmt_minutes(u32::try_from(ms / 60_000).ok()),
            None => "–".into(),
        },
        outcome: p.outcome,
        started_by,
        tapped,
    }
}

fn ms(m: u64) -> i64 {
    i64::try_from(m).unwrap_or(i64::MAX)
}

async fn page(State(gw): State<Arc<Gateway>>, user: CurrentUser) -> Response {
    let mut rows: Vec<(i64, HistoryRow)> = Vec::new();
    for e in gw.store.recent_events(None, 200).unwrap_or_default() {
        rows.push((
            e.at_ms,
            HistoryRow {
                at: local_time(e.at_ms, &chrono::Local),
                what: event_sentence(&e.kind, &e.detail, gw.hms_text),
                printer: e.printer,
            },
        ));
    }
    let jobs = gw
        .store
        .jobs_in_states(&[
            JobState::Starting,
            JobState::Printing,
            JobState::Finished,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Unconfirmed,
            JobState::Expired,
        ])
        .unwrap_or_default();
    let mut started = Vec::new();
    let mut unprinted = Vec::new();
    for j in &jobs {
        for e in gw.store.job_events(j.id).unwrap_or_default() {
            let at = ms(e.at);
            rows.push((
                at,
                HistoryRow {
                    at: local_time(at, &chrono::Local),
                    printer: e.printer.unwrap_or_default(),
                    what: job_event_sentence(
                        j.id,
                        &j.name,
                        &e.what,
                        &e.actor,
                        e.outcome.as_deref(),
                    ),
                },
            ));
        }
        let published = j.start.as_ref().and_then(|s| s.published_at);
        match (published, &j.assigned_printer, &j.start) {
            (Some(at), Some(printer), Some(start)) => started.push(StartedJob {
                id: j.id,
                printer: printer.clone(),
                name: j.name.clone(),
                remote_name: j.remote_name(),
                started_ms: ms(at),
                thumbnail_url: Some(format!("/thumbnails/{}/{}", j.file_sha256, j.plate)),
                tapped: Some((start.tap.by.clone(), ms(start.tap.at))),
                tap_id: Some(start.tap.tap_id.clone()),
            }),
            _ if !matches!(j.state, JobState::Starting | JobState::Printing) => {
                unprinted.push(JobView::from_job(j))
            }
            _ => {}
        }
    }
    rows.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    rows.truncate(300);
    unprinted.sort_by_key(|j| std::cmp::Reverse(j.id));

    let changes: Vec<StateChange> = gw
        .store
        .events_of_kind(EventKind::GCODE_STATE, STATE_CHANGES_READ)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| StateChange::from_event(&e.printer, e.at_ms, &e.detail))
        .collect();
    let all = prints::prints(&changes, &started);
    let (by_printer, total) = prints::per_printer(&all);
    let mut per_printer: Vec<TotalsRow> = by_printer
        .iter()
        .map(|(name, t)| TotalsRow::new(name.clone(), t))
        .collect();
    if per_printer.len() > 1 {
        per_printer.push(TotalsRow::new("All printers".into(), &total));
    }
    let per_week = prints::per_week(&all, &chrono::Local)
        .iter()
        .take(WEEKS_SHOWN)
        .map(|(w, t)| TotalsRow::new(w.clone(), t))
        .collect();
    let shown: Vec<&Print> = all.iter().take(PRINTS_SHOWN).collect();
    let taps: Vec<&str> = shown
        .iter()
        .filter_map(|p| p.job.as_ref()?.tap_id.as_deref())
        .collect();
    let confirmed = gw.store.confirmed_pictures(&taps).unwrap_or_default();
    let ends = gw.store.print_end_pictures().unwrap_or_default();
    render(&HistoryPage {
        prints: shown
            .iter()
            .map(|p| print_row(p, &confirmed, &ends))
            .collect(),
        per_printer,
        per_week,
        rows: rows.into_iter().map(|(_, r)| r).collect(),
        unprinted,
        csrf: user.csrf_token().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(printer: &str, at: i64) -> Print {
        Print {
            printer: printer.into(),
            name: "cube".into(),
            started_ms: at - 600_000,
            ended_ms: Some(at),
            outcome: Outcome::Finished,
            job: None,
            joined_midway: false,
        }
    }

    fn end(printer: &str, at: i64, id: i64) -> PrintEndPicture {
        PrintEndPicture {
            printer: printer.into(),
            print_ended_at_ms: at,
            picture: PictureRef {
                id,
                taken_at_ms: at,
            },
        }
    }

    #[test]
    fn an_end_picture_belongs_to_the_nearest_end_on_its_printer() {
        let ends = [
            end("P1", 1_000_000, 1),
            end("P2", 1_000_100, 2),
            end("P1", 1_000_900, 3),
            end("P1", 5_000_000, 4),
        ];
        assert_eq!(
            end_picture(&ended("P1", 1_000_800), &ends).map(|p| p.id),
            Some(3)
        );
        assert_eq!(
            end_picture(&ended("P2", 1_000_000), &ends).map(|p| p.id),
            Some(2)
        );
        assert_eq!(
            end_picture(&ended("P1", 3_000_000), &ends),
            None,
            "no end picture within a minute"
        );
        let running = Print {
            ended_ms: None,
            ..ended("P1", 1_000_000)
        };
        assert_eq!(end_picture(&running, &ends), None);
    }
}
