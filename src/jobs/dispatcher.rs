//! The plate-clear dispatcher's pure decision core: [`decide`] takes the current
//! [`DispatchState`], one [`Event`] and the caller's clock reading and returns the [`Action`]s to
//! take. No I/O, no clock reads, no randomness: the same inputs always give the same actions, which
//! is what lets `simulation.rs` check the invariants over thousands of random schedules.
//!
//! # Contract with the effect runner (I6)
//! Every batch returned by [`decide`] lists all [`ActionKind::Memory`] and
//! [`ActionKind::Database`] actions first, in the order they must be applied, then all
//! [`ActionKind::Effect`] actions. The runner:
//! 1. applies the actions in order: `Database` ones are written to SQLite, each in its own
//!    savepoint of the batch's one transaction, and then mirrored with
//!    [`DispatchState::apply`]; `Memory` ones only with [`DispatchState::apply`]; the
//!    transaction is committed (one fsync for the batch: a tap, its consumption by the start and
//!    the publish mark are one commit) before any effect runs;
//! 2. if any `Database` action fails, rolls that action back, keeps the ones before it (as if
//!    each had been committed alone), discards the rest of the batch (no effect runs without its
//!    commit) and reloads the state from the store;
//! 3. then runs the effects in the order given (upload, pushall, publish, notify) and feeds their
//!    results back as events ([`Event::StageComplete`], [`Event::PublishResult`], …);
//! 4. calls [`decide`] again only after the whole batch was applied (events are processed one at
//!    a time). [`crate::store::Store::commit_batch`] does steps 1–2.
//!
//! A `Publish` must be sent only if `now < deadline` and the link is online on `epoch`; otherwise
//! the runner reports [`PublishOutcome::NotConnected`] or [`PublishOutcome::FailedBeforeSend`]
//! without sending anything (I3).

use super::ams_mapping::{Mapping, Trays, map};
use super::model::{Job, JobId, JobState, Millis, StartAttempt, Target};
use super::plate::{PlateState, Tap, meaningful_id, observed_activity};
use crate::config::DispatchConfig;
use crate::printer::{ControlState, GcodeState, Model, PrinterSnapshot};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// `print_error` for "device busy, cannot start a new task".
pub const ERROR_BUSY: u32 = 0x0500_4004;
/// HMS 0500_0500_0001_0007: the printer refused an unsigned command (Developer Mode off).
pub const HMS_VERIFICATION_FAILED: (u32, u32) = (0x0500_0500, 0x0001_0007);
/// Failed uploads of one job before it is marked failed (I8).
pub const MAX_STAGE_FAILURES: u32 = 3;
/// How many recent tap ids per printer are remembered to drop re-submitted taps (I7).
pub const RECENT_TAPS: usize = 32;

/// Identifies one run of an effect whose result comes back as an event: an upload
/// ([`Action::Stage`] → [`Event::StageComplete`] / [`Event::StageFailed`]) or a publish
/// ([`Action::Publish`] → [`Event::PublishResult`]). A result counts only if it carries the
/// job's current ticket: a late, duplicated or reordered result of an earlier upload or publish
/// of the same job is dropped (I7). Tickets grow while the gateway runs; effects in flight end
/// with the process, so they need not survive a restart.
pub type EffectTicket = u64;

/// Dispatcher timings in milliseconds (from [`DispatchConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchTimings {
    pub plate_clear_ttl_ms: Millis,
    pub start_window_ms: Millis,
    pub report_max_age_ms: Millis,
    pub confirm_phase_a_ms: Millis,
    pub confirm_phase_b_ms: Millis,
    /// While waiting for a fresh full report, ask again at most this often.
    pub pushall_retry_ms: Millis,
    /// Wait after the n-th failed upload: n × this.
    pub stage_retry_ms: Millis,
}

impl From<&DispatchConfig> for DispatchTimings {
    fn from(c: &DispatchConfig) -> Self {
        DispatchTimings {
            plate_clear_ttl_ms: c.plate_clear_ttl_secs.saturating_mul(1000),
            start_window_ms: c.start_window_secs.saturating_mul(1000),
            report_max_age_ms: c.report_max_age_secs.saturating_mul(1000),
            confirm_phase_a_ms: c.confirm_phase_a_secs.saturating_mul(1000),
            confirm_phase_b_ms: c.confirm_phase_b_secs.saturating_mul(1000),
            pushall_retry_ms: 5_000,
            stage_retry_ms: 30_000,
        }
    }
}

impl Default for DispatchTimings {
    fn default() -> Self {
        DispatchTimings::from(&DispatchConfig::default())
    }
}

/// What the dispatcher needs from one printer snapshot, with times on the dispatcher's clock.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ReportSummary {
    pub link_online: bool,
    pub connection_epoch: u64,
    /// A full report (`msg` 0) was merged on this connection.
    pub have_full_report: bool,
    /// When the last full report arrived.
    pub full_report_at: Option<Millis>,
    pub gcode_state: GcodeState,
    pub subtask_id: Option<String>,
    pub gcode_file: Option<String>,
    pub print_error: u32,
    /// An HMS entry of severity 1–2 is present.
    pub blocking_hms: bool,
    /// HMS 0500_0500_0001_0007 (unsigned command refused) is present.
    pub verification_failed: bool,
    pub control: ControlState,
    /// The filament slots the printer reports (`None`: no `ams` / `vt_tray` seen yet).
    pub trays: Option<Trays>,
}

impl ReportSummary {
    /// Summarise a link snapshot; `now_instant` and `now` are the same instant on the two clocks.
    pub fn from_snapshot(snap: &PrinterSnapshot, now_instant: Instant, now: Millis) -> Self {
        let to_millis = |t: Option<Instant>| {
            t.map(|t| {
                let age = now_instant.saturating_duration_since(t).as_millis();
                now.saturating_sub(u64::try_from(age).unwrap_or(u64::MAX))
            })
        };
        let state = snap.state.clone().unwrap_or_default();
        ReportSummary {
            link_online: snap.link.is_online(),
            connection_epoch: snap.connection_epoch,
            have_full_report: snap.have_full_report,
            full_report_at: if snap.have_full_report {
                to_millis(snap.last_full_report_at)
            } else {
                None
            },
            gcode_state: if snap.have_full_report {
                state.gcode_state
            } else {
                GcodeState::Unknown
            },
            subtask_id: state.subtask_id.clone(),
            gcode_file: state.gcode_file.clone(),
            print_error: state.print_error,
            blocking_hms: state.hms.iter().any(|h| h.blocks_start()),
            verification_failed: state
                .hms
                .iter()
                .any(|h| (h.attr, h.code) == HMS_VERIFICATION_FAILED),
            control: snap.control,
            trays: state.filament.as_ref().map(Trays::from_slots),
        }
    }

    fn names_job(&self, job: &Job) -> bool {
        let id = job.subtask_id.to_string();
        meaningful_id(self.subtask_id.as_deref()) == Some(id.as_str())
            || self
                .gcode_file
                .as_deref()
                .is_some_and(|f| f.ends_with(&job.remote_name()))
    }
}

/// `print_error` values that refuse or fail a start (low half < 0x4000 are status-like values).
pub fn is_refusal_error(code: u32) -> bool {
    code != 0 && (code & 0xFFFF) >= 0x4000
}

/// Text for a printer error code, for people.
pub fn describe_print_error(code: u32) -> String {
    let hex = format!("{:04X}_{:04X}", code >> 16, code & 0xFFFF);
    match code {
        ERROR_BUSY => format!(
            "the printer refused the start because it was busy ({hex}); the gateway never retries a start — check the printer, then use Start again with a fresh plate-clear tap"
        ),
        0x0500_4003 => format!("the printer could not parse the file ({hex})"),
        0x0500_403F | 0x0500_400B => format!("the printer failed to download the file ({hex})"),
        0x0500_C010 => format!("the printer's storage failed while reading the file ({hex})"),
        0x0500_4005 => format!("the printer is updating its firmware ({hex}); start again later"),
        // "Failed to get AMS mapping table" (docs/bambu-protocol.md §6.2): the printer could
        // not use the trays it was sent (a tray it does not have, or use_ams on a printer
        // without an AMS).
        0x0700_8012 | 0x07FF_8012 => format!(
            "the printer could not use the trays it was sent ({hex}: failed to get the AMS mapping table); check the AMS and its trays on the printer, then use Start again"
        ),
        _ => format!("the printer reported error {hex}"),
    }
}

/// One printer as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrinterRuntime {
    pub name: String,
    /// Model code (`printer_model_id`) used to match "any compatible printer" jobs.
    pub model_code: String,
    /// Per-printer queue pause (persisted).
    pub paused: bool,
    /// Persisted.
    pub plate: PlateState,
    /// In memory: the last report summary.
    pub report: Option<ReportSummary>,
    /// In memory: the last report with a known job state (after a full report), kept across link
    /// drops; new reports are compared with it to detect print activity.
    pub last_known: Option<ReportSummary>,
    /// In memory.
    pub link_online: bool,
    /// In memory: connection epoch of the last report.
    pub epoch: Option<u64>,
    /// In memory.
    pub last_pushall_at: Option<Millis>,
    /// In memory: when activity (see `plate::observed_activity`) was last seen.
    pub last_activity_at: Option<Millis>,
    /// In memory: recent tap ids, to ignore re-submitted taps.
    pub recent_tap_ids: VecDeque<String>,
    /// In memory: printgate's own relay holds this printer's power off (nothing can print).
    pub power_held_off: bool,
}

impl PrinterRuntime {
    pub fn new(name: &str, model_code: &str) -> Self {
        PrinterRuntime {
            name: name.to_string(),
            model_code: model_code.to_string(),
            paused: false,
            plate: PlateState::Unknown,
            report: None,
            last_known: None,
            link_online: false,
            epoch: None,
            last_pushall_at: None,
            last_activity_at: None,
            recent_tap_ids: VecDeque::new(),
            power_held_off: false,
        }
    }
}

/// Everything [`decide`] looks at. Loaded from the store at boot
/// ([`crate::store::Store::load_dispatch_state`]) and kept in step with [`DispatchState::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchState {
    pub timings: DispatchTimings,
    pub printers: BTreeMap<String, PrinterRuntime>,
    /// Jobs that are not finished/failed/cancelled/expired.
    pub jobs: BTreeMap<JobId, Job>,
    pub queue_paused: bool,
    pub safety_tripped: bool,
    /// In memory: failed uploads are retried no earlier than this.
    pub stage_retry_at: BTreeMap<JobId, Millis>,
    /// In memory: the last [`EffectTicket`] handed out.
    pub last_ticket: EffectTicket,
    /// In memory: the upload whose result is awaited, per job (only that one may stage it).
    pub uploads_in_flight: BTreeMap<JobId, EffectTicket>,
    /// In memory: the publish whose result is awaited, per job.
    pub publishes_in_flight: BTreeMap<JobId, EffectTicket>,
}

impl DispatchState {
    pub fn new(timings: DispatchTimings) -> Self {
        DispatchState {
            timings,
            printers: BTreeMap::new(),
            jobs: BTreeMap::new(),
            queue_paused: false,
            safety_tripped: false,
            stage_retry_at: BTreeMap::new(),
            last_ticket: 0,
            uploads_in_flight: BTreeMap::new(),
            publishes_in_flight: BTreeMap::new(),
        }
    }

    /// The ticket the next upload or publish gets.
    pub fn next_ticket(&self) -> EffectTicket {
        self.last_ticket.wrapping_add(1)
    }

    /// Forget in-memory bookkeeping of jobs that are no longer tracked (after a reload).
    pub fn retain_tracked(&mut self) {
        let jobs = &self.jobs;
        self.stage_retry_at.retain(|id, _| jobs.contains_key(id));
        self.uploads_in_flight.retain(|id, _| jobs.contains_key(id));
        self.publishes_in_flight
            .retain(|id, _| jobs.contains_key(id));
    }

