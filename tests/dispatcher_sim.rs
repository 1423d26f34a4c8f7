//! The dispatcher's invariants over thousands of seeded random schedules, and proof that the
//! checker is not blind (deliberately broken dispatcher output is caught).

use printgate::jobs::simulation::{
    Mutation, SimOptions, run_simulation, run_simulation_with, simulate_cli,
};

fn seeds_from_env(default: u64) -> u64 {
    std::env::var("PRINTGATE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn thousands_of_schedules_keep_every_invariant() {
    let seeds = seeds_from_env(2_000);
    let summary = run_simulation(seeds, 1);
    for (seed, what) in summary.failures.iter().take(5) {
        eprintln!("seed {seed}: {what}\n  replay: printgate simulate --seeds 1 --seed {seed}");
    }
    eprintln!("{:?}", summary.stats);
    assert_eq!(summary.schedules, seeds);
    assert_eq!(
        summary.violations,
        0,
        "first failures: {:?}",
        &summary.failures[..summary.failures.len().min(5)]
    );
    // The schedules really exercise starts, confirmations, doubts and refusals.
    let st = &summary.stats;
    assert!(st.publishes_sent > seeds / 4, "{st:?}");
    assert!(st.confirmed > seeds / 8, "{st:?}");
    assert!(st.unconfirmed > 10, "{st:?}");
    assert!(st.busy_refusals > 0, "{st:?}");
    assert!(st.restarts > 10, "{st:?}");
}

fn caught(mutation: Mutation) -> u64 {
    let opts = SimOptions {
        mutation: Some(mutation),
        ..SimOptions::default()
    };
    run_simulation_with(300, 1, &opts).violations
}

#[test]
fn republishing_after_a_reconnect_is_caught() {
    assert!(caught(Mutation::RepublishAfterReconnect) > 0);
}

#[test]
fn publishing_on_a_stale_report_is_caught() {
    assert!(caught(Mutation::PublishOnStaleReport) > 0);
}

#[test]
fn forgetting_print_activity_is_caught() {
    assert!(caught(Mutation::ForgetActivity) > 0);
}

#[test]
fn requeueing_a_published_start_is_caught() {
    assert!(caught(Mutation::RequeueAfterPublish) > 0);
}

#[test]
fn the_cli_entry_point_reports_success() {
    assert_eq!(simulate_cli(20, Some(7)), 0);
    assert_eq!(simulate_cli(1, Some(3)), 0);
}
