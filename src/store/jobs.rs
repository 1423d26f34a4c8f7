//! Job queue persistence: job rows, plate-clear taps, plate state, queue pause flags and job event
//! rows (migration `003_jobs.sql`). Every dispatcher [`Action`] of kind `Database` is applied
//! here, atomically ([`Store::apply_dispatch_action`] alone, [`Store::commit_batch`] as a savepoint
//! of its batch's one transaction); the guards in the `WHERE` clauses
//! repeat the dispatcher's rules so that SQLite is the last line of defence (a tap is consumed by
//! exactly one start, a published job never returns to the queue).

use super::{Store, StoreError};
use crate::jobs::ams_mapping::{Mapping, Need};
use crate::jobs::dispatcher::{
    Action, ActionKind, DispatchState, DispatchTimings, PrinterRuntime, RECENT_TAPS,
    start_again_message,
};
use crate::jobs::filament::FilamentRequirement;
use crate::jobs::model::{
    Job, JobId, JobState, MAX_SUBTASK_ID, Millis, NewJob, StartAttempt, Target,
};
use crate::jobs::plate::{PlateState, Tap};
use rusqlite::{OptionalExtension, Row, Transaction, params};

/// Why [`Store::start_job_tx`] refused to consume a tap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartConflict {
    #[error("the plate-clear tap {0} is not known")]
    TapUnknown(String),
    #[error("the plate-clear tap belongs to printer {0}")]
    TapWrongPrinter(String),
    #[error("the plate-clear tap was already used to start job {0}")]
    TapConsumed(JobId),
    #[error("the plate-clear tap was voided ({0}); tap again")]
    TapVoided(String),
    #[error("the plate-clear tap expired; tap again")]
    TapExpired,
    #[error("the plate is not clear on the printer (tap again)")]
    PlateNotClear,
    #[error("the tap is older than the job's start-again request; tap again")]
    TapTooOld,
    #[error("job {0} does not exist")]
    JobUnknown(JobId),
    #[error("job is {0} and cannot be started")]
    JobNotStartable(String),
    #[error("job is assigned to printer {0}")]
    JobOnOtherPrinter(String),
    #[error("database error: {0}")]
    Db(String),
}

impl From<rusqlite::Error> for StartConflict {
    fn from(e: rusqlite::Error) -> Self {
        StartConflict::Db(e.to_string())
    }
}

/// A database action that could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchDbError {
    #[error("start refused: {0}")]
    Start(#[from] StartConflict),
    #[error("job {job}: {action} not allowed in its current state")]
    Illegal { job: JobId, action: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for DispatchDbError {
    fn from(e: rusqlite::Error) -> Self {
        DispatchDbError::Store(StoreError::Sqlite(e))
    }
}

/// A batch stopped at a database action; nothing after it (no effect) was run.
#[derive(Debug, thiserror::Error)]
#[error("dispatcher batch stopped at action {index}: {error}")]
pub struct BatchError {
    pub index: usize,
    pub error: DispatchDbError,
}

/// One row of `job_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEventRow {
    pub job_id: Option<JobId>,
    pub printer: Option<String>,
    pub at: Millis,
    pub actor: String,
    pub what: String,
    pub outcome: Option<String>,
}

/// What [`Store::recover_after_restart`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Jobs found `starting`, now `unconfirmed`.
    pub unconfirmed: Vec<JobId>,
    /// Unconsumed taps voided (a tap from before the boot does not vouch for the plate).
    pub voided_taps: usize,
}

const JOB_COLUMNS: &str = "j.id, j.idempotency_key, j.target_printer, j.model_code, j.file_sha256, \
    j.plate, j.name, j.position, j.deadline_ms, j.created_by, j.created_at_ms, j.updated_at_ms, \
    j.state, j.assigned_printer, j.subtask_id, j.stage_failures, j.start_again_at_ms, j.tap_id, \
    j.decided_at_ms, j.window_deadline_ms, j.publish_attempted_at_ms, j.publish_epoch, \
    j.sequence_id, j.published_at_ms, j.message, t.tapped_by, t.tapped_at_ms, m.mapping_json, \
    f.filaments_json";

/// state, tap id, tapped by, tapped at.
type PlateRow = (String, Option<String>, Option<String>, Option<i64>);

const JOB_FROM: &str = "FROM jobs j LEFT JOIN plate_taps t ON t.tap_id = j.tap_id \
    LEFT JOIN job_filaments f ON f.job_id = j.id LEFT JOIN job_start_mappings m ON m.job_id = j.id";

fn ms(v: Option<i64>) -> Option<Millis> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn sql_ms(v: Millis) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    let state_text: String = r.get(12)?;
    let state = JobState::parse(&state_text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            12,
            rusqlite::types::Type::Text,
            format!("unknown job state {state_text:?}").into(),
        )
    })?;
    let target_printer: Option<String> = r.get(2)?;
    let tap_id: Option<String> = r.get(17)?;
    let decided_at = ms(r.get(18)?);
    let start = match (tap_id, decided_at, state) {
        (
            Some(tap_id),
            Some(decided_at),
            JobState::Starting
            | JobState::Printing
            | JobState::Unconfirmed
            | JobState::Finished
            | JobState::Failed,
        ) => Some(StartAttempt {
            tap: Tap {
                tap_id,
                by: r.get::<_, Option<String>>(25)?.unwrap_or_default(),
                at: ms(r.get(26)?).unwrap_or_default(),
            },
            decided_at,
            window_deadline: ms(r.get(19)?).unwrap_or(decided_at),
            publish_attempted_at: ms(r.get(20)?),
            publish_epoch: ms(r.get(21)?),
            sequence_id: r.get(22)?,
            published_at: ms(r.get(23)?),
            id_echoed_at: None,
            // A mapping this build cannot read is treated as none: the start it belonged to is
            // over or unconfirmed (recovery) by the time a newer format could appear.
            mapping: r
                .get::<_, Option<String>>(27)?
                .and_then(|json| serde_json::from_str(&json).ok()),
        }),
        _ => None,
    };
    Ok(Job {
        id: r.get(0)?,
        idempotency_key: r.get(1)?,
        target: target_printer.map_or(Target::AnyCompatible, Target::Printer),
        model_code: r.get(3)?,
        file_sha256: r.get(4)?,
        plate: r.get(5)?,
        name: r.get(6)?,
        position: r.get(7)?,
        deadline: ms(r.get(8)?),
        created_by: r.get(9)?,
        created_at: ms(r.get(10)?).unwrap_or_default(),
        updated_at: ms(r.get(11)?).unwrap_or_default(),
        state,
        assigned_printer: r.get(13)?,
        subtask_id: r.get(14)?,
        stage_failures: r.get(15)?,
        start_again_at: ms(r.get(16)?),
        start,
        message: r.get(24)?,
        filaments: r
            .get::<_, Option<String>>(28)?
            .and_then(|json| serde_json::from_str::<Vec<FilamentRequirement>>(&json).ok())
            .map(|list| list.iter().map(Need::from).collect()),
    })
}

