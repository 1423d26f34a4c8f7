//! Seeded deterministic simulation of the dispatcher (docs/architecture.md: "thousands of random schedules").
//!
//! Each schedule builds 1–3 simulated printers, an in-memory SQLite [`Store`] and the dispatcher
//! state, then plays a random but seed-determined sequence of happenings: fresh, stale,
//! duplicated, reordered and delta-only reports, taps (also re-submitted), uploads, link drops,
//! half-open silent sessions, lost/duplicated acks, publish failures, busy refusals, prints started
//! on the printer's own screen, gateway restarts (state dropped, reloaded from the store,
//! recovered), clock jumps, user actions (cancel, reorder, pause, start again, safety trip), and
//! filament: jobs that need 0–2 filaments, printers with or without an AMS whose trays a person
//! loads and empties at any moment.
//! Every event goes through the real [`decide`] and the real [`Store::commit_batch`]; the
//! [`InvariantChecker`] watches every event and every committed action and reports breaches of
//! I1–I4, I6 and I7 (a start's tray mapping is committed with it, sent exactly so, and fits the
//! trays last reported), and the simulated printers count what really reached them. A failing seed is
//! replayed with `printgate simulate --seeds 1 --seed <S>`.

use super::ams_mapping::{Mapping, Need, SlotSeen, TrayRef, Trays, material_family};
use super::dispatcher::{
    Action, ActionKind, DispatchState, DispatchTimings, ERROR_BUSY, Event, MoveDirection,
    PublishOutcome, ReportSummary, decide,
};
use super::filament::FilamentRequirement;
use super::model::{JobId, JobState, Millis, NewJob, Target};
use super::plate::meaningful_id;
use crate::printer::{ControlState, GcodeState};
use crate::store::Store;
use std::collections::BTreeMap;

/// Small, stable PRNG (SplitMix64): the same seed gives the same schedule on every platform and
/// with every version of the `rand` crate.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Deliberate breakage of the dispatcher's output, to prove the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Re-send a start that is in doubt when the printer reconnects (the 2023-08-15 pattern).
    RepublishAfterReconnect,
    /// Publish instead of asking for a fresh report.
    PublishOnStaleReport,
    /// Ignore evidence that something printed (plate never becomes occupied).
    ForgetActivity,
    /// Put a published start back in the queue instead of marking it unconfirmed.
    RequeueAfterPublish,
    /// Send each filament to the next tray of its AMS instead of the one the mapping chose.
    MisrouteFilament,
}

/// Knobs of one simulation run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Happenings per schedule (before the final drain).
    pub steps: usize,
    pub mutation: Option<Mutation>,
    /// Record every event and committed action (for replaying one seed).
    pub trace: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            steps: 120,
            mutation: None,
            trace: false,
        }
    }
}

/// Counters over all schedules (to see that the schedules exercise what they should).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub events: u64,
    pub taps: u64,
    pub publishes_sent: u64,
    pub publishes_not_sent: u64,
    pub confirmed: u64,
    pub unconfirmed: u64,
    pub finished: u64,
    pub busy_refusals: u64,
    pub returned_to_queue: u64,
    pub restarts: u64,
    pub screen_starts: u64,
    /// Starts sent with a tray mapping.
    pub mapped_publishes: u64,
    /// Starts held because the loaded filament did not fit.
    pub filament_holds: u64,
}

impl SimStats {
    fn add(&mut self, o: &SimStats) {
        self.events += o.events;
        self.taps += o.taps;
        self.publishes_sent += o.publishes_sent;
        self.publishes_not_sent += o.publishes_not_sent;
        self.confirmed += o.confirmed;
        self.unconfirmed += o.unconfirmed;
        self.finished += o.finished;
        self.busy_refusals += o.busy_refusals;
        self.returned_to_queue += o.returned_to_queue;
        self.restarts += o.restarts;
        self.screen_starts += o.screen_starts;
        self.mapped_publishes += o.mapped_publishes;
        self.filament_holds += o.filament_holds;
    }
}

/// Result of [`run_simulation`].
#[derive(Debug, Clone, Default)]
pub struct SimulationSummary {
    pub schedules: u64,
    pub violations: u64,
    /// (seed, first violation of that seed).
    pub failures: Vec<(u64, String)>,
    pub stats: SimStats,
}

/// Result of one schedule.
#[derive(Debug, Clone, Default)]
pub struct ScheduleResult {
    pub violations: Vec<String>,
    pub stats: SimStats,
    /// With [`SimOptions::trace`]: one line per event and per committed action.
    pub trace: Vec<String>,
}

/// Every seed that ever found a violation, replayed by every test run (`tests/dispatcher_sim.rs`)
/// whatever start seed the run explores from. Add each new failing seed here when its cause is
/// fixed. A seed replays the same schedule only while the simulation draws its random numbers
/// the same way, so the list also keeps seeds that hit the same kind of fault after the
/// simulation changed.
pub const REGRESSION_SEEDS: &[u64] = &[
    // I7: a duplicated completion of an earlier upload staged a job whose new upload ran
    // (`printgate simulate --seeds 100000` before upload results carried a ticket).
    37769,
    // The same fault under the simulation with late, reordered results: stale completions and
    // failures of an earlier upload (found with the ticket checks removed).
    977, 1550, 1583, 1609, 1688, 1858,
];

/// A start seed that differs from run to run, so that every run explores new schedules.
pub fn fresh_start_seed() -> u64 {
    rand::random_range(1..=u64::from(u32::MAX))
}

/// Run `seeds` schedules with seeds `first_seed..first_seed + seeds`.
pub fn run_simulation(seeds: u64, first_seed: u64) -> SimulationSummary {
    run_simulation_with(seeds, first_seed, &SimOptions::default())
}

/// [`run_simulation`] with explicit options.
pub fn run_simulation_with(seeds: u64, first_seed: u64, opts: &SimOptions) -> SimulationSummary {
    let mut summary = SimulationSummary::default();
    for seed in first_seed..first_seed.saturating_add(seeds) {
        let result = run_schedule(seed, opts);
        summary.schedules += 1;
        summary.stats.add(&result.stats);
        if let Some(first) = result.violations.first() {
            summary.violations += result.violations.len() as u64;
            summary.failures.push((seed, first.clone()));
        }
    }
    summary
}

/// `printgate simulate --seeds N [--seed S]`: the start seed first (a fresh one unless `S` is
/// given), progress on stdout, failing seeds with the command to replay them, and as the last
/// line exactly `N schedules, V violations`. Returns 1 if V > 0.
pub fn simulate_cli(seeds: u64, seed: Option<u64>) -> i32 {
    let first = seed.unwrap_or_else(fresh_start_seed);
    println!(
        "start seed {first} (this run again: printgate simulate --seeds {seeds} --seed {first})"
    );
    let opts = SimOptions::default();
    if seeds == 1 {
        let r = run_schedule(
            first,
            &SimOptions {
                trace: true,
                ..opts.clone()
            },
        );
        for line in &r.trace {
            println!("{line}");
        }
        for v in &r.violations {
            println!("VIOLATION {v}");
        }
    }
    let mut total = SimulationSummary::default();
    let chunk = 500u64;
    let mut done = 0u64;
    while done < seeds {
        let n = chunk.min(seeds - done);
        let part = run_simulation_with(n, first + done, &opts);
        for (s, what) in &part.failures {
            println!("seed {s}: {what}");
            println!("  replay: printgate simulate --seeds 1 --seed {s}");
        }
        total.schedules += part.schedules;
        total.violations += part.violations;
        total.failures.extend(part.failures);
        total.stats.add(&part.stats);
        done += n;
        if seeds > chunk {
            println!(
                "{done}/{seeds} schedules, {} violations so far",
                total.violations
            );
        }
    }
    let st = &total.stats;
    println!(
        "exercised: {} events, {} taps, {} starts sent ({} not sent), {} confirmed, {} unconfirmed, {} finished, {} busy refusals, {} restarts, {} screen starts, {} starts with a tray mapping, {} held for filament",
        st.events,
        st.taps,
        st.publishes_sent,
        st.publishes_not_sent,
        st.confirmed,
        st.unconfirmed,
        st.finished,
        st.busy_refusals,
        st.restarts,
        st.screen_starts,
        st.mapped_publishes,
        st.filament_holds
    );
    println!(
        "{} schedules, {} violations",
        total.schedules, total.violations
    );
    i32::from(total.violations > 0)
}

// ====================================================================== invariant checker

#[derive(Debug, Clone)]
struct CheckTap {
    /// Event number at which the tap was recorded.
    seq: u64,
    at: Millis,
    consumed_by: Option<JobId>,
    consumed_seq: u64,
    voided: bool,
}

#[derive(Debug, Clone, Default)]
struct CheckPrinter {
    online: bool,
    report: Option<ReportSummary>,
    /// Last report with a known job state (compared across outages).
    known: Option<ReportSummary>,
    /// Event number of the last report showing print activity.
    activity_seq: Option<u64>,
    paused: bool,
    taps: BTreeMap<String, CheckTap>,
}

