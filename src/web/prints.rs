//! Every print the gateway saw, whoever started it: derived from the printers' recorded state
//! changes (`gcode_state` events), each matched with the printgate job that started it (with
//! who tapped Plate clear), plus statistics per printer and per week. Pure: the history page
//! reads the rows from the store and renders what this returns.

use chrono::{Datelike, TimeZone};
use serde_json::Value;

/// One recorded state change of a printer (a `gcode_state` event).
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    pub printer: String,
    pub at_ms: i64,
    pub from: Option<String>,
    pub to: String,
    pub subtask_name: Option<String>,
}

impl StateChange {
    /// From a stored event's printer, time and detail; `None` if the detail has no `to`.
    pub fn from_event(printer: &str, at_ms: i64, detail: &Value) -> Option<StateChange> {
        let text = |k: &str| {
            detail
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Some(StateChange {
            printer: printer.to_string(),
            at_ms,
            from: text("from"),
            to: text("to")?,
            subtask_name: text("subtask_name"),
        })
    }
}

/// A printgate job whose start was sent to a printer.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedJob {
    pub id: i64,
    pub printer: String,
    pub name: String,
    /// The file name printgate gave it on the printer (what the printer may report as the
    /// print's name).
    pub remote_name: String,
    /// When the start was published (Unix ms).
    pub started_ms: i64,
    pub thumbnail_url: Option<String>,
    /// Who tapped Plate clear for this start, and when (Unix ms).
    pub tapped: Option<(String, i64)>,
    /// The id of that tap (its confirmed camera picture is kept under it).
    pub tap_id: Option<String>,
}

/// How a print ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still on the printer (no end recorded yet).
    Printing,
    Finished,
    /// Failed or stopped (the printer reports both as FAILED).
    Failed,
    /// The printer went back to idle or an unknown state without reporting how it ended.
    Unknown,
}

impl Outcome {
    pub fn text(self) -> &'static str {
        match self {
            Outcome::Printing => "printing",
            Outcome::Finished => "finished",
            Outcome::Failed => "failed or stopped",
            Outcome::Unknown => "ended (result not reported)",
        }
    }
    /// The CSS class suffix of the result badge.
    pub fn class(self) -> &'static str {
        match self {
            Outcome::Printing => "printing",
            Outcome::Finished => "finished",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One print as the history shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Print {
    pub printer: String,
    pub name: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub outcome: Outcome,
    /// The printgate job that started it; `None`: started at the printer or by another app.
    pub job: Option<StartedJob>,
    /// The gateway first saw it already printing (it was started before the gateway ran).
    pub joined_midway: bool,
}

impl Print {
    pub fn duration_ms(&self) -> Option<i64> {
        self.ended_ms.map(|e| e.saturating_sub(self.started_ms))
    }
}

/// A job counts as the start of a print on its printer when its start was published at most
/// this long before the printer reported the print (uploads are done before publishing; the
/// printer reports PREPARE within seconds).
const JOB_MATCH_BEFORE_MS: i64 = 10 * 60_000;
/// …or at most this long after (the two records are written by different tasks).
const JOB_MATCH_AFTER_MS: i64 = 5_000;

/// Whether the printer's name for a print can be this job's: unknown, the job's name, or the
/// remote file name printgate gave it (possibly with a folder or extension around it).
fn name_fits(print_name: &str, job: &StartedJob) -> bool {
    print_name.is_empty()
        || print_name == job.name
        || (!job.remote_name.is_empty()
            && print_name.contains(job.remote_name.trim_end_matches(".gcode.3mf")))
}

fn active(state: &str) -> bool {
    matches!(state, "PREPARE" | "SLICING" | "RUNNING" | "PAUSE")
}

/// Every print in `changes` (oldest first, any printers), newest first, each matched with the
/// job of `jobs` that started it (a job matches one print at most).
pub fn prints(changes: &[StateChange], jobs: &[StartedJob]) -> Vec<Print> {
    let mut open: std::collections::HashMap<&str, Print> = Default::default();
    let mut done: Vec<Print> = Vec::new();
    for c in changes {
        let from_active = c.from.as_deref().is_some_and(active);
        if active(&c.to) {
            match open.get_mut(c.printer.as_str()) {
                Some(p) => {
                    if let Some(n) = &c.subtask_name {
                        p.name = n.clone();
                    }
                }
                None => {
                    open.insert(
                        &c.printer,
                        Print {
                            printer: c.printer.clone(),
                            name: c.subtask_name.clone().unwrap_or_default(),
                            started_ms: c.at_ms,
                            ended_ms: None,
                            outcome: Outcome::Printing,
                            job: None,
                            joined_midway: c.from.is_none() || from_active,
                        },
                    );
                }
            }
            continue;
        }
        let Some(mut p) = open.remove(c.printer.as_str()) else {
            continue;
        };
        p.ended_ms = Some(c.at_ms);
        p.outcome = match c.to.as_str() {
            "FINISH" => Outcome::Finished,
            "FAILED" => Outcome::Failed,
            _ => Outcome::Unknown,
        };
        if p.name.is_empty()
            && let Some(n) = &c.subtask_name
        {
            p.name = n.clone();
        }
        done.push(p);
    }
    done.extend(open.into_values());
    let mut used = vec![false; jobs.len()];
    done.sort_by_key(|p| p.started_ms);
    for p in &mut done {
        let best = jobs
            .iter()
            .enumerate()
            .filter(|(i, j)| {
                !used[*i]
                    && j.printer == p.printer
                    && name_fits(&p.name, j)
                    && j.started_ms >= p.started_ms - JOB_MATCH_BEFORE_MS
                    && j.started_ms <= p.started_ms + JOB_MATCH_AFTER_MS
            })
            .min_by_key(|(_, j)| (j.started_ms - p.started_ms).abs());
        if let Some((i, j)) = best {
            used[i] = true;
            // The printer shows printgate's remote file name; the job's name is the person's.
            p.name = j.name.clone();
            p.job = Some(j.clone());
        }
        if p.name.is_empty() {
            p.name = "unnamed print".into();
        }
    }
    done.reverse();
    done
}

/// Totals over some prints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub prints: u32,
    pub finished: u32,
    pub failed: u32,
    /// Time spent printing by the prints that ended, in milliseconds.
    pub printing_ms: i64,
}

