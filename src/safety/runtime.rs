//! The running safety room: opens the GPIO backend, restores the latch from the store, installs
//! the inputs, feeds every printer report into the thermal watchdog and carries out the
//! follow-up of each trip. [`spawn_safety`] builds it; [`SafetyHandle`] is what the web pages,
//! the API, the broker and the CLI use.
//!
//! Trip path (docs/architecture.md I5): the input callback (GPIO input thread) or the watchdog calls
//! [`TripController::trip`], which writes the relays off before anything else. The record then
//! goes to the follow-up task, which, in this order:
//! 1. persists the latched trip (SQLite, on a blocking thread; retried a few times),
//! 2. sends `stop` to every affected printer that is online,
//! 3. tells the dispatcher (`SafetyTrip`, then `PauseQueue`: after a reset the queue stays
//!    paused until someone resumes it),
//! 4. alerts people (ntfy / webhook / buzzer via [`Notifier`]) and publishes a
//!    [`SafetyUpdate`] for pages and MQTT.
//!
//! Several trips waiting at once (a flapping input) are handled as one batch: each is
//! persisted, but printers are stopped and the dispatcher told once.
//!
//! At boot a latched trip keeps its relays off (the controller drives them off as they become
//! outputs), the dispatcher is told again (queue paused), and affected printers that come online
//! while still printing are sent `stop`. Nothing here ever switches a relay on except an explicit
//! [`SafetyHandle::set_power`] by a person.

use crate::alerts::{self, Alert, AlertKind, Notifier};
use crate::jobs::dispatcher::Event;
use crate::jobs::model::JobState;
use crate::jobs::runner::Dispatcher;
use crate::printer::Model;
use crate::printer::{GcodeState, PrinterCommand, PrinterLink, PrinterSnapshot};
use crate::safety::config::{RelayFailSafe, SafetyConfig};
use crate::safety::gpio::{GpioKind, Level, OutputConfig, open_gpio};
use crate::safety::latch::{
    InputKind, PowerChange, PowerError, PowerRequest, PrinterReading, RelayStatus, ResetError,
    ResetRequest, SafetyCause, TripController, TripRecord, now_unix_ms,
};
use crate::safety::printer_faults;
use crate::safety::sim_gpio::SimGpio;
use crate::safety::watchdog::{
    ThermalSample, ThermalWatchdog, WatchdogVerdict, auto_power_off_due,
};
use crate::safety::{GpioError, SafetyEvent, install_inputs};
use crate::store::{Store, StoreError};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// One printer the safety room watches: name, model, live link.
pub type SafetyPrinter = (String, Model, Arc<dyn PrinterLink>);

/// Everything [`spawn_safety`] needs.
pub struct SafetyParts {
    pub config: SafetyConfig,
    pub store: Arc<Store>,
    pub printers: Vec<SafetyPrinter>,
    pub dispatcher: Dispatcher,
    pub notifier: Arc<Notifier>,
}

/// What happened, for pages (SSE), the MQTT bridge and tests.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SafetyUpdate {
    /// Relays are off; the trip is being recorded.
    Tripped {
        cause: SafetyCause,
        description: String,
        affected_printers: Vec<String>,
        relays_off: Vec<u8>,
        at_unix_ms: i64,
    },
    /// Trips were written to the database (their ids).
    Persisted { trip_ids: Vec<i64> },
    /// The follow-up of a batch of trips finished.
    FollowUpDone {
        trip_ids: Vec<i64>,
        stopped: Vec<String>,
        stop_failed: Vec<(String, String)>,
    },
    /// A debounced input change.
    Input {
        input: InputKind,
        name: String,
        pin: Option<u8>,
        asserted: bool,
    },
    /// A warning that did not cut power.
    Warning {
        cause: SafetyCause,
        description: String,
    },
    /// A person reset the latch.
    Reset { by_user: String, trips: usize },
    /// A relay was switched by a person or by auto power-off.
    Power { change: PowerChange, actor: String },
}

/// Why a safety request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    #[error(transparent)]
    Reset(#[from] ResetError),
    #[error(transparent)]
    Power(#[from] PowerError),
    #[error("this needs a signed-in user")]
    NotAuthenticated,
    #[error("the power change was made but could not be recorded: {0}")]
    Store(#[from] StoreError),
    #[error(
        "the GPIO is not simulated (safety.gpio_backend picks the Raspberry Pi's pins); wire the input instead of setting it"
    )]
    NotSimulated,
    #[error("{0}")]
    Gpio(#[from] GpioError),
    #[error("the safety room has stopped (the gateway is shutting down)")]
    Stopped,
}

/// An input as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputView {
    pub input: InputKind,
    pub name: String,
    pub pin: u8,
    /// `trip` or `alert`.
    pub role: String,
    pub asserted: bool,
}

