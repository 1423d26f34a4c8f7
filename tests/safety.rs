//! Safety room tests: debouncing (property test), the trip path on the simulated GPIO (relays off
//! before the callback returns), the latch across a real SQLite reopen, reset and manual power
//! rules, the thermal watchdog on realistic and faulty temperature curves, and `[safety]` parsing.

use printgate::config::Model;
use printgate::printer::GcodeState;
use printgate::safety::config::{InputRole, SafetyConfig, WatchdogConfig};
use printgate::safety::debounce::{Debouncer, Level};
use printgate::safety::gpio::{Gpio, InputConfig};
use printgate::safety::latch::{
    BootState, Heater, InputKind, PowerError, PowerRequest, ResetError, ResetRequest, SafetyCause,
    TripController, TripScope,
};
use printgate::safety::sim_gpio::SimGpio;
use printgate::safety::watchdog::{ThermalSample, ThermalWatchdog, WatchdogVerdict};
use printgate::safety::{SafetyEvent, install_inputs};
use printgate::store::Store;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- debounce (pure)

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A train of glitches each shorter than the period never changes the stable level, whatever
    /// the gaps and whenever it is polled; a real assertion held for the period always does, at
    /// exactly its last edge plus the period.
    #[test]
    fn glitches_never_count_real_assertions_always_do(
        period_ms in 1u64..500,
        train in prop::collection::vec((0u64..1000, 1u64..1000, 0u64..1000), 0..40),
        bounces in prop::collection::vec(1u64..1000, 0..5),
    ) {
        let period = period_ms * 1000;
        let mut d = Debouncer::new(Level::High, period);
        let mut t = 0u64;
        for (gap, width_frac, poll_frac) in train {
            // Released for `gap` ms (any length), then asserted for less than the period.
            t += gap * 1000;
            prop_assert_eq!(d.poll(t), None);
            prop_assert_eq!(d.edge(Level::Low, t), None);
            let width = (period - 1) * width_frac / 1000;
            prop_assert_eq!(d.poll(t + width * poll_frac / 1000), None);
            t += width;
            prop_assert_eq!(d.edge(Level::High, t), None);
            prop_assert_eq!(d.stable(), Level::High);
        }
        // A real assertion, possibly with bounces (each bounce shorter than the period).
        t += 1000;
        let mut last_edge = t;
        d.edge(Level::Low, t);
        for b in bounces {
            let w = (period - 1) * b / 1000;
            t += w;
            d.edge(Level::High, t);
            t += 1;
            d.edge(Level::Low, t);
            last_edge = t;
        }
        prop_assert_eq!(d.deadline(), Some(last_edge + period));
        if period > 1 {
            prop_assert_eq!(d.poll(last_edge + period - 1), None);
        }
        prop_assert_eq!(d.poll(last_edge + period), Some(Level::Low));
        prop_assert_eq!(d.stable(), Level::Low);
    }
}

// ---------------------------------------------------------------- trip path on SimGpio

const SMOKE: u8 = 4;
const X1_RELAY: u8 = 17;
const P1_RELAY: u8 = 27;

fn printers() -> Vec<String> {
    vec!["x1c".into(), "p1s".into()]
}

fn safety_cfg(debounce_ms: u64) -> SafetyConfig {
    let cfg: SafetyConfig = toml::from_str(&format!(
        r#"
        smoke = {{ pin = {SMOKE}, pull = "up", active_level = "low", debounce_ms = {debounce_ms} }}
        relay_fail_safe = "power_off_when_gateway_down"
        [[relays]]
        printer = "x1c"
        pin = {X1_RELAY}
        [[relays]]
        printer = "p1s"
        pin = {P1_RELAY}
        active_low = false
        "#
    ))
    .unwrap();
    assert_eq!(cfg.validate(&["x1c", "p1s"]), Vec::<String>::new());
    cfg
}

type Seen = (
    printgate::safety::gpio::InputEvent,
    Option<printgate::safety::TripRecord>,
    Instant,
);

fn wire(
    sim: &SimGpio,
    cfg: &SafetyConfig,
    controller: Arc<TripController>,
) -> mpsc::Receiver<Seen> {
    let (tx, rx) = mpsc::channel::<Seen>();
    sim.configure_input(
        &InputConfig::from_pin_config(cfg.smoke.as_ref().unwrap(), "smoke input"),
        Box::new(move |ev| {
            let rec = controller.on_input(InputKind::Smoke, ev.asserted);
            let returned = Instant::now();
            let _ = tx.send((ev, rec, returned));
        }),
    )
    .unwrap();
    rx
}

