//! Print-file inspection, pure and without I/O of its own: works on any `Read + Seek`.
//!
//! A sliced Bambu `.gcode.3mf` is a zip holding `Metadata/plate_<N>.gcode` per sliced plate,
//! `Metadata/slice_info.config` (printer model code, predicted seconds, grams, filaments per
//! plate), `Metadata/plate_<N>.json` (`bed_type`) and a thumbnail `Metadata/plate_<N>.png`
//! (docs/bambu-protocol.md §4.2). [`inspect`] checks such an archive against [`ZipLimits`] (entry count,
//! total size, overall and per-entry expansion, counted while actually decompressing because
//! declared sizes can lie; entry names that point outside the archive) and extracts
//! [`ThreeMfInfo`]; [`check_model`] refuses a plate sliced for another
//! printer model. Plain `.gcode` gets basic text checks in [`inspect_gcode`]. Every
//! [`FileError`] says what is wrong and what to do.

use crate::printer::Model;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};

/// What kind of print file an upload is, decided by its name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    /// A sliced `.gcode.3mf` (or `.3mf`) zip archive.
    #[serde(rename = "3mf")]
    ThreeMf,
    /// A plain `.gcode` text file.
    #[serde(rename = "gcode")]
    Gcode,
}

impl FileKind {
    /// The kind of a file by its name (case-insensitive): `.gcode.3mf` / `.3mf`, or plain G-code
    /// `.gcode` / `.gco` / `.g` (the names OctoPrint takes). Binary G-code (`.bgcode`) is
    /// refused with the way to turn it off.
    pub fn from_name(name: &str) -> Result<FileKind, FileError> {
        let lower = name.trim().to_ascii_lowercase();
        if lower.ends_with(".3mf") {
            Ok(FileKind::ThreeMf)
        } else if GCODE_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
            Ok(FileKind::Gcode)
        } else if lower.ends_with(".bgcode") {
            Err(FileError::BinaryGcode)
        } else {
            let ext = lower
                .rsplit_once('.')
                .map(|(_, e)| printable(e, 16))
                .unwrap_or_default();
            Err(FileError::UnsupportedExtension { extension: ext })
        }
    }
    /// Stable short name used in the database and JSON: `3mf` or `gcode`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::ThreeMf => "3mf",
            FileKind::Gcode => "gcode",
        }
    }
    /// Inverse of [`FileKind::as_str`].
    pub fn parse(s: &str) -> Option<FileKind> {
        match s {
            "3mf" => Some(FileKind::ThreeMf),
            "gcode" => Some(FileKind::Gcode),
            _ => None,
        }
    }
    /// The file-name suffix printgate gives files of this kind.
    pub fn suffix(self) -> &'static str {
        match self {
            FileKind::ThreeMf => ".gcode.3mf",
            FileKind::Gcode => ".gcode",
        }
    }
}

/// Name suffixes of plain G-code files (lower case), longest first.
pub const GCODE_SUFFIXES: [&str; 3] = [".gcode", ".gco", ".g"];

/// The first bytes of a binary G-code file (`.bgcode`, PrusaSlicer's "binary G-code").
pub const BINARY_GCODE_MAGIC: &[u8; 4] = b"GCDE";

/// Bounds applied while inspecting an archive (zip-bomb and resource protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZipLimits {
    /// Most entries an archive may hold (a Bambu export has about 15 plus ~8 per plate, so
    /// the default [`MAX_ENTRIES`] allows more than 100 plates).
    pub max_entries: usize,
    /// Most bytes all entries together may expand to (default [`MAX_UNPACKED_BYTES`]).
    pub max_total_uncompressed: u64,
    /// Largest expansion ratio (uncompressed / compressed) of one entry bigger than
    /// [`RATIO_CHECK_FLOOR`]. G-code deflates about 3–8×; a bomb expands hundreds of times.
    pub max_ratio: u64,
    /// Largest expansion of the whole archive (all entries together / the file's size) once
    /// it expands past [`OVERALL_RATIO_FLOOR`]: many small entries, each harmless on its own,
    /// cannot add up to a bomb.
    pub max_overall_ratio: u64,
    /// Largest thumbnail kept; a bigger one counts as absent.
    pub max_thumbnail_bytes: u64,
    /// Largest `slice_info.config` / `plate_<N>.json` parsed.
    pub max_metadata_bytes: u64,
}

/// Entries that expand to at most this many bytes are not ratio-checked one by one (tiny,
/// repetitive XML can legitimately compress very well); together they count towards
/// [`ZipLimits::max_overall_ratio`].
pub const RATIO_CHECK_FLOOR: u64 = 1024 * 1024;

/// Archives that expand to at most this many bytes in total are not ratio-checked as a whole
/// (a small project's XML may compress 50× and cannot hurt).
pub const OVERALL_RATIO_FLOOR: u64 = 64 * 1024 * 1024;

