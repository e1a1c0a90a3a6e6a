//! Writer metrics: plain atomics updated by the writer thread and rendered as Prometheus text on demand.
//!
//! Histograms use fixed bucket bounds so that recording is a handful of relaxed atomic adds and no allocation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::Health;

/// Upper bounds of the batch size histogram, in messages.
const BATCH_MESSAGES_BOUNDS: [u64; 14] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
];

/// Upper bounds of the batch write+fsync latency histogram, in microseconds (rendered in seconds).
pub(crate) const BATCH_LATENCY_US_BOUNDS: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 512_000,
    2_000_000,
];

/// A cumulative-on-render histogram with fixed bounds.
#[derive(Debug)]
pub(crate) struct Histogram<const N: usize> {
    bounds: [u64; N],
    /// One slot per bound plus the overflow (`+Inf`) slot.
    counts: [AtomicU64; 16],
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub(crate) fn new(bounds: [u64; N]) -> Self {
        assert!(N < 16, "histogram has more bounds than slots");
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, value: u64) {
        let slot = self.bounds.iter().position(|&b| value <= b).unwrap_or(N);
        self.counts[slot].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines; the recorded unit divided by `divisor` is the
    /// exposed one. Dividing (rather than multiplying by a fraction) keeps bounds such as `0.00005` exact in the text.
    pub(crate) fn render(&self, out: &mut String, name: &str, divisor: f64) {
        let mut cumulative = 0u64;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / divisor
            );
        }
        cumulative += self.counts[N].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum.load(Relaxed) as f64 / divisor
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Counters shared between the writer thread (which updates them) and handles (which render them).
#[derive(Debug)]
pub(crate) struct WriterMetrics {
    batches_total: AtomicU64,
    messages_total: AtomicU64,
    errors_total: AtomicU64,
    busy_rejections_total: AtomicU64,
    unavailable_rejections_total: AtomicU64,
    batch_messages: Histogram<14>,
    batch_latency_us: Histogram<14>,
    /// How long the oldest message of each batch waited in the queue before the batch was handed to the store.
    batch_queue_wait_us: Histogram<14>,
    /// Per message: from `append` to its acknowledgement being completed, for acknowledged messages.
    ack_us: Histogram<14>,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            batches_total: AtomicU64::new(0),
            messages_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            busy_rejections_total: AtomicU64::new(0),
            unavailable_rejections_total: AtomicU64::new(0),
            batch_messages: Histogram::new(BATCH_MESSAGES_BOUNDS),
            batch_latency_us: Histogram::new(BATCH_LATENCY_US_BOUNDS),
            batch_queue_wait_us: Histogram::new(BATCH_LATENCY_US_BOUNDS),
            ack_us: Histogram::new(BATCH_LATENCY_US_BOUNDS),
        }
    }
}

impl WriterMetrics {
    /// Records one durable batch.
    pub(crate) fn record_batch(&self, messages: usize, latency_us: u64) {
        self.batches_total.fetch_add(1, Relaxed);
        self.messages_total.fetch_add(messages as u64, Relaxed);
        self.batch_messages.record(messages as u64);
        self.batch_latency_us.record(latency_us);
    }

