//! The simulated printer's print state machine (docs/bambu-protocol.md §4.2–§4.3, §5.2, §12): job states,
//! preparation stages, layers and progress, first-order thermal model, `print_error` and HMS.
//!
//! Pure logic on simulated seconds: [`Machine::advance`] moves time forward, [`Machine::handle_print`]
//! applies a `print.*` command and returns the ack to publish. Time-driven state changes wait
//! until the state has been carried by at least one report tick (`report_epoch`), so every state
//! is observable by a client even at a high time scale.

use crate::config::Model;
use crate::printer::{GcodeState, HmsEntry};
use crate::sim::knobs::{Heater, KnobValues, RefusalStyle};
use crate::sim::log::sequence_id_string;
use crate::sim::storage::SimStorage;
use md5::{Digest, Md5};
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use std::io::Read;

pub const ERR_CANCELLED: u32 = 0x0300_400C;
pub const ERR_POWER_LOSS: u32 = 0x0300_8007;
pub const ERR_DOOR_OPEN_PAUSED: u32 = 0x0300_800F;
pub const ERR_BUSY: u32 = 0x0500_4004;
pub const ERR_FILE_PATH: u32 = 0x0500_4002;
pub const ERR_PARSE: u32 = 0x0500_4003;
pub const ERR_NO_CARD: u32 = 0x0500_400C;
pub const ERR_STORAGE: u32 = 0x0500_C010;
pub const ERR_MD5: u32 = 0x0500_403F;
pub const ERR_MODEL: u32 = 0x0500_4037;
pub const ERR_AMS: u32 = 0x07FF_8012;

/// `err_code` in an ack refusing an unsigned command.
pub const ERR_CODE_VERIFY_FAILED: u64 = 84_033_543;
/// `err_code` in an ack refusing a reused `sequence_id`.
pub const ERR_CODE_SEQUENCE_REUSED: u64 = 84_033_544;

pub const HMS_VERIFY_FAILED: HmsEntry = HmsEntry {
    attr: 0x0500_0500,
    code: 0x0001_0007,
};
pub const HMS_NOZZLE_OVER_TEMP: HmsEntry = HmsEntry {
    attr: 0x0300_0200,
    code: 0x0001_0003,
};
pub const HMS_BED_OVER_TEMP: HmsEntry = HmsEntry {
    attr: 0x0300_0100,
    code: 0x0001_0003,
};

pub const AMBIENT: f64 = 25.0;
/// Simulated seconds spent in PREPARE.
pub const PREPARE_SECS: f64 = 20.0;
/// Simulated seconds a cancel/busy `print_error` stays before clearing.
pub const ERROR_CLEAR_SECS: f64 = 3.0;
/// Print duration when `slice_info.config` has no `prediction`.
pub const DEFAULT_PREDICTION_SECS: f64 = 600.0;
pub const NOZZLE_PRINT_TEMP: f64 = 220.0;
pub const NOZZLE_SOAK_TEMP: f64 = 140.0;
pub const BED_PRINT_TEMP: f64 = 60.0;
/// Preparation stages of a job and their nominal lengths in simulated seconds:
/// 2 bed preheat, 1 bed levelling, 7 hotend heating, 14 nozzle cleaning.
const STAGES: [(i32, f64); 4] = [(2, 60.0), (1, 60.0), (7, 40.0), (14, 30.0)];
/// Paused by user.
pub const STG_PAUSED: i32 = 16;
/// Over-temperature margin before a runaway latches its HMS.
const RUNAWAY_MARGIN: f64 = 15.0;

/// One job as accepted from a `project_file`.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub subtask_name: String,
    pub subtask_id: String,
    pub task_id: String,
    pub project_id: String,
    pub profile_id: String,
    /// Storage name of the 3MF.
    pub file_name: String,
    /// `gcode_file` as the model reports it.
    pub gcode_file: String,
    /// Simulated seconds in RUNNING (preparation stages + printing).
    pub duration: f64,
    pub total_layers: u32,
    /// The job fails at the end of PREPARE with this `print_error`.
    pub failure: Option<u32>,
    /// AMS tray (global id) feeding the first filament, `None` = external spool / no AMS.
    pub tray: Option<u32>,
}

/// A spool of filament in a simulated AMS tray or on the external holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSpool {
    /// Bambu filament preset id (`tray_info_idx`), e.g. `GFA00`.
    pub preset: String,
    /// `tray_type`, e.g. `PLA`.
    pub material: String,
    /// `tray_sub_brands`, e.g. `PLA Basic`.
    pub sub_brand: String,
    /// `RRGGBBAA`.
    pub color: String,
    /// Filament left in percent; -1 = not estimated (as the firmware reports it).
    pub remain: i32,
}

impl SimSpool {
    pub fn new(preset: &str, material: &str, sub_brand: &str, color: &str, remain: i32) -> Self {
        Self {
            preset: preset.into(),
            material: material.into(),
            sub_brand: sub_brand.into(),
            color: color.into(),
            remain,
        }
    }
}

/// What a freshly started simulator has in its AMS: four Bambu spools (preset ids, product
/// lines and colours as Bambu sells them), partly used.
pub fn default_trays() -> [Option<SimSpool>; 4] {
    [
        Some(SimSpool::new("GFA00", "PLA", "PLA Basic", "FFFFFFFF", 80)),
        Some(SimSpool::new("GFA00", "PLA", "PLA Basic", "000000FF", 45)),
        Some(SimSpool::new("GFA00", "PLA", "PLA Basic", "C12E1FFF", 100)),
        Some(SimSpool::new("GFG02", "PETG", "PETG HF", "0A2989FF", 62)),
    ]
}

/// The external spool holder's spool of a freshly started simulator (a generic PLA, as the
/// captures show it).
pub fn default_external_spool() -> Option<SimSpool> {
    Some(SimSpool::new("GFL99", "PLA", "", "FFFFFFFF", 0))
}

/// Where an automatic `print_error` clear is pending.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ErrorClear {
    at_sim: f64,
    after_epoch: u64,
}

