//! Styler metrics: per-shard blocks of atomics, each written only by its own shard, summed when rendered.
//!
//! A shard bumps its counters with relaxed atomic adds on its own cache lines, so the hot path never contends with
//! other shards; [`SharedMetrics::render`] reads every block (from any thread) and writes Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a message was delivered with the local rewrite instead of a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// No endpoints are configured: the local rewriter is the styler.
    Disabled,
    /// The room's style is unknown; the text is delivered sanitised.
    UnknownStyle,
    /// Nothing of the message is left after sanitising.
    EmptyText,
    /// The prompt would exceed `prompt_bytes_max`.
    TooLong,
    /// Admission control refused the message: the cluster cannot finish it inside the deadline.
    Overload,
    /// Every endpoint's circuit breaker is open.
    Unavailable,
    /// The completion did not arrive inside the deadline.
    Deadline,
    /// The request failed (connection, HTTP status, malformed response).
    Error,
    /// The completion was empty or noise after sanitising.
    Garbage,
    /// The quality gate turned the completion away: it added nothing to the message.
    Echo,
    /// The quality gate turned the completion away: it repeated the prompt.
    PromptLeak,
    /// The quality gate turned the completion away: it kept none of the message's content words, or rambled.
    OffTopic,
    /// The quality gate turned the completion away: it did not read as the room's style.
    OffStyle,
    /// A protected word (an emote code) of the message was missing, altered or repeated in the completion, or the
    /// completion had one of its own; or the message had protected words and text that reads as a placeholder, so
    /// it could not be sent with placeholders. Unlike the quality gate this check is always on: the engine's
    /// `emotes` tag depends on it.
    Emotes,
    /// The message is protected words alone: nothing to style, so it is delivered as it is, sanitised, without
    /// asking the model.
    EmoteOnly,
}

/// How many fallback reasons there are.
const FALLBACK_REASONS: usize = 15;

