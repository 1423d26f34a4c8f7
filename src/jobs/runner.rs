//! The dispatcher's effect runner: the only code that turns [`decide`]'s actions into I/O.
//!
//! One task owns the [`DispatchState`]. It takes events one at a time (printer snapshots, web
//! and MQTT requests, a 1 s tick, results of its own uploads), asks [`decide`] what to do,
//! commits the batch's database actions through [`Store::commit_batch`] (one transaction, one
//! fsync) *before* any effect runs (I6),
//! then runs the effects:
//! - `Stage`: FTPS upload in a background task, reported back as `StageComplete`/`StageFailed`;
//! - `RequestPushall`: one rate-limited `pushall` on the printer's link;
//! - `Publish`: checked again at this instant (inside the start window, link online on the
//!   decided connection, a fresh idle report: I3, I4), then handed to the link exactly once;
//!   an error after hand-over is "outcome unknown" and is reported as published, so the job can
//!   only end `printing` or `unconfirmed` (I2) — never be sent again;
//! - `Notify`: broadcast to the pages and logged.

use super::ams_mapping::Mapping;
use super::dispatcher::{
    Action, DispatchState, DispatchTimings, EffectTicket, Event, PublishOutcome, ReportSummary,
    decide,
};
use super::files::FileStore;
use super::model::{JobId, Millis};
use crate::printer::{
    AmsMappingFields, CommandOutcome, LinkError, PrinterCommand, PrinterLink, PrinterSnapshot,
    StartRequest,
};
use crate::store::Store;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A message for people (page banner, event stream, MQTT `events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub at: Millis,
    pub printer: Option<String>,
    pub job: Option<JobId>,
    pub message: String,
}

/// The dispatcher's clock: wall-clock milliseconds at start, advanced by the monotonic clock, so
/// that it never goes backwards while the gateway runs (windows are measured on it).
#[derive(Debug, Clone, Copy)]
pub struct DispatchClock {
    anchor_unix_ms: Millis,
    anchor: Instant,
}

impl DispatchClock {
    pub fn new() -> Self {
        let unix = chrono::Utc::now().timestamp_millis();
        DispatchClock {
            anchor_unix_ms: u64::try_from(unix).unwrap_or(0),
            anchor: Instant::now(),
        }
    }
    pub fn now(&self) -> Millis {
        let elapsed = u64::try_from(self.anchor.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.anchor_unix_ms.saturating_add(elapsed)
    }
    /// The same instant on both clocks.
    pub fn pair(&self) -> (Instant, Millis) {
        let i = Instant::now();
        let elapsed = u64::try_from(i.duration_since(self.anchor).as_millis()).unwrap_or(u64::MAX);
        (i, self.anchor_unix_ms.saturating_add(elapsed))
    }
}

impl Default for DispatchClock {
    fn default() -> Self {
        Self::new()
    }
}

/// One printer the dispatcher drives.
#[derive(Clone)]
pub struct DispatchPrinter {
    pub name: String,
    /// `printer_model_id` (e.g. `C12`).
    pub model_code: String,
    pub link: Arc<dyn PrinterLink>,
}

enum Request {
    /// From outside (web, MQTT): the reply carries the batch's notices.
    External {
        event: Event,
        reply: Option<oneshot::Sender<Vec<Notice>>>,
    },
    /// From the runner's own watchers and tasks.
    Internal(Event),
}

/// Handle to the running dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::Sender<Request>,
    view: watch::Receiver<Arc<DispatchState>>,
    notices: broadcast::Sender<Notice>,
    clock: DispatchClock,
}

#[derive(Debug, thiserror::Error)]
#[error("the dispatcher has stopped (the gateway is shutting down)")]
pub struct DispatcherStopped;

impl Dispatcher {
    /// Hand an event to the dispatcher and wait until it has been decided, committed and its
    /// effects started; returns the notices that batch produced (e.g. why a tap was refused).
    pub async fn submit(&self, event: Event) -> Result<Vec<Notice>, DispatcherStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::External {
                event,
                reply: Some(reply),
            })
            .await
            .map_err(|_| DispatcherStopped)?;
        rx.await.map_err(|_| DispatcherStopped)
    }

    /// The dispatcher's current state (after the last batch).
    pub fn state(&self) -> Arc<DispatchState> {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<DispatchState>> {
        self.view.clone()
    }

    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }
}

/// Everything the runner needs.
pub struct RunnerParts {
    pub store: Arc<Store>,
    pub files: Arc<FileStore>,
    pub printers: Vec<DispatchPrinter>,
    pub timings: DispatchTimings,
    pub safety_tripped: bool,
    /// How often the runner re-evaluates timers (windows, expiry).
    pub tick: Duration,
}

/// Recover from the last run (starting → unconfirmed, taps voided), load the state from
/// SQLite, and start the runner task and its watchers in `tasks`.
pub fn spawn(
    parts: RunnerParts,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Dispatcher> {
    let clock = DispatchClock::new();
    let now = clock.now();
    let recovery = parts.store.recover_after_restart(now)?;
    if !recovery.unconfirmed.is_empty() {
        tracing::warn!(
            jobs = ?recovery.unconfirmed,
            "jobs that were starting when the gateway stopped are now unconfirmed; a person must check the printers"
        );
    }
    let printer_models: Vec<(String, String)> = parts
        .printers
        .iter()
        .map(|p| (p.name.clone(), p.model_code.clone()))
        .collect();
    let state = parts.store.load_dispatch_state(
        parts.timings.clone(),
        &printer_models,
        parts.safety_tripped,
    )?;
    let (tx, rx) = mpsc::channel(256);
    let (view_tx, view_rx) = watch::channel(Arc::new(state.clone()));
    let (notices, _) = broadcast::channel(256);
    let dispatcher = Dispatcher {
        tx: tx.clone(),
        view: view_rx,
        notices: notices.clone(),
        clock,
    };
    for p in &parts.printers {
        tasks.spawn(watch_printer(
            p.name.clone(),
            p.link.subscribe(),
            tx.clone(),
            clock,
            shutdown.clone(),
        ));
    }
    let runner = Runner {
        store: parts.store,
        files: parts.files,
        links: parts
            .printers
            .into_iter()
            .map(|p| (p.name.clone(), p.link))
            .collect(),
        state,
        clock,
        view: view_tx,
        notices,
        internal: tx,
        report_max_age_ms: parts.timings.report_max_age_ms,
    };
    tasks.spawn(runner.run(rx, parts.tick, shutdown));
    Ok(dispatcher)
}

/// Turn a printer's snapshots into dispatcher events: a report summary on every change while
/// online, `LinkDown` when it goes offline, `Ack` for each new command acknowledgement.
async fn watch_printer(
    name: String,
    mut rx: watch::Receiver<PrinterSnapshot>,
    tx: mpsc::Sender<Request>,
    clock: DispatchClock,
    shutdown: CancellationToken,
) {
    let mut was_online = false;
    let mut last_ack = None;
    loop {
        let snap = rx.borrow_and_update().clone();
        let online = snap.link.is_online();
        let mut events = Vec::new();
        if online {
            let (instant, now) = clock.pair();
            events.push(Event::PrinterReport {
                printer: name.clone(),
                report: ReportSummary::from_snapshot(&snap, instant, now),
            });
        } else if was_online {
            events.push(Event::LinkDown {
                printer: name.clone(),
            });
        }
        was_online = online;
        if snap.last_ack != last_ack {
            if let Some(ack) = &snap.last_ack {
                events.push(Event::Ack {
                    printer: name.clone(),
                    sequence_id: ack.sequence_id.clone(),
                    success: ack.success,
                    reason: ack.reason.clone(),
                });
            }
            last_ack = snap.last_ack.clone();
        }
        for e in events {
            if tx.send(Request::Internal(e)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

struct Runner {
    store: Arc<Store>,
    files: Arc<FileStore>,
    links: BTreeMap<String, Arc<dyn PrinterLink>>,
    state: DispatchState,
    clock: DispatchClock,
    view: watch::Sender<Arc<DispatchState>>,
    notices: broadcast::Sender<Notice>,
    internal: mpsc::Sender<Request>,
    report_max_age_ms: Millis,
}

impl Runner {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        tick: Duration,
        shutdown: CancellationToken,
    ) {
        self.process(Event::Restart, None).await;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => self.process(Event::Tick, None).await,
                req = rx.recv() => match req {
                    None => return,
                    Some(Request::External { event, reply }) => self.process(event, reply).await,
                    Some(Request::Internal(event)) => self.process(event, None).await,
                },
            }
        }
    }

    /// Decide, commit, run effects; results of inline effects (publish) are processed right
    /// after, one event at a time, before the next request is taken.
    async fn process(&mut self, first: Event, reply: Option<oneshot::Sender<Vec<Notice>>>) {
        let mut queue = VecDeque::from([first]);
        let mut notices = Vec::new();
        while let Some(event) = queue.pop_front() {
            let now = self.clock.now();
            let actions = decide(&self.state, event, now);
            let effects = match self.store.commit_batch(&mut self.state, actions) {
                Ok(effects) => effects,
                Err(e) => {
                    tracing::error!("dispatcher: {e}; nothing was sent");
                    notices.push(self.notice(None, None, format!("the gateway could not record a queue change, so nothing was started: {e}")));
                    continue;
                }
            };
            for effect in effects {
                if let Some(next) = self.run_effect(effect, &mut notices).await {
                    queue.push_back(next);
                }
            }
        }
        self.view.send_replace(Arc::new(self.state.clone()));
        if let Some(reply) = reply {
            let _ = reply.send(notices);
        }
    }

    fn notice(&self, printer: Option<String>, job: Option<JobId>, message: String) -> Notice {
        let n = Notice {
            at: self.clock.now(),
            printer,
            job,
            message,
        };
        let _ = self.notices.send(n.clone());
        n
    }

    /// Run one effect; returns an event to process next when the effect completed inline.
    async fn run_effect(&mut self, effect: Action, notices: &mut Vec<Notice>) -> Option<Event> {
        match effect {
            Action::Notify {
                printer,
                job,
                message,
            } => {
                tracing::info!(printer = ?printer, job = ?job, "{message}");
                notices.push(self.notice(printer, job, message));
                None
            }
            Action::RequestPushall { printer, .. } => {
                if let Some(link) = self.links.get(&printer).cloned() {
                    tokio::spawn(async move {
                        let _ = link.send(PrinterCommand::PushAll).await;
                    });
                }
                None
            }
            Action::Stage {
                job,
                printer,
                file_sha256,
                remote_name,
                ticket,
            } => {
                self.stage(job, printer, file_sha256, remote_name, ticket);
                None
            }
            Action::Publish {
                job,
                printer,
                subtask_id,
                remote_name,
                plate,
                name,
                file_sha256,
                epoch,
                deadline,
                mapping,
                ticket,
            } => {
                let outcome = self
                    .publish(PublishPlan {
                        printer,
                        subtask_id,
                        remote_name,
                        plate,
                        name,
                        file_sha256,
                        epoch,
                        deadline,
                        mapping,
                    })
                    .await;
                Some(Event::PublishResult {
                    job,
                    ticket,
                    outcome,
                })
            }
            other => {
                tracing::error!("dispatcher returned a non-effect as an effect: {other:?}");
                None
            }
        }
    }

    /// Upload in the background; the result comes back as an event.
    fn stage(
        &self,
        job: JobId,
        printer: String,
        sha: String,
        remote_name: String,
        ticket: EffectTicket,
    ) {
        let link = self.links.get(&printer).cloned();
        let path = self.files.path_of(&sha);
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let result = match (link, path) {
                (None, _) => Err(format!("printer {printer} is not configured")),
                (_, None) => Err("the job's file is no longer stored on the gateway".to_string()),
                (Some(link), Some(path)) => link
                    .upload(path, remote_name, None)
                    .await
                    .map_err(|e| e.to_string()),
            };
            let event = match result {
                Ok(()) => Event::StageComplete {
                    job,
                    printer,
                    ticket,
                },
                Err(reason) => Event::StageFailed {
                    job,
                    printer,
                    ticket,
                    reason,
                },
            };
            let _ = tx.send(Request::Internal(event)).await;
        });
    }

    /// The last checks at the instant of publishing (I3, I4), then one hand-over to the link.
    async fn publish(&self, plan: PublishPlan) -> PublishOutcome {
        let Some(link) = self.links.get(&plan.printer).cloned() else {
            return PublishOutcome::FailedBeforeSend(format!(
                "printer {} is not configured",
                plan.printer
            ));
        };
        let (instant, now) = self.clock.pair();
        if now >= plan.deadline {
            return PublishOutcome::FailedBeforeSend(
                "the start window passed before the start could be sent".into(),
            );
        }
        let snap = link.subscribe().borrow().clone();
        if !snap.link.is_online() || snap.connection_epoch != plan.epoch {
            return PublishOutcome::NotConnected;
        }
        let report = ReportSummary::from_snapshot(&snap, instant, now);
        if let Some(reason) = not_startable_now(&report, now, self.report_max_age_ms) {
            return PublishOutcome::FailedBeforeSend(reason);
        }
        if let Some(m) = &plan.mapping {
            let changed = match &report.trays {
                Some(trays) => m.changed_since(trays),
                None => Some("the printer no longer reports its filament slots".into()),
            };
            if let Some(changed) = changed {
                return PublishOutcome::FailedBeforeSend(format!(
                    "the filament changed after the start was decided: {changed}"
                ));
            }
        }
        let bed_type = self
            .files
            .info(&plan.file_sha256)
            .ok()
            .flatten()
            .and_then(|f| {
                f.info
                    .plates()
                    .iter()
                    .find(|p| p.index == plan.plate)
                    .and_then(|p| p.bed_type.clone())
            })
            .unwrap_or_else(|| "auto".to_string());
        let request = StartRequest {
            remote_name: plan.remote_name,
            plate: plan.plate,
            subtask_name: plan.name,
            subtask_id: plan.subtask_id,
            md5: String::new(),
            bed_type,
            // Exactly the committed mapping (I6); no mapping known = the external spool, as
            // before filament lists were read.
            use_ams: plan.mapping.as_ref().is_some_and(|m| m.use_ams),
            ams_mapping: plan
                .mapping
                .as_ref()
                .filter(|m| m.sends_mapping_fields())
                .map(|m| AmsMappingFields {
                    flat: m.ams_mapping(),
                    pairs: m.ams_mapping2(),
                }),
        };
        let budget = Duration::from_millis(plan.deadline.saturating_sub(now));
        match tokio::time::timeout(budget, link.send(PrinterCommand::Start(request))).await {
            Ok(Ok(CommandOutcome::Published { sequence_id })) => {
                PublishOutcome::Published { sequence_id }
            }
            Ok(Err(LinkError::Unsupported(why))) => PublishOutcome::FailedBeforeSend(why),
            Ok(Err(LinkError::NotConnected)) | Ok(Err(LinkError::Closed)) => {
                PublishOutcome::NotConnected
            }
            // Handed over, then the connection failed: the printer may have it. Outcome unknown
            // is treated as published (→ confirmed or unconfirmed, never resent).
            Ok(Err(LinkError::Other(reason))) => {
                tracing::warn!(printer = %plan.printer, "start outcome unknown: {reason}");
                PublishOutcome::Published {
                    sequence_id: String::new(),
                }
            }
            Err(_) => {
                tracing::warn!(printer = %plan.printer, "start hand-over did not finish inside the window; outcome unknown");
                PublishOutcome::Published {
                    sequence_id: String::new(),
                }
            }
        }
    }
}

struct PublishPlan {
    printer: String,
    subtask_id: u32,
    remote_name: String,
    plate: u32,
    name: String,
    file_sha256: String,
    epoch: u64,
    deadline: Millis,
    mapping: Option<Mapping>,
}

/// Why a printer must not receive a start at this instant (I4), or `None`.
pub fn not_startable_now(
    report: &ReportSummary,
    now: Millis,
    max_age_ms: Millis,
) -> Option<String> {
    let fresh = report
        .full_report_at
        .is_some_and(|at| now.saturating_sub(at) < max_age_ms);
    if !report.link_online {
        Some("the printer is offline".into())
    } else if !fresh {
        Some("the printer's last full report is too old".into())
    } else if !report.gcode_state.is_startable() {
        Some(format!(
            "the printer is {} (not idle)",
            report.gcode_state.as_str()
        ))
    } else if report.print_error != 0 {
        Some(format!(
            "the printer shows error {:04X}_{:04X}",
            report.print_error >> 16,
            report.print_error & 0xFFFF
        ))
    } else if report.blocking_hms {
        Some("the printer shows a serious health message".into())
    } else if report.control == crate::printer::ControlState::Refused {
        Some("the printer refuses commands (Developer Mode is off)".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::printer::GcodeState;

    fn ready(now: Millis) -> ReportSummary {
        ReportSummary {
            link_online: true,
            connection_epoch: 1,
            have_full_report: true,
            full_report_at: Some(now - 1_000),
            gcode_state: GcodeState::Idle,
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_idle_report_allows_a_start() {
        assert_eq!(not_startable_now(&ready(100_000), 100_000, 10_000), None);
    }

    #[test]
    fn every_i4_condition_blocks_a_start() {
        let now = 100_000;
        let mut stale = ready(now);
        stale.full_report_at = Some(now - 10_000);
        let mut busy = ready(now);
        busy.gcode_state = GcodeState::Running;
        let mut err = ready(now);
        err.print_error = 0x0500_4004;
        let mut hms = ready(now);
        hms.blocking_hms = true;
        let mut offline = ready(now);
        offline.link_online = false;
        let mut refused = ready(now);
        refused.control = crate::printer::ControlState::Refused;
        let mut none = ready(now);
        none.full_report_at = None;
        for r in [stale, busy, err, hms, offline, refused, none] {
            assert!(not_startable_now(&r, now, 10_000).is_some(), "{r:?}");
        }
    }
}
