//! What a run measures, and the serializable summary it becomes.
//!
//! The [`Recorder`] is fed explicit timestamps (microseconds since the load
//! generator's origin), so its bucketing and percentiles are tested without a
//! clock.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// Highest latency a histogram tracks; larger values are clamped to it.
pub const LATENCY_US_MAX: u64 = 600_000_000;

/// Longest run the per-second timeline covers (an hour, the longest valid
/// scenario, plus its drain).
pub const TIMELINE_SECONDS_MAX: usize = 3_700;

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, sigfig).expect("static histogram bounds")
}

#[derive(Debug, Clone)]
struct Second {
    sends: u64,
    deliveries: u64,
    acks: u64,
    latency: Histogram<u64>,
}

/// Counts and histograms of one run against one target.
#[derive(Debug)]
pub struct Recorder {
    start_us: u64,
    pub latency: Histogram<u64>,
    pub ack_latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    timeline: Vec<Second>,
}

impl Recorder {
    /// `start_us` is when sending begins; the timeline counts from there.
    pub fn new(start_us: u64) -> Self {
        Self {
            start_us,
            latency: histogram(3),
            ack_latency: histogram(3),
            connect: histogram(3),
            timeline: Vec::new(),
        }
    }

    pub fn set_start(&mut self, start_us: u64) {
        self.start_us = start_us;
    }

    fn second(&mut self, now_us: u64) -> &mut Second {
        let index = (now_us.saturating_sub(self.start_us) / 1_000_000) as usize;
        let index = index.min(TIMELINE_SECONDS_MAX - 1);
        while self.timeline.len() <= index {
            self.timeline.push(Second {
                sends: 0,
                deliveries: 0,
                acks: 0,
                latency: histogram(2),
            });
        }
        &mut self.timeline[index]
    }

    pub fn record_send(&mut self, now_us: u64) {
        self.second(now_us).sends += 1;
    }

    pub fn record_delivery(&mut self, now_us: u64, sent_us: u64) {
        let latency = now_us.saturating_sub(sent_us).max(1);
        self.latency.saturating_record(latency);
        let second = self.second(now_us);
        second.deliveries += 1;
        second.latency.saturating_record(latency);
    }

    pub fn record_ack(&mut self, now_us: u64, sent_us: u64) {
        self.ack_latency
            .saturating_record(now_us.saturating_sub(sent_us).max(1));
        self.second(now_us).acks += 1;
    }

    pub fn record_connect(&mut self, took_us: u64) {
        self.connect.saturating_record(took_us.max(1));
    }