/// One printer's power as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrinterPower {
    pub printer: String,
    /// `None`: no relay configured for this printer.
    pub relay_pin: Option<u8>,
    pub power_on: Option<bool>,
    /// A latched trip covers this printer (power cannot be switched on).
    pub latched: bool,
    pub printing: bool,
}

/// The most recent warning that did not trip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WarningView {
    pub cause: SafetyCause,
    pub description: String,
    pub at_unix_ms: i64,
}

/// Everything a safety page or the API shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SafetyView {
    pub tripped: bool,
    /// The newest open (not reset) trip; its id is what a reset confirms.
    pub trip: Option<TripRecord>,
    pub trip_description: Option<String>,
    /// Open trips recorded (all are reset together).
    pub open_trips: usize,
    pub all_latched: bool,
    pub latched_printers: Vec<String>,
    /// Trips whose relays are off but that are not written to the database yet.
    pub unpersisted: usize,
    pub relays: Vec<RelayStatus>,
    pub printers: Vec<PrinterPower>,
    pub inputs: Vec<InputView>,
    pub gpio: GpioKind,
    /// Set when `auto` fell back to the simulated GPIO.
    pub gpio_warning: Option<String>,
    pub relay_fail_safe: RelayFailSafe,
    pub auto_power_off: bool,
    pub last_warning: Option<WarningView>,
}

enum Request {
    Trip(TripRecord),
    Warning(SafetyCause),
}

/// Open trips kept in memory for the status (the newest ones).
const OPEN_TRIPS_KEPT: usize = 100;
/// Bound for one `stop` hand-over.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a printer affected by a trip latched at boot is watched for coming online printing.
const BOOT_STOP_WATCH: Duration = Duration::from_secs(300);

