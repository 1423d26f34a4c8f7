//! Files a client uploaded to a virtual printer (over its FTPS), and the one job a
//! `project_file` makes of each. An upload is streamed into printgate's file store with the web
//! upload's validation and limits (`jobs/files.rs`); the virtual printer remembers it by name.
//! A `project_file` naming it creates a queued job with the idempotency key of that upload, so a
//! resent request (any `sequence_id`) finds the same job and never makes a second one (I7); the
//! job starts only through the dispatcher after Plate clear (I1). A new upload under the same
//! name is a new upload (a person printing again).
//!
//! Kept in memory: after a restart the client uploads again. A stored file no job took is
//! removed by the file store's sweep after [`crate::jobs::files::UPLOAD_GRACE`].

use crate::app::Gateway;
use crate::jobs::dispatcher::Event;
use crate::jobs::files::StoredFile;
use crate::jobs::model::{NewJob, Target};
use crate::jobs::threemf::FileInfo;
use crate::printer::Model;
use std::collections::HashMap;
use std::sync::Mutex;

/// Names remembered at most per virtual printer (the oldest is forgotten first).
const MAX_UPLOADS: usize = 64;

struct Upload {
    id: String,
    stored: StoredFile,
    /// A job took the store's reference of this upload.
    queued: bool,
    seq: u64,
    at: std::time::Instant,
}

/// An upload no job took may be swept from the store after [`UPLOAD_GRACE`]; a print request
/// that late asks for the file again.
const USABLE_FOR: std::time::Duration =
    crate::jobs::files::UPLOAD_GRACE.saturating_sub(std::time::Duration::from_secs(60));

/// One virtual printer's uploads by name.
#[derive(Default)]
pub struct Uploads {
    by_name: Mutex<HashMap<String, Upload>>,
    next: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a `project_file` asks to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintRequest {
    pub file: String,
    pub plate: u32,
    pub name: Option<String>,
}

/// What a queued `project_file` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub job_id: i64,
    /// False when the request was a resend of one that already made the job.
    pub created: bool,
    pub name: String,
}

impl Uploads {
    /// Remember a stored upload under `name`; returns the store references to release (an
    /// earlier upload of that name that no job took, the oldest one beyond the limit).
    pub fn add(&self, name: &str, stored: StoredFile) -> Vec<String> {
        use std::sync::atomic::Ordering;
        let mut id = [0u8; 12];
        rand::Rng::fill(&mut rand::rng(), &mut id);
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut map = lock(&self.by_name);
        let mut release = Vec::new();
        let upload = Upload {
            id: hex::encode(id),
            stored,
            queued: false,
            seq,
            at: std::time::Instant::now(),
        };
        if let Some(old) = map.insert(name.to_string(), upload)
            && !old.queued
        {
            release.push(old.stored.sha256);
        }
        while map.len() > MAX_UPLOADS {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, u)| u.seq)
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            if let Some(u) = map.remove(&oldest)
                && !u.queued
            {
                release.push(u.stored.sha256);
            }
        }
        release
    }

    /// Size of the upload `name`, if there is one.
    pub fn size(&self, name: &str) -> Option<u64> {
        lock(&self.by_name).get(name).map(|u| u.stored.size)
    }

    /// Names and sizes, sorted by name.
    pub fn list(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = lock(&self.by_name)
            .iter()
            .map(|(n, u)| (n.clone(), u.stored.size))
            .collect();
        v.sort();
        v
    }

    /// Forget `name`; the store reference to release, if no job took it.
    pub fn remove(&self, name: &str) -> Option<Option<String>> {
        lock(&self.by_name)
            .remove(name)
            .map(|u| (!u.queued).then_some(u.stored.sha256))
    }

    /// Queue the upload `file` (plate `plate`) as one job for `printer`.
    pub async fn queue(
        &self,
        gw: &Gateway,
        printer: &str,
        model: Model,
        req: PrintRequest,
        actor: &str,
    ) -> Result<Queued, String> {
        let PrintRequest { file, plate, name } = req;
        let file = file.as_str();
        let (id, stored, already) = {
            let map = lock(&self.by_name);
            let Some(u) = map.get(file) else {
                return Err(format!(
                    "no file {file:?} was uploaded to this virtual printer; upload it (FTPS) and send the print again"
                ));
            };
            if !u.queued && u.at.elapsed() >= USABLE_FOR {
                return Err(format!(
                    "{file} was uploaded more than {} minutes ago and may be gone; upload it again and send the print again",
                    USABLE_FOR.as_secs() / 60
                ));
            }
            (u.id.clone(), u.stored.clone(), u.queued)
        };
        let FileInfo::ThreeMf(info) = &stored.info else {
            return Err(format!(
                "{file} is not a sliced project; send the .gcode.3mf from the slicer"
            ));
        };
        let plate_info = info.plate(plate).ok_or_else(|| {
            let available: Vec<String> = info.plates.iter().map(|p| p.index.to_string()).collect();
            format!(
                "{file} has no plate {plate}; sliced plates: {}",
                available.join(", ")
            )
        })?;
        crate::jobs::threemf::check_model(info, plate, model).map_err(|e| e.to_string())?;
        let filaments = crate::jobs::filament::requirements(plate_info)
            .ok()
            .and_then(|l| serde_json::to_string(&l).ok());
        let job_name = name
            .unwrap_or_else(|| crate::jobs::files::job_name_of(&stored.display_name).to_string());
        let new = NewJob {
            idempotency_key: format!("virtual-printer:{printer}:{id}"),
            target: Target::Printer(printer.to_string()),
            model_code: model.model_code().to_string(),
            file_sha256: stored.sha256.clone(),
            plate,
            name: job_name,
            deadline: None,
            created_by: actor.to_string(),
        };
        let (job, created) = gw
            .store
            .create_job_with_filaments(&new, filaments.as_deref(), gw.dispatcher.now())
            .map_err(|e| format!("the job could not be saved: {e}; nothing was queued"))?;
        if created {
            if let Some(u) = lock(&self.by_name).get_mut(file)
                && u.id == id
            {
                u.queued = true;
            }
            gw.dispatcher
                .submit(Event::JobQueued(Box::new(job.clone())))
                .await
                .map_err(|e| format!("the job was saved but the queue did not take it: {e}"))?;
        } else if !already {
            tracing::warn!(
                printer,
                file,
                "a virtual printer upload's job already existed"
            );
        }
        Ok(Queued {
            job_id: job.id,
            created,
            name: job.name,
        })
    }
}