/// What [`Machine::handle_print`] asks the caller to publish.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// The ack message (whole `{"print":{…}}` object), if any.
    pub ack: Option<Value>,
}

/// Context a command needs from outside the machine.
pub struct CommandCtx<'a> {
    pub knobs: &'a KnobValues,
    pub storage: &'a SimStorage,
    pub unix_now: u64,
}

/// The print state machine of one simulated printer.
#[derive(Debug, Clone)]
pub struct Machine {
    pub model: Model,
    pub time_scale: f64,
    /// Simulated seconds since start.
    pub sim_now: f64,
    pub state: GcodeState,
    state_entered_epoch: u64,
    /// Report ticks seen so far (set by the caller before each advance).
    pub report_epoch: u64,
    /// Current or last job (its ids are echoed in reports).
    pub job: Option<Job>,
    pub prepare_elapsed: f64,
    pub run_elapsed: f64,
    pub stg: Vec<i32>,
    pub stg_cur: i32,
    saved_stg_cur: i32,
    pub percent: u32,
    pub remaining_minutes: u32,
    pub layer: u32,
    pub total_layers: u32,
    pub prepare_percent: u32,
    pub nozzle: f64,
    pub nozzle_target: f64,
    pub bed: f64,
    pub bed_target: f64,
    pub chamber: f64,
    pub print_error: u32,
    error_clear: Option<ErrorClear>,
    pub hms: Vec<HmsEntry>,
    /// What the `injected_hms` / `injected_print_error` knobs put in, so that it leaves with them.
    injected_hms: Vec<HmsEntry>,
    injected_print_error: Option<u32>,
    pub print_type: &'static str,
    pub lights_on: bool,
    /// Front door open (X1 `home_flag` bit 23, H2/P2S `stat` bit 23).
    pub door_open: bool,
    pub spd_lvl: u32,
    pub gcode_start_time: u64,
    /// AMS tray feeding the nozzle (global tray id), `None` = none (255 in reports).
    pub tray_now: Option<u32>,
    /// The spools in the AMS's four trays (`None` = empty slot).
    pub trays: [Option<SimSpool>; 4],
    /// The spool on the external holder.
    pub external_spool: Option<SimSpool>,
    /// Objects skipped in the current job (`skip_objects`, reported as `s_obj`).
    pub skipped_objects: Vec<i64>,
    /// AI detectors switched by `xcam.xcam_control_set` (unset = the model's default).
    pub xcam: std::collections::BTreeMap<String, bool>,
    pub job_counter: u64,
    pub jobs_started: u64,
    /// A start accepted under the `late_start` knob: begins at this simulated time.
    pending_start: Option<(Job, f64)>,
    /// A1 mini: a busy refusal cancels the running job once the refusal was reported.
    pending_cancel_after_epoch: Option<u64>,
    seen_sequence_ids: HashSet<String>,
}

impl Machine {
    pub fn new(model: Model, time_scale: f64) -> Self {
        Self {
            model,
            time_scale: if time_scale.is_finite() && time_scale > 0.0 {
                time_scale
            } else {
                1.0
            },
            sim_now: 0.0,
            state: GcodeState::Idle,
            state_entered_epoch: 0,
            report_epoch: 0,
            job: None,
            prepare_elapsed: 0.0,
            run_elapsed: 0.0,
            stg: Vec::new(),
            stg_cur: idle_stg_cur(model),
            saved_stg_cur: 0,
            percent: 0,
            remaining_minutes: 0,
            layer: 0,
            total_layers: 0,
            prepare_percent: 0,
            nozzle: AMBIENT,
            nozzle_target: 0.0,
            bed: AMBIENT,
            bed_target: 0.0,
            chamber: AMBIENT,
            print_error: 0,
            error_clear: None,
            hms: Vec::new(),
            injected_hms: Vec::new(),
            injected_print_error: None,
            print_type: "idle",
            lights_on: true,
            door_open: false,
            spd_lvl: 2,
            gcode_start_time: 0,
            tray_now: None,
            trays: default_trays(),
            external_spool: default_external_spool(),
            skipped_objects: Vec::new(),
            xcam: std::collections::BTreeMap::new(),
            job_counter: 0,
            jobs_started: 0,
            pending_start: None,
            pending_cancel_after_epoch: None,
            seen_sequence_ids: HashSet::new(),
        }
    }

    /// The machine after a power cut and restore: IDLE (or FAILED with 0300_8007 offered when a
    /// job was active and `offer_resume`), heaters off, job forgotten except for its echo.
    pub fn power_restored(&mut self, offer_resume: bool) {
        let was_active = self.state.is_active() || self.pending_start.is_some();
        self.pending_start = None;
        self.pending_cancel_after_epoch = None;
        self.error_clear = None;
        self.stg.clear();
        self.stg_cur = idle_stg_cur(self.model);
        self.nozzle_target = 0.0;
        self.bed_target = 0.0;
        self.hms.clear();
        self.print_type = "idle";
        if was_active && offer_resume {
            self.enter(GcodeState::Failed);
            self.print_error = ERR_POWER_LOSS;
        } else {
            self.enter(GcodeState::Idle);
            self.print_error = 0;
            self.percent = 0;
            self.layer = 0;
            self.remaining_minutes = 0;
        }
    }

    /// The front door opened or closed. Models with a door sensor (X1/H2/P2S) pause a running
    /// job with `print_error` 0300_800F; closing the door does not resume it.
    pub fn set_door(&mut self, open: bool) {
        self.door_open = open;
        let has_sensor = matches!(
            self.model,
            Model::X1C | Model::X1E | Model::P2S | Model::H2D
        );
        if open && has_sensor && self.state == GcodeState::Running {
            self.saved_stg_cur = self.stg_cur;
            self.enter(GcodeState::Pause);
            self.stg_cur = STG_PAUSED;
            self.print_error = ERR_DOOR_OPEN_PAUSED;
            self.error_clear = None;
        }
    }

