//! Filament slots from a merged Bambu report: the AMS units and trays of `print.ams`, the
//! external spool of `print.vt_tray` (or `print.vir_slot` on newer firmware, one per nozzle)
//! and which tray feeds a nozzle now. Pure, bounded and lenient: a field that is missing or
//! unreadable stays `None`, nothing panics on hostile input.
//!
//! What the fields mean was read from real reports (ha-bambulab's captures of P1P, A1, X1C
//! with AMS + AMS HT, P2S and H2D; tests/fixtures/bambu/ams/) and from how ha-bambulab and
//! Bambu Studio interpret them:
//! - a tray object holding only its `id` is an empty slot (P1/A1 firmware); newer firmware
//!   sends a `state` word: bit 0 = spool present, and from firmware that sets bit 3
//!   ("steady") on, a spool counts as loaded only while it is steady (not being loaded or
//!   read); the old values 0–3 mean loaded only at 3;
//! - `humidity` is a level 1–5 where 5 is dry (Bambu's apps show `6 - humidity`),
//!   `humidity_raw` the relative humidity in percent, `dry_time` the drying minutes left;
//! - `tray_now` is the global tray id (`unit * 4 + slot`, AMS HT = its unit id 128–135,
//!   254 = external spool, 255 = none); dual-nozzle models report per nozzle in
//!   `device.extruder.info[].snow` = `unit << 8 | slot` (`0xFF00` = external spool 255,
//!   slot `0xFF` = none).

use super::report::{as_f64, as_u32, as_u64};
use crate::printer::Model;
use crate::printer::state::{AmsKind, AmsUnit, FilamentSlots, Tray};
use serde_json::Value;

/// Most AMS units read from one report (4 AMS + 8 AMS HT is the largest documented setup).
const MAX_UNITS: usize = 16;
/// Most trays read from one unit.
const MAX_TRAYS: usize = 8;
/// Most external spool holders read.
const MAX_EXTERNAL: usize = 4;
/// Longest material, brand or preset text kept.
const MAX_TEXT: usize = 40;

/// `tray_now` / `snow` value meaning "no tray".
const NONE: u32 = 255;
/// `tray_now` value meaning "the external spool".
const EXTERNAL: u32 = 254;

/// The filament slots of the `print` object of a merged report; `None` when it carries no
/// `ams`, `vt_tray` or `vir_slot` at all.
pub fn filament_slots(print: &Value, model: Model) -> Option<FilamentSlots> {
    let ams = print.get("ams").filter(|v| v.is_object());
    let vir_slot = print.get("vir_slot").and_then(Value::as_array);
    let vt_tray = print.get("vt_tray").filter(|v| v.is_object());
    if ams.is_none() && vir_slot.is_none() && vt_tray.is_none() {
        return None;
    }
    let units = ams
        .and_then(|a| a.get("ams"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .take(MAX_UNITS)
                .enumerate()
                .filter_map(|(i, u)| unit(u, i, model))
                .collect()
        })
        .unwrap_or_default();
    let external: Vec<Tray> = match vir_slot.filter(|s| !s.is_empty()) {
        Some(slots) => slots
            .iter()
            .take(MAX_EXTERNAL)
            .filter_map(external_spool)
            .collect(),
        None => vt_tray.and_then(external_spool).into_iter().collect(),
    };
    let mut slots = FilamentSlots { units, external };
    let snows: Vec<u32> = print
        .get("device")
        .and_then(|d| d.get("extruder"))
        .and_then(|e| e.get("info"))
        .and_then(Value::as_array)
        .map(|info| {
            info.iter()
                .take(MAX_EXTERNAL)
                .filter_map(|e| e.get("snow").and_then(as_u32))
                .collect()
        })
        .unwrap_or_default();
    if snows.is_empty() {
        if let Some(now) = ams.and_then(|a| a.get("tray_now")).and_then(as_u32) {
            mark_tray_now(&mut slots, now);
        }
    } else {
        for snow in snows {
            mark_snow(&mut slots, snow);
        }
    }
    Some(slots)
}

