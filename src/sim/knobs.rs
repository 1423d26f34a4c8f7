//! Fault and behaviour knobs of one simulated printer (docs/bambu-protocol.md §12 "misbehaviours"). A
//! [`SimKnobs`] handle is cheap to clone and shared by every part of the simulator; tests change
//! values while the printer runs and the change applies to the next packet, command or tick.
//!
//! Knob durations (`late_start`, `qos0_delay`) are real (wall-clock) time, not simulated time:
//! they model protocol behaviour the gateway measures with its own clock.

use crate::printer::HmsEntry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How the printer refuses `print.*` commands when Developer Mode is off (§10.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefusalStyle {
    /// Ack `result:"failed"`, `reason:"mqtt message verify failed"`, `err_code:84033543`, and HMS
    /// 0500_0500_0001_0007 latched.
    #[default]
    AckAndHms,
    /// P1S 01.10 style: ack with only `command` + `sequence_id` (no `result`), HMS latched.
    AckWithoutResult,
    /// No ack, no HMS; the printer just stays where it is.
    Silent,
}

/// What a client beyond the model's limit (`Model::max_mqtt_clients`) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecondClientPolicy {
    /// Accept the new client and drop the older one(s) (what P1/A1 users see most).
    #[default]
    KickOlder,
    /// CONNACK 3 (server unavailable) to the new client.
    RefuseConnack,
    /// Close the new client's TCP connection right after its CONNECT.
    RefuseDrop,
    /// Accept the new client and drop the older one, then drop the new one too after one second:
    /// two clients that both reconnect keep kicking each other.
    Flap,
}

/// The CONNACK code for a wrong user name or access code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthRefusal {
    /// 5, not authorized (ha-bambulab's observation).
    #[default]
    NotAuthorized,
    /// 4, bad user name or password.
    BadUserNamePassword,
}

/// A heater for thermal fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heater {
    Nozzle,
    Bed,
}

/// All knob values. Defaults describe a healthy printer in LAN-only + Developer Mode.
#[derive(Debug, Clone, PartialEq)]
pub struct KnobValues {
    /// LAN access code (MQTT password). Changing it models "the user toggled LAN/Developer mode":
    /// new connections need the new code, existing sessions stay up.
    pub access_code: String,
    /// Developer Mode on: plain `print.*` commands are accepted.
    pub developer_mode: bool,
    pub refusal_style: RefusalStyle,
    /// Never send acks (command effects still happen).
    pub drop_acks: bool,
    /// Ack a `project_file` with success, then do nothing.
    pub ack_but_never_start: bool,
    /// Accept a `project_file`, echo its subtask ids in reports, but stay IDLE.
    pub echo_subtask_then_idle: bool,
    /// Deliver every report and ack twice (same `sequence_id`).
    pub duplicate_deliveries: bool,
    /// Publish nothing on the report topic (TCP and PINGRESP keep working).
    pub report_silence: bool,
    /// Half-broken session: commands are logged and PUBACKed but have no effect and no ack.
    pub ignore_commands: bool,
    /// Refuse every start as busy (0500_4004) even when idle.
    pub refuse_busy: bool,
    /// Send a failing ack for a busy refusal (otherwise only `print_error` shows it).
    pub busy_ack: bool,
    /// Heater that keeps heating past its target (HMS 0300_0200/0100_0001_0003 once 15 °C over,
    /// unless `firmware_reports_overheat` is off).
    pub thermal_runaway: Option<Heater>,
    /// The firmware raises its over-temperature HMS (0300_0200/0100_0001_0003) when a heater
    /// runs 15 °C past its target. Off: a printer whose own protection failed, silent while it
    /// overheats (only the gateway's watchdog can see it).
    pub firmware_reports_overheat: bool,
    /// HMS entries the printer reports as latched while they are listed here (fault injection,
    /// e.g. 0300_0100_0001_0001 heatbed fault).
    pub injected_hms: Vec<HmsEntry>,
    /// A `print_error` the printer reports while set (e.g. 0x0300_8044, fire detected).
    pub injected_print_error: Option<u32>,
    /// Report this nozzle temperature instead of the modelled one (over-limit tests).
    pub nozzle_temp_override: Option<f64>,
    /// Report this bed temperature instead of the modelled one.
    pub bed_temp_override: Option<f64>,
    /// Refuse a reused `print.*` `sequence_id` with `err_code` 84033544.
    pub strict_sequence_ids: bool,
    /// Never send PUBACK for QoS 1 publishes.
    pub withhold_puback: bool,
    /// Hold the current state this long (real time) after accepting a start, then PREPARE
    /// (H2D: FINISH ~50 s before PREPARE).
    pub late_start: Option<Duration>,
    pub auth_refusal: AuthRefusal,
    /// Allow subscribing to the request topic and wildcards (old X1 behaviour) instead of
    /// dropping the connection.
    pub allow_request_subscribe: bool,
    pub second_client: SecondClientPolicy,
    /// Override `Model::max_mqtt_clients()`.
    pub max_clients: Option<usize>,
    /// Drop a client that sends nothing for 1.5 × its keepalive.
    pub enforce_keepalive: bool,
    /// Handle QoS 0 requests only after this delay (P1 busy streaming status).
    pub qos0_delay: Option<Duration>,
    /// Send SSDP NOTIFY announcements.
    pub ssdp_enabled: bool,
    /// Storage inserted (`sdcard` field; P1/A1 refuse starts without it).
    pub sdcard: bool,
    /// The Wi-Fi reading wanders by a few dBm every few reports, as on a real printer (so an
    /// idle P1/A1 still sends a delta every few seconds). Off: an idle P1/A1 with nothing
    /// changing stays silent.
    pub wifi_wanders: bool,
}