struct Inner {
    config: SafetyConfig,
    controller: Arc<TripController>,
    store: Arc<Store>,
    printers: Vec<SafetyPrinter>,
    dispatcher: Dispatcher,
    notifier: Arc<Notifier>,
    gpio: GpioKind,
    sim: Option<Arc<SimGpio>>,
    gpio_warning: Option<String>,
    requests: mpsc::UnboundedSender<Request>,
    updates: broadcast::Sender<SafetyUpdate>,
    /// Open trips (persisted, not reset), oldest first, at most [`OPEN_TRIPS_KEPT`].
    open: Mutex<(usize, Vec<TripRecord>)>,
    last_warning: Mutex<Option<WarningView>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handle to the running safety room; cheap to clone.
#[derive(Clone)]
pub struct SafetyHandle {
    inner: Arc<Inner>,
}

/// Open the GPIO, restore the latch, install the inputs and start the follow-up, watchdog and
/// alert tasks in `tasks`. Fails (the gateway does not start) when the GPIO cannot be opened or a
/// pin is unusable, or the store cannot be read.
pub fn spawn_safety(
    parts: SafetyParts,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<SafetyHandle> {
    let SafetyParts {
        config,
        store,
        printers,
        dispatcher,
        notifier,
    } = parts;
    let opened = open_gpio(config.gpio_backend)?;
    if let Some(w) = &opened.warning {
        tracing::warn!("{w}");
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let boot = store.safety_boot_state()?;
    let names: Vec<String> = printers.iter().map(|(n, ..)| n.clone()).collect();
    let controller = Arc::new(TripController::new(
        opened.gpio.as_ref(),
        &config,
        &names,
        &boot,
    )?);
    if let Some((pin, active_low)) = notifier.config().buzzer() {
        let out = opened.gpio.configure_output(&OutputConfig {
            pin,
            active_low,
            initial_on: false,
            label: "alert buzzer".into(),
        })?;
        notifier.attach_buzzer(out);
    }
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (updates, _) = broadcast::channel(1024);
    let open_count = boot.open_trips.len();
    let kept = boot
        .open_trips
        .iter()
        .skip(open_count.saturating_sub(OPEN_TRIPS_KEPT))
        .cloned()
        .collect();
    let inner = Arc::new(Inner {
        config: config.clone(),
        controller: controller.clone(),
        store,
        printers,
        dispatcher,
        notifier,
        gpio: opened.gpio.kind(),
        sim: opened.sim.clone(),
        gpio_warning: opened.warning.clone(),
        requests: req_tx,
        updates,
        open: Mutex::new((open_count, kept)),
        last_warning: Mutex::new(None),
    });
    // Inputs last: an input already asserted at boot trips as soon as it is debounced, and the
    // follow-up channel must exist by then.
    let (input_tx, input_rx) = mpsc::unbounded_channel();
    install_inputs(opened.gpio.as_ref(), &config, controller, input_tx)?;

    if let Some(newest) = boot.open_trips.last() {
        tracing::warn!(
            trip = ?newest.id,
            "a safety trip is latched from before this start ({}): relays stay off and the queue stays paused until a person resets it on the safety page",
            newest.cause.describe()
        );
        let affected: BTreeSet<String> = boot
            .open_trips
            .iter()
            .flat_map(|t| t.affected_printers.iter().cloned())
            .collect();
        for (name, _, link) in &inner.printers {
            if affected.contains(name) {
                tasks.spawn(stop_when_seen_printing(
                    name.clone(),
                    link.clone(),
                    shutdown.clone(),
                ));
            }
        }
    }
    let boot_reason = boot.open_trips.last().map(|t| {
        format!(
            "trip #{} latched before the restart: {}",
            t.id.unwrap_or_default(),
            t.cause.describe()
        )
    });
    tasks.spawn(follow_up(
        inner.clone(),
        input_rx,
        req_rx,
        boot_reason,
        shutdown.clone(),
    ));
    let watchdog = Arc::new(Mutex::new(ThermalWatchdog::new(config.watchdog.clone())));
    let base = Instant::now();
    for (name, model, link) in &inner.printers {
        tasks.spawn(watch_printer(
            inner.clone(),
            name.clone(),
            *model,
            link.subscribe(),
            watchdog.clone(),
            base,
            shutdown.clone(),
        ));
    }
    tasks.spawn(watchdog_ticks(
        inner.clone(),
        watchdog,
        base,
        shutdown.clone(),
    ));
    tasks.spawn(tell_dispatcher_power(
        inner.clone(),
        inner.updates.subscribe(),
        shutdown.clone(),
    ));
    tasks.spawn(watch_jobs(inner.clone(), shutdown));
    Ok(SafetyHandle { inner })
}

/// Keep the dispatcher told which printers printgate's relays hold unpowered (at start and after
/// every relay change: trip, manual or automatic power switching), so that a person may clear
/// the plate of a printer printgate switched off.
async fn tell_dispatcher_power(
    inner: Arc<Inner>,
    mut updates: broadcast::Receiver<SafetyUpdate>,
    shutdown: CancellationToken,
) {
    let mut told: HashMap<String, bool> = HashMap::new();
    loop {
        for (name, ..) in &inner.printers {
            let held_off = inner.controller.relay_on(name) == Some(false);
            if told.get(name) != Some(&held_off) {
                let event = Event::PowerHeldOff {
                    printer: name.clone(),
                    held_off,
                };
                if inner.dispatcher.submit(event).await.is_err() {
                    return;
                }
                told.insert(name.clone(), held_off);
            }
        }
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            u = updates.recv() => u,
        };
        match next {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl SafetyHandle {
    /// Current state for pages and the API.
    pub fn status(&self) -> SafetyView {
        let i = &self.inner;
        let st = i.controller.status();
        let (open_trips, trip) = {
            let open = lock(&i.open);
            (open.0, open.1.last().cloned())
        };
        let relay_pin = |p: &str| i.config.relay_for(p).map(|r| r.pin);
        let printers = i
            .printers
            .iter()
            .map(|(name, _, link)| PrinterPower {
                printer: name.clone(),
                relay_pin: relay_pin(name),
                power_on: i.controller.relay_on(name),
                latched: i.controller.is_printer_tripped(name),
                printing: is_printing(&i.dispatcher, name, &link.subscribe().borrow()),
            })
            .collect();
        let mut inputs = Vec::new();
        if let Some(s) = &i.config.smoke {
            inputs.push(InputView {
                input: InputKind::Smoke,
                name: "smoke".into(),
                pin: s.pin,
                role: "trip".into(),
                asserted: st.smoke_asserted,
            });
        }
        if let Some(s) = &i.config.second_input {
            inputs.push(InputView {
                input: InputKind::Second,
                name: s.name.clone(),
                pin: s.pin,
                role: match s.role {
                    crate::safety::config::InputRole::Trip => "trip".into(),
                    crate::safety::config::InputRole::Alert => "alert".into(),
                },
                asserted: st.second_asserted,
            });
        }
        SafetyView {
            tripped: st.tripped,
            trip_description: trip.as_ref().map(|t| t.cause.describe()),
            trip,
            open_trips,
            all_latched: st.all_latched,
            latched_printers: st.latched_printers,
            unpersisted: st.unpersisted,
            relays: st.relays,
            printers,
            inputs,
            gpio: i.gpio,
            gpio_warning: i.gpio_warning.clone(),
            relay_fail_safe: i.config.relay_fail_safe,
            auto_power_off: i.config.auto_power_off.enabled,
            last_warning: lock(&i.last_warning).clone(),
        }
    }

    /// The "emergency stop" button: every relay off at once, then the usual follow-up. Never
    /// refused (an empty user name is recorded as `unknown`). Returns the trip (not yet
    /// persisted; watch [`SafetyHandle::subscribe`] for `Persisted`).
    pub fn emergency_stop(&self, user: &str) -> TripRecord {
        self.emergency_stop_printer(user, None)
    }

    /// Emergency stop of one printer (its relay and those sharing it), or all with `None`.
    pub fn emergency_stop_printer(&self, user: &str, printer: Option<&str>) -> TripRecord {
        let by_user = if user.trim().is_empty() {
            "unknown".to_string()
        } else {
            user.to_string()
        };
        self.inner.trip(SafetyCause::EmergencyStop {
            by_user,
            printer: printer.map(str::to_string),
        })
    }

    /// Reset the latch after `user` confirmed trip `confirmed_trip_id` (the newest open one).
    /// Relays stay off; the queue stays paused until someone resumes it.
    pub async fn reset(&self, user: &str, confirmed_trip_id: i64) -> Result<usize, SafetyError> {
        if user.trim().is_empty() {
            return Err(SafetyError::NotAuthenticated);
        }
        let i = &self.inner;
        let n = i.controller.reset(
            &i.store,
            &ResetRequest {
                by_user: user.to_string(),
                confirmed_trip_id,
                at_unix_ms: now_unix_ms(),
            },
        )?;
        *lock(&i.open) = (0, Vec::new());
        tracing::warn!(
            user,
            trips = n,
            "safety trip reset; relays stay off until switched on"
        );
        i.dispatcher
            .submit(Event::SafetyReset {
                user: user.to_string(),
            })
            .await
            .map_err(|_| SafetyError::Stopped)?;
        let _ = i.updates.send(SafetyUpdate::Reset {
            by_user: user.to_string(),
            trips: n,
        });
        i.notifier.notify(Alert::new(
            AlertKind::SafetyReset,
            None,
            "printgate: safety trip reset",
            format!(
                "{user} reset the safety trip. Printer power stays off until switched on; the queue stays paused until resumed."
            ),
        ));
        Ok(n)
    }

    /// Switch a printer's relay by hand. Refused while a trip covers it (switching on), and
    /// while a printer on that relay is printing unless `force`. Recorded with the user.
    pub fn set_power(
        &self,
        printer: &str,
        on: bool,
        force: bool,
        user: &str,
    ) -> Result<PowerChange, SafetyError> {
        if user.trim().is_empty() {
            return Err(SafetyError::NotAuthenticated);
        }
        self.inner.set_power(printer, on, force, user)
    }

    /// The simulated GPIO, when it is the backend in use (demo, tests, `printgate gpio set`).
    pub fn sim_gpio(&self) -> Option<Arc<SimGpio>> {
        self.inner.sim.clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SafetyUpdate> {
        self.inner.updates.subscribe()
    }

    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.inner.notifier
    }

    pub fn config(&self) -> &SafetyConfig {
        &self.inner.config
    }

    /// Drive a simulated input to `level` and wait (bounded by `wait`) until the change has
    /// been debounced and, if it tripped, the trip is persisted. Returns the status afterwards.
    pub async fn set_sim_input(
        &self,
        pin: u8,
        level: Level,
        wait: Duration,
    ) -> Result<SafetyView, SafetyError> {
        let sim = self.inner.sim.clone().ok_or(SafetyError::NotSimulated)?;
        let cfg = &self.inner.config;
        let active = cfg
            .smoke
            .as_ref()
            .filter(|s| s.pin == pin)
            .map(|s| s.active_level)
            .or_else(|| {
                cfg.second_input
                    .as_ref()
                    .filter(|s| s.pin == pin)
                    .map(|s| s.active_level)
            })
            .ok_or(GpioError::NotAnInput { pin })?;
        let want_asserted = match active {
            crate::safety::config::ActiveLevel::Low => level == Level::Low,
            crate::safety::config::ActiveLevel::High => level == Level::High,
        };
        let mut rx = self.subscribe();
        let already = crate::safety::gpio::Gpio::input_asserted(sim.as_ref(), pin)?;
        sim.set_input(pin, level)?;
        if already != want_asserted {
            let seen = async {
                loop {
                    match rx.recv().await {
                        Ok(SafetyUpdate::Input {
                            pin: Some(p),
                            asserted,
                            ..
                        }) if p == pin && asserted == want_asserted => return,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            };
            let _ = tokio::time::timeout(wait, seen).await;
        }
        // A trip from this edge is recorded by the follow-up; wait until it is written and in
        // the list of open trips (the follow-up adds it there after writing it, then sends
        // `Persisted`), so that the answer names it. A trip that cannot be written keeps this
        // waiting until `wait` runs out.
        let settled = || {
            let st = self.inner.controller.status();
            st.unpersisted == 0 && (!st.tripped || !lock(&self.inner.open).1.is_empty())
        };
        let persisted = async {
            while !settled() {
                match rx.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        let _ = tokio::time::timeout(wait, persisted).await;
        Ok(self.status())
    }
}

impl Inner {
    /// Relays off (synchronously, first), then hand the record to the follow-up.
    fn trip(&self, cause: SafetyCause) -> TripRecord {
        let record = self.controller.trip(cause, Vec::new());
        // A closed channel means shutdown; the relays are off anyway.
        let _ = self.requests.send(Request::Trip(record.clone()));
        record
    }

    fn set_power(
        &self,
        printer: &str,
        on: bool,
        force: bool,
        actor: &str,
    ) -> Result<PowerChange, SafetyError> {
        let printing = |p: &str| {
            self.printers
                .iter()
                .find(|(n, ..)| n == p)
                .is_some_and(|(_, _, link)| {
                    is_printing(&self.dispatcher, p, &link.subscribe().borrow())
                })
        };
        let change = self.controller.set_power(
            &PowerRequest {
                printer: printer.to_string(),
                on,
                force,
            },
            &printing,
        )?;
        tracing::info!(
            printer,
            on,
            forced = change.forced,
            actor,
            "printer power switched"
        );
        let _ = self.updates.send(SafetyUpdate::Power {
            change: change.clone(),
            actor: actor.to_string(),
        });
        self.store
            .record_power_change(&change, actor, now_unix_ms())?;
        Ok(change)
    }

    fn readings(&self) -> Vec<PrinterReading> {
        self.printers
            .iter()
            .map(|(name, _, link)| {
                let snap = link.subscribe().borrow().clone();
                let st = snap.state.as_ref();
                PrinterReading {
                    printer: name.clone(),
                    gcode_state: st.map(|s| s.gcode_state.as_str().to_string()),
                    nozzle: st.and_then(|s| s.nozzle_temp),
                    nozzle_target: st.and_then(|s| s.nozzle_target),
                    bed: st.and_then(|s| s.bed_temp),
                    bed_target: st.and_then(|s| s.bed_target),
                }
            })
            .collect()
    }

    fn link(&self, printer: &str) -> Option<Arc<dyn PrinterLink>> {
        self.printers
            .iter()
            .find(|(n, ..)| n == printer)
            .map(|(_, _, l)| l.clone())
    }

    fn warn(self: &Arc<Self>, cause: SafetyCause) {
        let description = cause.describe();
        tracing::warn!("safety warning: {description}");
        *lock(&self.last_warning) = Some(WarningView {
            cause: cause.clone(),
            description: description.clone(),
            at_unix_ms: now_unix_ms(),
        });
        let _ = self.updates.send(SafetyUpdate::Warning {
            cause: cause.clone(),
            description: description.clone(),
        });
        self.notifier.notify(Alert::new(
            AlertKind::SafetyWarning,
            cause.printer(),
            "printgate: safety warning",
            format!("{description}. Power was not cut; check the printer."),
        ));
    }
}

/// Printing (or about to): the printer's last known state is active, or the dispatcher has a
/// job starting or printing on it.
fn is_printing(dispatcher: &Dispatcher, printer: &str, snap: &PrinterSnapshot) -> bool {
    snap.state
        .as_ref()
        .is_some_and(|s| s.gcode_state.is_active())
        || dispatcher.state().jobs.values().any(|j| {
            j.assigned_printer.as_deref() == Some(printer)
                && matches!(j.state, JobState::Starting | JobState::Printing)
        })
}

/// The follow-up task: one batch of waiting events at a time.
async fn follow_up(
    inner: Arc<Inner>,
    mut inputs: mpsc::UnboundedReceiver<SafetyEvent>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    boot_reason: Option<String>,
    shutdown: CancellationToken,
) {
    if let Some(reason) = boot_reason {
        tell_dispatcher(&inner.dispatcher, reason).await;
    }
    loop {
        let mut trips = Vec::new();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = inputs.recv() => match ev {
                Some(ev) => on_input_event(&inner, ev, &mut trips),
                None => return,
            },
            req = requests.recv() => match req {
                Some(req) => on_request(&inner, req, &mut trips),
                None => return,
            },
        }
        // Take whatever else is already waiting into the same batch.
        while let Ok(ev) = inputs.try_recv() {
            on_input_event(&inner, ev, &mut trips);
        }
        while let Ok(req) = requests.try_recv() {
            on_request(&inner, req, &mut trips);
        }
        if !trips.is_empty() {
            handle_trips(&inner, trips, &shutdown).await;
        }
    }
}

fn on_input_event(inner: &Arc<Inner>, ev: SafetyEvent, trips: &mut Vec<TripRecord>) {
    match ev {
        SafetyEvent::Tripped(record) => trips.push(record),
        SafetyEvent::InputChanged {
            input,
            name,
            asserted,
        } => {
            let pin = match input {
                InputKind::Smoke => inner.config.smoke.as_ref().map(|s| s.pin),
                InputKind::Second => inner.config.second_input.as_ref().map(|s| s.pin),
            };
            tracing::info!(input = name, asserted, "safety input changed");
            let _ = inner.updates.send(SafetyUpdate::Input {
                input,
                name,
                pin,
                asserted,
            });
        }
        SafetyEvent::Alert(cause) => inner.warn(cause),
    }
}

fn on_request(inner: &Arc<Inner>, req: Request, trips: &mut Vec<TripRecord>) {
    match req {
        Request::Trip(record) => trips.push(record),
        Request::Warning(cause) => inner.warn(cause),
    }
}

/// Persist every trip, stop the printers, tell the dispatcher, alert.
async fn handle_trips(
    inner: &Arc<Inner>,
    mut trips: Vec<TripRecord>,
    shutdown: &CancellationToken,
) {
    let readings = inner.readings();
    for t in &mut trips {
        if t.readings.is_empty() {
            t.readings = readings.clone();
        }
        tracing::error!(
            cause = t.cause.kind(),
            printers = ?t.affected_printers,
            relays_off = ?t.relays_off,
            "SAFETY TRIP: {}; relays are off",
            t.cause.describe()
        );
        let _ = inner.updates.send(SafetyUpdate::Tripped {
            cause: t.cause.clone(),
            description: t.cause.describe(),
            affected_printers: t.affected_printers.clone(),
            relays_off: t.relays_off.clone(),
            at_unix_ms: t.at_unix_ms,
        });
    }

    // 1. Persist.
    let persisted = persist_all(inner, trips, shutdown).await;
    let ids: Vec<i64> = persisted.iter().filter_map(|t| t.id).collect();
    if !ids.is_empty() {
        let _ = inner.updates.send(SafetyUpdate::Persisted {
            trip_ids: ids.clone(),
        });
    }

    // 2. Stop every affected printer that is online.
    let affected: BTreeSet<String> = persisted
        .iter()
        .flat_map(|t| t.affected_printers.iter().cloned())
        .collect();
    let mut stops = JoinSet::new();
    for name in &affected {
        if let Some(link) = inner.link(name) {
            let name = name.clone();
            stops.spawn(async move {
                let r = tokio::time::timeout(STOP_TIMEOUT, link.send(PrinterCommand::Stop)).await;
                let r = match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the stop command was not handed over in time".into()),
                };
                (name, r)
            });
        }
    }
    let mut stopped = Vec::new();
    let mut stop_failed = Vec::new();
    while let Some(joined) = stops.join_next().await {
        match joined {
            Ok((name, Ok(()))) => stopped.push(name),
            Ok((name, Err(e))) => {
                tracing::warn!(printer = %name, "stop after the safety trip not sent: {e}");
                stop_failed.push((name, e));
            }
            Err(e) => tracing::error!("stop task failed: {e}"),
        }
    }
    stopped.sort();
    stop_failed.sort();

    // 3. The dispatcher: trip and pause the queue (in the background: a dispatcher busy with a
    //    publish must not hold up the alerts).
    let mut reasons: Vec<String> = persisted.iter().map(|t| t.cause.describe()).collect();
    reasons.dedup();
    let dispatcher = inner.dispatcher.clone();
    let reason = reasons.join("; ");
    tokio::spawn(async move { tell_dispatcher(&dispatcher, reason).await });

    // 4. Alerts and the update.
    let mut alerted: Vec<&str> = Vec::new();
    for t in &persisted {
        if alerted.contains(&t.cause.kind()) {
            continue;
        }
        alerted.push(t.cause.kind());
        inner.notifier.notify(Alert::new(
            AlertKind::SafetyTrip,
            t.cause.printer(),
            "printgate: SAFETY TRIP",
            format!(
                "{}. Power is off for: {}. Printers stopped, queue paused. Check on site, then reset on the safety page.",
                t.cause.describe(),
                if t.affected_printers.is_empty() {
                    "no printer".to_string()
                } else {
                    t.affected_printers.join(", ")
                }
            ),
        ));
    }
    let _ = inner.updates.send(SafetyUpdate::FollowUpDone {
        trip_ids: ids,
        stopped,
        stop_failed,
    });
}

/// Write the trips (on a blocking thread; retried with a short pause up to 5 times). Trips that
/// could not be written stay latched in memory: their relays stay off and a reset is refused.
async fn persist_all(
    inner: &Arc<Inner>,
    trips: Vec<TripRecord>,
    shutdown: &CancellationToken,
) -> Vec<TripRecord> {
    let mut pending = trips;
    let mut done = Vec::new();
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200 << attempt)) => {}
            }
        }
        let controller = inner.controller.clone();
        let store = inner.store.clone();
        let batch = std::mem::take(&mut pending);
        let result = tokio::task::spawn_blocking(move || {
            let mut ok = Vec::new();
            let mut failed = Vec::new();
            for mut t in batch {
                match controller.persist(&store, &mut t) {
                    Ok(_) => ok.push(t),
                    Err(e) => failed.push((t, e.to_string())),
                }
            }
            (ok, failed)
        })
        .await;
        match result {
            Ok((ok, failed)) => {
                done.extend(ok);
                for (t, e) in failed {
                    tracing::error!(
                        "cannot record the safety trip ({}): {e}; relays stay off, retrying",
                        t.cause.describe()
                    );
                    pending.push(t);
                }
            }
            Err(e) => {
                tracing::error!("trip recording task failed: {e}");
                break;
            }
        }
        if pending.is_empty() {
            break;
        }
    }
    if !pending.is_empty() {
        tracing::error!(
            trips = pending.len(),
            "safety trips could not be written to the database; they stay latched until the gateway restarts (relays off), and a reset is refused. Check the disk"
        );
        // Still act on them: stop printers and alert.
        done.extend(pending);
    }
    {
        let mut open = lock(&inner.open);
        for t in done.iter().filter(|t| t.id.is_some()) {
            open.0 += 1;
            open.1.push(t.clone());
        }
        let excess = open.1.len().saturating_sub(OPEN_TRIPS_KEPT);
        open.1.drain(..excess);
    }
    done
}

async fn tell_dispatcher(dispatcher: &Dispatcher, reason: String) {
    if dispatcher
        .submit(Event::SafetyTrip { reason })
        .await
        .is_err()
    {
        return;
    }
    let _ = dispatcher.submit(Event::PauseQueue { printer: None }).await;
}

/// After a boot with a latched trip: send `stop` to an affected printer that shows up printing
/// (e.g. one without a relay, or the gateway died between the relay write and the stop).
async fn stop_when_seen_printing(
    name: String,
    link: Arc<dyn PrinterLink>,
    shutdown: CancellationToken,
) {
    let mut rx = link.subscribe();
    let seen = rx.wait_for(|s| {
        s.link.is_online()
            && s.have_full_report
            && s.state
                .as_ref()
                .is_some_and(|st| st.gcode_state.is_active())
    });
    let found = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(BOOT_STOP_WATCH, seen) => matches!(r, Ok(Ok(_))),
    };
    if found {
        tracing::warn!(printer = %name, "printer is printing while a safety trip is latched: sending stop");
        if let Err(e) = link.send(PrinterCommand::Stop).await {
            tracing::warn!(printer = %name, "stop not sent: {e}");
        }
    }
}

/// Feed one printer's reports into the watchdog; per-printer alerts; auto power-off.
async fn watch_printer(
    inner: Arc<Inner>,
    name: String,
    model: Model,
    mut rx: tokio::sync::watch::Receiver<PrinterSnapshot>,
    watchdog: Arc<Mutex<ThermalWatchdog>>,
    base: Instant,
    shutdown: CancellationToken,
) {
    let mut prev = rx.borrow_and_update().clone();
    let mut power_off_armed = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let next = rx.borrow_and_update().clone();
        if next.link.is_online()
            && let Some(st) = next.state.as_ref()
        {
            for cause in printer_faults::new_faults(&name, prev.state.as_ref(), st) {
                let record = inner.trip(cause); // relays off first, then the log line
                tracing::error!(printer = %name, "safety tripped: {}", record.cause.describe());
            }
        }
        for alert in alerts::printer_alerts(&name, &prev, &next) {
            inner.notifier.notify(alert);
        }
        let new_report =
            next.last_report_at.is_some() && next.last_report_at != prev.last_report_at;
        if let (true, true, Some(st)) = (new_report, next.link.is_online(), next.state.as_ref()) {
            let at = next.last_report_at.unwrap_or_else(Instant::now);
            let sample = ThermalSample {
                now_ms: u64::try_from(at.saturating_duration_since(base).as_millis())
                    .unwrap_or(u64::MAX),
                nozzle: st.nozzle_temp,
                nozzle_target: st.nozzle_target,
                bed: st.bed_temp,
                bed_target: st.bed_target,
                gcode_state: st.gcode_state,
            };
            let verdict = lock(&watchdog).observe(&name, model, &sample);
            if let Some(v) = verdict {
                act_on(&inner, v);
            }
            // Auto power-off: armed by a print ending while we watched, fired once cool.
            let was_active = prev
                .state
                .as_ref()
                .is_some_and(|s| s.gcode_state.is_active());
            if st.gcode_state == GcodeState::Finish && was_active {
                power_off_armed = inner.config.auto_power_off.enabled;
            } else if st.gcode_state != GcodeState::Finish {
                power_off_armed = false;
            }
            if power_off_armed && auto_power_off_due(&inner.config.auto_power_off, &sample) {
                power_off_armed = false;
                if inner.controller.relay_on(&name) == Some(true) {
                    match inner.set_power(&name, false, false, "printgate (auto power-off)") {
                        Ok(_) => {
                            tracing::info!(printer = %name, "auto power-off after the print cooled down")
                        }
                        Err(e) => tracing::warn!(printer = %name, "auto power-off not done: {e}"),
                    }
                }
            }
        }
        prev = next;
    }
}