    /// A person dismissed the dialog on the screen: errors cleared, FINISH/FAILED → IDLE.
    pub fn dismiss(&mut self) {
        self.print_error = 0;
        self.error_clear = None;
        if matches!(self.state, GcodeState::Finish | GcodeState::Failed) {
            self.enter(GcodeState::Idle);
        }
    }

    fn enter(&mut self, state: GcodeState) {
        self.state = state;
        self.state_entered_epoch = self.report_epoch;
    }

    /// A time-driven transition may happen only after the current state was reported once.
    fn may_leave(&self) -> bool {
        self.report_epoch > self.state_entered_epoch
    }

    fn set_transient_error(&mut self, code: u32) {
        self.print_error = code;
        self.error_clear = Some(ErrorClear {
            at_sim: self.sim_now + ERROR_CLEAR_SECS,
            after_epoch: self.report_epoch,
        });
    }

    /// Move simulated time forward by `dt` seconds.
    pub fn advance(&mut self, dt: f64, knobs: &KnobValues) {
        let dt = if dt.is_finite() && dt > 0.0 { dt } else { 0.0 };
        self.sim_now += dt;
        self.update_thermal(dt, knobs);
        self.apply_injected_faults(knobs);
        if knobs.developer_mode {
            self.hms.retain(|h| *h != HMS_VERIFY_FAILED);
        }
        if let Some(c) = self.error_clear
            && self.sim_now >= c.at_sim
            && self.report_epoch > c.after_epoch
        {
            self.print_error = 0;
            self.error_clear = None;
        }
        if let Some(epoch) = self.pending_cancel_after_epoch
            && self.report_epoch > epoch
        {
            self.pending_cancel_after_epoch = None;
            if self.state.is_active() {
                self.cancel();
            }
        }
        if let Some((_, at)) = &self.pending_start
            && self.sim_now >= *at
            && let Some((job, _)) = self.pending_start.take()
        {
            self.begin_job(job);
            return;
        }
        match self.state {
            GcodeState::Prepare => {
                self.prepare_elapsed += dt;
                self.prepare_percent =
                    ((self.prepare_elapsed / PREPARE_SECS).min(1.0) * 100.0) as u32;
                if self.prepare_elapsed >= PREPARE_SECS && self.may_leave() {
                    let failure = self.job.as_ref().and_then(|j| j.failure);
                    match failure {
                        Some(code) => self.fail(code),
                        None => self.start_running(),
                    }
                }
            }
            GcodeState::Running => {
                self.run_elapsed += dt;
                self.update_progress();
                let duration = self.job.as_ref().map_or(0.0, |j| j.duration);
                if self.run_elapsed >= duration && self.may_leave() {
                    self.finish();
                }
            }
            _ => {}
        }
    }

    fn update_thermal(&mut self, dt: f64, knobs: &KnobValues) {
        self.nozzle = approach(self.nozzle, self.nozzle_target, dt, 20.0, 60.0);
        self.bed = approach(self.bed, self.bed_target, dt, 60.0, 180.0);
        let chamber_goal = AMBIENT + (self.bed - AMBIENT) * 0.2;
        self.chamber = approach(self.chamber, chamber_goal, dt, 120.0, 120.0);
        match knobs.thermal_runaway {
            Some(Heater::Nozzle) => self.nozzle = (self.nozzle + 2.0 * dt).min(450.0),
            Some(Heater::Bed) => self.bed = (self.bed + 1.0 * dt).min(200.0),
            None => {}
        }
        // A heater cooling down after a print (target 0) is not over temperature: only a heater
        // driven past its target (the runaway knob, or above a set target) raises the HMS.
        let over = |temp: f64, target: f64, runaway: bool| {
            (runaway && temp > target.max(AMBIENT) + RUNAWAY_MARGIN)
                || (target > 0.0 && temp > target + RUNAWAY_MARGIN)
        };
        let nozzle_over = over(
            self.nozzle,
            self.nozzle_target,
            knobs.thermal_runaway == Some(Heater::Nozzle),
        );
        let bed_over = over(
            self.bed,
            self.bed_target,
            knobs.thermal_runaway == Some(Heater::Bed),
        );
        // A printer whose own protection failed (the case the gateway's watchdog is for) says
        // nothing.
        let reports = knobs.firmware_reports_overheat;
        latch(&mut self.hms, HMS_NOZZLE_OVER_TEMP, reports && nozzle_over);
        latch(&mut self.hms, HMS_BED_OVER_TEMP, reports && bed_over);
    }

    /// Faults injected by the knobs stay latched while the knob holds them (as a real printer's
    /// HMS list does while the condition lasts) and clear when it drops them.
    fn apply_injected_faults(&mut self, knobs: &KnobValues) {
        for gone in self
            .injected_hms
            .iter()
            .filter(|h| !knobs.injected_hms.contains(h))
        {
            latch(&mut self.hms, *gone, false);
        }
        for entry in &knobs.injected_hms {
            latch(&mut self.hms, *entry, true);
        }
        self.injected_hms.clone_from(&knobs.injected_hms);
        match (knobs.injected_print_error, self.injected_print_error) {
            (Some(code), _) => self.print_error = code,
            (None, Some(old)) if self.print_error == old => self.print_error = 0,
            _ => {}
        }
        self.injected_print_error = knobs.injected_print_error;
    }

    fn prep_total(&self) -> f64 {
        let duration = self.job.as_ref().map_or(0.0, |j| j.duration);
        let nominal: f64 = STAGES.iter().map(|(_, s)| s).sum();
        nominal.min(duration * 0.25)
    }

    fn start_running(&mut self) {
        self.enter(GcodeState::Running);
        self.run_elapsed = 0.0;
        self.prepare_percent = 100;
        self.stg = STAGES.iter().map(|(id, _)| *id).collect();
        self.update_progress();
    }

