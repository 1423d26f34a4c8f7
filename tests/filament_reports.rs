//! Issue 21, AMS state: the typed filament slots (AMS units, trays, external spools, the active
//! tray) read from real reports captured from printers, and from the deltas that change them.
//!
//! The reports in tests/fixtures/bambu/ams/ are the `ams`, `vt_tray`, `vir_slot` and
//! `device.extruder` parts of full reports captured by Home Assistant's Bambu Lab integration
//! (greghesp/ha-bambulab, `custom_components/bambu_lab/pybambu/tests/`, commit 809391e7;
//! MIT licence, copied next to them as LICENSE-ha-bambulab), values unchanged. The deltas below
//! are written in the shapes those captures show (a tray object holding only its `id` is an
//! empty slot on P1/A1 firmware; `ams.ams` replaced wholesale, docs/bambu-protocol.md §3.3).

use printgate::printer::bambu::report::{ReportMerger, printer_state};
use printgate::printer::state::{AmsKind, FilamentSlots, Tray};
use printgate::printer::{GcodeState, Model};
use serde_json::{Value, json};

fn capture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/bambu/ams/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn slots(doc: &Value, model: Model) -> FilamentSlots {
    printer_state(doc, model)
        .filament
        .unwrap_or_else(|| panic!("no filament slots read from {doc}"))
}

/// `(material, colour, remain)` of a tray, for compact assertions.
fn fill(t: &Tray) -> (Option<&str>, Option<&str>, Option<u8>) {
    (t.material.as_deref(), t.color.as_deref(), t.remain_percent)
}

#[test]
fn p1p_with_an_ams_and_an_external_spool() {
    let s = slots(&capture("P1P"), Model::P1P);
    assert_eq!(s.units.len(), 1);
    let ams = &s.units[0];
    assert_eq!((ams.id, ams.kind), (0, AmsKind::Ams));
    assert_eq!(ams.humidity_level, Some(3), "reported 3 → shown 6 - 3");
    assert_eq!(
        ams.humidity_percent, None,
        "P1-era AMS reports no humidity_raw"
    );
    assert_eq!(ams.temp_c, None, "P1-era AMS reports 0.0: no sensor");
    assert_eq!(ams.trays.len(), 4);
    for (i, t) in ams.trays.iter().enumerate() {
        assert!(t.loaded, "tray {i}");
        assert_eq!(t.mapping_id, Some(i as u32));
        assert_eq!(
            fill(t),
            (Some("PLA"), Some("D357FEFF"), None),
            "remain -1 = not estimated"
        );
        assert_eq!(t.filament_id.as_deref(), Some("GFL96"));
        assert_eq!(t.sub_brand, None, "an empty tray_sub_brands is no brand");
    }
    assert!(ams.trays[0].active, "tray_now \"0\"");
    assert_eq!(s.active().count(), 1);
    assert_eq!(s.external.len(), 1);
    let ext = &s.external[0];
    assert_eq!((ext.unit, ext.slot, ext.mapping_id), (None, 254, Some(254)));
    assert!(ext.loaded && !ext.active);
    assert_eq!(
        fill(ext),
        (Some("PLA"), Some("161616FF"), None),
        "nothing measures it"
    );
}

#[test]
fn a1_has_an_ams_lite_and_nothing_active() {
    let s = slots(&capture("A1"), Model::A1);
    assert_eq!(s.units[0].kind, AmsKind::AmsLite);
    assert_eq!(s.units[0].humidity_level, Some(1));
    let colours: Vec<_> = s.units[0]
        .trays
        .iter()
        .map(|t| t.color.as_deref())
        .collect();
    assert_eq!(
        colours,
        [
            Some("76D9F4FF"),
            Some("FFF144FF"),
            Some("FF80FFFF"),
            Some("0ACC38FF")
        ]
    );
    assert!(
        s.units[0]
            .trays
            .iter()
            .all(|t| t.remain_percent == Some(100))
    );
    assert_eq!(s.active().count(), 0, "tray_now 255 = none");
}

#[test]
fn p1p_without_ams_prints_from_the_external_spool() {
    let s = slots(&capture("P1P-no-AMS"), Model::P1P);
    assert!(s.units.is_empty());
    assert_eq!(s.external.len(), 1);
    assert_eq!(fill(&s.external[0]), (Some("PETG"), Some("BCBCBCFF"), None));
    assert!(s.external[0].active, "tray_now 254 = the external spool");
}

