//! The simulated Moonraker's `gcodes` root: files kept in memory by their path relative to the
//! root, with modification times, Moonraker's item and list shapes, Klipper's file lookup
//! (exact name, then case-insensitive) and an optional capacity that models a full disk.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Extensions Moonraker lists in the `gcodes` root (`VALID_GCODE_EXTS`).
pub const GCODE_EXTS: [&str; 5] = [".gcode", ".g", ".gco", ".ufp", ".nc"];

#[derive(Debug, Clone)]
pub struct StoredFile {
    pub bytes: Vec<u8>,
    /// Unix time, seconds.
    pub modified: f64,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("not enough space left for {needed} bytes ({free} free)")]
    Full { needed: u64, free: u64 },
    #[error("invalid path {0:?}")]
    BadPath(String),
}

#[derive(Debug, Default)]
pub struct GcodeStore {
    files: BTreeMap<String, StoredFile>,
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A path relative to the root, without leading slashes; `None` for `..`, empty or absolute
/// escapes.
pub fn normalise(path: &str) -> Option<String> {
    let trimmed = path.trim().trim_start_matches('/');
    let parts: Vec<&str> = trimmed.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == ".." || *p == ".") {
        return None;
    }
    Some(parts.join("/"))
}

pub fn is_gcode(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    GCODE_EXTS.iter().any(|e| lower.ends_with(e))
}

impl GcodeStore {
    pub fn used(&self) -> u64 {
        self.files.values().map(|f| f.bytes.len() as u64).sum()
    }

    /// Store `bytes` at `path` (replacing a file of that name), within `capacity` bytes total.
    pub fn put(
        &mut self,
        path: &str,
        bytes: Vec<u8>,
        capacity: Option<u64>,
    ) -> Result<&StoredFile, FileError> {
        let path = normalise(path).ok_or_else(|| FileError::BadPath(path.to_string()))?;
        if let Some(cap) = capacity {
            let replaced = self.files.get(&path).map_or(0, |f| f.bytes.len() as u64);
            let free = cap.saturating_sub(self.used().saturating_sub(replaced));
            let needed = bytes.len() as u64;
            if needed > free {
                return Err(FileError::Full { needed, free });
            }
        }
        let file = StoredFile {
            bytes,
            modified: now_unix(),
        };
        self.files.insert(path.clone(), file);
        self.files
            .get(&path)
            .ok_or_else(|| FileError::BadPath(path.clone()))
    }

    pub fn remove(&mut self, path: &str) -> Option<StoredFile> {
        self.files.remove(&normalise(path)?)
    }

    /// Klipper's `SDCARD_PRINT_FILE` lookup: the exact path, else a case-insensitive match.
    pub fn resolve(&self, path: &str) -> Option<(String, &StoredFile)> {
        let p = normalise(path)?;
        if let Some(f) = self.files.get(&p) {
            return Some((p, f));
        }
        let lower = p.to_lowercase();
        self.files
            .iter()
            .find(|(k, _)| k.to_lowercase() == lower)
            .map(|(k, f)| (k.clone(), f))
    }

    /// Every file as `(path, bytes)`.
    pub fn all(&self) -> Vec<(String, Vec<u8>)> {
        self.files
            .iter()
            .map(|(k, f)| (k.clone(), f.bytes.clone()))
            .collect()
    }

    /// `server.files.list` for the gcodes root.
    pub fn list_json(&self) -> Value {
        Value::Array(
            self.files
                .iter()
                .filter(|(k, _)| is_gcode(k))
                .map(|(k, f)| {
                    json!({"path": k, "modified": f.modified, "size": f.bytes.len(), "permissions": "rw"})
                })
                .collect(),
        )
    }
}

/// Moonraker's "Uploaded Item" / file item object.
pub fn item_json(path: &str, file: &StoredFile) -> Value {
    json!({
        "path": path,
        "root": "gcodes",
        "modified": file.modified,
        "size": file.bytes.len(),
        "permissions": "rw",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_paths_and_lookup() {
        let mut s = GcodeStore::default();
        assert!(s.put("/a.gcode", vec![0; 10], Some(15)).is_ok());
        assert!(
            s.put("a.gcode", vec![0; 15], Some(15)).is_ok(),
            "replacing frees the old size"
        );
        assert_eq!(
            s.put("b.gcode", vec![0; 1], Some(15)).err(),
            Some(FileError::Full { needed: 1, free: 0 })
        );
        assert!(s.put("../x.gcode", vec![], None).is_err());
        assert_eq!(s.resolve("A.GCODE").map(|(k, _)| k), Some("a.gcode".into()));
        assert_eq!(normalise("//dir//b.gcode"), Some("dir/b.gcode".into()));
        assert!(is_gcode("x.GCO") && !is_gcode("x.txt"));
    }
}