/// Default most entries: a Bambu Studio / OrcaSlicer export holds about 15 entries plus about 8
/// per plate (G-code, its MD5, JSON, thumbnails), so 1,000 fits more than 100 plates.
pub const MAX_ENTRIES: usize = 1_000;

/// Default most bytes an archive may expand to: 1 GiB. A large multi-plate sliced file holds a
/// few hundred MB of G-code at most (a 20-hour plate is 50–150 MB), so this leaves room while
/// a Pi's SD card and the printer's storage are never asked to hold a bomb.
pub const MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;

/// Default largest overall expansion: 40:1. Real sliced files expand 3–10× (G-code deflates
/// 3–8×, thumbnails not at all); a zip bomb expands hundreds or thousands of times.
pub const MAX_OVERALL_RATIO: u64 = 40;

impl Default for ZipLimits {
    fn default() -> Self {
        ZipLimits {
            max_entries: MAX_ENTRIES,
            max_total_uncompressed: MAX_UNPACKED_BYTES,
            max_ratio: 100,
            max_overall_ratio: MAX_OVERALL_RATIO,
            max_thumbnail_bytes: 4 * 1024 * 1024,
            max_metadata_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why a file was refused (or could not be stored). Each message names the problem and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FileError {
    #[error(
        "the file is empty (0 bytes): export the plate again from the slicer and upload the .gcode.3mf"
    )]
    Empty,
    #[error(
        "the file is larger than the gateway's upload limit of {}: slice fewer objects per plate, or raise web.max_upload_mb in the gateway's configuration",
        human_bytes(*limit)
    )]
    TooLarge { limit: u64 },
    #[error(
        "unsupported file type '.{extension}': upload a sliced .gcode.3mf (in the slicer: slice, then export/send the plate) or a plain .gcode file"
    )]
    UnsupportedExtension { extension: String },
    #[error(
        "the file is not a 3MF/zip archive: export the sliced plate again from the slicer as .gcode.3mf"
    )]
    NotAZip,
    #[error(
        "the 3MF archive is incomplete (its zip directory is missing or cut short): the upload was probably interrupted; upload the file again"
    )]
    Truncated,
    #[error("the 3MF archive is damaged ({detail}): export it again from the slicer and re-upload")]
    Damaged { detail: String },
    #[error(
        "the 3MF uses a zip feature printgate cannot read ({detail}): export it again from Bambu Studio or OrcaSlicer without encryption"
    )]
    Unsupported { detail: String },
    #[error(
        "refused as a possible zip bomb: {detail}; a sliced plate never expands like this — export it again from the slicer"
    )]
    ZipBomb { detail: String },
    #[error(
        "the archive holds {count} entries, more than the limit of {limit}: this is not a sliced plate file; export the plate again from the slicer"
    )]
    TooManyEntries { count: u64, limit: usize },
    #[error(
        "the 3MF holds an entry named '{name}', a path outside the archive (it uses '..', an absolute path, a backslash or a drive letter): a slicer never writes such names; export the plate again from the slicer"
    )]
    UnsafeEntryName { name: String },
    #[error(
        "the 3MF contains no sliced plate (no Metadata/plate_<N>.gcode inside): slice the model and export/send the plate as .gcode.3mf"
    )]
    NoPlateGcode,
    #[error(
        "the file has no plate {plate} (sliced plates: {available}): choose one of those plates"
    )]
    NoSuchPlate { plate: u32, available: String },
    #[error(
        "this file was sliced for the {sliced_for}, but the printer is a {printer}: select the {printer} printer profile in the slicer, slice again and upload the new file"
    )]
    WrongModel { sliced_for: String, printer: String },
    #[error(
        "the .gcode file does not look like G-code text ({detail}): upload the G-code the slicer wrote, or a sliced .gcode.3mf"
    )]
    NotGcode { detail: String },
    #[error(
        "this is binary G-code (.bgcode), which Klipper cannot print: in PrusaSlicer untick Printer Settings → General → Firmware → \"Supports binary G-code\", slice again and send the plain .gcode"
    )]
    BinaryGcode,
    #[error("the upload was interrupted ({detail}): upload the file again")]
    UploadInterrupted { detail: String },
    #[error("no space left on the gateway's disk: {detail}; free space or lower the size limit")]
    DiskFull { detail: String },
    #[error(
        "could not store the file on the gateway's disk: {detail}; check the data directory's permissions and free space"
    )]
    Io { detail: String },
    #[error("the file database failed: {detail}; check the gateway's log and disk")]
    Database { detail: String },
    #[error(
        "no stored file with id {sha256}: it was deleted or never uploaded; upload the file again"
    )]
    NotFound { sha256: String },
}

