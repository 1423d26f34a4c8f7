//! Bambu error and HMS codes (docs/bambu-protocol.md §6): display formats, readable English text for the
//! codes printgate reacts to, severities, and the predicates the dispatcher and the safety
//! watchdog use ("does this block a start?", "is this a Developer Mode refusal?", "is this a
//! thermal fault?"). Pure functions, no I/O.

use crate::printer::state::{CommandAck, HmsEntry, PrinterState};
use std::time::Duration;

/// How long a cancel echo (`0300_400C` / `0500_400E`) may linger in `print_error` before it is
/// treated as a real error that blocks starts. Printers clear it "after a few seconds".
pub const CANCEL_ECHO_GRACE: Duration = Duration::from_secs(10);

/// `print_error` values that echo a user's cancel, not a fault.
pub const CANCELLED_TASK: u32 = 0x0300_400C;
pub const PRINTING_CANCELLED: u32 = 0x0500_400E;
/// `print_error` for "device busy, cannot start a new task".
pub const DEVICE_BUSY: u32 = 0x0500_4004;
/// `print_error` for "fire detected inside the chamber" (H2).
pub const FIRE_DETECTED: u32 = 0x0300_8044;

/// HMS "MQTT command verification failed" (unsigned command refused), 0500_0500_0001_0007.
pub const HMS_VERIFY_FAILED: HmsEntry = HmsEntry {
    attr: 0x0500_0500,
    code: 0x0001_0007,
};

/// Ack `err_code`s that mean the printer wants signed commands (§6.4).
pub const ERR_NO_SIGNATURE: u64 = 84_033_543;
pub const ERR_MALFORMED_SIGNATURE: u64 = 84_033_545;
/// Ack `err_code` for a reused `sequence_id`.
pub const ERR_SEQUENCE_REUSED: u64 = 84_033_544;

/// HMS severity (`code >> 16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Fatal,
    Serious,
    Common,
    Info,
    /// A value outside 1–4.
    Unknown,
}

impl Severity {
    pub fn of(entry: &HmsEntry) -> Self {
        match entry.code >> 16 {
            1 => Self::Fatal,
            2 => Self::Serious,
            3 => Self::Common,
            4 => Self::Info,
            _ => Self::Unknown,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Serious => "serious",
            Self::Common => "common",
            Self::Info => "info",
            Self::Unknown => "unknown",
        }
    }
}

/// `print_error` as 8 uppercase hex digits split 4+4: 50348044 → `0300_400C`.
pub fn print_error_display(code: u32) -> String {
    let hex = format!("{code:08X}");
    // `{:08X}` of a u32 is always exactly 8 ASCII digits.
    let (high, low) = hex.split_at(4);
    format!("{high}_{low}")
}

/// HMS entry as `AAAA_BBBB_CCCC_DDDD` (never shortened).
pub fn hms_display(entry: &HmsEntry) -> String {
    entry.display_code()
}

/// Readable English text for the `print_error` codes of docs/bambu-protocol.md §6.2.
pub fn print_error_text(code: u32) -> Option<&'static str> {
    Some(match code {
        0x0500_4004 => "device busy, cannot start a new task",
        0x0500_4005 => "no print jobs can be started while the firmware is updating",
        0x0500_4002 => "unsupported print file path or name",
        0x0500_400A => "file name not supported; use a short ASCII name",
        0x0500_4003 => "the printer could not parse the print file",
        0x0500_400B => "problem downloading a file",
        0x0500_403F => "failed to download the print job (wrong MD5 or bad URL)",
        0x0500_400C => "insert a MicroSD card",
        0x0500_4006 | 0x0500_4015 => "not enough free storage; clean up the card",
        0x0500_4016 => "the storage card is write-protected",
        0x0500_C010 => "storage read/write exception",
        0x0500_8013 => "the print file is not available (media removed)",
        0x0500_4037 => "the file was sliced for another printer model",
        0x0500_4038 => "the file was sliced for another nozzle diameter",
        0x0500_8051 => "the detected build plate differs from the one in the file; job paused",
        0x0500_400E => "printing was cancelled",
        0x0300_400C => "the task was cancelled",
        0x0300_4000 => "Z homing failed; task stopped",
        0x0300_4002 => "auto bed levelling failed; task stopped",
        0x0700_8012 | 0x07FF_8012 => "failed to get the AMS mapping table",
        0x0300_8001 => "paused by the user",
        0x0300_800F | 0x0300_8042 => "door open; printing paused",
        0x0300_404B => "task aborted: front door or top cover open",
        0x0300_8007 => "unfinished job after power loss (the printer offers to resume)",
        0x0300_400D => "resume after power loss failed",
        0x0300_8044 => "FIRE DETECTED inside the chamber",
        0x0500_C07F => "device busy; pause or stop the current task first",
        _ => return None,
    })
}