impl FallbackReason {
    pub const ALL: [FallbackReason; FALLBACK_REASONS] = [
        FallbackReason::Disabled,
        FallbackReason::UnknownStyle,
        FallbackReason::EmptyText,
        FallbackReason::TooLong,
        FallbackReason::Overload,
        FallbackReason::Unavailable,
        FallbackReason::Deadline,
        FallbackReason::Error,
        FallbackReason::Garbage,
        FallbackReason::Echo,
        FallbackReason::PromptLeak,
        FallbackReason::OffTopic,
        FallbackReason::OffStyle,
        FallbackReason::Emotes,
        FallbackReason::EmoteOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Disabled => "disabled",
            FallbackReason::UnknownStyle => "unknown_style",
            FallbackReason::EmptyText => "empty_text",
            FallbackReason::TooLong => "too_long",
            FallbackReason::Overload => "overload",
            FallbackReason::Unavailable => "unavailable",
            FallbackReason::Deadline => "deadline",
            FallbackReason::Error => "error",
            FallbackReason::Garbage => "garbage",
            FallbackReason::Echo => "echo",
            FallbackReason::PromptLeak => "prompt_leak",
            FallbackReason::OffTopic => "off_topic",
            FallbackReason::OffStyle => "off_style",
            FallbackReason::Emotes => "emotes",
            FallbackReason::EmoteOnly => "emote_only",
        }
    }

    /// The reason the quality gate's rejection is counted under.
    pub fn from_rejection(rejection: crate::gate::Rejection) -> Self {
        match rejection {
            crate::gate::Rejection::Echo => FallbackReason::Echo,
            crate::gate::Rejection::PromptLeak => FallbackReason::PromptLeak,
            crate::gate::Rejection::OffTopic => FallbackReason::OffTopic,
            crate::gate::Rejection::OffStyle => FallbackReason::OffStyle,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds of the batch size histogram, in prompts.
pub(crate) const BATCH_PROMPTS_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Upper bounds of the endpoint latency histogram, in microseconds.
pub(crate) const LATENCY_US_BUCKETS: [u64; 12] = [
    5_000, 10_000, 20_000, 40_000, 60_000, 80_000, 100_000, 150_000, 200_000, 400_000, 1_000_000,
    5_000_000,
];

/// A fixed-bucket histogram written by one shard.
#[derive(Debug)]
pub(crate) struct LocalHistogram<const N: usize> {
    bounds: &'static [u64; N],
    /// Non-cumulative counts; the last slot is the `+Inf` overflow.
    counts: [AtomicU64; 13],
    sum: AtomicU64,
}

impl<const N: usize> LocalHistogram<N> {
    fn new(bounds: &'static [u64; N]) -> Self {
        assert!(N < 13, "histogram bucket table too large");
        LocalHistogram {
            bounds,
            counts: Default::default(),
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, value: u64) {
        let slot = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(N);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    fn add_into(&self, totals: &mut [u64; 13], sum: &mut u64) {
        for (total, count) in totals.iter_mut().zip(&self.counts) {
            *total += count.load(Ordering::Relaxed);
        }
        *sum += self.sum.load(Ordering::Relaxed);
    }
}

/// One endpoint as one shard sees it.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    pub latency_us: LocalHistogram<12>,
    /// 1 when this shard's breaker lets requests through to the endpoint, 0 when it is open.
    pub healthy: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
}

/// The metrics block of one shard.
#[derive(Debug)]
pub(crate) struct ShardMetrics {
    pub shard: usize,
    pub requests_llm: AtomicU64,
    pub requests_local: AtomicU64,
    fallbacks: [AtomicU64; FALLBACK_REASONS],
    pub cache_hits: AtomicU64,
    /// Completions that arrived after their message had been delivered locally.
    pub late_completions: AtomicU64,
    pub batch_prompts: LocalHistogram<9>,
    /// The admission limit on outstanding prompts this shard currently applies.
    pub admission_limit: AtomicU64,
    pub endpoints: Vec<EndpointMetrics>,
}

impl ShardMetrics {
    fn new(shard: usize, endpoint_count: usize) -> Self {
        ShardMetrics {
            shard,
            requests_llm: AtomicU64::new(0),
            requests_local: AtomicU64::new(0),
            fallbacks: Default::default(),
            cache_hits: AtomicU64::new(0),
            late_completions: AtomicU64::new(0),
            batch_prompts: LocalHistogram::new(&BATCH_PROMPTS_BUCKETS),
            admission_limit: AtomicU64::new(0),
            endpoints: (0..endpoint_count)
                .map(|_| EndpointMetrics {
                    latency_us: LocalHistogram::new(&LATENCY_US_BUCKETS),
                    healthy: AtomicU64::new(1),
                    errors: AtomicU64::new(0),
                    timeouts: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    pub(crate) fn fallback(&self, reason: FallbackReason) {
        self.fallbacks[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.requests_local.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn llm(&self) {
        self.requests_llm.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fallbacks(&self, reason: FallbackReason) -> u64 {
        self.fallbacks[reason.index()].load(Ordering::Relaxed)
    }
}

/// The metrics of every shard, shared by the factory and the shards.
#[derive(Debug)]
pub(crate) struct SharedMetrics {
    endpoints: Vec<String>,
    /// Registration happens once per shard at start; the hot path holds its own `Arc` and never takes this lock.
    shards: Mutex<Vec<Arc<ShardMetrics>>>,
}

impl SharedMetrics {
    pub(crate) fn new(endpoints: Vec<String>) -> Self {
        SharedMetrics {
            endpoints,
            shards: Mutex::new(Vec::new()),
        }
    }

    /// The block of `shard`, created on first use; a shard that restarts keeps counting where it left off.
    pub(crate) fn register(&self, shard: usize) -> Arc<ShardMetrics> {
        let mut shards = self
            .shards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = shards.iter().find(|block| block.shard == shard) {
            return Arc::clone(existing);
        }
        let block = Arc::new(ShardMetrics::new(shard, self.endpoints.len()));
        shards.push(Arc::clone(&block));
        block
    }

    fn snapshot(&self) -> Vec<Arc<ShardMetrics>> {
        let mut shards = self
            .shards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        shards.sort_by_key(|block| block.shard);
        shards
    }

    /// Sums of the main counters, for tests and benchmarks.
    pub(crate) fn totals(&self) -> MetricsTotals {
        let mut totals = MetricsTotals::default();
        for block in self.snapshot() {
            totals.llm += block.requests_llm.load(Ordering::Relaxed);
            totals.local += block.requests_local.load(Ordering::Relaxed);
            totals.cache_hits += block.cache_hits.load(Ordering::Relaxed);
            totals.late_completions += block.late_completions.load(Ordering::Relaxed);
            for (slot, reason) in FallbackReason::ALL.iter().enumerate() {
                totals.fallbacks[slot] += block.fallbacks(*reason);
            }
            let mut counts = [0u64; 13];
            let mut sum = 0;
            block.batch_prompts.add_into(&mut counts, &mut sum);
            totals.batches += counts.iter().sum::<u64>();
            totals.batched_prompts += sum;
        }
        totals
    }

    /// Prometheus text exposition of all shards.
    pub(crate) fn render(&self) -> String {
        let shards = self.snapshot();
        let mut out = String::with_capacity(4096);
        let sum = |read: &dyn Fn(&ShardMetrics) -> u64| {
            shards.iter().map(|block| read(block)).sum::<u64>()
        };

        let llm = sum(&|block| block.requests_llm.load(Ordering::Relaxed));
        let local = sum(&|block| block.requests_local.load(Ordering::Relaxed));
        out.push_str(
            "# HELP twitchy_styler_requests_total Styled messages by who produced the text.\n",
        );
        out.push_str("# TYPE twitchy_styler_requests_total counter\n");
        let _ = writeln!(out, "twitchy_styler_requests_total{{by=\"llm\"}} {llm}");
        let _ = writeln!(out, "twitchy_styler_requests_total{{by=\"local\"}} {local}");

        out.push_str("# HELP twitchy_styler_llm_share Share of styled messages produced by the LLM since start.\n");
        out.push_str("# TYPE twitchy_styler_llm_share gauge\n");
        let share = if llm + local == 0 {
            0.0
        } else {
            llm as f64 / (llm + local) as f64
        };
        let _ = writeln!(out, "twitchy_styler_llm_share {share}");

        out.push_str("# HELP twitchy_styler_fallbacks_total Messages delivered with the local rewrite, by reason.\n");
        out.push_str("# TYPE twitchy_styler_fallbacks_total counter\n");
        for reason in FallbackReason::ALL {
            let count = sum(&|block| block.fallbacks(reason));
            let _ = writeln!(
                out,
                "twitchy_styler_fallbacks_total{{reason=\"{}\"}} {count}",
                reason.as_str()
            );
        }

        out.push_str(
            "# HELP twitchy_styler_cache_hits_total Messages answered from the completion cache.\n",
        );
        out.push_str("# TYPE twitchy_styler_cache_hits_total counter\n");
        let _ = writeln!(
            out,
            "twitchy_styler_cache_hits_total {}",
            sum(&|block| block.cache_hits.load(Ordering::Relaxed))
        );

        out.push_str("# HELP twitchy_styler_late_completions_total Completions that arrived after their deadline.\n");
        out.push_str("# TYPE twitchy_styler_late_completions_total counter\n");
        let _ = writeln!(
            out,
            "twitchy_styler_late_completions_total {}",
            sum(&|block| block.late_completions.load(Ordering::Relaxed))
        );

        out.push_str(
            "# HELP twitchy_styler_batch_prompts Prompts per batch sent to an endpoint.\n",
        );
        out.push_str("# TYPE twitchy_styler_batch_prompts histogram\n");
        let mut counts = [0u64; 13];
        let mut total = 0u64;
        for block in &shards {
            block.batch_prompts.add_into(&mut counts, &mut total);
        }
        render_buckets(
            &mut out,
            "twitchy_styler_batch_prompts",
            "",
            &BATCH_PROMPTS_BUCKETS,
            &counts,
            1.0,
        );
        let _ = writeln!(out, "twitchy_styler_batch_prompts_sum {total}");

        out.push_str(
            "# HELP twitchy_styler_endpoint_latency_seconds Request latency per endpoint.\n",
        );
        out.push_str("# TYPE twitchy_styler_endpoint_latency_seconds histogram\n");
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let mut counts = [0u64; 13];
            let mut sum_us = 0u64;
            for block in &shards {
                block.endpoints[index]
                    .latency_us
                    .add_into(&mut counts, &mut sum_us);
            }
            let label = format!("endpoint=\"{}\"", escape_label(endpoint));
            render_buckets(
                &mut out,
                "twitchy_styler_endpoint_latency_seconds",
                &label,
                &LATENCY_US_BUCKETS,
                &counts,
                1e-6,
            );
            let _ = writeln!(
                out,
                "twitchy_styler_endpoint_latency_seconds_sum{{{label}}} {}",
                sum_us as f64 * 1e-6
            );
        }

        out.push_str(
            "# HELP twitchy_styler_endpoint_errors_total Failed requests per endpoint, by kind.\n",
        );
        out.push_str("# TYPE twitchy_styler_endpoint_errors_total counter\n");
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let label = escape_label(endpoint);
            let errors = sum(&|block| block.endpoints[index].errors.load(Ordering::Relaxed));
            let timeouts = sum(&|block| block.endpoints[index].timeouts.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "twitchy_styler_endpoint_errors_total{{endpoint=\"{label}\",kind=\"error\"}} {errors}"
            );
            let _ = writeln!(
                out,
                "twitchy_styler_endpoint_errors_total{{endpoint=\"{label}\",kind=\"timeout\"}} {timeouts}"
            );
        }

        out.push_str("# HELP twitchy_styler_endpoint_healthy 1 when the shard's circuit breaker admits the endpoint.\n");
        out.push_str("# TYPE twitchy_styler_endpoint_healthy gauge\n");
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let label = escape_label(endpoint);
            for block in &shards {
                let healthy = block.endpoints[index].healthy.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "twitchy_styler_endpoint_healthy{{endpoint=\"{label}\",shard=\"{}\"}} {healthy}",
                    block.shard
                );
            }
        }

        out.push_str(
            "# HELP twitchy_styler_admission_limit_prompts Outstanding prompts a shard admits.\n",
        );
        out.push_str("# TYPE twitchy_styler_admission_limit_prompts gauge\n");
        for block in &shards {
            let _ = writeln!(
                out,
                "twitchy_styler_admission_limit_prompts{{shard=\"{}\"}} {}",
                block.shard,
                block.admission_limit.load(Ordering::Relaxed)
            );
        }
        out
    }
}

fn render_buckets(
    out: &mut String,
    name: &str,
    label: &str,
    bounds: &[u64],
    counts: &[u64; 13],
    scale: f64,
) {
    let separator = if label.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (slot, bound) in bounds.iter().enumerate() {
        cumulative += counts[slot];
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}{separator}le=\"{}\"}} {cumulative}",
            *bound as f64 * scale
        );
    }
    cumulative += counts[bounds.len()];
    let _ = writeln!(
        out,
        "{name}_bucket{{{label}{separator}le=\"+Inf\"}} {cumulative}"
    );
    if label.is_empty() {
        let _ = writeln!(out, "{name}_count {cumulative}");
    } else {
        let _ = writeln!(out, "{name}_count{{{label}}} {cumulative}");
    }
}

/// Escapes a Prometheus label value.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Sums of the main counters across shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsTotals {
    pub llm: u64,
    pub local: u64,
    pub cache_hits: u64,
    pub late_completions: u64,
    /// Indexed like [`FallbackReason::ALL`].
    pub fallbacks: [u64; FALLBACK_REASONS],
    pub batches: u64,
    pub batched_prompts: u64,
}

impl MetricsTotals {
    pub fn fallback(&self, reason: FallbackReason) -> u64 {
        self.fallbacks[reason.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_sums_shards() {
        let metrics = SharedMetrics::new(vec!["http://a:1".into()]);
        let zero = metrics.register(0);
        let one = metrics.register(1);
        assert!(Arc::ptr_eq(&zero, &metrics.register(0)));
        zero.llm();
        one.llm();
        one.fallback(FallbackReason::Deadline);
        zero.batch_prompts.observe(3);
        one.batch_prompts.observe(300);
        zero.endpoints[0].latency_us.observe(30_000);
        one.endpoints[0].healthy.store(0, Ordering::Relaxed);
        let text = metrics.render();
        assert!(
            text.contains("twitchy_styler_requests_total{by=\"llm\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("twitchy_styler_requests_total{by=\"local\"} 1\n"));
        assert!(text.contains("twitchy_styler_fallbacks_total{reason=\"deadline\"} 1\n"));
        assert!(text.contains("twitchy_styler_batch_prompts_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("twitchy_styler_batch_prompts_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("twitchy_styler_batch_prompts_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("twitchy_styler_batch_prompts_sum 303\n"));
        assert!(text.contains("twitchy_styler_endpoint_latency_seconds_bucket{endpoint=\"http://a:1\",le=\"0.04\"} 1\n"));
        assert!(
            text.contains(
                "twitchy_styler_endpoint_healthy{endpoint=\"http://a:1\",shard=\"0\"} 1\n"
            )
        );
        assert!(
            text.contains(
                "twitchy_styler_endpoint_healthy{endpoint=\"http://a:1\",shard=\"1\"} 0\n"
            )
        );
        let totals = metrics.totals();
        assert_eq!(totals.llm, 2);
        assert_eq!(totals.fallback(FallbackReason::Deadline), 1);
        assert_eq!(totals.batches, 2);
    }

    #[test]
    fn every_fallback_reason_has_its_own_slot_and_label() {
        // The counters are indexed by discriminant: `ALL` must list the reasons in declaration order.
        for (slot, reason) in FallbackReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), slot, "{reason:?}");
        }
        let labels: std::collections::HashSet<&str> = FallbackReason::ALL
            .iter()
            .map(|reason| reason.as_str())
            .collect();
        assert_eq!(labels.len(), FALLBACK_REASONS);
        let metrics = SharedMetrics::new(Vec::new());
        let shard = metrics.register(0);
        shard.fallback(FallbackReason::Emotes);
        shard.fallback(FallbackReason::Emotes);
        shard.fallback(FallbackReason::EmoteOnly);
        let text = metrics.render();
        assert!(
            text.contains("twitchy_styler_fallbacks_total{reason=\"emotes\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("twitchy_styler_fallbacks_total{reason=\"emote_only\"} 1\n"),
            "{text}"
        );
        assert_eq!(metrics.totals().fallback(FallbackReason::Emotes), 2);
    }
}