#[derive(Debug, Clone)]
struct CheckJob {
    state: JobState,
    tap: Option<(String, String)>,
    decided_at: Millis,
    /// `MarkPublishing` committed, `Publish` not yet seen.
    publishing: bool,
    /// A publish may have reached the printer (I2).
    in_doubt: bool,
    /// Ticket of the last `Publish` of this job.
    publish_ticket: Option<u64>,
    /// The last `Stage` of this job: printer, ticket, and whether that very upload completed.
    upload: Option<CheckUpload>,
    /// The filaments the job's plate needs.
    needs: Vec<Need>,
    /// The tray mapping committed with its current start attempt.
    mapping: Option<Mapping>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CheckUpload {
    printer: String,
    ticket: u64,
    completed: bool,
}

/// Watches the dispatcher from outside: every event it is given and every action that was
/// committed, with its own independent view of printers, taps and jobs. Public so that tests can
/// feed it hand-made traces.
#[derive(Debug, Clone)]
pub struct InvariantChecker {
    timings: DispatchTimings,
    printers: BTreeMap<String, CheckPrinter>,
    jobs: BTreeMap<JobId, CheckJob>,
    safety_tripped: bool,
    queue_paused: bool,
    seq: u64,
    pub violations: Vec<String>,
}

fn independent_activity(prev: Option<&ReportSummary>, new: &ReportSummary) -> bool {
    if matches!(
        new.gcode_state,
        GcodeState::Prepare | GcodeState::Slicing | GcodeState::Running | GcodeState::Pause
    ) {
        return true;
    }
    let Some(prev) = prev else { return false };
    let id_changed =
        meaningful_id(new.subtask_id.as_deref()).is_some() && new.subtask_id != prev.subtask_id;
    let file_changed = new.gcode_file.as_deref().is_some_and(|f| !f.is_empty())
        && new.gcode_file != prev.gcode_file;
    let ended = matches!(new.gcode_state, GcodeState::Finish | GcodeState::Failed)
        && prev.gcode_state != new.gcode_state
        && prev.gcode_state != GcodeState::Unknown;
    id_changed || file_changed || ended
}

/// What is wrong with starting a job that needs `needs` with `mapping` on a printer whose last
/// report showed `trays`; empty when nothing is. Checked independently of the mapping rule:
/// every filament has exactly one tray, no tray feeds two filaments, and each tray was reported
/// loaded with a spool of the filament's material family (from an AMS when there is one).
pub fn filament_problems(
    needs: &[Need],
    mapping: Option<&Mapping>,
    trays: Option<&Trays>,
) -> Vec<String> {
    if needs.is_empty() {
        return Vec::new();
    }
    let Some(m) = mapping else {
        return vec!["it needs filament and was started with no tray mapping".into()];
    };
    let Some(trays) = trays else {
        return vec!["no filament slots were reported before the start".into()];
    };
    let mut problems = Vec::new();
    let mut used: Vec<TrayRef> = Vec::new();
    for need in needs {
        let given: Vec<_> = m
            .assignments
            .iter()
            .filter(|a| a.filament == need.id)
            .collect();
        let [a] = given.as_slice() else {
            problems.push(format!(
                "filament {} has {} trays in the mapping",
                need.id,
                given.len()
            ));
            continue;
        };
        if used.contains(&a.tray) {
            problems.push(format!("{:?} feeds two filaments", a.tray));
        }
        used.push(a.tray);
        if trays.has_ams && !matches!(a.tray, TrayRef::Ams { .. }) {
            problems.push(format!(
                "filament {} comes from the external spool of a printer with an AMS",
                need.id
            ));
        }
        let want = material_family(&need.material);
        match trays.slots.iter().find(|s| s.tray == a.tray) {
            None => problems.push(format!(
                "filament {} uses {:?}, not reported",
                need.id, a.tray
            )),
            Some(s) if !s.loaded => {
                problems.push(format!("filament {} uses the empty {:?}", need.id, a.tray))
            }
            Some(s) if s.material.as_deref().map(material_family) != Some(want.clone()) => problems
                .push(format!(
                    "filament {} needs {want} and {:?} holds {:?}",
                    need.id, a.tray, s.material
                )),
            Some(_) => {}
        }
    }
    let from_ams = m
        .assignments
        .iter()
        .any(|a| matches!(a.tray, TrayRef::Ams { .. }));
    if m.use_ams != from_ams {
        problems.push(format!("use_ams is {} for this mapping", m.use_ams));
    }
    problems
}

impl InvariantChecker {
    pub fn new(timings: DispatchTimings, printers: &[String]) -> Self {
        InvariantChecker {
            timings,
            printers: printers
                .iter()
                .map(|p| (p.clone(), CheckPrinter::default()))
                .collect(),
            jobs: BTreeMap::new(),
            safety_tripped: false,
            queue_paused: false,
            seq: 0,
            violations: Vec::new(),
        }
    }

    fn violation(&mut self, now: Millis, what: String) {
        self.violations.push(format!("t={now}: {what}"));
    }

    /// An event about to be given to `decide`.
    pub fn observe_event(&mut self, event: &Event, _now: Millis) {
        self.seq += 1;
        let seq = self.seq;
        match event {
            Event::PrinterReport { printer, report } => {
                if let Some(p) = self.printers.get_mut(printer) {
                    if independent_activity(p.known.as_ref(), report) {
                        p.activity_seq = Some(seq);
                    }
                    if report.have_full_report && report.gcode_state != GcodeState::Unknown {
                        p.known = Some(report.clone());
                    }
                    p.online = report.link_online;
                    p.report = Some(report.clone());
                }
            }
            Event::LinkDown { printer } => {
                if let Some(p) = self.printers.get_mut(printer) {
                    p.online = false;
                }
            }
            Event::PublishResult {
                job,
                ticket,
                outcome: PublishOutcome::NotConnected | PublishOutcome::FailedBeforeSend(_),
            } => {
                // The runner guarantees that this publish sent nothing; an earlier one of the
                // same job proves nothing about a later one.
                if let Some(j) = self.jobs.get_mut(job)
                    && j.publish_ticket == Some(*ticket)
                {
                    j.in_doubt = false;
                }
            }
            Event::StageComplete {
                job,
                printer,
                ticket,
            } => {
                if let Some(u) = self.jobs.get_mut(job).and_then(|j| j.upload.as_mut())
                    && u.ticket == *ticket
                    && &u.printer == printer
                {
                    u.completed = true;
                }
            }
            _ => {}
        }
    }

    /// After a restart the store's recovery changed rows without actions: take the job states
    /// from the reloaded state; every unconsumed tap was voided.
    pub fn resync_after_restart(&mut self, state: &DispatchState) {
        for (id, j) in self.jobs.iter_mut() {
            // Uploads in flight died with the gateway: what they left on the printer is partial.
            if j.upload.as_ref().is_some_and(|u| !u.completed) {
                j.upload = None;
            }
            if let Some(loaded) = state.jobs.get(id) {
                j.state = loaded.state;
            } else if !j.state.is_terminal() {
                j.state = JobState::Cancelled;
            }
        }
        for p in self.printers.values_mut() {
            // A booted gateway knows only what it sees from now on (plates start unknown).
            p.online = false;
            p.report = None;
            p.known = None;
            for t in p.taps.values_mut() {
                if t.consumed_by.is_none() {
                    t.voided = true;
                }
            }
        }
        self.queue_paused = state.queue_paused;
        self.safety_tripped = state.safety_tripped;
    }

    /// The actions of one batch that were committed (all of them, or the prefix before a failed
    /// database action).
    pub fn observe_batch(&mut self, actions: &[Action], now: Millis) {
        let first_effect = actions.iter().position(|a| a.kind() == ActionKind::Effect);
        if let Some(i) = first_effect
            && actions[i..].iter().any(|a| a.kind() != ActionKind::Effect)
        {
            self.violation(
                now,
                "I6: a database action comes after an effect in one batch".into(),
            );
        }
        for a in actions {
            self.observe_action(a, now);
        }
    }

