//! The 2023-08-15 Bambu cloud outage (`shared/seeds/`), replayed against the real gateway and
//! three simulated printers over real TLS, FTPS and SQLite.
//!
//! What happened then: an MQTT client reported a successful reconnect while nothing flowed; print
//! starts piled up; users and API clients retried; when the link really came back the pile was
//! delivered and printers started jobs nobody had asked for (some already printed, some on full
//! plates). Here the same pattern is driven through the JSON API:
//! 1. normal operation: jobs uploaded (an API retry with the same `Idempotency-Key`), one printed;
//! 2. half-open: every printer freezes (connections stay up, nothing flows) while the gateway
//!    still believes it is connected; people tap "plate clear" on two printers;
//! 3. the gateway notices the dead link; while the printers are unreachable (stalled handshakes,
//!    then refused connections) people tap again, press "start again", and API clients retry the
//!    uploads with the same and with new idempotency keys;
//! 4. the link really comes back; people press "start again", retry the API, tap.
//!
//! The simulators' command logs are the ground truth: every start they received is mapped to a
//! job and to exactly one consumed tap of a person; no subtask id arrives twice; no start arrives
//! after its window or on a connection made after it was decided; nothing arrives while the
//! printers are unreachable; the start published into the frozen connection is never delivered;
//! retried uploads with the same key create one job, and jobs created by retries with new keys
//! never start without their own tap.

mod common;

use common::{Api, ApiAnswer, AuditRules, TestGateway, WAIT, audit_starts, delivered_starts};
use printgate::config::Model;
use printgate::jobs::model::{JobId, JobState};
use printgate::printer::GcodeState;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const P1: &str = "printer 1"; // P1S (delta reports)
const P2: &str = "printer 2"; // X1C (full reports)
const P3: &str = "printer 3"; // A1 mini (delta reports)
/// Simulated print: 20 s prepare + this, at `TIME_SCALE`.
const PRINT_SECS: u64 = 60;
const TIME_SCALE: f64 = 100.0;
/// How long the printers refuse connections after the half-open phase.
const REFUSED: Duration = Duration::from_secs(4);

/// The people and clients of the replay, and what they did (tap ids, subtask history).
struct People {
    api: Api,
    taps: BTreeSet<String>,
    tap_counter: u32,
    previous_subtasks: BTreeMap<u32, JobId>,
}

impl People {
    async fn tap(&mut self, printer: &str) -> ApiAnswer {
        self.tap_counter += 1;
        let id = format!("tap-{}-{}", self.tap_counter, printer.replace(' ', "-"));
        self.taps.insert(id.clone());
        self.api.tap(printer, &id).await.expect("tap request")
    }

    async fn upload(&self, model: Model, printer: &str, key: &str) -> ApiAnswer {
        self.api
            .upload(
                &format!("{key}.gcode.3mf"),
                common::fixture_bytes(model, PRINT_SECS),
                Some(printer),
                Some(key),
            )
            .await
            .expect("upload request")
    }

    /// "Start again" as a person presses it; remembers the job's subtask id before.
    async fn start_again(&mut self, t: &TestGateway, job: JobId) -> ApiAnswer {
        let before = t.gw().store.job(job).expect("db").expect("job").subtask_id;
        self.previous_subtasks.insert(before, job);
        let answer = self
            .api
            .job_action(job, "start-again")
            .await
            .expect("start-again request");
        assert_eq!(answer.status, 200, "start again answered {answer:?}");
        answer
    }
}

fn job_state(t: &TestGateway, id: JobId) -> JobState {
    t.gw().store.job(id).expect("db").expect("job exists").state
}

fn link_online(t: &TestGateway, i: usize) -> bool {
    t.gw().printers[i]
        .link
        .subscribe()
        .borrow()
        .link
        .is_online()
}

struct Jobs {
    a1: JobId,
    a2: JobId,
    a3: JobId,
    b1: JobId,
}

