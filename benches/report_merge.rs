//! Parse + merge throughput of the Bambu report model (one core): a P1 delta stream and an X1
//! full report (pretty-printed, ~20 KB), each through `ReportMerger::ingest` and the typed
//! `PrinterState`. Run with `cargo bench --bench report_merge`.

#![recursion_limit = "256"]

use printgate::config::Model;
use printgate::printer::bambu::report::ReportMerger;
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn p1_full() -> Vec<u8> {
    let v = json!({"print":{
        "command":"push_status","msg":0,"sequence_id":"1",
        "gcode_state":"RUNNING","mc_print_stage":"2","mc_percent":10,"mc_remaining_time":80,
        "layer_num":20,"total_layer_num":212,"nozzle_temper":219.5,"nozzle_target_temper":220,
        "bed_temper":59.8,"bed_target_temper":60,"chamber_temper":5,
        "subtask_name":"shelf_bracket_v3","subtask_id":"1184022931","task_id":"1184022931",
        "project_id":"1184022931","profile_id":"0","gcode_file":"pg-000417.gcode.3mf",
        "print_type":"local","print_error":0,"hms":[],"stg":[2,1,7,14],"stg_cur":0,
        "spd_lvl":2,"spd_mag":100,"wifi_signal":"-57dBm","sdcard":true,"home_flag":224478464,
        "lights_report":[{"node":"chamber_light","mode":"on"}],
        "net":{"conf":0,"info":[{"ip":1694607552,"mask":16777215}]},
        "upgrade_state":{"status":"IDLE","new_version_state":2,"err_code":0},
        "ams":{"ams_exist_bits":"0","tray_now":"255","version":3}
    }});
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Compact P1-style deltas: temperatures, wifi, progress — what a P1S sends every 1–3 s.
fn p1_deltas(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let v = match i % 3 {
                0 => json!({"print":{"command":"push_status","msg":1,"sequence_id":(i + 2).to_string(),
                    "nozzle_temper": 219.0 + (i % 10) as f64 / 10.0, "bed_temper": 59.9}}),
                1 => json!({"print":{"command":"push_status","msg":1,"sequence_id":(i + 2).to_string(),
                    "wifi_signal": format!("-{}dBm", 50 + i % 9)}}),
                _ => json!({"print":{"command":"push_status","msg":1,"sequence_id":(i + 2).to_string(),
                    "mc_percent": (i / 30) % 100, "mc_remaining_time": 80 - (i / 60) % 80,
                    "layer_num": 20 + (i / 20) % 190}}),
            };
            serde_json::to_vec(&v).unwrap_or_default()
        })
        .collect()
}