/// What was found in a sliced 3MF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreeMfInfo {
    /// Sliced plates, by ascending index (at least one).
    pub plates: Vec<PlateInfo>,
    /// `X-BBL-Client-Version` from slice_info.config, e.g. `01.09.07.52`.
    pub slicer_version: Option<String>,
    /// Number of zip entries.
    pub entries: usize,
    /// Total bytes the entries expand to (counted while reading).
    pub uncompressed_bytes: u64,
}

impl ThreeMfInfo {
    /// The plate with this 1-based index.
    pub fn plate(&self, index: u32) -> Option<&PlateInfo> {
        self.plates.iter().find(|p| p.index == index)
    }
}

/// One sliced plate of a 3MF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateInfo {
    /// 1-based plate index: the `N` of `Metadata/plate_<N>.gcode` (the `param` of `project_file`).
    pub index: u32,
    /// `printer_model_id`, e.g. `C12` (docs/bambu-protocol.md §11); `None` when slice_info lacks it.
    pub model_code: Option<String>,
    /// Predicted print time in seconds.
    pub prediction_secs: Option<u64>,
    /// Filament weight in grams.
    pub weight_g: Option<f64>,
    /// Nozzle diameter in mm (the first one on multi-nozzle printers).
    pub nozzle_diameter_mm: Option<f64>,
    /// Filaments in slice_info order (the order `ams_mapping` follows).
    pub filaments: Vec<FilamentInfo>,
    /// `bed_type` from `Metadata/plate_<N>.json`, e.g. `textured_plate`.
    pub bed_type: Option<String>,
    /// A PNG `Metadata/plate_<N>.png` within the thumbnail size limit exists.
    pub has_thumbnail: bool,
    /// Size of the plate's G-code in bytes.
    pub gcode_bytes: u64,
}

impl PlateInfo {
    /// The printer model this plate was sliced for, if printgate knows its code.
    pub fn model(&self) -> Option<Model> {
        self.model_code.as_deref().and_then(Model::from_model_code)
    }
}

/// One filament used by a plate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilamentInfo {
    /// 1-based filament slot of the project.
    pub id: Option<u32>,
    /// Material, e.g. `PLA`.
    pub material: String,
    /// Colour as `#RRGGBB` (sometimes with alpha).
    pub color: String,
    pub used_g: Option<f64>,
    pub used_m: Option<f64>,
}

/// What was found in a plain G-code file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GcodeInfo {
    /// The slicer named in a `; generated by …` / header comment, if any.
    pub slicer: Option<String>,
}

/// The inspection result of either kind of file (stored as JSON with the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum FileInfo {
    #[serde(rename = "3mf")]
    ThreeMf(ThreeMfInfo),
    #[serde(rename = "gcode")]
    Gcode(GcodeInfo),
}

impl FileInfo {
    pub fn kind(&self) -> FileKind {
        match self {
            FileInfo::ThreeMf(_) => FileKind::ThreeMf,
            FileInfo::Gcode(_) => FileKind::Gcode,
        }
    }
    /// Sliced plates (none for plain G-code).
    pub fn plates(&self) -> &[PlateInfo] {
        match self {
            FileInfo::ThreeMf(info) => &info.plates,
            FileInfo::Gcode(_) => &[],
        }
    }
}

/// Inspect a file of the given kind (dispatches to [`inspect`] or [`inspect_gcode`]).
pub fn inspect_file<R: Read + Seek>(
    kind: FileKind,
    reader: R,
    limits: &ZipLimits,
) -> Result<FileInfo, FileError> {
    match kind {
        FileKind::ThreeMf => inspect(reader, limits).map(FileInfo::ThreeMf),
        FileKind::Gcode => inspect_gcode(reader).map(FileInfo::Gcode),
    }
}

