//! Whether a printer accepts our control commands (docs/bambu-protocol.md §10.3): combines the `fun` bit,
//! HMS 0500_0500_0001_0007, refusal acks and observed command effects into one
//! [`ControlState`]. Pure; the session feeds it what it publishes and what it receives.

use crate::printer::bambu::errors;
use crate::printer::state::{CommandAck, ControlState, GcodeState, PrinterState};
use crate::printer::{PrinterCommand, StartRequest};
use std::time::{Duration, Instant};

/// How long after publishing a command its effect still counts as "observed".
pub const EFFECT_WINDOW: Duration = Duration::from_secs(300);

/// The state change a published control command should cause.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expectation {
    Started { subtask_id: String },
    Paused,
    Resumed,
    Stopped,
}

#[derive(Debug, Clone, Default)]
pub struct ControlTracker {
    ack_refused: bool,
    hms_refused: bool,
    fun_refused: bool,
    ok: bool,
    expect: Option<(Expectation, GcodeState, Instant)>,
}

impl ControlTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A control command was handed to a live connection; `before` is the state at that time.
    pub fn published(&mut self, cmd: &PrinterCommand, before: GcodeState, now: Instant) {
        let expectation = match cmd {
            PrinterCommand::Start(StartRequest { subtask_id, .. }) => Expectation::Started {
                subtask_id: subtask_id.to_string(),
            },
            PrinterCommand::Pause => Expectation::Paused,
            PrinterCommand::Resume => Expectation::Resumed,
            PrinterCommand::Stop => Expectation::Stopped,
            PrinterCommand::Light(_) | PrinterCommand::PushAll | PrinterCommand::Setting(_) => {
                return;
            }
        };
        self.expect = Some((expectation, before, now));
    }

    /// An ack for one of our commands.
    pub fn on_ack(&mut self, ack: &CommandAck) {
        if errors::is_developer_mode_refusal_ack(ack) {
            self.ack_refused = true;
            self.ok = false;
            self.expect = None;
        }
    }

    /// A new merged state.
    pub fn on_state(&mut self, state: &PrinterState, now: Instant) {
        let hms_now = state.hms.iter().any(errors::is_developer_mode_refusal_hms);
        if self.hms_refused && !hms_now {
            // A disappearing verify-failed HMS resets to unknown (§10.3).
            self.ack_refused = false;
            self.ok = false;
        }
        self.hms_refused = hms_now;
        self.fun_refused = state.requires_signed_commands == Some(true);
        if self.hms_refused || self.fun_refused {
            self.ok = false;
        }

        if let Some((expectation, before, at)) = &self.expect {
            if now.saturating_duration_since(*at) > EFFECT_WINDOW {
                self.expect = None;
                return;
            }
            let now_state = state.gcode_state;
            let effect = match expectation {
                Expectation::Started { subtask_id } => {
                    matches!(
                        now_state,
                        GcodeState::Prepare | GcodeState::Slicing | GcodeState::Running
                    ) && state.subtask_id.as_deref() == Some(subtask_id.as_str())
                }
                Expectation::Paused => {
                    *before != GcodeState::Pause && now_state == GcodeState::Pause
                }
                Expectation::Resumed => {
                    *before == GcodeState::Pause && now_state == GcodeState::Running
                }
                Expectation::Stopped => {
                    before.is_active() && matches!(now_state, GcodeState::Failed | GcodeState::Idle)
                }
            };
            if effect {
                self.ok = true;
                self.ack_refused = false;
                self.expect = None;
            }
        }
    }

    pub fn state(&self) -> ControlState {
        if self.ack_refused || self.hms_refused || self.fun_refused {
            ControlState::Refused
        } else if self.ok {
            ControlState::Ok
        } else {
            ControlState::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::printer::state::HmsEntry;

    fn state(gcode: GcodeState) -> PrinterState {
        PrinterState {
            gcode_state: gcode,
            ..Default::default()
        }
    }

    fn start(id: u32) -> PrinterCommand {
        PrinterCommand::Start(StartRequest {
            remote_name: "a.gcode.3mf".into(),
            plate: 1,
            subtask_name: "a".into(),
            subtask_id: id,
            md5: String::new(),
            bed_type: "auto".into(),
            use_ams: false,
            ams_mapping: None,
        })
    }

    #[test]
    fn start_effect_sets_ok_only_for_our_job() {
        let t0 = Instant::now();
        let mut c = ControlTracker::new();
        assert_eq!(c.state(), ControlState::Unknown);
        c.published(&start(7), GcodeState::Idle, t0);
        let mut s = state(GcodeState::Running);
        s.subtask_id = Some("8".into());
        c.on_state(&s, t0);
        assert_eq!(c.state(), ControlState::Unknown, "someone else's job");
        s.subtask_id = Some("7".into());
        s.gcode_state = GcodeState::Prepare;
        c.on_state(&s, t0 + Duration::from_secs(10));
        assert_eq!(c.state(), ControlState::Ok);
    }

    #[test]
    fn effects_outside_the_window_do_not_count() {
        let t0 = Instant::now();
        let mut c = ControlTracker::new();
        c.published(&PrinterCommand::Pause, GcodeState::Running, t0);
        c.on_state(
            &state(GcodeState::Pause),
            t0 + EFFECT_WINDOW + Duration::from_secs(1),
        );
        assert_eq!(c.state(), ControlState::Unknown);
        c.published(&PrinterCommand::Stop, GcodeState::Running, t0);
        c.on_state(&state(GcodeState::Failed), t0 + Duration::from_secs(2));
        assert_eq!(c.state(), ControlState::Ok);
    }

    #[test]
    fn refusal_signals() {
        let t0 = Instant::now();
        let mut c = ControlTracker::new();
        c.on_ack(&CommandAck {
            command: "pause".into(),
            sequence_id: "1".into(),
            success: Some(false),
            reason: Some("mqtt message verify failed".into()),
            err_code: Some(84_033_543),
        });
        assert_eq!(c.state(), ControlState::Refused);
        // The verify-failed HMS appears, then disappears: back to unknown.
        let mut s = state(GcodeState::Idle);
        s.hms = vec![HmsEntry {
            attr: 0x0500_0500,
            code: 0x0001_0007,
        }];
        c.on_state(&s, t0);
        assert_eq!(c.state(), ControlState::Refused);
        s.hms.clear();
        c.on_state(&s, t0);
        assert_eq!(c.state(), ControlState::Unknown);
        s.requires_signed_commands = Some(true);
        c.on_state(&s, t0);
        assert_eq!(c.state(), ControlState::Refused);
        s.requires_signed_commands = Some(false);
        c.on_state(&s, t0);
        assert_eq!(c.state(), ControlState::Unknown);
    }

    #[test]
    fn resume_needs_a_pause_before() {
        let t0 = Instant::now();
        let mut c = ControlTracker::new();
        c.published(&PrinterCommand::Resume, GcodeState::Running, t0);
        c.on_state(&state(GcodeState::Running), t0);
        assert_eq!(c.state(), ControlState::Unknown);
        c.published(&PrinterCommand::Resume, GcodeState::Pause, t0);
        c.on_state(&state(GcodeState::Running), t0);
        assert_eq!(c.state(), ControlState::Ok);
    }
}
