//! One printer's camera shared by every viewer. A P1/A1 chamber camera serves a single client,
//! so printgate opens at most one upstream connection per printer and hands its frames to
//! everyone who asks:
//!
//! - a snapshot request reuses a frame younger than [`HubTimings::fresh`]; otherwise it joins
//!   the one upstream connection (started for the first request, shared by all that come while
//!   it connects: single-flight) and waits for its next frame, bounded by the caller's wait;
//! - the upstream stays open while someone watches and closes [`HubTimings::grace`] after the
//!   last viewer left (a page reload soon after is answered at once);
//! - a refused or broken connection backs off (5 s doubling to 120 s, jittered, invariant I8):
//!   requests during the backoff get the reason in words at once and never open a connection,
//!   so a busy camera (Bambu Studio or Handy watching) is never taken away from its viewer by
//!   printgate asking in a loop.
//!
//! The upstream's frames are read by a task of their own (a frame read is not cancel-safe);
//! the control loop around it only decides when to close.

use crate::printer::bambu::backoff::Backoff;
use crate::printer::bambu::camera::{CameraError, CameraStream};
use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How the hub paces its one upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubTimings {
    /// A frame younger than this answers a snapshot request without waiting.
    pub fresh: Duration,
    /// The upstream closes this long after the last viewer left.
    pub grace: Duration,
    /// First delay after a refused or broken connection; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for HubTimings {
    fn default() -> Self {
        Self {
            fresh: Duration::from_secs(2),
            grace: Duration::from_secs(10),
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(120),
        }
    }
}

/// Whether the printer's MQTT session is signed in with the same access code right now. Tells
/// "camera busy" (code known good) from "wrong access code" when the camera closes after the
/// auth packet, which it does for both.
pub type SignedIn = Arc<dyn Fn() -> bool + Send + Sync>;

/// Where a P1/A1 chamber camera is reached.
pub struct ChamberTarget {
    pub host: String,
    pub port: u16,
    /// TLS server name and the CN the certificate must carry.
    pub serial: String,
    pub access_code: String,
    /// The printer's TLS config (same pinning as its MQTT session).
    pub tls: Arc<rustls::ClientConfig>,
    pub signed_in: SignedIn,
}

/// The camera a printer has, as far as printgate can read it.
pub enum CameraTarget {
    ChamberImage(ChamberTarget),
    /// No camera printgate reads: why, in words (model without one, RTSPS not supported yet,
    /// no TLS config).
    Unavailable(CameraError),
}

/// One JPEG from the camera and when it arrived.
#[derive(Debug, Clone)]
pub struct Frame {
    pub jpeg: Bytes,
    /// When the gateway received it (monotonic, for ages).
    pub received: Instant,
    /// The same instant on the wall clock (for pages and history).
    pub received_at: SystemTime,
}

impl Frame {
    /// How old the picture is now.
    pub fn age(&self) -> Duration {
        self.received.elapsed()
    }
}

/// Why a snapshot request got no picture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The printer has no camera printgate can read (HTTP 404).
    #[error("{0}")]
    NoCamera(CameraError),
    #[error(
        "camera busy: another client (Bambu Studio, Bambu Handy or another app) is watching this printer's camera, which serves one viewer at a time; printgate does not take it away and asks again in {} s (close the other viewer to see the picture here)",
        secs(*retry_in)
    )]
    Busy { retry_in: Duration },
    #[error("{error}; printgate asks the camera again in {} s", secs(*retry_in))]
    Failing {
        error: CameraError,
        retry_in: Duration,
    },
    #[error(
        "the camera sent no picture within {0} s (it is still connecting); look at the plate at the printer, or reload in a moment"
    )]
    NoPictureYet(u64),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// The last refusal, kept for answers during the backoff.
#[derive(Debug, Clone)]
struct Failure {
    busy: bool,
    error: CameraError,
    retry_at: Instant,
}

impl Failure {
    fn answer(&self, now: Instant) -> SnapshotError {
        let retry_in = self.retry_at.saturating_duration_since(now);
        if self.busy {
            SnapshotError::Busy { retry_in }
        } else {
            SnapshotError::Failing {
                error: self.error.clone(),
                retry_in,
            }
        }
    }
}

