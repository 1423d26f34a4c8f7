//! Report documents of the simulated printer, shaped per model (docs/bambu-protocol.md §3.5–§3.8, §11):
//! the full `push_status` object, P1-style deltas (only changed keys), the `get_version` answer
//! and the wire encoding (compact on P1/A1, 4-space pretty on X1/H2/P2S). Pure functions.

use crate::config::Model;
use crate::sim::machine::{Machine, SimSpool};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::net::Ipv4Addr;

/// Firmware version the simulated model reports (`ota` module, SSDP `DevVersion`).
pub fn firmware_version(model: Model) -> &'static str {
    match model {
        Model::X1C => "01.08.05.00",
        Model::X1E => "01.01.02.00",
        Model::P1P | Model::P1S => "01.08.02.00",
        Model::A1 | Model::A1Mini => "01.05.00.00",
        Model::P2S => "01.02.00.00",
        Model::H2D | Model::Klipper => "01.02.00.00",
    }
}

fn product_name(model: Model) -> &'static str {
    match model {
        Model::X1C => "Bambu Lab X1-Carbon",
        Model::X1E => "Bambu Lab X1E",
        Model::P1P => "Bambu Lab P1P",
        Model::P1S => "Bambu Lab P1S",
        Model::A1 => "Bambu Lab A1",
        Model::A1Mini => "Bambu Lab A1 mini",
        Model::P2S => "Bambu Lab P2S",
        Model::H2D => "Bambu Lab H2D",
        Model::Klipper => "Klipper",
    }
}

/// Models that send the `fun` capability word (and `job_id`).
pub fn sends_fun(model: Model) -> bool {
    matches!(model, Model::X1C | Model::X1E | Model::P2S | Model::H2D)
}

/// Models reporting packed `device.*` temperatures and the `stat` word (X1 from firmware
/// 01.09 on, as in the X1C capture the simulator's shape follows).
pub fn sends_packed_temps(model: Model) -> bool {
    matches!(model, Model::X1C | Model::X1E | Model::P2S | Model::H2D)
}

/// Nozzle the model ships with (`nozzle_type`).
fn nozzle_type(model: Model) -> &'static str {
    match model {
        Model::P1P | Model::A1 | Model::A1Mini => "stainless_steel",
        _ => "hardened_steel",
    }
}

/// One filament slot (AMS tray, external spool `vt_tray` / `vir_slot`) in the P1 shape plus the
/// `state` word of newer firmware (11 = spool present, read and steady; 0 = empty, as in the
/// X1C capture); [`shapes::conform`](crate::sim::shapes::conform) drops what a model does not
/// send and adds the keys it sends that are not modelled here. An empty slot is its `id` only
/// (P1/A1 firmware).
fn tray(id: &str, spool: Option<&SimSpool>) -> Value {
    let Some(spool) = spool else {
        return json!({"id": id, "state": 0});
    };
    json!({
        "id": id,
        "state": 11,
        "remain": spool.remain,
        "k": 0.02,
        "n": 1,
        "cali_idx": -1,
        "tag_uid": "0000000000000000",
        "tray_id_name": "",
        "tray_info_idx": spool.preset,
        "tray_type": spool.material,
        "tray_sub_brands": spool.sub_brand,
        "tray_color": spool.color,
        "tray_weight": "1000",
        "tray_diameter": "1.75",
        "tray_temp": "0",
        "tray_time": "0",
        "bed_temp_type": "0",
        "bed_temp": "0",
        "nozzle_temp_max": "250",
        "nozzle_temp_min": "190",
        "xcam_info": "000000000000000000000000",
        "tray_uuid": "00000000000000000000000000000000",
        "ctype": 0,
        "cols": [spool.color],
    })
}

/// Hex bit set of the loaded trays (`tray_exist_bits`).
fn exist_bits(m: &Machine) -> String {
    let bits = m
        .trays
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_some())
        .fold(0u32, |acc, (i, _)| acc | (1 << i));
    format!("{bits:x}")
}

