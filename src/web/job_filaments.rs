//! The filaments a queued job needs, as the queue row and `GET /api/v1/jobs` show them: read
//! from the job's 3MF at upload (`jobs::filament::requirements`), recorded with the job
//! (`jobs.filaments_json`) and turned into words here.

use crate::app::Gateway;
use crate::jobs::filament::{FilamentRequirement, requirements};
use crate::jobs::files::StoredFile;
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