    fn update_progress(&mut self) {
        let Some(job) = &self.job else { return };
        let duration = job.duration;
        let total_layers = job.total_layers;
        let prep_total = self.prep_total();
        let nominal: f64 = STAGES.iter().map(|(_, s)| s).sum();
        let t = self.run_elapsed;
        if t < prep_total {
            let mut acc = 0.0;
            let mut cur = 0;
            for (id, secs) in STAGES {
                acc += secs / nominal * prep_total;
                if t < acc {
                    cur = id;
                    break;
                }
            }
            self.stg_cur = cur;
            self.percent = 0;
            self.layer = 0;
            self.bed_target = BED_PRINT_TEMP;
            self.nozzle_target = if matches!(cur, 7 | 14) {
                NOZZLE_PRINT_TEMP
            } else if cur == 1 {
                NOZZLE_SOAK_TEMP
            } else {
                0.0
            };
        } else {
            self.stg_cur = 0;
            self.bed_target = BED_PRINT_TEMP;
            self.nozzle_target = NOZZLE_PRINT_TEMP;
            let printing = (duration - prep_total).max(1.0);
            let progress = ((t - prep_total) / printing).clamp(0.0, 1.0);
            self.percent = ((progress * 100.0) as u32).min(99);
            self.layer = ((progress * total_layers as f64).ceil() as u32).clamp(1, total_layers);
        }
        self.total_layers = total_layers;
        self.remaining_minutes = ((duration - t).max(0.0) / 60.0).ceil() as u32;
    }

    fn finish(&mut self) {
        self.enter(GcodeState::Finish);
        self.percent = 100;
        self.remaining_minutes = 0;
        self.layer = self.total_layers;
        self.stop_heaters_and_stages();
    }

    fn fail(&mut self, code: u32) {
        self.enter(GcodeState::Failed);
        self.print_error = code;
        self.error_clear = None;
        self.stop_heaters_and_stages();
    }

    fn cancel(&mut self) {
        self.enter(GcodeState::Failed);
        self.percent = 0;
        self.stop_heaters_and_stages();
        self.set_transient_error(ERR_CANCELLED);
    }

    fn stop_heaters_and_stages(&mut self) {
        self.nozzle_target = 0.0;
        self.bed_target = 0.0;
        self.stg.clear();
        self.stg_cur = idle_stg_cur(self.model);
        self.print_type = "idle";
        self.pending_start = None;
        self.tray_now = None;
    }

    fn begin_job(&mut self, job: Job) {
        self.enter(GcodeState::Prepare);
        self.total_layers = job.total_layers;
        self.job = Some(job);
        self.prepare_elapsed = 0.0;
        self.run_elapsed = 0.0;
        self.prepare_percent = 0;
        self.percent = 0;
        self.layer = 0;
        self.remaining_minutes = 0;
        self.print_error = 0;
        self.error_clear = None;
        self.stg.clear();
        self.stg_cur = idle_stg_cur(self.model);
        self.print_type = "local";
        self.skipped_objects.clear();
        self.tray_now = self.job.as_ref().and_then(|j| j.tray);
        self.job_counter += 1;
        self.jobs_started += 1;
    }

    /// Apply one `print.*` command (`body` is the object under `print`).
    pub fn handle_print(&mut self, body: &Map<String, Value>, ctx: &CommandCtx) -> Reply {
        let command = body.get("command").and_then(Value::as_str).unwrap_or("");
        let seq = body.get("sequence_id").and_then(sequence_id_string);
        if ctx.knobs.strict_sequence_ids
            && let Some(seq) = &seq
            && !self.seen_sequence_ids.insert(seq.clone())
        {
            return Reply {
                ack: Some(ack_with(
                    body,
                    Some("failed"),
                    "mqtt message verify failed",
                    Some(ERR_CODE_SEQUENCE_REUSED),
                )),
            };
        }
        if !ctx.knobs.developer_mode {
            return match ctx.knobs.refusal_style {
                RefusalStyle::AckAndHms => {
                    latch(&mut self.hms, HMS_VERIFY_FAILED, true);
                    Reply {
                        ack: Some(ack_with(
                            body,
                            Some("failed"),
                            "mqtt message verify failed",
                            Some(ERR_CODE_VERIFY_FAILED),
                        )),
                    }
                }
                RefusalStyle::AckWithoutResult => {
                    latch(&mut self.hms, HMS_VERIFY_FAILED, true);
                    let mut ack = Map::new();
                    ack.insert("command".into(), json!(command));
                    if let Some(s) = body.get("sequence_id") {
                        ack.insert("sequence_id".into(), s.clone());
                    }
                    Reply {
                        ack: Some(json!({ "print": ack })),
                    }
                }
                RefusalStyle::Silent => Reply::default(),
            };
        }
        match command {
            "project_file" => self.project_file(body, ctx),
            "pause" => {
                if self.state == GcodeState::Running {
                    self.saved_stg_cur = self.stg_cur;
                    self.enter(GcodeState::Pause);
                    self.stg_cur = STG_PAUSED;
                }
                success(body)
            }
            "resume" => {
                if self.state == GcodeState::Pause {
                    if self.print_error == ERR_DOOR_OPEN_PAUSED {
                        self.print_error = 0;
                    }
                    self.enter(GcodeState::Running);
                    self.stg_cur = self.saved_stg_cur;
                }
                success(body)
            }
            "stop" => {
                if self.state.is_active() || self.pending_start.is_some() {
                    self.cancel();
                }
                success(body)
            }
            "gcode_line" => {
                let param = body.get("param").and_then(Value::as_str).unwrap_or("");
                self.run_gcode(param);
                success(body)
            }
            "skip_objects" => {
                // Objects to leave out of the running job; reported back in `s_obj`.
                if self.state.is_active()
                    && let Some(list) = body.get("obj_list").and_then(Value::as_array)
                {
                    for id in list.iter().filter_map(Value::as_i64) {
                        if !self.skipped_objects.contains(&id) {
                            self.skipped_objects.push(id);
                        }
                    }
                }
                success(body)
            }
            "print_speed" => {
                if let Some(lvl) = body
                    .get("param")
                    .and_then(Value::as_str)
                    .and_then(|p| p.trim().parse::<u32>().ok())
                    .filter(|l| (1..=4).contains(l))
                {
                    self.spd_lvl = lvl;
                }
                success(body)
            }
            _ => success(body),
        }
    }