    /// The job holding or staged on this printer (at most one).
    pub fn slot_job(&self, printer: &str) -> Option<&Job> {
        self.jobs.values().find(|j| {
            j.assigned_printer.as_deref() == Some(printer)
                && (j.state.holds_printer() || j.state.is_pre_start())
        })
    }

    /// Mirror one action in memory (after its commit, for database actions).
    pub fn apply(&mut self, action: &Action) {
        apply_action(self, action);
    }
}

/// Direction for [`Event::Move`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MoveDirection {
    Up,
    Down,
}

/// What happened to a publish, as reported by the effect runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PublishOutcome {
    /// Handed to a live connection (NOT evidence that the printer acted on it).
    Published { sequence_id: String },
    /// The link was down (or on another epoch): nothing was sent.
    NotConnected,
    /// Something failed before anything was sent (window passed, file missing, …).
    FailedBeforeSend(String),
}

/// Inputs of the decision core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PrinterReport {
        printer: String,
        report: ReportSummary,
    },
    LinkDown {
        printer: String,
    },
    /// The safety room switched this printer's relay: `true` while printgate holds its power off.
    PowerHeldOff {
        printer: String,
        held_off: bool,
    },
    Tap {
        printer: String,
        user: String,
        tap_id: String,
    },
    /// A job row was created ([`crate::store::Store::create_job`]); duplicates are ignored.
    JobQueued(Box<Job>),
    Cancel {
        job: JobId,
        user: String,
    },
    Move {
        job: JobId,
        direction: MoveDirection,
    },
    /// `None` = the whole queue.
    PauseQueue {
        printer: Option<String>,
    },
    ResumeQueue {
        printer: Option<String>,
    },
    /// The upload of [`Action::Stage`] with this `ticket` finished and was verified.
    StageComplete {
        job: JobId,
        printer: String,
        ticket: EffectTicket,
    },
    /// The upload of [`Action::Stage`] with this `ticket` failed.
    StageFailed {
        job: JobId,
        printer: String,
        ticket: EffectTicket,
        reason: String,
    },
    /// What became of [`Action::Publish`] with this `ticket`.
    PublishResult {
        job: JobId,
        ticket: EffectTicket,
        outcome: PublishOutcome,
    },
    Ack {
        printer: String,
        sequence_id: String,
        /// `Some(false)` = refusal; `Some(true)` and `None` are not evidence.
        success: Option<bool>,
        reason: Option<String>,
    },
    SafetyTrip {
        reason: String,
    },
    SafetyReset {
        user: String,
    },
    Tick,
    /// The gateway (re)started: everything in flight is re-evaluated (starting → unconfirmed).
    Restart,
    /// A person asks to start this job again; `job` is the current row (it may no longer be in
    /// the state), `new_subtask_id` from [`crate::store::Store::allocate_subtask_id`].
    StartAgain {
        job: Box<Job>,
        user: String,
        new_subtask_id: u32,
    },
}

/// How the runner treats an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// In-memory bookkeeping only.
    Memory,
    /// Written to SQLite (one savepoint each, one commit per batch) before any effect runs.
    Database,
    /// I/O with the outside world; runs after every database action of the batch.
    Effect,
}

/// Outputs of the decision core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Action {
    // ---- memory ----
    ObserveReport {
        printer: String,
        report: ReportSummary,
        at: Millis,
    },
    ObserveLinkDown {
        printer: String,
    },
    ObservePowerHeldOff {
        printer: String,
        held_off: bool,
    },
    /// Add a freshly created job (its row exists already).
    TrackJob(Box<Job>),
    SetSafetyTripped {
        tripped: bool,
    },
    /// Our subtask id was echoed while the printer was not yet active (phase B starts).
    NoteIdEchoed {
        job: JobId,
        at: Millis,
    },
    /// Do not try to upload this job again before `until`.
    DelayStaging {
        job: JobId,
        until: Millis,
    },
    // ---- database ----
    /// A new tap: the plate becomes `Clear`; an older unconsumed tap of the printer is voided.
    RecordTap {
        printer: String,
        tap: Tap,
    },
    /// A tap that was not accepted; recorded (voided) so that a re-submitted copy of the same
    /// form is recognised and dropped later (I7).
    RejectTap {
        printer: String,
        tap: Tap,
        reason: String,
    },
    /// The tap timed out or was voided: plate `Unknown`.
    ExpireTap {
        printer: String,
        tap_id: String,
        reason: String,
        at: Millis,
    },
    /// Something printed / is printing: plate `Occupied`, any unconsumed tap voided.
    MarkPlateOccupied {
        printer: String,
        reason: String,
        at: Millis,
    },
    SetQueuePaused {
        printer: Option<String>,
        paused: bool,
    },
    /// Reserve the job for a printer and start uploading it there (followed by `Stage`).
    Assign {
        job: JobId,
        printer: String,
        at: Millis,
    },
    MarkStaged {
        job: JobId,
        printer: String,
        at: Millis,
    },
    /// Back to queued without a printer (upload failed, an earlier job goes first, …).
    Unassign {
        job: JobId,
        reason: String,
        stage_failed: bool,
        at: Millis,
    },
    /// One transaction: the tap must be unconsumed and unexpired; it is consumed and the job
    /// moves queued/staged → starting ([`crate::store::Store::start_job_tx`]).
    ConsumeTapAndMarkStarting {
        job: JobId,
        printer: String,
        tap: Tap,
        decided_at: Millis,
        window_deadline: Millis,
        /// The trays the start uses, committed with it ([`super::ams_mapping::map`]).
        mapping: Option<Mapping>,
    },
    /// The job cannot start on its printer now (the filament it needs is not loaded): the
    /// reason is recorded on the job for the queue row and its events.
    HoldJob {
        job: JobId,
        printer: String,
        reason: String,
        at: Millis,
    },
    /// Committed right before the `Publish` effect: from here on the outcome may be unknown.
    MarkPublishing {
        job: JobId,
        epoch: u64,
        at: Millis,
    },
    MarkPublished {
        job: JobId,
        sequence_id: String,
        at: Millis,
    },
    /// starting → queued (nothing published); the tap is restored only if `restore_tap`.
    ReturnToQueued {
        job: JobId,
        restore_tap: bool,
        reason: String,
        at: Millis,
    },
    MarkPrinting {
        job: JobId,
        at: Millis,
    },
    MarkUnconfirmed {
        job: JobId,
        reason: String,
        at: Millis,
    },
    MarkFinished {
        job: JobId,
        outcome: String,
        at: Millis,
    },
    MarkFailed {
        job: JobId,
        reason: String,
        at: Millis,
    },
    MarkCancelled {
        job: JobId,
        by: String,
        restore_tap: bool,
        at: Millis,
    },
    MarkExpired {
        job: JobId,
        at: Millis,
    },
    /// Exchange the queue positions of two jobs.
    SwapPositions {
        a: JobId,
        a_position: i64,
        b: JobId,
        b_position: i64,
    },
    /// A person asked to start the job again: back to queued with a new subtask id; only a tap
    /// recorded after `at` may start it.
    StartAgain {
        job: Box<Job>,
        by: String,
        new_subtask_id: u32,
        at: Millis,
    },
    // ---- effects ----
    /// Upload the job's file to the printer as `remote_name`, verify it, report the result.
    Stage {
        job: JobId,
        printer: String,
        file_sha256: String,
        remote_name: String,
        /// Echoed in the result event.
        ticket: EffectTicket,
    },
    RequestPushall {
        printer: String,
        at: Millis,
    },
    /// Publish `project_file` once, only if `now < deadline` and the link is online on `epoch`.
    Publish {
        job: JobId,
        printer: String,
        subtask_id: u32,
        remote_name: String,
        plate: u32,
        name: String,
        file_sha256: String,
        epoch: u64,
        deadline: Millis,
        /// The committed mapping of the start attempt, sent exactly so (I6).
        mapping: Option<Mapping>,
        /// Echoed in [`Event::PublishResult`].
        ticket: EffectTicket,
    },
    /// Tell people (UI event stream / alert).
    Notify {
        printer: Option<String>,
        job: Option<JobId>,
        message: String,
    },
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        use Action::*;
        match self {
            ObserveReport { .. }
            | ObserveLinkDown { .. }
            | ObservePowerHeldOff { .. }
            | TrackJob(_)
            | SetSafetyTripped { .. }
            | NoteIdEchoed { .. }
            | DelayStaging { .. } => ActionKind::Memory,
            Stage { .. } | RequestPushall { .. } | Publish { .. } | Notify { .. } => {
                ActionKind::Effect
            }
            _ => ActionKind::Database,
        }
    }

    /// The job state this action moves a job to, if it is a job transition.
    pub fn job_transition(&self) -> Option<(JobId, JobState)> {
        use Action::*;
        Some(match self {
            MarkStaged { job, .. } => (*job, JobState::Staged),
            Unassign { job, .. } | ReturnToQueued { job, .. } => (*job, JobState::Queued),
            ConsumeTapAndMarkStarting { job, .. } => (*job, JobState::Starting),
            MarkPrinting { job, .. } => (*job, JobState::Printing),
            MarkUnconfirmed { job, .. } => (*job, JobState::Unconfirmed),
            MarkFinished { job, .. } => (*job, JobState::Finished),
            MarkFailed { job, .. } => (*job, JobState::Failed),
            MarkCancelled { job, .. } => (*job, JobState::Cancelled),
            MarkExpired { job, .. } => (*job, JobState::Expired),
            StartAgain { job, .. } => (job.id, JobState::Queued),
            _ => return None,
        })
    }
}

/// The decision core. Pure: see the module documentation for how the runner uses the result.
pub fn decide(state: &DispatchState, event: Event, now: Millis) -> Vec<Action> {
    let mut cx = Ctx {
        s: state.clone(),
        out: Vec::new(),
        now,
    };
    cx.handle(event);
    cx.plan();
    let (mut first, effects): (Vec<Action>, Vec<Action>) = cx
        .out
        .into_iter()
        .partition(|a| a.kind() != ActionKind::Effect);
    first.extend(effects);
    first
}

/// Working copy: every emitted action is applied at once, so later rules see its result exactly
/// as the runner's state will after the batch.
struct Ctx {
    s: DispatchState,
    out: Vec<Action>,
    now: Millis,
}

impl Ctx {
    fn emit(&mut self, action: Action) {
        self.s.apply(&action);
        self.out.push(action);
    }

    fn notify(&mut self, printer: Option<&str>, job: Option<JobId>, message: String) {
        self.emit(Action::Notify {
            printer: printer.map(str::to_string),
            job,
            message,
        });
    }

    fn jobs_on(&self, printer: &str, states: &[JobState]) -> Vec<Job> {
        self.s
            .jobs
            .values()
            .filter(|j| j.assigned_printer.as_deref() == Some(printer) && states.contains(&j.state))
            .cloned()
            .collect()
    }

    fn ttl(&self) -> Millis {
        self.s.timings.plate_clear_ttl_ms
    }

    // ------------------------------------------------------------------ events