/// Readable English text for the HMS codes of docs/bambu-protocol.md §6.3.
pub fn hms_text(entry: &HmsEntry) -> Option<&'static str> {
    let code_hi = entry.code >> 16;
    let code_lo = entry.code & 0xFFFF;
    Some(match (entry.attr, code_hi, code_lo) {
        (0x0500_0500, 0x0001, 0x0007) => {
            "MQTT command verification failed: the printer refuses unsigned commands (enable LAN Only + Developer Mode)"
        }
        (0x0300_0100, 0x0001, 0x0003) => "heatbed over temperature",
        (0x0300_0100, 0x0001, 1..=7) => "heatbed temperature abnormal (heater or sensor fault)",
        (0x0300_0200, 0x0001, 0x0003) => "nozzle over temperature",
        (0x0300_0200, 0x0001, 1..=9) => "nozzle temperature abnormal (heater or sensor fault)",
        (0x0300_1E00, 0x0001, _) => "left nozzle temperature abnormal",
        (0x0300_9000, 0x0001, 0x0007) | (0x0300_A100, 0x0001, 0x0001) => {
            "chamber temperature too high"
        }
        (0x0300_9600, 0x0001, 0x0001) => "front door open; task paused",
        (0x0300_9600, 0x0003, 0x0001) => "door open",
        (0x0500_0400, 0x0003, 0x0008) => "the door seems to be open",
        _ => return None,
    })
}

/// One line for the UI: `0300_400C: the task was cancelled` (or just the code if unknown).
pub fn describe_print_error(code: u32) -> String {
    match print_error_text(code) {
        Some(text) => format!("{}: {text}", print_error_display(code)),
        None => format!(
            "{}: printer error (see the printer screen)",
            print_error_display(code)
        ),
    }
}

/// One line for the UI: `0300_0200_0001_0003 (fatal): nozzle over temperature`.
pub fn describe_hms(entry: &HmsEntry) -> String {
    let sev = Severity::of(entry).as_str();
    match hms_text(entry) {
        Some(text) => format!("{} ({sev}): {text}", hms_display(entry)),
        None => format!(
            "{} ({sev}): printer health message (see the printer screen)",
            hms_display(entry)
        ),
    }
}

/// A user's cancel echoed in `print_error` (not a fault).
pub fn is_cancel_echo(code: u32) -> bool {
    matches!(code, CANCELLED_TASK | PRINTING_CANCELLED)
}

/// Whether `print_error` blocks a start. `error_age` is how long the current non-zero value has
/// been showing: a cancel echo is tolerated for [`CANCEL_ECHO_GRACE`], anything else blocks.
pub fn print_error_blocks_start(code: u32, error_age: Duration) -> bool {
    if code == 0 {
        return false;
    }
    !(is_cancel_echo(code) && error_age < CANCEL_ECHO_GRACE)
}

/// Fatal or serious HMS entries block starts (severity 1–2).
pub fn hms_blocks_start(hms: &[HmsEntry]) -> bool {
    hms.iter().any(HmsEntry::blocks_start)
}

/// Error conditions in a state that forbid starting a job (I4); `error_age` as for
/// [`print_error_blocks_start`]. Returns readable reasons, empty when nothing blocks.
pub fn start_blockers(state: &PrinterState, error_age: Duration) -> Vec<String> {
    let mut out = Vec::new();
    if print_error_blocks_start(state.print_error, error_age) {
        out.push(describe_print_error(state.print_error));
    }
    out.extend(
        state
            .hms
            .iter()
            .filter(|e| e.blocks_start())
            .map(describe_hms),
    );
    out
}