#[test]
fn edge_switches_relays_off_before_the_callback_returns() {
    let cfg = safety_cfg(50);
    let sim = SimGpio::new();
    let controller =
        Arc::new(TripController::new(&sim, &cfg, &printers(), &BootState::default()).unwrap());
    assert_eq!(sim.output_state(X1_RELAY), Some(true));
    assert_eq!(sim.output_state(P1_RELAY), Some(true));
    // Active-low relay on = pin low; active-high relay on = pin high.
    assert_eq!(sim.output_level(X1_RELAY), Some(Level::Low));
    assert_eq!(sim.output_level(P1_RELAY), Some(Level::High));
    let rx = wire(&sim, &cfg, controller.clone());

    let edge_at = Instant::now();
    sim.set_input_asserted(SMOKE, true).unwrap();
    let (ev, rec, returned) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(ev.asserted);
    assert!(
        ev.at.duration_since(edge_at) >= Duration::from_millis(50),
        "accepted only after the debounce period"
    );
    let rec = rec.expect("smoke trips");
    assert_eq!(rec.cause, SafetyCause::Smoke);
    assert_eq!(rec.scope, TripScope::All);
    assert_eq!(rec.affected_printers, vec!["p1s", "x1c"]);
    let relays_off_at = rec.relays_off_at.unwrap();
    for pin in [X1_RELAY, P1_RELAY] {
        let w = sim
            .output_history()
            .into_iter()
            .rfind(|w| w.pin == pin)
            .unwrap();
        assert!(!w.on, "relay {pin} off");
        assert!(w.at >= edge_at);
        assert!(
            w.at <= relays_off_at,
            "written before trip() built its record"
        );
        assert!(w.at <= returned, "written before the callback returned");
        assert_eq!(sim.output_state(pin), Some(false));
    }
    assert_eq!(sim.output_level(X1_RELAY), Some(Level::High));
    assert_eq!(sim.output_level(P1_RELAY), Some(Level::Low));
    assert!(controller.is_tripped());
    assert!(controller.status().smoke_asserted);
}

#[test]
fn glitch_shorter_than_debounce_does_not_trip_but_real_assertion_does() {
    let cfg = safety_cfg(200);
    let sim = SimGpio::new();
    let controller =
        Arc::new(TripController::new(&sim, &cfg, &printers(), &BootState::default()).unwrap());
    let rx = wire(&sim, &cfg, controller.clone());
    // Glitch train: asserted for microseconds at a time.
    for _ in 0..20 {
        sim.set_input_asserted(SMOKE, true).unwrap();
        sim.set_input_asserted(SMOKE, false).unwrap();
    }
    let real_at = Instant::now();
    sim.set_input_asserted(SMOKE, true).unwrap();
    let (ev, rec, _) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // The first accepted change is the real assertion, a full period after it began.
    assert!(ev.asserted);
    assert!(ev.at.duration_since(real_at) >= Duration::from_millis(200));
    assert!(rec.is_some());
    assert_eq!(controller.status().unpersisted, 1, "exactly one trip");
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<SafetyEvent>) -> SafetyEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("event within 5 s")
        .expect("channel open")
}