/// Refuse `plate` of `info` unless it was sliced for `target`. A plate without a model code
/// cannot be checked here and is accepted (the printer itself refuses a mismatch, 0500_4037).
pub fn check_model(info: &ThreeMfInfo, plate: u32, target: Model) -> Result<(), FileError> {
    let Some(p) = info.plate(plate) else {
        return Err(FileError::NoSuchPlate {
            plate,
            available: info
                .plates
                .iter()
                .map(|p| p.index.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let Some(code) = p.model_code.as_deref() else {
        return Ok(());
    };
    if code == target.model_code() {
        return Ok(());
    }
    let sliced_for = match Model::from_model_code(code) {
        Some(m) => m.display_name().to_string(),
        None => format!(
            "printer model '{}' (a model printgate does not know)",
            printable(code, 32)
        ),
    };
    Err(FileError::WrongModel {
        sliced_for,
        printer: target.display_name().to_string(),
    })
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const SLICE_INFO: &str = "Metadata/slice_info.config";

/// Inspect a sliced 3MF: enforce `limits`, require at least one plate G-code, read every entry
/// (verifying sizes and CRCs) and collect per-plate information.
pub fn inspect<R: Read + Seek>(
    mut reader: R,
    limits: &ZipLimits,
) -> Result<ThreeMfInfo, FileError> {
    let len = reader.seek(SeekFrom::End(0)).map_err(read_error)?;
    if len == 0 {
        return Err(FileError::Empty);
    }
    reader.seek(SeekFrom::Start(0)).map_err(read_error)?;
    let mut magic = [0u8; 4];
    let looks_like_zip = read_up_to(&mut reader, &mut magic).map_err(read_error)? == 4
        && (magic == *b"PK\x03\x04" || magic == *b"PK\x05\x06");
    // Refuse a huge directory before the zip crate allocates one record per entry.
    if let Some(count) = declared_entry_count(&mut reader, len)
        && count > limits.max_entries as u64
    {
        return Err(FileError::TooManyEntries {
            count,
            limit: limits.max_entries,
        });
    }
    reader.seek(SeekFrom::Start(0)).map_err(read_error)?;
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| open_error(e, looks_like_zip))?;
    if archive.len() > limits.max_entries {
        return Err(FileError::TooManyEntries {
            count: archive.len() as u64,
            limit: limits.max_entries,
        });
    }
    if archive.has_duplicate_names() {
        return Err(FileError::Damaged {
            detail: "two entries share one name".into(),
        });
    }

    // All entries together may expand to this much: the total limit, and the overall ratio
    // once past its floor.
    let allowed_total = limits
        .max_total_uncompressed
        .min(OVERALL_RATIO_FLOOR.max(len.saturating_mul(limits.max_overall_ratio)));
    let over_total = || {
        if allowed_total == limits.max_total_uncompressed {
            format!(
                "its entries expand to more than {} in total",
                human_bytes(limits.max_total_uncompressed)
            )
        } else {
            format!(
                "its entries expand to more than {} from a file of {} (more than {}:1 overall)",
                human_bytes(allowed_total),
                human_bytes(len),
                limits.max_overall_ratio
            )
        }
    };

    // Pass 1: names and declared sizes only, nothing decompressed yet.
    let mut entries = Vec::with_capacity(archive.len());
    let mut declared_total: u64 = 0;
    for i in 0..archive.len() {
        let e = archive.by_index_data(i).map_err(|e| entry_error(e, "?"))?;
        let name = e
            .name()
            .map(|n| n.into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(e.name_raw()).into_owned());
        if e.enclosed_name().is_none() || !is_plain_entry_name(&name) {
            return Err(FileError::UnsafeEntryName {
                name: printable(&name, 120),
            });
        }
        if e.encrypted() {
            return Err(FileError::Unsupported {
                detail: format!("entry '{}' is encrypted", printable(&name, 80)),
            });
        }
        let (size, compressed) = (e.size(), e.compressed_size());
        if size > RATIO_CHECK_FLOOR && size / compressed.max(1) > limits.max_ratio {
            return Err(FileError::ZipBomb {
                detail: format!(
                    "entry '{}' declares {} from {} compressed ({}:1, limit {}:1)",
                    printable(&name, 80),
                    human_bytes(size),
                    human_bytes(compressed),
                    size / compressed.max(1),
                    limits.max_ratio
                ),
            });
        }
        declared_total = declared_total.saturating_add(size);
        if declared_total > allowed_total {
            return Err(FileError::ZipBomb {
                detail: over_total().replacen("expand to", "declare", 1),
            });
        }
        entries.push((name, size, e.is_dir()));
    }
    if archive
        .has_overlapping_files()
        .map_err(|e| entry_error(e, "?"))?
    {
        return Err(FileError::ZipBomb {
            detail: "several entries share the same compressed bytes".into(),
        });
    }

    let plate_indexes: Vec<(u32, usize)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, (name, _, is_dir))| {
            (!*is_dir).then(|| plate_gcode_index(name).map(|n| (n, i)))?
        })
        .collect();
    if plate_indexes.is_empty() {
        return Err(FileError::NoPlateGcode);
    }

    // Pass 2: decompress everything (sizes counted, CRCs checked), keep the metadata we need.
    let mut slice_info: Option<Vec<u8>> = None;
    let mut plate_json: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut thumbnails: Vec<u32> = Vec::new();
    let mut actual_total: u64 = 0;
    for (i, (name, declared, is_dir)) in entries.iter().enumerate() {
        if *is_dir {
            continue;
        }
        let keep_limit = if name == SLICE_INFO || plate_file_index(name, ".json").is_some() {
            if *declared > limits.max_metadata_bytes {
                return Err(FileError::Damaged {
                    detail: format!(
                        "'{}' is {}, larger than any slicer writes (limit {})",
                        printable(name, 80),
                        human_bytes(*declared),
                        human_bytes(limits.max_metadata_bytes)
                    ),
                });
            }
            Some(*declared)
        } else if plate_file_index(name, ".png").is_some()
            && *declared <= limits.max_thumbnail_bytes
        {
            Some(*declared)
        } else {
            None
        };
        let mut file = archive.by_index(i).map_err(|e| entry_error(e, name))?;
        let budget = allowed_total.saturating_sub(actual_total);
        let (count, kept) =
            read_bounded(&mut file, name, *declared, budget, &over_total, keep_limit)?;
        actual_total = actual_total.saturating_add(count);
        if let Some(bytes) = kept {
            if name == SLICE_INFO {
                slice_info = Some(bytes);
            } else if let Some(n) = plate_file_index(name, ".json") {
                plate_json.push((n, bytes));
            } else if let Some(n) = plate_file_index(name, ".png")
                && bytes.starts_with(PNG_SIGNATURE)
            {
                thumbnails.push(n);
            }
        }
    }

    let parsed = match &slice_info {
        Some(bytes) => parse_slice_info(bytes)?,
        None => SliceInfo::default(),
    };
    let mut plates: Vec<PlateInfo> = plate_indexes
        .iter()
        .map(|(index, entry)| {
            let meta = parsed.plate(*index);
            PlateInfo {
                index: *index,
                model_code: meta.and_then(|m| m.model_code.clone()),
                prediction_secs: meta.and_then(|m| m.prediction_secs),
                weight_g: meta.and_then(|m| m.weight_g),
                nozzle_diameter_mm: meta.and_then(|m| m.nozzle_diameter_mm),
                filaments: meta.map(|m| m.filaments.clone()).unwrap_or_default(),
                bed_type: plate_json
                    .iter()
                    .find(|(n, _)| n == index)
                    .and_then(|(_, b)| bed_type_of(b)),
                has_thumbnail: thumbnails.contains(index),
                gcode_bytes: entries.get(*entry).map(|e| e.1).unwrap_or(0),
            }
        })
        .collect();
    plates.sort_by_key(|p| p.index);
    if let Some(empty) = plates.iter().find(|p| p.gcode_bytes == 0) {
        return Err(FileError::Damaged {
            detail: format!("Metadata/plate_{}.gcode is empty", empty.index),
        });
    }
    // Every plate's filament list must be usable: a later start maps it to the AMS trays.
    for plate in &plates {
        crate::jobs::filament::requirements(plate).map_err(|e| FileError::Damaged {
            detail: e.to_string(),
        })?;
    }
    Ok(ThreeMfInfo {
        plates,
        slicer_version: parsed.slicer_version,
        entries: entries.len(),
        uncompressed_bytes: actual_total,
    })
}

/// The PNG thumbnail `Metadata/plate_<plate>.png` of a 3MF, if present and within
/// `limits.max_thumbnail_bytes`. Meant for files already accepted by [`inspect`].
pub fn read_thumbnail<R: Read + Seek>(
    reader: R,
    plate: u32,
    limits: &ZipLimits,
) -> Result<Option<Vec<u8>>, FileError> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| open_error(e, true))?;
    let name = format!("Metadata/plate_{plate}.png");
    let mut file = match archive.by_name(&name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(entry_error(e, &name)),
    };
    let declared = file.size();
    if declared > limits.max_thumbnail_bytes || file.encrypted() {
        return Ok(None);
    }
    let over = || format!("'{name}' expands to more than it declares");
    let (_, kept) = read_bounded(&mut file, &name, declared, declared, &over, Some(declared))?;
    Ok(kept.filter(|b| b.starts_with(PNG_SIGNATURE)))
}