/// An ack that says the printer refused an unsigned command (§10.3 signal 3).
pub fn is_developer_mode_refusal_ack(ack: &CommandAck) -> bool {
    if matches!(
        ack.err_code,
        Some(ERR_NO_SIGNATURE | ERR_MALFORMED_SIGNATURE)
    ) {
        return true;
    }
    ack.success == Some(false)
        && ack
            .reason
            .as_deref()
            .is_some_and(|r| r.to_ascii_lowercase().contains("verify failed"))
}

/// HMS 0500_0500_0001_0007 (§10.3 signal 4).
pub fn is_developer_mode_refusal_hms(entry: &HmsEntry) -> bool {
    *entry == HMS_VERIFY_FAILED
}

/// Heater/sensor faults that trip safety (I5): heatbed 0300_0100_0001_000x, nozzle
/// 0300_0200_0001_000x, left nozzle (H2) 0300_1E00_….
pub fn is_thermal_fault_hms(entry: &HmsEntry) -> bool {
    let code_hi = entry.code >> 16;
    match entry.attr {
        0x0300_0100 | 0x0300_0200 => code_hi == 0x0001,
        0x0300_1E00 => true,
        _ => false,
    }
}

/// Chamber over-temperature HMS (alert or trip, per configuration).
pub fn is_chamber_overtemp_hms(entry: &HmsEntry) -> bool {
    matches!(
        (entry.attr, entry.code),
        (0x0300_9000, 0x0001_0007) | (0x0300_A100, 0x0001_0001)
    )
}

/// `print_error` values that trip safety: fire detected (0300_8044).
pub fn is_thermal_fault_print_error(code: u32) -> bool {
    code == FIRE_DETECTED
}