#[tokio::test]
async fn install_inputs_reports_trip_and_second_input_alert() {
    let mut cfg = safety_cfg(0);
    cfg.second_input = Some(
        toml::from_str(
            r#"name = "enclosure door"
               role = "alert"
               pin = 5
               pull = "down"
               active_level = "high"
               debounce_ms = 0"#,
        )
        .unwrap(),
    );
    assert_eq!(cfg.second_input.as_ref().unwrap().role, InputRole::Alert);
    let sim = SimGpio::new();
    let controller =
        Arc::new(TripController::new(&sim, &cfg, &printers(), &BootState::default()).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    install_inputs(&sim, &cfg, controller.clone(), tx).unwrap();

    sim.set_input_asserted(5, true).unwrap();
    assert_eq!(
        next(&mut rx).await,
        SafetyEvent::Alert(SafetyCause::SecondInput {
            name: "enclosure door".into()
        })
    );
    assert!(matches!(
        next(&mut rx).await,
        SafetyEvent::InputChanged {
            input: InputKind::Second,
            asserted: true,
            ..
        }
    ));
    assert!(!controller.is_tripped(), "an alert-role input never trips");
    assert_eq!(sim.output_state(X1_RELAY), Some(true));

    sim.set_input(SMOKE, Level::Low).unwrap();
    match next(&mut rx).await {
        SafetyEvent::Tripped(rec) => assert_eq!(rec.cause, SafetyCause::Smoke),
        other => panic!("expected a trip, got {other:?}"),
    }
    assert_eq!(sim.output_state(X1_RELAY), Some(false));
    assert_eq!(sim.output_state(P1_RELAY), Some(false));
    assert!(sim.input_asserted(SMOKE).unwrap());
}

#[test]
fn thermal_trip_cuts_only_that_printers_relay() {
    let cfg = safety_cfg(0);
    let sim = SimGpio::new();
    let controller = TripController::new(&sim, &cfg, &printers(), &BootState::default()).unwrap();
    let rec = controller.trip(
        SafetyCause::ThermalRunaway {
            printer: "p1s".into(),
            heater: Heater::Nozzle,
            temp: 250.0,
            target: 220.0,
            rise: 12.0,
            window_secs: 30.0,
        },
        Vec::new(),
    );
    assert_eq!(rec.relays_off, vec![P1_RELAY]);
    assert_eq!(rec.affected_printers, vec!["p1s"]);
    assert_eq!(sim.output_state(P1_RELAY), Some(false));
    assert_eq!(sim.output_state(X1_RELAY), Some(true));
    assert!(controller.is_printer_tripped("p1s"));
    assert!(!controller.is_printer_tripped("x1c"));
}

// ---------------------------------------------------------------- latch, reset, power

#[test]
fn latch_survives_store_reopen_and_keeps_relays_off() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("printgate.sqlite");
    let cfg = safety_cfg(0);
    let trip_id;
    {
        let store = Store::open(&db).unwrap();
        let sim = SimGpio::new();
        let controller =
            TripController::new(&sim, &cfg, &printers(), &store.safety_boot_state().unwrap())
                .unwrap();
        let mut rec = controller.trip(SafetyCause::Smoke, Vec::new());
        trip_id = controller.persist(&store, &mut rec).unwrap();
        assert_eq!(rec.id, Some(trip_id));
    }
    // "Reboot": new store handle, new GPIO, new controller.
    let store = Store::open(&db).unwrap();
    let latched = store.latched_trip().unwrap().expect("latched");
    assert_eq!(latched.id, Some(trip_id));
    assert_eq!(latched.cause, SafetyCause::Smoke);
    assert!(latched.reset.is_none());
    let sim = SimGpio::new();
    let controller =
        TripController::new(&sim, &cfg, &printers(), &store.safety_boot_state().unwrap()).unwrap();
    assert!(controller.is_tripped());
    for pin in [X1_RELAY, P1_RELAY] {
        assert_eq!(sim.output_state(pin), Some(false));
        assert!(
            sim.output_history()
                .iter()
                .filter(|w| w.pin == pin)
                .all(|w| !w.on),
            "relay {pin} never switched on at boot"
        );
    }
    // Power on is refused while latched.
    assert!(matches!(
        controller.set_power(
            &PowerRequest {
                printer: "x1c".into(),
                on: true,
                force: true
            },
            &|_| false
        ),
        Err(PowerError::Tripped(_))
    ));
    assert_eq!(sim.output_state(X1_RELAY), Some(false));
    let audit = store.safety_audit(10).unwrap();
    assert_eq!(audit[0].action, "trip");
}