    /// The G-code a `gcode_line` carries, as far as the simulated machine has it: heater targets
    /// (`M104`/`M109` nozzle, `M140`/`M190` bed; `S0` switches off), homing (`G28`). Lines are
    /// separated by `\n`; comments after `;` are ignored; other commands have no modelled
    /// effect.
    pub fn run_gcode(&mut self, gcode: &str) {
        for line in gcode.lines() {
            let code = line.split(';').next().unwrap_or("").trim();
            let mut words = code.split_whitespace();
            let Some(cmd) = words.next() else { continue };
            let s_value = words
                .find_map(|w| w.strip_prefix('S').or_else(|| w.strip_prefix('s')))
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite());
            match (cmd.to_ascii_uppercase().as_str(), s_value) {
                ("M104" | "M109", Some(t)) => self.nozzle_target = t.clamp(0.0, 350.0),
                ("M140" | "M190", Some(t)) => self.bed_target = t.clamp(0.0, 120.0),
                _ => {}
            }
        }
    }

    fn refuse_start(&mut self, body: &Map<String, Value>, code: u32, reason: &str) -> Reply {
        self.set_transient_error(code);
        Reply {
            ack: Some(ack_with(body, Some("failed"), reason, None)),
        }
    }

    fn project_file(&mut self, body: &Map<String, Value>, ctx: &CommandCtx) -> Reply {
        let busy = self.state.is_active() || self.pending_start.is_some();
        if busy || ctx.knobs.refuse_busy {
            self.set_transient_error(ERR_BUSY);
            if busy && self.model == Model::A1Mini {
                self.pending_cancel_after_epoch = Some(self.report_epoch);
            }
            return Reply {
                ack: ctx
                    .knobs
                    .busy_ack
                    .then(|| ack_with(body, Some("failed"), "device busy", None)),
            };
        }
        let param = body.get("param").and_then(Value::as_str).unwrap_or("");
        let Some(plate) = plate_index(param) else {
            return self.refuse_start(body, ERR_PARSE, "invalid param");
        };
        let url = body.get("url").and_then(Value::as_str).unwrap_or("");
        let Some(name) = resolve_url(url) else {
            return self.refuse_start(body, ERR_FILE_PATH, "unsupported url");
        };
        if !ctx.knobs.sdcard || ctx.storage.is_missing() {
            return self.refuse_start(body, ERR_NO_CARD, "no storage");
        }
        if ctx.knobs.ack_but_never_start {
            return success(body);
        }
        let md5 = body.get("md5").and_then(Value::as_str).unwrap_or("");
        let use_ams = body.get("use_ams");
        let inspected = inspect_file(ctx.storage, &name, param, plate, md5);
        let mut failure = inspected.as_ref().err().copied();
        let info = inspected.unwrap_or_default();
        if failure.is_none()
            && let Some(code) = &info.model_code
            && code != self.model.model_code()
        {
            failure = Some(ERR_MODEL);
        }
        let mut tray = None;
        match use_ams {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => match ams_tray(body) {
                Ok(t) => tray = t,
                Err(NoMappingTable) => failure = failure.or(Some(ERR_AMS)),
            },
            // Not a JSON bool (an H2D reads an int as a nozzle index): no mapping table.
            Some(_) => failure = failure.or(Some(ERR_AMS)),
        }
        let duration = info.prediction.unwrap_or(DEFAULT_PREDICTION_SECS).max(30.0);
        let total_layers = ((duration / 12.0) as u32).clamp(50, 250);
        // P1/A1 report the file name (§3.5: `<name>.gcode.3mf`), also for a file in a folder.
        let gcode_file = if matches!(self.model, Model::X1C | Model::X1E) {
            format!("/data/{param}")
        } else {
            name.rsplit('/').next().unwrap_or(&name).to_string()
        };
        let subtask_name = match string_field(body, "subtask_name", "") {
            given if given.is_empty() => default_subtask_name(&name),
            given => given,
        };
        let job = Job {
            subtask_name,
            subtask_id: string_field(body, "subtask_id", "0"),
            task_id: string_field(body, "task_id", "0"),
            project_id: string_field(body, "project_id", "0"),
            profile_id: string_field(body, "profile_id", "0"),
            file_name: name,
            gcode_file,
            duration,
            total_layers,
            failure,
            tray,
        };
        self.gcode_start_time = ctx.unix_now;
        if ctx.knobs.echo_subtask_then_idle {
            self.job = Some(job);
            return success(body);
        }
        match ctx.knobs.late_start {
            Some(delay) if !delay.is_zero() => {
                let at = self.sim_now + delay.as_secs_f64() * self.time_scale;
                self.pending_start = Some((job, at));
            }
            _ => self.begin_job(job),
        }
        success(body)
    }
}

/// A `use_ams` start whose mapping names no tray the printer has (07FF_8012).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoMappingTable;

/// Trays of the simulated AMS (one unit, global ids 0–3).
pub const AMS_TRAYS: u32 = 4;

/// The tray feeding the first filament of a `use_ams: true` start, from `ams_mapping2`
/// (`{"ams_id":0,"slot_id":N}`; external spool `ams_id` 254/255) or the flat `ams_mapping`
/// (global tray ids, `-1` = unmapped). `Err` = no valid mapping table (07FF_8012).
pub fn ams_tray(body: &Map<String, Value>) -> Result<Option<u32>, NoMappingTable> {
    if let Some(list) = body.get("ams_mapping2").and_then(Value::as_array) {
        let mut first = None;
        for e in list {
            let ams = e
                .get("ams_id")
                .and_then(Value::as_u64)
                .ok_or(NoMappingTable)?;
            let slot = e
                .get("slot_id")
                .and_then(Value::as_u64)
                .ok_or(NoMappingTable)?;
            let tray = match (ams, slot) {
                (0, s) if s < u64::from(AMS_TRAYS) => Some(s as u32),
                (254 | 255, 0) | (255, 255) => None,
                _ => return Err(NoMappingTable),
            };
            first = first.or(tray);
        }
        return Ok(first);
    }
    let list = body
        .get("ams_mapping")
        .and_then(Value::as_array)
        .ok_or(NoMappingTable)?;
    let mut first = None;
    for e in list {
        match e.as_i64() {
            Some(-1) => {}
            Some(t) if (0..i64::from(AMS_TRAYS)).contains(&t) => first = first.or(Some(t as u32)),
            _ => return Err(NoMappingTable),
        }
    }
    if list.is_empty() {
        Err(NoMappingTable)
    } else {
        Ok(first)
    }
}