/// Any thermal fault in a state (HMS or `print_error`).
pub fn has_thermal_fault(state: &PrinterState) -> bool {
    is_thermal_fault_print_error(state.print_error) || state.hms.iter().any(is_thermal_fault_hms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hms(attr: u32, code: u32) -> HmsEntry {
        HmsEntry { attr, code }
    }

    #[test]
    fn print_error_is_split_eight_digits() {
        assert_eq!(print_error_display(50_348_044), "0300_400C");
        assert_eq!(print_error_display(0x0500_4004), "0500_4004");
        assert_eq!(print_error_display(0x1234_ABCD), "1234_ABCD");
        assert_eq!(print_error_display(2), "0000_0002");
        assert_eq!(print_error_display(u32::MAX), "FFFF_FFFF");
    }

    #[test]
    fn hms_is_never_shortened() {
        assert_eq!(hms_display(&HMS_VERIFY_FAILED), "0500_0500_0001_0007");
    }

    #[test]
    fn decimal_codes_of_the_table_have_text() {
        for dec in [
            83_902_468u32,
            83_902_469,
            83_902_466,
            83_902_474,
            83_902_467,
            83_902_475,
            83_902_527,
            83_902_476,
            83_902_470,
            83_902_485,
            83_902_486,
            83_935_248,
            83_918_867,
            83_902_519,
            83_902_520,
            83_918_929,
            83_902_478,
            50_348_044,
            50_348_032,
            50_348_034,
            117_473_298,
            134_184_978,
            50_364_417,
            50_364_431,
            50_364_482,
            50_348_107,
            50_364_423,
            50_348_045,
            50_364_484,
            83_935_359,
        ] {
            assert!(
                print_error_text(dec).is_some(),
                "{}",
                print_error_display(dec)
            );
        }
        assert_eq!(print_error_text(0x0300_0002), None);
    }

    #[test]
    fn hms_texts_and_severity() {
        let e = hms(0x0300_0200, 0x0001_0003);
        assert_eq!(hms_text(&e), Some("nozzle over temperature"));
        assert_eq!(Severity::of(&e), Severity::Fatal);
        assert!(describe_hms(&e).starts_with("0300_0200_0001_0003 (fatal)"));
        assert_eq!(Severity::of(&hms(0, 0x0004_0001)), Severity::Info);
        assert_eq!(Severity::of(&hms(0, 0x0009_0001)), Severity::Unknown);
        assert!(hms_text(&hms(0x0300_9600, 0x0003_0001)).is_some());
    }

    #[test]
    fn cancel_echo_only_tolerated_briefly() {
        assert!(!print_error_blocks_start(0, Duration::from_secs(100)));
        assert!(!print_error_blocks_start(
            CANCELLED_TASK,
            Duration::from_secs(2)
        ));
        assert!(print_error_blocks_start(
            CANCELLED_TASK,
            Duration::from_secs(30)
        ));
        assert!(!print_error_blocks_start(
            PRINTING_CANCELLED,
            Duration::ZERO
        ));
        assert!(print_error_blocks_start(DEVICE_BUSY, Duration::ZERO));
    }

    #[test]
    fn serious_hms_blocks_common_does_not() {
        assert!(hms_blocks_start(&[hms(0x0300_0100, 0x0001_0003)]));
        assert!(hms_blocks_start(&[hms(0x0700_0100, 0x0002_0001)]));
        assert!(!hms_blocks_start(&[hms(0x0500_0400, 0x0003_0008)]));
        assert!(!hms_blocks_start(&[hms(0x0C00_0100, 0x0004_0001)]));
        let state = PrinterState {
            print_error: DEVICE_BUSY,
            hms: vec![hms(0x0300_0200, 0x0001_0003), hms(0x0500_0400, 0x0003_0008)],
            ..Default::default()
        };
        let reasons = start_blockers(&state, Duration::ZERO);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("0500_4004"));
    }

    #[test]
    fn developer_mode_refusals() {
        let ack = |success, reason: Option<&str>, err_code| CommandAck {
            command: "project_file".into(),
            sequence_id: "1".into(),
            success,
            reason: reason.map(str::to_string),
            err_code,
        };
        assert!(is_developer_mode_refusal_ack(&ack(
            Some(false),
            Some("mqtt message verify failed"),
            None
        )));
        assert!(is_developer_mode_refusal_ack(&ack(
            None,
            None,
            Some(84_033_543)
        )));
        assert!(is_developer_mode_refusal_ack(&ack(
            None,
            None,
            Some(84_033_545)
        )));
        assert!(!is_developer_mode_refusal_ack(&ack(
            Some(false),
            Some("ERROR STATE"),
            None
        )));
        assert!(!is_developer_mode_refusal_ack(&ack(
            Some(true),
            Some("success"),
            None
        )));
        assert!(!is_developer_mode_refusal_ack(&ack(
            None,
            None,
            Some(ERR_SEQUENCE_REUSED)
        )));
        assert!(is_developer_mode_refusal_hms(&hms(
            0x0500_0500,
            0x0001_0007
        )));
        assert!(!is_developer_mode_refusal_hms(&hms(
            0x0500_0500,
            0x0001_0008
        )));
    }

    #[test]
    fn thermal_faults() {
        for e in [
            hms(0x0300_0100, 0x0001_0001),
            hms(0x0300_0100, 0x0001_0003),
            hms(0x0300_0200, 0x0001_0009),
            hms(0x0300_1E00, 0x0001_0003),
        ] {
            assert!(is_thermal_fault_hms(&e), "{}", e.display_code());
        }
        assert!(!is_thermal_fault_hms(&hms(0x0300_0200, 0x0002_0003)));
        assert!(!is_thermal_fault_hms(&HMS_VERIFY_FAILED));
        assert!(is_chamber_overtemp_hms(&hms(0x0300_9000, 0x0001_0007)));
        assert!(is_thermal_fault_print_error(0x0300_8044));
        assert!(!is_thermal_fault_print_error(CANCELLED_TASK));
        let state = PrinterState {
            print_error: FIRE_DETECTED,
            ..Default::default()
        };
        assert!(has_thermal_fault(&state));
        assert!(!has_thermal_fault(&PrinterState::default()));
    }
}