fn unit(v: &Value, position: usize, model: Model) -> Option<AmsUnit> {
    let obj = v.as_object()?;
    let id = obj
        .get("id")
        .and_then(as_u32)
        .or_else(|| u32::try_from(position).ok())?;
    let kind = if (128..=135).contains(&id) {
        AmsKind::AmsHt
    } else if matches!(model, Model::A1 | Model::A1Mini) {
        AmsKind::AmsLite
    } else {
        AmsKind::Ams
    };
    let trays = obj
        .get("tray")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .take(MAX_TRAYS)
                .enumerate()
                .filter_map(|(i, t)| ams_tray(t, id, i))
                .collect()
        })
        .unwrap_or_default();
    Some(AmsUnit {
        id,
        kind,
        humidity_level: obj
            .get("humidity")
            .and_then(as_u64)
            .filter(|h| (1..=5).contains(h))
            .and_then(|h| u8::try_from(6 - h).ok()),
        humidity_percent: obj
            .get("humidity_raw")
            .and_then(as_u64)
            .filter(|h| (1..=100).contains(h))
            .and_then(|h| u8::try_from(h).ok()),
        // P1-era AMS units have no sensor and report "0.0".
        temp_c: obj
            .get("temp")
            .and_then(as_f64)
            .filter(|t| *t != 0.0 && (-40.0..=150.0).contains(t)),
        drying_minutes_left: obj
            .get("dry_time")
            .and_then(as_u32)
            .filter(|m| *m > 0 && *m < 100_000),
        trays,
    })
}

/// The id `ams_mapping` uses for `slot` of unit `unit`.
fn mapping_id(unit: u32, slot: u32) -> Option<u32> {
    match unit {
        0..=3 if slot < 4 => Some(unit * 4 + slot),
        128..=135 if slot == 0 => Some(unit),
        _ => None,
    }
}

/// A spool is loaded per the tray's `state` word (see the module comment).
fn loaded_by_state(state: u64) -> bool {
    if state & 0x01 == 0 {
        false
    } else if state <= 3 {
        state == 3
    } else {
        state & 0x08 != 0
    }
}

fn ams_tray(v: &Value, unit: u32, position: usize) -> Option<Tray> {
    let obj = v.as_object()?;
    let slot = obj
        .get("id")
        .and_then(as_u32)
        .or_else(|| u32::try_from(position).ok())?;
    let material = obj.get("tray_type").and_then(text);
    let loaded = match obj.get("state").and_then(as_u64) {
        Some(state) => loaded_by_state(state),
        None => material.is_some(),
    };
    Some(filled(
        Tray {
            unit: Some(unit),
            slot,
            mapping_id: mapping_id(unit, slot),
            loaded,
            material: None,
            sub_brand: None,
            filament_id: None,
            color: None,
            remain_percent: None,
            active: false,
        },
        obj,
    ))
}

fn external_spool(v: &Value) -> Option<Tray> {
    let obj = v.as_object()?;
    let id = obj.get("id").and_then(as_u32).unwrap_or(EXTERNAL);
    let loaded = obj.get("tray_type").and_then(text).is_some();
    let mut tray = filled(
        Tray {
            unit: None,
            slot: id,
            mapping_id: matches!(id, 254 | 255).then_some(id),
            loaded,
            material: None,
            sub_brand: None,
            filament_id: None,
            color: None,
            remain_percent: None,
            active: false,
        },
        obj,
    );
    // Nothing measures an external spool: its `remain` is always 0 in the captures.
    tray.remain_percent = None;
    Some(tray)
}

/// The filament fields of a loaded tray (an empty slot keeps none, whatever stale keys it has).
fn filled(mut tray: Tray, obj: &serde_json::Map<String, Value>) -> Tray {
    if !tray.loaded {
        return tray;
    }
    tray.material = obj.get("tray_type").and_then(text);
    tray.sub_brand = obj.get("tray_sub_brands").and_then(text);
    tray.filament_id = obj.get("tray_info_idx").and_then(text);
    tray.color = obj.get("tray_color").and_then(Value::as_str).and_then(rgba);
    tray.remain_percent = obj
        .get("remain")
        .and_then(as_u64)
        .filter(|r| *r <= 100)
        .and_then(|r| u8::try_from(r).ok());
    tray
}