fn event_row(
    tx: &Transaction<'_>,
    job: Option<JobId>,
    printer: Option<&str>,
    at: Millis,
    actor: &str,
    what: &str,
    outcome: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO job_events (job_id, printer, at_ms, actor, what, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![job, printer, sql_ms(at), actor, what, outcome],
    )?;
    Ok(())
}

fn job_printer(tx: &Transaction<'_>, job: JobId) -> rusqlite::Result<Option<String>> {
    Ok(tx
        .query_row(
            "SELECT assigned_printer FROM jobs WHERE id = ?1",
            [job],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

fn set_plate(
    tx: &Transaction<'_>,
    printer: &str,
    state: &str,
    tap_id: Option<&str>,
    at: Millis,
    reason: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO plates (printer, state, tap_id, changed_at_ms, reason) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(printer) DO UPDATE SET state = excluded.state, tap_id = excluded.tap_id,
             changed_at_ms = excluded.changed_at_ms, reason = excluded.reason",
        params![printer, state, tap_id, sql_ms(at), reason],
    )?;
    Ok(())
}

fn void_open_taps(
    tx: &Transaction<'_>,
    printer: &str,
    at: Millis,
    reason: &str,
) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE plate_taps SET voided_at_ms = ?2, void_reason = ?3
         WHERE printer = ?1 AND consumed_by_job IS NULL AND voided_at_ms IS NULL",
        params![printer, sql_ms(at), reason],
    )
}

/// Give a consumed tap back to its printer (a start that sent nothing).
fn restore_tap(tx: &Transaction<'_>, job: JobId, at: Millis) -> rusqlite::Result<()> {
    let row: Option<(String, String)> = tx
        .query_row(
            "SELECT t.tap_id, t.printer FROM jobs j JOIN plate_taps t ON t.tap_id = j.tap_id
             WHERE j.id = ?1 AND t.consumed_by_job = ?1",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((tap_id, printer)) = row {
        tx.execute(
            "UPDATE plate_taps SET consumed_by_job = NULL, consumed_at_ms = NULL WHERE tap_id = ?1",
            [&tap_id],
        )?;
        set_plate(
            tx,
            &printer,
            "clear",
            Some(&tap_id),
            at,
            Some("tap restored: nothing was sent"),
        )?;
    }
    Ok(())
}

const CLEAR_ATTEMPT: &str = "tap_id = NULL, decided_at_ms = NULL, window_deadline_ms = NULL, \
    publish_attempted_at_ms = NULL, publish_epoch = NULL, sequence_id = NULL, published_at_ms = NULL";

impl Store {
    /// Create a job, or return the existing one with the same idempotency key (`false`) (I7).
    pub fn create_job(&self, new: &NewJob, now: Millis) -> Result<(Job, bool), StoreError> {
        self.create_job_with_filaments(new, None, now)
    }