/// An X1C-style full report with 4 AMS units, pretty-printed with 4-space indentation.
fn x1_full(seq: usize) -> Vec<u8> {
    let trays = |ams: usize| -> Value {
        Value::Array(
            (0..4)
                .map(|t| {
                    json!({"id": t.to_string(), "remain": 80, "k": 0.02, "n": 1.0,
                    "tag_uid": "0000000000000000", "tray_id_name": "A00-W1",
                    "tray_info_idx": "GFA00", "tray_type": "PLA", "tray_sub_brands": "PLA Basic",
                    "tray_color": "FFFFFFFF", "tray_weight": "1000", "tray_diameter": "1.75",
                    "tray_temp": "55", "tray_time": "8", "bed_temp_type": "1", "bed_temp": "35",
                    "nozzle_temp_max": "230", "nozzle_temp_min": "190",
                    "xcam_info": "000000000000000000000000", "tray_uuid": format!("{ams}{t}00000000000000000000000000000"),
                    "ctype": 0, "cols": ["FFFFFFFF"]})
                })
                .collect(),
        )
    };
    let ams: Vec<Value> = (0..4)
        .map(|a| json!({"id": a.to_string(), "humidity": "4", "temp": "25.3", "tray": trays(a)}))
        .collect();
    let v = json!({"print":{
        "command":"push_status","msg":0,"sequence_id":seq.to_string(),
        "gcode_state":"RUNNING","mc_print_stage":"2","mc_percent":42,"mc_remaining_time":55,
        "mc_print_sub_stage":0,"mc_print_error_code":"0","mc_print_line_number":"123456",
        "layer_num":100,"total_layer_num":240,"nozzle_temper":219.8,"nozzle_target_temper":220,
        "bed_temper":55.0,"bed_target_temper":55,"chamber_temper":34,
        "subtask_name":"lid_v2","subtask_id":"1184023377","task_id":"1184023377",
        "project_id":"1184023377","profile_id":"0","job_id":"1184023377",
        "gcode_file":"/data/Metadata/plate_1.gcode","gcode_file_prepare_percent":"100",
        "gcode_start_time":"1767261003","print_type":"local","print_error":0,
        "hms":[{"attr":0x0C00_0100u32,"code":0x0004_0001u32}],
        "stg":[2,1,7,14],"stg_cur":0,"spd_lvl":2,"spd_mag":100,"wifi_signal":"-53dBm",
        "sdcard":true,"home_flag":224478464,"fun":"3EC18FFF9CFF","stat":"46A58008",
        "nozzle_diameter":"0.4","nozzle_type":"hardened_steel",
        "big_fan1_speed":"0","big_fan2_speed":"0","cooling_fan_speed":"15","heatbreak_fan_speed":"15",
        "fan_gear":0,"lifecycle":"product","queue_number":0,"queue_total":0,
        "lights_report":[{"node":"chamber_light","mode":"on"},{"node":"work_light","mode":"flashing"}],
        "net":{"conf":16,"info":[{"ip":1359612426u32,"mask":16777215},{"ip":0,"mask":0}]},
        "ipcam":{"ipcam_dev":"1","ipcam_record":"enable","timelapse":"disable","resolution":"1080p",
            "tutk_server":"disable","mode_bits":3,"rtsp_url":"rtsps://192.168.1.2/streaming/live/1"},
        "upload":{"status":"idle","progress":0,"message":""},
        "upgrade_state":{"sequence_id":0,"progress":"","status":"","consistency_request":false,
            "dis_state":0,"err_code":0,"force_upgrade":false,"message":"","module":"",
            "new_version_state":2,"cur_state_code":0,"new_ver_list":[]},
        "ams":{"ams":ams,"ams_exist_bits":"f","tray_exist_bits":"ffff","tray_is_bbl_bits":"ffff",
            "tray_tar":"255","tray_now":"1","tray_pre":"1","tray_read_done_bits":"ffff",
            "tray_reading_bits":"0","version":12,"insert_flag":true,"power_on_flag":false},
        "vt_tray":{"id":"254","tray_type":"PLA","tray_color":"FFFFFFFF","remain":0},
        "xcam":{"allow_skip_parts":false,"buildplate_marker_detector":true,"first_layer_inspector":true,
            "halt_print_sensitivity":"medium","print_halt":true,"printing_monitor":true,"spaghetti_detector":true},
        "online":{"ahb":false,"rfid":false,"version":9},
        "s_obj":[],"filam_bak":[],"hw_switch_state":1,"force_upgrade":false,"msg_ver":0
    }});
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    let _ = serde::Serialize::serialize(&v, &mut ser);
    out
}

fn run(label: &str, payloads: &[Vec<u8>], prime: Option<&[u8]>, model: Model, min: Duration) {
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let mut reports = 0u64;
    let start = Instant::now();
    let mut rounds = 0u32;
    while start.elapsed() < min && rounds < 1_000_000 {
        let mut m = ReportMerger::new();
        if let Some(p) = prime {
            let _ = black_box(m.ingest(p));
        }
        for p in payloads {
            let _ = black_box(m.ingest(p));
            black_box(m.state(model));
            reports += 1;
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let per_s = reports as f64 / secs;
    let avg = bytes as f64 / payloads.len().max(1) as f64;
    println!(
        "{label:<28} {per_s:>12.0} reports/s  {:>8.2} µs/report  avg {avg:.0} B/report  ({:.1} MB/s)",
        1e6 / per_s,
        per_s * avg / 1e6
    );
}

fn main() {
    let min = Duration::from_secs(3);
    let full = p1_full();
    let deltas = p1_deltas(3000);
    run(
        "P1 delta stream (+ state)",
        &deltas,
        Some(&full),
        Model::P1S,
        min,
    );
    let x1: Vec<Vec<u8>> = (0..50).map(x1_full).collect();
    println!(
        "X1 full report size: {} bytes",
        x1.first().map_or(0, Vec::len)
    );
    run("X1 full report (+ state)", &x1, None, Model::X1C, min);
}