impl Totals {
    fn add(&mut self, p: &Print) {
        self.prints += 1;
        match p.outcome {
            Outcome::Finished => self.finished += 1,
            Outcome::Failed => self.failed += 1,
            _ => {}
        }
        self.printing_ms += p.duration_ms().unwrap_or(0);
    }
    /// Finished among the prints whose result is known, as a whole percent.
    pub fn success_percent(&self) -> Option<u32> {
        let known = self.finished + self.failed;
        (known > 0).then(|| (self.finished * 100 + known / 2) / known)
    }
    /// Print hours, one decimal: `12.5`.
    pub fn hours_text(&self) -> String {
        format!("{:.1}", self.printing_ms as f64 / 3_600_000.0)
    }
}

/// Totals per printer (sorted by name) and over all printers.
pub fn per_printer(prints: &[Print]) -> (Vec<(String, Totals)>, Totals) {
    let mut by: std::collections::BTreeMap<&str, Totals> = Default::default();
    let mut all = Totals::default();
    for p in prints {
        by.entry(&p.printer).or_default().add(p);
        all.add(p);
    }
    (
        by.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        all,
    )
}

/// Totals per ISO week (in `tz`) of the print's start, newest week first: `("2026-W49", …)`.
pub fn per_week<Tz: TimeZone>(prints: &[Print], tz: &Tz) -> Vec<(String, Totals)> {
    let mut by: std::collections::BTreeMap<(i32, u32), Totals> = Default::default();
    for p in prints {
        let Some(t) = chrono::DateTime::from_timestamp_millis(p.started_ms) else {
            continue;
        };
        let week = t.with_timezone(tz).iso_week();
        by.entry((week.year(), week.week())).or_default().add(p);
    }
    by.into_iter()
        .rev()
        .map(|((y, w), t)| (format!("{y}-W{w:02}"), t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    const MIN: i64 = 60_000;

    fn change(
        printer: &str,
        at_min: i64,
        from: Option<&str>,
        to: &str,
        name: Option<&str>,
    ) -> StateChange {
        StateChange {
            printer: printer.into(),
            at_ms: at_min * MIN,
            from: from.map(str::to_string),
            to: to.into(),
            subtask_name: name.map(str::to_string),
        }
    }

    fn job(id: i64, printer: &str, at_min: i64) -> StartedJob {
        StartedJob {
            id,
            printer: printer.into(),
            name: format!("job {id}"),
            remote_name: format!("pg_{id}.gcode.3mf"),
            started_ms: at_min * MIN,
            thumbnail_url: None,
            tapped: Some(("ann".into(), (at_min - 1) * MIN)),
            tap_id: Some(format!("tap-{id}")),
        }
    }

    #[test]
    fn prints_started_at_the_printer_are_in_the_history_too() {
        let changes = [
            change("a", 0, None, "IDLE", None),
            // Started at the printer's screen: no printgate job.
            change("a", 10, Some("IDLE"), "PREPARE", Some("screen cube")),
            change("a", 12, Some("PREPARE"), "RUNNING", Some("screen cube")),
            change("a", 70, Some("RUNNING"), "FINISH", Some("screen cube")),
            // Started by printgate (published at minute 99).
            change("a", 100, Some("FINISH"), "PREPARE", Some("job 7")),
            change("a", 101, Some("PREPARE"), "RUNNING", None),
            change("a", 130, Some("RUNNING"), "PAUSE", None),
            change("a", 131, Some("PAUSE"), "RUNNING", None),
            change("a", 140, Some("RUNNING"), "FAILED", Some("job 7")),
            // Another printer, still printing; its gateway joined mid-way.
            change("b", 50, None, "RUNNING", Some("long")),
        ];
        let got = prints(&changes, &[job(7, "a", 99), job(8, "a", 500)]);
        type Row<'a> = (&'a str, &'a str, Outcome, Option<i64>, Option<i64>, bool);
        let summary: Vec<Row> = got
            .iter()
            .map(|p| {
                (
                    p.printer.as_str(),
                    p.name.as_str(),
                    p.outcome,
                    p.duration_ms().map(|d| d / MIN),
                    p.job.as_ref().map(|j| j.id),
                    p.joined_midway,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a", "job 7", Outcome::Failed, Some(40), Some(7), false),
                ("b", "long", Outcome::Printing, None, None, true),
                ("a", "screen cube", Outcome::Finished, Some(60), None, false),
            ]
        );
        assert_eq!(
            got[0].job.as_ref().unwrap().tapped,
            Some(("ann".into(), 98 * MIN))
        );
    }

    #[test]
    fn a_job_matches_one_print_on_its_printer_only() {
        let changes = [
            change("a", 10, Some("IDLE"), "PREPARE", None),
            change("a", 20, Some("RUNNING"), "IDLE", None),
            change("b", 10, Some("IDLE"), "PREPARE", None),
            change("b", 20, Some("RUNNING"), "FINISH", None),
            change("a", 21, Some("IDLE"), "PREPARE", None),
            change("a", 30, Some("RUNNING"), "FINISH", None),
        ];
        let got = prints(&changes, &[job(1, "b", 9)]);
        let by_job: Vec<(&str, Option<i64>, &str, Outcome)> = got
            .iter()
            .map(|p| {
                (
                    p.printer.as_str(),
                    p.job.as_ref().map(|j| j.id),
                    p.name.as_str(),
                    p.outcome,
                )
            })
            .collect();
        assert_eq!(
            by_job,
            [
                ("a", None, "unnamed print", Outcome::Finished),
                ("b", Some(1), "job 1", Outcome::Finished),
                ("a", None, "unnamed print", Outcome::Unknown),
            ]
        );
        // A print by another name started just before the job was published (a screen print
        // that ended at once) is not the job's.
        let screen = [
            change("b", 10, Some("IDLE"), "PREPARE", Some("screen cube")),
            change("b", 10, Some("RUNNING"), "FINISH", Some("screen cube")),
            change("b", 11, Some("FINISH"), "PREPARE", Some("pg_1")),
            change("b", 12, Some("RUNNING"), "FINISH", None),
        ];
        let got = prints(&screen, &[job(1, "b", 10)]);
        let rows: Vec<(&str, Option<i64>)> = got
            .iter()
            .map(|p| (p.name.as_str(), p.job.as_ref().map(|j| j.id)))
            .collect();
        assert_eq!(rows, [("job 1", Some(1)), ("screen cube", None)]);
        // A job published long before the print is not its start.
        let far = prints(&changes[2..4], &[job(1, "b", -60)]);
        assert!(far[0].job.is_none());
    }

    #[test]
    fn statistics_per_printer_and_per_week() {
        let changes = [
            change("a", 0, Some("IDLE"), "RUNNING", None),
            change("a", 90, Some("RUNNING"), "FINISH", None),
            change("a", 100, Some("FINISH"), "RUNNING", None),
            change("a", 130, Some("RUNNING"), "FAILED", None),
            change("b", 0, Some("IDLE"), "RUNNING", None),
            change("b", 60, Some("RUNNING"), "FINISH", None),
            // A week later.
            change("b", 7 * 24 * 60, Some("IDLE"), "RUNNING", None),
        ];
        let all = prints(&changes, &[]);
        let (printers, total) = per_printer(&all);
        assert_eq!(printers.len(), 2);
        assert_eq!(printers[0].0, "a");
        assert_eq!(printers[0].1.prints, 2);
        assert_eq!(printers[0].1.success_percent(), Some(50));
        assert_eq!(printers[0].1.hours_text(), "2.0");
        assert_eq!(printers[1].1.success_percent(), Some(100));
        assert_eq!(total.prints, 4);
        assert_eq!(total.success_percent(), Some(67));
        assert_eq!(total.hours_text(), "3.0");
        assert_eq!(Totals::default().success_percent(), None);
        // 1970-01-01 is a Thursday in ISO week 1; a week later is week 2.
        let weeks = per_week(&all, &Utc);
        let names: Vec<(&str, u32)> = weeks.iter().map(|(w, t)| (w.as_str(), t.prints)).collect();
        assert_eq!(names, [("1970-W02", 1), ("1970-W01", 3)]);
    }

    #[test]
    fn odd_event_details_are_skipped() {
        assert!(StateChange::from_event("a", 0, &serde_json::json!({"from": "IDLE"})).is_none());
        assert!(StateChange::from_event("a", 0, &serde_json::json!(null)).is_none());
        let c = StateChange::from_event(
            "a",
            5,
            &serde_json::json!({"from": null, "to": "RUNNING", "subtask_name": ""}),
        )
        .unwrap();
        assert_eq!(
            (c.from, c.to.as_str(), c.subtask_name),
            (None, "RUNNING", None)
        );
        // An end without a start, and a lone start, never panic.
        let odd = [
            change("a", 1, Some("RUNNING"), "FINISH", None),
            change("a", 2, Some("IDLE"), "RUNNING", None),
        ];
        let got = prints(&odd, &[]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].outcome, Outcome::Printing);
    }
}