#[test]
fn reset_needs_user_confirmation_and_clear_inputs_and_keeps_relays_off() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("printgate.sqlite");
    let cfg = safety_cfg(0);
    let store = Store::open(&db).unwrap();
    let sim = SimGpio::new();
    let controller =
        TripController::new(&sim, &cfg, &printers(), &store.safety_boot_state().unwrap()).unwrap();
    let req = |user: &str, id: i64| ResetRequest {
        by_user: user.into(),
        confirmed_trip_id: id,
        at_unix_ms: 1_700_000_000_000,
    };

    assert!(matches!(
        controller.reset(&store, &req("alice", 1)),
        Err(ResetError::NotTripped)
    ));
    let mut first = controller
        .on_input(InputKind::Smoke, true)
        .expect("smoke trips");
    assert!(matches!(
        controller.reset(&store, &req("alice", 1)),
        Err(ResetError::TripBeingRecorded)
    ));
    let first_id = controller.persist(&store, &mut first).unwrap();
    assert!(matches!(
        controller.reset(&store, &req("alice", first_id)),
        Err(ResetError::InputStillAsserted(_))
    ));
    assert!(controller.on_input(InputKind::Smoke, false).is_none());
    assert!(matches!(
        controller.reset(&store, &req("  ", first_id)),
        Err(ResetError::NotAuthenticated)
    ));
    // A second trip after the user looked: confirming the first one is not enough.
    let mut second = controller.trip(
        SafetyCause::EmergencyStop {
            by_user: "bob".into(),
            printer: None,
        },
        Vec::new(),
    );
    let second_id = controller.persist(&store, &mut second).unwrap();
    assert!(matches!(
        controller.reset(&store, &req("alice", first_id)),
        Err(ResetError::Store(_))
    ));
    assert!(controller.is_tripped());

    sim.clear_history();
    assert_eq!(
        controller.reset(&store, &req("alice", second_id)).unwrap(),
        2
    );
    assert!(!controller.is_tripped());
    assert!(store.latched_trip().unwrap().is_none());
    assert!(sim.output_history().is_empty(), "reset wrote no relay");
    assert_eq!(sim.output_state(X1_RELAY), Some(false));
    assert_eq!(sim.output_state(P1_RELAY), Some(false));
    let audit = store.safety_audit(10).unwrap();
    assert_eq!(audit[0].action, "reset");
    assert_eq!(audit[0].actor, "alice");
    let history = store.trip_history(10).unwrap();
    assert_eq!(history.len(), 2);
    assert!(
        history
            .iter()
            .all(|t| t.reset.as_ref().unwrap().by_user == "alice")
    );

    // After a reset and a restart, the relays still stay off until a person switches them on.
    drop(controller);
    let sim2 = SimGpio::new();
    let controller = TripController::new(
        &sim2,
        &cfg,
        &printers(),
        &store.safety_boot_state().unwrap(),
    )
    .unwrap();
    assert!(!controller.is_tripped());
    assert_eq!(sim2.output_state(X1_RELAY), Some(false));
    assert_eq!(sim2.output_state(P1_RELAY), Some(false));
    let change = controller
        .set_power(
            &PowerRequest {
                printer: "x1c".into(),
                on: true,
                force: false,
            },
            &|_| false,
        )
        .unwrap();
    assert!(change.changed && change.on);
    store
        .record_power_change(&change, "alice", 1_700_000_001_000)
        .unwrap();
    assert_eq!(sim2.output_state(X1_RELAY), Some(true));
    assert_eq!(
        store
            .safety_boot_state()
            .unwrap()
            .relay_states
            .get(&X1_RELAY),
        Some(&true)
    );
}

#[test]
fn power_is_refused_while_printing_unless_forced() {
    let cfg = safety_cfg(0);
    let sim = SimGpio::new();
    let controller = TripController::new(&sim, &cfg, &printers(), &BootState::default()).unwrap();
    let printing = |p: &str| p == "p1s";
    let off = |force| PowerRequest {
        printer: "p1s".into(),
        on: false,
        force,
    };
    assert_eq!(
        controller.set_power(&off(false), &printing),
        Err(PowerError::Printing("p1s".into()))
    );
    assert_eq!(sim.output_state(P1_RELAY), Some(true));
    let change = controller.set_power(&off(true), &printing).unwrap();
    assert!(change.forced && change.changed && !change.on);
    assert_eq!(sim.output_state(P1_RELAY), Some(false));
    // Not printing: no force needed.
    let change = controller
        .set_power(
            &PowerRequest {
                printer: "x1c".into(),
                on: false,
                force: false,
            },
            &printing,
        )
        .unwrap();
    assert!(!change.forced);
    assert_eq!(
        controller.set_power(
            &PowerRequest {
                printer: "nope".into(),
                on: true,
                force: false
            },
            &printing
        ),
        Err(PowerError::NoRelay("nope".into()))
    );
}

// ---------------------------------------------------------------- thermal watchdog

/// A printer's temperatures: first-order lag towards the target, optional overshoot bump after
/// first reaching it, measurement noise.
struct Heat {
    temp: f64,
    target: f64,
    tau: f64,
    overshoot: f64,
    bump: f64,
    reached: bool,
}

impl Heat {
    fn new(ambient: f64, tau: f64, overshoot: f64) -> Heat {
        Heat {
            temp: ambient,
            target: 0.0,
            tau,
            overshoot,
            bump: 0.0,
            reached: false,
        }
    }
    fn set(&mut self, target: f64) {
        if target > self.target + 1.0 {
            self.reached = false;
        }
        self.target = target;
    }
    fn step(&mut self, dt: f64, ambient: f64, rng: &mut StdRng) -> f64 {
        let goal = if self.target > 0.0 {
            self.target
        } else {
            ambient
        };
        self.temp += (goal - self.temp) * (1.0 - (-dt / self.tau).exp());
        if self.target > 0.0 && !self.reached && self.temp > self.target - 1.0 {
            self.reached = true;
            self.bump = self.overshoot;
        }
        self.bump *= (-dt / 10.0).exp();
        self.temp + self.bump + rng.random_range(-0.5..0.5)
    }
}

struct Run {
    wd: ThermalWatchdog,
    verdicts: Vec<(u64, WatchdogVerdict)>,
    now_ms: u64,
    reports: usize,
    max_nozzle: f64,
}

