//! D2 (issue 14): the simulator's full reports and deltas have the key set, JSON types and
//! nesting of real captured full reports of each model (key sets derived from the captures,
//! see tests/fixtures/bambu/README.md). Walks every model through idle → PREPARE → RUNNING →
//! PAUSE → RUNNING → FAILED (stop) → FINISH and diffs every full report and every delta; the
//! failure message lists each path that is missing, extra or of another type.

use printgate::config::Model;
use printgate::printer::GcodeState;
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use printgate::sim::machine::{CommandCtx, Machine};
use printgate::sim::reports::{self, ReportCtx};
use printgate::sim::shapes::{self, ShapeDiff};
use printgate::sim::{KnobValues, SimStorage};
use serde_json::{Map, Value, json};
use std::net::Ipv4Addr;

const MODELS: [Model; 7] = [
    Model::X1C,
    Model::P1S,
    Model::P1P,
    Model::A1,
    Model::A1Mini,
    Model::P2S,
    Model::H2D,
];

fn status(model: Model, m: &Machine) -> Map<String, Value> {
    reports::status_object(&ReportCtx {
        model,
        developer_mode: true,
        sdcard: true,
        ip: Ipv4Addr::new(127, 0, 0, 2),
        nozzle_override: None,
        bed_override: None,
        wifi_wanders: true,
        machine: m,
    })
}

fn describe(model: Model, stage: &str, d: &ShapeDiff) -> String {
    format!(
        "{model:?} {stage} (shape of the {} capture):\n  missing: {:?}\n  extra: {:?}\n  wrong type: {:?}",
        shapes::capture_for(model),
        d.missing,
        d.extra,
        d.wrong_type
    )
}

fn command(body: Value) -> Map<String, Value> {
    body.as_object().cloned().unwrap_or_default()
}

/// Advance with a report tick per simulated second, as the running simulator does.
fn run_until(m: &mut Machine, k: &KnobValues, state: GcodeState, limit: u32) {
    for _ in 0..limit {
        if m.state == state {
            return;
        }
        m.report_epoch += 1;
        m.advance(1.0, k);
    }
    assert_eq!(m.state, state, "{:?} did not reach {state:?}", m.model);
}

#[test]
fn full_reports_and_deltas_have_the_real_shape_of_every_model() {
    let mut failures = Vec::new();
    for model in MODELS {
        let keys = shapes::keyset(model);
        let storage = SimStorage::default();
        let file = build_3mf(&Fixture3mf {
            model,
            prediction_secs: 900,
            ..Fixture3mf::default()
        });
        storage.put("/shape.gcode.3mf", file).expect("stored");
        let k = KnobValues::new("12345678".into(), true);
        let ctx = CommandCtx {
            knobs: &k,
            storage: &storage,
            unix_now: 1_767_261_003,
        };
        let mut m = Machine::new(model, 1.0);
        let mut prev = status(model, &m);
        let mut check = |stage: &str, m: &Machine, failures: &mut Vec<String>| {
            let next = status(model, m);
            let full = shapes::diff(&Value::Object(next.clone()), keys, false);
            if !full.is_empty() {
                failures.push(describe(model, &format!("full report, {stage}"), &full));
            }
            if let Some(delta) = reports::delta(&prev, &next) {
                let d = shapes::diff(&Value::Object(delta), keys, true);
                if !d.is_empty() {
                    failures.push(describe(model, &format!("delta into {stage}"), &d));
                }
            }
            prev = next;
        };
        check("idle", &m, &mut failures);
        let start = json!({"sequence_id": "1", "command": "project_file",
            "param": "Metadata/plate_1.gcode", "url": "ftp://shape.gcode.3mf", "md5": "",
            "subtask_name": "shape", "subtask_id": "7", "task_id": "7", "project_id": "7",
            "profile_id": "0", "use_ams": false});
        m.handle_print(&command(start), &ctx);
        check("PREPARE", &m, &mut failures);
        run_until(&mut m, &k, GcodeState::Running, 60);
        check("RUNNING", &m, &mut failures);
        m.handle_print(&command(json!({"command": "pause"})), &ctx);
        check("PAUSE", &m, &mut failures);
        m.handle_print(&command(json!({"command": "resume"})), &ctx);
        run_until(&mut m, &k, GcodeState::Running, 1);
        m.handle_print(&command(json!({"command": "stop"})), &ctx);
        check("FAILED", &m, &mut failures);
        // The AMS trays are really compared (not left empty).
        let idle = shapes::diff(&Value::Object(prev.clone()), keys, false);
        if keys.contains_key("print.ams.ams[].tray[].tray_type")
            && idle
                .unexercised
                .iter()
                .any(|p| p.starts_with("print.ams.ams[]"))
        {
            failures.push(format!(
                "{model:?}: the AMS units are empty: {:?}",
                idle.unexercised
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