/// The `ams` object: one 4-tray unit (AMS on X1/P1/P2S/H2D, AMS lite on A1/A1 mini) with the
/// machine's spools; `tray_now` is the tray feeding the nozzle (255 = none).
fn ams_object(m: &Machine) -> Value {
    let trays: Vec<Value> = m
        .trays
        .iter()
        .enumerate()
        .map(|(i, t)| tray(&i.to_string(), t.as_ref()))
        .collect();
    let now = m.tray_now.map_or("255".to_string(), |t| t.to_string());
    let bits = exist_bits(m);
    json!({
        "ams": [{"id": "0", "humidity": "4", "humidity_raw": "23", "temp": "24.6",
            "dry_time": 0, "tray": trays}],
        "ams_exist_bits": "1",
        "tray_exist_bits": bits,
        "tray_is_bbl_bits": bits,
        "tray_tar": now,
        "tray_now": now,
        "tray_pre": now,
        "tray_read_done_bits": bits,
        "tray_reading_bits": "0",
        "version": 4,
        "insert_flag": true,
        "power_on_flag": false,
    })
}

/// The external spool holders' ids: `vt_tray`'s, and the `vir_slot` entries (P1/A1 report
/// 254; X1C and P2S 255; the H2D one per nozzle, 254 left and 255 right, as captured).
fn external_ids(model: Model) -> (&'static str, &'static [&'static str]) {
    match model {
        Model::P1P | Model::P1S | Model::A1 | Model::A1Mini => ("254", &["254"]),
        Model::H2D | Model::Klipper => ("255", &["254", "255"]),
        Model::X1C | Model::X1E | Model::P2S => ("255", &["255"]),
    }
}

/// `device.extruder.info[].snow` of the nozzle the machine feeds: `unit << 8 | slot` of the
/// feeding tray, 0xFFFF for none (0xFEFF for an idle second nozzle, as in the H2D capture).
fn snow(m: &Machine, extruder: u32) -> u32 {
    match (extruder, m.tray_now) {
        (0, Some(t)) if t < 16 => ((t / 4) << 8) | (t % 4),
        (0, Some(254)) => 0xFF00,
        (0, _) => 0xFFFF,
        _ => 0xFEFF,
    }
}

/// AI detectors of the `xcam` object that `xcam.xcam_control_set` switches.
pub const XCAM_MODULES: [&str; 4] = [
    "first_layer_inspector",
    "spaghetti_detector",
    "buildplate_marker_detector",
    "printing_monitor",
];

/// The answer to `upgrade.get_history`: the firmware versions the printer may be moved to, as
/// bambulabs-api reads it (`firmware_optional[].firmware.version`); the simulator offers its
/// own version only.
pub fn firmware_history_answer(model: Model, sequence_id: Value) -> Value {
    json!({"upgrade": {
        "command": "get_history",
        "sequence_id": sequence_id,
        "firmware_optional": [{
            "firmware": {
                "version": firmware_version(model),
                "force_update": false,
                "url": "",
                "description": "",
                "status": "release",
            },
            "ams": [],
        }],
        "result": "success",
        "reason": "",
    }})
}

/// Wi-Fi signal as an idle printer reports it: it wanders by a few dBm between reports, which
/// is why an idle P1/A1 keeps sending deltas.
pub fn wifi_signal(report_epoch: u64) -> String {
    const PATTERN: [i32; 6] = [-48, -49, -47, -50, -48, -46];
    let i = (report_epoch / 3) as usize % PATTERN.len();
    format!("{}dBm", PATTERN.get(i).copied().unwrap_or(-48))
}

/// Pretty-printed reports (X1/H2 style) versus compact JSON (P1/A1).
pub fn pretty(model: Model) -> bool {
    !model.sends_deltas()
}

/// What the report builder needs besides the machine.
pub struct ReportCtx<'a> {
    pub model: Model,
    pub developer_mode: bool,
    pub sdcard: bool,
    pub ip: Ipv4Addr,
    pub nozzle_override: Option<f64>,
    pub bed_override: Option<f64>,
    /// The `wifi_wanders` knob.
    pub wifi_wanders: bool,
    pub machine: &'a Machine,
}

