//! The simulated printer's storage (SD card / internal storage): files by name, shared between
//! the FTPS server (which writes them) and the print state machine (which reads them when a
//! `project_file` arrives).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct SimStorage {
    inner: Arc<Mutex<StorageInner>>,
}

#[derive(Default)]
struct StorageInner {
    files: BTreeMap<String, Arc<Vec<u8>>>,
    /// Total bytes allowed; `None` = unlimited.
    quota: Option<u64>,
    /// Card removed: every access fails.
    missing: bool,
}

/// Why the storage refused a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageError {
    Missing,
    Full,
}

impl SimStorage {
    /// Normalise a path to the bare name stored at the root (`/a.3mf`, `a.3mf` → `a.3mf`).
    pub fn key(path: &str) -> String {
        path.trim_start_matches('/').to_string()
    }
    pub fn put(&self, path: &str, data: Vec<u8>) -> Result<(), StorageError> {
        let mut s = self.inner.lock().expect("storage lock");
        if s.missing {
            return Err(StorageError::Missing);
        }
        let key = Self::key(path);
        if let Some(q) = s.quota {
            let used: u64 = s
                .files
                .iter()
                .filter(|(k, _)| **k != key)
                .map(|(_, v)| v.len() as u64)
                .sum();
            if used + data.len() as u64 > q {
                return Err(StorageError::Full);
            }
        }
        s.files.insert(key, Arc::new(data));
        Ok(())
    }
    pub fn get(&self, path: &str) -> Option<Arc<Vec<u8>>> {
        let s = self.inner.lock().expect("storage lock");
        if s.missing {
            return None;
        }
        s.files.get(&Self::key(path)).cloned()
    }
    pub fn remove(&self, path: &str) -> bool {
        let mut s = self.inner.lock().expect("storage lock");
        s.files.remove(&Self::key(path)).is_some()
    }
    /// `(name, size)` of every file.
    pub fn list(&self) -> Vec<(String, u64)> {
        let s = self.inner.lock().expect("storage lock");
        s.files
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect()
    }
    pub fn set_quota(&self, quota: Option<u64>) {
        self.inner.lock().expect("storage lock").quota = quota;
    }
    pub fn set_missing(&self, missing: bool) {
        self.inner.lock().expect("storage lock").missing = missing;
    }
    pub fn is_missing(&self) -> bool {
        self.inner.lock().expect("storage lock").missing
    }
}