/// Basic checks of a plain G-code file: not empty, not binary G-code (`GCDE` magic, which
/// Klipper cannot print), and at least one G-code-looking line in its first 64 KiB. Control
/// bytes are allowed: the file is stored and sent exactly as given, as OctoPrint and Moonraker
/// do (a stray byte in a comment is harmless; Klipper reports a line it cannot parse).
pub fn inspect_gcode<R: Read>(mut reader: R) -> Result<GcodeInfo, FileError> {
    let mut sample = vec![0u8; 64 * 1024];
    let n = read_up_to(&mut reader, &mut sample).map_err(read_error)?;
    sample.truncate(n);
    if sample.is_empty() {
        return Err(FileError::Empty);
    }
    if sample.starts_with(BINARY_GCODE_MAGIC) {
        return Err(FileError::BinaryGcode);
    }
    if sample.starts_with(b"PK\x03\x04") {
        return Err(FileError::NotGcode {
            detail: "it is a zip archive; a sliced 3MF must keep its .gcode.3mf or .3mf name"
                .into(),
        });
    }
    let text = String::from_utf8_lossy(&sample);
    let looks_like_gcode = text.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with(';')
            || l.as_bytes()
                .first()
                .is_some_and(|c| matches!(c.to_ascii_uppercase(), b'G' | b'M' | b'T'))
                && l.as_bytes().get(1).is_some_and(u8::is_ascii_digit)
    });
    if !looks_like_gcode {
        return Err(FileError::NotGcode {
            detail: "no G, M or T command or ; comment in its first 64 KiB".into(),
        });
    }
    let slicer = text
        .lines()
        .take(200)
        .filter_map(|l| l.trim_start().strip_prefix(';'))
        .find_map(|c| {
            let c = c.trim();
            let lower = c.to_ascii_lowercase();
            lower
                .find("generated by ")
                .map(|at| {
                    c.get(at + "generated by ".len()..)
                        .unwrap_or("")
                        .to_string()
                })
                .or_else(|| {
                    (lower.starts_with("bambustudio") || lower.starts_with("orcaslicer"))
                        .then(|| c.to_string())
                })
        })
        .map(|s| printable(&s, 80))
        .filter(|s| !s.is_empty());
    Ok(GcodeInfo { slicer })
}

