//! The job model: what a print job is, the states it moves through and which moves are legal.
//! Pure data and pure functions; the store persists it and the dispatcher decides the moves.
//!
//! ```text
//! queued ─▶ staged ─▶ starting ─▶ printing ─▶ finished | failed
//!   │  ▲      │          │  │
//!   │  └──────┘          │  └─▶ unconfirmed ─▶ printing | failed | cancelled
//!   ▼                    ▼            └─(person: start again, needs a new tap)─▶ queued
//! cancelled | expired   failed
//! ```
//! `starting → queued` only while nothing has been published (I3); after a publish whose outcome
//! is unknown a job can only become `printing`, `failed` or `unconfirmed` (I2).

use super::ams_mapping::{Mapping, Need};
use super::plate::Tap;
pub use crate::printer::model::{
    MAX_SUBTASK_ID, gcode_remote_name_for, remote_name_for, subtask_id_in_remote_name,
};
use serde::Serialize;

/// Milliseconds on the dispatcher's clock: Unix-epoch milliseconds as seen through a clock that
/// never goes backwards (the effect runner clamps it and keeps the largest value seen, also across
/// restarts). Only the caller reads the clock; the decision core is given `now`.
pub type Millis = u64;

/// Primary key of a job row.
pub type JobId = i64;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting in the queue (possibly being uploaded to its assigned printer).
    Queued,
    /// The file is on the assigned printer; waiting for a plate-clear tap.
    Staged,
    /// A tap was consumed for this job; the start command is being (or was) published.
    Starting,
    /// The printer confirmed the job (active state with our id or file).
    Printing,
    Finished,
    Failed,
    Cancelled,
    /// A start was (maybe) sent but never confirmed; a person must look at the printer.
    Unconfirmed,
    /// The job's deadline passed before it could start.
    Expired,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        JobState::Queued,
        JobState::Staged,
        JobState::Starting,
        JobState::Printing,
        JobState::Finished,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Unconfirmed,
        JobState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Staged => "staged",
            JobState::Starting => "starting",
            JobState::Printing => "printing",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Unconfirmed => "unconfirmed",
            JobState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No automatic move leaves this state (a person may still "start again" a failed/expired job).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Cancelled | JobState::Expired
        )
    }

    /// Still waiting to be started: the dispatcher may stage, reorder, cancel or expire it.
    pub fn is_pre_start(self) -> bool {
        matches!(self, JobState::Queued | JobState::Staged)
    }

    /// The job holds its printer: nothing else is dispatched there until it leaves this state.
    pub fn holds_printer(self) -> bool {
        matches!(
            self,
            JobState::Starting | JobState::Printing | JobState::Unconfirmed
        )
    }

    /// A person may ask for this job to be started again (needs a new plate-clear tap).
    pub fn can_start_again(self) -> bool {
        matches!(
            self,
            JobState::Unconfirmed | JobState::Failed | JobState::Expired
        )
    }

    /// The legal transitions. `Queued → Queued` (re-assignment) is not a transition.
    pub fn can_transition_to(self, to: JobState) -> bool {
        use JobState::*;
        match self {
            Queued => matches!(to, Staged | Starting | Cancelled | Expired | Failed),
            Staged => matches!(to, Queued | Starting | Cancelled | Expired),
            // Starting → Queued/Cancelled only while nothing was published (checked by the caller).
            Starting => matches!(to, Queued | Printing | Failed | Unconfirmed | Cancelled),
            Printing => matches!(to, Finished | Failed),
            Unconfirmed => matches!(to, Printing | Failed | Cancelled | Queued),
            Failed | Expired => matches!(to, Queued),
            Finished | Cancelled => false,
        }
    }
}

/// Which printer a job is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "printer", rename_all = "snake_case")]
pub enum Target {
    /// Exactly this printer (by configured name).
    Printer(String),
    /// The first clear, ready printer whose model code equals the job's `model_code`.
    AnyCompatible,
}