    fn observe_action(&mut self, a: &Action, now: Millis) {
        let seq = self.seq;
        let ttl = self.timings.plate_clear_ttl_ms;
        if let Some((job, to)) = a.job_transition()
            && let Some((from, in_doubt)) = self.jobs.get(&job).map(|j| (j.state, j.in_doubt))
        {
            let start_again = matches!(a, Action::StartAgain { .. });
            if from != to && !from.can_transition_to(to) {
                self.violation(
                    now,
                    format!("job {job}: illegal transition {from:?} → {to:?}"),
                );
            }
            // A person may cancel an unconfirmed job or ask to start any job again (with a new
            // tap); only the gateway's own moves are restricted.
            let person_resolves = start_again
                || (from == JobState::Unconfirmed && matches!(a, Action::MarkCancelled { .. }));
            if in_doubt
                && !person_resolves
                && !matches!(
                    to,
                    JobState::Printing | JobState::Failed | JobState::Unconfirmed
                )
            {
                self.violation(
                    now,
                    format!("I2: job {job} with a start in doubt moved {from:?} → {to:?}"),
                );
            }
            if let Some(j) = self.jobs.get_mut(&job) {
                j.state = to;
                if to == JobState::Printing {
                    j.in_doubt = false; // confirmed: the start is resolved
                }
            }
        }
        match a {
            Action::TrackJob(job) => {
                if self.jobs.contains_key(&job.id) {
                    self.violation(now, format!("I7: job {} tracked twice", job.id));
                }
                self.jobs.insert(
                    job.id,
                    CheckJob {
                        state: job.state,
                        tap: None,
                        decided_at: 0,
                        publishing: false,
                        in_doubt: false,
                        publish_ticket: None,
                        upload: None,
                        needs: job.filaments.clone().unwrap_or_default(),
                        mapping: None,
                    },
                );
            }
            Action::SetSafetyTripped { tripped } => self.safety_tripped = *tripped,
            Action::SetQueuePaused { printer, paused } => match printer {
                None => self.queue_paused = *paused,
                Some(p) => {
                    if let Some(p) = self.printers.get_mut(p) {
                        p.paused = *paused;
                    }
                }
            },
            Action::RecordTap { printer, tap } => {
                let Some(p) = self.printers.get_mut(printer) else {
                    return;
                };
                let duplicate = p.taps.contains_key(&tap.tap_id);
                for t in p.taps.values_mut() {
                    if t.consumed_by.is_none() {
                        t.voided = true;
                    }
                }
                p.taps.insert(
                    tap.tap_id.clone(),
                    CheckTap {
                        seq,
                        at: tap.at,
                        consumed_by: None,
                        consumed_seq: 0,
                        voided: false,
                    },
                );
                if duplicate {
                    self.violation(now, format!("I7: tap {} recorded twice", tap.tap_id));
                }
            }
            Action::ExpireTap {
                printer, tap_id, ..
            } => {
                if let Some(t) = self
                    .printers
                    .get_mut(printer)
                    .and_then(|p| p.taps.get_mut(tap_id))
                    && t.consumed_by.is_none()
                {
                    t.voided = true;
                }
            }
            Action::MarkPlateOccupied { printer, .. } => {
                if let Some(p) = self.printers.get_mut(printer) {
                    for t in p.taps.values_mut() {
                        if t.consumed_by.is_none() {
                            t.voided = true;
                        }
                    }
                }
            }
            Action::ConsumeTapAndMarkStarting {
                job,
                printer,
                tap,
                decided_at,
                mapping,
                ..
            } => {
                let mut problems = Vec::new();
                let needs = self
                    .jobs
                    .get(job)
                    .map(|j| j.needs.clone())
                    .unwrap_or_default();
                let trays = self
                    .printers
                    .get(printer)
                    .and_then(|p| p.report.as_ref())
                    .and_then(|r| r.trays.as_ref());
                for p in filament_problems(&needs, mapping.as_ref(), trays) {
                    self.violation(now, format!("I6: job {job} started on {printer}: {p}"));
                }
                match self
                    .printers
                    .get_mut(printer)
                    .map(|p| (p.activity_seq, p.taps.get_mut(&tap.tap_id)))
                {
                    Some((activity, Some(t))) => {
                        if t.voided {
                            problems.push("the tap was voided".to_string());
                        }
                        if let Some(other) = t.consumed_by {
                            problems.push(format!("the tap was already consumed by job {other}"));
                        }
                        if now >= t.at.saturating_add(ttl) {
                            problems.push("the tap had expired".into());
                        }
                        if activity.is_some_and(|a| a >= t.seq) {
                            problems.push("print activity was seen after the tap".into());
                        }
                        t.consumed_by = Some(*job);
                        t.consumed_seq = seq;
                    }
                    _ => problems.push("no such tap on this printer".into()),
                }
                for p in problems {
                    self.violation(now, format!("I1: job {job} started on {printer}: {p}"));
                }
                self.check_staged_file(*job, printer, "started", now);
                if let Some(j) = self.jobs.get_mut(job) {
                    j.tap = Some((printer.clone(), tap.tap_id.clone()));
                    j.decided_at = *decided_at;
                    j.publishing = false;
                    j.mapping = mapping.clone();
                }
            }
            Action::MarkPublishing { job, .. } => {
                let bad = match self.jobs.get(job) {
                    Some(j) => j.state != JobState::Starting || j.tap.is_none() || j.in_doubt,
                    None => true,
                };
                if bad {
                    self.violation(
                        now,
                        format!("I2: job {job} marked publishing while not a fresh start"),
                    );
                }
                if let Some(j) = self.jobs.get_mut(job) {
                    j.publishing = true;
                }
            }
            Action::Publish {
                job,
                printer,
                epoch,
                deadline,
                ticket,
                mapping,
                ..
            } => {
                self.check_publish_mapping(*job, printer, mapping.as_ref(), now);
                self.check_publish(*job, printer, *epoch, *deadline, now);
                if let Some(j) = self.jobs.get_mut(job) {
                    j.publish_ticket = Some(*ticket);
                }
            }
            Action::Stage {
                job,
                printer,
                ticket,
                ..
            } => {
                if let Some(j) = self.jobs.get_mut(job) {
                    j.upload = Some(CheckUpload {
                        printer: printer.clone(),
                        ticket: *ticket,
                        completed: false,
                    });
                }
            }
            Action::MarkStaged { job, printer, .. } => {
                self.check_staged_file(*job, printer, "marked staged", now)
            }
            Action::ReturnToQueued {
                job, restore_tap, ..
            }
            | Action::MarkCancelled {
                job, restore_tap, ..
            } => {
                if let Some(j) = self.jobs.get_mut(job) {
                    let tap = j.tap.take();
                    j.publishing = false;
                    if *restore_tap {
                        self.restore(*job, tap, now);
                    }
                }
            }
            Action::StartAgain { job, .. } => {
                if let Some(j) = self.jobs.get_mut(&job.id) {
                    j.in_doubt = false;
                    j.tap = None;
                    j.publishing = false;
                }
            }
            _ => {}
        }
    }

    /// A job may be staged, and started, only on the file of its last upload, to that printer,
    /// after that very upload completed (not an earlier one, not while a newer one runs).
    fn check_staged_file(&mut self, job: JobId, printer: &str, what: &str, now: Millis) {
        let upload = self.jobs.get(&job).and_then(|j| j.upload.clone());
        let problem = match upload {
            None => Some("no upload of it completed since the gateway started".to_string()),
            Some(u) if u.printer != printer => {
                Some(format!("its last upload went to {}", u.printer))
            }
            Some(u) if !u.completed => Some(format!(
                "its last upload (ticket {}) has not completed",
                u.ticket
            )),
            Some(_) => None,
        };
        if let Some(p) = problem {
            self.violation(now, format!("I7: job {job} {what} on {printer}: {p}"));
        }
    }

    fn restore(&mut self, job: JobId, tap: Option<(String, String)>, now: Millis) {
        let Some((printer, tap_id)) = tap else {
            self.violation(
                now,
                format!("I3: job {job} restored a tap it never consumed"),
            );
            return;
        };
        let Some(p) = self.printers.get_mut(&printer) else {
            return;
        };
        let activity = p.activity_seq;
        let mut problem = None;
        if let Some(t) = p.taps.get_mut(&tap_id) {
            if activity.is_some_and(|a| a > t.consumed_seq) {
                problem = Some("print activity was seen since it was consumed");
            }
            t.consumed_by = None;
            t.seq = t.seq.max(t.consumed_seq);
        } else {
            problem = Some("unknown tap");
        }
        if let Some(p) = problem {
            self.violation(now, format!("I3: job {job} restored tap {tap_id}: {p}"));
        }
    }

    /// I6 for filament: the start is sent with exactly the mapping committed with it, and the
    /// trays last reported still hold what the mapping chose.
    fn check_publish_mapping(
        &mut self,
        job: JobId,
        printer: &str,
        sent: Option<&Mapping>,
        now: Millis,
    ) {
        let Some(j) = self.jobs.get(&job) else { return };
        let mut problems = Vec::new();
        if sent != j.mapping.as_ref() {
            problems.push(format!(
                "I6: sent the tray mapping {:?}, committed {:?}",
                sent.map(Mapping::describe),
                j.mapping.as_ref().map(Mapping::describe)
            ));
        }
        let trays = self
            .printers
            .get(printer)
            .and_then(|p| p.report.as_ref())
            .and_then(|r| r.trays.as_ref());
        problems.extend(filament_problems(&j.needs, sent, trays));
        for p in problems {
            self.violation(now, format!("publish of job {job} to {printer}: {p}"));
        }
    }

    fn check_publish(
        &mut self,
        job: JobId,
        printer: &str,
        epoch: u64,
        deadline: Millis,
        now: Millis,
    ) {
        let mut problems: Vec<String> = Vec::new();
        let window = self.timings.start_window_ms;
        let max_age = self.timings.report_max_age_ms;
        match self.jobs.get(&job) {
            None => problems.push("I2: unknown job".into()),
            Some(j) => {
                if !j.publishing {
                    problems.push("I6: no committed MarkPublishing before the publish".into());
                }
                if j.in_doubt {
                    problems.push("I2: a previous start of this job may have been sent".into());
                }
                if j.state != JobState::Starting {
                    problems.push(format!("I2: job is {:?}", j.state));
                }
                match &j.tap {
                    Some((p, tap_id)) if p == printer => {
                        let consumed = self
                            .printers
                            .get(printer)
                            .and_then(|p| p.taps.get(tap_id))
                            .is_some_and(|t| t.consumed_by == Some(job));
                        if !consumed {
                            problems.push("I1: its tap is not consumed by it".into());
                        }
                    }
                    _ => problems.push("I1: no consumed tap for this printer".into()),
                }
                if now >= deadline || deadline > j.decided_at.saturating_add(window) {
                    problems.push(format!(
                        "I3: published outside its window (deadline {deadline})"
                    ));
                }
            }
        }
        if self.safety_tripped {
            problems.push("I4: safety trip latched".into());
        }
        match self.printers.get(printer) {
            None => problems.push("unknown printer".into()),
            Some(p) => {
                if p.paused || self.queue_paused {
                    problems.push("queue paused".into());
                }
                if !p.online {
                    problems.push("I3: printer offline".into());
                }
                match &p.report {
                    None => problems.push("I4: no report".into()),
                    Some(r) => {
                        if !r.link_online || r.connection_epoch != epoch {
                            problems.push("I4: report from another connection".into());
                        }
                        let fresh = r.have_full_report
                            && r.full_report_at
                                .is_some_and(|t| now.saturating_sub(t) < max_age);
                        if !fresh {
                            problems.push("I4: no fresh full report".into());
                        }
                        if !r.gcode_state.is_startable() {
                            problems.push(format!("I4: printer is {}", r.gcode_state.as_str()));
                        }
                        if r.print_error != 0 || r.blocking_hms || r.verification_failed {
                            problems.push("I4: printer reports an error".into());
                        }
                        if r.control == ControlState::Refused {
                            problems.push("I4: control refused".into());
                        }
                    }
                }
            }
        }
        if let Some(j) = self.jobs.get_mut(&job) {
            j.in_doubt = true;
            j.publishing = false;
        }
        for p in problems {
            self.violation(now, format!("publish of job {job} to {printer}: {p}"));
        }
    }