    fn handle(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::PrinterReport { printer, report } => self.on_report(printer, report),
            Event::LinkDown { printer } => {
                if self.s.printers.contains_key(&printer) {
                    self.emit(Action::ObserveLinkDown {
                        printer: printer.clone(),
                    });
                    self.link_lost(&printer);
                }
            }
            Event::PowerHeldOff { printer, held_off } => {
                if self
                    .s
                    .printers
                    .get(&printer)
                    .is_some_and(|p| p.power_held_off != held_off)
                {
                    self.emit(Action::ObservePowerHeldOff { printer, held_off });
                }
            }
            Event::Tap {
                printer,
                user,
                tap_id,
            } => self.on_tap(printer, user, tap_id),
            Event::JobQueued(job) => {
                if !self.s.jobs.contains_key(&job.id) && !job.state.is_terminal() {
                    self.emit(Action::TrackJob(job));
                }
            }
            Event::Cancel { job, user } => self.on_cancel(job, user),
            Event::Move { job, direction } => self.on_move(job, direction),
            Event::PauseQueue { printer } => self.on_pause(printer, true),
            Event::ResumeQueue { printer } => self.on_pause(printer, false),
            Event::StageComplete {
                job,
                printer,
                ticket,
            } => {
                if self.s.uploads_in_flight.get(&job) == Some(&ticket)
                    && let Some(j) = self.s.jobs.get(&job)
                    && j.state == JobState::Queued
                    && j.assigned_printer.as_deref() == Some(printer.as_str())
                {
                    self.emit(Action::MarkStaged {
                        job,
                        printer,
                        at: now,
                    });
                }
            }
            Event::StageFailed {
                job,
                printer,
                ticket,
                reason,
            } => {
                if self.s.uploads_in_flight.get(&job) == Some(&ticket) {
                    self.on_stage_failed(job, printer, reason);
                }
            }
            Event::PublishResult {
                job,
                ticket,
                outcome,
            } => {
                if self.s.publishes_in_flight.get(&job) == Some(&ticket) {
                    self.on_publish_result(job, outcome);
                }
            }
            Event::Ack {
                printer,
                sequence_id,
                success,
                reason,
            } => self.on_ack(printer, sequence_id, success, reason),
            Event::SafetyTrip { reason } => self.on_trip(reason),
            Event::SafetyReset { user } => {
                if self.s.safety_tripped {
                    self.emit(Action::SetSafetyTripped { tripped: false });
                    self.notify(None, None, format!("safety trip reset by {user}"));
                }
            }
            Event::Tick => {}
            Event::Restart => self.on_restart(),
            Event::StartAgain {
                job,
                user,
                new_subtask_id,
            } => {
                let current = self.s.jobs.get(&job.id).cloned().unwrap_or(*job);
                if current.state.can_start_again() {
                    self.emit(Action::StartAgain {
                        job: Box::new(current),
                        by: user,
                        new_subtask_id,
                        at: now,
                    });
                }
            }
        }
    }

    fn on_report(&mut self, printer: String, report: ReportSummary) {
        let now = self.now;
        let Some(p) = self.s.printers.get(&printer) else {
            return;
        };
        let plate_occupied = p.plate == PlateState::Occupied;
        let activity = observed_activity(p.last_known.as_ref(), &report);
        self.emit(Action::ObserveReport {
            printer: printer.clone(),
            report: report.clone(),
            at: now,
        });
        if let Some(reason) = &activity
            && !plate_occupied
        {
            self.emit(Action::MarkPlateOccupied {
                printer: printer.clone(),
                reason: reason.clone(),
                at: now,
            });
        }
        for job in self.jobs_on(
            &printer,
            &[
                JobState::Starting,
                JobState::Printing,
                JobState::Unconfirmed,
            ],
        ) {
            self.evidence(&job, &report, activity.as_deref());
        }
        if !report.link_online {
            self.link_lost(&printer);
        }
    }

    /// Reports as evidence about the jobs on that printer (docs/bambu-protocol.md §5.3).
    fn evidence(&mut self, job: &Job, report: &ReportSummary, activity: Option<&str>) {
        let now = self.now;
        let ours = report.names_job(job);
        let active = report.gcode_state.is_active();
        match job.state {
            JobState::Starting => {
                let Some(attempt) = &job.start else { return };
                if !attempt.publish_attempted() {
                    if let Some(reason) = activity {
                        self.emit(Action::ReturnToQueued {
                            job: job.id,
                            restore_tap: false,
                            reason: format!(
                                "not started: {reason} (someone else is using the printer); tap Plate clear again when it is free"
                            ),
                            at: now,
                        });
                    }
                    return;
                }
                if active && ours {
                    self.emit(Action::MarkPrinting {
                        job: job.id,
                        at: now,
                    });
                } else if is_refusal_error(report.print_error) {
                    self.emit(Action::MarkFailed {
                        job: job.id,
                        reason: describe_print_error(report.print_error),
                        at: now,
                    });
                } else if report.gcode_state == GcodeState::Failed && ours {
                    self.emit(Action::MarkFailed {
                        job: job.id,
                        reason: "the printer failed the job right after the start".into(),
                        at: now,
                    });
                } else if report.verification_failed {
                    self.emit(Action::MarkFailed {
                        job: job.id,
                        reason: "the printer refused the unsigned start command (HMS 0500_0500_0001_0007): enable LAN Only and Developer Mode on the printer".into(),
                        at: now,
                    });
                } else {
                    if ours && attempt.id_echoed_at.is_none() {
                        self.emit(Action::NoteIdEchoed {
                            job: job.id,
                            at: now,
                        });
                    }
                    let epoch_changed = attempt
                        .publish_epoch
                        .is_some_and(|e| e != report.connection_epoch);
                    if attempt.sequence_id.is_some() && epoch_changed {
                        self.emit(Action::MarkUnconfirmed {
                            job: job.id,
                            reason: "the connection to the printer was re-established before the start was confirmed; check the printer".into(),
                            at: now,
                        });
                    }
                }
            }
            JobState::Printing => {
                let done = match report.gcode_state {
                    GcodeState::Finish if ours => Some(Ok("finished".to_string())),
                    GcodeState::Failed if ours => Some(Err(if report.print_error != 0 {
                        describe_print_error(report.print_error)
                    } else {
                        "the print failed or was stopped on the printer".to_string()
                    })),
                    GcodeState::Idle if ours => Some(Ok(
                        "ended: the printer is idle again (FINISH was not seen; check the print)"
                            .to_string(),
                    )),
                    s if s.is_active()
                        && !ours
                        && meaningful_id(report.subtask_id.as_deref()).is_some() =>
                    {
                        Some(Ok(
                            "ended: the printer is running a different job now".to_string()
                        ))
                    }
                    _ => None,
                };
                match done {
                    Some(Ok(outcome)) => self.emit(Action::MarkFinished {
                        job: job.id,
                        outcome,
                        at: now,
                    }),
                    Some(Err(reason)) => self.emit(Action::MarkFailed {
                        job: job.id,
                        reason,
                        at: now,
                    }),
                    None => {}
                }
            }
            JobState::Unconfirmed if active && ours => {
                self.emit(Action::MarkPrinting {
                    job: job.id,
                    at: now,
                });
            }
            _ => {}
        }
    }

    /// The link to a printer went down (or a report says it is not online).
    fn link_lost(&mut self, printer: &str) {
        let now = self.now;
        for job in self.jobs_on(printer, &[JobState::Starting]) {
            let Some(attempt) = &job.start else { continue };
            if !attempt.publish_attempted() {
                let restore_tap = self.tap_restorable(&job);
                self.emit(Action::ReturnToQueued {
                    job: job.id,
                    restore_tap,
                    reason: "the printer went offline before the start was sent; nothing was sent"
                        .into(),
                    at: now,
                });
            } else if attempt.sequence_id.is_some() {
                self.emit(Action::MarkUnconfirmed {
                    job: job.id,
                    reason: "the connection dropped before the printer confirmed the start; check the printer, then cancel or start again".into(),
                    at: now,
                });
            }
            // Publish attempted without a result yet: the result decides (see on_publish_result).
        }
    }

    fn on_tap(&mut self, printer: String, user: String, tap_id: String) {
        let now = self.now;
        let Some(p) = self.s.printers.get(&printer) else {
            self.notify(
                None,
                None,
                format!("plate-clear tap for unknown printer {printer:?} ignored"),
            );
            return;
        };
        if p.recent_tap_ids.contains(&tap_id)
            || matches!(&p.plate, PlateState::Clear(t) if t.tap_id == tap_id)
        {
            return; // re-submitted form (I7)
        }
        let known = p.link_online
            && p.report.as_ref().is_some_and(|r| {
                r.link_online && r.have_full_report && p.epoch == Some(r.connection_epoch)
            });
        // printgate's own relay holds the power off: nothing can print, so a person can clear
        // the plate of a cooled, switched-off printer. Any print activity reported after power
        // returns voids the tap as always (I1).
        let unpowered = !p.link_online && p.power_held_off;
        let refusal = if !known && !unpowered {
            Some(format!(
                "{printer} is offline or has not sent its state yet, so printgate cannot tell whether it is printing; check that it is switched on and connected, then tap Plate clear again when it shows online"
            ))
        } else if !unpowered && p.report.as_ref().is_some_and(|r| r.gcode_state.is_active()) {
            Some(format!(
                "{printer} is printing; remove the print when it has finished, then tap again"
            ))
        } else {
            self.s
                .slot_job(&printer)
                .filter(|j| matches!(j.state, JobState::Starting | JobState::Printing))
                .map(|j| format!("job {:?} is {} on {printer}", j.name, j.state.as_str()))
        };
        let tap = Tap {
            tap_id,
            by: user.clone(),
            at: now,
        };
        match refusal {
            Some(reason) => {
                self.emit(Action::RejectTap {
                    printer: printer.clone(),
                    tap,
                    reason: reason.clone(),
                });
                self.notify(
                    Some(&printer),
                    None,
                    format!("plate-clear tap by {user} not accepted: {reason}"),
                );
            }
            None => {
                self.emit(Action::RecordTap {
                    printer: printer.clone(),
                    tap,
                });
                if unpowered {
                    self.notify(
                        Some(&printer),
                        None,
                        format!(
                            "plate-clear tap by {user} accepted while printgate holds the power of {printer} off: nothing can print until power returns; it stays valid then unless the printer shows print activity"
                        ),
                    );
                }
            }
        }
    }

    fn on_cancel(&mut self, job: JobId, user: String) {
        let now = self.now;
        let Some(j) = self.s.jobs.get(&job).cloned() else {
            return;
        };
        let unpublished_start = j.state == JobState::Starting
            && j.start.as_ref().is_some_and(|a| !a.publish_attempted());
        if j.state.is_pre_start() || j.state == JobState::Unconfirmed || unpublished_start {
            let restore_tap = unpublished_start && self.tap_restorable(&j);
            self.emit(Action::MarkCancelled {
                job,
                by: user,
                restore_tap,
                at: now,
            });
        } else {
            let printer = j.assigned_printer.clone();
            self.notify(
                printer.as_deref(),
                Some(job),
                format!(
                    "job {:?} was not cancelled: it is {} and may be on the printer; stop it on the printer if needed",
                    j.name,
                    j.state.as_str()
                ),
            );
        }
    }

    fn on_move(&mut self, job: JobId, direction: MoveDirection) {
        let mut queue: Vec<(i64, JobId)> = self
            .s
            .jobs
            .values()
            .filter(|j| j.state.is_pre_start())
            .map(|j| (j.position, j.id))
            .collect();
        queue.sort();
        let Some(i) = queue.iter().position(|&(_, id)| id == job) else {
            return;
        };
        let other = match direction {
            MoveDirection::Up => i.checked_sub(1),
            MoveDirection::Down => Some(i + 1),
        };
        if let (Some(&(a_position, a)), Some(&(b_position, b))) =
            (queue.get(i), other.and_then(|o| queue.get(o)))
        {
            self.emit(Action::SwapPositions {
                a,
                a_position,
                b,
                b_position,
            });
        }
    }

    fn on_pause(&mut self, printer: Option<String>, paused: bool) {
        let now = self.now;
        if let Some(p) = &printer
            && !self.s.printers.contains_key(p)
        {
            return;
        }
        let current = match &printer {
            None => self.s.queue_paused,
            Some(p) => self.s.printers.get(p).is_some_and(|r| r.paused),
        };
        if current != paused {
            self.emit(Action::SetQueuePaused {
                printer: printer.clone(),
                paused,
            });
        }
        if paused {
            let starting: Vec<Job> = self
                .s
                .jobs
                .values()
                .filter(|j| {
                    j.state == JobState::Starting
                        && j.start.as_ref().is_some_and(|a| !a.publish_attempted())
                        && (printer.is_none() || j.assigned_printer == printer)
                })
                .cloned()
                .collect();
            for j in starting {
                let restore_tap = self.tap_restorable(&j);
                self.emit(Action::ReturnToQueued {
                    job: j.id,
                    restore_tap,
                    reason: "queue paused before the start was sent; nothing was sent".into(),
                    at: now,
                });
            }
        }
    }

    fn on_stage_failed(&mut self, job: JobId, printer: String, reason: String) {
        let now = self.now;
        let Some(j) = self.s.jobs.get(&job) else {
            return;
        };
        if j.state != JobState::Queued || j.assigned_printer.as_deref() != Some(printer.as_str()) {
            return;
        }
        let failures = j.stage_failures + 1;
        if failures >= MAX_STAGE_FAILURES {
            self.emit(Action::MarkFailed {
                job,
                reason: format!(
                    "uploading the file to {printer} failed {failures} times (last: {reason}); check the printer's storage and network, then start again"
                ),
                at: now,
            });
        } else {
            self.emit(Action::Unassign {
                job,
                reason: format!("upload to {printer} failed: {reason}"),
                stage_failed: true,
                at: now,
            });
            let until = now.saturating_add(self.s.timings.stage_retry_ms * u64::from(failures));
            self.emit(Action::DelayStaging { job, until });
        }
    }

    fn on_publish_result(&mut self, job: JobId, outcome: PublishOutcome) {
        let now = self.now;
        let Some(j) = self.s.jobs.get(&job).cloned() else {
            return;
        };
        let Some(attempt) = j.start.clone() else {
            return;
        };
        if j.state != JobState::Starting
            || !attempt.publish_attempted()
            || attempt.sequence_id.is_some()
        {
            return; // duplicate or late result
        }
        match outcome {
            PublishOutcome::Published { sequence_id } => {
                self.emit(Action::MarkPublished {
                    job,
                    sequence_id,
                    at: now,
                });
                let printer = j.assigned_printer.as_deref().unwrap_or_default();
                let link_ok = self.s.printers.get(printer).is_some_and(|p| {
                    p.link_online && p.epoch.is_some() && p.epoch == attempt.publish_epoch
                });
                if !link_ok {
                    self.emit(Action::MarkUnconfirmed {
                        job,
                        reason: "the connection dropped right after the start was sent; check the printer, then cancel or start again".into(),
                        at: now,
                    });
                }
            }
            PublishOutcome::NotConnected | PublishOutcome::FailedBeforeSend(_) => {
                let why = match outcome {
                    PublishOutcome::FailedBeforeSend(r) => r,
                    _ => "the printer was not connected".into(),
                };
                let restore_tap = self.tap_restorable(&j);
                self.emit(Action::ReturnToQueued {
                    job,
                    restore_tap,
                    reason: format!("start not sent ({why}); nothing was sent"),
                    at: now,
                });
            }
        }
    }

    fn on_ack(
        &mut self,
        printer: String,
        sequence_id: String,
        success: Option<bool>,
        reason: Option<String>,
    ) {
        let now = self.now;
        let found = self
            .jobs_on(&printer, &[JobState::Starting, JobState::Unconfirmed])
            .into_iter()
            .find(|j| {
                j.start
                    .as_ref()
                    .is_some_and(|a| a.sequence_id.as_deref() == Some(sequence_id.as_str()))
            });
        if let (Some(j), Some(false)) = (found, success) {
            self.emit(Action::MarkFailed {
                job: j.id,
                reason: format!(
                    "the printer refused the start ({}); it is not retried",
                    reason.unwrap_or_else(|| "no reason given".into())
                ),
                at: now,
            });
        }
    }

    fn on_trip(&mut self, reason: String) {
        let now = self.now;
        if !self.s.safety_tripped {
            self.emit(Action::SetSafetyTripped { tripped: true });
        }
        let jobs: Vec<Job> = self.s.jobs.values().cloned().collect();
        for j in jobs {
            match j.state {
                JobState::Starting if j.start.as_ref().is_some_and(|a| !a.publish_attempted()) => {
                    self.emit(Action::ReturnToQueued {
                        job: j.id,
                        restore_tap: false,
                        reason: format!("safety trip ({reason}) before the start was sent"),
                        at: now,
                    })
                }
                JobState::Starting => self.emit(Action::MarkUnconfirmed {
                    job: j.id,
                    reason: format!("safety trip ({reason}) while starting; check the printer"),
                    at: now,
                }),
                JobState::Printing => self.emit(Action::MarkFailed {
                    job: j.id,
                    reason: format!("safety trip ({reason}) cut the power during the print"),
                    at: now,
                }),
                _ => {}
            }
        }
        self.notify(
            None,
            None,
            format!("safety trip: {reason}; no job will start"),
        );
    }

    fn on_restart(&mut self) {
        let now = self.now;
        // An upload that was running when the gateway stopped will never report back: give the
        // job back to the queue so that it is assigned and uploaded again.
        let uploading: Vec<JobId> = self
            .s
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued && j.assigned_printer.is_some())
            .map(|j| j.id)
            .collect();
        for job in uploading {
            self.emit(Action::Unassign {
                job,
                reason: "the upload to the printer was interrupted by a gateway restart; it is uploaded again".into(),
                stage_failed: false,
                at: now,
            });
        }
        let starting = self
            .s
            .jobs
            .values()
            .filter(|j| j.state == JobState::Starting)
            .map(|j| j.id)
            .collect::<Vec<_>>();
        for job in starting {
            self.emit(Action::MarkUnconfirmed {
                job,
                reason: "the gateway restarted while this job was starting; check the printer, then cancel or start again".into(),
                at: now,
            });
        }
        let clear: Vec<(String, String)> = self
            .s
            .printers
            .values()
            .filter_map(|p| match &p.plate {
                PlateState::Clear(t) => Some((p.name.clone(), t.tap_id.clone())),
                _ => None,
            })
            .collect();
        for (printer, tap_id) in clear {
            self.emit(Action::ExpireTap {
                printer,
                tap_id,
                reason: "the gateway restarted; tap Plate clear again".into(),
                at: now,
            });
        }
    }

    /// The consumed tap of a not-published start may be given back: unexpired, nothing seen
    /// printing since the decision, and no newer tap recorded meanwhile.
    fn tap_restorable(&self, job: &Job) -> bool {
        let (Some(attempt), Some(printer)) = (&job.start, &job.assigned_printer) else {
            return false;
        };
        let Some(p) = self.s.printers.get(printer) else {
            return false;
        };
        !attempt.tap.expired(self.now, self.ttl())
            && p.plate == PlateState::Occupied
            && p.last_activity_at.is_none_or(|a| a < attempt.decided_at)
    }

    // ------------------------------------------------------------------ planning

    /// Apply the time- and state-driven rules until nothing changes (a bounded fixpoint), so
    /// that a repeated event or an immediate `Tick` finds nothing left to do (I7).
    fn plan(&mut self) {
        for _ in 0..8 {
            let before = self.out.len();
            self.expire_taps();
            self.expire_deadlines();
            self.watch_windows();
            self.start_decisions();
            self.publish_or_refresh();
            self.staging();
            if self.out.len() == before {
                break;
            }
        }
    }

    fn expire_taps(&mut self) {
        let (now, ttl) = (self.now, self.ttl());
        let expired: Vec<(String, String)> = self
            .s
            .printers
            .values()
            .filter_map(|p| match &p.plate {
                PlateState::Clear(t) if t.expired(now, ttl) => {
                    Some((p.name.clone(), t.tap_id.clone()))
                }
                _ => None,
            })
            .collect();
        for (printer, tap_id) in expired {
            self.emit(Action::ExpireTap {
                printer,
                tap_id,
                reason: "the plate-clear tap expired; tap again after checking the plate".into(),
                at: now,
            });
        }
    }

    fn expire_deadlines(&mut self) {
        let now = self.now;
        let expired: Vec<JobId> = self
            .s
            .jobs
            .values()
            .filter(|j| j.state.is_pre_start() && j.deadline_passed(now))
            .map(|j| j.id)
            .collect();
        for job in expired {
            self.emit(Action::MarkExpired { job, at: now });
        }
    }

    /// Start window (I3) and confirmation phases A/B (§5.3).
    fn watch_windows(&mut self) {
        let now = self.now;
        let t = self.s.timings.clone();
        let starting: Vec<Job> = self
            .s
            .jobs
            .values()
            .filter(|j| j.state == JobState::Starting)
            .cloned()
            .collect();
        for j in starting {
            let Some(a) = &j.start else { continue };
            match (a.publish_attempted_at, &a.sequence_id, a.published_at) {
                (None, _, _) if now >= a.window_deadline => {
                    let restore_tap = self.tap_restorable(&j);
                    self.emit(Action::ReturnToQueued {
                        job: j.id,
                        restore_tap,
                        reason:
                            "the start could not be sent within the start window; nothing was sent"
                                .into(),
                        at: now,
                    });
                }
                (Some(attempted), None, _)
                    if now >= attempted.saturating_add(t.start_window_ms) =>
                {
                    self.emit(Action::MarkUnconfirmed {
                        job: j.id,
                        reason: "the link never said whether the start was sent; check the printer"
                            .into(),
                        at: now,
                    });
                }
                (Some(_), Some(_), Some(published)) => {
                    let expired = match a.id_echoed_at {
                        Some(echo) => now >= echo.saturating_add(t.confirm_phase_b_ms),
                        None => now >= published.saturating_add(t.confirm_phase_a_ms),
                    };
                    if expired {
                        let reason = if a.id_echoed_at.is_some() {
                            "the printer accepted the job id but did not start printing in time; check the printer"
                        } else {
                            "no sign of the print starting in time (ack lost or command ignored); check the printer"
                        };
                        self.emit(Action::MarkUnconfirmed {
                            job: j.id,
                            reason: reason.into(),
                            at: now,
                        });
                    }
                }
                _ => {}
            }
        }
    }

    /// Why a start on this printer is not allowed right now (I4 minus freshness), if it is not.
    fn gate(&self, printer: &str) -> Result<(), &'static str> {
        let Some(p) = self.s.printers.get(printer) else {
            return Err("unknown printer");
        };
        if self.s.safety_tripped {
            return Err("safety trip latched");
        }
        if self.s.queue_paused || p.paused {
            return Err("queue paused");
        }
        if !p.link_online {
            return Err("printer offline");
        }
        let Some(r) = &p.report else {
            return Err("no report yet");
        };
        if !r.link_online || p.epoch != Some(r.connection_epoch) {
            return Err("printer offline");
        }
        if !r.have_full_report {
            return Err("no full report yet");
        }
        if !r.gcode_state.is_startable() {
            return Err("printer not idle");
        }
        if r.print_error != 0 {
            return Err("printer reports an error");
        }
        if r.blocking_hms || r.verification_failed {
            return Err("printer reports a blocking HMS error");
        }
        if r.control == ControlState::Refused {
            return Err("printer refuses control commands (Developer Mode off)");
        }
        Ok(())
    }

    /// The last full report is young enough to publish on (I4).
    fn fresh(&self, printer: &str) -> bool {
        let Some(p) = self.s.printers.get(printer) else {
            return false;
        };
        p.report.as_ref().is_some_and(|r| {
            r.have_full_report
                && r.full_report_at
                    .is_some_and(|t| self.now.saturating_sub(t) < self.s.timings.report_max_age_ms)
        })
    }

    fn start_decisions(&mut self) {
        let now = self.now;
        let printers: Vec<String> = self.s.printers.keys().cloned().collect();
        for printer in printers {
            let Some(job) = self.s.slot_job(&printer).cloned() else {
                continue;
            };
            if job.state != JobState::Staged || job.deadline_passed(now) {
                continue;
            }
            if self.gate(&printer).is_err() {
                continue;
            }
            let Some(tap) = self
                .s
                .printers
                .get(&printer)
                .and_then(|p| p.plate.valid_tap(now, self.ttl()))
                .cloned()
            else {
                continue;
            };
            if job.start_again_at.is_some_and(|t| tap.at <= t) {
                continue; // "start again" needs a tap recorded after it
            }
            let mapping = match self.filament_mapping(&job, &printer) {
                Ok(m) => m,
                Err(missing) => {
                    self.hold_for_filament(&job, &printer, &tap, &missing);
                    continue;
                }
            };
            self.emit(Action::ConsumeTapAndMarkStarting {
                job: job.id,
                printer,
                tap,
                decided_at: now,
                window_deadline: now.saturating_add(self.s.timings.start_window_ms),
                mapping,
            });
        }
    }

    /// The trays `job` would use on `printer` now: `Ok(None)` when the job's filaments are not
    /// known (or the printer is not a Bambu printer), `Err` with what to load where when the
    /// loaded filament does not satisfy them.
    fn filament_mapping(&self, job: &Job, printer: &str) -> Result<Option<Mapping>, String> {
        let Some(p) = self.s.printers.get(printer) else {
            return Ok(None);
        };
        filament_mapping_for(job, p)
    }

    /// A start that the loaded filament cannot serve is not made: the job says why, the tap is
    /// voided (the person loads the filament, checks the plate again and taps again: nothing
    /// starts by itself while someone is loading the AMS) and people are told.
    fn hold_for_filament(&mut self, job: &Job, printer: &str, tap: &Tap, missing: &str) {
        let now = self.now;
        let reason = format!(
            "not started: {printer} does not have the filament job {:?} needs: {missing}; then tap Plate clear again",
            job.name
        );
        if job.target == Target::AnyCompatible {
            // Another compatible printer may have the filament loaded.
            self.emit(Action::Unassign {
                job: job.id,
                reason: reason.clone(),
                stage_failed: false,
                at: now,
            });
        } else if job.message.as_deref() != Some(reason.as_str()) {
            self.emit(Action::HoldJob {
                job: job.id,
                printer: printer.to_string(),
                reason: reason.clone(),
                at: now,
            });
        }
        self.emit(Action::ExpireTap {
            printer: printer.to_string(),
            tap_id: tap.tap_id.clone(),
            reason: reason.clone(),
            at: now,
        });
        self.notify(Some(printer), Some(job.id), reason);
    }

    fn publish_or_refresh(&mut self) {
        let now = self.now;
        let starting: Vec<Job> = self
            .s
            .jobs
            .values()
            .filter(|j| {
                j.state == JobState::Starting
                    && j.start.as_ref().is_some_and(|a| !a.publish_attempted())
            })
            .cloned()
            .collect();
        for j in starting {
            let (Some(printer), Some(a)) = (j.assigned_printer.clone(), j.start.clone()) else {
                continue;
            };
            if now >= a.window_deadline {
                continue; // watch_windows returns it on the next pass
            }
            if let Err(why) = self.gate(&printer) {
                let restore_tap = self.tap_restorable(&j);
                self.emit(Action::ReturnToQueued {
                    job: j.id,
                    restore_tap,
                    reason: format!("not started: {why}; nothing was sent"),
                    at: now,
                });
                continue;
            }
            let Some(p) = self.s.printers.get(&printer) else {
                continue;
            };
            let epoch = p.epoch.unwrap_or_default();
            let last_pushall_at = p.last_pushall_at;
            let changed = a.mapping.as_ref().and_then(|m| {
                match p.report.as_ref().and_then(|r| r.trays.as_ref()) {
                    Some(trays) => m.changed_since(trays),
                    None => Some("the printer no longer reports its filament slots".into()),
                }
            });
            if self.fresh(&printer)
                && let Some(changed) = changed
            {
                self.emit(Action::ReturnToQueued {
                    job: j.id,
                    restore_tap: false,
                    reason: format!(
                        "not started: the filament changed after the start was decided ({changed}); nothing was sent; check the printer, then tap Plate clear again"
                    ),
                    at: now,
                });
                continue;
            }
            if self.fresh(&printer) {
                self.emit(Action::MarkPublishing {
                    job: j.id,
                    epoch,
                    at: now,
                });
                self.emit(Action::Publish {
                    job: j.id,
                    printer,
                    subtask_id: j.subtask_id,
                    remote_name: j.remote_name(),
                    plate: j.plate,
                    name: j.name.clone(),
                    file_sha256: j.file_sha256.clone(),
                    epoch,
                    deadline: a.window_deadline,
                    mapping: a.mapping.clone(),
                    ticket: self.s.next_ticket(),
                });
            } else {
                let due = match last_pushall_at {
                    None => true,
                    Some(last) => {
                        last < a.decided_at
                            || now.saturating_sub(last) >= self.s.timings.pushall_retry_ms
                    }
                };
                if due {
                    self.emit(Action::RequestPushall { printer, at: now });
                }
            }
        }
    }

    fn staging(&mut self) {
        let now = self.now;
        if self.s.safety_tripped || self.s.queue_paused {
            return;
        }
        // Clear, ready printers first: they take "any compatible" jobs.
        let mut printers: Vec<(bool, String)> = self
            .s
            .printers
            .values()
            .map(|p| (!self.clear_and_ready(&p.name), p.name.clone()))
            .collect();
        printers.sort();
        for (_, printer) in printers {
            let Some(p) = self.s.printers.get(&printer) else {
                continue;
            };
            if p.paused || !p.link_online {
                continue;
            }
            let model = p.model_code.clone();
            let slot = self.s.slot_job(&printer).cloned();
            if slot.as_ref().is_some_and(|j| j.state.holds_printer()) {
                continue;
            }
            let mut queue: Vec<&Job> = self
                .s
                .jobs
                .values()
                .filter(|j| {
                    j.state.is_pre_start()
                        && !j.deadline_passed(now)
                        && j.fits(&printer, &model)
                        && (j.assigned_printer.is_none()
                            || j.assigned_printer.as_deref() == Some(printer.as_str()))
                })
                .collect();
            queue.sort_by_key(|j| (j.position, j.id));
            let head = queue.first().map(|j| (*j).clone());
            let clear = self.clear_and_ready(&printer);
            if let Some(current) = &slot {
                let displaced = head.as_ref().is_some_and(|h| h.id != current.id);
                let any_unclear = current.target == Target::AnyCompatible && !clear;
                if displaced || any_unclear {
                    self.emit(Action::Unassign {
                        job: current.id,
                        reason: if displaced {
                            "an earlier job in the queue goes first".into()
                        } else {
                            "the plate is no longer clear; any compatible printer may take it"
                                .into()
                        },
                        stage_failed: false,
                        at: now,
                    });
                } else {
                    continue;
                }
            }
            let Some(head) = head else { continue };
            if head.assigned_printer.is_some() {
                continue;
            }
            if head.target == Target::AnyCompatible && !clear {
                continue;
            }
            if self
                .s
                .stage_retry_at
                .get(&head.id)
                .is_some_and(|&t| now < t)
            {
                continue;
            }
            self.emit(Action::Assign {
                job: head.id,
                printer: printer.clone(),
                at: now,
            });
            self.emit(Action::Stage {
                job: head.id,
                printer,
                file_sha256: head.file_sha256.clone(),
                remote_name: head.remote_name(),
                ticket: self.s.next_ticket(),
            });
        }
    }

    fn clear_and_ready(&self, printer: &str) -> bool {
        self.gate(printer).is_ok()
            && self
                .s
                .printers
                .get(printer)
                .is_some_and(|p| p.plate.valid_tap(self.now, self.ttl()).is_some())
    }
}

