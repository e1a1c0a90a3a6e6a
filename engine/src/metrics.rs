//! Per-shard counters and the Prometheus text exposition.
//!
//! Each shard writes only its own [`ShardMetrics`] (relaxed atomics on its own cache lines), so counting costs no
//! cross-core traffic; `/metrics`, served by whichever shard took the request, reads all of them. Latency
//! histograms are kept the same way (one [`Histogram`] per shard, plain per-bucket counters) and summed over the
//! shards at scrape time, so recording is two relaxed adds and never a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one shard. Only the owning shard writes them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub connections: AtomicU64,
    pub connections_accepted_total: AtomicU64,
    pub connections_refused_total: AtomicU64,
    pub messages_in_total: AtomicU64,
    pub messages_rejected_total: AtomicU64,
    pub messages_sequenced_total: AtomicU64,
    pub messages_acked_total: AtomicU64,
    pub messages_out_total: AtomicU64,
    pub deliveries_total: AtomicU64,
    pub drops_total: AtomicU64,
    pub slow_disconnects_total: AtomicU64,
    pub idle_disconnects_total: AtomicU64,
    pub cross_shard_sent_total: AtomicU64,
    pub styler_fallbacks_total: AtomicU64,
    pub styled_llm_total: AtomicU64,
    pub notices_total: AtomicU64,
    pub http_requests_total: AtomicU64,
    pub store_errors_total: AtomicU64,
    pub messages_deduplicated_total: AtomicU64,
    pub messages_shed_total: AtomicU64,
    /// Sends refused by a room's rules: bans, timeouts, slow, emote-only and unique-chat modes, AutoMod blocks.
    pub messages_moderated_total: AtomicU64,
    pub automod_held_total: AtomicU64,
    pub automod_blocked_total: AtomicU64,
    pub commands_total: AtomicU64,
    pub commands_refused_total: AtomicU64,
    pub ip_refusals_total: AtomicU64,
    pub outbound_budget_drops_total: AtomicU64,
    pub protocol_disconnects_total: AtomicU64,
    pub reconnects_sent_total: AtomicU64,
    pub socket_writes_total: AtomicU64,
    pub tls_handshakes_total: AtomicU64,
    pub tls_handshake_failures_total: AtomicU64,
    /// Plain-text clients of a TLS listener, told to use TLS.
    pub tls_plain_text_total: AtomicU64,
    /// Message sequenced (its id assigned) to its line handed to a viewer's socket write.
    pub delivery_latency: Histogram,
    /// Client's PRIVMSG received to its acknowledgement handed to the socket write.
    pub ack_latency: Histogram,
    /// One styling request: asked of the styler to answered (model or local fallback).
    pub style_latency: Histogram,
}

/// Upper bounds of the latency histograms, in microseconds (rendered in seconds).
pub const LATENCY_US_BOUNDS: [u64; 14] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];
const LATENCY_SLOTS: usize = LATENCY_US_BOUNDS.len() + 1;

