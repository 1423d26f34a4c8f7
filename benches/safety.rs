//! `cargo bench --bench safety`: smoke edge → relay written latency on the simulated GPIO
//! (10,000 edges), the bare `trip()` call, and the thermal watchdog's cost per report. The same
//! helpers back `printgate bench safety`.

use printgate::safety::bench::{bench_edge_to_relay, bench_trip_call, bench_watchdog_observe};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let edges = bench_edge_to_relay(10_000)?;
    println!("edge → relay written (SimGpio, 0 ms debounce, input thread + trip): {edges}");
    let direct = bench_trip_call(10_000)?;
    println!("trip() call → relay written:                                    {direct}");
    let ns = bench_watchdog_observe(3_000_000);
    println!("ThermalWatchdog::observe: {ns:.1} ns/report");
    Ok(())
}
