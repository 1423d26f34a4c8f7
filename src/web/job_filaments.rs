//! The filaments a queued job needs, as the queue row and `GET /api/v1/jobs` show them: read
//! from the job's 3MF at upload (`jobs::filament::requirements`), recorded with the job
//! (`jobs.filaments_json`) and turned into words here; and which trays a start uses
//! ([`tray_plan`]): the mapping committed with the start once there is one, before that what
//! the dispatcher's own rule (`jobs::dispatcher::filament_mapping_for`) answers with the trays
//! the printer reports now — the Plate clear confirmation shows the same.

use crate::app::Gateway;
use crate::jobs::dispatcher::{DispatchState, filament_mapping_for};
use crate::jobs::filament::{FilamentRequirement, requirements};
use crate::jobs::files::StoredFile;
use crate::jobs::model::{Job, Target};
use crate::jobs::threemf::FileInfo;
use serde::Serialize;

/// One filament a job needs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FilamentNeedView {
    /// The project's filament number.
    pub id: u32,
    /// e.g. `PLA`.
    pub material: String,
    /// `#RRGGBB` (or `#RRGGBBAA` for a translucent filament), for a swatch.
    pub color: String,
    /// A plain word for the colour (`white`, `clear`).
    pub color_name: Option<String>,
    pub used_g: Option<f64>,
    pub used_m: Option<f64>,
    /// `PLA · white · 12.3 g`.
    pub text: String,
}

impl From<&FilamentRequirement> for FilamentNeedView {
    fn from(r: &FilamentRequirement) -> Self {
        FilamentNeedView {
            id: r.id,
            material: r.material.clone(),
            color: r.color.clone(),
            color_name: r.rgba().map(|c| c.name().to_string()),
            used_g: r.used_g,
            used_m: r.used_m,
            text: r.describe(),
        }
    }
}

/// The JSON to record with a new job for `plate` of `stored`: its filament list, or `None` for
/// plain G-code (nothing to read) and for a stored file whose list cannot be read.
pub fn recorded(stored: &StoredFile, plate: u32) -> Option<String> {
    let FileInfo::ThreeMf(info) = &stored.info else {
        return None;
    };
    let list = requirements(info.plate(plate)?).ok()?;
    serde_json::to_string(&list).ok()
}

/// The recorded filament lists of these jobs, by job id (jobs without one are absent).
pub fn needs_of(
    gw: &Gateway,
    ids: &[crate::jobs::model::JobId],
) -> std::collections::HashMap<crate::jobs::model::JobId, Vec<FilamentNeedView>> {
    gw.store
        .job_filaments(ids)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, json)| {
            let list: Vec<FilamentRequirement> = serde_json::from_str(&json).ok()?;
            Some((id, list.iter().map(FilamentNeedView::from).collect()))
        })
        .collect()
}

/// Which trays a job's start uses, in words.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrayPlanView {
    /// The printer the plan is for.
    pub printer: String,
    /// `true` once the mapping was committed with a start (it is what the printer was sent).
    pub committed: bool,
    /// `filament 1 PETG (black) → AMS 1 slot 4: PETG (black)`, one per filament.
    pub lines: Vec<String>,
    /// What to load where before this job can start (`load PETG (black) in any AMS slot`).
    pub missing: Option<String>,
}

/// The trays `job` uses (committed) or would use on its printer now; `None` when no filament
/// list is known or the job has no printer yet.
pub fn tray_plan(state: &DispatchState, job: &Job) -> Option<TrayPlanView> {
    let printer = job.assigned_printer.clone().or(match &job.target {
        Target::Printer(p) => Some(p.clone()),
        Target::AnyCompatible => None,
    })?;
    if let Some(m) = job.start.as_ref().and_then(|a| a.mapping.as_ref()) {
        return Some(TrayPlanView {
            printer,
            committed: true,
            lines: m.lines(),
            missing: None,
        });
    }
    if !job.state.is_pre_start() {
        return None;
    }
    let runtime = state.printers.get(&printer)?;
    match filament_mapping_for(job, runtime) {
        Ok(Some(m)) => Some(TrayPlanView {
            printer,
            committed: false,
            lines: m.lines(),
            missing: None,
        }),
        Ok(None) => None,
        Err(missing) => Some(TrayPlanView {
            printer,
            committed: false,
            lines: Vec::new(),
            missing: Some(missing),
        }),
    }
}

/// The job the next start on `printer` would be (the one staged or uploading there, else the
/// first waiting job that may run there) and its tray plan, for the Plate clear confirmation.
pub fn next_on(state: &DispatchState, printer: &str) -> Option<(String, Option<TrayPlanView>)> {
    let p = state.printers.get(printer)?;
    let job = state.slot_job(printer).cloned().or_else(|| {
        let mut waiting: Vec<&Job> = state
            .jobs
            .values()
            .filter(|j| {
                j.state.is_pre_start()
                    && j.assigned_printer.is_none()
                    && j.fits(printer, &p.model_code)
            })
            .collect();
        waiting.sort_by_key(|j| (j.position, j.id));
        waiting.first().map(|j| {
            let mut j = (*j).clone();
            j.assigned_printer = Some(printer.to_string());
            j
        })
    })?;
    if !job.state.is_pre_start() {
        return None;
    }
    Some((job.name.clone(), tray_plan(state, &job)))
}