/// A latency histogram with the fixed bounds [`LATENCY_US_BOUNDS`]: one counter per bucket (not cumulative; the
/// exposition makes them cumulative), the sum in microseconds. Written only by its shard.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_SLOTS],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record_us(&self, value_us: u64) {
        let slot = LATENCY_US_BOUNDS
            .iter()
            .position(|&bound| value_us <= bound)
            .unwrap_or(LATENCY_US_BOUNDS.len());
        self.counts[slot].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(value_us, Relaxed);
    }

    pub fn record_ms(&self, value_ms: u64) {
        self.record_us(value_ms.saturating_mul(1000));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Writes one histogram family: the buckets, sum and count of all shards' histograms added together. The count is
/// the last cumulative bucket, so the exposition is consistent even while shards keep recording.
fn render_histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    shards: impl Iterator<Item = &'a Histogram> + Clone,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for slot in 0..LATENCY_SLOTS {
        cumulative += shards
            .clone()
            .map(|h| h.counts[slot].load(Relaxed))
            .sum::<u64>();
        match LATENCY_US_BOUNDS.get(slot) {
            Some(&bound_us) => {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{le=\"{}\"}} {cumulative}",
                    bound_us as f64 / 1e6
                );
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let sum_us: u64 = shards.map(|h| h.sum_us.load(Relaxed)).sum();
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

impl ShardMetrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

/// Viewer counts: `viewers[shard][room]`, each row written by its shard only.
#[derive(Debug)]
pub struct ViewerCounts {
    rooms: usize,
    counts: Vec<AtomicU64>,
}

impl ViewerCounts {
    pub fn new(shards: usize, rooms: usize) -> ViewerCounts {
        ViewerCounts {
            rooms,
            counts: (0..shards * rooms).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn set(&self, shard: usize, room: usize, viewers: u64) {
        self.counts[shard * self.rooms + room].store(viewers, Relaxed);
    }

    /// Viewers of a room over all shards.
    pub fn total(&self, room: usize) -> u64 {
        self.counts
            .iter()
            .skip(room)
            .step_by(self.rooms)
            .map(|c| c.load(Relaxed))
            .sum()
    }
}

/// A metric's name, type, help text and where to read it.
type Field = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> &AtomicU64,
);

/// Renders all shards' counters, plus process memory.
pub fn render(shards: &[ShardMetrics], out: &mut String) {
    let fields: [Field; 33] = [
        (
            "twitchy_tls_handshakes_total",
            "counter",
            "TLS handshakes completed (HTTPS, WSS and IRC over TLS)",
            |m| &m.tls_handshakes_total,
        ),
        (
            "twitchy_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or did not finish within --tls-handshake-timeout-ms",
            |m| &m.tls_handshake_failures_total,
        ),
        (
            "twitchy_tls_plain_text_total",
            "counter",
            "Connections to a TLS listener that spoke plain text (answered with an explanation and closed)",
            |m| &m.tls_plain_text_total,
        ),
        (
            "twitchy_outbound_budget_drops_total",
            "counter",
            "Clients dropped (slowest first, with RECONNECT) because the shard's queues together held more than --outbound-bytes-per-shard-max",
            |m| &m.outbound_budget_drops_total,
        ),
        (
            "twitchy_connections_refused_per_ip_total",
            "counter",
            "Connections refused because their address already held --connections-per-ip-max",
            |m| &m.ip_refusals_total,
        ),
        (
            "twitchy_messages_moderated_total",
            "counter",
            "Sends refused by a room's rules: bans, timeouts, slow, emote-only and unique-chat modes, AutoMod",
            |m| &m.messages_moderated_total,
        ),
        (
            "twitchy_automod_held_total",
            "counter",
            "Messages AutoMod held for the moderators to allow or deny",
            |m| &m.automod_held_total,
        ),
        (
            "twitchy_automod_blocked_total",
            "counter",
            "Messages AutoMod refused outright (rooms in block mode)",
            |m| &m.automod_blocked_total,
        ),
        (
            "twitchy_chat_commands_total",
            "counter",
            "Chat commands carried out (/timeout, /ban, /delete, /slow, /mod, /color, ...)",
            |m| &m.commands_total,
        ),
        (
            "twitchy_chat_commands_refused_total",
            "counter",
            "Chat commands refused (no permission, bad target, store unavailable)",
            |m| &m.commands_refused_total,
        ),
        (
            "twitchy_messages_deduplicated_total",
            "counter",
            "Resent messages (same user and client-nonce) acknowledged again without storing them twice",
            |m| &m.messages_deduplicated_total,
        ),
        (
            "twitchy_messages_shed_total",
            "counter",
            "Messages refused with try-again because their home shard had fallen too far behind",
            |m| &m.messages_shed_total,
        ),
        (
            "twitchy_protocol_disconnects_total",
            "counter",
            "Connections closed for breaking the WebSocket protocol",
            |m| &m.protocol_disconnects_total,
        ),
        (
            "twitchy_reconnects_sent_total",
            "counter",
            "RECONNECT lines sent to clients being dropped (too slow) or at shutdown",
            |m| &m.reconnects_sent_total,
        ),
        (
            "twitchy_socket_writes_total",
            "counter",
            "Socket writes to clients (each may carry many lines)",
            |m| &m.socket_writes_total,
        ),
        (
            "twitchy_connections",
            "gauge",
            "Open client connections",
            |m| &m.connections,
        ),
        (
            "twitchy_connections_accepted_total",
            "counter",
            "Connections accepted",
            |m| &m.connections_accepted_total,
        ),
        (
            "twitchy_connections_refused_total",
            "counter",
            "Connections refused at the limit",
            |m| &m.connections_refused_total,
        ),
        (
            "twitchy_messages_in_total",
            "counter",
            "PRIVMSGs received from clients",
            |m| &m.messages_in_total,
        ),
        (
            "twitchy_messages_rejected_total",
            "counter",
            "PRIVMSGs refused (limits, busy)",
            |m| &m.messages_rejected_total,
        ),
        (
            "twitchy_messages_sequenced_total",
            "counter",
            "Messages sequenced by their home shard",
            |m| &m.messages_sequenced_total,
        ),
        (
            "twitchy_messages_acked_total",
            "counter",
            "Messages acknowledged after being durable",
            |m| &m.messages_acked_total,
        ),
        (
            "twitchy_messages_out_total",
            "counter",
            "Chat messages fanned out by this shard (once per message)",
            |m| &m.messages_out_total,
        ),
        (
            "twitchy_deliveries_total",
            "counter",
            "Chat lines queued to viewers",
            |m| &m.deliveries_total,
        ),
        (
            "twitchy_drops_total",
            "counter",
            "Chat lines not delivered because the viewer was dropped",
            |m| &m.drops_total,
        ),
        (
            "twitchy_slow_disconnects_total",
            "counter",
            "Viewers disconnected for falling behind",
            |m| &m.slow_disconnects_total,
        ),
        (
            "twitchy_idle_disconnects_total",
            "counter",
            "Clients dropped for not answering PING",
            |m| &m.idle_disconnects_total,
        ),
        (
            "twitchy_cross_shard_sent_total",
            "counter",
            "Messages sent to other shards",
            |m| &m.cross_shard_sent_total,
        ),
        (
            "twitchy_styled_local_total",
            "counter",
            "Messages styled by the local rewriter (reasons: twitchy_styler_fallbacks_total)",
            |m| &m.styler_fallbacks_total,
        ),
        (
            "twitchy_styled_llm_total",
            "counter",
            "Messages styled by the LLM",
            |m| &m.styled_llm_total,
        ),
        (
            "twitchy_notices_total",
            "counter",
            "NOTICEs sent to clients",
            |m| &m.notices_total,
        ),
        (
            "twitchy_http_requests_total",
            "counter",
            "HTTP requests served",
            |m| &m.http_requests_total,
        ),
        (
            "twitchy_store_errors_total",
            "counter",
            "Messages whose storage failed",
            |m| &m.store_errors_total,
        ),
    ];
    for (name, kind, help, get) in fields {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(m).load(Relaxed));
        }
    }
    render_histogram(
        out,
        "twitchy_delivery_latency_seconds",
        "From a message's sequencing (id assigned) to its line handed to a viewer's socket write (millisecond clock)",
        shards.iter().map(|m| &m.delivery_latency),
    );
    render_histogram(
        out,
        "twitchy_ack_latency_seconds",
        "From a client's PRIVMSG received to its acknowledgement handed to the socket write (millisecond clock)",
        shards.iter().map(|m| &m.ack_latency),
    );
    render_histogram(
        out,
        "twitchy_style_latency_seconds",
        "One styling request, from asking the styler to its answer (model or local fallback)",
        shards.iter().map(|m| &m.style_latency),
    );
    if let Some(rss) = resident_memory_bytes() {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
        );
    }
}

/// Resident set size of this process, from `/proc/self/statm`.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_shard_and_viewer_totals_add_up() {
        let shards = [ShardMetrics::default(), ShardMetrics::default()];
        ShardMetrics::add(&shards[1].deliveries_total, 42);
        let mut out = String::new();
        render(&shards, &mut out);
        assert!(out.contains("twitchy_deliveries_total{shard=\"1\"} 42"));
        assert!(out.contains("twitchy_deliveries_total{shard=\"0\"} 0"));
        assert!(out.contains("process_resident_memory_bytes "));
        // Histograms add up over shards and are cumulative.
        assert!(out.contains("twitchy_ack_latency_seconds_count 0\n"));
        shards[0].ack_latency.record_us(300);
        shards[1].ack_latency.record_ms(3);
        shards[1].ack_latency.record_us(60_000_000);
        let mut out = String::new();
        render(&shards, &mut out);
        assert!(out.contains("# TYPE twitchy_ack_latency_seconds histogram\n"));
        assert!(out.contains("twitchy_ack_latency_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(out.contains("twitchy_ack_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(out.contains("twitchy_ack_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(out.contains("twitchy_ack_latency_seconds_bucket{le=\"10\"} 2\n"));
        assert!(out.contains("twitchy_ack_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("twitchy_ack_latency_seconds_sum 60.0033\n"));
        assert!(out.contains("twitchy_ack_latency_seconds_count 3\n"));

        let viewers = ViewerCounts::new(2, 3);
        viewers.set(0, 2, 5);
        viewers.set(1, 2, 7);
        viewers.set(1, 0, 1);
        assert_eq!(viewers.total(2), 12);
        assert_eq!(viewers.total(0), 1);
        assert_eq!(viewers.total(1), 0);
    }
}