    /// Checks on the dispatcher's state after an event was fully processed.
    pub fn check_state(&mut self, state: &DispatchState, now: Millis) {
        let t = state.timings.clone();
        let mut problems = Vec::new();
        let mut slots: BTreeMap<&str, JobId> = BTreeMap::new();
        for j in state.jobs.values() {
            if let Some(p) = &j.assigned_printer
                && (j.state.holds_printer() || j.state.is_pre_start())
                && let Some(other) = slots.insert(p.as_str(), j.id)
            {
                problems.push(format!("jobs {other} and {} both hold printer {p}", j.id));
            }
            if j.state != JobState::Starting {
                continue;
            }
            let Some(a) = &j.start else {
                problems.push(format!("job {} starting without an attempt", j.id));
                continue;
            };
            let late = match (a.publish_attempted_at, a.published_at) {
                (None, _) => now >= a.window_deadline,
                (Some(at), None) => now >= at.saturating_add(t.start_window_ms),
                (Some(_), Some(published)) => match a.id_echoed_at {
                    Some(echo) => now >= echo.saturating_add(t.confirm_phase_b_ms),
                    None => now >= published.saturating_add(t.confirm_phase_a_ms),
                },
            };
            if late {
                problems.push(format!(
                    "I2/I3: job {} still starting after its window (attempt {a:?})",
                    j.id
                ));
            }
        }
        for p in problems {
            self.violation(now, p);
        }
    }
}

// ====================================================================== simulated world

const START_TIME: Millis = 1_700_000_000_000;
const MODELS: [&str; 2] = ["C12", "N1"];

#[derive(Debug, Clone)]
struct SimPrinter {
    name: String,
    model: String,
    online: bool,
    epoch: u64,
    half_open_until: Option<Millis>,
    have_full: bool,
    last_full_at: Option<Millis>,
    state: GcodeState,
    subtask_id: String,
    gcode_file: String,
    print_error: u32,
    blocking_hms: bool,
    object_on_plate: bool,
    start_at: Option<(Millis, String, String)>,
    running_at: Option<Millis>,
    ends_at: Option<Millis>,
    error_clears_at: Option<Millis>,
    history: Vec<ReportSummary>,
    last_tap: Option<String>,
    /// What is really loaded (reported with every report after the first full one).
    trays: Trays,
}

/// Materials a person loads; families PLA, PETG, PLA-CF, ABS.
const SPOOL_MATERIALS: [&str; 6] = ["PLA", "PLA Basic", "PETG", "PETG HF", "PLA-CF", "ABS"];
const SPOOL_COLORS: [&str; 3] = ["FFFFFFFF", "000000FF", "FF0000FF"];
/// What a job's plate asks for.
const NEED_MATERIALS: [&str; 3] = ["PLA", "PETG", "ABS"];

fn random_slot(rng: &mut SimRng, tray: TrayRef) -> SlotSeen {
    if rng.chance(25) {
        return SlotSeen {
            tray,
            loaded: false,
            material: None,
            color: None,
        };
    }
    SlotSeen {
        tray,
        loaded: true,
        material: Some(SPOOL_MATERIALS[rng.below(6) as usize].to_string()),
        color: Some(SPOOL_COLORS[rng.below(3) as usize].to_string()),
    }
}

/// An AMS with four trays and the external spool (60 %), or the external spool alone.
fn random_trays(rng: &mut SimRng) -> Trays {
    let has_ams = rng.chance(60);
    let mut slots = Vec::new();
    if has_ams {
        for slot in 0..4 {
            slots.push(random_slot(rng, TrayRef::Ams { unit: 0, slot }));
        }
    }
    slots.push(random_slot(rng, TrayRef::External { id: 255 }));
    Trays { has_ams, slots }
}

/// The filaments of a new job: none (40 %), or one or two.
fn random_needs(rng: &mut SimRng) -> Vec<FilamentRequirement> {
    if rng.chance(40) {
        return Vec::new();
    }
    (1..=rng.range(1, 2) as u32)
        .map(|id| FilamentRequirement {
            id,
            material: NEED_MATERIALS[rng.below(3) as usize].to_string(),
            color: format!("#{}", &SPOOL_COLORS[rng.below(3) as usize][..6]),
            used_g: None,
            used_m: None,
        })
        .collect()
}

impl SimPrinter {
    fn next_timer(&self) -> Option<Millis> {
        [
            self.start_at.as_ref().map(|s| s.0),
            self.running_at,
            self.ends_at,
            self.error_clears_at,
            self.half_open_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }
    fn busy(&self) -> bool {
        self.state.is_active() || self.start_at.is_some()
    }
    fn talks(&self) -> bool {
        self.online && self.half_open_until.is_none()
    }
}

#[derive(Debug, Clone)]
enum Pending {
    /// A result of the effect runner (upload, publish result).
    Runner(Event),
    /// Something the printer sends on its session (dropped if that session is gone).
    FromPrinter {
        printer: usize,
        epoch: u64,
        what: FromPrinter,
    },
}

#[derive(Debug, Clone)]
enum FromPrinter {
    FullReport,
    DeltaReport,
    Ack {
        sequence_id: String,
        success: Option<bool>,
    },
}

struct Sim {
    rng: SimRng,
    opts: SimOptions,
    now: Millis,
    store: Store,
    state: DispatchState,
    timings: DispatchTimings,
    printers: Vec<SimPrinter>,
    pending: Vec<(Millis, u64, Pending)>,
    pending_seq: u64,
    checker: InvariantChecker,
    stats: SimStats,
    violations: Vec<String>,
    starts_received: BTreeMap<u32, u32>,
    next_sequence: u64,
    next_key: u64,
    keys: Vec<String>,
    next_tap: u64,
    next_local: u64,
    safety_latched: bool,
    last_ack: Option<Event>,
    trace: Vec<String>,
}

/// Run one schedule.
pub fn run_schedule(seed: u64, opts: &SimOptions) -> ScheduleResult {
    let mut rng = SimRng::new(seed);
    let timings = DispatchTimings::default();
    let count = rng.range(1, 3) as usize;
    let printers: Vec<SimPrinter> = (0..count)
        .map(|i| SimPrinter {
            name: format!("p{i}"),
            model: MODELS[rng.below(2) as usize].to_string(),
            online: false,
            epoch: 0,
            half_open_until: None,
            have_full: false,
            last_full_at: None,
            state: GcodeState::Idle,
            subtask_id: "0".into(),
            gcode_file: String::new(),
            print_error: 0,
            blocking_hms: false,
            object_on_plate: rng.chance(30),
            start_at: None,
            running_at: None,
            ends_at: None,
            error_clears_at: None,
            history: Vec::new(),
            last_tap: None,
            trays: random_trays(&mut rng),
        })
        .collect();
    let names: Vec<String> = printers.iter().map(|p| p.name.clone()).collect();
    let store = match Store::open_in_memory() {
        Ok(s) => s,
        Err(e) => {
            return ScheduleResult {
                violations: vec![format!("cannot open the in-memory store: {e}")],
                ..ScheduleResult::default()
            };
        }
    };
    let mut sim = Sim {
        rng,
        opts: opts.clone(),
        now: START_TIME,
        store,
        state: DispatchState::new(timings.clone()),
        timings: timings.clone(),
        printers,
        pending: Vec::new(),
        pending_seq: 0,
        checker: InvariantChecker::new(timings, &names),
        stats: SimStats::default(),
        violations: Vec::new(),
        starts_received: BTreeMap::new(),
        next_sequence: 20_000,
        next_key: 0,
        keys: Vec::new(),
        next_tap: 0,
        next_local: 0,
        safety_latched: false,
        last_ack: None,
        trace: Vec::new(),
    };
    sim.run();
    let mut violations = std::mem::take(&mut sim.violations);
    violations.extend(std::mem::take(&mut sim.checker.violations));
    ScheduleResult {
        violations,
        stats: sim.stats,
        trace: sim.trace,
    }
}

impl Sim {
    fn printer_list(&self) -> Vec<(String, String)> {
        self.printers
            .iter()
            .map(|p| (p.name.clone(), p.model.clone()))
            .collect()
    }

    fn run(&mut self) {
        self.boot();
        for p in 0..self.printers.len() {
            self.link_up(p);
        }
        for step in 0..self.opts.steps {
            self.step();
            if step % 30 == 29 {
                self.check_store_mirror();
            }
            if self.violations.len() + self.checker.violations.len() > 0 {
                return;
            }
        }
        // Drain: ten quiet minutes; every start must be resolved by then.
        for _ in 0..40 {
            self.advance(15_000);
        }
        let now = self.now;
        for j in self.state.jobs.values() {
            if j.state == JobState::Starting {
                self.violations.push(format!(
                    "t={now}: job {} still starting after ten quiet minutes",
                    j.id
                ));
            }
        }
        self.check_store_mirror();
    }

    fn boot(&mut self) {
        let now = self.now;
        if let Err(e) = self.store.recover_after_restart(now) {
            self.violations.push(format!("recovery failed: {e}"));
        }
        match self.store.load_dispatch_state(
            self.timings.clone(),
            &self.printer_list(),
            self.safety_latched,
        ) {
            Ok(s) => self.state = s,
            Err(e) => self
                .violations
                .push(format!("loading the state failed: {e}")),
        }
        if self
            .state
            .jobs
            .values()
            .any(|j| j.state == JobState::Starting)
        {
            self.violations
                .push(format!("t={now}: I6: a starting job survived recovery"));
        }
        self.checker.resync_after_restart(&self.state);
        self.deliver(Event::Restart);
    }

    // ------------------------------------------------------------ the gateway side