    /// [`Store::create_job`] that also records, in the same transaction, the filaments the
    /// job's plate needs (table `job_filaments`: a JSON array written by `jobs::filament`;
    /// `None` = not read). An existing job keeps what it has.
    pub fn create_job_with_filaments(
        &self,
        new: &NewJob,
        filaments_json: Option<&str>,
        now: Millis,
    ) -> Result<(Job, bool), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existing: Option<JobId> = tx
            .query_row(
                "SELECT id FROM jobs WHERE idempotency_key = ?1",
                [&new.idempotency_key],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            let job = load_job(&tx, id)?
                .ok_or_else(|| StoreError::Other(format!("job {id} vanished")))?;
            return Ok((job, false));
        }
        let subtask_id = allocate_subtask_id_tx(&tx, now)?;
        let position: i64 =
            tx.query_row("SELECT COALESCE(MAX(position), 0) + 1 FROM jobs", [], |r| {
                r.get(0)
            })?;
        let target = match &new.target {
            Target::Printer(p) => Some(p.as_str()),
            Target::AnyCompatible => None,
        };
        tx.execute(
            "INSERT INTO jobs (idempotency_key, target_printer, model_code, file_sha256, plate, name,
                 position, deadline_ms, created_by, created_at_ms, updated_at_ms, state, subtask_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, 'queued', ?11)",
            params![
                new.idempotency_key,
                target,
                new.model_code,
                new.file_sha256,
                new.plate,
                new.name,
                position,
                new.deadline.map(sql_ms),
                new.created_by,
                sql_ms(now),
                subtask_id
            ],
        )?;
        let id = tx.last_insert_rowid();
        if let Some(json) = filaments_json {
            tx.execute(
                "INSERT INTO job_filaments (job_id, filaments_json) VALUES (?1, ?2)",
                params![id, json],
            )?;
        }
        event_row(&tx, Some(id), target, now, &new.created_by, "queued", None)?;
        let job =
            load_job(&tx, id)?.ok_or_else(|| StoreError::Other(format!("job {id} vanished")))?;
        tx.commit()?;
        Ok((job, true))
    }

    /// The recorded filament lists (`job_filaments`) of these jobs; jobs without one are
    /// absent from the answer.
    pub fn job_filaments(
        &self,
        ids: &[JobId],
    ) -> Result<std::collections::HashMap<JobId, String>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT filaments_json FROM job_filaments WHERE job_id = ?1")?;
        let mut out = std::collections::HashMap::new();
        for id in ids {
            if let Some(json) = stmt.query_row([id], |r| r.get::<_, String>(0)).optional()? {
                out.insert(*id, json);
            }
        }
        Ok(out)
    }

    /// A fresh subtask id (1..=2^31-1, never used by another job) for "start again".
    pub fn allocate_subtask_id(&self, now: Millis) -> Result<u32, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let id = allocate_subtask_id_tx(&tx, now)?;
        tx.commit()?;
        Ok(id)
    }

    /// One job row.
    pub fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        Ok(load_job(&tx, id)?)
    }

    /// Jobs in these states, in queue order.
    pub fn jobs_in_states(&self, states: &[JobState]) -> Result<Vec<Job>, StoreError> {
        let conn = self.conn();
        let list = states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.state IN ({list}) ORDER BY j.position, j.id"
        ))?;
        let rows = stmt.query_map([], job_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The job most recently started on `printer` (printing or ended), if any: its plate
    /// thumbnail tells people which object to take off.
    pub fn last_started_job_on(&self, printer: &str) -> Result<Option<Job>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.assigned_printer = ?1
                     AND j.state IN ('printing','finished','failed','unconfirmed')
                     ORDER BY j.updated_at_ms DESC, j.id DESC LIMIT 1"
                ),
                [printer],
                job_from_row,
            )
            .optional()?)
    }

    /// The event rows of one job, oldest first.
    pub fn job_events(&self, job: JobId) -> Result<Vec<JobEventRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT job_id, printer, at_ms, actor, what, outcome FROM job_events WHERE job_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([job], |r| {
            Ok(JobEventRow {
                job_id: r.get(0)?,
                printer: r.get(1)?,
                at: ms(r.get(2)?).unwrap_or_default(),
                actor: r.get(3)?,
                what: r.get(4)?,
                outcome: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The job that consumed this tap, if any.
    pub fn tap_consumer(&self, tap_id: &str) -> Result<Option<JobId>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT consumed_by_job FROM plate_taps WHERE tap_id = ?1",
                [tap_id],
                |r| r.get::<_, Option<JobId>>(0),
            )
            .optional()?
            .flatten())
    }

    /// In ONE transaction: check the tap is this printer's current, unconsumed, unexpired tap,
    /// consume it and move the job queued/staged → starting. A second call for the same tap fails.
    #[allow(clippy::too_many_arguments)]
    pub fn start_job_tx(
        &self,
        job: JobId,
        printer: &str,
        tap_id: &str,
        now: Millis,
        plate_clear_ttl_ms: Millis,
        window_deadline: Millis,
    ) -> Result<(), StartConflict> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        start_job_in(
            &tx,
            job,
            printer,
            tap_id,
            now,
            plate_clear_ttl_ms,
            window_deadline,
            None,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// At boot: every `starting` job becomes `unconfirmed` (I2, I6) and every unconsumed tap is
    /// voided (a tap from before the boot does not vouch for the plate, I1).
    pub fn recover_after_restart(&self, now: Millis) -> Result<Recovery, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids: Vec<(JobId, Option<String>)> = {
            let mut stmt = tx.prepare(
                "SELECT id, assigned_printer FROM jobs WHERE state = 'starting' ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let reason = "the gateway restarted while this job was starting; check the printer, then cancel or start again";
        for (id, printer) in &ids {
            tx.execute(
                "UPDATE jobs SET state = 'unconfirmed', message = ?2, updated_at_ms = ?3 WHERE id = ?1",
                params![id, reason, sql_ms(now)],
            )?;
            event_row(
                &tx,
                Some(*id),
                printer.as_deref(),
                now,
                "gateway",
                "unconfirmed",
                Some(reason),
            )?;
        }
        let voided = tx.execute(
            "UPDATE plate_taps SET voided_at_ms = ?1, void_reason = 'gateway restarted'
             WHERE consumed_by_job IS NULL AND voided_at_ms IS NULL",
            [sql_ms(now)],
        )?;
        tx.execute(
            "UPDATE plates SET state = 'unknown', tap_id = NULL, changed_at_ms = ?1,
                 reason = 'gateway restarted; tap Plate clear again' WHERE state = 'clear'",
            [sql_ms(now)],
        )?;
        tx.commit()?;
        Ok(Recovery {
            unconfirmed: ids.into_iter().map(|(id, _)| id).collect(),
            voided_taps: voided,
        })
    }

    /// Build the dispatcher's state from the database. `printers` are (name, model code) of the
    /// configured printers; `safety_tripped` comes from the safety latch.
    pub fn load_dispatch_state(
        &self,
        timings: DispatchTimings,
        printers: &[(String, String)],
        safety_tripped: bool,
    ) -> Result<DispatchState, StoreError> {
        let mut state = DispatchState::new(timings);
        state.safety_tripped = safety_tripped;
        for (name, model) in printers {
            state
                .printers
                .insert(name.clone(), PrinterRuntime::new(name, model));
        }
        self.reload_persisted(&mut state)?;
        Ok(state)
    }

    /// Refresh the persisted parts of `state` (jobs, plates, pause flags) from the database and
    /// keep its in-memory observations (reports, link state).
    pub fn reload_persisted(&self, state: &mut DispatchState) -> Result<(), StoreError> {
        let jobs = self.jobs_in_states(&[
            JobState::Queued,
            JobState::Staged,
            JobState::Starting,
            JobState::Printing,
            JobState::Unconfirmed,
        ])?;
        let conn = self.conn();
        state.queue_paused = conn
            .query_row("SELECT paused FROM queue_flags WHERE scope = ''", [], |r| {
                r.get::<_, bool>(0)
            })
            .optional()?
            .unwrap_or(false);
        for p in state.printers.values_mut() {
            p.paused = conn
                .query_row(
                    "SELECT paused FROM queue_flags WHERE scope = ?1",
                    [&p.name],
                    |r| r.get::<_, bool>(0),
                )
                .optional()?
                .unwrap_or(false);
            let plate: Option<PlateRow> = conn
                .query_row(
                    "SELECT p.state, p.tap_id, t.tapped_by, t.tapped_at_ms FROM plates p
                     LEFT JOIN plate_taps t ON t.tap_id = p.tap_id WHERE p.printer = ?1",
                    [&p.name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let mut stmt = conn.prepare(
                "SELECT tap_id FROM (SELECT tap_id, tapped_at_ms, rowid AS r FROM plate_taps WHERE printer = ?1
                     ORDER BY tapped_at_ms DESC, r DESC LIMIT ?2) ORDER BY tapped_at_ms, r",
            )?;
            let recent = stmt.query_map(params![p.name, RECENT_TAPS as i64], |r| r.get(0))?;
            p.recent_tap_ids = recent.collect::<Result<_, _>>()?;
            drop(stmt);
            p.plate = match plate {
                Some((s, Some(tap_id), Some(by), Some(at))) if s == "clear" => {
                    PlateState::Clear(Tap {
                        tap_id,
                        by,
                        at: ms(Some(at)).unwrap_or_default(),
                    })
                }
                Some((s, ..)) if s == "occupied" => PlateState::Occupied,
                _ => PlateState::Unknown,
            };
        }
        drop(conn);
        let echoes: Vec<(JobId, Millis)> = state
            .jobs
            .values()
            .filter_map(|j| Some((j.id, j.start.as_ref()?.id_echoed_at?)))
            .collect();
        state.jobs = jobs.into_iter().map(|j| (j.id, j)).collect();
        for (id, at) in echoes {
            if let Some(a) = state.jobs.get_mut(&id).and_then(|j| j.start.as_mut()) {
                a.id_echoed_at = Some(at);
            }
        }
        state.retain_tracked();
        Ok(())
    }

    /// Commit one `Database` action of the dispatcher in one transaction (with its event row).
    /// `Memory` and `Effect` actions are ignored here.
    pub fn apply_dispatch_action(
        &self,
        action: &Action,
        timings: &DispatchTimings,
    ) -> Result<(), DispatchDbError> {
        if action.kind() != ActionKind::Database {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        apply_in(&tx, action, timings)?;
        tx.commit()?;
        Ok(())
    }

    /// Run the database part of one [`crate::jobs::dispatcher::decide`] batch: apply each
    /// `Database` action and mirror it (and every `Memory` action) into `state`, in order, and
    /// return the `Effect` actions to run.
    ///
    /// All `Database` actions of the batch share ONE transaction (one fsync: a tap, its
    /// consumption by the start and the publish mark are one commit) and the commit happens
    /// before this returns, so before any effect runs (I6). Each action runs in its own
    /// savepoint, so a batch behaves exactly as if every action were committed on its own: on
    /// the first refused action, that action's partial writes are rolled back, the actions
    /// before it are committed, the rest of the batch is dropped (no effect runs), the state is
    /// reloaded from the database and the error returned. If the commit itself fails, nothing of
    /// the batch is stored and the error names the first database action.
    pub fn commit_batch(
        &self,
        state: &mut DispatchState,
        actions: Vec<Action>,
    ) -> Result<Vec<Action>, BatchError> {
        let first_db = actions
            .iter()
            .position(|a| a.kind() == ActionKind::Database);
        let Some(first_db) = first_db else {
            // Nothing to store: no transaction, no fsync.
            let mut effects = Vec::new();
            for action in actions {
                state.apply(&action);
                if action.kind() == ActionKind::Effect {
                    effects.push(action);
                }
            }
            return Ok(effects);
        };
        let result = {
            let mut conn = self.conn();
            apply_batch_in(&mut conn, state, actions, first_db)
        };
        match result {
            Ok(effects) => Ok(effects),
            Err(BatchError { index, error }) => {
                let error = match self.reload_persisted(state) {
                    Ok(()) => error,
                    Err(e) => DispatchDbError::Store(e),
                };
                Err(BatchError { index, error })
            }
        }
    }
}

/// [`Store::commit_batch`] under the connection lock: one transaction, one savepoint per action.
fn apply_batch_in(
    conn: &mut rusqlite::Connection,
    state: &mut DispatchState,
    actions: Vec<Action>,
    first_db: usize,
) -> Result<Vec<Action>, BatchError> {
    let at_first = |error: DispatchDbError| BatchError {
        index: first_db,
        error,
    };
    let tx = conn
        .transaction()
        .map_err(|e| at_first(DispatchDbError::from(e)))?;
    let mut effects = Vec::new();
    let mut refused = None;
    for (index, action) in actions.into_iter().enumerate() {
        match action.kind() {
            ActionKind::Memory => state.apply(&action),
            ActionKind::Database => {
                let applied = tx
                    .execute_batch("SAVEPOINT dispatch_action")
                    .map_err(DispatchDbError::from)
                    .and_then(|()| apply_in(&tx, &action, &state.timings));
                let settled = match &applied {
                    Ok(()) => tx.execute_batch("RELEASE dispatch_action"),
                    Err(_) => {
                        tx.execute_batch("ROLLBACK TO dispatch_action; RELEASE dispatch_action")
                    }
                };
                match (applied, settled) {
                    (Ok(()), Ok(())) => state.apply(&action),
                    (Err(error), _) => {
                        refused = Some(BatchError { index, error });
                        break;
                    }
                    (Ok(()), Err(e)) => {
                        // The savepoint could not be closed: store nothing of the batch.
                        drop(tx);
                        return Err(at_first(e.into()));
                    }
                }
            }
            ActionKind::Effect => {
                state.apply(&action);
                effects.push(action);
            }
        }
    }
    // The actions before a refused one are kept, as if each had been committed on its own.
    tx.commit().map_err(|e| at_first(e.into()))?;
    match refused {
        Some(e) => Err(e),
        None => Ok(effects),
    }
}

fn load_job(tx: &Transaction<'_>, id: JobId) -> rusqlite::Result<Option<Job>> {
    tx.query_row(
        &format!("SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.id = ?1"),
        [id],
        job_from_row,
    )
    .optional()
}

fn allocate_subtask_id_tx(tx: &Transaction<'_>, now: Millis) -> rusqlite::Result<u32> {
    // Start somewhere that depends on the creation time, so a fresh database does not reuse the
    // ids an old one sent to the same printers.
    let seed = i64::try_from((now / 1000) % 1_000_000_000).unwrap_or(0) + 1;
    tx.execute(
        "INSERT INTO id_counters (name, next_value) VALUES ('subtask_id', ?1) ON CONFLICT(name) DO NOTHING",
        [seed],
    )?;
    let max = i64::from(MAX_SUBTASK_ID);
    for _ in 0..1000 {
        let id: i64 = tx.query_row(
            "SELECT next_value FROM id_counters WHERE name = 'subtask_id'",
            [],
            |r| r.get(0),
        )?;
        let id = if (1..=max).contains(&id) { id } else { 1 };
        let next = if id >= max { 1 } else { id + 1 };
        tx.execute(
            "UPDATE id_counters SET next_value = ?1 WHERE name = 'subtask_id'",
            [next],
        )?;
        let used: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM jobs WHERE subtask_id = ?1)",
            [id],
            |r| r.get(0),
        )?;
        if !used {
            return u32::try_from(id).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, id));
        }
    }
    Err(rusqlite::Error::QueryReturnedNoRows)
}