    pub fn timeline(&self) -> Vec<TimelinePoint> {
        self.timeline
            .iter()
            .enumerate()
            .map(|(t, s)| TimelinePoint {
                t_s: t as u64,
                sends: s.sends,
                deliveries: s.deliveries,
                acks: s.acks,
                latency_us_p50: s.latency.value_at_quantile(0.5),
                latency_us_p99: s.latency.value_at_quantile(0.99),
                latency_us_p999: s.latency.value_at_quantile(0.999),
                latency_us_max: s.latency.max(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Percentiles drawn in the latency-distribution chart.
pub const SPECTRUM_PERCENTILES: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
];

/// `(percentile, latency_us)` pairs for the distribution chart.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    SPECTRUM_PERCENTILES
        .iter()
        .map(|&p| (p, h.value_at_percentile(p)))
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub t_s: u64,
    pub sends: u64,
    pub deliveries: u64,
    pub acks: u64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectSummary {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    /// The first few distinct failure reasons, for the report.
    pub failure_samples: Vec<String>,
    pub time: LatencySummary,
    /// Connections that finished joining per second of the connect phase.
    pub joined_per_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSummary {
    pub cpu_s: Option<f64>,
    /// The part of `cpu_s` spent in the kernel (system time).
    #[serde(default)]
    pub cpu_system_s: Option<f64>,
    pub rss_bytes_before: Option<u64>,
    pub rss_bytes_after: Option<u64>,
    /// Stall-detector lines the server logged during the run.
    pub stalls: Option<u64>,
    /// The longest stall reported, in milliseconds over the task's budget.
    pub stall_ms_max: Option<f64>,
    pub stall_samples: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetSummary {
    pub target: String,
    pub connect: ConnectSummary,
    /// Seconds spent sending (the scenario's duration as it really ran).
    pub send_s: f64,
    pub sent: u64,
    pub sends_per_s: f64,
    pub acked: u64,
    /// Messages the server refused with a NOTICE.
    pub rejected: u64,
    /// Messages neither acknowledged nor refused by the end of the drain.
    pub unacked: u64,
    /// Deliveries expected by the viewers that read at full speed and stayed
    /// connected: each accepted message times the viewers in its room.
    pub deliveries_expected: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Deliveries per second over the sending window.
    pub deliveries_per_s: f64,
    pub latency: LatencySummary,
    pub latency_spectrum: Vec<(f64, u64)>,
    pub ack_latency: LatencySummary,
    pub notices: BTreeMap<String, u64>,
    pub reconnects: u64,
    /// Connections the server closed during the run, by role.
    pub disconnected: BTreeMap<String, u64>,
    pub slow_viewer_deliveries: u64,
    /// History lines (`historical=1`) received on joining.
    pub history_lines: u64,
    /// Milliseconds the drain took until everything arrived (or its limit).
    pub drain_ms: u64,
    /// CPU seconds the load generator itself used, to tell when it, rather
    /// than the server, was the bottleneck.
    pub loadgen_cpu_s: f64,
    pub server: ServerSummary,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// The target compared.
    pub target: String,
    /// The first target of the run, which the ratios are relative to.
    pub versus: String,
    /// `versus` deliveries/s divided by `target` deliveries/s: above 1 means
    /// `versus` delivered more.
    pub deliveries_per_s: Option<f64>,
    /// `target` p99 divided by `versus` p99: above 1 means `versus` is faster.
    pub latency_p99: Option<f64>,
    pub latency_p50: Option<f64>,
    /// `target` server CPU per delivery divided by `versus`'s.
    pub server_cpu_per_delivery: Option<f64>,
}

fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0 && numerator.is_finite()).then(|| numerator / denominator)
}

impl Ratio {
    pub fn between(versus: &TargetSummary, target: &TargetSummary) -> Ratio {
        let cpu_per_delivery = |t: &TargetSummary| {
            t.server
                .cpu_s
                .filter(|_| t.deliveries > 0)
                .map(|cpu| cpu / t.deliveries as f64)
        };
        Ratio {
            target: target.target.clone(),
            versus: versus.target.clone(),
            deliveries_per_s: ratio(versus.deliveries_per_s, target.deliveries_per_s),
            latency_p99: ratio(target.latency.p99_us as f64, versus.latency.p99_us as f64),
            latency_p50: ratio(target.latency.p50_us as f64, versus.latency.p50_us as f64),
            server_cpu_per_delivery: match (cpu_per_delivery(target), cpu_per_delivery(versus)) {
                (Some(t), Some(v)) => ratio(t, v),
                _ => None,
            },
        }
    }
}

/// A ratio for people: `2.50×` when the first target did better, and
/// `0.040× (1/25)` when it did worse, so small ratios stay readable.
pub fn format_ratio(ratio: Option<f64>) -> String {
    match ratio {
        None => "n/a".into(),
        Some(v) if v >= 1.0 || v <= 0.0 => format!("{v:.2}×"),
        Some(v) => format!("{v:.3}× (1/{:.1})", 1.0 / v),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub kind: String,
    pub scenario: Scenario,
    pub started_unix_s: u64,
    pub targets: Vec<TargetSummary>,
    pub ratios: Vec<Ratio>,
}

/// Result of the idle-connection memory mode against one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryTarget {
    pub target: String,
    pub connections_requested: u64,
    pub connections_open: u64,
    pub connect_failed: u64,
    /// Where RSS was read: `/proc/<pid>/status` or `/metrics`.
    pub rss_source: String,
    pub rss_bytes_before: u64,
    pub rss_bytes_after: u64,
    pub bytes_per_connection: f64,
    /// The server's own connection gauge after opening, when it has one.
    pub server_connections_gauge: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemorySummary {
    pub kind: String,
    pub started_unix_s: u64,
    pub connections: u64,
    pub joined_room: bool,
    pub targets: Vec<MemoryTarget>,
    /// Each later target's bytes per connection divided by the first's.
    pub ratios: Vec<(String, f64)>,
}

/// Counts deliveries against what each full-speed viewer should have seen.
/// Returns `(expected, lost, duplicates)` given per-room accepted messages
/// and, per viewer, its room and live deliveries.
pub fn reconcile(accepted_per_room: &[u64], viewers: &[(usize, u64)]) -> (u64, u64, u64) {
    let mut expected = 0;
    let mut lost = 0;
    let mut duplicates = 0;
    for &(room, received) in viewers {
        let want = accepted_per_room.get(room).copied().unwrap_or(0);
        expected += want;
        lost += want.saturating_sub(received);
        duplicates += received.saturating_sub(want);
    }
    (expected, lost, duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_by_second_since_start_and_measures_latency() {
        let mut r = Recorder::new(10_000_000);
        r.record_send(10_000_000);
        r.record_delivery(10_000_500, 10_000_000);
        r.record_send(12_500_000);
        r.record_delivery(12_502_000, 12_500_000);
        r.record_ack(12_503_000, 12_500_000);
        // A delivery stamped before the start lands in the first second.
        r.record_delivery(9_000_000, 8_999_000);
        let t = r.timeline();
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].sends, t[0].deliveries), (1, 2));
        assert_eq!((t[1].sends, t[1].deliveries), (0, 0));
        assert_eq!((t[2].sends, t[2].deliveries, t[2].acks), (1, 1, 1));
        assert!((1_990..=2_010).contains(&t[2].latency_us_p50));
        let s = LatencySummary::of(&r.latency);
        assert_eq!(s.count, 3);
        assert!((999..=1_001).contains(&s.p50_us), "{s:?}");
        assert!((1_990..=2_010).contains(&s.max_us));
        assert_eq!(LatencySummary::of(&r.ack_latency).count, 1);
    }

    #[test]
    fn clamps_absurd_latencies_and_far_timestamps() {
        let mut r = Recorder::new(0);
        r.record_delivery(u64::MAX, 0);
        assert_eq!(r.latency.len(), 1);
        assert_eq!(r.timeline().len(), TIMELINE_SECONDS_MAX);
    }

    #[test]
    fn reconcile_counts_loss_and_duplicates_per_viewer() {
        let accepted = [10, 4];
        let viewers = [(0, 10), (0, 7), (1, 5), (1, 4), (5, 0)];
        assert_eq!(reconcile(&accepted, &viewers), (28, 3, 1));
    }

    #[test]
    fn formats_small_ratios_readably() {
        assert_eq!(format_ratio(Some(2.5)), "2.50×");
        assert_eq!(format_ratio(Some(0.04)), "0.040× (1/25.0)");
        assert_eq!(format_ratio(None), "n/a");
    }

    #[test]
    fn ratios_point_the_documented_way() {
        let fast = TargetSummary {
            target: "fast".into(),
            deliveries_per_s: 1000.0,
            deliveries: 1000,
            latency: LatencySummary {
                p50_us: 100,
                p99_us: 1000,
                ..Default::default()
            },
            server: ServerSummary {
                cpu_s: Some(1.0),
                ..Default::default()
            },
            ..Default::default()
        };
        let slow = TargetSummary {
            target: "slow".into(),
            deliveries_per_s: 250.0,
            deliveries: 1000,
            latency: LatencySummary {
                p50_us: 400,
                p99_us: 5000,
                ..Default::default()
            },
            server: ServerSummary {
                cpu_s: Some(3.0),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = Ratio::between(&fast, &slow);
        assert_eq!(r.deliveries_per_s, Some(4.0));
        assert_eq!(r.latency_p99, Some(5.0));
        assert_eq!(r.latency_p50, Some(4.0));
        assert_eq!(r.server_cpu_per_delivery, Some(3.0));
        let empty = TargetSummary::default();
        assert_eq!(Ratio::between(&empty, &empty).deliveries_per_s, None);
    }
}