    /// Records one failed batch (or a failed request on the read side).
    pub(crate) fn record_error(&self) {
        self.errors_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_busy(&self) {
        self.busy_rejections_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_unavailable(&self) {
        self.unavailable_rejections_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_ack(&self, latency_us: u64) {
        self.ack_us.record(latency_us);
    }

    pub(crate) fn record_queue_wait(&self, wait_us: u64) {
        self.batch_queue_wait_us.record(wait_us);
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub(crate) fn render(
        &self,
        queue_depth: usize,
        pool_depths: &[(&str, usize)],
        health: &Health,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let counters = [
            (
                "twitchy_storage_batches_total",
                "Durable message batches written.",
                &self.batches_total,
            ),
            (
                "twitchy_storage_messages_total",
                "Messages made durable and acknowledged.",
                &self.messages_total,
            ),
            (
                "twitchy_storage_errors_total",
                "Failed store operations.",
                &self.errors_total,
            ),
            (
                "twitchy_storage_busy_rejections_total",
                "Requests rejected because their queue was full.",
                &self.busy_rejections_total,
            ),
            (
                "twitchy_storage_unavailable_rejections_total",
                "Appends refused at once because the store was failing.",
                &self.unavailable_rejections_total,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let name = "twitchy_storage_batch_messages";
        let _ = writeln!(
            out,
            "# HELP {name} Messages per durable batch.\n# TYPE {name} histogram"
        );
        self.batch_messages.render(&mut out, name, 1.0);
        let name = "twitchy_storage_batch_write_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to write and fsync one batch.\n# TYPE {name} histogram"
        );
        self.batch_latency_us.render(&mut out, name, 1e6);
        let name = "twitchy_storage_batch_queue_wait_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time the oldest message of a batch waited for the writer.\n# TYPE {name} histogram"
        );
        self.batch_queue_wait_us.render(&mut out, name, 1e6);
        let name = "twitchy_storage_ack_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Per acknowledged message, from append to acknowledgement.\n# TYPE {name} histogram"
        );
        self.ack_us.render(&mut out, name, 1e6);
        let name = "twitchy_storage_queue_depth";
        let _ = writeln!(
            out,
            "# HELP {name} Messages waiting for the writer.\n# TYPE {name} gauge\n{name} {queue_depth}"
        );
        let name = "twitchy_storage_request_queue_depth";
        let _ = writeln!(
            out,
            "# HELP {name} Requests waiting for a thread, per pool.\n# TYPE {name} gauge"
        );
        for (pool, depth) in pool_depths {
            let _ = writeln!(out, "{name}{{pool=\"{pool}\"}} {depth}");
        }
        let name = "twitchy_storage_healthy";
        let (value, state) = match health {
            Health::Healthy => (1, "healthy"),
            Health::Unavailable(_) => (0, "unavailable"),
            Health::Failed(_) => (0, "failed"),
        };
        let _ = writeln!(
            out,
            "# HELP {name} 1 when the store takes writes, 0 when it is failing (see the state label and /healthz).\n\
             # TYPE {name} gauge\n{name}{{state=\"{state}\"}} {value}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_render() {
        let m = WriterMetrics::default();
        m.record_batch(1, 40);
        m.record_batch(3, 700);
        m.record_batch(10_000, 3_000_000);
        m.record_error();
        m.record_busy();
        m.record_busy();
        m.record_unavailable();
        m.record_queue_wait(300);
        m.record_ack(3_000);
        let text = m.render(5, &[("auth", 2)], &Health::Unavailable("disk full".into()));
        assert!(text.contains("twitchy_storage_batches_total 3\n"), "{text}");
        assert!(text.contains("twitchy_storage_messages_total 10004\n"));
        assert!(text.contains("twitchy_storage_errors_total 1\n"));
        assert!(text.contains("twitchy_storage_busy_rejections_total 2\n"));
        assert!(text.contains("twitchy_storage_batch_messages_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("twitchy_storage_batch_messages_bucket{le=\"4\"} 2\n"));
        assert!(text.contains("twitchy_storage_batch_messages_bucket{le=\"8192\"} 2\n"));
        assert!(text.contains("twitchy_storage_batch_messages_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("twitchy_storage_batch_messages_count 3\n"));
        assert!(
            text.contains("twitchy_storage_batch_write_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("twitchy_storage_batch_write_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("twitchy_storage_queue_depth 5\n"));
        assert!(text.contains("twitchy_storage_unavailable_rejections_total 1\n"));
        assert!(text.contains("twitchy_storage_ack_seconds_bucket{le=\"0.004\"} 1\n"));
        assert!(text.contains("twitchy_storage_ack_seconds_count 1\n"));
        assert!(
            text.contains("twitchy_storage_batch_queue_wait_seconds_bucket{le=\"0.0005\"} 1\n")
        );
        assert!(text.contains("twitchy_storage_request_queue_depth{pool=\"auth\"} 2\n"));
        assert!(
            text.contains("twitchy_storage_healthy{state=\"unavailable\"} 0\n"),
            "{text}"
        );
        let healthy = m.render(0, &[], &Health::Healthy);
        assert!(healthy.contains("twitchy_storage_healthy{state=\"healthy\"} 1\n"));
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