struct State {
    latest: Option<Frame>,
    viewers: usize,
    last_left: Instant,
    /// The upstream task is running (connecting, streaming or waiting out a backoff with
    /// viewers present).
    running: bool,
    backoff: Backoff,
    failure: Option<Failure>,
    /// Upstream connections opened since start.
    connections: u64,
    /// Frames shown on a page, by the page's key (newest last, at most [`SHOWN_KEPT`]).
    shown: std::collections::VecDeque<(String, Frame)>,
}

/// Shown frames a hub remembers (pages opened but not yet answered)…
pub const SHOWN_KEPT: usize = 16;
/// …each for at most this long after the camera sent it (a confirmation left open longer is
/// answered without its picture in history).
pub const SHOWN_FOR: Duration = Duration::from_secs(30 * 60);

struct Inner {
    printer: String,
    target: CameraTarget,
    timings: HubTimings,
    state: Mutex<State>,
    /// Bumped after every frame, failure and upstream end (wakes waiting requests).
    changed: watch::Sender<u64>,
    /// Wakes the upstream when viewers come or go.
    viewers_changed: Notify,
    shutdown: CancellationToken,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The shared camera of one printer (cheap to clone).
#[derive(Clone)]
pub struct CameraHub {
    inner: Arc<Inner>,
}

/// Someone watching: keeps the upstream open while held.
struct Viewer {
    inner: Arc<Inner>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        {
            let mut st = self.inner.lock();
            st.viewers = st.viewers.saturating_sub(1);
            if st.viewers == 0 {
                st.last_left = Instant::now();
            }
        }
        self.inner.viewers_changed.notify_one();
    }
}

impl CameraHub {
    /// The hub of `printer`'s camera. Nothing connects until someone asks for a picture; the
    /// upstream stops with `shutdown`.
    pub fn new(
        printer: &str,
        target: CameraTarget,
        timings: HubTimings,
        shutdown: CancellationToken,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner: Arc::new(Inner {
                printer: printer.to_string(),
                target,
                timings,
                state: Mutex::new(State {
                    latest: None,
                    viewers: 0,
                    last_left: now,
                    running: false,
                    backoff: Backoff::new(timings.backoff_min, timings.backoff_max),
                    failure: None,
                    connections: 0,
                    shown: std::collections::VecDeque::new(),
                }),
                changed: watch::channel(0).0,
                viewers_changed: Notify::new(),
                shutdown,
            }),
        }
    }

    /// Whether the printer has a camera printgate reads (`Err` says why not).
    pub fn available(&self) -> Result<(), SnapshotError> {
        match &self.inner.target {
            CameraTarget::ChamberImage(_) => Ok(()),
            CameraTarget::Unavailable(e) => Err(SnapshotError::NoCamera(e.clone())),
        }
    }

    /// Upstream connections opened since start (one per printer however many viewers).
    pub fn connections(&self) -> u64 {
        self.inner.lock().connections
    }

    /// Remember that `frame` was shown on the page identified by `key` (a Plate clear tap id),
    /// so that the answer to that page can keep the very picture the person saw.
    pub fn remember_shown(&self, key: &str, frame: Frame) {
        let mut st = self.inner.lock();
        st.shown
            .retain(|(k, f)| k != key && f.received.elapsed() < SHOWN_FOR);
        if st.shown.len() >= SHOWN_KEPT {
            st.shown.pop_front();
        }
        st.shown.push_back((key.to_string(), frame));
    }

    /// The frame shown on page `key`, taken out of the memory.
    pub fn take_shown(&self, key: &str) -> Option<Frame> {
        let mut st = self.inner.lock();
        let at = st.shown.iter().position(|(k, _)| k == key)?;
        st.shown
            .remove(at)
            .map(|(_, f)| f)
            .filter(|f| f.received.elapsed() < SHOWN_FOR)
    }

    /// Whether the upstream connection is open or being opened now.
    pub fn upstream_running(&self) -> bool {
        self.inner.lock().running
    }

    /// Wait until the upstream has closed (after the grace, or a failure with nobody
    /// watching), at most `wait`. Returns whether it closed.
    pub async fn wait_upstream_closed(&self, wait: Duration) -> bool {
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            if !self.upstream_running() {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return !self.upstream_running(),
            }
        }
    }

    /// A picture of the plate: a frame younger than [`HubTimings::fresh`], else the next frame
    /// of the shared upstream connection, waiting at most `wait`. During a backoff the reason
    /// comes back at once and no connection is opened.
    pub async fn snapshot(&self, wait: Duration) -> Result<Frame, SnapshotError> {
        self.available()?;
        let inner = &self.inner;
        let mut rx = inner.changed.subscribe();
        let _viewer = self.join();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            {
                let mut st = inner.lock();
                let now = Instant::now();
                if let Some(f) = st.latest.as_ref()
                    && now.saturating_duration_since(f.received) < inner.timings.fresh
                {
                    return Ok(f.clone());
                }
                if let Some(f) = st.failure.as_ref()
                    && now < f.retry_at
                {
                    return Err(f.answer(now));
                }
                if !st.running {
                    self.start_upstream(&mut st);
                }
            }
            if inner.shutdown.is_cancelled() {
                return Err(SnapshotError::ShuttingDown);
            }
            tokio::select! {
                _ = inner.shutdown.cancelled() => return Err(SnapshotError::ShuttingDown),
                r = tokio::time::timeout_at(deadline, rx.changed()) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(SnapshotError::ShuttingDown),
                    Err(_) => return Err(SnapshotError::NoPictureYet(secs(wait))),
                },
            }
        }
    }

    fn join(&self) -> Viewer {
        self.inner.lock().viewers += 1;
        self.inner.viewers_changed.notify_one();
        Viewer {
            inner: self.inner.clone(),
        }
    }

    fn start_upstream(&self, st: &mut State) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        st.running = true;
        let inner = self.inner.clone();
        let span = tracing::info_span!("camera", printer = %inner.printer);
        tokio::spawn(tracing::Instrument::instrument(run_upstream(inner), span));
    }
}