#[allow(clippy::too_many_arguments)]
fn start_job_in(
    tx: &Transaction<'_>,
    job: JobId,
    printer: &str,
    tap_id: &str,
    now: Millis,
    ttl_ms: Millis,
    window_deadline: Millis,
    mapping: Option<&Mapping>,
) -> Result<(), StartConflict> {
    type TapRow = (String, Option<JobId>, Option<i64>, Option<String>, i64);
    let tap: Option<TapRow> = tx
        .query_row(
            "SELECT printer, consumed_by_job, voided_at_ms, void_reason, tapped_at_ms FROM plate_taps WHERE tap_id = ?1",
            [tap_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((tap_printer, consumed, voided, void_reason, tapped_at)) = tap else {
        return Err(StartConflict::TapUnknown(tap_id.to_string()));
    };
    let tapped_at = ms(Some(tapped_at)).unwrap_or_default();
    if tap_printer != printer {
        return Err(StartConflict::TapWrongPrinter(tap_printer));
    }
    if let Some(other) = consumed {
        return Err(StartConflict::TapConsumed(other));
    }
    if voided.is_some() {
        return Err(StartConflict::TapVoided(void_reason.unwrap_or_default()));
    }
    if now >= tapped_at.saturating_add(ttl_ms) {
        return Err(StartConflict::TapExpired);
    }
    let plate_tap: Option<Option<String>> = tx
        .query_row(
            "SELECT tap_id FROM plates WHERE printer = ?1 AND state = 'clear'",
            [printer],
            |r| r.get(0),
        )
        .optional()?;
    if plate_tap.flatten().as_deref() != Some(tap_id) {
        return Err(StartConflict::PlateNotClear);
    }
    let row: Option<(String, Option<String>, Option<i64>)> = tx
        .query_row(
            "SELECT state, assigned_printer, start_again_at_ms FROM jobs WHERE id = ?1",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((state, assigned, start_again_at)) = row else {
        return Err(StartConflict::JobUnknown(job));
    };
    if state != "queued" && state != "staged" {
        return Err(StartConflict::JobNotStartable(state));
    }
    if let Some(a) = assigned
        && a != printer
    {
        return Err(StartConflict::JobOnOtherPrinter(a));
    }
    if ms(start_again_at).is_some_and(|t| tapped_at <= t) {
        return Err(StartConflict::TapTooOld);
    }
    tx.execute(
        "UPDATE plate_taps SET consumed_by_job = ?2, consumed_at_ms = ?3 WHERE tap_id = ?1 AND consumed_by_job IS NULL",
        params![tap_id, job, sql_ms(now)],
    )?;
    set_plate(
        tx,
        printer,
        "occupied",
        None,
        now,
        Some("reserved by a starting job"),
    )?;
    let mapping_json = mapping
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StartConflict::Db(format!("the tray mapping cannot be stored: {e}")))?;
    tx.execute(
        "UPDATE jobs SET state = 'starting', assigned_printer = ?2, tap_id = ?3, decided_at_ms = ?4,
             window_deadline_ms = ?5, publish_attempted_at_ms = NULL, publish_epoch = NULL,
             sequence_id = NULL, published_at_ms = NULL, message = NULL, updated_at_ms = ?4
         WHERE id = ?1",
        params![job, printer, tap_id, sql_ms(now), sql_ms(window_deadline)],
    )?;
    // The row belongs to this attempt only: an earlier attempt's mapping never survives it.
    tx.execute("DELETE FROM job_start_mappings WHERE job_id = ?1", [job])?;
    if let Some(json) = mapping_json {
        tx.execute(
            "INSERT INTO job_start_mappings (job_id, mapping_json) VALUES (?1, ?2)",
            params![job, json],
        )?;
    }
    let outcome = match mapping {
        Some(m) => format!(
            "consumed plate-clear tap {tap_id}; filament: {}",
            m.describe()
        ),
        None => format!("consumed plate-clear tap {tap_id}"),
    };
    event_row(
        tx,
        Some(job),
        Some(printer),
        now,
        "dispatcher",
        "starting",
        Some(&outcome),
    )?;
    Ok(())
}

/// Run one guarded job update; exactly one row must change.
fn guarded(
    tx: &Transaction<'_>,
    job: JobId,
    action: &'static str,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<(), DispatchDbError> {
    let n = tx.execute(sql, params)?;
    if n == 1 {
        Ok(())
    } else {
        Err(DispatchDbError::Illegal { job, action })
    }
}

fn apply_in(
    tx: &Transaction<'_>,
    action: &Action,
    timings: &DispatchTimings,
) -> Result<(), DispatchDbError> {
    use Action::*;
    let dispatcher = "dispatcher";
    match action {
        RecordTap { printer, tap } => {
            void_open_taps(tx, printer, tap.at, "superseded by a newer tap")?;
            tx.execute(
                "INSERT INTO plate_taps (tap_id, printer, tapped_by, tapped_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![tap.tap_id, printer, tap.by, sql_ms(tap.at)],
            )?;
            set_plate(tx, printer, "clear", Some(&tap.tap_id), tap.at, None)?;
            event_row(
                tx,
                None,
                Some(printer),
                tap.at,
                &tap.by,
                "plate clear",
                Some(&tap.tap_id),
            )?;
        }
        RejectTap {
            printer,
            tap,
            reason,
        } => {
            tx.execute(
                "INSERT INTO plate_taps (tap_id, printer, tapped_by, tapped_at_ms, voided_at_ms, void_reason)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                params![tap.tap_id, printer, tap.by, sql_ms(tap.at), format!("not accepted: {reason}")],
            )?;
            event_row(
                tx,
                None,
                Some(printer),
                tap.at,
                &tap.by,
                "plate clear refused",
                Some(reason),
            )?;
        }
        ExpireTap {
            printer,
            tap_id,
            reason,
            at,
        } => {
            tx.execute(
                "UPDATE plate_taps SET voided_at_ms = ?2, void_reason = ?3
                 WHERE tap_id = ?1 AND consumed_by_job IS NULL AND voided_at_ms IS NULL",
                params![tap_id, sql_ms(*at), reason],
            )?;
            tx.execute(
                "UPDATE plates SET state = 'unknown', tap_id = NULL, changed_at_ms = ?3, reason = ?4
                 WHERE printer = ?1 AND tap_id = ?2",
                params![printer, tap_id, sql_ms(*at), reason],
            )?;
            event_row(
                tx,
                None,
                Some(printer),
                *at,
                dispatcher,
                "tap expired",
                Some(reason),
            )?;
        }
        MarkPlateOccupied {
            printer,
            reason,
            at,
        } => {
            void_open_taps(tx, printer, *at, reason)?;
            set_plate(tx, printer, "occupied", None, *at, Some(reason))?;
            event_row(
                tx,
                None,
                Some(printer),
                *at,
                dispatcher,
                "plate occupied",
                Some(reason),
            )?;
        }
        SetQueuePaused { printer, paused } => {
            tx.execute(
                "INSERT INTO queue_flags (scope, paused) VALUES (?1, ?2)
                 ON CONFLICT(scope) DO UPDATE SET paused = excluded.paused",
                params![printer.as_deref().unwrap_or(""), paused],
            )?;
        }
        Assign { job, printer, at } => {
            guarded(
                tx,
                *job,
                "assign",
                "UPDATE jobs SET assigned_printer = ?2, state = 'queued', updated_at_ms = ?3
                 WHERE id = ?1 AND state = 'queued' AND assigned_printer IS NULL",
                &[job, printer, &sql_ms(*at)],
            )?;
            event_row(
                tx,
                Some(*job),
                Some(printer),
                *at,
                dispatcher,
                "uploading",
                None,
            )?;
        }
        MarkStaged { job, printer, at } => {
            guarded(
                tx,
                *job,
                "mark staged",
                "UPDATE jobs SET state = 'staged', updated_at_ms = ?3
                 WHERE id = ?1 AND state = 'queued' AND assigned_printer = ?2",
                &[job, printer, &sql_ms(*at)],
            )?;
            event_row(
                tx,
                Some(*job),
                Some(printer),
                *at,
                dispatcher,
                "staged",
                None,
            )?;
        }
        Unassign {
            job,
            reason,
            stage_failed,
            at,
        } => {
            let printer = job_printer(tx, *job)?;
            guarded(
                tx,
                *job,
                "unassign",
                "UPDATE jobs SET state = 'queued', assigned_printer = NULL, message = ?2,
                     stage_failures = stage_failures + ?3, updated_at_ms = ?4
                 WHERE id = ?1 AND state IN ('queued', 'staged')",
                &[job, reason, &i64::from(*stage_failed), &sql_ms(*at)],
            )?;
            event_row(
                tx,
                Some(*job),
                printer.as_deref(),
                *at,
                dispatcher,
                "queued",
                Some(reason),
            )?;
        }
        ConsumeTapAndMarkStarting {
            job,
            printer,
            tap,
            decided_at,
            window_deadline,
            mapping,
        } => start_job_in(
            tx,
            *job,
            printer,
            &tap.tap_id,
            *decided_at,
            timings.plate_clear_ttl_ms,
            *window_deadline,
            mapping.as_ref(),
        )?,
        HoldJob {
            job,
            printer,
            reason,
            at,
        } => {
            guarded(
                tx,
                *job,
                "hold",
                "UPDATE jobs SET message = ?2, updated_at_ms = ?3
                 WHERE id = ?1 AND state IN ('queued', 'staged')",
                &[job, reason, &sql_ms(*at)],
            )?;
            event_row(
                tx,
                Some(*job),
                Some(printer),
                *at,
                dispatcher,
                "held",
                Some(reason),
            )?;
        }
        MarkPublishing { job, epoch, at } => {
            guarded(
                tx,
                *job,
                "mark publishing",
                "UPDATE jobs SET publish_attempted_at_ms = ?2, publish_epoch = ?3, updated_at_ms = ?2
                 WHERE id = ?1 AND state = 'starting' AND publish_attempted_at_ms IS NULL",
                &[job, &sql_ms(*at), &sql_ms(*epoch)],
            )?;
            let printer = job_printer(tx, *job)?;
            event_row(
                tx,
                Some(*job),
                printer.as_deref(),
                *at,
                dispatcher,
                "publishing",
                None,
            )?;
        }
        MarkPublished {
            job,
            sequence_id,
            at,
        } => {
            guarded(
                tx,
                *job,
                "mark published",
                "UPDATE jobs SET sequence_id = ?2, published_at_ms = ?3, updated_at_ms = ?3
                 WHERE id = ?1 AND state = 'starting' AND publish_attempted_at_ms IS NOT NULL
                   AND sequence_id IS NULL",
                &[job, sequence_id, &sql_ms(*at)],
            )?;
            let printer = job_printer(tx, *job)?;
            event_row(
                tx,
                Some(*job),
                printer.as_deref(),
                *at,
                dispatcher,
                "published",
                Some(sequence_id),
            )?;
        }
        ReturnToQueued {
            job,
            restore_tap: restore,
            reason,
            at,
        } => {
            let printer = job_printer(tx, *job)?;
            if *restore {
                restore_tap(tx, *job, *at)?;
            }
            guarded(
                tx,
                *job,
                "return to queue",
                &format!(
                    "UPDATE jobs SET state = 'queued', assigned_printer = NULL, {CLEAR_ATTEMPT},
                         message = ?2, updated_at_ms = ?3
                     WHERE id = ?1 AND state = 'starting' AND sequence_id IS NULL"
                ),
                &[job, reason, &sql_ms(*at)],
            )?;
            let outcome = format!("{reason}{}", if *restore { " (tap restored)" } else { "" });
            event_row(
                tx,
                Some(*job),
                printer.as_deref(),
                *at,
                dispatcher,
                "queued",
                Some(&outcome),
            )?;
        }
        MarkPrinting { job, at } => {
            guarded(
                tx,
                *job,
                "mark printing",
                "UPDATE jobs SET state = 'printing', updated_at_ms = ?2
                 WHERE id = ?1 AND state IN ('starting', 'unconfirmed')",
                &[job, &sql_ms(*at)],
            )?;
            let printer = job_printer(tx, *job)?;
            event_row(
                tx,
                Some(*job),
                printer.as_deref(),
                *at,
                dispatcher,
                "printing",
                None,
            )?;
        }
        MarkUnconfirmed { job, reason, at } => {
            guarded(
                tx,
                *job,
                "mark unconfirmed",
                "UPDATE jobs SET state = 'unconfirmed', message = ?2, updated_at_ms = ?3
                 WHERE id = ?1 AND state = 'starting'",
                &[job, reason, &sql_ms(*at)],
            )?;
            let printer = job_printer(tx, *job)?;
            event_row(
                tx,
                Some(*job),
                printer.as_deref(),
                *at,
                dispatcher,
                "unconfirmed",
                Some(reason),
            )?;
        }
        MarkFinished { job, outcome, at } => {
            guarded(
                tx,
                *job,
                "mark finished",
                "UPDATE jobs SET state = 'finished', message = ?2, updated_at_ms = ?3
                 WHERE id = ?1 AND state = 'printing'",
                &[job, outcome, &sql_ms(*at)],
            )?;
            let printer = job_printer(tx, *job)?;
            event_row(
                tx,
                Some(*job),
                printer.as_deref(),
                *at,
                dispatcher,
                "finished",
                Some(outcome),
            )?;
        }
        MarkFailed { job, reason, at } => {
            guarded(
                tx,
                *job,
                "mark failed",
                "UPDATE jobs SET state = 'failed', message = ?2, updated_at_ms = ?3
                 WHERE id = ?1 AND state IN ('queued', 'starting', 'printing', 'unconfirmed')",
                &[job, reason, &sql_ms(*at)],
            )?;
            let printer = job_printer(tx, *job)?;
            event_row(
                tx,
                Some(*job),
                printer.as_deref(),
                *at,
                dispatcher,
                "failed",
                Some(reason),
            )?;
        }
        MarkCancelled {
            job,
            by,
            restore_tap: restore,
            at,
        } => {
            let printer = job_printer(tx, *job)?;
            if *restore {
                restore_tap(tx, *job, *at)?;
            }
            guarded(
                tx,
                *job,
                "cancel",
                "UPDATE jobs SET state = 'cancelled', message = ?2, updated_at_ms = ?3
                 WHERE id = ?1 AND (state IN ('queued', 'staged', 'unconfirmed')
                     OR (state = 'starting' AND publish_attempted_at_ms IS NULL))",
                &[job, &format!("cancelled by {by}"), &sql_ms(*at)],
            )?;
            event_row(
                tx,
                Some(*job),
                printer.as_deref(),
                *at,
                by,
                "cancelled",
                None,
            )?;
        }
        MarkExpired { job, at } => {
            guarded(
                tx,
                *job,
                "expire",
                "UPDATE jobs SET state = 'expired', assigned_printer = NULL, updated_at_ms = ?2,
                     message = 'the deadline passed before the job could start'
                 WHERE id = ?1 AND state IN ('queued', 'staged')",
                &[job, &sql_ms(*at)],
            )?;
            event_row(tx, Some(*job), None, *at, dispatcher, "expired", None)?;
        }
        SwapPositions {
            a,
            a_position,
            b,
            b_position,
        } => {
            guarded(
                tx,
                *a,
                "move",
                "UPDATE jobs SET position = ?2 WHERE id = ?1 AND position = ?3",
                &[a, b_position, a_position],
            )?;
            guarded(
                tx,
                *b,
                "move",
                "UPDATE jobs SET position = ?2 WHERE id = ?1 AND position = ?3",
                &[b, a_position, b_position],
            )?;
        }
        StartAgain {
            job,
            by,
            new_subtask_id,
            at,
        } => {
            guarded(
                tx,
                job.id,
                "start again",
                &format!(
                    "UPDATE jobs SET state = 'queued', assigned_printer = NULL, {CLEAR_ATTEMPT},
                         subtask_id = ?2, stage_failures = 0, deadline_ms = NULL,
                         start_again_at_ms = ?3, updated_at_ms = ?3,
                         message = ?4
                     WHERE id = ?1 AND state IN ('unconfirmed', 'failed', 'expired')"
                ),
                &[
                    &job.id,
                    new_subtask_id,
                    &sql_ms(*at),
                    &start_again_message(by),
                ],
            )?;
            event_row(tx, Some(job.id), None, *at, by, "start again", None)?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::dispatcher::{Event, ReportSummary, decide};
    use crate::printer::{ControlState, GcodeState};

    const T0: Millis = 1_700_000_000_000;

    fn new_job(key: &str) -> NewJob {
        NewJob {
            idempotency_key: key.into(),
            target: Target::Printer("p".into()),
            model_code: "C12".into(),
            file_sha256: "ab".repeat(32),
            plate: 1,
            name: "lid".into(),
            deadline: None,
            created_by: "ann".into(),
        }
    }

    fn tap(store: &Store, id: &str, at: Millis) {
        store
            .apply_dispatch_action(
                &Action::RecordTap {
                    printer: "p".into(),
                    tap: Tap {
                        tap_id: id.into(),
                        by: "ann".into(),
                        at,
                    },
                },
                &DispatchTimings::default(),
            )
            .expect("tap");
    }

    #[test]
    fn idempotency_key_returns_the_same_job() {
        let store = Store::open_in_memory().expect("store");
        let (a, created_a) = store.create_job(&new_job("k1"), T0).expect("create");
        let (b, created_b) = store.create_job(&new_job("k1"), T0 + 5).expect("create");
        let (c, _) = store.create_job(&new_job("k2"), T0).expect("create");
        assert!(created_a && !created_b);
        assert_eq!(a.id, b.id);
        assert_ne!(a.subtask_id, c.subtask_id);
        assert!(c.position > a.position);
        assert!((1..=MAX_SUBTASK_ID).contains(&a.subtask_id));
    }

    #[test]
    fn a_tap_starts_exactly_one_job() {
        let store = Store::open_in_memory().expect("store");
        let (a, _) = store.create_job(&new_job("k1"), T0).expect("create");
        let (b, _) = store.create_job(&new_job("k2"), T0).expect("create");
        tap(&store, "t1", T0);
        let ttl = DispatchTimings::default().plate_clear_ttl_ms;
        store
            .start_job_tx(a.id, "p", "t1", T0 + 1, ttl, T0 + 60_000)
            .expect("first start");
        assert_eq!(
            store.start_job_tx(b.id, "p", "t1", T0 + 2, ttl, T0 + 60_000),
            Err(StartConflict::TapConsumed(a.id))
        );
        assert_eq!(store.tap_consumer("t1").expect("q"), Some(a.id));
        tap(&store, "t2", T0 + 3);
        assert_eq!(
            store.start_job_tx(b.id, "p", "t2", T0 + 3 + ttl, ttl, T0 + 60_000),
            Err(StartConflict::TapExpired)
        );
        let events = store.job_events(a.id).expect("events");
        assert_eq!(
            events.iter().map(|e| e.what.as_str()).collect::<Vec<_>>(),
            ["queued", "starting"]
        );
    }

    /// A printer `p` online and idle with a fresh full report and one staged job: the next tap
    /// starts it.
    fn staged_job(store: &Store) -> (DispatchState, Job) {
        let printers = [("p".to_string(), "C12".to_string())];
        let mut state = store
            .load_dispatch_state(DispatchTimings::default(), &printers, false)
            .expect("load");
        let (job, _) = store.create_job(&new_job("k1"), T0).expect("create");
        let report = ReportSummary {
            link_online: true,
            connection_epoch: 1,
            have_full_report: true,
            full_report_at: Some(T0),
            gcode_state: GcodeState::Idle,
            control: ControlState::Ok,
            ..ReportSummary::default()
        };
        for e in [
            Event::PrinterReport {
                printer: "p".into(),
                report,
            },
            Event::JobQueued(Box::new(job.clone())),
            Event::StageComplete {
                job: job.id,
                printer: "p".into(),
                ticket: 1,
            },
        ] {
            let actions = decide(&state, e, T0);
            store.commit_batch(&mut state, actions).expect("commit");
        }
        assert_eq!(state.jobs[&job.id].state, JobState::Staged);
        (state, job)
    }

    fn tap_event() -> Event {
        Event::Tap {
            printer: "p".into(),
            user: "ann".into(),
            tap_id: "t1".into(),
        }
    }

    /// (tap consumed by, job state, publish attempted) as another connection reads them.
    fn seen_by(conn: &rusqlite::Connection, job: JobId) -> (Option<JobId>, String, bool) {
        let consumed = conn
            .query_row(
                "SELECT consumed_by_job FROM plate_taps WHERE tap_id = 't1'",
                [],
                |r| r.get(0),
            )
            .optional()
            .expect("tap row")
            .flatten();
        let (state, attempted): (String, Option<i64>) = conn
            .query_row(
                "SELECT state, publish_attempted_at_ms FROM jobs WHERE id = ?1",
                [job],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("job row");
        (consumed, state, attempted.is_some())
    }

    #[test]
    fn a_tap_batch_is_committed_before_its_publish_is_handed_out() {
        // I6 with the tap, its consumption and the publish mark folded into one commit: when
        // commit_batch hands out the Publish effect, another connection to the same file must
        // already read all three.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("printgate.sqlite");
        let store = Store::open(&path).expect("store");
        let (mut state, job) = staged_job(&store);
        let actions = decide(&state, tap_event(), T0 + 1);
        let outside: Vec<&Action> = actions
            .iter()
            .filter(|a| a.kind() != ActionKind::Memory)
            .collect();
        assert!(
            matches!(
                outside.as_slice(),
                [
                    Action::RecordTap { .. },
                    Action::ConsumeTapAndMarkStarting { .. },
                    Action::MarkPublishing { .. },
                    Action::Publish { .. },
                    ..
                ]
            ),
            "{outside:?}"
        );
        let effects = store.commit_batch(&mut state, actions).expect("commit");
        assert!(effects.iter().any(|a| matches!(a, Action::Publish { .. })));
        let other = rusqlite::Connection::open(&path).expect("second connection");
        assert_eq!(
            seen_by(&other, job.id),
            (Some(job.id), "starting".to_string(), true)
        );
    }

    #[test]
    fn a_refused_start_in_a_tap_batch_keeps_the_tap_and_consumes_nothing() {
        // I1 inside the folded batch: SQLite refuses the job's move to `starting` after the tap
        // was already marked consumed in the same action. That action must leave no trace (the
        // tap stays unconsumed, the plate clear), the tap recorded before it stays, nothing after
        // it is stored and no Publish is handed out.
        let store = Store::open_in_memory().expect("store");
        let (mut state, job) = staged_job(&store);
        store
            .conn()
            .execute_batch(
                "CREATE TRIGGER refuse_start BEFORE UPDATE OF state ON jobs
                 WHEN NEW.state = 'starting' BEGIN SELECT RAISE(ABORT, 'injected refusal'); END",
            )
            .expect("trigger");
        let actions = decide(&state, tap_event(), T0 + 1);
        let start = actions
            .iter()
            .position(|a| matches!(a, Action::ConsumeTapAndMarkStarting { .. }))
            .expect("a start was decided");
        let err = store
            .commit_batch(&mut state, actions)
            .expect_err("the start is refused");
        assert_eq!(err.index, start);
        assert_eq!(
            seen_by(&store.conn(), job.id),
            (None, "staged".to_string(), false)
        );
        assert_eq!(store.tap_consumer("t1").expect("q"), None);
        assert_eq!(state.jobs[&job.id].state, JobState::Staged);
        assert!(matches!(
            state.printers["p"].plate,
            PlateState::Clear(ref t) if t.tap_id == "t1"
        ));
        // The state after the refusal is exactly what the database holds.
        let mut reloaded = store
            .load_dispatch_state(
                DispatchTimings::default(),
                &[("p".to_string(), "C12".to_string())],
                false,
            )
            .expect("reload");
        reloaded.printers = state.printers.clone();
        assert_eq!(reloaded.jobs, state.jobs);
    }

    #[test]
    fn a_refused_publish_mark_keeps_the_start_and_hands_out_no_publish() {
        // The start (tap consumed, job starting) is committed with the tap; the publish mark is
        // refused, so no Publish may run (I6): restart recovery then sees a start whose outcome
        // is known to be "nothing sent".
        let store = Store::open_in_memory().expect("store");
        let (mut state, job) = staged_job(&store);
        store
            .conn()
            .execute_batch(
                "CREATE TRIGGER refuse_mark BEFORE UPDATE OF publish_attempted_at_ms ON jobs
                 WHEN NEW.publish_attempted_at_ms IS NOT NULL
                 BEGIN SELECT RAISE(ABORT, 'injected refusal'); END",
            )
            .expect("trigger");
        let actions = decide(&state, tap_event(), T0 + 1);
        let mark = actions
            .iter()
            .position(|a| matches!(a, Action::MarkPublishing { .. }))
            .expect("a publish was decided");
        let err = store
            .commit_batch(&mut state, actions)
            .expect_err("the mark is refused");
        assert_eq!(err.index, mark);
        assert_eq!(
            seen_by(&store.conn(), job.id),
            (Some(job.id), "starting".to_string(), false)
        );
        assert_eq!(state.jobs[&job.id].state, JobState::Starting);
    }

    #[test]
    fn restart_recovery_and_reload() {
        let store = Store::open_in_memory().expect("store");
        let timings = DispatchTimings::default();
        let printers = [("p".to_string(), "C12".to_string())];
        let mut state = store
            .load_dispatch_state(timings.clone(), &printers, false)
            .expect("load");
        let (job, _) = store.create_job(&new_job("k1"), T0).expect("create");
        let report = ReportSummary {
            link_online: true,
            connection_epoch: 1,
            have_full_report: true,
            full_report_at: Some(T0),
            gcode_state: GcodeState::Idle,
            control: ControlState::Ok,
            ..ReportSummary::default()
        };
        let events = [
            Event::PrinterReport {
                printer: "p".into(),
                report,
            },
            Event::JobQueued(Box::new(job.clone())),
            Event::StageComplete {
                job: job.id,
                printer: "p".into(),
                ticket: 1,
            },
            Event::Tap {
                printer: "p".into(),
                user: "ann".into(),
                tap_id: "t1".into(),
            },
        ];
        let mut effects = Vec::new();
        for e in events {
            let actions = decide(&state, e, T0);
            effects.extend(store.commit_batch(&mut state, actions).expect("commit"));
        }
        assert!(effects.iter().any(|a| matches!(a, Action::Publish { .. })));
        let mut reloaded = store
            .load_dispatch_state(timings.clone(), &printers, false)
            .expect("reload");
        reloaded.printers = state.printers.clone();
        assert_eq!(reloaded.jobs, state.jobs);

        let recovery = store.recover_after_restart(T0 + 10).expect("recover");
        assert_eq!(recovery.unconfirmed, vec![job.id]);
        let after = store
            .load_dispatch_state(timings, &printers, false)
            .expect("load");
        assert_eq!(after.jobs[&job.id].state, JobState::Unconfirmed);
        assert_eq!(after.printers["p"].plate, PlateState::Occupied);
        // A second start of the same tap is refused by SQLite itself.
        let refused = store.apply_dispatch_action(
            &Action::ConsumeTapAndMarkStarting {
                job: job.id,
                printer: "p".into(),
                tap: Tap {
                    tap_id: "t1".into(),
                    by: "ann".into(),
                    at: T0,
                },
                decided_at: T0 + 20,
                window_deadline: T0 + 60_000,
                mapping: None,
            },
            &DispatchTimings::default(),
        );
        assert!(matches!(
            refused,
            Err(DispatchDbError::Start(StartConflict::TapConsumed(_)))
        ));
    }
}