/// Read one entry to its end, counting the bytes that actually come out. Refuses more than
/// `declared` (a lying header) or more than `budget` (what is left of the total limit, then
/// `over_budget` says why); keeps the bytes when `keep` is `Some`.
fn read_bounded<R: Read>(
    file: &mut R,
    name: &str,
    declared: u64,
    budget: u64,
    over_budget: &dyn Fn() -> String,
    keep: Option<u64>,
) -> Result<(u64, Option<Vec<u8>>), FileError> {
    let cap = declared.min(budget);
    let mut kept = keep.map(|k| Vec::with_capacity(usize::try_from(k.min(1 << 20)).unwrap_or(0)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut count: u64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The zip reader counts too and stops an entry that outgrows its declared size.
            Err(e) if e.to_string().contains("larger than its declared") => {
                return Err(FileError::ZipBomb {
                    detail: format!(
                        "entry '{}' expands to more than the {} it declares",
                        printable(name, 80),
                        human_bytes(declared)
                    ),
                });
            }
            Err(e) => {
                return Err(FileError::Damaged {
                    detail: format!("entry '{}' cannot be read: {e}", printable(name, 80)),
                });
            }
        };
        count = count.saturating_add(n as u64);
        if count > cap {
            let detail = if count > declared {
                format!(
                    "entry '{}' expands to more than the {} it declares",
                    printable(name, 80),
                    human_bytes(declared)
                )
            } else {
                over_budget()
            };
            return Err(FileError::ZipBomb { detail });
        }
        if let (Some(v), Some(chunk)) = (kept.as_mut(), buf.get(..n)) {
            v.extend_from_slice(chunk);
        }
    }
    if count != declared {
        return Err(FileError::Damaged {
            detail: format!(
                "entry '{}' holds {count} bytes but declares {declared}",
                printable(name, 80)
            ),
        });
    }
    Ok((count, kept))
}

/// The number of entries the end-of-central-directory record (or its zip64 version) declares,
/// if one can be found; `None` leaves the verdict to the zip reader.
fn declared_entry_count<R: Read + Seek>(reader: &mut R, len: u64) -> Option<u64> {
    const EOCD_MIN: u64 = 22;
    let tail_len = len.min(EOCD_MIN + 65_535);
    reader.seek(SeekFrom::Start(len - tail_len)).ok()?;
    let mut tail = vec![0u8; usize::try_from(tail_len).ok()?];
    reader.read_exact(&mut tail).ok()?;
    let pos = (0..=tail.len().checked_sub(EOCD_MIN as usize)?)
        .rev()
        .find(|&i| tail.get(i..i + 4) == Some(b"PK\x05\x06"))?;
    let total = u16::from_le_bytes(tail.get(pos + 10..pos + 12)?.try_into().ok()?);
    if total != u16::MAX {
        return Some(u64::from(total));
    }
    // zip64: the locator sits right before the EOCD and points at the zip64 EOCD record.
    let locator = tail.get(pos.checked_sub(20)?..pos)?;
    if locator.get(..4)? != b"PK\x06\x07" {
        return Some(u64::from(total));
    }
    let offset = u64::from_le_bytes(locator.get(8..16)?.try_into().ok()?);
    reader.seek(SeekFrom::Start(offset)).ok()?;
    let mut rec = [0u8; 56];
    reader.read_exact(&mut rec).ok()?;
    if rec.get(..4)? != b"PK\x06\x06" {
        return None;
    }
    Some(u64::from_le_bytes(rec.get(32..40)?.try_into().ok()?))
}

/// Whether an entry name is a plain relative path inside the archive, as slicers write them:
/// no `..` component, not absolute (`/x`), no backslash (a Windows separator, so `..\x` and
/// `\x` are caught too) and no drive letter (`C:`). Such names reach the printer's storage
/// unchanged, so anything else is refused.
fn is_plain_entry_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let drive_letter = bytes.len() >= 2
        && bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && bytes.get(1) == Some(&b':');
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && !drive_letter
        && !name.chars().any(char::is_control)
        && !name.split('/').any(|part| part == "..")
}