impl Run {
    fn new(cfg: WatchdogConfig) -> Run {
        Run {
            wd: ThermalWatchdog::new(cfg),
            verdicts: Vec::new(),
            now_ms: 0,
            reports: 0,
            max_nozzle: 0.0,
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        model: Model,
        nozzle: f64,
        nozzle_target: f64,
        bed: f64,
        bed_target: f64,
        state: GcodeState,
    ) {
        self.reports += 1;
        self.max_nozzle = self.max_nozzle.max(nozzle);
        let s = ThermalSample {
            now_ms: self.now_ms,
            nozzle: Some(nozzle),
            nozzle_target: Some(nozzle_target),
            bed: Some(bed),
            bed_target: Some(bed_target),
            gcode_state: state,
        };
        if let Some(v) = self.wd.observe("printer", model, &s) {
            self.verdicts.push((self.now_ms, v));
        }
        for v in self.wd.tick(self.now_ms) {
            self.verdicts.push((self.now_ms, v));
        }
    }
}

/// One realistic print: idle, preheat, heat-up, print with target changes (and sometimes a
/// pause), finish and cool-down. Reports every 0.5–2 s.
fn normal_print(run: &mut Run, rng: &mut StdRng, model: Model) {
    let ambient = rng.random_range(18.0..32.0);
    let (nozzle_max, bed_max) = printgate::safety::config::studio_limits(model);
    let mut nozzle = Heat::new(
        ambient,
        rng.random_range(8.0..35.0),
        rng.random_range(0.0..5.0),
    );
    let mut bed = Heat::new(
        ambient,
        rng.random_range(40.0..200.0),
        rng.random_range(0.0..2.0),
    );
    let bed_target = if rng.random_bool(0.6) {
        rng.random_range(50.0..70.0f64)
    } else {
        rng.random_range(80.0..=bed_max)
    }
    .round();
    let nozzle_target = rng.random_range(190.0..=nozzle_max.min(280.0f64)).round();
    let mut phases: Vec<(f64, f64, f64, GcodeState)> = vec![
        (rng.random_range(5.0..60.0), 0.0, 0.0, GcodeState::Idle),
        (
            rng.random_range(60.0..240.0),
            140.0,
            bed_target,
            GcodeState::Prepare,
        ),
        (
            rng.random_range(60.0..180.0),
            nozzle_target,
            bed_target,
            GcodeState::Prepare,
        ),
    ];
    // Printing with 0–4 target changes and maybe a pause.
    for _ in 0..rng.random_range(0..5) {
        let n = (nozzle_target + rng.random_range(-25.0..15.0f64)).min(nozzle_max);
        let b = (bed_target + rng.random_range(-10.0..5.0f64)).clamp(40.0, bed_max);
        phases.push((rng.random_range(60.0..900.0), n, b, GcodeState::Running));
        if rng.random_bool(0.2) {
            phases.push((rng.random_range(30.0..300.0), n, b, GcodeState::Pause));
        }
    }
    phases.push((
        rng.random_range(120.0..900.0),
        nozzle_target,
        bed_target,
        GcodeState::Running,
    ));
    phases.push((
        rng.random_range(600.0..1200.0),
        0.0,
        0.0,
        GcodeState::Finish,
    ));
    for (secs, n, b, state) in phases {
        nozzle.set(n);
        bed.set(b);
        let end = run.now_ms + (secs * 1000.0) as u64;
        while run.now_ms < end {
            let dt = rng.random_range(0.5..2.0);
            run.now_ms += (dt * 1000.0) as u64;
            let tn = nozzle.step(dt, ambient, rng);
            let tb = bed.step(dt, ambient, rng);
            run.report(model, tn, n, tb, b, state);
        }
    }
}

#[test]
fn hundred_randomised_normal_prints_give_no_verdict() {
    let mut rng = StdRng::seed_from_u64(0x5afe);
    for i in 0..100 {
        let model = Model::ALL[i % Model::ALL.len()];
        let mut run = Run::new(WatchdogConfig::default());
        normal_print(&mut run, &mut rng, model);
        assert!(
            run.verdicts.is_empty(),
            "print {i} on {model:?}: {:?}",
            run.verdicts
        );
        // The harness really printed: hundreds of reports, nozzle at printing temperature.
        assert!(run.reports > 500, "{}", run.reports);
        assert!(run.max_nozzle > 185.0, "{}", run.max_nozzle);
    }
}

#[test]
fn textbook_heat_up_cool_down_and_target_changes_give_no_verdict() {
    // Deterministic first-order lag curves to 220/60 from 25 °C, then target changes, then
    // cool-down after finish, reported every second.
    let mut run = Run::new(WatchdogConfig::default());
    let (mut n, mut b) = (25.0f64, 25.0f64);
    let schedule: [(u64, f64, f64, GcodeState); 5] = [
        (300, 220.0, 60.0, GcodeState::Prepare),
        (600, 220.0, 60.0, GcodeState::Running),
        (600, 200.0, 55.0, GcodeState::Running), // lower mid-print
        (600, 250.0, 65.0, GcodeState::Running), // raise mid-print
        (1800, 0.0, 0.0, GcodeState::Finish),
    ];
    for (secs, nt, bt, state) in schedule {
        for _ in 0..secs {
            run.now_ms += 1000;
            n += ((if nt > 0.0 { nt } else { 25.0 }) - n) * (1.0 - (-1.0f64 / 20.0).exp());
            b += ((if bt > 0.0 { bt } else { 25.0 }) - b) * (1.0 - (-1.0f64 / 90.0).exp());
            run.report(Model::P1S, n, nt, b, bt, state);
        }
    }
    assert!(run.verdicts.is_empty(), "{:?}", run.verdicts);
}

fn first_trip(run: &Run) -> Option<(u64, &SafetyCause)> {
    run.verdicts.iter().find_map(|(t, v)| match v {
        WatchdogVerdict::Trip(c) => Some((*t, c)),
        _ => None,
    })
}

#[test]
fn nozzle_runaway_above_target_trips_within_the_window() {
    let mut run = Run::new(WatchdogConfig::default());
    let mut n = 25.0f64;
    for _ in 0..120 {
        run.now_ms += 1000;
        n += (220.0 - n) * (1.0 - (-1.0f64 / 15.0).exp());
        run.report(Model::X1C, n, 220.0, 60.0, 60.0, GcodeState::Running);
    }
    assert!(run.verdicts.is_empty());
    // Heater stuck on: heads for 400 °C with a 60 s time constant.
    let stuck_at = run.now_ms;
    for _ in 0..60 {
        run.now_ms += 1000;
        n += (400.0 - n) * (1.0 - (-1.0f64 / 60.0).exp());
        run.report(Model::X1C, n, 220.0, 60.0, 60.0, GcodeState::Running);
    }
    let (t, cause) = first_trip(&run).expect("runaway trips");
    assert!(t - stuck_at <= 30_000, "tripped after {} ms", t - stuck_at);
    match cause {
        SafetyCause::ThermalRunaway {
            heater, temp, rise, ..
        } => {
            assert_eq!(*heater, Heater::Nozzle);
            assert!(*temp > 235.0 && *rise >= 10.0);
        }
        other => panic!("{other:?}"),
    }
    // One runaway trip per episode (the climb later also crosses the absolute limit, which is
    // a separate cause and recorded as such).
    let runaways = run
        .verdicts
        .iter()
        .filter(|(_, v)| matches!(v, WatchdogVerdict::Trip(SafetyCause::ThermalRunaway { .. })))
        .count();
    assert_eq!(runaways, 1, "{:?}", run.verdicts);
    assert!(run.verdicts.iter().all(|(_, v)| v.is_trip()));
}

#[test]
fn bed_runaway_and_heater_on_with_target_zero_trip() {
    // Bed stuck on after reaching 60.
    let mut run = Run::new(WatchdogConfig::default());
    let mut b = 60.0f64;
    for _ in 0..30 {
        run.now_ms += 1000;
        run.report(Model::P1S, 220.0, 220.0, b, 60.0, GcodeState::Running);
    }
    let stuck_at = run.now_ms;
    for _ in 0..200 {
        run.now_ms += 1000;
        b += (150.0 - b) * (1.0 - (-1.0f64 / 300.0).exp());
        run.report(Model::P1S, 220.0, 220.0, b, 60.0, GcodeState::Running);
    }
    let (t, cause) = first_trip(&run).expect("bed runaway trips");
    assert!(t - stuck_at <= 90_000, "tripped after {} ms", t - stuck_at);
    assert!(matches!(
        cause,
        SafetyCause::ThermalRunaway {
            heater: Heater::Bed,
            ..
        }
    ));

    // Idle printer, nozzle target 0, heater switched on by a fault.
    let mut run = Run::new(WatchdogConfig::default());
    let mut n = 25.0f64;
    for _ in 0..120 {
        run.now_ms += 1000;
        n += 2.0;
        run.report(Model::A1, n, 0.0, 25.0, 0.0, GcodeState::Idle);
    }
    let (_, cause) = first_trip(&run).expect("heater on with target 0 trips");
    match cause {
        SafetyCause::ThermalRunaway { temp, target, .. } => {
            assert_eq!(*target, 0.0);
            assert!(*temp > 100.0 && *temp < 115.0, "{temp}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn over_limit_trips_on_the_second_report() {
    let mut run = Run::new(WatchdogConfig::default());
    // A1 mini bed limit 80 + 15 margin = 95; a steady reading above it (not rising).
    run.now_ms = 1000;
    run.report(Model::A1Mini, 220.0, 220.0, 97.0, 80.0, GcodeState::Running);
    assert!(run.verdicts.is_empty());
    run.now_ms = 2000;
    run.report(Model::A1Mini, 220.0, 220.0, 97.0, 80.0, GcodeState::Running);
    assert_eq!(
        run.verdicts,
        vec![(
            2000,
            WatchdogVerdict::Trip(SafetyCause::OverTemperature {
                printer: "printer".into(),
                heater: Heater::Bed,
                temp: 97.0,
                limit: 95.0
            })
        )]
    );
    // Overrides per model are honoured.
    let mut cfg = WatchdogConfig::default();
    cfg.models
        .insert("A1MINI".into(), toml::from_str("bed_max_c = 90").unwrap());
    assert_eq!(cfg.limits_for(Model::A1Mini), (320.0, 105.0));
    assert_eq!(
        WatchdogConfig::default().limits_for(Model::H2D),
        (370.0, 135.0)
    );
    // Keys are matched as loosely as model names elsewhere in the config.
    for key in ["A1 mini", "a1mini", "A1-MINI"] {
        let mut cfg = WatchdogConfig::default();
        cfg.models
            .insert(key.into(), toml::from_str("bed_max_c = 90").unwrap());
        assert_eq!(cfg.limits_for(Model::A1Mini), (320.0, 105.0), "{key}");
    }
    let mut cfg = WatchdogConfig::default();
    cfg.models.insert(
        "klipper".into(),
        toml::from_str("nozzle_max_c = 280").unwrap(),
    );
    assert_eq!(cfg.limits_for(Model::Klipper).0, 280.0 + 20.0);
}

#[test]
fn heater_not_heating_alerts_and_trips_only_when_configured() {
    for trips in [false, true] {
        let cfg = WatchdogConfig {
            heater_fault_trips: trips,
            ..WatchdogConfig::default()
        };
        let mut run = Run::new(cfg);
        // Target 220 but the nozzle stays at room temperature (heater or thermistor dead).
        for i in 0..600 {
            run.now_ms += 1000;
            let wobble = if i % 2 == 0 { 0.3 } else { -0.3 };
            run.report(
                Model::P1S,
                25.0 + wobble,
                220.0,
                60.0,
                60.0,
                GcodeState::Prepare,
            );
        }
        assert_eq!(run.verdicts.len(), 1, "{:?}", run.verdicts);
        let (t, v) = &run.verdicts[0];
        assert!(*t <= 45_000);
        assert_eq!(v.is_trip(), trips);
        assert!(matches!(
            v.cause(),
            SafetyCause::HeaterNotHeating {
                heater: Heater::Nozzle,
                ..
            }
        ));
    }
}

#[test]
fn heater_not_holding_alerts() {
    let mut run = Run::new(WatchdogConfig::default());
    for _ in 0..60 {
        run.now_ms += 1000;
        run.report(Model::X1C, 220.0, 220.0, 60.0, 60.0, GcodeState::Running);
    }
    // Thermistor slipping out of the block: reads 30 °C low from now on.
    for _ in 0..60 {
        run.now_ms += 1000;
        run.report(Model::X1C, 190.0, 220.0, 60.0, 60.0, GcodeState::Running);
    }
    assert_eq!(run.verdicts.len(), 1, "{:?}", run.verdicts);
    assert!(matches!(
        run.verdicts[0].1,
        WatchdogVerdict::Alert(SafetyCause::HeaterNotHolding { .. })
    ));
}

#[test]
fn silence_while_printing_warns_once_or_trips_when_configured() {
    for trips in [false, true] {
        let cfg = WatchdogConfig {
            silence_trips: trips,
            ..WatchdogConfig::default()
        };
        let mut wd = ThermalWatchdog::new(cfg);
        let s = |now_ms, state| ThermalSample {
            now_ms,
            nozzle: Some(220.0),
            nozzle_target: Some(220.0),
            bed: Some(60.0),
            bed_target: Some(60.0),
            gcode_state: state,
        };
        assert_eq!(
            wd.observe("p1s", Model::P1S, &s(0, GcodeState::Running)),
            None
        );
        assert!(wd.tick(119_999).is_empty());
        let v = wd.tick(120_000);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].is_trip(), trips);
        assert_eq!(
            v[0].cause(),
            &SafetyCause::ReportSilence {
                printer: "p1s".into(),
                silent_secs: 120
            }
        );
        assert!(wd.tick(300_000).is_empty(), "once per silence");
        // A new report re-arms; an idle printer may be silent.
        assert_eq!(
            wd.observe("p1s", Model::P1S, &s(301_000, GcodeState::Idle)),
            None
        );
        assert!(wd.tick(900_000).is_empty());
    }
}

#[test]
fn auto_power_off_after_finish_and_cool_down() {
    use printgate::safety::config::AutoPowerOffConfig;
    use printgate::safety::watchdog::auto_power_off_due;
    let cfg = AutoPowerOffConfig {
        enabled: true,
        nozzle_below_c: 50.0,
    };
    let s = |nozzle, state| ThermalSample {
        now_ms: 0,
        nozzle: Some(nozzle),
        nozzle_target: Some(0.0),
        bed: Some(30.0),
        bed_target: Some(0.0),
        gcode_state: state,
    };
    assert!(auto_power_off_due(&cfg, &s(45.0, GcodeState::Finish)));
    assert!(!auto_power_off_due(&cfg, &s(60.0, GcodeState::Finish)));
    assert!(!auto_power_off_due(&cfg, &s(45.0, GcodeState::Idle)));
    assert!(!auto_power_off_due(
        &AutoPowerOffConfig::default(),
        &s(45.0, GcodeState::Finish)
    ));
}

// ---------------------------------------------------------------- config

#[test]
fn empty_safety_section_is_valid_and_mistakes_are_named() {
    let cfg: SafetyConfig = toml::from_str("").unwrap();
    assert_eq!(cfg, SafetyConfig::default());
    assert!(cfg.validate(&[]).is_empty());
    assert!(cfg.warnings().iter().any(|w| w.contains("smoke")));

    assert!(toml::from_str::<SafetyConfig>("colour = 1").is_err());
    assert!(toml::from_str::<SafetyConfig>("[smoke]\npin = 4\npul = \"up\"").is_err());

    let bad: SafetyConfig = toml::from_str(
        r#"
        smoke = { pin = 40 }
        [second_input]
        pin = 17
        debounce_ms = 20000
        [[relays]]
        printer = "ghost"
        pin = 17
        [watchdog.nozzle]
        runaway_over_target_c = -1
        runaway_rise_c = 10
        runaway_window_secs = 30
        runaway_idle_floor_c = 100
        hysteresis_c = 10
        heating_gain_c = 2
        check_gain_time_secs = 40
        max_error_c_secs = 240
        [watchdog.models.X9]
        nozzle_max_c = 300
        "#,
    )
    .unwrap();
    let errors = bad.validate(&["x1c"]);
    let has = |s: &str| errors.iter().any(|e| e.contains(s));
    assert!(has("safety.smoke.pin = 40"), "{errors:?}");
    assert!(has("safety.second_input.debounce_ms"), "{errors:?}");
    assert!(has("safety.relays[0].printer = \"ghost\""), "{errors:?}");
    assert!(
        has("GPIO 17 is already used by safety.second_input.pin"),
        "{errors:?}"
    );
    assert!(
        has("safety.watchdog.nozzle.runaway_over_target_c"),
        "{errors:?}"
    );
    assert!(has("safety.watchdog.models.X9"), "{errors:?}");
}

// ---------------------------------------------------------------- bench helper

#[test]
fn bench_helpers_run() {
    let s = printgate::safety::bench::bench_edge_to_relay(50).unwrap();
    assert_eq!(s.n, 50);
    assert!(s.p50 <= s.p99 && s.p99 <= s.max);
    assert_eq!(printgate::safety::bench::bench_trip_call(50).unwrap().n, 50);
    assert!(printgate::safety::bench::bench_watchdog_observe(3000) > 0.0);
}

// ---------------------------------------------------------------- backend choice

#[test]
fn backend_choice_off_a_pi_is_simulated_with_a_warning_and_rppal_fails_clearly() {
    use printgate::safety::config::GpioBackendChoice;
    use printgate::safety::gpio::{GpioKind, is_raspberry_pi, open_gpio};
    let sim = open_gpio(GpioBackendChoice::Simulated).unwrap();
    assert_eq!(sim.gpio.kind(), GpioKind::Simulated);
    assert!(sim.warning.is_none() && sim.sim.is_some());
    if is_raspberry_pi() {
        return; // the rest describes a machine without a Pi GPIO
    }
    let auto = open_gpio(GpioBackendChoice::Auto).unwrap();
    assert_eq!(auto.gpio.kind(), GpioKind::Simulated);
    assert!(auto.warning.unwrap().contains("SIMULATED"));
    let err = open_gpio(GpioBackendChoice::Rppal)
        .err()
        .expect("no Pi here");
    let msg = err.to_string();
    assert!(
        msg.contains("simulated") || msg.contains("gpio group"),
        "the error says what to do: {msg}"
    );
}