impl KnobValues {
    pub fn new(access_code: String, developer_mode: bool) -> Self {
        Self {
            access_code,
            developer_mode,
            refusal_style: RefusalStyle::default(),
            drop_acks: false,
            ack_but_never_start: false,
            echo_subtask_then_idle: false,
            duplicate_deliveries: false,
            report_silence: false,
            ignore_commands: false,
            refuse_busy: false,
            busy_ack: true,
            thermal_runaway: None,
            firmware_reports_overheat: true,
            injected_hms: Vec::new(),
            injected_print_error: None,
            nozzle_temp_override: None,
            bed_temp_override: None,
            strict_sequence_ids: false,
            withhold_puback: false,
            late_start: None,
            auth_refusal: AuthRefusal::default(),
            allow_request_subscribe: false,
            second_client: SecondClientPolicy::default(),
            max_clients: None,
            enforce_keepalive: false,
            qos0_delay: None,
            ssdp_enabled: true,
            sdcard: true,
            wifi_wanders: true,
        }
    }
}

/// Shared, live-editable knobs of one simulated printer.
#[derive(Clone)]
pub struct SimKnobs {
    tx: Arc<watch::Sender<KnobValues>>,
}

impl SimKnobs {
    pub fn new(values: KnobValues) -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(values)),
        }
    }
    /// A copy of the current values.
    pub fn get(&self) -> KnobValues {
        self.tx.borrow().clone()
    }
    /// Change knobs: `knobs.set(|k| k.drop_acks = true)`.
    pub fn set(&self, f: impl FnOnce(&mut KnobValues)) {
        self.tx.send_modify(f);
    }
    /// Observe changes.
    pub fn watch(&self) -> watch::Receiver<KnobValues> {
        self.tx.subscribe()
    }
    pub fn set_developer_mode(&self, on: bool) {
        self.set(|k| k.developer_mode = on);
    }
    pub fn set_access_code(&self, code: &str) {
        self.set(|k| k.access_code = code.to_string());
    }
    pub fn access_code(&self) -> String {
        self.tx.borrow().access_code.clone()
    }
}