/// How one upstream connection ended.
enum Ended {
    /// Nobody watched for the grace: closed on purpose.
    Idle,
    Shutdown,
    Failed {
        error: CameraError,
        frames: u64,
        uptime: Duration,
    },
}

/// The upstream task: connect, stream until idle, back off after a failure (retrying only while
/// someone watches), then mark itself stopped.
async fn run_upstream(inner: Arc<Inner>) {
    let CameraTarget::ChamberImage(target) = &inner.target else {
        inner.lock().running = false;
        inner.bump();
        return;
    };
    loop {
        let ended = stream_once(&inner, target).await;
        let delay = {
            let mut st = inner.lock();
            match ended {
                Ended::Idle | Ended::Shutdown => {
                    st.running = false;
                    drop(st);
                    inner.bump();
                    tracing::debug!("camera upstream closed");
                    return;
                }
                Ended::Failed {
                    error,
                    frames,
                    uptime,
                } => {
                    let hard = frames > 0 && st.backoff.session_ended(uptime);
                    let delay = if hard {
                        st.backoff.hard_delay()
                    } else {
                        st.backoff.next_delay()
                    };
                    let busy = frames == 0
                        && error == CameraError::ClosedAfterAuth
                        && (target.signed_in)();
                    tracing::info!(
                        error = %error,
                        busy,
                        retry_in_s = delay.as_secs(),
                        "camera refused or broke; backing off"
                    );
                    st.failure = Some(Failure {
                        busy,
                        error,
                        retry_at: Instant::now() + delay,
                    });
                    if st.viewers == 0 {
                        st.running = false;
                        drop(st);
                        inner.bump();
                        return;
                    }
                    delay
                }
            }
        };
        inner.bump();
        // Someone still watches (a live view): ask again after the backoff, not before.
        tokio::select! {
            _ = inner.shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        // Only for someone watching at this instant: a finished request does not keep asking.
        let mut st = inner.lock();
        if inner.shutdown.is_cancelled() || st.viewers == 0 {
            st.running = false;
            drop(st);
            inner.bump();
            return;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn stream_once(inner: &Inner, t: &ChamberTarget) -> Ended {
    let started = Instant::now();
    let failed = |error: CameraError, frames: u64| Ended::Failed {
        error,
        frames,
        uptime: started.elapsed(),
    };
    let addr = match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
        Ok(mut addrs) => match addrs.next() {
            Some(a) => a,
            None => {
                return failed(
                    CameraError::Unreachable(format!("{} has no address", t.host)),
                    0,
                );
            }
        },
        Err(e) => {
            return failed(
                CameraError::Unreachable(format!("cannot resolve {}: {e}", t.host)),
                0,
            );
        }
    };
    inner.lock().connections += 1;
    let connect = CameraStream::connect(addr, &t.serial, t.tls.clone(), &t.access_code);
    let mut stream = tokio::select! {
        _ = inner.shutdown.cancelled() => return Ended::Shutdown,
        r = connect => match r {
            Ok(s) => s,
            Err(e) => return failed(e, 0),
        },
    };
    let (tx, mut frames_rx) = mpsc::channel(1);
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let r = stream.next_frame().await;
            let end = r.is_err();
            if tx.send(r).await.is_err() || end {
                return;
            }
        }
    }));
    let mut frames = 0u64;
    loop {
        let idle_at = {
            let st = inner.lock();
            (st.viewers == 0).then(|| st.last_left + inner.timings.grace)
        };
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let idle_sleep = idle_at.map(tokio::time::Instant::from_std).unwrap_or(far);
        tokio::select! {
            _ = inner.shutdown.cancelled() => return Ended::Shutdown,
            _ = inner.viewers_changed.notified() => {}
            _ = tokio::time::sleep_until(idle_sleep), if idle_at.is_some() => {
                let st = inner.lock();
                if st.viewers == 0 && st.last_left.elapsed() >= inner.timings.grace {
                    return Ended::Idle;
                }
            }
            m = frames_rx.recv() => match m {
                Some(Ok(jpeg)) => {
                    frames += 1;
                    {
                        let mut st = inner.lock();
                        st.latest = Some(Frame {
                            jpeg,
                            received: Instant::now(),
                            received_at: SystemTime::now(),
                        });
                        st.failure = None;
                    }
                    inner.bump();
                }
                Some(Err(e)) => return failed(e, frames),
                None => return failed(CameraError::Broken("the frame reader stopped".into()), frames),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_answer_in_words_with_the_time_to_the_next_try() {
        let now = Instant::now();
        let busy = Failure {
            busy: true,
            error: CameraError::ClosedAfterAuth,
            retry_at: now + Duration::from_millis(4200),
        };
        let text = busy.answer(now).to_string();
        assert!(text.starts_with("camera busy"), "{text}");
        assert!(text.contains("asks again in 5 s"), "{text}");
        let code = Failure {
            busy: false,
            ..busy.clone()
        };
        let text = code.answer(now).to_string();
        assert!(text.contains("wrong access code"), "{text}");
        assert!(text.contains("again in 5 s"), "{text}");
    }

    #[test]
    fn shown_frames_are_kept_by_page_and_bounded() {
        let hub = CameraHub::new(
            "P1S",
            CameraTarget::Unavailable(CameraError::NoCamera),
            HubTimings::default(),
            CancellationToken::new(),
        );
        let frame = |b: u8| Frame {
            jpeg: Bytes::from(vec![b]),
            received: Instant::now(),
            received_at: SystemTime::now(),
        };
        for i in 0..=SHOWN_KEPT {
            hub.remember_shown(&format!("tap-{i}"), frame(i as u8));
        }
        assert!(hub.take_shown("tap-0").is_none(), "the oldest is dropped");
        assert_eq!(hub.take_shown("tap-3").unwrap().jpeg[0], 3);
        assert!(hub.take_shown("tap-3").is_none(), "taken once");
        let old = Frame {
            received: Instant::now()
                .checked_sub(SHOWN_FOR + Duration::from_secs(1))
                .expect("the clock runs long enough"),
            ..frame(7)
        };
        hub.remember_shown("left-open", old);
        assert!(hub.take_shown("left-open").is_none(), "too old to be kept");
    }

    #[tokio::test]
    async fn a_model_without_a_camera_says_so_and_never_connects() {
        let hub = CameraHub::new(
            "X1C",
            CameraTarget::Unavailable(CameraError::RtspsNotSupported),
            HubTimings::default(),
            CancellationToken::new(),
        );
        let err = hub.snapshot(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err, SnapshotError::NoCamera(CameraError::RtspsNotSupported));
        assert_eq!(hub.connections(), 0);
        assert!(!hub.upstream_running());
    }
}