/// The trays `job` would use on printer `p` with what it reports now (see
/// [`Ctx::filament_mapping`]); the queue page shows the same answer.
pub fn filament_mapping_for(job: &Job, p: &PrinterRuntime) -> Result<Option<Mapping>, String> {
    let Some(needs) = job.filaments.as_ref().filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    let Some(model) = Model::from_model_code(&p.model_code) else {
        return Ok(None);
    };
    let Some(trays) = p.report.as_ref().and_then(|r| r.trays.as_ref()) else {
        return Err(format!(
            "{} has not reported its filament slots yet",
            p.name
        ));
    };
    map(needs, trays, model)
        .map(Some)
        .map_err(|u| u.to_string())
}

/// In-memory effect of one action (the store's effect of database actions must match).
fn apply_action(s: &mut DispatchState, action: &Action) {
    apply_fields(s, action);
    // A job that moved on no longer waits for the results of its earlier uploads or publishes.
    if let Some((job, _)) = action.job_transition() {
        s.uploads_in_flight.remove(&job);
        s.publishes_in_flight.remove(&job);
    }
    match action {
        Action::Assign { job, .. } => {
            s.uploads_in_flight.remove(job);
        }
        Action::MarkPublished { job, .. } => {
            s.publishes_in_flight.remove(job);
        }
        _ => {}
    }
}