fn act_on(inner: &Arc<Inner>, verdict: WatchdogVerdict) {
    match verdict {
        WatchdogVerdict::Trip(cause) => {
            inner.trip(cause);
        }
        WatchdogVerdict::Alert(cause) => {
            let _ = inner.requests.send(Request::Warning(cause));
        }
    }
}

/// Once a second: report silence while printing, and verdicts left over from `observe`.
async fn watchdog_ticks(
    inner: Arc<Inner>,
    watchdog: Arc<Mutex<ThermalWatchdog>>,
    base: Instant,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now_ms = u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let verdicts = lock(&watchdog).tick(now_ms);
        for v in verdicts {
            act_on(&inner, v);
        }
    }
}

/// Alert when a job becomes `unconfirmed`.
async fn watch_jobs(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut rx = inner.dispatcher.subscribe();
    let mut prev = rx.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let next = rx.borrow_and_update().clone();
        for alert in alerts::unconfirmed_jobs(&prev, &next) {
            inner.notifier.notify(alert);
        }
        prev = next;
    }
}

/// Oneshot-free helper kept for callers that want to await the persistence of a trip they
/// started (emergency stop from the API): waits for `Persisted` (bounded).
pub async fn wait_persisted(
    handle: &SafetyHandle,
    mut rx: broadcast::Receiver<SafetyUpdate>,
    wait: Duration,
) -> bool {
    let until = async {
        loop {
            if handle.inner.controller.status().unpersisted == 0 {
                return true;
            }
            match rx.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return false,
            }
        }
    };
    tokio::time::timeout(wait, until).await.unwrap_or(false)
}
