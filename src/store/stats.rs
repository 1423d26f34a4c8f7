//! Counts for the metrics endpoint, read from the audit tables (job events, plate taps, safety
//! trips) and the queue: totals since the database was created, so they survive restarts the
//! way Prometheus counters should. Read-only.

use super::{Store, StoreError};
use std::collections::BTreeMap;

/// One scrape's worth of counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricCounts {
    /// (printer, outcome) → starts; outcome is `confirmed`, `unconfirmed` or `refused`.
    pub starts: BTreeMap<(String, &'static str), u64>,
    /// (printer, result) → plate-clear taps; result is `accepted` or `refused`.
    pub taps: BTreeMap<(String, &'static str), u64>,
    /// Safety trips by cause kind (smoke, thermal_runaway, …).
    pub trips: BTreeMap<String, u64>,
    /// Jobs by state (`queued`, `printing`, …), only states that have jobs.
    pub jobs: BTreeMap<String, u64>,
    /// `created_at` (ms since the epoch) of the oldest job still waiting (queued or staged).
    pub oldest_waiting_ms: Option<i64>,
}

impl Store {
    /// Every count the metrics endpoint shows (a few small aggregate queries).
    pub fn metric_counts(&self) -> Result<MetricCounts, StoreError> {
        let conn = self.conn();
        let mut out = MetricCounts::default();
        // A start is confirmed when the job reached `printing` straight after its publish,
        // unconfirmed when it was marked so, refused when it failed straight after the publish.
        let mut st = conn.prepare(
            "SELECT COALESCE(e.printer, ''), e.what, COUNT(*) FROM job_events e
             WHERE e.what = 'unconfirmed'
                OR (e.what IN ('printing', 'failed') AND (
                    SELECT p.what FROM job_events p
                    WHERE p.job_id = e.job_id AND p.id < e.id
                      AND p.what IN ('published', 'printing', 'unconfirmed')
                    ORDER BY p.id DESC LIMIT 1) = 'published')
             GROUP BY 1, 2",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (printer, what, n) = row?;
            let outcome = match what.as_str() {
                "printing" => "confirmed",
                "unconfirmed" => "unconfirmed",
                _ => "refused",
            };
            *out.starts.entry((printer, outcome)).or_default() += n.max(0) as u64;
        }
        let mut st = conn.prepare(
            "SELECT printer, COALESCE(void_reason LIKE 'not accepted:%', 0), COUNT(*)
             FROM plate_taps GROUP BY 1, 2",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (printer, refused, n) = row?;
            let result = if refused { "refused" } else { "accepted" };
            *out.taps.entry((printer, result)).or_default() += n.max(0) as u64;
        }
        let mut st = conn.prepare("SELECT cause_kind, COUNT(*) FROM safety_trips GROUP BY 1")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (cause, n) = row?;
            out.trips.insert(cause, n.max(0) as u64);
        }
        let mut st = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY 1")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (state, n) = row?;
            out.jobs.insert(state, n.max(0) as u64);
        }
        out.oldest_waiting_ms = conn.query_row(
            "SELECT MIN(created_at_ms) FROM jobs WHERE state IN ('queued', 'staged')",
            [],
            |r| r.get::<_, Option<i64>>(0),
        )?;
        Ok(out)
    }
}