    fn deliver(&mut self, event: Event) {
        self.stats.events += 1;
        let now = self.now;
        self.checker.observe_event(&event, now);
        let mut actions = decide(&self.state, event.clone(), now);
        self.mutate(&event, &mut actions);
        for a in &actions {
            match a {
                Action::MarkPrinting { .. } => self.stats.confirmed += 1,
                Action::MarkUnconfirmed { .. } => self.stats.unconfirmed += 1,
                Action::MarkFinished { .. } => self.stats.finished += 1,
                Action::ReturnToQueued { .. } => self.stats.returned_to_queue += 1,
                Action::HoldJob { .. } => self.stats.filament_holds += 1,
                Action::Publish {
                    mapping: Some(_), ..
                } => self.stats.mapped_publishes += 1,
                _ => {}
            }
        }
        let (committed, effects) = match self.store.commit_batch(&mut self.state, actions.clone()) {
            Ok(effects) => (actions, effects),
            Err(e) => {
                self.violations.push(format!(
                    "t={now}: the store refused an action of the dispatcher after {event:?}: {e}"
                ));
                let n = e.index.min(actions.len());
                (actions[..n].to_vec(), Vec::new())
            }
        };
        if self.opts.trace {
            self.trace.push(format!("t={now} event {event:?}"));
            for a in &committed {
                self.trace.push(format!("    {a:?}"));
            }
        }
        self.checker.observe_batch(&committed, now);
        for effect in effects {
            self.run_effect(effect);
        }
        self.checker.check_state(&self.state, now);
    }

    /// Deliver an event, then (sometimes) deliver it again at once: the duplicate must change
    /// nothing (I7).
    fn deliver_maybe_twice(&mut self, event: Event) {
        self.deliver(event.clone());
        if self.rng.chance(15) {
            let actions = decide(&self.state, event.clone(), self.now);
            if let Some(a) = actions.iter().find(|a| {
                a.job_transition().is_some()
                    || matches!(
                        a,
                        Action::Publish { .. } | Action::RecordTap { .. } | Action::Stage { .. }
                    )
            }) {
                let now = self.now;
                self.violations
                    .push(format!("t={now}: I7: a duplicated {event:?} caused {a:?}"));
            }
            self.deliver(event);
        }
    }

    fn mutate(&mut self, event: &Event, actions: &mut Vec<Action>) {
        let Some(m) = self.opts.mutation else { return };
        match m {
            Mutation::RepublishAfterReconnect => {
                if let Event::PrinterReport { printer, report } = event
                    && self
                        .state
                        .printers
                        .get(printer)
                        .is_some_and(|p| p.epoch.is_some_and(|e| e != report.connection_epoch))
                {
                    for j in self.state.jobs.values() {
                        if j.assigned_printer.as_deref() == Some(printer.as_str())
                            && j.start.as_ref().is_some_and(|a| a.publish_attempted())
                        {
                            actions.push(Action::Publish {
                                job: j.id,
                                printer: printer.clone(),
                                subtask_id: j.subtask_id,
                                remote_name: j.remote_name(),
                                plate: j.plate,
                                name: j.name.clone(),
                                file_sha256: j.file_sha256.clone(),
                                epoch: report.connection_epoch,
                                deadline: self.now + 1,
                                mapping: j.start.as_ref().and_then(|a| a.mapping.clone()),
                                ticket: self.state.next_ticket(),
                            });
                        }
                    }
                }
            }
            Mutation::PublishOnStaleReport => {
                let mut out = Vec::new();
                let mut extra_db = Vec::new();
                for a in actions.drain(..) {
                    if let Action::RequestPushall { printer, .. } = &a
                        && let Some(j) = self.state.jobs.values().find(|j| {
                            j.assigned_printer.as_deref() == Some(printer.as_str())
                                && j.state == JobState::Starting
                                && j.start.as_ref().is_some_and(|s| !s.publish_attempted())
                        })
                        && let Some(s) = &j.start
                    {
                        let epoch = self
                            .state
                            .printers
                            .get(printer)
                            .and_then(|p| p.epoch)
                            .unwrap_or_default();
                        extra_db.push(Action::MarkPublishing {
                            job: j.id,
                            epoch,
                            at: self.now,
                        });
                        out.push(Action::Publish {
                            job: j.id,
                            printer: printer.clone(),
                            subtask_id: j.subtask_id,
                            remote_name: j.remote_name(),
                            plate: j.plate,
                            name: j.name.clone(),
                            file_sha256: j.file_sha256.clone(),
                            epoch,
                            deadline: s.window_deadline,
                            mapping: s.mapping.clone(),
                            ticket: self.state.next_ticket(),
                        });
                    } else {
                        out.push(a);
                    }
                }
                let split = out
                    .iter()
                    .position(|a| a.kind() == ActionKind::Effect)
                    .unwrap_or(out.len());
                let tail = out.split_off(split);
                out.extend(extra_db);
                out.extend(tail);
                *actions = out;
            }
            Mutation::ForgetActivity => {
                actions.retain(|a| !matches!(a, Action::MarkPlateOccupied { .. }));
            }
            Mutation::MisrouteFilament => {
                let shift = |m: &mut Option<Mapping>| {
                    for a in m.iter_mut().flat_map(|m| m.assignments.iter_mut()) {
                        if let TrayRef::Ams { slot, .. } = &mut a.tray {
                            *slot = (*slot + 1) % 4;
                        }
                    }
                };
                for a in actions.iter_mut() {
                    match a {
                        Action::ConsumeTapAndMarkStarting { mapping, .. }
                        | Action::Publish { mapping, .. } => shift(mapping),
                        _ => {}
                    }
                }
            }
            Mutation::RequeueAfterPublish => {
                for a in actions.iter_mut() {
                    if let Action::MarkUnconfirmed { job, reason, at } = a {
                        *a = Action::ReturnToQueued {
                            job: *job,
                            restore_tap: true,
                            reason: reason.clone(),
                            at: *at,
                        };
                    }
                }
            }
        }
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            let line = format!("t={} world: {}", self.now, what());
            self.trace.push(line);
        }
    }

    fn schedule(&mut self, delay: Millis, what: Pending) {
        self.pending_seq += 1;
        self.pending
            .push((self.now + delay, self.pending_seq, what));
    }

    /// A result of the effect runner, and sometimes a late copy of it that arrives after later
    /// results (a retried callback, a reordered channel): stale results must change nothing.
    fn schedule_result(&mut self, delay: Millis, event: Event) {
        self.schedule(delay, Pending::Runner(event.clone()));
        if self.rng.chance(12) {
            let late = delay + self.rng.range(1, 90_000);
            self.schedule(late, Pending::Runner(event));
        }
    }

    fn send_from_printer(&mut self, p: usize, delay: Millis, what: FromPrinter) {
        let epoch = self.printers[p].epoch;
        self.schedule(
            delay,
            Pending::FromPrinter {
                printer: p,
                epoch,
                what,
            },
        );
    }

    fn run_effect(&mut self, effect: Action) {
        let now = self.now;
        match effect {
            Action::Stage {
                job,
                printer,
                ticket,
                ..
            } => {
                let ok = self
                    .index(&printer)
                    .is_some_and(|i| self.printers[i].online)
                    && self.rng.chance(90);
                let delay = self.rng.range(500, 20_000);
                let event = if ok {
                    Event::StageComplete {
                        job,
                        printer,
                        ticket,
                    }
                } else {
                    Event::StageFailed {
                        job,
                        printer,
                        ticket,
                        reason: "simulated upload failure".into(),
                    }
                };
                self.schedule_result(delay, event);
            }
            Action::RequestPushall { printer, .. } => {
                if let Some(i) = self.index(&printer)
                    && self.printers[i].talks()
                {
                    let delay = self.rng.range(100, 3_000);
                    self.send_from_printer(i, delay, FromPrinter::FullReport);
                }
            }
            Action::Publish {
                job,
                printer,
                subtask_id,
                remote_name,
                epoch,
                deadline,
                ticket,
                ..
            } => {
                let Some(i) = self.index(&printer) else {
                    return;
                };
                let outcome = if now >= deadline {
                    PublishOutcome::FailedBeforeSend("the start window passed".into())
                } else if !self.printers[i].online || self.printers[i].epoch != epoch {
                    PublishOutcome::NotConnected
                } else if self.rng.chance(3) {
                    PublishOutcome::FailedBeforeSend("simulated: file missing".into())
                } else {
                    if self.rng.chance(4) {
                        // Someone at the printer starts a print from its screen just before our
                        // command arrives: the printer is busy and must refuse ours.
                        self.screen_start(i);
                    }
                    self.next_sequence += 1;
                    let sequence_id = self.next_sequence.to_string();
                    self.printer_receives_start(i, subtask_id, remote_name, sequence_id.clone());
                    PublishOutcome::Published { sequence_id }
                };
                match outcome {
                    PublishOutcome::Published { .. } => self.stats.publishes_sent += 1,
                    _ => self.stats.publishes_not_sent += 1,
                }
                let delay = self.rng.range(0, 500);
                self.schedule_result(
                    delay,
                    Event::PublishResult {
                        job,
                        ticket,
                        outcome,
                    },
                );
            }
            _ => {}
        }
    }

    fn index(&self, printer: &str) -> Option<usize> {
        self.printers.iter().position(|p| p.name == printer)
    }

    // ------------------------------------------------------------ the printer side