/// The record of one start attempt of a job (a consumed tap and what followed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartAttempt {
    /// The plate-clear tap this attempt consumed.
    pub tap: Tap,
    pub decided_at: Millis,
    /// `decided_at + start_window`: no publish at or after this instant (I3).
    pub window_deadline: Millis,
    /// Set (and committed) right before the publish side effect runs (I6).
    pub publish_attempted_at: Option<Millis>,
    /// Connection epoch the publish was requested on.
    pub publish_epoch: Option<u64>,
    /// The link confirmed it handed the command to a live connection with this `sequence_id`.
    pub sequence_id: Option<String>,
    pub published_at: Option<Millis>,
    /// In memory only: our subtask id was echoed while the printer was still idle (phase B).
    pub id_echoed_at: Option<Millis>,
    /// The trays this start uses, decided and committed with it and sent exactly so (I6);
    /// `None` = no filament list known for the job (sent as `use_ams: false`, no mapping).
    pub mapping: Option<Mapping>,
}

impl StartAttempt {
    /// A publish was attempted: from here on the outcome may be unknown (I2).
    pub fn publish_attempted(&self) -> bool {
        self.publish_attempted_at.is_some()
    }
}

/// One print job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    pub id: JobId,
    /// Unique per submitted request; a retried submission returns the same job (I7).
    pub idempotency_key: String,
    pub target: Target,
    /// `printer_model_id` the file was sliced for (e.g. `C12`).
    pub model_code: String,
    /// Content hash of the stored file (files table; no foreign key).
    pub file_sha256: String,
    /// 1-based plate index inside the 3MF.
    pub plate: u32,
    /// Shown on the printer screen (`subtask_name`).
    pub name: String,
    /// Queue order (smaller first).
    pub position: i64,
    /// Must start before this instant, else `expired`.
    pub deadline: Option<Millis>,
    pub created_by: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub state: JobState,
    /// Printer the job is staged/started on.
    pub assigned_printer: Option<String>,
    /// The id sent as project/task/subtask id, unique, 1..=2^31-1; a new one per "start again".
    pub subtask_id: u32,
    /// Failed uploads so far (bounded retries, I8).
    pub stage_failures: u32,
    /// Set by "start again": only a tap recorded after this instant may start the job.
    pub start_again_at: Option<Millis>,
    pub start: Option<StartAttempt>,
    /// Why the job failed / was returned / how it ended, for people.
    pub message: Option<String>,
    /// The filaments its plate needs, from the 3MF at upload (`job_filaments`); `None` = not
    /// known (plain G-code, a job queued before filament lists were read).
    pub filaments: Option<Vec<Need>>,
}

impl Job {
    /// Remote file name on the printer's storage (ASCII; changes with the subtask id).
    pub fn remote_name(&self) -> String {
        if self.model_code == crate::printer::Model::Klipper.model_code() {
            gcode_remote_name_for(self.subtask_id)
        } else {
            remote_name_for(self.subtask_id)
        }
    }

    /// Whether this job may run on a printer with this name and model code.
    pub fn fits(&self, printer: &str, model_code: &str) -> bool {
        match &self.target {
            Target::Printer(p) => p == printer && self.model_code == model_code,
            Target::AnyCompatible => self.model_code == model_code,
        }
    }

    pub fn deadline_passed(&self, now: Millis) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }
}

/// A job as submitted (web form, API, slicer upload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub idempotency_key: String,
    pub target: Target,
    pub model_code: String,
    pub file_sha256: String,
    pub plate: u32,
    pub name: String,
    pub deadline: Option<Millis>,
    pub created_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("nope"), None);
    }

    #[test]
    fn finished_and_cancelled_are_final() {
        for to in JobState::ALL {
            assert!(!JobState::Finished.can_transition_to(to));
            assert!(!JobState::Cancelled.can_transition_to(to));
        }
    }

    #[test]
    fn printing_never_goes_back_to_the_queue() {
        assert!(!JobState::Printing.can_transition_to(JobState::Queued));
        assert!(!JobState::Printing.can_transition_to(JobState::Starting));
        assert!(JobState::Starting.can_transition_to(JobState::Unconfirmed));
    }
}