fn apply_fields(s: &mut DispatchState, action: &Action) {
    use Action::*;
    match action {
        ObserveReport {
            printer,
            report,
            at,
        } => {
            if let Some(p) = s.printers.get_mut(printer) {
                if observed_activity(p.last_known.as_ref(), report).is_some() {
                    p.last_activity_at = Some(*at);
                }
                if report.have_full_report && report.gcode_state != GcodeState::Unknown {
                    p.last_known = Some(report.clone());
                }
                p.link_online = report.link_online;
                p.epoch = Some(report.connection_epoch);
                p.report = Some(report.clone());
            }
        }
        ObservePowerHeldOff { printer, held_off } => {
            if let Some(p) = s.printers.get_mut(printer) {
                p.power_held_off = *held_off;
            }
        }
        ObserveLinkDown { printer } => {
            if let Some(p) = s.printers.get_mut(printer) {
                p.link_online = false;
                if let Some(r) = &mut p.report {
                    r.link_online = false;
                }
            }
        }
        TrackJob(job) => {
            s.jobs.insert(job.id, (**job).clone());
        }
        SetSafetyTripped { tripped } => s.safety_tripped = *tripped,
        NoteIdEchoed { job, at } => {
            if let Some(a) = s.jobs.get_mut(job).and_then(|j| j.start.as_mut()) {
                a.id_echoed_at = Some(*at);
            }
        }
        DelayStaging { job, until } => {
            s.stage_retry_at.insert(*job, *until);
        }
        RecordTap { printer, tap } => {
            if let Some(p) = s.printers.get_mut(printer) {
                p.plate = PlateState::Clear(tap.clone());
                p.recent_tap_ids.push_back(tap.tap_id.clone());
                while p.recent_tap_ids.len() > RECENT_TAPS {
                    p.recent_tap_ids.pop_front();
                }
            }
        }
        RejectTap { printer, tap, .. } => {
            if let Some(p) = s.printers.get_mut(printer) {
                p.recent_tap_ids.push_back(tap.tap_id.clone());
                while p.recent_tap_ids.len() > RECENT_TAPS {
                    p.recent_tap_ids.pop_front();
                }
            }
        }
        ExpireTap {
            printer, tap_id, ..
        } => {
            if let Some(p) = s.printers.get_mut(printer)
                && matches!(&p.plate, PlateState::Clear(t) if &t.tap_id == tap_id)
            {
                p.plate = PlateState::Unknown;
            }
        }
        MarkPlateOccupied { printer, .. } => {
            if let Some(p) = s.printers.get_mut(printer) {
                p.plate = PlateState::Occupied;
            }
        }
        SetQueuePaused { printer, paused } => match printer {
            None => s.queue_paused = *paused,
            Some(name) => {
                if let Some(p) = s.printers.get_mut(name) {
                    p.paused = *paused;
                }
            }
        },
        Assign { job, printer, at } => {
            if let Some(j) = s.jobs.get_mut(job) {
                j.assigned_printer = Some(printer.clone());
                j.state = JobState::Queued;
                j.updated_at = *at;
            }
        }
        MarkStaged { job, at, .. } => set_state(s, *job, JobState::Staged, *at, None),
        Unassign {
            job,
            reason,
            stage_failed,
            at,
        } => {
            if let Some(j) = s.jobs.get_mut(job) {
                j.state = JobState::Queued;
                j.assigned_printer = None;
                j.updated_at = *at;
                j.message = Some(reason.clone());
                if *stage_failed {
                    j.stage_failures += 1;
                }
            }
        }
        ConsumeTapAndMarkStarting {
            job,
            printer,
            tap,
            decided_at,
            window_deadline,
            mapping,
        } => {
            if let Some(p) = s.printers.get_mut(printer) {
                p.plate = PlateState::Occupied;
            }
            if let Some(j) = s.jobs.get_mut(job) {
                j.state = JobState::Starting;
                j.assigned_printer = Some(printer.clone());
                j.updated_at = *decided_at;
                j.message = None;
                j.start = Some(StartAttempt {
                    tap: tap.clone(),
                    decided_at: *decided_at,
                    window_deadline: *window_deadline,
                    publish_attempted_at: None,
                    publish_epoch: None,
                    sequence_id: None,
                    published_at: None,
                    id_echoed_at: None,
                    mapping: mapping.clone(),
                });
            }
        }
        HoldJob {
            job, reason, at, ..
        } => {
            if let Some(j) = s.jobs.get_mut(job) {
                j.message = Some(reason.clone());
                j.updated_at = *at;
            }
        }
        MarkPublishing { job, epoch, at } => {
            if let Some(j) = s.jobs.get_mut(job)
                && let Some(a) = j.start.as_mut()
            {
                a.publish_attempted_at = Some(*at);
                a.publish_epoch = Some(*epoch);
                j.updated_at = *at;
            }
        }
        MarkPublished {
            job,
            sequence_id,
            at,
        } => {
            if let Some(j) = s.jobs.get_mut(job)
                && let Some(a) = j.start.as_mut()
            {
                a.sequence_id = Some(sequence_id.clone());
                a.published_at = Some(*at);
                j.updated_at = *at;
            }
        }
        ReturnToQueued {
            job,
            restore_tap,
            reason,
            at,
        } => {
            let Some(j) = s.jobs.get_mut(job) else { return };
            let tap = j.start.take().map(|a| a.tap);
            let printer = j.assigned_printer.take();
            j.state = JobState::Queued;
            j.updated_at = *at;
            j.message = Some(reason.clone());
            if *restore_tap
                && let (Some(tap), Some(printer)) = (tap, printer)
                && let Some(p) = s.printers.get_mut(&printer)
            {
                p.plate = PlateState::Clear(tap);
            }
        }
        MarkPrinting { job, at } => set_state(s, *job, JobState::Printing, *at, None),
        MarkUnconfirmed { job, reason, at } => {
            set_state(s, *job, JobState::Unconfirmed, *at, Some(reason))
        }
        MarkFinished { job, outcome, at } => {
            set_state(s, *job, JobState::Finished, *at, Some(outcome))
        }
        MarkFailed { job, reason, at } => set_state(s, *job, JobState::Failed, *at, Some(reason)),
        MarkCancelled {
            job,
            by,
            restore_tap,
            at,
        } => {
            if *restore_tap
                && let Some(j) = s.jobs.get(job)
                && let (Some(a), Some(printer)) = (&j.start, &j.assigned_printer)
                && let Some(p) = s.printers.get_mut(printer)
            {
                p.plate = PlateState::Clear(a.tap.clone());
            }
            set_state(
                s,
                *job,
                JobState::Cancelled,
                *at,
                Some(&format!("cancelled by {by}")),
            );
        }
        MarkExpired { job, at } => set_state(
            s,
            *job,
            JobState::Expired,
            *at,
            Some("the deadline passed before the job could start"),
        ),
        SwapPositions {
            a,
            a_position,
            b,
            b_position,
        } => {
            if let Some(j) = s.jobs.get_mut(a) {
                j.position = *b_position;
            }
            if let Some(j) = s.jobs.get_mut(b) {
                j.position = *a_position;
            }
        }
        StartAgain {
            job,
            by,
            new_subtask_id,
            at,
        } => {
            let mut j = (**job).clone();
            j.state = JobState::Queued;
            j.assigned_printer = None;
            j.subtask_id = *new_subtask_id;
            j.stage_failures = 0;
            j.start = None;
            j.deadline = None;
            j.start_again_at = Some(*at);
            j.updated_at = *at;
            j.message = Some(start_again_message(by));
            s.stage_retry_at.remove(&j.id);
            s.jobs.insert(j.id, j);
        }
        RequestPushall { printer, at } => {
            if let Some(p) = s.printers.get_mut(printer) {
                p.last_pushall_at = Some(*at);
            }
        }
        Stage { job, ticket, .. } => {
            s.last_ticket = s.last_ticket.max(*ticket);
            s.uploads_in_flight.insert(*job, *ticket);
        }
        Publish { job, ticket, .. } => {
            s.last_ticket = s.last_ticket.max(*ticket);
            s.publishes_in_flight.insert(*job, *ticket);
        }
        Notify { .. } => {}
    }
}