/// What people and API clients do while the printers are unreachable.
async fn unreachable_round(
    people: &mut People,
    t: &TestGateway,
    round: u32,
    jobs: &Jobs,
    new_key_jobs: &mut Vec<JobId>,
) {
    for printer in [P1, P2, P3] {
        let a = people.tap(printer).await;
        assert!(
            !a.tap_accepted(),
            "round {round}: a tap on unreachable {printer} must be refused: {a:?}"
        );
    }
    // The finished job's upload retried (what re-printed finished jobs in 2023).
    for (key, model, printer, id) in [
        ("a1", Model::P1S, P1, jobs.a1),
        ("b1", Model::P1S, P1, jobs.b1),
        ("a2", Model::X1C, P2, jobs.a2),
    ] {
        let r = people.upload(model, printer, key).await;
        assert_eq!(
            (r.status, r.job_id()),
            (200, Some(id)),
            "retry of {key}: {r:?}"
        );
    }
    // A client that retries with a fresh key each time creates new jobs; they wait for their
    // own taps.
    let r = people
        .upload(Model::P1S, P1, &format!("storm-{round}"))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    new_key_jobs.push(r.job_id().expect("id"));
    // "Start again" on what is unconfirmed (pressed twice: the second is a no-op).
    for job in [jobs.a2, jobs.a3] {
        if job_state(t, job) == JobState::Unconfirmed {
            people.start_again(t, job).await;
            let sub = t.gw().store.job(job).expect("db").expect("job").subtask_id;
            people.start_again(t, job).await;
            let row = t.gw().store.job(job).expect("db").expect("job");
            assert_eq!(row.subtask_id, sub, "a second press changes nothing");
            assert_eq!(row.state, JobState::Queued);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2023_08_15_outage_replayed_starts_nothing_unasked_twice_or_late() {
    let models = [Model::P1S, Model::X1C, Model::A1Mini];
    let mut sims = Vec::new();
    for m in models {
        sims.push(common::start_sim(m, TIME_SCALE).await);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::config_for(dir.path(), &sims);
    // Slow enough to notice the frozen link that a tap lands while the gateway still believes
    // it is connected (what the cloud's MQTT client believed), fast enough for a test.
    config.link.keepalive_secs = 3;
    // The X1C sends a full report every few hundred ms and is always fresh; the A1 mini sends
    // deltas only, so its full report goes stale between the link's silence pushalls.
    config.dispatch.report_max_age_secs = 2;
    let window_ms = config.dispatch.start_window_secs * 1000;
    let ttl_ms = config.dispatch.plate_clear_ttl_secs * 1000;
    let t = TestGateway::start_with(sims, dir, config).await;
    let mut people = People {
        api: t.api(),
        taps: BTreeSet::new(),
        tap_counter: 0,
        previous_subtasks: BTreeMap::new(),
    };
    t.wait_dispatch_ready().await;

    // ---- 1. Normal operation -------------------------------------------------------------
    let a1 = people.upload(Model::P1S, P1, "a1").await;
    assert_eq!(a1.status, 201, "{a1:?}");
    let a1 = a1.job_id().expect("job id");
    // The slicer did not see the answer and retried: same key, same job.
    let again = people.upload(Model::P1S, P1, "a1").await;
    assert_eq!((again.status, again.job_id()), (200, Some(a1)), "{again:?}");
    let a2 = people
        .upload(Model::X1C, P2, "a2")
        .await
        .job_id()
        .expect("a2");
    let a3 = people
        .upload(Model::A1Mini, P3, "a3")
        .await
        .job_id()
        .expect("a3");
    let b1 = people
        .upload(Model::P1S, P1, "b1")
        .await
        .job_id()
        .expect("b1");
    for id in [a1, a2, a3] {
        t.wait_job(id, JobState::Staged).await;
    }
    let tap = people.tap(P1).await;
    assert!(tap.tap_accepted(), "{tap:?}");
    t.wait_job(a1, JobState::Finished).await;
    t.sims[0]
        .wait_truth(WAIT, |s| s.gcode_state == GcodeState::Finish)
        .await
        .expect("first print finished on the printer");
    t.wait_job(b1, JobState::Staged).await;

    // ---- 2. Half-open: the connections stay up, nothing flows ----------------------------
    let frozen_conns: Vec<BTreeSet<u64>> = t
        .sims
        .iter()
        .map(|s| s.command_log().iter().map(|c| c.conn_id).collect())
        .collect();
    // Let the A1 mini's last full report go stale (but not so long that the link's silence
    // watchdog refreshes it), so that its start must wait for a report that cannot come.
    let a1_mini = t.gw().printers[2].link.subscribe();
    let last_full = a1_mini.borrow().last_full_report_at;
    if let Some(at) = last_full {
        tokio::time::sleep_until((at + Duration::from_millis(2_500)).into()).await;
    }
    let t_half_open = Instant::now();
    for s in &t.sims {
        s.half_open_for(Duration::from_secs(120));
    }
    // People tap while the gateway still believes the printers are connected.
    assert!(
        (0..3).all(|i| link_online(&t, i)),
        "the gateway believes it is connected"
    );
    let tap2 = people.tap(P2).await;
    let tap3 = people.tap(P3).await;
    assert!(
        tap2.tap_accepted() && tap3.tap_accepted(),
        "taps accepted while the link looks up: {tap2:?} {tap3:?}"
    );
    // The X1C reports in full every few hundred ms, so its start is published at once, into
    // the frozen connection.
    let a2_published = t
        .wait_job_in(a2, &[JobState::Starting, JobState::Unconfirmed])
        .await;
    // The gateway notices the dead link (keepalive) on every printer.
    let mut view = t.gw().dispatcher.subscribe();
    tokio::time::timeout(
        WAIT,
        view.wait_for(|s| s.printers.values().all(|p| !p.link_online)),
    )
    .await
    .expect("the gateway notices the frozen links")
    .expect("dispatcher running");
    let a2_after = t.wait_job_in(a2, &[JobState::Unconfirmed]).await;
    assert!(
        a2_published.start.is_some() && a2_after.start.is_some(),
        "a2 went through a start attempt"
    );
    let a2_old_subtask = a2_after.subtask_id;
    // The A1 mini reports deltas: depending on the age of its last full report its start was
    // published into the frozen connection (unconfirmed) or waited for a fresh report and went
    // back to the queue when the link dropped (nothing sent, tap restored).
    let a3_state = t
        .wait_job_in(
            a3,
            &[JobState::Unconfirmed, JobState::Queued, JobState::Staged],
        )
        .await
        .state;
    println!("A1 mini start during the half-open link: {a3_state:?}");

    // ---- 3. Unreachable: messages pile up -------------------------------------------------
    let mut new_key_jobs = Vec::new();
    let jobs = Jobs { a1, a2, a3, b1 };
    // Round 1: handshakes to the printers stall (the half-open printers accept TCP only).
    unreachable_round(&mut people, &t, 1, &jobs, &mut new_key_jobs).await;
    // The second failure: connections refused for a while, the half-open state is over.
    let t_refused = Instant::now();
    for s in &t.sims {
        s.disconnect_for(REFUSED);
        s.half_open_for(Duration::ZERO);
    }
    unreachable_round(&mut people, &t, 2, &jobs, &mut new_key_jobs).await;
    let round_two_done = Instant::now();
    assert!(
        round_two_done < t_refused + REFUSED,
        "the unreachable round finished while the printers refused connections"
    );

    // ---- 4. The real reconnect ------------------------------------------------------------
    t.wait_dispatch_ready().await;
    let t_back = t_refused + REFUSED;
    // People press "start again" once more (no-op: the jobs are queued) and the API retries.
    for job in [a2, a3] {
        let before = t.gw().store.job(job).expect("db").expect("job");
        if before.state != JobState::Unconfirmed {
            let r = people
                .api
                .job_action(job, "start-again")
                .await
                .expect("req");
            assert_eq!(r.status, 200);
            let after = t.gw().store.job(job).expect("db").expect("job");
            assert_eq!(after.subtask_id, before.subtask_id, "no new attempt");
        } else {
            people.start_again(&t, job).await;
        }
    }
    for (key, model, printer, id) in [("a1", Model::P1S, P1, a1), ("b1", Model::P1S, P1, b1)] {
        let r = people.upload(model, printer, key).await;
        assert_eq!((r.status, r.job_id()), (200, Some(id)), "{r:?}");
    }
    // Fresh taps after the reconnect start exactly the head job of each printer.
    for printer in [P1, P2, P3] {
        people.tap(printer).await;
    }
    let done = [JobState::Printing, JobState::Finished];
    t.wait_job_in(b1, &done).await;
    t.wait_job_in(a2, &done).await;
    t.wait_job_in(a3, &done).await;
    for id in [b1, a2, a3] {
        t.wait_job(id, JobState::Finished).await;
    }

    // ---- The audit -------------------------------------------------------------------------
    let names = [P1, P2, P3];
    let mut starts = Vec::new();
    for (i, s) in t.sims.iter().enumerate() {
        let log = s.command_log();
        // Nothing at all arrived while the printers refused connections.
        for c in &log {
            assert!(
                !(c.at >= t_refused && c.at < t_back),
                "{}: {:?} arrived while the printer was unreachable",
                names[i],
                c.command
            );
            // Nothing arrived on a frozen connection after it froze, and no start on it at all
            // after the half-open began.
            if c.at > t_half_open && frozen_conns[i].contains(&c.conn_id) {
                assert!(
                    !c.is_project_file(),
                    "{}: a start was delivered on the frozen connection",
                    names[i]
                );
            }
            if c.is_project_file() {
                assert!(
                    c.at < t_half_open || c.at >= t_back,
                    "{}: start delivered during the outage",
                    names[i]
                );
            }
        }
        starts.extend(delivered_starts(names[i], &log));
    }
    let audit = audit_starts(
        &t.db_path(),
        &starts,
        &AuditRules {
            start_window_ms: window_ms,
            plate_clear_ttl_ms: ttl_ms,
            clock_tolerance_ms: 20,
            previous_subtask_ids: people.previous_subtasks.clone(),
            person_taps: Some(people.taps.clone()),
        },
    );
    assert!(
        audit.violations.is_empty(),
        "violations: {:#?}",
        audit.violations
    );
    for (printer, subtask, job, tap) in &audit.authorised {
        println!("{printer}: subtask {subtask} = job {job}, authorised by {tap}");
    }
    let started_jobs: Vec<(String, JobId)> = audit
        .authorised
        .iter()
        .map(|(p, _, j, _)| (p.clone(), *j))
        .collect();
    assert_eq!(
        started_jobs,
        vec![
            (P1.to_string(), a1),
            (P1.to_string(), b1),
            (P2.to_string(), a2),
            (P3.to_string(), a3),
        ],
        "exactly one start per job that a person asked for"
    );
    // The start published into the frozen connection never arrived, not even after the
    // reconnect; the job started only under its new subtask id after a fresh tap.
    assert!(
        starts.iter().all(|s| s.subtask_id != a2_old_subtask),
        "the start sent into the half-open link was delivered"
    );
    // Jobs created by retries with new keys are queued, never started without their own tap.
    assert_eq!(new_key_jobs.len(), 2);
    for id in &new_key_jobs {
        let st = job_state(&t, *id);
        assert!(
            matches!(st, JobState::Queued | JobState::Staged),
            "job {id} is {st:?}"
        );
    }
    // The audit is not vacuous: the same starts, tampered with, are flagged.
    let mut tampered = starts.clone();
    if let Some(first) = starts.first() {
        tampered.push(first.clone()); // delivered twice
        let mut late = first.clone();
        late.subtask_id = a2_old_subtask; // a start nobody authorised after start again
        late.unix_ms += window_ms * 2;
        tampered.push(late);
        let mut stray = first.clone();
        stray.subtask_id = 7; // no such job
        tampered.push(stray);
    }
    let flagged = audit_starts(
        &t.db_path(),
        &tampered,
        &AuditRules {
            start_window_ms: window_ms,
            plate_clear_ttl_ms: ttl_ms,
            clock_tolerance_ms: 20,
            previous_subtask_ids: people.previous_subtasks.clone(),
            person_taps: Some(people.taps.clone()),
        },
    );
    for expected in [
        "started twice",
        "delivered twice",
        "after its start window",
        "belongs to no job",
    ] {
        assert!(
            flagged.violations.iter().any(|v| v.contains(expected)),
            "the audit misses {expected:?}: {:#?}",
            flagged.violations
        );
    }
    // One job per idempotency key.
    let rows = people.api.jobs().await.expect("jobs");
    let listed: Vec<i64> = rows
        .body
        .as_array()
        .expect("job list")
        .iter()
        .filter_map(|j| j.get("id").and_then(|v| v.as_i64()))
        .collect();
    assert!(!listed.contains(&a1), "the finished job is not re-queued");
    t.shutdown().await;
}