/// `N` of `Metadata/plate_<N>.gcode`.
fn plate_gcode_index(name: &str) -> Option<u32> {
    plate_file_index(name, ".gcode")
}

/// `N` of `Metadata/plate_<N><suffix>` (N ≥ 1, decimal).
fn plate_file_index(name: &str, suffix: &str) -> Option<u32> {
    let digits = name.strip_prefix("Metadata/plate_")?.strip_suffix(suffix)?;
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n >= 1)
}

fn bed_type_of(json: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let bed = v.get("bed_type")?.as_str()?;
    let ok = !bed.is_empty()
        && bed.len() <= 64
        && bed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| bed.to_string())
}

#[derive(Default)]
struct SliceInfo {
    slicer_version: Option<String>,
    plates: Vec<SlicePlate>,
}

impl SliceInfo {
    fn plate(&self, index: u32) -> Option<&SlicePlate> {
        self.plates
            .iter()
            .find(|p| p.index == Some(index))
            .or_else(|| {
                // Plates without an explicit index count by position.
                let pos = usize::try_from(index).ok()?.checked_sub(1)?;
                self.plates.get(pos).filter(|p| p.index.is_none())
            })
    }
}

#[derive(Default, Clone)]
struct SlicePlate {
    index: Option<u32>,
    model_code: Option<String>,
    prediction_secs: Option<u64>,
    weight_g: Option<f64>,
    nozzle_diameter_mm: Option<f64>,
    filaments: Vec<FilamentInfo>,
}

const MAX_PLATES: usize = 1000;
const MAX_FILAMENTS: usize = 256;