/// Idle `stg_cur` per model (§11).
pub fn idle_stg_cur(model: Model) -> i32 {
    match model {
        Model::P1P | Model::P1S => 255,
        Model::A1 | Model::A1Mini => 0,
        Model::X1C | Model::X1E | Model::P2S | Model::H2D | Model::Klipper => -1,
    }
}

/// First-order lag toward `target` (0 = heater off → ambient), with separate heating and
/// cooling time constants; snaps when within 0.05 °C so idle reports settle.
fn approach(current: f64, target: f64, dt: f64, tau_heat: f64, tau_cool: f64) -> f64 {
    let goal = if target <= 0.0 { AMBIENT } else { target };
    let tau = if goal > current { tau_heat } else { tau_cool };
    let next = current + (goal - current) * (1.0 - (-dt / tau).exp());
    if (next - goal).abs() < 0.05 {
        goal
    } else {
        next
    }
}

fn latch(hms: &mut Vec<HmsEntry>, entry: HmsEntry, on: bool) {
    let present = hms.contains(&entry);
    if on && !present {
        hms.push(entry);
    } else if !on && present {
        hms.retain(|h| *h != entry);
    }
}

fn string_field(body: &Map<String, Value>, key: &str, default: &str) -> String {
    match body.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => default.to_string(),
    }
}

fn success(body: &Map<String, Value>) -> Reply {
    Reply {
        ack: Some(ack_with(body, Some("success"), "success", None)),
    }
}

/// An ack echoing the whole request with `result`/`reason` (§5.1).
pub fn ack_with(
    body: &Map<String, Value>,
    result: Option<&str>,
    reason: &str,
    err_code: Option<u64>,
) -> Value {
    let mut ack = body.clone();
    if let Some(result) = result {
        ack.insert("result".into(), json!(result));
        ack.insert("reason".into(), json!(reason));
    }
    if let Some(code) = err_code {
        ack.insert("err_code".into(), json!(code));
    }
    json!({ "print": ack })
}

/// `Metadata/plate_<N>.gcode` → N.
pub fn plate_index(param: &str) -> Option<u32> {
    param
        .strip_prefix("Metadata/plate_")?
        .strip_suffix(".gcode")?
        .parse()
        .ok()
        .filter(|n| *n >= 1)
}

/// Resolve every URL form of §4.2 to the file's storage path: `/<name>` at the root, or
/// `<folder>/<name>` in a sub-folder (`file:///sdcard/cache/<name>`, `ftp:///cache/<name>`),
/// as FTPS stored it. Every model accepts every form (docs/bambu-protocol.md §4.2, §11).
pub fn resolve_url(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("ftp://")
        .or_else(|| url.strip_prefix("file://"))
        .or_else(|| url.strip_prefix("brtc://emmc/"))?;
    let rest = rest.trim_start_matches('/');
    let rest = ["sdcard/", "media/usb0/", "mnt/sdcard/", "data/"]
        .iter()
        .find_map(|p| rest.strip_prefix(p))
        .unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return None;
    }
    Some(parts.join("/"))
}

/// The job name a printer shows for a start without `subtask_name`: the file's base name
/// without its `.gcode.3mf` / `.3mf` / `.gcode` extension (`cache/lid_v2.gcode.3mf` → `lid_v2`).
/// docs/bambu-protocol.md does not say; local clients report that `subtask_name` then carries the file
/// name (rhoopr/bambutop issue #3, ha-bambulab issue #133).
pub fn default_subtask_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    [".gcode.3mf", ".3mf", ".gcode"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .filter(|stem| !stem.is_empty())
        .unwrap_or(base)
        .to_string()
}

/// What the printer learns from the 3MF.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileInfo {
    pub model_code: Option<String>,
    pub prediction: Option<f64>,
}

/// Check the stored file like the printer does in PREPARE; `Err` is the `print_error`.
fn inspect_file(
    storage: &SimStorage,
    name: &str,
    param: &str,
    plate: u32,
    md5: &str,
) -> Result<FileInfo, u32> {
    let data = storage.get(name).ok_or(ERR_STORAGE)?;
    if !md5.is_empty() && md5 != "from_sd_card" {
        let digest = hex::encode_upper(Md5::digest(data.as_slice()));
        if digest != md5 {
            return Err(ERR_MD5);
        }
    }
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(data.as_slice())).map_err(|_| ERR_PARSE)?;
    if zip.by_name(param).is_err() {
        return Err(ERR_PARSE);
    }
    let mut slice_info = String::new();
    if let Ok(mut f) = zip.by_name("Metadata/slice_info.config") {
        // Bounded read: slice_info is a few KB.
        let _ = f
            .by_ref()
            .take(4 * 1024 * 1024)
            .read_to_string(&mut slice_info);
    }
    Ok(parse_slice_info(&slice_info, plate))
}

/// `printer_model_id` and `prediction` of plate `plate` (or the first plate) in
/// `Metadata/slice_info.config`.
pub fn parse_slice_info(xml: &str, plate: u32) -> FileInfo {
    let blocks: Vec<&str> = xml.split("<plate>").skip(1).collect();
    let block = blocks
        .iter()
        .find(|b| metadata_value(b, "index").and_then(|v| v.parse::<u32>().ok()) == Some(plate))
        .or(blocks.first())
        .copied()
        .unwrap_or(xml);
    FileInfo {
        model_code: metadata_value(block, "printer_model_id").map(str::to_string),
        prediction: metadata_value(block, "prediction").and_then(|v| v.parse().ok()),
    }
}