/// Temperatures with a sensor's 1/32 °C resolution.
fn quantize(t: f64) -> f64 {
    (t * 32.0).round() / 32.0
}

fn packed(target: f64, current: f64) -> i64 {
    let t = target.clamp(0.0, 65535.0) as i64;
    let c = current.clamp(0.0, 65535.0) as i64;
    (t << 16) | c
}

/// Reported nozzle temperature (override applied).
pub fn nozzle_temp(ctx: &ReportCtx) -> f64 {
    quantize(ctx.nozzle_override.unwrap_or(ctx.machine.nozzle))
}

pub fn bed_temp(ctx: &ReportCtx) -> f64 {
    quantize(ctx.bed_override.unwrap_or(ctx.machine.bed))
}

/// Reported chamber temperature: real on X1/H2, the constant 5 on P1/A1, `None` on P2S.
pub fn chamber_temp(ctx: &ReportCtx) -> Option<f64> {
    if ctx.model.has_chamber_sensor() {
        Some(quantize(ctx.machine.chamber))
    } else if ctx.model == Model::P2S {
        None
    } else {
        Some(5.0)
    }
}

/// `home_flag`: XYZ homed while a job runs, SD state bits 8–9, plus fixed capability bits.
fn home_flag(ctx: &ReportCtx) -> i64 {
    let mut flag: i64 = 0x0D60_0000;
    if ctx.machine.state.is_active() {
        flag |= 0b111;
    }
    if ctx.sdcard {
        flag |= 1 << 8;
    }
    if ctx.machine.door_open && matches!(ctx.model, Model::X1C | Model::X1E) {
        flag |= 1 << 23;
    }
    flag
}