    fn printer_receives_start(
        &mut self,
        i: usize,
        subtask_id: u32,
        remote_name: String,
        sequence_id: String,
    ) {
        let now = self.now;
        let count = self.starts_received.entry(subtask_id).or_insert(0);
        *count += 1;
        if *count > 1 {
            self.violations.push(format!(
                "t={now}: I2: printer {} received the start of subtask {subtask_id} {count} times",
                self.printers[i].name
            ));
        }
        if self.printers[i].half_open_until.is_some() || self.rng.chance(4) {
            return; // ignored by a half-open session / lost in transit
        }
        if self.printers[i].busy() {
            self.stats.busy_refusals += 1;
            let p = &mut self.printers[i];
            p.print_error = ERROR_BUSY;
            p.error_clears_at = Some(now + 8_000);
            if self.rng.chance(70) {
                let d = self.rng.range(100, 2_000);
                self.send_from_printer(
                    i,
                    d,
                    FromPrinter::Ack {
                        sequence_id,
                        success: Some(false),
                    },
                );
            }
            let d = self.rng.range(100, 1_500);
            self.send_from_printer(i, d, FromPrinter::DeltaReport);
            return;
        }
        if self.printers[i].object_on_plate {
            self.violations.push(format!(
                "t={now}: I1: printer {} received a start while a print was still on its plate",
                self.printers[i].name
            ));
        }
        let ack = self.rng.below(100);
        if ack < 70 {
            let success = if ack < 60 { Some(true) } else { None };
            let d = self.rng.range(100, 10_000);
            self.send_from_printer(
                i,
                d,
                FromPrinter::Ack {
                    sequence_id: sequence_id.clone(),
                    success,
                },
            );
            if self.rng.chance(15) {
                let d = self.rng.range(100, 10_000);
                self.send_from_printer(
                    i,
                    d,
                    FromPrinter::Ack {
                        sequence_id,
                        success,
                    },
                );
            }
        }
        let id = subtask_id.to_string();
        let roll = self.rng.below(100);
        let p = &mut self.printers[i];
        if roll < 5 {
            // Echoes our id and never starts (signature dance, invalid file).
            p.subtask_id = id;
        } else if roll < 15 {
            // Holds FINISH ~50 s before showing PREPARE.
            p.start_at = Some((now + 50_000, id, remote_name));
        } else if roll < 35 {
            p.subtask_id = id.clone();
            let d = self.rng.range(2_000, 20_000);
            self.printers[i].start_at = Some((now + d, id, remote_name));
        } else {
            let d = self.rng.range(500, 5_000);
            p.start_at = Some((now + d, id, remote_name));
        }
        let d = self.rng.range(100, 1_000);
        self.send_from_printer(i, d, FromPrinter::DeltaReport);
    }

    fn printer_timer(&mut self, i: usize) {
        let now = self.now;
        let p = &mut self.printers[i];
        if p.half_open_until.is_some_and(|t| t <= now) {
            p.half_open_until = None;
            // The link's watchdog tears the silent session down and reconnects.
            let name = p.name.clone();
            p.online = false;
            self.deliver(Event::LinkDown { printer: name });
            self.link_up(i);
            return;
        }
        if let Some((at, id, file)) = p.start_at.clone()
            && at <= now
        {
            p.start_at = None;
            p.state = GcodeState::Prepare;
            p.subtask_id = id;
            p.gcode_file = file;
            p.print_error = 0;
            p.object_on_plate = true;
            p.running_at = Some(now + 3_000);
            let duration = self.rng.range(20_000, 900_000);
            self.printers[i].ends_at = Some(now + duration);
        } else if p.running_at.is_some_and(|t| t <= now) {
            p.running_at = None;
            p.state = GcodeState::Running;
        } else if p.ends_at.is_some_and(|t| t <= now) {
            p.ends_at = None;
            p.running_at = None;
            if self.rng.chance(90) {
                self.printers[i].state = GcodeState::Finish;
            } else {
                let p = &mut self.printers[i];
                p.state = GcodeState::Failed;
                p.print_error = 0x0300_4000;
                p.error_clears_at = Some(now + 5_000);
            }
        } else if p.error_clears_at.is_some_and(|t| t <= now) {
            p.error_clears_at = None;
            p.print_error = 0;
        } else {
            return;
        }
        self.push_report(i);
    }

    /// The printer pushes a report after a change (full or delta).
    fn push_report(&mut self, i: usize) {
        if !self.printers[i].talks() {
            return;
        }
        let d = self.rng.range(50, 1_000);
        let what = if self.rng.chance(40) {
            FromPrinter::FullReport
        } else {
            FromPrinter::DeltaReport
        };
        self.send_from_printer(i, d, what);
    }

    fn report_of(&mut self, i: usize, full: bool) -> ReportSummary {
        let now = self.now;
        let p = &mut self.printers[i];
        if full {
            p.have_full = true;
            p.last_full_at = Some(now);
        }
        let r = ReportSummary {
            link_online: true,
            connection_epoch: p.epoch,
            have_full_report: p.have_full,
            full_report_at: if p.have_full { p.last_full_at } else { None },
            gcode_state: if p.have_full {
                p.state
            } else {
                GcodeState::Unknown
            },
            subtask_id: Some(p.subtask_id.clone()),
            gcode_file: Some(p.gcode_file.clone()),
            print_error: p.print_error,
            blocking_hms: p.blocking_hms,
            verification_failed: false,
            control: ControlState::Ok,
            trays: p.have_full.then(|| p.trays.clone()),
        };
        p.history.push(r.clone());
        if p.history.len() > 6 {
            p.history.remove(0);
        }
        r
    }

    fn link_up(&mut self, i: usize) {
        let p = &mut self.printers[i];
        p.online = true;
        p.epoch += 1;
        p.have_full = false;
        p.history.clear();
        if self.rng.chance(30) {
            // A delta before the first full report of the session.
            let d = self.rng.range(50, 400);
            self.send_from_printer(i, d, FromPrinter::DeltaReport);
        }
        let d = self.rng.range(400, 2_000);
        self.send_from_printer(i, d, FromPrinter::FullReport);
    }

    // ------------------------------------------------------------ time

    /// Move the clock forward by `by`, running printer timers and deliveries in time order.
    fn advance(&mut self, by: Millis) {
        let target = self.now + by;
        for _ in 0..10_000 {
            let timer = (0..self.printers.len())
                .filter_map(|i| self.printers[i].next_timer().map(|t| (t, i)))
                .min();
            let pending = self
                .pending
                .iter()
                .enumerate()
                .min_by_key(|(_, (t, s, _))| (*t, *s))
                .map(|(idx, (t, _, _))| (*t, idx));
            match (timer, pending) {
                (Some((t, i)), p) if t <= target && p.is_none_or(|(pt, _)| t < pt) => {
                    self.now = self.now.max(t);
                    self.printer_timer(i);
                }
                (_, Some((t, idx))) if t <= target => {
                    self.now = self.now.max(t);
                    let (_, _, what) = self.pending.swap_remove(idx);
                    self.arrive(what);
                }
                _ => break,
            }
        }
        self.now = target;
        self.deliver(Event::Tick);
    }