/// `value` of `<metadata key="<key>" value="…"/>`.
fn metadata_value<'a>(xml: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("key=\"{key}\"");
    let at = xml.find(&needle)?;
    let after = &xml[at + needle.len()..];
    let end_tag = after.find('>').unwrap_or(after.len());
    let tag = &after[..end_tag];
    let v = tag.find("value=\"")? + "value=\"".len();
    let rest = &tag[v..];
    Some(&rest[..rest.find('"')?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn knobs() -> KnobValues {
        KnobValues::new("12345678".into(), true)
    }

    fn zip_3mf(model: &str, prediction: u32) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("Metadata/plate_1.gcode", opts).unwrap();
        w.write_all(b"G28\n").unwrap();
        w.start_file("Metadata/slice_info.config", opts).unwrap();
        write!(
            w,
            "<config><plate><metadata key=\"index\" value=\"1\"/><metadata key=\"printer_model_id\" value=\"{model}\"/><metadata key=\"prediction\" value=\"{prediction}\"/></plate></config>"
        )
        .unwrap();
        w.finish().unwrap();
        buf.into_inner()
    }

    fn start_body(name: &str, md5: &str) -> Map<String, Value> {
        json!({"sequence_id":"1","command":"project_file","param":"Metadata/plate_1.gcode",
            "url":format!("ftp://{name}"),"md5":md5,"subtask_name":"x","subtask_id":"42",
            "task_id":"42","project_id":"42","profile_id":"0","use_ams":false})
        .as_object()
        .unwrap()
        .clone()
    }

    /// Advance with a report tick between steps, like the running simulator.
    fn run(m: &mut Machine, k: &KnobValues, secs: u32) {
        for _ in 0..secs {
            m.report_epoch += 1;
            m.advance(1.0, k);
        }
    }

    #[test]
    fn url_forms_resolve_to_name() {
        for u in [
            "ftp://a.gcode.3mf",
            "ftp:///a.gcode.3mf",
            "file:///sdcard/a.gcode.3mf",
            "file:///media/usb0/a.gcode.3mf",
            "brtc://emmc/a.gcode.3mf",
        ] {
            assert_eq!(resolve_url(u).as_deref(), Some("a.gcode.3mf"), "{u}");
        }
        assert_eq!(resolve_url("http://x/a"), None);
        assert_eq!(resolve_url("ftp://"), None);
        for u in [
            "file:///sdcard/cache/a.gcode.3mf",
            "ftp:///cache/a.gcode.3mf",
            "ftp://cache/a.gcode.3mf",
            "file:///media/usb0/cache/a.gcode.3mf",
        ] {
            assert_eq!(resolve_url(u).as_deref(), Some("cache/a.gcode.3mf"), "{u}");
        }
        assert_eq!(resolve_url("ftp:///cache/../a.3mf"), None);
        assert_eq!(resolve_url("file:///sdcard/"), None);
    }

    #[test]
    fn default_subtask_name_is_the_base_name_without_extension() {
        assert_eq!(default_subtask_name("lid_v2.gcode.3mf"), "lid_v2");
        assert_eq!(default_subtask_name("cache/part.3mf"), "part");
        assert_eq!(default_subtask_name("a.gcode"), "a");
        assert_eq!(default_subtask_name(".3mf"), ".3mf");
    }

    #[test]
    fn slice_info_parsed() {
        let info = parse_slice_info(
            "<plate><metadata key=\"index\" value=\"2\"/><metadata key=\"printer_model_id\" value=\"C12\"/><metadata key=\"prediction\" value=\"99\"/></plate>",
            2,
        );
        assert_eq!(info.model_code.as_deref(), Some("C12"));
        assert_eq!(info.prediction, Some(99.0));
    }

    #[test]
    fn full_print_cycle_and_persisting_finish() {
        let storage = SimStorage::default();
        let data = zip_3mf("C12", 300);
        let md5 = hex::encode_upper(Md5::digest(&data));
        storage.put("/j.gcode.3mf", data).unwrap();
        let k = knobs();
        let mut m = Machine::new(Model::P1S, 1.0);
        let ctx = CommandCtx {
            knobs: &k,
            storage: &storage,
            unix_now: 1,
        };
        let r = m.handle_print(&start_body("j.gcode.3mf", &md5), &ctx);
        assert_eq!(r.ack.unwrap()["print"]["result"], "success");
        assert_eq!(m.state, GcodeState::Prepare);
        run(&mut m, &k, 25);
        assert_eq!(m.state, GcodeState::Running);
        run(&mut m, &k, 40);
        assert!(m.stg_cur != 0 && m.bed_target == BED_PRINT_TEMP);
        run(&mut m, &k, 300);
        assert_eq!(m.state, GcodeState::Finish);
        assert_eq!((m.percent, m.remaining_minutes), (100, 0));
        assert_eq!(m.nozzle_target, 0.0);
        run(&mut m, &k, 100);
        assert_eq!(m.state, GcodeState::Finish);
        // stop while FINISH is a no-op
        let stop = json!({"sequence_id":"2","command":"stop","param":""});
        m.handle_print(stop.as_object().unwrap(), &ctx);
        assert_eq!(m.state, GcodeState::Finish);
    }

    #[test]
    fn wrong_model_md5_and_missing_file_fail() {
        let storage = SimStorage::default();
        storage.put("a.3mf", zip_3mf("N1", 300)).unwrap();
        storage.put("b.3mf", b"not a zip".to_vec()).unwrap();
        let k = knobs();
        let ctx = CommandCtx {
            knobs: &k,
            storage: &storage,
            unix_now: 1,
        };
        for (name, md5, code) in [
            ("a.3mf", "", ERR_MODEL),
            ("a.3mf", "00", ERR_MD5),
            ("b.3mf", "", ERR_PARSE),
            ("c.3mf", "", ERR_STORAGE),
        ] {
            let mut m = Machine::new(Model::P1S, 1.0);
            m.handle_print(&start_body(name, md5), &ctx);
            run(&mut m, &k, 25);
            assert_eq!(
                (m.state, m.print_error),
                (GcodeState::Failed, code),
                "{name}"
            );
        }
    }

    #[test]
    fn busy_and_stop_and_a1mini_cancel() {
        let storage = SimStorage::default();
        storage.put("a.3mf", zip_3mf("N1", 3000)).unwrap();
        let k = knobs();
        let ctx = CommandCtx {
            knobs: &k,
            storage: &storage,
            unix_now: 1,
        };
        let mut m = Machine::new(Model::A1Mini, 1.0);
        m.handle_print(&start_body("a.3mf", ""), &ctx);
        run(&mut m, &k, 30);
        assert_eq!(m.state, GcodeState::Running);
        let r = m.handle_print(&start_body("a.3mf", ""), &ctx);
        assert_eq!(r.ack.unwrap()["print"]["result"], "failed");
        assert_eq!(m.print_error, ERR_BUSY);
        run(&mut m, &k, 1);
        assert_eq!(
            (m.state, m.print_error),
            (GcodeState::Failed, ERR_CANCELLED)
        );
        run(&mut m, &k, 5);
        assert_eq!(m.print_error, 0);
    }

    #[test]
    fn developer_mode_off_refuses_and_latches_hms() {
        let storage = SimStorage::default();
        let mut k = knobs();
        k.developer_mode = false;
        let ctx = CommandCtx {
            knobs: &k,
            storage: &storage,
            unix_now: 1,
        };
        let mut m = Machine::new(Model::X1C, 1.0);
        let ack = m.handle_print(&start_body("a.3mf", ""), &ctx).ack.unwrap();
        assert_eq!(ack["print"]["result"], "failed");
        assert_eq!(ack["print"]["err_code"], ERR_CODE_VERIFY_FAILED);
        assert_eq!(m.hms, vec![HMS_VERIFY_FAILED]);
        assert_eq!(m.state, GcodeState::Idle);
    }

    #[test]
    fn door_open_pauses_x1_only() {
        let storage = SimStorage::default();
        storage.put("a.3mf", zip_3mf("BL-P001", 3000)).unwrap();
        let k = knobs();
        let ctx = CommandCtx {
            knobs: &k,
            storage: &storage,
            unix_now: 1,
        };
        let mut m = Machine::new(Model::X1C, 1.0);
        m.handle_print(&start_body("a.3mf", ""), &ctx);
        run(&mut m, &k, 25);
        m.set_door(true);
        assert_eq!(
            (m.state, m.print_error, m.stg_cur),
            (GcodeState::Pause, ERR_DOOR_OPEN_PAUSED, STG_PAUSED)
        );
        let resume = json!({"sequence_id":"9","command":"resume","param":""});
        m.handle_print(resume.as_object().unwrap(), &ctx);
        assert_eq!((m.state, m.print_error), (GcodeState::Running, 0));
    }

    #[test]
    fn ams_mappings_are_read_like_the_firmware() {
        let body = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            ams_tray(&body(json!({"ams_mapping": [2, -1]}))),
            Ok(Some(2))
        );
        assert_eq!(ams_tray(&body(json!({"ams_mapping": [-1]}))), Ok(None));
        assert_eq!(
            ams_tray(&body(json!({"ams_mapping": [7]}))),
            Err(NoMappingTable)
        );
        assert_eq!(
            ams_tray(&body(json!({"ams_mapping": []}))),
            Err(NoMappingTable)
        );
        assert_eq!(ams_tray(&body(json!({}))), Err(NoMappingTable));
        let two = json!({"ams_mapping": [-1], "ams_mapping2": [{"ams_id": 255, "slot_id": 0}, {"ams_id": 0, "slot_id": 3}]});
        assert_eq!(ams_tray(&body(two)), Ok(Some(3)));
        let bad = json!({"ams_mapping2": [{"ams_id": 1, "slot_id": 0}]});
        assert_eq!(ams_tray(&body(bad)), Err(NoMappingTable));
    }

    #[test]
    fn gcode_line_sets_heater_targets() {
        let mut m = Machine::new(Model::P1S, 1.0);
        m.run_gcode("M104 S230 \nM140 S60 ; bed\nG28\nM109 Sx\n");
        assert_eq!((m.nozzle_target, m.bed_target), (230.0, 60.0));
        m.run_gcode("M104 S0\nM190 S0\n");
        assert_eq!((m.nozzle_target, m.bed_target), (0.0, 0.0));
    }

    #[test]
    fn temperatures_follow_targets() {
        let mut m = Machine::new(Model::X1C, 1.0);
        let k = knobs();
        m.nozzle_target = 220.0;
        m.advance(20.0, &k);
        assert!(m.nozzle > 130.0 && m.nozzle < 220.0, "{}", m.nozzle);
        m.advance(200.0, &k);
        assert_eq!(m.nozzle, 220.0);
        m.nozzle_target = 0.0;
        m.advance(2000.0, &k);
        assert_eq!(m.nozzle, AMBIENT);
    }

    #[test]
    fn cooling_down_after_a_print_raises_no_over_temperature_message() {
        let mut m = Machine::new(Model::P1S, 1.0);
        let k = knobs();
        m.nozzle_target = 220.0;
        m.bed_target = 60.0;
        m.advance(600.0, &k);
        m.nozzle_target = 0.0;
        m.bed_target = 0.0;
        for _ in 0..200 {
            m.advance(1.0, &k);
            assert!(m.hms.is_empty(), "HMS while cooling at {} °C", m.nozzle);
        }
        // A heater driven past its target still raises it.
        let mut hot = knobs();
        hot.thermal_runaway = Some(Heater::Nozzle);
        m.advance(60.0, &hot);
        assert!(!m.hms.is_empty());
    }
}