fn parse_slice_info(bytes: &[u8]) -> Result<SliceInfo, FileError> {
    use quick_xml::events::Event;
    let bad = |detail: String| FileError::Damaged {
        detail: format!("{SLICE_INFO} is not valid: {detail}"),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut info = SliceInfo::default();
    let mut current: Option<SlicePlate> = None;
    loop {
        let event = reader.read_event().map_err(|e| bad(e.to_string()))?;
        match event {
            Event::Eof => break,
            Event::Start(e) if e.local_name().as_ref() == "plate" => {
                current = Some(SlicePlate::default());
            }
            Event::End(e) if e.local_name().as_ref() == "plate" => {
                if let Some(p) = current.take()
                    && info.plates.len() < MAX_PLATES
                {
                    info.plates.push(p);
                }
            }
            Event::Start(e) | Event::Empty(e) => {
                let attrs = attributes(&e).map_err(bad)?;
                let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                match (e.local_name().as_ref(), current.as_mut()) {
                    ("header_item", _) if get("key") == Some("X-BBL-Client-Version") => {
                        info.slicer_version = get("value").map(|v| printable(v, 40));
                    }
                    ("metadata", Some(p)) => {
                        let value = get("value").unwrap_or("");
                        match get("key") {
                            Some("index") => p.index = value.trim().parse().ok(),
                            Some("printer_model_id") => {
                                let v = value.trim();
                                p.model_code = (!v.is_empty()).then(|| printable(v, 32));
                            }
                            Some("prediction") => p.prediction_secs = parse_secs(value),
                            Some("weight") => p.weight_g = parse_amount(value),
                            Some("nozzle_diameters") => {
                                p.nozzle_diameter_mm =
                                    value.split(',').next().and_then(parse_amount);
                            }
                            _ => {}
                        }
                    }
                    ("filament", Some(p)) if p.filaments.len() < MAX_FILAMENTS => {
                        p.filaments.push(FilamentInfo {
                            id: get("id").and_then(|v| v.trim().parse().ok()),
                            material: printable(get("type").unwrap_or(""), 32),
                            color: printable(get("color").unwrap_or(""), 16),
                            used_g: get("used_g").and_then(parse_amount),
                            used_m: get("used_m").and_then(parse_amount),
                        });
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

fn attributes(e: &quick_xml::events::BytesStart<'_>) -> Result<Vec<(String, String)>, String> {
    e.attributes()
        .map(|a| {
            let a = a.map_err(|e| e.to_string())?;
            let key = a.key.local_name().as_ref().to_string();
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| e.to_string())?
                .into_owned();
            Ok((key, value))
        })
        .collect()
}

fn parse_amount(s: &str) -> Option<f64> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

fn parse_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    s.parse::<u64>().ok().or_else(|| {
        parse_amount(s)
            .filter(|v| *v < 1e12)
            .map(|v| v.round() as u64)
    })
}

fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(rest) = buf.get_mut(filled..) else {
            break;
        };
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn read_error(e: std::io::Error) -> FileError {
    FileError::Io {
        detail: format!("reading the uploaded file failed: {e}"),
    }
}

fn open_error(e: zip::result::ZipError, looks_like_zip: bool) -> FileError {
    use zip::result::ZipError;
    match e {
        ZipError::UnsupportedArchive(what) => FileError::Unsupported {
            detail: what.to_string(),
        },
        ZipError::CompressionMethodNotSupported(m) => FileError::Unsupported {
            detail: format!("compression method {m}"),
        },
        ZipError::Io(io) if !matches!(io.kind(), std::io::ErrorKind::UnexpectedEof) => {
            read_error(io)
        }
        _ if looks_like_zip => FileError::Truncated,
        _ => FileError::NotAZip,
    }
}

fn entry_error(e: zip::result::ZipError, name: &str) -> FileError {
    use zip::result::ZipError;
    match e {
        ZipError::UnsupportedArchive(what) => FileError::Unsupported {
            detail: what.to_string(),
        },
        ZipError::CompressionMethodNotSupported(m) => FileError::Unsupported {
            detail: format!(
                "entry '{}' uses compression method {m}",
                printable(name, 80)
            ),
        },
        other => FileError::Damaged {
            detail: format!("entry '{}': {other}", printable(name, 80)),
        },
    }
}

/// `s` without control characters, at most `max` characters (for names from inside files
/// that end up in messages and JSON).
pub(crate) fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// `1.5 MiB`-style size for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let name = UNITS.get(unit).copied().unwrap_or("bytes");
    if v.fract() == 0.0 {
        format!("{v:.0} {name}")
    } else {
        format!("{v:.1} {name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name() {
        assert_eq!(FileKind::from_name("a.gcode.3mf"), Ok(FileKind::ThreeMf));
        assert_eq!(FileKind::from_name("A.3MF"), Ok(FileKind::ThreeMf));
        assert_eq!(FileKind::from_name("x.GCODE"), Ok(FileKind::Gcode));
        assert_eq!(FileKind::from_name("x.gco"), Ok(FileKind::Gcode));
        assert_eq!(FileKind::from_name("x.G"), Ok(FileKind::Gcode));
        assert_eq!(FileKind::from_name("x.bgcode"), Err(FileError::BinaryGcode));
        assert!(matches!(
            FileKind::from_name("x.stl"),
            Err(FileError::UnsupportedExtension { .. })
        ));
    }

    #[test]
    fn plate_names() {
        assert_eq!(plate_gcode_index("Metadata/plate_1.gcode"), Some(1));
        assert_eq!(plate_gcode_index("Metadata/plate_12.gcode"), Some(12));
        assert_eq!(plate_gcode_index("Metadata/plate_0.gcode"), None);
        assert_eq!(plate_gcode_index("Metadata/plate_1.gcode.md5"), None);
        assert_eq!(plate_gcode_index("Metadata/plate_x.gcode"), None);
        assert_eq!(plate_gcode_index("plate_1.gcode"), None);
    }

    #[test]
    fn slice_info_parses() {
        let xml = br##"<?xml version="1.0" encoding="UTF-8"?>
<config><header><header_item key="X-BBL-Client-Version" value="01.09.07.52"/></header>
<plate><metadata key="index" value="2"/><metadata key="printer_model_id" value="C12"/>
<metadata key="nozzle_diameters" value="0.4"/><metadata key="prediction" value="2718"/>
<metadata key="weight" value="12.34"/>
<filament id="1" tray_info_idx="GFA00" type="PLA" color="#FFFFFF" used_m="4.12" used_g="12.34"/>
</plate></config>"##;
        let info = parse_slice_info(xml).expect("parses");
        assert_eq!(info.slicer_version.as_deref(), Some("01.09.07.52"));
        let p = info.plate(2).expect("plate 2");
        assert_eq!(p.model_code.as_deref(), Some("C12"));
        assert_eq!(p.prediction_secs, Some(2718));
        assert_eq!(p.weight_g, Some(12.34));
        assert_eq!(p.nozzle_diameter_mm, Some(0.4));
        assert_eq!(p.filaments.len(), 1);
        assert_eq!(p.filaments[0].material, "PLA");
    }

    #[test]
    fn gcode_checks() {
        assert!(inspect_gcode(&b"; generated by PrusaSlicer 2.7\nG28\n"[..]).is_ok());
        assert_eq!(inspect_gcode(&b""[..]), Err(FileError::Empty));
        // Control bytes are kept as given (OctoPrint stores them too).
        assert!(inspect_gcode(&b"G28\0\0\0\n; \x01\x02\x1b\x7f\nG1 X1\n"[..]).is_ok());
        assert_eq!(
            inspect_gcode(&b"GCDE\x01\0\0\0\x01\0"[..]),
            Err(FileError::BinaryGcode)
        );
        assert!(matches!(
            inspect_gcode(&b"PK\x03\x04G28\n"[..]),
            Err(FileError::NotGcode { .. })
        ));
        assert!(matches!(
            inspect_gcode(&b"hello world\n"[..]),
            Err(FileError::NotGcode { .. })
        ));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(100 * 1024 * 1024), "100 MiB");
    }
}