    fn arrive(&mut self, what: Pending) {
        match what {
            Pending::Runner(event) => self.deliver_maybe_twice(event),
            Pending::FromPrinter {
                printer,
                epoch,
                what,
            } => {
                let p = &self.printers[printer];
                if !p.talks() || p.epoch != epoch {
                    return;
                }
                let name = p.name.clone();
                match what {
                    FromPrinter::FullReport | FromPrinter::DeltaReport => {
                        let full = matches!(what, FromPrinter::FullReport);
                        let report = self.report_of(printer, full);
                        self.deliver_maybe_twice(Event::PrinterReport {
                            printer: name,
                            report,
                        });
                    }
                    FromPrinter::Ack {
                        sequence_id,
                        success,
                    } => {
                        let event = Event::Ack {
                            printer: name,
                            sequence_id,
                            success,
                            reason: success
                                .is_some_and(|s| !s)
                                .then(|| "device busy".to_string()),
                        };
                        self.last_ack = Some(event.clone());
                        self.deliver_maybe_twice(event);
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------ happenings

    fn step(&mut self) {
        let n = self.printers.len() as u64;
        let i = self.rng.below(n) as usize;
        let roll = self.rng.below(100);
        match roll {
            0..=29 => {
                let by = self.rng.range(200, 6_000);
                self.advance(by);
            }
            30..=31 => {
                let by = self.rng.range(120_000, 2_400_000);
                self.advance(by);
            }
            32..=41 => self.queue_job(),
            42..=43 => self.resubmit_job(),
            44..=55 => self.person_at_printer(i),
            56..=57 => {
                if let Some(tap_id) = self.printers[i].last_tap.clone() {
                    let printer = self.printers[i].name.clone();
                    self.deliver(Event::Tap {
                        printer,
                        user: "ann".into(),
                        tap_id,
                    });
                }
            }
            58..=59 => self.screen_start(i),
            60..=62 => {
                if self.printers[i].online {
                    self.printers[i].online = false;
                    let printer = self.printers[i].name.clone();
                    self.deliver(Event::LinkDown { printer });
                }
            }
            63..=67 => {
                if !self.printers[i].online && self.printers[i].half_open_until.is_none() {
                    self.link_up(i);
                }
            }
            68 => {
                if self.printers[i].online && self.printers[i].half_open_until.is_none() {
                    let d = self.rng.range(30_000, 120_000);
                    self.printers[i].half_open_until = Some(self.now + d);
                }
            }
            69 => {
                self.stats.restarts += 1;
                self.pending.clear();
                for p in 0..self.printers.len() {
                    if self.printers[p].online {
                        self.link_up(p);
                    }
                }
                self.boot();
            }
            70..=72 => {
                // Re-deliver the last report (duplicate) or an older one (reordered).
                let p = &self.printers[i];
                if p.talks() && !p.history.is_empty() {
                    let k = self.rng.below(p.history.len() as u64) as usize;
                    let report = p.history[k].clone();
                    let printer = p.name.clone();
                    self.deliver(Event::PrinterReport { printer, report });
                }
            }
            73 => {
                if let Some(ack) = self.last_ack.clone() {
                    self.deliver(ack);
                }
            }
            74..=76 => self.user_on_job(
                |_| true,
                |job, _| Event::Cancel {
                    job,
                    user: "bob".into(),
                },
            ),
            77..=79 => {
                let up = self.rng.chance(50);
                self.user_on_job(
                    |s| s.is_pre_start(),
                    move |job, _| Event::Move {
                        job,
                        direction: if up {
                            MoveDirection::Up
                        } else {
                            MoveDirection::Down
                        },
                    },
                )
            }
            80..=83 => self.start_again(),
            84 => {
                let printer = self.rng.chance(50).then(|| self.printers[i].name.clone());
                self.deliver(Event::PauseQueue { printer });
            }
            85..=86 => {
                let printer = self.rng.chance(50).then(|| self.printers[i].name.clone());
                self.deliver(Event::ResumeQueue { printer });
            }
            87 => {
                if self.rng.chance(30) {
                    self.safety_latched = true;
                    self.deliver(Event::SafetyTrip {
                        reason: "simulated smoke".into(),
                    });
                }
            }
            88..=89 => {
                if self.safety_latched {
                    self.safety_latched = false;
                    self.deliver(Event::SafetyReset { user: "ann".into() });
                }
            }
            90 => {
                self.printers[i].blocking_hms = !self.printers[i].blocking_hms;
                self.push_report(i);
            }
            91..=93 => self.act_during_upload(),
            94..=95 => self.change_tray(i),
            _ => {
                // A fresh full report now (X1-style periodic full push).
                if self.printers[i].talks() {
                    self.send_from_printer(i, 0, FromPrinter::FullReport);
                }
                self.advance(1);
            }
        }
    }

    /// A person loads, swaps or empties one tray; the printer reports it.
    fn change_tray(&mut self, i: usize) {
        let n = self.printers[i].trays.slots.len() as u64;
        let k = self.rng.below(n) as usize;
        let tray = self.printers[i].trays.slots[k].tray;
        self.printers[i].trays.slots[k] = random_slot(&mut self.rng, tray);
        self.push_report(i);
    }

    fn queue_job(&mut self) {
        self.next_key += 1;
        let key = format!("req-{}", self.next_key);
        let p = self.rng.below(self.printers.len() as u64) as usize;
        let model = self.printers[p].model.clone();
        let target = if self.rng.chance(50) {
            Target::Printer(self.printers[p].name.clone())
        } else {
            Target::AnyCompatible
        };
        let deadline = self
            .rng
            .chance(20)
            .then(|| self.now + self.rng.range(60_000, 3_600_000));
        let new = NewJob {
            idempotency_key: key.clone(),
            target,
            model_code: model,
            file_sha256: format!("{:064x}", self.next_key),
            plate: 1,
            name: format!("part {}", self.next_key),
            deadline,
            created_by: "ann".into(),
        };
        self.keys.push(key);
        let needs = random_needs(&mut self.rng);
        let json = (!needs.is_empty())
            .then(|| serde_json::to_string(&needs).unwrap_or_else(|_| "[]".into()));
        match self
            .store
            .create_job_with_filaments(&new, json.as_deref(), self.now)
        {
            Ok((job, _)) => self.deliver_maybe_twice(Event::JobQueued(Box::new(job))),
            Err(e) => self.violations.push(format!("create_job failed: {e}")),
        }
    }

    fn resubmit_job(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let k = self.rng.below(self.keys.len() as u64) as usize;
        let key = self.keys[k].clone();
        let new = NewJob {
            idempotency_key: key,
            target: Target::AnyCompatible,
            model_code: "C12".into(),
            file_sha256: "0".repeat(64),
            plate: 1,
            name: "resubmitted".into(),
            deadline: None,
            created_by: "ann".into(),
        };
        let before = self.job_count();
        self.submit(&new);
        if self.job_count() != before {
            let now = self.now;
            self.violations.push(format!(
                "t={now}: I7: a resubmitted request created a second job"
            ));
        }
    }

    fn job_count(&self) -> usize {
        self.store
            .jobs_in_states(&JobState::ALL)
            .map(|v| v.len())
            .unwrap_or(0)
    }

    fn submit(&mut self, new: &NewJob) {
        match self.store.create_job(new, self.now) {
            Ok((job, _)) => self.deliver_maybe_twice(Event::JobQueued(Box::new(job))),
            Err(e) => self.violations.push(format!("create_job failed: {e}")),
        }
    }

    /// A person at the printer: removes a finished print (maybe dismisses the dialog) and taps
    /// "plate clear" when the plate is really clear and nothing is printing.
    fn person_at_printer(&mut self, i: usize) {
        let p = &mut self.printers[i];
        if p.busy() {
            return;
        }
        let mut changed = false;
        if p.object_on_plate {
            p.object_on_plate = false;
            if p.state == GcodeState::Finish && self.rng.chance(50) {
                self.printers[i].state = GcodeState::Idle;
                changed = true;
            }
        }
        if changed {
            self.push_report(i);
        }
        let (name, object) = (
            self.printers[i].name.clone(),
            self.printers[i].object_on_plate,
        );
        self.note(|| format!("person at {name} (print on plate: {object})"));
        if self.rng.chance(80) {
            self.next_tap += 1;
            let tap_id = format!("tap-{}", self.next_tap);
            self.printers[i].last_tap = Some(tap_id.clone());
            self.stats.taps += 1;
            let printer = self.printers[i].name.clone();
            self.deliver_maybe_twice(Event::Tap {
                printer,
                user: "ann".into(),
                tap_id,
            });
        }
    }

    /// Someone starts a print from the printer's own screen (plate physically clear).
    fn screen_start(&mut self, i: usize) {
        let now = self.now;
        let p = &mut self.printers[i];
        if p.busy() || p.object_on_plate || p.print_error != 0 {
            return;
        }
        let name = p.name.clone();
        self.next_local += 1;
        self.stats.screen_starts += 1;
        self.note(|| format!("screen start on {name}"));
        let p = &mut self.printers[i];
        p.state = GcodeState::Prepare;
        p.subtask_id = format!("{}", 1_900_000_000 + self.next_local);
        p.gcode_file = format!("/sdcard/local-{}.gcode.3mf", self.next_local);
        p.object_on_plate = true;
        p.running_at = Some(now + 2_000);
        let d = self.rng.range(20_000, 600_000);
        self.printers[i].ends_at = Some(now + d);
        self.push_report(i);
    }

    fn user_on_job(
        &mut self,
        filter: impl Fn(JobState) -> bool,
        make: impl Fn(JobId, JobState) -> Event,
    ) {
        let candidates: Vec<(JobId, JobState)> = self
            .state
            .jobs
            .values()
            .filter(|j| filter(j.state))
            .map(|j| (j.id, j.state))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let k = self.rng.below(candidates.len() as u64) as usize;
        let (job, state) = candidates[k];
        self.deliver(make(job, state));
    }

    /// A person reorders or cancels a job while its upload to a printer runs.
    fn act_during_upload(&mut self) {
        let uploading: Vec<JobId> = self.state.uploads_in_flight.keys().copied().collect();
        if uploading.is_empty() {
            return;
        }
        let job = uploading[self.rng.below(uploading.len() as u64) as usize];
        let event = match self.rng.below(3) {
            0 => Event::Move {
                job,
                direction: MoveDirection::Up,
            },
            1 => Event::Move {
                job,
                direction: MoveDirection::Down,
            },
            _ => Event::Cancel {
                job,
                user: "bob".into(),
            },
        };
        self.deliver(event);
    }

    fn start_again(&mut self) {
        let Ok(jobs) = self.store.jobs_in_states(&[
            JobState::Unconfirmed,
            JobState::Failed,
            JobState::Expired,
        ]) else {
            return;
        };
        if jobs.is_empty() {
            return;
        }
        let k = self.rng.below(jobs.len() as u64) as usize;
        let job = jobs[k].clone();
        match self.store.allocate_subtask_id(self.now) {
            Ok(new_subtask_id) => self.deliver(Event::StartAgain {
                job: Box::new(job),
                user: "ann".into(),
                new_subtask_id,
            }),
            Err(e) => self
                .violations
                .push(format!("allocate_subtask_id failed: {e}")),
        }
    }

    /// I6: the in-memory state equals what a reload from SQLite gives (persisted parts).
    fn check_store_mirror(&mut self) {
        let loaded = match self.store.load_dispatch_state(
            self.timings.clone(),
            &self.printer_list(),
            self.state.safety_tripped,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.violations.push(format!("reload failed: {e}"));
                return;
            }
        };
        let now = self.now;
        let strip = |s: &DispatchState| {
            let jobs: Vec<_> = s
                .jobs
                .values()
                .map(|j| {
                    let mut j = j.clone();
                    if let Some(a) = &mut j.start {
                        a.id_echoed_at = None;
                    }
                    j
                })
                .collect();
            let plates: Vec<_> = s
                .printers
                .values()
                .map(|p| (p.name.clone(), p.plate.clone(), p.paused))
                .collect();
            (jobs, plates, s.queue_paused)
        };
        let (a, b) = (strip(&self.state), strip(&loaded));
        if a != b {
            self.violations.push(format!(
                "t={now}: I6: memory and SQLite disagree:\n memory {a:?}\n stored {b:?}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::plate::Tap;

    fn fresh_report(epoch: u64, at: Millis) -> ReportSummary {
        ReportSummary {
            link_online: true,
            connection_epoch: epoch,
            have_full_report: true,
            full_report_at: Some(at),
            gcode_state: GcodeState::Idle,
            subtask_id: Some("0".into()),
            control: ControlState::Ok,
            ..ReportSummary::default()
        }
    }

    fn job(id: JobId) -> crate::jobs::model::Job {
        crate::jobs::model::Job {
            id,
            idempotency_key: format!("k{id}"),
            target: Target::Printer("p0".into()),
            model_code: "C12".into(),
            file_sha256: "f".into(),
            plate: 1,
            name: "n".into(),
            position: id,
            deadline: None,
            created_by: "ann".into(),
            created_at: 0,
            updated_at: 0,
            state: JobState::Staged,
            assigned_printer: Some("p0".into()),
            subtask_id: 7,
            stage_failures: 0,
            start_again_at: None,
            start: None,
            message: None,
            filaments: None,
        }
    }

    fn requeue(job: JobId, at: Millis) -> Action {
        Action::ReturnToQueued {
            job,
            restore_tap: true,
            reason: "x".into(),
            at,
        }
    }

    fn assign(job: JobId) -> Action {
        Action::Assign {
            job,
            printer: "p0".into(),
            at: 0,
        }
    }

    fn stage(job: JobId, ticket: u64) -> Action {
        Action::Stage {
            job,
            printer: "p0".into(),
            file_sha256: "f".into(),
            remote_name: "pg-7.gcode.3mf".into(),
            ticket,
        }
    }

    fn stage_complete(job: JobId, ticket: u64) -> Event {
        Event::StageComplete {
            job,
            printer: "p0".into(),
            ticket,
        }
    }

    fn staged(job: JobId, at: Millis) -> Action {
        Action::MarkStaged {
            job,
            printer: "p0".into(),
            at,
        }
    }

    fn publish(job: JobId, at: Millis) -> Action {
        Action::Publish {
            job,
            printer: "p0".into(),
            subtask_id: 7,
            remote_name: "pg-7.gcode.3mf".into(),
            plate: 1,
            name: "n".into(),
            file_sha256: "f".into(),
            epoch: 1,
            deadline: at + 60_000,
            mapping: None,
            ticket: 1,
        }
    }

    /// A legal trace passes; the same trace with a second publish, a start without a tap, or a
    /// publish on a stale report is caught.
    #[test]
    fn checker_catches_hand_made_violations() {
        let t = DispatchTimings::default();
        let tap = Tap {
            tap_id: "t1".into(),
            by: "ann".into(),
            at: 1_000,
        };
        let legal = |c: &mut InvariantChecker| {
            c.observe_event(&Event::Tick, 0);
            c.observe_batch(&[Action::TrackJob(Box::new(job(1)))], 0);
            c.observe_batch(&[assign(1), stage(1, 1)], 0);
            c.observe_event(&stage_complete(1, 1), 500);
            c.observe_batch(&[staged(1, 500)], 500);
            c.observe_event(
                &Event::PrinterReport {
                    printer: "p0".into(),
                    report: fresh_report(1, 900),
                },
                900,
            );
            c.observe_event(&Event::Tick, 1_000);
            c.observe_batch(
                &[Action::RecordTap {
                    printer: "p0".into(),
                    tap: tap.clone(),
                }],
                1_000,
            );
            c.observe_event(&Event::Tick, 1_500);
            c.observe_batch(
                &[
                    Action::ConsumeTapAndMarkStarting {
                        job: 1,
                        printer: "p0".into(),
                        tap: tap.clone(),
                        decided_at: 1_500,
                        window_deadline: 61_500,
                        mapping: None,
                    },
                    Action::MarkPublishing {
                        job: 1,
                        epoch: 1,
                        at: 1_500,
                    },
                    publish(1, 1_500),
                ],
                1_500,
            );
        };
        let mut ok = InvariantChecker::new(t.clone(), &["p0".into()]);
        legal(&mut ok);
        assert!(ok.violations.is_empty(), "{:?}", ok.violations);

        // A second publish of the same job (the 2023-08-15 replay).
        let mut c = ok.clone();
        c.observe_batch(
            &[
                Action::MarkPublishing {
                    job: 1,
                    epoch: 1,
                    at: 2_000,
                },
                publish(1, 2_000),
            ],
            2_000,
        );
        assert!(
            c.violations.iter().any(|v| v.contains("I2")),
            "{:?}",
            c.violations
        );

        // Staging a job on the completion of an earlier upload while a newer one runs (seed
        // 37769: the job was moved down during its upload and assigned again).
        let mut c = InvariantChecker::new(t.clone(), &["p0".into()]);
        c.observe_batch(&[Action::TrackJob(Box::new(job(1)))], 0);
        c.observe_batch(&[assign(1), stage(1, 1)], 0);
        c.observe_batch(&[assign(1), stage(1, 2)], 100);
        c.observe_event(&stage_complete(1, 1), 500);
        c.observe_batch(&[staged(1, 500)], 500);
        assert!(
            c.violations
                .iter()
                .any(|v| v.contains("I7") && v.contains("has not completed")),
            "{:?}",
            c.violations
        );

        // A late "nothing was sent" of an earlier publish does not clear the doubt of a later one.
        let mut c = ok.clone();
        c.observe_event(
            &Event::PublishResult {
                job: 1,
                ticket: 0,
                outcome: PublishOutcome::NotConnected,
            },
            1_800,
        );
        c.observe_batch(&[requeue(1, 1_800)], 1_800);
        assert!(
            c.violations.iter().any(|v| v.contains("I2")),
            "{:?}",
            c.violations
        );

        // Requeueing a job whose start may have been sent.
        let mut c = ok.clone();
        c.observe_batch(&[requeue(1, 2_000)], 2_000);
        assert!(
            c.violations.iter().any(|v| v.contains("I2")),
            "{:?}",
            c.violations
        );

        // Publishing on a report older than report_max_age.
        let mut c = InvariantChecker::new(t.clone(), &["p0".into()]);
        c.observe_batch(&[Action::TrackJob(Box::new(job(1)))], 0);
        c.observe_event(
            &Event::PrinterReport {
                printer: "p0".into(),
                report: fresh_report(1, 0),
            },
            0,
        );
        c.observe_batch(
            &[Action::RecordTap {
                printer: "p0".into(),
                tap: tap.clone(),
            }],
            1_000,
        );
        c.observe_batch(
            &[
                Action::ConsumeTapAndMarkStarting {
                    job: 1,
                    printer: "p0".into(),
                    tap: tap.clone(),
                    decided_at: 20_000,
                    window_deadline: 80_000,
                    mapping: None,
                },
                Action::MarkPublishing {
                    job: 1,
                    epoch: 1,
                    at: 20_000,
                },
                publish(1, 20_000),
            ],
            20_000,
        );
        assert!(
            c.violations.iter().any(|v| v.contains("I4")),
            "{:?}",
            c.violations
        );

        // Starting on a tap that predates print activity.
        let mut c = InvariantChecker::new(t.clone(), &["p0".into()]);
        c.observe_batch(&[Action::TrackJob(Box::new(job(1)))], 0);
        c.observe_batch(
            &[Action::RecordTap {
                printer: "p0".into(),
                tap: tap.clone(),
            }],
            1_000,
        );
        let mut running = fresh_report(1, 1_200);
        running.gcode_state = GcodeState::Running;
        c.observe_event(
            &Event::PrinterReport {
                printer: "p0".into(),
                report: running,
            },
            1_200,
        );
        c.observe_batch(
            &[Action::ConsumeTapAndMarkStarting {
                job: 1,
                printer: "p0".into(),
                tap,
                decided_at: 1_300,
                window_deadline: 61_300,
                mapping: None,
            }],
            1_300,
        );
        assert!(
            c.violations.iter().any(|v| v.contains("I1")),
            "{:?}",
            c.violations
        );

        // An effect before a database action in one batch.
        let mut c = InvariantChecker::new(t, &["p0".into()]);
        c.observe_batch(
            &[
                Action::RequestPushall {
                    printer: "p0".into(),
                    at: 0,
                },
                Action::SetQueuePaused {
                    printer: None,
                    paused: true,
                },
            ],
            0,
        );
        assert!(
            c.violations.iter().any(|v| v.contains("I6")),
            "{:?}",
            c.violations
        );
    }

    #[test]
    fn the_filament_check_refuses_wrong_empty_missing_and_doubled_trays() {
        use crate::jobs::ams_mapping::{Assignment, map};
        use crate::printer::Model;
        let slot = |slot, material: Option<&str>| SlotSeen {
            tray: TrayRef::Ams { unit: 0, slot },
            loaded: material.is_some(),
            material: material.map(str::to_string),
            color: material.map(|_| "000000FF".to_string()),
        };
        let trays = Trays {
            has_ams: true,
            slots: vec![
                slot(0, Some("PLA")),
                slot(1, Some("PETG HF")),
                slot(2, None),
            ],
        };
        let need = |id, material: &str| Need {
            id,
            material: material.into(),
            color: "#000000".into(),
        };
        let needs = vec![need(1, "PETG"), need(2, "PLA")];
        let good = map(&needs, &trays, Model::P1S).expect("PETG and PLA are loaded");
        assert!(filament_problems(&needs, Some(&good), Some(&trays)).is_empty());
        assert!(filament_problems(&[], None, None).is_empty(), "no needs");
        assert_eq!(filament_problems(&needs, None, Some(&trays)).len(), 1);
        assert_eq!(filament_problems(&needs, Some(&good), None).len(), 1);
        let with_tray = |tray_of: [u32; 2]| Mapping {
            model: Model::P1S,
            use_ams: true,
            assignments: tray_of
                .iter()
                .zip(&needs)
                .map(|(&s, n)| Assignment {
                    filament: n.id,
                    need: n.describe(),
                    family: material_family(&n.material),
                    tray: TrayRef::Ams { unit: 0, slot: s },
                    tray_text: String::new(),
                })
                .collect(),
        };
        let swapped = filament_problems(&needs, Some(&with_tray([0, 1])), Some(&trays));
        assert_eq!(swapped.len(), 2, "{swapped:?}");
        let empty = filament_problems(&needs, Some(&with_tray([2, 0])), Some(&trays));
        assert!(empty.iter().any(|p| p.contains("empty")), "{empty:?}");
        let doubled = filament_problems(&needs, Some(&with_tray([1, 1])), Some(&trays));
        assert!(
            doubled.iter().any(|p| p.contains("two filaments")),
            "{doubled:?}"
        );
    }

    #[test]
    fn same_seed_same_schedule() {
        let opts = SimOptions::default();
        let a = run_schedule(42, &opts);
        let b = run_schedule(42, &opts);
        assert_eq!(a.stats, b.stats);
        assert_eq!(a.violations, b.violations);
    }
}