#[test]
fn x1c_with_three_ams_and_an_ams_ht() {
    let s = slots(&capture("X1C-3AMS-1AMSHT"), Model::X1C);
    let ids: Vec<_> = s.units.iter().map(|u| (u.id, u.kind)).collect();
    assert_eq!(
        ids,
        [
            (0, AmsKind::Ams),
            (1, AmsKind::Ams),
            (2, AmsKind::Ams),
            (128, AmsKind::AmsHt)
        ]
    );
    let u0 = &s.units[0];
    assert_eq!(u0.humidity_percent, Some(8));
    assert_eq!(u0.temp_c, Some(26.2));
    assert_eq!(u0.trays[0].sub_brand.as_deref(), Some("PLA Matte"));
    assert_eq!(
        fill(&u0.trays[0]),
        (Some("PLA"), Some("000000FF"), Some(93))
    );
    // Unit 2 is drying (65 °C, 583 min left) and its slot 0 is empty (`state` 0).
    let u2 = &s.units[2];
    assert_eq!(u2.drying_minutes_left, Some(583));
    assert_eq!(u2.temp_c, Some(65.0));
    assert!(!u2.trays[0].loaded);
    assert_eq!(fill(&u2.trays[0]), (None, None, None));
    assert_eq!(u2.trays[1].mapping_id, Some(9));
    let ht = &s.units[3];
    assert_eq!(ht.trays.len(), 1);
    assert_eq!(ht.trays[0].mapping_id, Some(128));
    assert_eq!(ht.trays[0].material.as_deref(), Some("PA-CF"));
    // The external spool holder is empty (`tray_type` ""), nothing is feeding.
    assert_eq!(s.external.len(), 1);
    assert!(!s.external[0].loaded);
    assert_eq!(s.active().count(), 0);
    assert_eq!(s.trays().filter(|t| t.loaded).count(), 12);
}

#[test]
fn h2d_reads_both_nozzles_from_the_extruder_block() {
    let s = slots(&capture("H2D"), Model::H2D);
    assert_eq!(s.units.len(), 2);
    // snow 259 = unit 1, slot 3 (the right nozzle); 0xFEFF = the left nozzle feeds nothing.
    let active: Vec<_> = s.active().map(|t| (t.unit, t.slot, t.mapping_id)).collect();
    assert_eq!(active, [(Some(1), 3, Some(7))]);
    assert_eq!(s.units[1].trays[3].material.as_deref(), Some("PETG"));
    assert_eq!(s.units[0].trays[0].material.as_deref(), Some("PLA-S"));
    assert_eq!(s.units[0].humidity_percent, Some(1));
    let ext: Vec<_> = s.external.iter().map(|t| (t.slot, t.loaded)).collect();
    assert_eq!(
        ext,
        [(254, false), (255, false)],
        "vir_slot wins over vt_tray"
    );

    let s = slots(&capture("H2D-external-spool-active"), Model::H2D);
    assert_eq!(s.units.len(), 6);
    assert!(!s.units[0].trays[1].loaded, "state 10: no spool bit");
    let active: Vec<_> = s.active().map(|t| (t.unit, t.slot)).collect();
    assert_eq!(
        active,
        [(None, 255)],
        "snow 0xFF00 = the external spool 255"
    );
    assert_eq!(s.external[1].material.as_deref(), Some("TPU"));
    assert_eq!(s.external[0].material.as_deref(), Some("PLA"));
}

#[test]
fn p2s_reports_its_external_spool_only_in_vir_slot() {
    let s = slots(&capture("P2S"), Model::P2S);
    assert_eq!(s.units[0].trays[3].material.as_deref(), Some("PETG"));
    assert!(s.units[0].trays[3].active, "snow 3 = unit 0, slot 3");
    assert_eq!(s.external.len(), 1);
    assert!(!s.external[0].loaded);
}

fn push(merger: &mut ReportMerger, seq: u32, print: Value) {
    let mut msg =
        json!({"print": {"command": "push_status", "msg": 1, "sequence_id": seq.to_string()}});
    if let (Some(dst), Some(src)) = (msg["print"].as_object_mut(), print.as_object()) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    merger.apply_push(msg);
}

fn unit0(trays: Value) -> Value {
    json!({"ams": {"ams": [{"id": "0", "humidity": "5", "temp": "0.0", "tray": trays}]}})
}

/// A loaded tray in the A1 capture's shape (its first tray, other material and colour).
fn a1_tray(id: &str, kind: &str, color: &str, remain: i64) -> Value {
    let mut t = capture("A1")["print"]["ams"]["ams"][0]["tray"][0].clone();
    t["id"] = json!(id);
    t["tray_type"] = json!(kind);
    t["tray_color"] = json!(color);
    t["cols"] = json!([color]);
    t["remain"] = json!(remain);
    t
}