/// A non-empty printable text, trimmed and bounded.
fn text(v: &Value) -> Option<String> {
    let s = v.as_str()?.trim();
    let clean: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

/// `RRGGBBAA` (or `RRGGBB`, read as opaque) → upper-case `RRGGBBAA`.
pub fn rgba(s: &str) -> Option<String> {
    let s = s.trim().trim_start_matches('#');
    if !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    match s.len() {
        8 => Some(s.to_ascii_uppercase()),
        6 => Some(format!("{}FF", s.to_ascii_uppercase())),
        _ => None,
    }
}

fn mark(slots: &mut FilamentSlots, unit: u32, slot: u32) {
    if let Some(t) = slots
        .units
        .iter_mut()
        .filter(|u| u.id == unit)
        .flat_map(|u| u.trays.iter_mut())
        .find(|t| t.slot == slot)
    {
        t.active = true;
    }
}

fn mark_external(slots: &mut FilamentSlots, id: u32) {
    let index = slots
        .external
        .iter()
        .position(|t| t.slot == id)
        .or_else(|| (id == EXTERNAL && slots.external.len() == 1).then_some(0));
    if let Some(t) = index.and_then(|i| slots.external.get_mut(i)) {
        t.active = true;
    }
}

fn mark_tray_now(slots: &mut FilamentSlots, now: u32) {
    match now {
        NONE => {}
        EXTERNAL => mark_external(slots, EXTERNAL),
        128..=135 => mark(slots, now, 0),
        0..=15 => mark(slots, now >> 2, now & 0x3),
        _ => {}
    }
}

fn mark_snow(slots: &mut FilamentSlots, snow: u32) {
    let (unit, slot) = (snow >> 8, snow & 0xFF);
    if slot == NONE {
        return;
    }
    match unit {
        254 | 255 => mark_external(slots, unit),
        _ => mark(slots, unit, slot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tray_state_words() {
        // The values ha-bambulab's tests pin (pybambu/tests/test_ams_tray_state.py).
        for (state, loaded) in [
            (0, false),
            (1, false),
            (2, false),
            (3, true),
            (5, false),
            (8, false),
            (9, true),
            (10, false),
            (11, true),
            (17, false),
            (21, false),
        ] {
            assert_eq!(loaded_by_state(state), loaded, "state {state}");
        }
    }

    #[test]
    fn colours_and_ids() {
        assert_eq!(rgba("d357feff").as_deref(), Some("D357FEFF"));
        assert_eq!(rgba("#FFFFFF").as_deref(), Some("FFFFFFFF"));
        assert_eq!(rgba("zz0000ff"), None);
        assert_eq!(rgba(""), None);
        assert_eq!(mapping_id(1, 2), Some(6));
        assert_eq!(mapping_id(128, 0), Some(128));
        assert_eq!(mapping_id(16, 0), None);
    }

    #[test]
    fn no_filament_keys_is_none_and_junk_is_harmless() {
        assert_eq!(
            filament_slots(&json!({"gcode_state":"IDLE"}), Model::P1S),
            None
        );
        let junk = json!({"ams":{"ams":[1,"x",{"id":"zz","tray":[{"id":[],"tray_type":7,"remain":"a"}]}],
            "tray_now":"x"},"vir_slot":[null,{"id":"254","tray_type":"PLA","tray_color":"nope"}],
            "device":{"extruder":{"info":[{"snow":"bad"}]}}});
        let s = filament_slots(&junk, Model::X1C).expect("slots");
        assert_eq!(s.units.len(), 1);
        assert_eq!(s.units[0].id, 2, "position stands in for an unreadable id");
        assert!(!s.units[0].trays[0].loaded);
        assert_eq!(s.external.len(), 1);
        assert_eq!(s.external[0].color, None);
        assert_eq!(s.active().count(), 0);
    }
}
