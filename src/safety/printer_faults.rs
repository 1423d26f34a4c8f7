//! The printer's own fault reports that trip safety exactly like the thermal watchdog (docs/architecture.md
//! I5; docs/bambu-protocol.md §6.2–§6.3): heater and thermistor faults, over-temperature, a chamber too hot
//! and fire. Pure: [`new_faults`] compares two reports; the runtime trips on what it returns.
//!
//! The firmware has already switched its heaters off when it reports these; cutting mains power
//! is the second layer for when the printer's own controller is what failed (a stuck MOSFET
//! keeps heating whatever the firmware decides).

use crate::printer::bambu::errors::{FIRE_DETECTED, describe_hms, describe_print_error};
use crate::printer::{HmsEntry, PrinterState};
use crate::safety::latch::SafetyCause;

/// HMS entries that trip: heatbed (0300_0100_0001_0001…0007) and nozzle
/// (0300_0200_0001_0001…0009) temperature abnormal or over temperature, the H2D's left nozzle
/// (0300_1E00_0001_xxxx), chamber temperature too high (0300_9000_0001_0007, 0300_A100_0001_0001).
pub fn hms_trips(entry: &HmsEntry) -> bool {
    let (module, kind) = (entry.code >> 16, entry.code & 0xFFFF);
    matches!(
        (entry.attr, module, kind),
        (0x0300_0100, 0x0001, 0x0001..=0x0007)
            | (0x0300_0200, 0x0001, 0x0001..=0x0009)
            | (0x0300_1E00, 0x0001, _)
            | (0x0300_9000, 0x0001, 0x0007)
            | (0x0300_A100, 0x0001, 0x0001)
    )
}

/// `print_error` codes that trip: fire detected inside the chamber (0300_8044, H2).
pub fn print_error_trips(code: u32) -> bool {
    code == FIRE_DETECTED
}

/// The tripping faults `next` reports that `prev` did not: a latched fault trips once when it
/// appears (and again only if it clears and comes back), so a person's reset is not undone by
/// the same report a second later.
pub fn new_faults(
    printer: &str,
    prev: Option<&PrinterState>,
    next: &PrinterState,
) -> Vec<SafetyCause> {
    let had_hms = |e: &HmsEntry| prev.is_some_and(|p| p.hms.contains(e));
    let mut out: Vec<SafetyCause> = next
        .hms
        .iter()
        .filter(|e| hms_trips(e) && !had_hms(e))
        .map(|e| SafetyCause::PrinterFault {
            printer: printer.to_string(),
            code: e.display_code(),
            text: describe_hms(e),
        })
        .collect();
    let code = next.print_error;
    if print_error_trips(code) && prev.is_none_or(|p| p.print_error != code) {
        out.push(SafetyCause::PrinterFault {
            printer: printer.to_string(),
            code: crate::printer::bambu::errors::print_error_display(code),
            text: describe_print_error(code),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hms(attr: u32, code: u32) -> HmsEntry {
        HmsEntry { attr, code }
    }

    fn state(hms: Vec<HmsEntry>, print_error: u32) -> PrinterState {
        PrinterState {
            hms,
            print_error,
            ..PrinterState::default()
        }
    }

    /// Every code of docs/bambu-protocol.md §6.3 marked "safety trip", and §6.2's fire code.
    pub fn tripping_codes() -> (Vec<HmsEntry>, Vec<u32>) {
        let mut entries = Vec::new();
        entries.extend((1..=7).map(|k| hms(0x0300_0100, 0x0001_0000 | k)));
        entries.extend((1..=9).map(|k| hms(0x0300_0200, 0x0001_0000 | k)));
        entries.push(hms(0x0300_1E00, 0x0001_0003));
        entries.push(hms(0x0300_9000, 0x0001_0007));
        entries.push(hms(0x0300_A100, 0x0001_0001));
        (entries, vec![FIRE_DETECTED])
    }

    #[test]
    fn every_listed_fault_trips_once_when_it_appears() {
        let (entries, errors) = tripping_codes();
        for e in entries {
            let causes = new_faults("p", Some(&state(vec![], 0)), &state(vec![e], 0));
            assert_eq!(causes.len(), 1, "{}", e.display_code());
            let SafetyCause::PrinterFault {
                printer,
                code,
                text,
            } = &causes[0]
            else {
                panic!("{causes:?}")
            };
            assert_eq!(printer, "p");
            assert_eq!(code, &e.display_code());
            assert!(text.contains("temperature"), "{text}");
            assert!(
                new_faults("p", Some(&state(vec![e], 0)), &state(vec![e], 0)).is_empty(),
                "still latched: no second trip"
            );
        }
        for c in errors {
            let causes = new_faults("p", None, &state(vec![], c));
            assert_eq!(causes.len(), 1);
            assert!(
                causes[0].describe().contains("FIRE"),
                "{:?}",
                causes[0].describe()
            );
        }
    }

    #[test]
    fn other_health_messages_and_errors_do_not_trip() {
        let harmless = [
            hms(0x0500_0500, 0x0001_0007), // verification failed
            hms(0x0300_9600, 0x0001_0001), // door open
            hms(0x0500_0400, 0x0003_0008), // door seems open
            hms(0x0300_0100, 0x0001_0008), // not a listed heatbed code
            hms(0x0300_0200, 0x0002_0003), // nozzle, other module word
            hms(0x0700_0100, 0x0001_0003), // AMS
        ];
        for e in harmless {
            assert!(
                new_faults("p", None, &state(vec![e], 0)).is_empty(),
                "{}",
                e.display_code()
            );
        }
        for c in [
            0x0300_400C,
            0x0500_4004,
            0x0300_8001,
            0x0300_800F,
            0x0300_8007,
        ] {
            assert!(
                new_faults("p", None, &state(vec![], c)).is_empty(),
                "{c:08X}"
            );
        }
    }
}