/// The full `print` object of a `push_status` (without `command`/`msg`/`sequence_id`).
pub fn status_object(ctx: &ReportCtx) -> Map<String, Value> {
    let m = ctx.machine;
    let model = ctx.model;
    let job = m.job.as_ref();
    let s = |f: fn(&crate::sim::machine::Job) -> &String, d: &str| {
        job.map(f).cloned().unwrap_or_else(|| d.to_string())
    };
    let nozzle = nozzle_temp(ctx);
    let bed = bed_temp(ctx);
    let mut o = Map::new();
    o.insert("gcode_state".into(), json!(m.state.as_str()));
    o.insert(
        "mc_print_stage".into(),
        json!(if m.state.is_active() { "2" } else { "1" }),
    );
    o.insert("mc_percent".into(), json!(m.percent));
    o.insert("mc_remaining_time".into(), json!(m.remaining_minutes));
    o.insert("layer_num".into(), json!(m.layer));
    o.insert("total_layer_num".into(), json!(m.total_layers));
    o.insert("nozzle_temper".into(), json!(nozzle));
    o.insert("nozzle_target_temper".into(), json!(m.nozzle_target));
    o.insert("bed_temper".into(), json!(bed));
    o.insert("bed_target_temper".into(), json!(m.bed_target));
    if let Some(c) = chamber_temp(ctx) {
        o.insert("chamber_temper".into(), json!(c));
    }
    o.insert("subtask_name".into(), json!(s(|j| &j.subtask_name, "")));
    o.insert("subtask_id".into(), json!(s(|j| &j.subtask_id, "0")));
    o.insert("task_id".into(), json!(s(|j| &j.task_id, "0")));
    o.insert("project_id".into(), json!(s(|j| &j.project_id, "0")));
    o.insert("profile_id".into(), json!(s(|j| &j.profile_id, "0")));
    o.insert("gcode_file".into(), json!(s(|j| &j.gcode_file, "")));
    o.insert(
        "gcode_file_prepare_percent".into(),
        json!(m.prepare_percent.to_string()),
    );
    o.insert(
        "gcode_start_time".into(),
        json!(m.gcode_start_time.to_string()),
    );
    o.insert("print_type".into(), json!(m.print_type));
    o.insert("print_error".into(), json!(m.print_error));
    let hms: Vec<Value> = m
        .hms
        .iter()
        .map(|h| json!({"attr": h.attr, "code": h.code}))
        .collect();
    o.insert("hms".into(), Value::Array(hms));
    o.insert("stg".into(), json!(m.stg));
    o.insert("stg_cur".into(), json!(m.stg_cur));
    o.insert("spd_lvl".into(), json!(m.spd_lvl));
    o.insert(
        "spd_mag".into(),
        json!(match m.spd_lvl {
            1 => 50,
            3 => 124,
            4 => 166,
            _ => 100,
        }),
    );
    let epoch = if ctx.wifi_wanders { m.report_epoch } else { 0 };
    o.insert("wifi_signal".into(), json!(wifi_signal(epoch)));
    o.insert("sdcard".into(), json!(ctx.sdcard));
    o.insert("home_flag".into(), json!(home_flag(ctx)));
    o.insert("nozzle_diameter".into(), json!("0.4"));
    o.insert("nozzle_type".into(), json!(nozzle_type(model)));
    let active = m.state.is_active() && m.state != crate::printer::GcodeState::Pause;
    let fan = if active { "15" } else { "0" };
    o.insert("cooling_fan_speed".into(), json!(fan));
    o.insert("heatbreak_fan_speed".into(), json!(fan));
    o.insert("big_fan1_speed".into(), json!("0"));
    o.insert("big_fan2_speed".into(), json!("0"));
    o.insert("fan_gear".into(), json!(if active { 255 } else { 0 }));
    o.insert("lifecycle".into(), json!("product"));
    o.insert("mess_production_state".into(), json!("active"));
    o.insert("s_obj".into(), json!(m.skipped_objects));
    let mut xcam = json!({"allow_skip_parts": false, "print_halt": true,
        "halt_print_sensitivity": "medium"});
    for module in XCAM_MODULES {
        let default_on = module != "buildplate_marker_detector";
        xcam[module] = json!(m.xcam.get(module).copied().unwrap_or(default_on));
    }
    o.insert("xcam".into(), xcam);
    o.insert("percent".into(), json!(m.percent));
    o.insert("remain_time".into(), json!(m.remaining_minutes));
    o.insert("prepare_per".into(), json!(m.prepare_percent));
    o.insert(
        "lights_report".into(),
        json!([{"node": "chamber_light", "mode": if m.lights_on { "on" } else { "off" }}]),
    );
    o.insert(
        "net".into(),
        json!({"conf": 0, "info": [{"ip": u32::from_le_bytes(ctx.ip.octets()), "mask": 16_777_215u32}]}),
    );
    let mut ipcam = json!({"ipcam_dev": "1", "ipcam_record": "enable", "timelapse": "disable"});
    if sends_fun(model) {
        // RTSPS live view is not simulated yet: the state of a printer with "LAN Only
        // Liveview" off.
        ipcam["rtsp_url"] = json!("disable");
    }
    o.insert("ipcam".into(), ipcam);
    o.insert(
        "upload".into(),
        json!({"status": "idle", "progress": 0, "message": ""}),
    );
    o.insert(
        "upgrade_state".into(),
        json!({"status": "IDLE", "new_version_state": 2, "err_code": 0}),
    );
    o.insert("ams".into(), ams_object(m));
    let (vt_id, vir_ids) = external_ids(model);
    let external = m.external_spool.as_ref();
    o.insert("vt_tray".into(), tray(vt_id, external));
    // The spool hangs on the main (right) nozzle's holder; the H2D's left holder is empty.
    let slots = vir_ids
        .iter()
        .map(|id| tray(id, external.filter(|_| *id == vt_id)))
        .collect();
    o.insert("vir_slot".into(), Value::Array(slots));
    o.insert(
        "online".into(),
        json!({"ahb": false, "rfid": false, "version": 9}),
    );
    if sends_fun(model) {
        let fun: u64 = if ctx.developer_mode {
            0x3EC1_8FFF_9CFF
        } else {
            0x3EC1_AFFF_9CFF
        };
        o.insert("fun".into(), json!(format!("{fun:X}")));
        o.insert("job_id".into(), json!(m.job_counter.to_string()));
    }
    if sends_packed_temps(model) {
        let stat: u32 = 0x4625_8008 & !(1 << 23) | (u32::from(m.door_open) << 23);
        o.insert("stat".into(), json!(format!("{stat:X}")));
        let mut extruders =
            vec![json!({"id": 0, "temp": packed(m.nozzle_target, nozzle), "snow": snow(m, 0)})];
        if model == Model::H2D {
            extruders.push(
                json!({"id": 1, "temp": packed(0.0, quantize(m.chamber)), "snow": snow(m, 1)}),
            );
        }
        o.insert(
            "device".into(),
            json!({
                "bed": {"info": {"temp": packed(m.bed_target, bed)}, "state": if m.bed_target > 0.0 { 2 } else { 0 }},
                "ctc": {"info": {"temp": packed(0.0, quantize(m.chamber))}},
                "extruder": {"info": extruders, "state": if m.nozzle_target > 0.0 { 1 } else { 0 }},
            }),
        );
        o.insert(
            "3D".into(),
            json!({"layer_num": m.layer, "total_layer_num": m.total_layers}),
        );
    }
    crate::sim::shapes::conform(&mut o, crate::sim::shapes::keyset(model), "print");
    o
}