/// The job message after "start again".
pub fn start_again_message(by: &str) -> String {
    format!("start again requested by {by}; waiting for a new plate-clear tap")
}

/// Move a job to `state`; terminal jobs leave the in-memory state.
fn set_state(
    s: &mut DispatchState,
    job: JobId,
    state: JobState,
    at: Millis,
    message: Option<&str>,
) {
    if state.is_terminal() {
        s.jobs.remove(&job);
        s.stage_retry_at.remove(&job);
        return;
    }
    if let Some(j) = s.jobs.get_mut(&job) {
        j.state = state;
        j.updated_at = at;
        if let Some(m) = message {
            j.message = Some(m.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::Job;

    const T0: Millis = 1_700_000_000_000;

    /// The decision core plus in-memory application, driven by hand.
    struct H {
        s: DispatchState,
        now: Millis,
        log: Vec<Action>,
    }

    impl H {
        fn new() -> H {
            let mut s = DispatchState::new(DispatchTimings::default());
            s.printers
                .insert("p".into(), PrinterRuntime::new("p", "C12"));
            H {
                s,
                now: T0,
                log: Vec::new(),
            }
        }
        fn ev(&mut self, e: Event) -> Vec<Action> {
            let actions = decide(&self.s, e, self.now);
            for a in &actions {
                self.s.apply(a);
            }
            self.log.extend(actions.clone());
            actions
        }
        fn at(&mut self, ms: Millis) -> &mut H {
            self.now += ms;
            self
        }
        fn report(&mut self, state: GcodeState, id: &str, full_age: Option<Millis>) -> Vec<Action> {
            let r = ReportSummary {
                link_online: true,
                connection_epoch: 1,
                have_full_report: true,
                full_report_at: Some(self.now - full_age.unwrap_or(0)),
                gcode_state: state,
                subtask_id: Some(id.into()),
                gcode_file: Some(String::new()),
                control: ControlState::Ok,
                ..ReportSummary::default()
            };
            self.ev(Event::PrinterReport {
                printer: "p".into(),
                report: r,
            })
        }
        fn tap(&mut self, id: &str) -> Vec<Action> {
            self.ev(Event::Tap {
                printer: "p".into(),
                user: "ann".into(),
                tap_id: id.into(),
            })
        }
        fn job(&self) -> &Job {
            self.s.jobs.get(&1).expect("job 1")
        }
        /// The upload in flight for `job` completed.
        fn stage_complete(&mut self, job: JobId) -> Vec<Action> {
            let ticket = self.upload_ticket(job);
            self.ev(Event::StageComplete {
                job,
                printer: "p".into(),
                ticket,
            })
        }
        fn upload_ticket(&self, job: JobId) -> EffectTicket {
            self.s
                .uploads_in_flight
                .get(&job)
                .copied()
                .unwrap_or_default()
        }
        fn publish_ticket(&self, job: JobId) -> EffectTicket {
            self.s
                .publishes_in_flight
                .get(&job)
                .copied()
                .unwrap_or_default()
        }
        /// Idle printer, one job staged, fresh tap: the job is published.
        fn published() -> H {
            let mut h = H::new();
            h.report(GcodeState::Idle, "0", None);
            h.ev(Event::JobQueued(Box::new(job(1))));
            h.stage_complete(1);
            h.tap("t1");
            h.report(GcodeState::Idle, "0", None);
            assert!(h.log.iter().any(|a| matches!(a, Action::Publish { .. })));
            h.ev(Event::PublishResult {
                job: 1,
                ticket: h.publish_ticket(1),
                outcome: PublishOutcome::Published {
                    sequence_id: "21010".into(),
                },
            });
            h
        }
    }

    fn job(id: JobId) -> Job {
        Job {
            id,
            idempotency_key: format!("k{id}"),
            target: Target::Printer("p".into()),
            model_code: "C12".into(),
            file_sha256: "f".into(),
            plate: 1,
            name: format!("job {id}"),
            position: id,
            deadline: None,
            created_by: "ann".into(),
            created_at: T0,
            updated_at: T0,
            state: JobState::Queued,
            assigned_printer: None,
            subtask_id: 1000 + id as u32,
            stage_failures: 0,
            start_again_at: None,
            start: None,
            message: None,
            filaments: None,
        }
    }

    fn count(actions: &[Action], f: impl Fn(&Action) -> bool) -> usize {
        actions.iter().filter(|a| f(a)).count()
    }

    #[test]
    fn an_upload_interrupted_by_a_restart_is_uploaded_again() {
        // As loaded from the database after a kill during an upload: queued, assigned, and no
        // upload task left to report back.
        let mut h = H::new();
        let mut j = job(1);
        j.assigned_printer = Some("p".into());
        h.s.jobs.insert(1, j);
        let restart = h.ev(Event::Restart);
        assert_eq!(
            count(&restart, |a| matches!(a, Action::Unassign { job: 1, .. })),
            1
        );
        let online = h.report(GcodeState::Idle, "0", None);
        assert_eq!(
            count(&online, |a| matches!(a, Action::Stage { job: 1, .. })),
            1,
            "the job is uploaded again once the printer is online: {online:?}"
        );
    }

    #[test]
    fn happy_path_orders_database_actions_before_effects() {
        let h = H::published();
        let consume = h
            .log
            .iter()
            .position(|a| matches!(a, Action::ConsumeTapAndMarkStarting { .. }));
        let publishing = h
            .log
            .iter()
            .position(|a| matches!(a, Action::MarkPublishing { .. }));
        let publish = h
            .log
            .iter()
            .position(|a| matches!(a, Action::Publish { .. }));
        assert!(consume < publishing && publishing < publish);
        assert_eq!(h.job().state, JobState::Starting);
        assert_eq!(h.s.printers["p"].plate, PlateState::Occupied);
    }

    #[test]
    fn lost_ack_and_no_evidence_becomes_unconfirmed_never_resent() {
        let mut h = H::published();
        h.at(89_000).ev(Event::Tick);
        assert_eq!(h.job().state, JobState::Starting);
        let a = h.at(2_000).ev(Event::Tick);
        assert!(matches!(
            a.as_slice(),
            [Action::MarkUnconfirmed { job: 1, .. }]
        ));
        h.tap("t2");
        h.at(1_000).report(GcodeState::Idle, "0", None);
        assert_eq!(count(&h.log, |a| matches!(a, Action::Publish { .. })), 1);
    }

    #[test]
    fn id_echo_extends_to_phase_b_and_active_state_confirms() {
        let mut h = H::published();
        h.at(10_000).report(GcodeState::Finish, "1001", None);
        h.at(85_000).ev(Event::Tick);
        h.at(85_000).ev(Event::Tick);
        assert_eq!(
            h.job().state,
            JobState::Starting,
            "phase B: 180 s after the echo"
        );
        let a = h.at(5_000).report(GcodeState::Prepare, "1001", None);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::MarkPrinting { job: 1, .. }))
        );
    }

    #[test]
    fn late_prepare_after_finish_held_50s_is_still_confirmed() {
        let mut h = H::published();
        for _ in 0..10 {
            h.at(5_000).report(GcodeState::Finish, "0", None);
        }
        assert_eq!(h.job().state, JobState::Starting);
        let a = h.at(1_000).report(GcodeState::Prepare, "1001", None);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::MarkPrinting { job: 1, .. }))
        );
    }

    #[test]
    fn finish_to_idle_is_not_evidence() {
        let mut h = H::published();
        h.at(1_000).report(GcodeState::Finish, "0", None);
        h.at(1_000).report(GcodeState::Idle, "0", None);
        assert_eq!(h.job().state, JobState::Starting);
    }

    #[test]
    fn duplicate_ack_changes_once() {
        let mut h = H::published();
        let ack = Event::Ack {
            printer: "p".into(),
            sequence_id: "21010".into(),
            success: Some(false),
            reason: Some("busy".into()),
        };
        let first = h.ev(ack.clone());
        assert!(matches!(
            first.as_slice(),
            [Action::MarkFailed { job: 1, .. }]
        ));
        assert!(h.ev(ack).is_empty());
        let ok = h.ev(Event::Ack {
            printer: "p".into(),
            sequence_id: "21010".into(),
            success: Some(true),
            reason: None,
        });
        assert!(ok.is_empty(), "a success ack is not evidence");
    }

    #[test]
    fn busy_refusal_fails_and_is_never_retried() {
        let mut h = H::published();
        let mut r = ReportSummary {
            link_online: true,
            connection_epoch: 1,
            have_full_report: true,
            full_report_at: Some(h.now),
            gcode_state: GcodeState::Running,
            subtask_id: Some("555".into()),
            print_error: ERROR_BUSY,
            control: ControlState::Ok,
            ..ReportSummary::default()
        };
        let a = h.ev(Event::PrinterReport {
            printer: "p".into(),
            report: r.clone(),
        });
        let failed = a.iter().find_map(|a| match a {
            Action::MarkFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        assert!(failed.is_some_and(|r| r.contains("0500_4004") && r.contains("never retries")));
        r.gcode_state = GcodeState::Idle;
        r.print_error = 0;
        h.at(600_000).ev(Event::PrinterReport {
            printer: "p".into(),
            report: r,
        });
        assert_eq!(count(&h.log, |a| matches!(a, Action::Publish { .. })), 1);
    }

    #[test]
    fn screen_start_occupies_the_plate_and_the_queue_waits() {
        let mut h = H::new();
        h.report(GcodeState::Idle, "0", None);
        h.tap("t1");
        let a = h.at(1_000).report(GcodeState::Prepare, "777", None);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::MarkPlateOccupied { .. }))
        );
        h.ev(Event::JobQueued(Box::new(job(1))));
        h.stage_complete(1);
        h.at(600_000).report(GcodeState::Finish, "777", None);
        assert_eq!(h.job().state, JobState::Staged);
        assert_eq!(count(&h.log, |a| matches!(a, Action::Publish { .. })), 0);
        assert!(
            !h.tap("t2").is_empty(),
            "after the print a new tap is accepted"
        );
        h.report(GcodeState::Finish, "777", None);
        assert_eq!(count(&h.log, |a| matches!(a, Action::Publish { .. })), 1);
    }

    #[test]
    fn stale_report_asks_for_pushall_instead_of_publishing() {
        let mut h = H::new();
        h.report(GcodeState::Idle, "0", Some(0));
        h.ev(Event::JobQueued(Box::new(job(1))));
        h.stage_complete(1);
        let a = h.at(30_000).tap("t1");
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::ConsumeTapAndMarkStarting { .. }))
        );
        assert!(a.iter().any(|a| matches!(a, Action::RequestPushall { .. })));
        assert!(!a.iter().any(|a| matches!(a, Action::Publish { .. })));
        let a = h.at(1_000).report(GcodeState::Idle, "0", None);
        assert!(a.iter().any(|a| matches!(a, Action::Publish { .. })));
    }

    #[test]
    fn offline_printer_gets_nothing_and_the_tap_comes_back() {
        let mut h = H::new();
        h.report(GcodeState::Idle, "0", Some(0));
        h.ev(Event::JobQueued(Box::new(job(1))));
        h.stage_complete(1);
        h.at(30_000).tap("t1"); // decided, waiting for a fresh report
        let a = h.ev(Event::LinkDown {
            printer: "p".into(),
        });
        assert!(matches!(
            a.as_slice(),
            [
                Action::ObserveLinkDown { .. },
                Action::ReturnToQueued {
                    restore_tap: true,
                    ..
                }
            ]
        ));
        assert!(matches!(h.s.printers["p"].plate, PlateState::Clear(_)));
        let a = h.at(1_000).ev(Event::Tick);
        assert!(a.is_empty(), "nothing for an offline printer: {a:?}");
    }

    /// Seed 37769's root cause: results of an earlier upload (a late completion, a duplicated
    /// failure) must not stage or unassign a job whose newer upload is still running.
    #[test]
    fn a_stale_upload_result_changes_nothing() {
        let mut h = H::new();
        h.report(GcodeState::Idle, "0", None);
        h.ev(Event::JobQueued(Box::new(job(1))));
        let first = h.upload_ticket(1);
        assert!(first > 0, "the job is being uploaded");
        let failed = |ticket| Event::StageFailed {
            job: 1,
            printer: "p".into(),
            ticket,
            reason: "connection reset".into(),
        };
        let complete = |ticket| Event::StageComplete {
            job: 1,
            printer: "p".into(),
            ticket,
        };
        h.ev(failed(first));
        assert_eq!(
            h.job().assigned_printer,
            None,
            "the failed upload unassigns it"
        );
        let retry = h.s.timings.stage_retry_ms;
        h.at(retry).ev(Event::Tick);
        let second = h.upload_ticket(1);
        assert!(
            second > first,
            "a new upload with a new ticket: {:?}",
            h.log
        );
        // The first upload's failure again, then its completion, arrive late.
        assert_eq!(
            h.ev(failed(first)),
            vec![],
            "a duplicated failure is dropped"
        );
        assert_eq!(
            h.ev(complete(first)),
            vec![],
            "a late completion is dropped"
        );
        assert_eq!(h.job().state, JobState::Queued);
        assert_eq!(h.job().stage_failures, 1);
        assert_eq!(
            h.upload_ticket(1),
            second,
            "the new upload is still awaited"
        );
        let a = h.ev(complete(second));
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::MarkStaged { job: 1, .. })),
            "{a:?}"
        );
        assert_eq!(h.ev(complete(second)), vec![], "and only once");
    }

    /// A late "not connected" of an earlier publish must not put back a job whose later publish
    /// may have reached the printer (that would allow a second start, I2).
    #[test]
    fn a_stale_publish_result_changes_nothing() {
        let mut h = H::new();
        h.report(GcodeState::Idle, "0", None);
        h.ev(Event::JobQueued(Box::new(job(1))));
        h.stage_complete(1);
        h.tap("t1");
        let first = h.publish_ticket(1);
        assert!(first > 0, "published: {:?}", h.log);
        h.ev(Event::PublishResult {
            job: 1,
            ticket: first,
            outcome: PublishOutcome::NotConnected,
        });
        assert_eq!(h.job().state, JobState::Queued, "back in the queue");
        assert!(
            matches!(h.s.printers["p"].plate, PlateState::Clear(_)),
            "tap restored"
        );
        h.stage_complete(1);
        h.report(GcodeState::Idle, "0", None);
        let second = h.publish_ticket(1);
        assert!(second > first, "published again: {:?}", h.log);
        let late = h.ev(Event::PublishResult {
            job: 1,
            ticket: first,
            outcome: PublishOutcome::NotConnected,
        });
        assert_eq!(
            late,
            vec![],
            "the late result of the first publish is dropped"
        );
        assert_eq!(h.job().state, JobState::Starting);
        let a = h.ev(Event::PublishResult {
            job: 1,
            ticket: second,
            outcome: PublishOutcome::Published {
                sequence_id: "7".into(),
            },
        });
        assert!(
            a.iter().any(|a| matches!(a, Action::MarkPublished { .. })),
            "{a:?}"
        );
    }

    fn power_held_off(h: &mut H, held_off: bool) -> Vec<Action> {
        h.ev(Event::PowerHeldOff {
            printer: "p".into(),
            held_off,
        })
    }

    /// Auto power-off after a print: the plate of the cooled, unpowered printer can be cleared;
    /// the tap stays valid when power returns and starts the next job.
    #[test]
    fn a_tap_is_accepted_while_printgate_holds_the_power_off() {
        let mut h = H::new();
        h.report(GcodeState::Running, "41", None);
        h.at(60_000).report(GcodeState::Finish, "41", None);
        assert_eq!(h.s.printers["p"].plate, PlateState::Occupied);
        h.ev(Event::LinkDown {
            printer: "p".into(),
        });
        let refused = h.tap("t-offline");
        assert!(
            refused.iter().any(
                |a| matches!(a, Action::RejectTap { reason, .. } if reason.contains("offline"))
            ),
            "offline for an unknown reason: refused, saying why: {refused:?}"
        );
        power_held_off(&mut h, true);
        let a = h.tap("t1");
        assert!(
            a.iter().any(|a| matches!(a, Action::RecordTap { .. })),
            "{a:?}"
        );
        assert!(
            a.iter().any(|a| matches!(a, Action::Notify { message, .. } if message.contains("holds the power"))),
            "the reason it was accepted is recorded: {a:?}"
        );
        h.ev(Event::JobQueued(Box::new(job(1))));
        // Power returns; the printer boots and reports the finished job as before.
        h.at(5_000);
        power_held_off(&mut h, false);
        h.report(GcodeState::Finish, "41", None);
        h.stage_complete(1);
        assert!(
            h.log.iter().any(
                |a| matches!(a, Action::ConsumeTapAndMarkStarting { tap, .. } if tap.tap_id == "t1")
            ),
            "the tap made while unpowered starts the job: {:?}",
            h.log
        );
        assert_eq!(count(&h.log, |a| matches!(a, Action::Publish { .. })), 1);
    }

    /// I1 still holds: print activity reported after power returns voids that tap.
    #[test]
    fn activity_after_power_returns_voids_a_tap_made_while_unpowered() {
        let mut h = H::new();
        h.report(GcodeState::Finish, "41", None);
        h.ev(Event::LinkDown {
            printer: "p".into(),
        });
        power_held_off(&mut h, true);
        assert!(
            h.tap("t1")
                .iter()
                .any(|a| matches!(a, Action::RecordTap { .. }))
        );
        power_held_off(&mut h, false);
        let a = h.at(5_000).report(GcodeState::Running, "42", None);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::MarkPlateOccupied { .. })),
            "{a:?}"
        );
        assert_eq!(h.s.printers["p"].plate, PlateState::Occupied);
    }

    #[test]
    fn tap_expires_after_ttl() {
        let mut h = H::new();
        h.report(GcodeState::Idle, "0", None);
        h.tap("t1");
        let ttl = h.s.timings.plate_clear_ttl_ms;
        let a = h.at(ttl).ev(Event::Tick);
        assert!(matches!(a.as_slice(), [Action::ExpireTap { .. }]));
        assert_eq!(h.s.printers["p"].plate, PlateState::Unknown);
    }

    #[test]
    fn start_window_returns_the_job_and_restores_the_tap_only_if_unpublished() {
        let mut h = H::new();
        h.report(GcodeState::Idle, "0", Some(0));
        h.ev(Event::JobQueued(Box::new(job(1))));
        h.stage_complete(1);
        h.at(20_000).tap("t1"); // decided on a stale report; the pushall is never answered
        let a = h.at(60_000).ev(Event::Tick);
        assert!(
            a.iter().any(|a| matches!(
                a,
                Action::ReturnToQueued {
                    restore_tap: true,
                    ..
                }
            )),
            "{a:?}"
        );

        let mut h = H::published();
        // After a publish the window never requeues: only unconfirmed.
        h.at(200_000).ev(Event::Tick);
        assert_eq!(h.job().state, JobState::Unconfirmed);
        assert!(
            !h.log
                .iter()
                .any(|a| matches!(a, Action::ReturnToQueued { .. }))
        );

        // Publish failed before sending: back to the queue with the tap.
        let mut h = H::new();
        h.report(GcodeState::Idle, "0", None);
        h.ev(Event::JobQueued(Box::new(job(1))));
        h.stage_complete(1);
        h.tap("t1");
        let a = h.ev(Event::PublishResult {
            job: 1,
            ticket: h.publish_ticket(1),
            outcome: PublishOutcome::NotConnected,
        });
        assert!(a.iter().any(|a| matches!(
            a,
            Action::ReturnToQueued {
                restore_tap: true,
                ..
            }
        )));
    }

    #[test]
    fn restart_makes_starting_unconfirmed_and_forgets_taps() {
        let mut h = H::published();
        let a = h.ev(Event::Restart);
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::MarkUnconfirmed { job: 1, .. }))
        );
        assert_eq!(h.job().state, JobState::Unconfirmed);
    }

    #[test]
    fn start_again_needs_a_tap_recorded_after_it() {
        let mut h = H::published();
        h.at(100_000).ev(Event::Tick);
        assert_eq!(h.job().state, JobState::Unconfirmed);
        h.at(1_000).report(GcodeState::Idle, "0", None);
        h.tap("t2"); // before "start again": does not count
        let again = h.job().clone();
        h.at(1_000).ev(Event::StartAgain {
            job: Box::new(again),
            user: "ann".into(),
            new_subtask_id: 4242,
        });
        h.stage_complete(1);
        h.at(1_000).report(GcodeState::Idle, "0", None);
        assert_eq!(h.job().state, JobState::Staged);
        assert_eq!(count(&h.log, |a| matches!(a, Action::Publish { .. })), 1);
        h.at(1_000).tap("t3");
        assert_eq!(count(&h.log, |a| matches!(a, Action::Publish { .. })), 2);
        assert_eq!(h.job().subtask_id, 4242);
    }

    #[test]
    fn duplicate_tap_and_job_are_ignored() {
        let mut h = H::new();
        h.report(GcodeState::Idle, "0", None);
        assert!(!h.tap("t1").is_empty());
        assert!(h.tap("t1").is_empty());
        assert!(!h.ev(Event::JobQueued(Box::new(job(1)))).is_empty());
        assert!(h.ev(Event::JobQueued(Box::new(job(1)))).is_empty());
    }

    // ---------------------------------------------------------------- filament (issue 21)

    use crate::jobs::ams_mapping::{Need, SlotSeen, TrayRef};

    /// AMS unit 0 of a P1S holding these spools (material, RRGGBBAA), `None` = empty slot.
    fn ams_trays(spools: [Option<(&str, &str)>; 4]) -> Trays {
        Trays {
            has_ams: true,
            slots: spools
                .iter()
                .enumerate()
                .map(|(i, s)| SlotSeen {
                    tray: TrayRef::Ams {
                        unit: 0,
                        slot: i as u32,
                    },
                    loaded: s.is_some(),
                    material: s.map(|s| s.0.to_string()),
                    color: s.map(|s| s.1.to_string()),
                })
                .collect(),
        }
    }

    const ONLY_PLA: [Option<(&str, &str)>; 4] = [
        Some(("PLA", "FFFFFFFF")),
        Some(("PLA", "000000FF")),
        None,
        None,
    ];
    const PETG_IN_SLOT_3: [Option<(&str, &str)>; 4] = [
        Some(("PLA", "FFFFFFFF")),
        Some(("PLA", "000000FF")),
        Some(("PETG", "101010FF")),
        None,
    ];

    impl H {
        fn report_trays(&mut self, trays: Trays) -> Vec<Action> {
            let r = ReportSummary {
                link_online: true,
                connection_epoch: 1,
                have_full_report: true,
                full_report_at: Some(self.now),
                gcode_state: GcodeState::Idle,
                subtask_id: Some("0".into()),
                gcode_file: Some(String::new()),
                control: ControlState::Ok,
                trays: Some(trays),
                ..ReportSummary::default()
            };
            self.ev(Event::PrinterReport {
                printer: "p".into(),
                report: r,
            })
        }
    }

    fn petg_job() -> Job {
        Job {
            filaments: Some(vec![Need {
                id: 1,
                material: "PETG".into(),
                color: "#000000".into(),
            }]),
            ..job(1)
        }
    }

    fn started(log: &[Action]) -> usize {
        count(log, |a| {
            matches!(
                a,
                Action::ConsumeTapAndMarkStarting { .. } | Action::Publish { .. }
            )
        })
    }

    #[test]
    fn a_petg_job_never_starts_with_only_pla_loaded() {
        let mut h = H::new();
        h.report_trays(ams_trays(ONLY_PLA));
        h.ev(Event::JobQueued(Box::new(petg_job())));
        h.stage_complete(1);
        let tapped = h.tap("t1");
        assert_eq!(started(&h.log), 0, "{tapped:?}");
        let want = "not started: p does not have the filament job \"job 1\" needs: load PETG (black) in any AMS slot; then tap Plate clear again";
        assert_eq!(h.job().message.as_deref(), Some(want));
        assert!(
            tapped
                .iter()
                .any(|a| matches!(a, Action::Notify { message, .. } if message == want)),
            "the person who tapped is told why"
        );
        assert!(
            tapped
                .iter()
                .any(|a| matches!(a, Action::ExpireTap { tap_id, .. } if tap_id == "t1")),
            "the tap is voided: nothing starts by itself while someone loads the AMS"
        );
        assert_eq!(h.s.printers["p"].plate, PlateState::Unknown);
        // Reports, ticks and a re-submitted tap change nothing.
        for _ in 0..5 {
            h.at(1_000).report_trays(ams_trays(ONLY_PLA));
            h.ev(Event::Tick);
        }
        h.tap("t1");
        assert_eq!(started(&h.log), 0);
        assert_eq!(count(&h.log, |a| matches!(a, Action::HoldJob { .. })), 1);
        // A new tap with still only PLA loaded: still held, said once more.
        h.at(1_000).tap("t2");
        assert_eq!(started(&h.log), 0);
    }

    #[test]
    fn loading_petg_and_tapping_starts_with_the_committed_mapping() {
        let mut h = H::new();
        h.report_trays(ams_trays(ONLY_PLA));
        h.ev(Event::JobQueued(Box::new(petg_job())));
        h.stage_complete(1);
        h.tap("t1");
        // PETG goes into slot 3; nothing starts until a new tap.
        h.at(1_000).report_trays(ams_trays(PETG_IN_SLOT_3));
        assert_eq!(started(&h.log), 0);
        let actions = h.at(1_000).tap("t2");
        let decided = actions.iter().find_map(|a| match a {
            Action::ConsumeTapAndMarkStarting { mapping, .. } => Some(mapping.clone()),
            _ => None,
        });
        let mapping = decided.flatten().expect("started with a mapping");
        assert!(mapping.use_ams);
        assert_eq!(mapping.ams_mapping(), [2]);
        assert_eq!(mapping.ams_mapping2(), [(0, 2)]);
        let published = actions.iter().find_map(|a| match a {
            Action::Publish { mapping, .. } => Some(mapping.clone()),
            _ => None,
        });
        assert_eq!(
            published,
            Some(Some(mapping.clone())),
            "the publish carries exactly the committed mapping"
        );
        assert_eq!(
            h.job().start.as_ref().and_then(|a| a.mapping.clone()),
            Some(mapping)
        );
    }

    #[test]
    fn a_tray_change_between_decision_and_publish_sends_nothing() {
        let mut h = H::new();
        h.report_trays(ams_trays(PETG_IN_SLOT_3));
        h.ev(Event::JobQueued(Box::new(petg_job())));
        h.stage_complete(1);
        // The last full report is too old to publish on: the decision waits for a pushall.
        h.at(DispatchTimings::default().report_max_age_ms + 1);
        h.tap("t1");
        assert_eq!(h.job().state, JobState::Starting);
        assert_eq!(count(&h.log, |a| matches!(a, Action::Publish { .. })), 0);
        // The fresh report shows the PETG spool pulled out.
        h.report_trays(ams_trays(ONLY_PLA));
        assert_eq!(count(&h.log, |a| matches!(a, Action::Publish { .. })), 0);
        assert_eq!(h.job().state, JobState::Queued);
        assert!(
            h.job()
                .message
                .as_deref()
                .is_some_and(|m| m.contains("AMS 1 slot 3 no longer holds PETG")),
            "{:?}",
            h.job().message
        );
    }

    #[test]
    fn an_any_printer_job_without_its_filament_goes_back_to_the_queue() {
        let mut h = H::new();
        h.report_trays(ams_trays(ONLY_PLA));
        let any = Job {
            target: Target::AnyCompatible,
            ..petg_job()
        };
        h.ev(Event::JobQueued(Box::new(any)));
        h.tap("t1"); // a clear printer takes "any compatible" jobs: uploaded there
        h.stage_complete(1); // staged with a valid tap: the start is decided, and held
        assert_eq!(started(&h.log), 0);
        assert_eq!(h.job().state, JobState::Queued);
        assert_eq!(
            h.job().assigned_printer,
            None,
            "free for a printer that has PETG"
        );
        assert!(
            h.job()
                .message
                .as_deref()
                .is_some_and(|m| m.contains("load PETG (black) in any AMS slot"))
        );
        for _ in 0..3 {
            h.at(1_000).report_trays(ams_trays(ONLY_PLA));
        }
        // A new tap: uploaded again, held again once staged; never started.
        h.at(1_000).tap("t2");
        h.stage_complete(1);
        assert_eq!(started(&h.log), 0);
        assert_eq!(h.job().assigned_printer, None);
    }

    #[test]
    fn a_refused_mapping_is_said_in_words() {
        for code in [0x0700_8012, 0x07FF_8012] {
            assert!(is_refusal_error(code));
            let text = describe_print_error(code);
            assert!(
                text.contains("failed to get the AMS mapping table")
                    && text.contains("Start again"),
                "{text}"
            );
        }
    }

    #[test]
    fn jobs_without_a_filament_list_start_as_before() {
        let mut h = H::new();
        h.report_trays(ams_trays(ONLY_PLA));
        h.ev(Event::JobQueued(Box::new(job(1))));
        h.stage_complete(1);
        let actions = h.tap("t1");
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::ConsumeTapAndMarkStarting { mapping: None, .. }))
        );
    }
}