#[test]
fn trays_appear_change_and_empty_across_deltas() {
    let mut m = ReportMerger::new();
    let mut full = capture("A1");
    full["print"]["gcode_state"] = json!("IDLE");
    m.apply_push(full.clone());
    let tray = |m: &ReportMerger, i: usize| {
        m.state(Model::A1)
            .and_then(|s| s.filament)
            .and_then(|f| f.units.first().and_then(|u| u.trays.get(i).cloned()))
            .expect("tray")
    };
    assert!(tray(&m, 2).loaded);

    // The spool of slot 2 is pulled out: the unit's trays arrive again, slot 2 as an id only.
    let mut trays = full["print"]["ams"]["ams"][0]["tray"].clone();
    trays[2] = json!({"id": "2"});
    push(&mut m, 2, unit0(trays.clone()));
    let t = tray(&m, 2);
    assert!(!t.loaded);
    assert_eq!(fill(&t), (None, None, None));
    assert!(tray(&m, 1).loaded, "the other trays stay");

    // A PETG spool goes in.
    trays[2] = a1_tray("2", "PETG", "F72323FF", 100);
    push(&mut m, 3, unit0(trays.clone()));
    assert_eq!(
        fill(&tray(&m, 2)),
        (Some("PETG"), Some("F72323FF"), Some(100))
    );

    // Printing from it: only `tray_now` changes (the `ams` object is merged key by key).
    push(
        &mut m,
        4,
        json!({"ams": {"tray_now": "2"}, "gcode_state": "RUNNING"}),
    );
    let s = m.state(Model::A1).expect("state");
    assert_eq!(s.gcode_state, GcodeState::Running);
    assert!(tray(&m, 2).active);
    assert_eq!(s.filament.as_ref().map(|f| f.active().count()), Some(1));
    assert_eq!(tray(&m, 2).material.as_deref(), Some("PETG"), "units kept");

    // Its estimate drops, then the print ends and nothing feeds.
    trays[2]["remain"] = json!(87);
    push(&mut m, 5, unit0(trays.clone()));
    assert_eq!(tray(&m, 2).remain_percent, Some(87));
    assert!(tray(&m, 2).active, "tray_now unchanged by a tray delta");
    push(&mut m, 6, json!({"ams": {"tray_now": "255"}}));
    assert!(!tray(&m, 2).active);

    // The external spool changes colour.
    push(&mut m, 7, json!({"vt_tray": {"tray_color": "000000FF"}}));
    let ext = m
        .state(Model::A1)
        .and_then(|s| s.filament)
        .map(|f| f.external)
        .expect("external");
    assert_eq!(fill(&ext[0]), (Some("PLA"), Some("000000FF"), None));

    // A full report replaces everything: the AMS is gone (no `ams` key at all).
    m.apply_push(
        json!({"print": {"command": "push_status", "msg": 0, "sequence_id": "8",
        "gcode_state": "IDLE"}}),
    );
    assert_eq!(m.state(Model::A1).expect("state").filament, None);
}

#[test]
fn newer_firmware_clears_a_tray_with_its_state_word() {
    // X1C capture, unit 0: the spool of slot 1 is being pulled (state 21 = spool bit + motion,
    // not steady), then the slot reports state 8 (steady, no spool), then a new spool is read.
    let full = capture("X1C-3AMS-1AMSHT");
    let mut m = ReportMerger::new();
    m.apply_push(full.clone());
    let mut units = full["print"]["ams"]["ams"].clone();
    let slot1 = |m: &ReportMerger| {
        m.state(Model::X1C)
            .and_then(|s| s.filament)
            .map(|f| f.units[0].trays[1].clone())
            .expect("tray")
    };
    assert!(slot1(&m).loaded);
    units[0]["tray"][1]["state"] = json!(21);
    push(&mut m, 2, json!({"ams": {"ams": units.clone()}}));
    assert!(
        !slot1(&m).loaded,
        "a spool in motion is not counted as loaded"
    );
    units[0]["tray"][1] = json!({"id": "1", "state": 8});
    push(&mut m, 3, json!({"ams": {"ams": units.clone()}}));
    assert!(!slot1(&m).loaded);
    let mut fresh = full["print"]["ams"]["ams"][1]["tray"][2].clone();
    fresh["id"] = json!("1");
    units[0]["tray"][1] = fresh;
    push(&mut m, 4, json!({"ams": {"ams": units}}));
    let t = slot1(&m);
    assert!(t.loaded);
    assert_eq!(fill(&t), (Some("ABS"), Some("FFFFFFFF"), Some(71)));
    assert_eq!(t.mapping_id, Some(1));
}