/// A `push_status` message (`msg` 0 full or 1 delta) around a status object.
pub fn push_message(mut status: Map<String, Value>, msg: u8, sequence_id: u64) -> Value {
    status.insert("command".into(), json!("push_status"));
    status.insert("msg".into(), json!(msg));
    status.insert("sequence_id".into(), json!(sequence_id.to_string()));
    json!({ "print": status })
}

/// Keys of `next` whose value differs from `prev` (objects compared recursively, arrays and
/// scalars replaced wholesale); `None` if nothing changed.
pub fn delta(prev: &Map<String, Value>, next: &Map<String, Value>) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    for (k, v) in next {
        match (prev.get(k), v) {
            (Some(Value::Object(p)), Value::Object(n)) => {
                if let Some(d) = delta(p, n) {
                    out.insert(k.clone(), Value::Object(d));
                }
            }
            (Some(p), n) if p == n => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The `info.get_version` answer with model-style module names, shaped as current firmware
/// answers (docs/bambu-protocol.md §3.8; module records as captured from P1S 01.08, A1 01.07 and X1C
/// 01.11, quoted in ha-bambulab's `pybambu/utils.py`): every module has `name`, `sw_ver`,
/// `hw_ver`, `loader_ver`, `sn`, `product_name`, `visible` and `flag`; the `ota` module's
/// `product_name` names the printer (`"Bambu Lab P1S"`), the other modules' is empty. The old
/// P1/A1 `project_name` (`C12`) is not sent by the firmware versions the simulator reports.
pub fn version_answer(model: Model, serial: &str, sequence_id: Value) -> Value {
    let fw = firmware_version(model);
    let mut modules = Vec::new();
    let mut module = |name: &str, sw: &str, hw: &str, product: &str| {
        modules.push(json!({
            "name": name,
            "sw_ver": sw,
            "hw_ver": hw,
            "loader_ver": "00.00.00.00",
            "sn": serial,
            "product_name": product,
            "visible": !product.is_empty(),
            "flag": 0,
        }));
    };
    module("ota", fw, "OTA", product_name(model));
    if matches!(model, Model::X1C | Model::X1E) {
        module("rv1126", fw, "AP05", "");
    } else if matches!(model, Model::P2S | Model::H2D) {
        module("ap", fw, "AP07", "");
    } else {
        module("esp32", fw, "AP04", "");
    }
    module("mc", "00.00.28.55", "MC07", "");
    json!({"info": {
        "command": "get_version",
        "sequence_id": sequence_id,
        "module": modules,
        "result": "success",
        "reason": "",
    }})
}

/// Wire bytes of a report: 4-space pretty JSON on X1/H2/P2S, compact on P1/A1.
pub fn encode(model: Model, v: &Value) -> Vec<u8> {
    if pretty(model) {
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        if v.serialize(&mut ser).is_ok() {
            return buf;
        }
    }
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(model: Model, m: &Machine, dev: bool) -> ReportCtx<'_> {
        ReportCtx {
            model,
            developer_mode: dev,
            sdcard: true,
            ip: Ipv4Addr::new(10, 10, 10, 81),
            nozzle_override: None,
            bed_override: None,
            wifi_wanders: true,
            machine: m,
        }
    }

    #[test]
    fn model_shapes() {
        let m = Machine::new(Model::P1S, 1.0);
        let p1 = status_object(&ctx(Model::P1S, &m, true));
        assert_eq!(p1["chamber_temper"], 5.0);
        assert_eq!(p1["stg_cur"], 255);
        assert!(!p1.contains_key("fun") && !p1.contains_key("device"));
        assert_eq!(p1["net"]["info"][0]["ip"], 1_359_612_426u32);

        let m = Machine::new(Model::X1C, 1.0);
        let x1 = status_object(&ctx(Model::X1C, &m, false));
        let fun = u64::from_str_radix(x1["fun"].as_str().unwrap(), 16).unwrap();
        assert_ne!(fun & 0x2000_0000, 0);
        assert_eq!(x1["stg_cur"], -1);
        let x1 = status_object(&ctx(Model::X1C, &m, true));
        let fun = u64::from_str_radix(x1["fun"].as_str().unwrap(), 16).unwrap();
        assert_eq!(fun & 0x2000_0000, 0);

        let mut m = Machine::new(Model::H2D, 1.0);
        m.bed_target = 70.0;
        m.bed = 70.0;
        let h2 = status_object(&ctx(Model::H2D, &m, true));
        assert_eq!(h2["device"]["bed"]["info"]["temp"], (70 << 16) | 70);
        assert_eq!(
            h2["device"]["extruder"]["info"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn delta_only_changed_keys() {
        let a = json!({"a": 1, "n": {"x": 1, "y": 2}, "arr": [1, 2]});
        let b = json!({"a": 1, "n": {"x": 1, "y": 3}, "arr": [1]});
        let d = delta(a.as_object().unwrap(), b.as_object().unwrap()).unwrap();
        assert_eq!(Value::Object(d), json!({"n": {"y": 3}, "arr": [1]}));
        assert!(delta(a.as_object().unwrap(), a.as_object().unwrap()).is_none());
    }

    #[test]
    fn encoding_styles() {
        let v = json!({"print": {"a": 1}});
        assert_eq!(encode(Model::P1S, &v), br#"{"print":{"a":1}}"#);
        let pretty = String::from_utf8(encode(Model::X1C, &v)).unwrap();
        assert!(pretty.contains("\n        \"a\": 1"), "{pretty}");
    }

    #[test]
    fn version_modules() {
        let v = version_answer(Model::P1S, "01P00A000000001", json!("5"));
        assert_eq!(v["info"]["module"][0]["name"], "ota");
        assert_eq!(v["info"]["module"][0]["product_name"], "Bambu Lab P1S");
        assert_eq!(v["info"]["module"][1]["product_name"], "");
        let v = version_answer(Model::X1C, "00M00A000000001", json!("5"));
        assert_eq!(
            v["info"]["module"][0]["product_name"],
            "Bambu Lab X1-Carbon"
        );
    }
}
