//! The cluster store: NATS JetStream behind the same sync [`Store`] trait (and so behind the same coalescing
//! writer) as the embedded store, with the async `async-nats` client on a small tokio runtime of its own, plus
//! the committed-message feed ([`NatsStore::feed`]) through which every node sees every other node's messages.
//!
//! # Layout on the brokers
//!
//! ```text
//! stream <NS>_MESSAGES   subjects <ns>.msg.<room token>   rkyv MessageRecord, header Nats-Msg-Id
//! KV <NS>_ACCOUNTS       <login token>                   0 + rkyv AccountRecord | 1 + from-login + rkyv (a rename's claim)
//! KV <NS>_TOKENS         <token SHA-256, hex>            issued, expires (u64 BE each), login
//! KV <NS>_LOGIN_TOKENS   <login token>                   the login's tokens: (issued u64 BE, SHA-256) each
//! KV <NS>_SETTINGS       <segment token>.<segment token>... the setting's value
//! KV <NS>_DELETED        <room token>.<message id, hex>  deletion marker
//! ```
//!
//! `<NS>`/`<ns>` is [`NatsConfig::namespace`] upper- and lower-cased (default `twitchy`). A *token* is text made
//! safe as one subject token ([`subject_token`]): ASCII letters, digits, `_` and `-` stay, every other byte is
//! `=` and two hex digits, and the empty string is `=`; so `.`, `*`, `>` and whitespace never reach a subject and
//! two different names never share one.
//!
//! # Appends, the durability point and duplicates
//!
//! [`Store::append_messages`] publishes the whole batch pipelined (every publish is written before any
//! acknowledgement is awaited) and returns only when every PubAck arrived. JetStream sends a PubAck once the
//! message is committed by a quorum of the stream's replicas, so that PubAck is the durability point and the
//! sender's acknowledgement. Each message carries `Nats-Msg-Id` ([`msg_id`]): derived from (room, user id,
//! client nonce, text as typed) when the record has a nonce — the engine's own idempotency key, so a resend of
//! the same message through any node is the same Msg-Id — and from the message id otherwise. Messages whose
//! PubAck did not come (timeout, connection lost, no stream leader during an election) are published again
//! with the same Msg-Id, at most [`APPEND_ATTEMPTS_MAX`] attempts within [`APPEND_RETRY_BUDGET_MS`]; the
//! stream's duplicate window ([`NatsConfig::duplicate_window_ms`]) makes the retry store the message at most once.
//!
//! A PubAck that says `duplicate` carries the sequence of the message first stored under that Msg-Id. The store
//! reads it back: if it is the same message id, it was this batch's own earlier attempt (its PubAck was lost) and
//! the outcome is [`AppendOutcome::Stored`]; otherwise it is a resend and the outcome is
//! [`AppendOutcome::Duplicate`] with the original's id, which the sender must be acknowledged with.
//! [`Store::append_messages_with_outcomes`] returns these per message, and
//! [`AppendAck::outcome`](crate::AppendAck::outcome) hands them to the engine.
//!
//! When the attempts run out the batch fails with a transient error and is not acknowledged. As with any
//! replicated log, a message whose every PubAck was lost may nevertheless have been committed; the feed then
//! delivers it (viewers see only committed messages, so everyone sees the same thing), and the sender's resend
//! with its nonce is answered with that message's id. A message without a nonce in that situation can be shown
//! although its sender was told to try again.
//!
//! # History
//!
//! History is read in stream order (the order the feed delivers), from the stream leader (`STREAM.MSG.GET`,
//! never a possibly lagging replica): `last_by_subj` finds a room's newest message, `next_by_subj` walks
//! forward. There is no "previous by subject", so a walk back reads chunks of stream sequences forward, newest
//! chunk first: a chunk that holds no room messages doubles the next chunk's width (up to
//! [`HISTORY_CHUNK_SEQS_MAX`]) so a quiet room in a busy stream costs few reads, and a chunk with more room
//! messages than the page needs (plus [`HISTORY_CHUNK_OVERSHOOT_MAX`]) is abandoned for its newer half, so a busy
//! room never reads much more than its page. Every call is bounded by [`HISTORY_GETS_PER_CALL_MAX`] reads; past it
//! the page is returned short (a walk back returns the newest messages it found, which are the right ones).
//!
//! A cursor id (of [`Store::messages_before`], [`Store::messages_after`], [`Store::delete_message`]) is found
//! by time: ids carry the time they were issued, and a message is committed within
//! [`APPEND_RETRY_BUDGET_MS`] (plus queueing) of it, with server clocks within [`CURSOR_CLOCK_SKEW_MS_MAX`] of
//! the node's. A binary search over stream sequences by server timestamp finds the first message of that time,
//! and the room's messages are read forward from there until the id is found or the messages are more than
//! [`CURSOR_COMMIT_DELAY_MS_MAX`] younger. An id not found (aged out, or never stored) is placed where its time
//! would be.
//!
//! Deleted messages: a marker per id in the `DELETED` bucket, checked (leader reads, concurrently for a chunk)
//! by every history read, which skips marked messages and keeps reading. [`NatsStore::deletions`] watches the
//! markers (of one room or all), and [`NatsStore::setting_changes`] the settings, so every node learns of a
//! change made through any of them. A watch reads its bucket's stream (a KV bucket is a stream with a subject
//! per key) from the revision after the bucket's last at its start, exactly as a feed reads the messages (below):
//! the same pull consumers, probes and restarts, so a watch recovers from a lost server as a feed does.
//!
//! # Accounts, tokens, settings
//!
//! Registration is a KV `create` (fails if the key exists: logins are unique across nodes). A token grant puts
//! the token and then updates the login's token list with compare-and-set (retried on conflict, at most
//! [`CAS_ATTEMPTS_MAX`] times), deleting the tokens it revokes (expired ones, and the oldest beyond the cap).
//! A rename claims the new login with a `create` of a claim record (unique as registration is), moves every
//! token of the old login, writes the account under the new login and deletes the old one; a crash part-way
//! leaves a claim that a retry of the same rename recognises and finishes. Settings scans read the last value of
//! every key of the prefix's scope (an ordered consumer with `last_per_subject` over `<scope tokens>.>`, at
//! most [`SETTINGS_SCAN_KEYS_MAX`]), then filter by the prefix and sort by key. KV reads go to the stream leader
//! as well, so a revoked token or a written setting is seen by every node once the write returned.
//!
//! # The feed
//!
//! [`NatsStore::feed`] starts a task that consumes the stream (all rooms, or a set of rooms) from a given stream
//! sequence and sends `(stream seq, record)` into a bounded flume channel. Its consumer is an ephemeral pull
//! consumer (no acks, one replica, in memory, like an ordered consumer) pulled in batches of
//! [`FEED_PULL_MESSAGES_MAX`] that wait at most [`FEED_PULL_EXPIRES_MS`] (and [`FEED_PULL_GRACE_MS`] more: the
//! feed does not count on the server to say a request expired, since 2.9 sometimes does not). The task tracks
//! the next sequence to deliver and ends the consumer on anything suspicious: an error, a jump in the consumer's own delivery
//! numbering (messages lost on the way), or, after [`FEED_PROBE_QUIET_MS`] without messages, a consumer that
//! no longer answers (its server died) or has messages pending that it does not deliver. It then creates a new
//! consumer from the next sequence (with back-off up to [`FEED_RETRY_BACKOFF_MS_MAX`] while that fails), and
//! drops anything below it, so the channel sees every committed message of its rooms once, in stream order.
//! Every wait is bounded, so a lost server cannot hang a feed. A full channel stops the reading
//! (backpressure). [`Feed::read_seq`] with [`NatsStore::last_seq`] gives its lag.
//! [`NatsStore::recent_with_seq`] reads a room's newest messages together with the sequence a feed must start
//! from to continue exactly after them.
//!
//! # Metrics
//!
//! [`Store::metrics_text`] adds to the writer's metrics: whether the client is connected, each message's publish
//! to PubAck latency, messages republished and duplicates found, feed consumers restarted, and per live feed its
//! lag (`twitchy_cluster_consumer_lag_messages{room}`): what the last delivery said the broker still holds for its
//! consumer, plus what was read and waits in the channel for the reader.
//!
//! # Limits and failure behaviour
//!
//! The stream keeps messages for [`NatsConfig::retention_age_ms`] and at most [`NatsConfig::retention_bytes`]
//! (the oldest are discarded first), with [`NatsConfig::replicas`] replicas, fewer if the cluster has fewer
//! servers (see [`NatsStore::replicas`]). Every request is bounded by [`REQUEST_TIMEOUT_MS`]. While the client is
//! not connected, [`Store::health`] reports [`Health::Unavailable`] with the reason; appends that fail make the
//! coalescer refuse appends until [`Store::recover`] (a stream info request) succeeds again. The client
//! reconnects on its own, to any server of the list or learned from the cluster.
//!
//! What "durable" means here is replication: nats-server writes to the file system but flushes to disk on an
//! interval (minutes by default), not per message. An acknowledged message is on a quorum of servers, which
//! survives losing servers (processes or machines, one at a time, as the tests do with SIGKILL), but not a power
//! loss of a quorum of machines at once. Servers from 2.10 on can be told to flush every write
//! (`jetstream { sync_interval: always }`), at a cost in latency.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::{self, OrderedConfig};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, LastRawMessageErrorKind, Stream,
};
use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use sha2::{Digest, Sha256};

use crate::coalescer::check_room;
use crate::error::{Result, StorageError};
use crate::id::MessageId;
use crate::metrics::{BATCH_LATENCY_US_BOUNDS, Histogram};
use crate::record::{AccountRecord, MessageRecord, TokenRecord};
use crate::{AppendOutcome, Health, Store, codec, settings};

/// Longest a publish waits for its PubAck, in milliseconds, before it is published again (same Msg-Id).
pub const PUBLISH_ACK_TIMEOUT_MS: u64 = 2_000;
/// Attempts of one batch's unacknowledged messages (the first included) before the batch fails.
pub const APPEND_ATTEMPTS_MAX: u32 = 40;
/// Time one batch's attempts may take together, in milliseconds. Long enough to ride out a stream leader
/// election after a broker is lost (a few seconds).
pub const APPEND_RETRY_BUDGET_MS: u64 = 20_000;
/// Back-off before the first retry, in milliseconds; doubled before each further one, up to
/// [`APPEND_RETRY_BACKOFF_MS_MAX`].
pub const APPEND_RETRY_BACKOFF_MS: u64 = 50;
pub const APPEND_RETRY_BACKOFF_MS_MAX: u64 = 1_000;
/// Publishes awaiting their PubAck at once (the client's in-flight window); a bigger batch waits for room.
pub const PUBLISHES_IN_FLIGHT_MAX: usize = 8_192;
/// Longest one request (a read, a KV write, a stream request) may take, in milliseconds.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Longest [`NatsStore::connect`] may take (connecting and creating the stream and buckets), in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 30_000;
/// Most replicas JetStream allows for a stream.
pub const REPLICAS_MAX: usize = 5;
/// Most leader reads one history call makes; past it the page is returned short.
pub const HISTORY_GETS_PER_CALL_MAX: usize = 20_000;
/// Widest chunk of stream sequences one step of a walk back reads.
pub const HISTORY_CHUNK_SEQS_MAX: u64 = 1 << 20;
/// Room messages beyond what the page still needs that one chunk may hold before the walk narrows it.
pub const HISTORY_CHUNK_OVERSHOOT_MAX: usize = 64;
/// How far, in milliseconds, a broker's clock may be behind the clock of the node that issued a message id.
pub const CURSOR_CLOCK_SKEW_MS_MAX: u64 = 2_000;
/// How long after its id was issued a message may be committed, in milliseconds: the append retry budget plus
/// queueing in front of the store, with margin.
pub const CURSOR_COMMIT_DELAY_MS_MAX: u64 = APPEND_RETRY_BUDGET_MS + 40_000;
/// Most keys one settings scope may hold for a scan to answer.
pub const SETTINGS_SCAN_KEYS_MAX: usize = 100_000;
/// Compare-and-set attempts of a login's token list before a token write fails (transient).
pub const CAS_ATTEMPTS_MAX: u32 = 16;
/// Wait before a feed creates its consumer again after an error, in milliseconds: first, and at most (doubled
/// on each failure in a row).
pub const FEED_RETRY_BACKOFF_MS_MIN: u64 = 50;
pub const FEED_RETRY_BACKOFF_MS_MAX: u64 = 2_000;
/// Messages a feed asks for per pull request.
pub const FEED_PULL_MESSAGES_MAX: usize = 512;
/// How long one pull request of a feed waits for messages, in milliseconds.
pub const FEED_PULL_EXPIRES_MS: u64 = 1_000;
/// How long after a pull request's expiry a feed stops waiting for its end and asks again, in milliseconds.
pub const FEED_PULL_GRACE_MS: u64 = 100;
/// After this long without a message, a feed checks that its consumer exists and has nothing pending, in
/// milliseconds (a consumer on a server that died answers nothing; this is how the feed notices).
pub const FEED_PROBE_QUIET_MS: u64 = 3_000;
/// How long the brokers keep a feed's consumer after its feed stopped pulling, in milliseconds.
pub const FEED_CONSUMER_INACTIVE_MS: u64 = 30_000;
/// Tokens one login's token list may hold (the per-login cap is far below it).
const LOGIN_TOKENS_MAX: usize = 1_000;
/// The header a key-value bucket's delete and purge markers carry (`DEL`, `PURGE`; none on a put).
const KV_OPERATION_HEADER: &str = "KV-Operation";
/// Client worker threads: the client is IO-bound, and the storage threads block on it from outside.
const RUNTIME_THREADS: usize = 2;

/// Where and how the cluster store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URLs, `nats://host:port` or `host:port`; the client also learns the cluster's other servers.
    pub servers: Vec<String>,
    /// This node's id, used in the client's connection name (what the brokers show for it).
    pub node_id: u16,
    /// Replicas of the stream and buckets; capped at [`REPLICAS_MAX`] and by the servers in the cluster.
    pub replicas: usize,
    /// Names the stream and buckets (`<NS>_MESSAGES`, ...) and the subjects (`<ns>.msg.<room>`): letters,
    /// digits and `_`.
    pub namespace: String,
    /// Messages older than this are discarded, in milliseconds.
    pub retention_age_ms: u64,
    /// Beyond this many bytes the oldest messages are discarded.
    pub retention_bytes: u64,
    /// How long a Msg-Id is remembered for deduplication, in milliseconds. The brokers keep every Msg-Id of the
    /// window in memory (about 100-150 bytes each), so this is traded against the message rate.
    pub duplicate_window_ms: u64,
}

/// Seven days.
pub const RETENTION_AGE_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
/// 10 GiB.
pub const RETENTION_BYTES_DEFAULT: u64 = 10 << 30;
/// Two minutes: JetStream's own default, long enough for a client's resend after a lost acknowledgement.
pub const DUPLICATE_WINDOW_MS_DEFAULT: u64 = 2 * 60 * 1000;

impl NatsConfig {
    /// The defaults for these servers.
    pub fn new(servers: Vec<String>, node_id: u16) -> NatsConfig {
        NatsConfig {
            servers,
            node_id,
            replicas: 3,
            namespace: "twitchy".into(),
            retention_age_ms: RETENTION_AGE_MS_DEFAULT,
            retention_bytes: RETENTION_BYTES_DEFAULT,
            duplicate_window_ms: DUPLICATE_WINDOW_MS_DEFAULT,
        }
    }
}

/// Which rooms a feed delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedRooms {
    All,
    /// These rooms. One room is filtered by the brokers; several are read from the whole stream and filtered
    /// here (a NATS 2.9 consumer has one filter subject), so for many rooms of a busy stream, one feed per room
    /// (or `All`) may be cheaper.
    Rooms(Vec<String>),
}

/// One committed message, as the feed delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    /// Its stream sequence: strictly increasing along one feed.
    pub seq: u64,
    pub record: MessageRecord,
}

/// A room's newest messages with their stream sequences, oldest first, and the sequence a feed of the room
/// must start from to continue exactly after them (nothing missed, nothing twice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomHistory {
    pub messages: Vec<FeedItem>,
    pub next_seq: u64,
}

/// Changes made through any node, from a watch of a key-value bucket: read [`Changes::receiver`]. Dropping it
/// ends the task. See [`NatsStore::deletions`] and [`NatsStore::setting_changes`].
#[derive(Debug)]
pub struct Changes<T> {
    rx: flume::Receiver<T>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Changes<T> {
    /// The changes since the feed started, in the order they were made.
    pub fn receiver(&self) -> &flume::Receiver<T> {
        &self.rx
    }
}

impl<T> Drop for Changes<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deleted messages: the room and the message id.
pub type Deletions = Changes<(String, MessageId)>;
/// Settings written or deleted.
pub type SettingChanges = Changes<SettingChange>;

/// A setting written (`value` Some) or deleted (None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// A running feed: read [`Feed::receiver`]. Dropping it (or [`Feed::stop`]) ends the task.
#[derive(Debug)]
pub struct Feed {
    rx: flume::Receiver<FeedItem>,
    /// What `/metrics` reads of this feed (the store keeps a weak reference).
    _gauge: Arc<FeedGauge>,
    start_seq: u64,
    /// The sequence of the last message read from the stream (delivered, or skipped as another room's).
    read_seq: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Feed {
    /// The committed messages, in stream order.
    pub fn receiver(&self) -> &flume::Receiver<FeedItem> {
        &self.rx
    }

    /// The stream sequence the feed started from.
    pub fn start_seq(&self) -> u64 {
        self.start_seq
    }

    /// The stream sequence the feed has read up to (`start_seq - 1` before the first message), whether or not the
    /// reader has taken it from the channel yet. The feed's lag is
    /// [`NatsStore::last_seq`] minus this (for a feed of some rooms, an upper bound: other rooms' messages after
    /// the last one of its rooms are not read until one of its rooms has a newer message).
    pub fn read_seq(&self) -> u64 {
        self.read_seq.load(Ordering::Acquire)
    }

    /// Ends the feed's task.
    pub fn stop(self) {}
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A feed as `/metrics` sees it: its committed messages not yet taken by its reader.
#[derive(Debug)]
struct FeedGauge {
    /// `room="..."` label value: the room, `*` for every room, or the rooms joined by `,`.
    label: String,
    /// The messages read from the stream and waiting in the channel.
    rx: flume::Receiver<FeedItem>,
    /// Messages the broker holds for the feed's consumer beyond the last one it delivered (as that delivery said).
    pending: Arc<AtomicU64>,
}

impl FeedGauge {
    fn lag(&self) -> u64 {
        self.pending.load(Ordering::Relaxed) + self.rx.len() as u64
    }
}

/// What the cluster store counts, for `/metrics`.
#[derive(Debug)]
struct ClusterMetrics {
    /// Per message: its publish written to its PubAck received (replicated to a quorum), in microseconds.
    publish_ack_us: Histogram<14>,
    /// Messages published again because their PubAck did not come.
    republished_total: AtomicU64,
    /// Messages the stream already held under their Msg-Id (a resend acknowledged with the original).
    duplicates_total: AtomicU64,
    /// Feed consumers created again after one ended (an error, a lost server, a stuck consumer).
    feed_restarts_total: AtomicU64,
    feeds: Mutex<Vec<Weak<FeedGauge>>>,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics {
            publish_ack_us: Histogram::new(BATCH_LATENCY_US_BOUNDS),
            republished_total: AtomicU64::new(0),
            duplicates_total: AtomicU64::new(0),
            feed_restarts_total: AtomicU64::new(0),
            feeds: Mutex::new(Vec::new()),
        }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl ClusterMetrics {
    fn render(&self, connected: bool, replicas: usize) -> String {
        let mut out = String::with_capacity(2048);
        let _ = writeln!(
            out,
            "# HELP twitchy_cluster_connected 1 while connected to a NATS server of the cluster.\n\
             # TYPE twitchy_cluster_connected gauge\ntwitchy_cluster_connected {}\n\
             # HELP twitchy_cluster_replicas Replicas of the message stream and the buckets.\n\
             # TYPE twitchy_cluster_replicas gauge\ntwitchy_cluster_replicas {replicas}",
            u8::from(connected)
        );
        let name = "twitchy_cluster_publish_ack_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Per message, its publish to its PubAck (committed by a quorum of replicas).\n\
             # TYPE {name} histogram"
        );
        self.publish_ack_us.render(&mut out, name, 1e6);
        for (name, help, value) in [
            (
                "twitchy_cluster_republished_total",
                "Messages published again (same Msg-Id) because their PubAck did not come.",
                &self.republished_total,
            ),
            (
                "twitchy_cluster_duplicates_total",
                "Messages the stream already held under their Msg-Id (resends, acknowledged with the original).",
                &self.duplicates_total,
            ),
            (
                "twitchy_cluster_feed_restarts_total",
                "Feed consumers created again after one ended (an error, a lost server, a stuck consumer).",
                &self.feed_restarts_total,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "twitchy_cluster_consumer_lag_messages";
        let _ = writeln!(
            out,
            "# HELP {name} Per feed (one per room): committed messages this node has not yet handed to its shard \
             (held by the broker for the feed's consumer, or read and queued here).\n# TYPE {name} gauge"
        );
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.retain(|feed| feed.strong_count() > 0);
        let mut gauges: Vec<Arc<FeedGauge>> = feeds.iter().filter_map(Weak::upgrade).collect();
        drop(feeds);
        gauges.sort_by(|a, b| a.label.cmp(&b.label));
        for gauge in gauges {
            let _ = writeln!(
                out,
                "{name}{{room=\"{}\"}} {}",
                label_value(&gauge.label),
                gauge.lag()
            );
        }
        out
    }
}

fn io(e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

/// Runs `f`, failing with `Io` after [`REQUEST_TIMEOUT_MS`].
async fn bounded<T>(what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), f)
        .await
        .map_err(|_| StorageError::Io(format!("{what} timed out")))?
}

/// Text made safe as one subject token (and KV key segment): ASCII letters, digits, `_` and `-` stay, any other
/// byte becomes `=` and two lowercase hex digits, and the empty string becomes `=`. Injective, so two names
/// never share a subject.
pub fn subject_token(text: &str) -> String {
    if text.is_empty() {
        return "=".into();
    }
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            write!(out, "={b:02x}").expect("writing to a String");
        }
    }
    out
}

/// The inverse of [`subject_token`]; `None` for text it never produces.
pub fn decode_subject_token(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let b = token.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `Nats-Msg-Id` of a record: `n-` and a hash of (room, user id, nonce, text as typed) when it has a client
/// nonce (the engine's idempotency key: the same message resent through any node has the same Msg-Id, a reused
/// nonce with another text does not), else `i-` and its message id.
pub fn msg_id(record: &MessageRecord) -> String {
    if record.client_nonce.is_empty() {
        return format!("i-{:032x}", record.id.0);
    }
    let mut hash = Sha256::new();
    for part in [
        record.room.as_bytes(),
        &record.user_id.to_be_bytes(),
        record.client_nonce.as_bytes(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(record.original.as_bytes());
    let digest = hash.finalize();
    let mut out = String::with_capacity(2 + 40);
    out.push_str("n-");
    for b in &digest[..20] {
        write!(out, "{b:02x}").expect("writing to a String");
    }
    out
}

fn hex32(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(64);
    for b in bytes {
        write!(out, "{b:02x}").expect("writing to a String");
    }
    out
}

/// A stream's last sequence (0 when empty), one info request.
async fn last_sequence(stream: &Stream) -> Result<u64> {
    bounded("stream info", async {
        let info = stream.get_info().await.map_err(io)?;
        Ok(info.state.last_sequence)
    })
    .await
}

fn check_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.len() > 32 || !ns.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(StorageError::Invalid(format!(
            "namespace {ns:?} must be 1 to 32 letters, digits or '_'"
        )));
    }
    Ok(())
}

/// Milliseconds since the unix epoch of a stored message, by the broker's clock.
fn stored_unix_ms(m: &StreamMessage) -> u64 {
    (m.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// Whether a KV entry read as a raw stream message is a deletion (`KV-Operation: DEL` or `PURGE`).
fn is_kv_tombstone(m: &StreamMessage) -> bool {
    m.headers
        .get("KV-Operation")
        .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"))
}

fn encode_token(token: &TokenRecord) -> Bytes {
    let mut out = Vec::with_capacity(16 + token.login.len());
    out.extend_from_slice(&token.issued_unix_ms.to_be_bytes());
    out.extend_from_slice(&token.expires_unix_ms.to_be_bytes());
    out.extend_from_slice(token.login.as_bytes());
    out.into()
}

fn decode_token(bytes: &[u8]) -> Result<TokenRecord> {
    if bytes.len() < 16 {
        return Err(corrupt("token record too short"));
    }
    Ok(TokenRecord {
        issued_unix_ms: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
        expires_unix_ms: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
        login: String::from_utf8(bytes[16..].to_vec()).map_err(corrupt)?,
    })
}

/// A login's tokens: (issued, SHA-256), in list order.
type LoginTokens = Vec<(u64, [u8; 32])>;

fn encode_login_tokens(list: &LoginTokens) -> Bytes {
    let mut out = Vec::with_capacity(list.len() * 40);
    for (issued, sha) in list {
        out.extend_from_slice(&issued.to_be_bytes());
        out.extend_from_slice(sha);
    }
    out.into()
}

fn decode_login_tokens(bytes: &[u8]) -> Result<LoginTokens> {
    if !bytes.len().is_multiple_of(40) {
        return Err(corrupt("login token list has a torn entry"));
    }
    Ok(bytes
        .chunks_exact(40)
        .map(|c| {
            (
                u64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
                c[8..].try_into().expect("32 bytes"),
            )
        })
        .collect())
}

/// An `ACCOUNTS` value: a finished account, or a rename's claim of a new login.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AccountEntry {
    Account(AccountRecord),
    /// The login is reserved by the rename of `from` (the account, already under its new login).
    Claim {
        from: String,
        account: AccountRecord,
    },
}

fn encode_account_entry(entry: &AccountEntry) -> Result<Bytes> {
    let mut out = Vec::new();
    match entry {
        AccountEntry::Account(account) => {
            out.push(0);
            out.extend_from_slice(&codec::encode_account(account)?);
        }
        AccountEntry::Claim { from, account } => {
            let len = u8::try_from(from.len()).map_err(|_| {
                StorageError::Invalid(format!("login {from:?} is longer than 255 bytes"))
            })?;
            out.push(1);
            out.push(len);
            out.extend_from_slice(from.as_bytes());
            out.extend_from_slice(&codec::encode_account(account)?);
        }
    }
    Ok(out.into())
}

fn decode_account_entry(bytes: &[u8]) -> Result<AccountEntry> {
    match bytes.first() {
        Some(0) => Ok(AccountEntry::Account(codec::decode_account(&bytes[1..])?)),
        Some(1) => {
            let len = *bytes
                .get(1)
                .ok_or_else(|| corrupt("account claim too short"))? as usize;
            let from = bytes
                .get(2..2 + len)
                .ok_or_else(|| corrupt("account claim too short"))?;
            Ok(AccountEntry::Claim {
                from: String::from_utf8(from.to_vec()).map_err(corrupt)?,
                account: codec::decode_account(&bytes[2 + len..])?,
            })
        }
        _ => Err(corrupt("unknown account entry")),
    }
}

/// A settings key as a KV key: each `/`-separated segment a [`subject_token`], joined by `.`.
fn setting_kv_key(key: &str) -> String {
    key.split('/')
        .map(subject_token)
        .collect::<Vec<_>>()
        .join(".")
}

fn setting_key_of(kv_key: &str) -> Option<String> {
    let segments: Option<Vec<String>> = kv_key.split('.').map(decode_subject_token).collect();
    Some(segments?.join("/"))
}

/// Names of the stream, buckets and subjects of one namespace.
#[derive(Debug, Clone)]
struct Names {
    ns: String,
    messages: String,
    accounts: String,
    tokens: String,
    login_tokens: String,
    settings: String,
    deleted: String,
}

impl Names {
    fn new(namespace: &str) -> Names {
        let up = namespace.to_ascii_uppercase();
        Names {
            ns: namespace.to_ascii_lowercase(),
            messages: format!("{up}_MESSAGES"),
            accounts: format!("{up}_ACCOUNTS"),
            tokens: format!("{up}_TOKENS"),
            login_tokens: format!("{up}_LOGIN_TOKENS"),
            settings: format!("{up}_SETTINGS"),
            deleted: format!("{up}_DELETED"),
        }
    }

    fn room_subject(&self, room: &str) -> String {
        format!("{}.msg.{}", self.ns, subject_token(room))
    }

    fn all_rooms_subject(&self) -> String {
        format!("{}.msg.>", self.ns)
    }
}

/// One KV bucket: the client's store for writes, the stream itself for leader reads.
#[derive(Clone)]
struct Bucket {
    name: String,
    kv: kv::Store,
}

impl Bucket {
    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.name)
    }

    /// The key's value and revision, read from the stream leader; `None` if absent or deleted.
    async fn get(&self, key: &str) -> Result<Option<(u64, Bytes)>> {
        Ok(self
            .get_entry(key)
            .await?
            .and_then(|m| (!is_kv_tombstone(&m)).then_some((m.sequence, m.payload))))
    }

    /// The key's last entry, deletions included.
    async fn get_entry(&self, key: &str) -> Result<Option<StreamMessage>> {
        bounded("key-value read", async {
            match self
                .kv
                .stream
                .get_last_raw_message_by_subject(&self.subject(key))
                .await
            {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(StorageError::Io(format!("key-value read: {e}"))),
            }
        })
        .await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64> {
        bounded("key-value write", async {
            self.kv
                .put(key, value)
                .await
                .map_err(|e| StorageError::Io(format!("key-value write: {e}")))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        bounded("key-value deletion", async {
            self.kv
                .delete(key)
                .await
                .map_err(|e| StorageError::Io(format!("key-value deletion: {e}")))
        })
        .await
    }

    /// Writes the key only if it is absent (or deleted): `AlreadyExists` otherwise.
    async fn create(&self, key: &str, value: Bytes) -> Result<u64> {
        bounded("key-value create", async {
            match self.kv.create(key, value).await {
                Ok(rev) => Ok(rev),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(StorageError::AlreadyExists)
                }
                Err(e) => Err(StorageError::Io(format!("key-value create: {e}"))),
            }
        })
        .await
    }

    /// Writes the key only if its revision is still `revision`: `Ok(None)` if it changed meanwhile.
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<Option<u64>> {
        bounded("key-value update", async {
            match self.kv.update(key, value, revision).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(StorageError::Io(format!("key-value update: {e}"))),
            }
        })
        .await
    }
}

/// One reader of a stream (a message feed, or a watch of a bucket): where it is, where its items go, and what it
/// makes of each message. Its consumers come and go (see [`Inner::run_reader`]); it stays.
struct StreamReader<T> {
    /// The next stream sequence to hand on: everything below it was handled (delivered, or not wanted).
    next: u64,
    tx: flume::Sender<T>,
    /// What the last delivery said the broker still holds for the consumer.
    pending: Arc<AtomicU64>,
    /// The item a message becomes, if any (called once per sequence, in order).
    map: MapMessage<T>,
}

/// What a [`StreamReader`] makes of the message at a stream sequence.
type MapMessage<T> = Box<dyn FnMut(u64, &async_nats::Message) -> Option<T> + Send>;

impl<T> StreamReader<T> {
    /// Hands one message on; `false` when the reader is gone.
    async fn deliver(&mut self, seq: u64, message: &async_nats::Message) -> bool {
        if seq < self.next {
            return true;
        }
        self.next = seq + 1;
        match (self.map)(seq, message) {
            Some(item) => self.tx.send_async(item).await.is_ok(),
            None => true,
        }
    }
}

/// Why one consumer of a feed ended.
enum FeedEnd {
    /// The reader dropped the feed.
    Closed,
    /// It delivered something, then failed: try again at once.
    Progressed(String),
    /// It failed before delivering anything: back off.
    Failed(String),
}

/// Where a cursor id is in a room's stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Located {
    /// The message's sequence.
    Found(u64),
    /// Not in the room: this is the sequence it would come before.
    Before(u64),
}

/// The client and the handles every call uses; cheap to clone into a feed's task.
#[derive(Clone)]
struct Inner {
    client: Client,
    metrics: Arc<ClusterMetrics>,
    js: Context,
    names: Names,
    messages: Stream,
    accounts: Bucket,
    tokens: Bucket,
    login_tokens: Bucket,
    settings: Bucket,
    deleted: Bucket,
}

/// A store backed by a NATS JetStream cluster. See the module docs.
pub struct NatsStore {
    runtime: tokio::runtime::Runtime,
    inner: Inner,
    replicas: usize,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("stream", &self.inner.names.messages)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// Whether a stream or bucket creation failed because the cluster has fewer servers than replicas asked for.
fn too_few_servers(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("insufficient resources")
        || e.contains("replicas > 1 not supported")
        || e.contains("no suitable peers")
}

impl NatsStore {
    /// Connects to the cluster and creates (or updates to this configuration) the stream and the buckets.
    pub fn connect(config: &NatsConfig) -> Result<NatsStore> {
        check_namespace(&config.namespace)?;
        if config.servers.is_empty() {
            return Err(StorageError::Invalid("no NATS servers given".into()));
        }
        if config.replicas == 0 {
            return Err(StorageError::Invalid("replicas must be at least 1".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("storage-nats")
            .enable_all()
            .build()
            .map_err(io)?;
        let (inner, replicas) = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(CONNECT_TIMEOUT_MS),
                Self::setup(config),
            )
            .await
            .map_err(|_| {
                StorageError::Io(format!("connecting to {:?} timed out", config.servers))
            })?
        })?;
        Ok(NatsStore {
            runtime,
            inner,
            replicas,
        })
    }

    async fn setup(config: &NatsConfig) -> Result<(Inner, usize)> {
        let names = Names::new(&config.namespace);
        let servers: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e| StorageError::Invalid(format!("server {s:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        let client = ConnectOptions::new()
            .name(format!("twitchy-node-{}", config.node_id))
            .connection_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .request_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
            .max_reconnects(None)
            .connect(servers)
            .await
            .map_err(|e| StorageError::Io(format!("connecting to NATS: {e}")))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .ack_timeout(Duration::from_millis(PUBLISH_ACK_TIMEOUT_MS))
            .max_ack_inflight(PUBLISHES_IN_FLIGHT_MAX)
            .build(client.clone());

        // The cluster may have fewer servers than replicas asked for: step down until the brokers accept.
        let mut replicas = config.replicas.min(REPLICAS_MAX);
        let messages = loop {
            let stream_config = StreamConfig {
                name: names.messages.clone(),
                subjects: vec![names.all_rooms_subject()],
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                max_age: Duration::from_millis(config.retention_age_ms),
                max_bytes: i64::try_from(config.retention_bytes).unwrap_or(i64::MAX),
                discard: DiscardPolicy::Old,
                duplicate_window: Duration::from_millis(config.duplicate_window_ms),
                allow_direct: false,
                ..Default::default()
            };
            match js.create_or_update_stream(stream_config).await {
                Ok(_) => break js.get_stream(&names.messages).await.map_err(io)?,
                Err(e) if replicas > 1 && too_few_servers(&e.to_string()) => {
                    log::warn!(
                        "the NATS cluster cannot hold {replicas} replicas of {} ({e}); trying fewer",
                        names.messages
                    );
                    replicas -= 1;
                }
                Err(e) => {
                    return Err(StorageError::Io(format!(
                        "creating the stream with {replicas} replicas: {e} (is retention_bytes, {}, more than \
                         the servers' JetStream file storage?)",
                        config.retention_bytes
                    )));
                }
            }
        };
        if replicas < config.replicas {
            log::warn!(
                "stream {} has {replicas} replicas, fewer than the {} asked for",
                names.messages,
                config.replicas
            );
        }
        // The bucket's stream is created here rather than by the client's key-value helpers: those first ask for
        // the account's info, whose answer from a 2.9 server they cannot parse. The configuration is the
        // key-value convention (one value per key, deletions as markers, rollups allowed), except that reads are
        // not served by replicas (`allow_direct` off): every read here goes to the stream leader.
        let bucket = |name: String| {
            let js = js.clone();
            async move {
                js.create_or_update_stream(StreamConfig {
                    name: format!("KV_{name}"),
                    subjects: vec![format!("$KV.{name}.>")],
                    max_messages_per_subject: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    allow_rollup: true,
                    deny_delete: true,
                    deny_purge: false,
                    allow_direct: false,
                    discard: DiscardPolicy::New,
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .map_err(|e| StorageError::Io(format!("creating bucket {name}: {e}")))?;
                let kv = js
                    .get_key_value(&name)
                    .await
                    .map_err(|e| StorageError::Io(format!("opening bucket {name}: {e}")))?;
                Ok::<_, StorageError>(Bucket { name, kv })
            }
        };
        let inner = Inner {
            accounts: bucket(names.accounts.clone()).await?,
            tokens: bucket(names.tokens.clone()).await?,
            login_tokens: bucket(names.login_tokens.clone()).await?,
            settings: bucket(names.settings.clone()).await?,
            deleted: bucket(names.deleted.clone()).await?,
            metrics: Arc::new(ClusterMetrics::default()),
            client,
            js,
            names,
            messages,
        };
        Ok((inner, replicas))
    }

    /// Replicas of the stream and buckets: [`NatsConfig::replicas`], or fewer if the cluster has fewer servers.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The name of the server the client is connected to now (for tests and the health endpoint).
    pub fn connected_server(&self) -> String {
        self.inner.client.server_info().server_name
    }

    /// The server that leads the message stream now (its server name), if it has a leader.
    pub fn stream_leader(&self) -> Result<Option<String>> {
        self.runtime.block_on(bounded("stream info", async {
            let info = self.inner.messages.get_info().await.map_err(io)?;
            Ok(info.cluster.and_then(|c| c.leader))
        }))
    }

    /// The stream's last sequence (0 when empty).
    pub fn last_seq(&self) -> Result<u64> {
        self.runtime.block_on(self.inner.last_seq())
    }

    /// Starts a feed of every committed message of `rooms`, from stream sequence `from_seq` on (`None`: from
    /// the next message committed after this call), into a channel of `capacity` messages. See the module docs.
    pub fn feed(&self, rooms: FeedRooms, from_seq: Option<u64>, capacity: usize) -> Result<Feed> {
        if let FeedRooms::Rooms(rooms) = &rooms {
            if rooms.is_empty() {
                return Err(StorageError::Invalid(
                    "a feed needs at least one room".into(),
                ));
            }
            for room in rooms {
                check_room(room)?;
            }
        }
        let start_seq = match from_seq {
            Some(seq) => seq.max(1),
            None => self.last_seq()? + 1,
        };
        let (tx, rx) = flume::bounded(capacity.max(1));
        let gauge = Arc::new(FeedGauge {
            label: match &rooms {
                FeedRooms::All => "*".to_owned(),
                FeedRooms::Rooms(rooms) => rooms.join(","),
            },
            rx: rx.clone(),
            pending: Arc::new(AtomicU64::new(0)),
        });
        self.inner
            .metrics
            .feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&gauge));
        let names = &self.inner.names;
        let (filter, wanted): (String, Option<HashSet<String>>) = match &rooms {
            FeedRooms::All => (names.all_rooms_subject(), None),
            FeedRooms::Rooms(rooms) if rooms.len() == 1 => (names.room_subject(&rooms[0]), None),
            FeedRooms::Rooms(rooms) => (
                names.all_rooms_subject(),
                Some(rooms.iter().map(|r| names.room_subject(r)).collect()),
            ),
        };
        let read_seq = Arc::new(AtomicU64::new(start_seq - 1));
        let read = read_seq.clone();
        let reader = StreamReader {
            next: start_seq,
            tx,
            pending: gauge.pending.clone(),
            map: Box::new(move |seq, message| {
                // Read from the stream: counted before it is handed on, so a reader that got it sees the feed there.
                read.store(seq, Ordering::Release);
                if !wanted
                    .as_ref()
                    .is_none_or(|w| w.contains(message.subject.as_str()))
                {
                    return None;
                }
                match codec::decode_message(&message.payload) {
                    Ok(record) => Some(FeedItem { seq, record }),
                    Err(e) => {
                        log::error!("feed: message {seq} is not a record ({e}); skipped");
                        None
                    }
                }
            }),
        };
        let inner = self.inner.clone();
        let stream = self.inner.messages.clone();
        let task = self
            .runtime
            .spawn(async move { inner.run_reader(stream, filter, reader, "feed").await });
        Ok(Feed {
            rx,
            _gauge: gauge,
            start_seq,
            read_seq,
            task,
        })
    }

    /// Starts a feed of message deletions made from now on through any node, of one room or (`None`) of every
    /// room (a watch of the markers in the `DELETED` bucket), into a channel of `capacity` deletions, each the
    /// room and the message id. A watch that fails is started again from the revision after the last one it
    /// delivered, so none is missed or repeated; a full channel stops the reading.
    pub fn deletions(&self, room: Option<&str>, capacity: usize) -> Result<Deletions> {
        let keys = match room {
            Some(room) => {
                check_room(room)?;
                format!("{}.>", subject_token(room))
            }
            None => ">".to_owned(),
        };
        self.watch(self.inner.deleted.clone(), keys, capacity, |key, op, _| {
            if op != kv::Operation::Put {
                return None;
            }
            let (room, hex) = key.split_once('.')?;
            let id = u128::from_str_radix(hex, 16).ok()?;
            Some((decode_subject_token(room)?, MessageId(id)))
        })
    }

    /// Starts a feed of every change of the settings whose key starts with `first_segment/` (`room` for every
    /// room's), made from now on through any node: the key and its new value, or `None` when it was deleted, in
    /// the order the changes were made. Resumes like [`NatsStore::deletions`].
    pub fn setting_changes(&self, first_segment: &str, capacity: usize) -> Result<SettingChanges> {
        let keys = format!("{}.>", subject_token(first_segment));
        self.watch(
            self.inner.settings.clone(),
            keys,
            capacity,
            |key, op, value| {
                let key = setting_key_of(key)?;
                let value = match op {
                    kv::Operation::Put => Some(value.to_vec()),
                    kv::Operation::Delete | kv::Operation::Purge => None,
                };
                Some(SettingChange { key, value })
            },
        )
    }

    /// Starts a watch of `keys` in `bucket` from the bucket's current revision on: `map` makes an item of each
    /// change (its key, what was done, the value written).
    fn watch<T: Send + 'static>(
        &self,
        bucket: Bucket,
        keys: String,
        capacity: usize,
        map: impl Fn(&str, kv::Operation, &[u8]) -> Option<T> + Send + 'static,
    ) -> Result<Changes<T>> {
        // The bucket's last revision is its stream's last sequence.
        let after = self.runtime.block_on(last_sequence(&bucket.kv.stream))?;
        let (tx, rx) = flume::bounded(capacity.max(1));
        let prefix = bucket.subject("");
        let filter = bucket.subject(&keys);
        let reader = StreamReader {
            next: after + 1,
            tx,
            pending: Arc::new(AtomicU64::new(0)),
            map: Box::new(move |_, message| {
                let key = message.subject.as_str().strip_prefix(prefix.as_str())?;
                let operation = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(KV_OPERATION_HEADER))
                    .map_or(Ok(kv::Operation::Put), |op| op.as_str().parse());
                match operation {
                    Ok(operation) => map(key, operation, &message.payload),
                    Err(_) => {
                        log::error!("watch: {key} has an unknown operation; skipped");
                        None
                    }
                }
            }),
        };
        let inner = self.inner.clone();
        let stream = bucket.kv.stream.clone();
        let task = self
            .runtime
            .spawn(async move { inner.run_reader(stream, filter, reader, "watch").await });
        Ok(Changes { rx, task })
    }

    /// The room's newest `limit` messages with their sequences, and where a feed continues after them.
    pub fn recent_with_seq(&self, room: &str, limit: usize) -> Result<RoomHistory> {
        check_room(room)?;
        self.runtime.block_on(async {
            let last = self.inner.last_seq().await?;
            let subject = self.inner.names.room_subject(room);
            let Some(newest) = self.inner.room_last(&subject).await? else {
                return Ok(RoomHistory {
                    messages: Vec::new(),
                    next_seq: last + 1,
                });
            };
            let newest_seq = newest.sequence;
            let mut messages = self.inner.walk_back(room, newest_seq, limit).await?;
            messages.reverse();
            Ok(RoomHistory {
                messages,
                next_seq: last.max(newest_seq) + 1,
            })
        })
    }
}

impl Inner {
    /// The message stream's last sequence (0 when empty).
    async fn last_seq(&self) -> Result<u64> {
        last_sequence(&self.messages).await
    }

    async fn first_and_last_seq(&self) -> Result<(u64, u64)> {
        bounded("stream info", async {
            let info = self.messages.get_info().await.map_err(io)?;
            Ok((info.state.first_sequence.max(1), info.state.last_sequence))
        })
        .await
    }

    /// The room's newest message.
    async fn room_last(&self, subject: &str) -> Result<Option<StreamMessage>> {
        bounded("history read", async {
            match self.messages.get_last_raw_message_by_subject(subject).await {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(StorageError::Io(format!("history read: {e}"))),
            }
        })
        .await
    }

    /// The room's first message at or after `seq`.
    async fn room_next(&self, subject: &str, seq: u64) -> Result<Option<StreamMessage>> {
        bounded("history read", async {
            match self
                .messages
                .get_first_raw_message_by_subject(subject, seq.max(1))
                .await
            {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(StorageError::Io(format!("history read: {e}"))),
            }
        })
        .await
    }

    /// The message at `seq`, whatever its room.
    async fn at_seq(&self, seq: u64) -> Result<Option<StreamMessage>> {
        bounded("stream read", async {
            match self.messages.get_raw_message(seq).await {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(StorageError::Io(format!("stream read: {e}"))),
            }
        })
        .await
    }

    fn deleted_key(room: &str, id: MessageId) -> String {
        format!("{}.{:032x}", subject_token(room), id.0)
    }

    /// Drops the deleted ones, checking all markers concurrently.
    async fn without_deleted(&self, room: &str, items: Vec<FeedItem>) -> Result<Vec<FeedItem>> {
        let keys: Vec<String> = items
            .iter()
            .map(|item| Self::deleted_key(room, item.record.id))
            .collect();
        let checks = join_all(keys.iter().map(|key| self.deleted.get(key))).await;
        let mut kept = Vec::with_capacity(items.len());
        for (item, check) in items.into_iter().zip(checks) {
            if check?.is_none() {
                kept.push(item);
            }
        }
        Ok(kept)
    }

    fn decode(m: &StreamMessage) -> Result<FeedItem> {
        Ok(FeedItem {
            seq: m.sequence,
            record: codec::decode_message(&m.payload)?,
        })
    }

    /// Up to `limit` non-deleted messages of the room at or below `hi`, newest first.
    async fn walk_back(&self, room: &str, hi: u64, limit: usize) -> Result<Vec<FeedItem>> {
        let subject = self.names.room_subject(room);
        let (first, _) = self.first_and_last_seq().await?;
        let mut out: Vec<FeedItem> = Vec::with_capacity(limit.min(1024));
        let mut hi = hi;
        let mut gets = 0usize;
        let mut width = (limit as u64 * 2).max(16);
        while out.len() < limit && hi >= first && hi > 0 {
            let need = limit - out.len();
            let lo = hi.saturating_sub(width - 1).max(first);
            let mut chunk = Vec::new();
            let mut cur = lo;
            let mut dense = false;
            while let Some(m) = self.room_next(&subject, cur).await? {
                gets += 1;
                if m.sequence > hi {
                    break;
                }
                cur = m.sequence + 1;
                chunk.push(Self::decode(&m)?);
                if chunk.len() > need + HISTORY_CHUNK_OVERSHOOT_MAX && width > need as u64 {
                    dense = true;
                    break;
                }
                if gets >= HISTORY_GETS_PER_CALL_MAX {
                    break;
                }
            }
            if gets >= HISTORY_GETS_PER_CALL_MAX && !dense && cur <= hi {
                // Out of reads inside this chunk: what it read is not the chunk's newest, so it is not used.
                log::warn!("history read of {room:?} stopped after {gets} reads");
                break;
            }
            if dense {
                width = (width / 2).max(need as u64);
                continue;
            }
            let kept = self.without_deleted(room, chunk).await?;
            let found = kept.len();
            out.extend(kept.into_iter().rev().take(need));
            if lo <= first {
                break;
            }
            hi = lo - 1;
            if found < need {
                width = (width * 2).min(HISTORY_CHUNK_SEQS_MAX);
            }
            if gets >= HISTORY_GETS_PER_CALL_MAX {
                log::warn!("history read of {room:?} stopped after {gets} reads");
                break;
            }
        }
        Ok(out)
    }

    /// Up to `limit` non-deleted messages of the room at or above `lo`, oldest first.
    async fn walk_forward(&self, room: &str, lo: u64, limit: usize) -> Result<Vec<FeedItem>> {
        let subject = self.names.room_subject(room);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut cur = lo;
        let mut gets = 0usize;
        'pages: while out.len() < limit {
            let need = limit - out.len();
            let mut chunk = Vec::with_capacity(need);
            let mut exhausted = false;
            while chunk.len() < need {
                if gets >= HISTORY_GETS_PER_CALL_MAX {
                    log::warn!("history read of {room:?} stopped after {gets} reads");
                    exhausted = true;
                    break;
                }
                gets += 1;
                match self.room_next(&subject, cur).await? {
                    Some(m) => {
                        cur = m.sequence + 1;
                        chunk.push(Self::decode(&m)?);
                    }
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            }
            out.extend(self.without_deleted(room, chunk).await?);
            if exhausted {
                break 'pages;
            }
        }
        Ok(out)
    }

    /// Finds the id in the room's stream order. See the module docs.
    async fn locate(&self, room: &str, id: MessageId) -> Result<Located> {
        let subject = self.names.room_subject(room);
        let (first, last) = self.first_and_last_seq().await?;
        if last < first {
            return Ok(Located::Before(last + 1));
        }
        let earliest_ms = id.unix_ms().saturating_sub(CURSOR_CLOCK_SKEW_MS_MAX);
        let latest_ms = id
            .unix_ms()
            .saturating_add(CURSOR_COMMIT_DELAY_MS_MAX + CURSOR_CLOCK_SKEW_MS_MAX);
        // The first sequence stored at or after `earliest_ms`: broker timestamps grow with the sequence, give or
        // take the clock skew between brokers across a leader change, which the margin covers.
        let (mut lo, mut hi) = (first, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.at_seq(mid).await? {
                Some(m) if stored_unix_ms(&m) >= earliest_ms => hi = mid,
                _ => lo = mid + 1,
            }
        }
        let mut cur = lo;
        // Where the id would be if it is not there: before the first newer id in the window.
        let mut first_newer = None;
        for _ in 0..HISTORY_GETS_PER_CALL_MAX {
            let Some(m) = self.room_next(&subject, cur).await? else {
                return Ok(Located::Before(
                    first_newer.unwrap_or(last.max(cur - 1) + 1),
                ));
            };
            let record = codec::decode_message(&m.payload)?;
            if record.id == id {
                return Ok(Located::Found(m.sequence));
            }
            if stored_unix_ms(&m) > latest_ms {
                return Ok(Located::Before(first_newer.unwrap_or(m.sequence)));
            }
            if record.id > id && first_newer.is_none() {
                first_newer = Some(m.sequence);
            }
            cur = m.sequence + 1;
        }
        log::warn!("message {id} of {room:?} not placed within {HISTORY_GETS_PER_CALL_MAX} reads");
        Ok(Located::Before(first_newer.unwrap_or(cur)))
    }

    /// Publishes the batch pipelined, retrying the unacknowledged ones. See the module docs.
    async fn append(&self, batch: &[MessageRecord]) -> Result<Vec<AppendOutcome>> {
        let started = Instant::now();
        let budget = Duration::from_millis(APPEND_RETRY_BUDGET_MS);
        let mut payloads = Vec::with_capacity(batch.len());
        for record in batch {
            check_room(&record.room)?;
            payloads.push((
                self.names.room_subject(&record.room),
                msg_id(record),
                Bytes::copy_from_slice(&codec::encode_message(record)?),
            ));
        }
        let mut outcomes: Vec<Option<AppendOutcome>> = vec![None; batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut backoff = Duration::from_millis(APPEND_RETRY_BACKOFF_MS);
        let mut last_error = String::new();
        for attempt in 1..=APPEND_ATTEMPTS_MAX {
            for window in pending.chunks(PUBLISHES_IN_FLIGHT_MAX) {
                self.publish_window(batch, &payloads, window, &mut outcomes, &mut last_error)
                    .await;
            }
            pending.retain(|&i| outcomes[i].is_none());
            if pending.is_empty() {
                return Ok(outcomes
                    .into_iter()
                    .map(|o| o.expect("every message answered"))
                    .collect());
            }
            if attempt == APPEND_ATTEMPTS_MAX || started.elapsed() + backoff >= budget {
                break;
            }
            self.metrics
                .republished_total
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            log::debug!(
                "append attempt {attempt}: {} of {} messages unacknowledged ({last_error}); retrying",
                pending.len(),
                batch.len()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(APPEND_RETRY_BACKOFF_MS_MAX));
        }
        Err(StorageError::Unavailable(format!(
            "{} of {} messages not acknowledged by the NATS cluster: {last_error}",
            pending.len(),
            batch.len()
        )))
    }

    /// Publishes the messages `window` (at most [`PUBLISHES_IN_FLIGHT_MAX`]) of the batch, every publish written
    /// before any acknowledgement is awaited, and records the outcome of each one acknowledged.
    async fn publish_window(
        &self,
        batch: &[MessageRecord],
        payloads: &[(String, String, Bytes)],
        window: &[usize],
        outcomes: &mut [Option<AppendOutcome>],
        last_error: &mut String,
    ) {
        let mut acks = Vec::with_capacity(window.len());
        for &i in window {
            let (subject, id, payload) = &payloads[i];
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .message_id(id);
            let published_at = Instant::now();
            let sent = tokio::time::timeout(
                Duration::from_millis(REQUEST_TIMEOUT_MS),
                self.js.send_publish(subject.clone(), publish),
            )
            .await;
            acks.push((i, published_at, sent));
        }
        let mut waiting = Vec::with_capacity(acks.len());
        for (i, published_at, sent) in acks {
            match sent {
                Ok(Ok(ack)) => waiting.push((i, async move {
                    let result = ack.into_future().await;
                    (result, published_at.elapsed())
                })),
                Ok(Err(e)) => *last_error = format!("publish: {e}"),
                Err(_) => *last_error = "publish timed out".into(),
            }
        }
        let (indexes, futures): (Vec<usize>, Vec<_>) = waiting.into_iter().unzip();
        let results = join_all(futures).await;
        for (i, (result, took)) in indexes.into_iter().zip(results) {
            if result.is_ok() {
                let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                self.metrics.publish_ack_us.record(took_us);
            }
            match result {
                Ok(ack) if ack.duplicate && ack.sequence == 0 => {
                    // The first copy is still being committed: ask again.
                    *last_error = "duplicate still in flight".into();
                }
                Ok(ack) if ack.duplicate => match self.original_of(ack.sequence).await {
                    Ok(original) if original == batch[i].id => {
                        outcomes[i] = Some(AppendOutcome::Stored);
                    }
                    Ok(original) => {
                        self.metrics
                            .duplicates_total
                            .fetch_add(1, Ordering::Relaxed);
                        outcomes[i] = Some(AppendOutcome::Duplicate { original });
                    }
                    Err(e) => *last_error = format!("reading the original of a duplicate: {e}"),
                },
                Ok(_) => outcomes[i] = Some(AppendOutcome::Stored),
                Err(e) => *last_error = format!("PubAck: {e}"),
            }
        }
    }

    /// The id of the message stored at `seq`.
    async fn original_of(&self, seq: u64) -> Result<MessageId> {
        let m = self
            .at_seq(seq)
            .await?
            .ok_or_else(|| StorageError::Io(format!("the original at sequence {seq} is gone")))?;
        Ok(codec::decode_message(&m.payload)?.id)
    }

    /// Between one consumer of a feed (or watch) and the next: `false` when the feed's reader is gone; otherwise
    /// counts the restart and waits `backoff`, doubled for the next time (up to the maximum).
    async fn pause_before_restart(&self, reader_gone: bool, backoff: &mut Duration) -> bool {
        if reader_gone {
            return false;
        }
        self.metrics
            .feed_restarts_total
            .fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_millis(FEED_RETRY_BACKOFF_MS_MAX));
        true
    }

    /// A feed's or a watch's task: see the module docs. `what` names it in the log.
    async fn run_reader<T>(
        self,
        stream: Stream,
        filter: String,
        mut reader: StreamReader<T>,
        what: &str,
    ) {
        let mut backoff = Duration::from_millis(FEED_RETRY_BACKOFF_MS_MIN);
        loop {
            match self.consume(&stream, &filter, &mut reader).await {
                FeedEnd::Closed => return,
                FeedEnd::Progressed(e) => {
                    log::warn!(
                        "{what} of {filter} from {}: {e}; consuming again",
                        reader.next
                    );
                    backoff = Duration::from_millis(FEED_RETRY_BACKOFF_MS_MIN);
                }
                FeedEnd::Failed(e) => {
                    log::warn!("{what} of {filter} from {}: {e}; trying again", reader.next)
                }
            }
            if !self
                .pause_before_restart(reader.tx.is_disconnected(), &mut backoff)
                .await
            {
                return;
            }
        }
    }

    /// One consumer's life: created on `stream` from `feed.next`, pulled in batches until something is wrong (an
    /// error, a gap in its own sequence, a probe that fails or finds it stuck), which ends it; the caller creates
    /// the next one from where this one stopped.
    async fn consume<T>(
        &self,
        stream: &Stream,
        filter: &str,
        feed: &mut StreamReader<T>,
    ) -> FeedEnd {
        let request = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let expires = Duration::from_millis(FEED_PULL_EXPIRES_MS);
        let created = tokio::time::timeout(
            request,
            stream.create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: feed.next,
                },
                filter_subject: filter.to_owned(),
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_millis(FEED_CONSUMER_INACTIVE_MS),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            }),
        )
        .await;
        let mut consumer = match created {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(e)) => return FeedEnd::Failed(format!("creating its consumer: {e}")),
            Err(_) => return FeedEnd::Failed("creating its consumer timed out".into()),
        };
        let started_at = feed.next;
        let end = |feed: &StreamReader<T>, why: String| {
            if feed.next > started_at {
                FeedEnd::Progressed(why)
            } else {
                FeedEnd::Failed(why)
            }
        };
        let mut consumer_seq = 0u64;
        let mut quiet_since = Instant::now();
        loop {
            // The server ends a pull request when it expires, but nats-server 2.9 does not always say so (no
            // `408`) when the request got some messages, and the client would wait 5 s more before asking
            // again: this feed ends each batch itself, a little after its expiry.
            let batch_deadline =
                tokio::time::Instant::now() + expires + Duration::from_millis(FEED_PULL_GRACE_MS);
            let batch = tokio::time::timeout(
                request,
                consumer
                    .batch()
                    .max_messages(FEED_PULL_MESSAGES_MAX)
                    .expires(expires)
                    .messages(),
            )
            .await;
            let mut batch = match batch {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => return end(feed, format!("pull request: {e}")),
                Err(_) => return end(feed, "pull request timed out".into()),
            };
            let mut got = 0usize;
            loop {
                // A message delivered for this request after the deadline (a request that reached the server
                // late) is not lost: the next one's consumer sequence jumps, and the feed starts over from it.
                let item = match tokio::time::timeout_at(batch_deadline, batch.next()).await {
                    Ok(Some(item)) => item,
                    Ok(None) | Err(_) => break,
                };
                let message = match item {
                    Ok(message) => message,
                    Err(e) => return end(feed, format!("pull: {e}")),
                };
                let (seq, delivered_as) = match message.info() {
                    Ok(info) => {
                        feed.pending.store(info.pending, Ordering::Relaxed);
                        (info.stream_sequence, info.consumer_sequence)
                    }
                    Err(e) => return end(feed, format!("message without metadata: {e}")),
                };
                // A consumer numbers what it delivers 1, 2, 3...: a jump means messages were lost on the way.
                if delivered_as != consumer_seq + 1 {
                    return end(
                        feed,
                        format!("consumer skipped from {consumer_seq} to {delivered_as}"),
                    );
                }
                consumer_seq = delivered_as;
                got += 1;
                if !feed.deliver(seq, &message.message).await {
                    return FeedEnd::Closed;
                }
            }
            if got > 0 {
                quiet_since = Instant::now();
                continue;
            }
            if quiet_since.elapsed() >= Duration::from_millis(FEED_PROBE_QUIET_MS) {
                // Quiet for a while: make sure the consumer still exists and is not sitting on messages.
                match tokio::time::timeout(request, consumer.info()).await {
                    Ok(Ok(info)) if info.num_pending == 0 => {
                        feed.pending.store(0, Ordering::Relaxed);
                        quiet_since = Instant::now();
                    }
                    Ok(Ok(info)) => {
                        feed.pending.store(info.num_pending, Ordering::Relaxed);
                        return end(
                            feed,
                            format!("consumer stuck with {} pending", info.num_pending),
                        );
                    }
                    Ok(Err(e)) => return end(feed, format!("consumer gone: {e}")),
                    Err(_) => return end(feed, "consumer info timed out".into()),
                }
            }
        }
    }

    async fn account_entry(&self, login: &str) -> Result<Option<(u64, AccountEntry)>> {
        match self.accounts.get(&subject_token(login)).await? {
            Some((rev, bytes)) => Ok(Some((rev, decode_account_entry(&bytes)?))),
            None => Ok(None),
        }
    }

    async fn put_token(
        &self,
        token_sha256: [u8; 32],
        token: &TokenRecord,
        tokens_per_login_max: usize,
    ) -> Result<()> {
        let now = token.issued_unix_ms;
        self.tokens
            .put(&hex32(&token_sha256), encode_token(token))
            .await?;
        let list_key = subject_token(&token.login);
        for _ in 0..CAS_ATTEMPTS_MAX {
            let current = self.login_tokens.get(&list_key).await?;
            let (revision, mut list) = match &current {
                Some((rev, bytes)) => (Some(*rev), decode_login_tokens(bytes)?),
                None => (None, Vec::new()),
            };
            list.retain(|(_, sha)| *sha != token_sha256);
            // Expired tokens go first, then the oldest live ones beyond the cap (the new one counts).
            let mut revoked = Vec::new();
            let mut live = Vec::with_capacity(list.len() + 1);
            for (issued, sha) in list {
                match self.tokens.get(&hex32(&sha)).await? {
                    Some((_, bytes))
                        if decode_token(&bytes)
                            .is_ok_and(|t| t.is_live(now) && t.login == token.login) =>
                    {
                        live.push((issued, sha));
                    }
                    Some(_) => revoked.push(sha),
                    None => {}
                }
            }
            live.sort_by_key(|(issued, _)| *issued);
            let keep = tokens_per_login_max
                .saturating_sub(1)
                .min(LOGIN_TOKENS_MAX - 1);
            while live.len() > keep {
                revoked.push(live.remove(0).1);
            }
            live.push((token.issued_unix_ms, token_sha256));
            let value = encode_login_tokens(&live);
            let written = match revision {
                Some(rev) => self.login_tokens.update(&list_key, value, rev).await?,
                None => match self.login_tokens.create(&list_key, value).await {
                    Ok(rev) => Some(rev),
                    Err(StorageError::AlreadyExists) => None,
                    Err(e) => return Err(e),
                },
            };
            if written.is_some() {
                for sha in revoked {
                    self.tokens.delete(&hex32(&sha)).await?;
                }
                return Ok(());
            }
        }
        Err(StorageError::Unavailable(format!(
            "the token list of {:?} kept changing",
            token.login
        )))
    }

    async fn rename(&self, old_login: &str, new_login: &str) -> Result<AccountRecord> {
        if old_login == new_login {
            return Err(StorageError::AlreadyExists);
        }
        let old_key = subject_token(old_login);
        let new_key = subject_token(new_login);
        let new_entry = self.account_entry(new_login).await?;
        let old_entry = self.account_entry(old_login).await?;
        let account = match (&old_entry, &new_entry) {
            (Some((_, AccountEntry::Account(old))), None) => {
                let moved = AccountRecord {
                    login: new_login.to_owned(),
                    ..old.clone()
                };
                let claim = AccountEntry::Claim {
                    from: old_login.to_owned(),
                    account: moved.clone(),
                };
                self.accounts
                    .create(&new_key, encode_account_entry(&claim)?)
                    .await?;
                moved
            }
            // A retry of a rename cut off after its claim, or after it wrote the new account.
            (
                Some((_, AccountEntry::Account(old))),
                Some((_, AccountEntry::Claim { from, account })),
            ) if from == old_login && account.user_id == old.user_id => account.clone(),
            (Some((_, AccountEntry::Account(old))), Some((_, AccountEntry::Account(new))))
                if new.user_id == old.user_id =>
            {
                new.clone()
            }
            (Some((_, AccountEntry::Account(_))), Some(_)) => {
                return Err(StorageError::AlreadyExists);
            }
            _ => return Err(StorageError::NotFound(format!("account {old_login:?}"))),
        };
        // Move the tokens: every token record of the old login now names the new one, and the list follows.
        let old_list = match self.login_tokens.get(&old_key).await? {
            Some((_, bytes)) => decode_login_tokens(&bytes)?,
            None => Vec::new(),
        };
        for (_, sha) in &old_list {
            if let Some((_, bytes)) = self.tokens.get(&hex32(sha)).await? {
                let mut token = decode_token(&bytes)?;
                if token.login == old_login {
                    token.login = new_login.to_owned();
                    self.tokens.put(&hex32(sha), encode_token(&token)).await?;
                }
            }
        }
        if !old_list.is_empty() {
            self.login_tokens
                .put(&new_key, encode_login_tokens(&old_list))
                .await?;
        }
        self.accounts
            .put(
                &new_key,
                encode_account_entry(&AccountEntry::Account(account.clone()))?,
            )
            .await?;
        self.accounts.delete(&old_key).await?;
        self.login_tokens.delete(&old_key).await?;
        Ok(account)
    }

    /// Every settings key under the scope's tokens, with its value (last per key, deletions skipped).
    async fn scan_scope(&self, scope_filter: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let subject = format!("$KV.{}.{scope_filter}.>", self.settings.name);
        let prefix_len = format!("$KV.{}.", self.settings.name).len();
        let consumer = bounded("settings read", async {
            self.settings
                .kv
                .stream
                .create_consumer(OrderedConfig {
                    filter_subject: subject.clone(),
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(io)
        })
        .await?;
        let mut consumer = consumer;
        let pending = bounded("settings read", async {
            Ok(consumer.info().await.map_err(io)?.num_pending)
        })
        .await?;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(out);
        }
        if pending as usize > SETTINGS_SCAN_KEYS_MAX {
            return Err(StorageError::Io(format!(
                "settings scope {scope_filter} holds {pending} keys, more than {SETTINGS_SCAN_KEYS_MAX}"
            )));
        }
        let mut messages = bounded("settings read", async {
            consumer.messages().await.map_err(io)
        })
        .await?;
        loop {
            let message =
                tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), messages.next())
                    .await
                    .map_err(|_| io("settings read timed out"))?
                    .ok_or_else(|| io("settings read ended early"))?
                    .map_err(io)?;
            let left = message.info().map_err(io)?.pending;
            let tombstone = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"));
            if !tombstone {
                let key = setting_key_of(&message.subject[prefix_len..])
                    .ok_or_else(|| corrupt(format!("settings key {}", message.subject)))?;
                out.push((key, message.payload.to_vec()));
            }
            if left == 0 {
                return Ok(out);
            }
        }
    }
}

impl Store for NatsStore {
    fn append_messages(&self, batch: &[MessageRecord]) -> Result<()> {
        self.append_messages_with_outcomes(batch).map(|_| ())
    }

    fn append_messages_with_outcomes(&self, batch: &[MessageRecord]) -> Result<Vec<AppendOutcome>> {
        self.runtime.block_on(self.inner.append(batch))
    }

    fn recent_messages(&self, room: &str, limit: usize) -> Result<Vec<MessageRecord>> {
        Ok(self
            .recent_with_seq(room, limit)?
            .messages
            .into_iter()
            .map(|item| item.record)
            .collect())
    }

    fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        check_room(room)?;
        self.runtime.block_on(async {
            let hi = match before {
                None => match self
                    .inner
                    .room_last(&self.inner.names.room_subject(room))
                    .await?
                {
                    Some(m) => m.sequence,
                    None => return Ok(Vec::new()),
                },
                Some(id) => match self.inner.locate(room, id).await? {
                    Located::Found(seq) | Located::Before(seq) => seq.saturating_sub(1),
                },
            };
            if hi == 0 || limit == 0 {
                return Ok(Vec::new());
            }
            let items = self.inner.walk_back(room, hi, limit).await?;
            Ok(items.into_iter().map(|item| item.record).collect())
        })
    }

    fn messages_after(
        &self,
        room: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        check_room(room)?;
        self.runtime.block_on(async {
            let lo = match self.inner.locate(room, after).await? {
                Located::Found(seq) => seq + 1,
                Located::Before(seq) => seq,
            };
            if limit == 0 {
                return Ok(Vec::new());
            }
            let items = self.inner.walk_forward(room, lo, limit).await?;
            Ok(items.into_iter().map(|item| item.record).collect())
        })
    }

    fn create_account(&self, account: &AccountRecord) -> Result<()> {
        self.runtime.block_on(async {
            let entry = encode_account_entry(&AccountEntry::Account(account.clone()))?;
            self.inner
                .accounts
                .create(&subject_token(&account.login), entry)
                .await
                .map(|_| ())
        })
    }

    fn account(&self, login: &str) -> Result<Option<AccountRecord>> {
        self.runtime.block_on(async {
            Ok(match self.inner.account_entry(login).await? {
                Some((_, AccountEntry::Account(account))) => Some(account),
                _ => None,
            })
        })
    }

    fn put_token(
        &self,
        token_sha256: [u8; 32],
        token: &TokenRecord,
        tokens_per_login_max: usize,
    ) -> Result<()> {
        self.runtime.block_on(
            self.inner
                .put_token(token_sha256, token, tokens_per_login_max),
        )
    }

    fn token(&self, token_sha256: [u8; 32]) -> Result<Option<TokenRecord>> {
        self.runtime.block_on(async {
            match self.inner.tokens.get(&hex32(&token_sha256)).await? {
                Some((_, bytes)) => Ok(Some(decode_token(&bytes)?)),
                None => Ok(None),
            }
        })
    }

    fn revoke_token(&self, token_sha256: [u8; 32]) -> Result<bool> {
        self.runtime.block_on(async {
            let key = hex32(&token_sha256);
            if self.inner.tokens.get(&key).await?.is_none() {
                return Ok(false);
            }
            // The login's list keeps the entry until its next grant, which drops tokens that no longer exist.
            self.inner.tokens.delete(&key).await?;
            Ok(true)
        })
    }

    fn rename_account(&self, old_login: &str, new_login: &str) -> Result<AccountRecord> {
        self.runtime
            .block_on(self.inner.rename(old_login, new_login))
    }

    fn delete_message(&self, room: &str, id: MessageId) -> Result<bool> {
        check_room(room)?;
        self.runtime.block_on(async {
            match self.inner.locate(room, id).await? {
                Located::Found(_) => {
                    self.inner
                        .deleted
                        .put(&Inner::deleted_key(room, id), Bytes::from_static(b"1"))
                        .await?;
                    Ok(true)
                }
                Located::Before(_) => Ok(false),
            }
        })
    }

    fn put_setting(&self, key: &str, value: &[u8]) -> Result<()> {
        settings::key_scope(key)?;
        settings::check_value(value)?;
        self.runtime.block_on(async {
            self.inner
                .settings
                .put(&setting_kv_key(key), Bytes::copy_from_slice(value))
                .await
                .map(|_| ())
        })
    }

    fn delete_setting(&self, key: &str) -> Result<()> {
        settings::key_scope(key)?;
        self.runtime
            .block_on(self.inner.settings.delete(&setting_kv_key(key)))
    }

    fn settings(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let scope = settings::prefix_scope(prefix)?;
        let scope_filter = setting_kv_key(scope);
        self.runtime.block_on(async {
            let mut all = self.inner.scan_scope(&scope_filter).await?;
            all.retain(|(key, _)| key.starts_with(prefix));
            all.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            all.truncate(limit);
            Ok(all)
        })
    }

    fn health(&self) -> Health {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => Health::Healthy,
            state => Health::Unavailable(format!("not connected to the NATS cluster ({state})")),
        }
    }

    fn metrics_text(&self) -> String {
        let connected = matches!(
            self.inner.client.connection_state(),
            async_nats::connection::State::Connected
        );
        self.inner.metrics.render(connected, self.replicas)
    }

    fn recover(&self) -> Result<()> {
        self.runtime.block_on(bounded("stream info", async {
            self.inner.messages.get_info().await.map_err(io).map(|_| ())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_are_safe_and_injective() {
        for (room, token) in [
            ("forsen", "forsen"),
            ("a.b", "a=2eb"),
            ("a b*>", "a=20b=2a=3e"),
            ("", "="),
            ("=", "=3d"),
            ("Ünï", "=c3=9cn=c3=af"),
        ] {
            assert_eq!(subject_token(room), token);
            assert_eq!(decode_subject_token(token).as_deref(), Some(room));
        }
        let mut seen = HashSet::new();
        for room in ["a.b", "a=2eb", "a_b", "a-b", "ab", "a", "=", ""] {
            let token = subject_token(room);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b))
            );
            assert!(seen.insert(token), "{room}");
        }
        assert_eq!(decode_subject_token("=zz"), None);
        assert_eq!(decode_subject_token("=4"), None);
    }

    #[test]
    fn settings_keys_round_trip_through_kv_keys() {
        for key in ["room/lobby/ban/42", "user/42/profile", "room/a.b/x y"] {
            let kv_key = setting_kv_key(key);
            assert!(!kv_key.contains('/'), "{kv_key}");
            assert_eq!(setting_key_of(&kv_key).as_deref(), Some(key));
        }
    }

    fn record(nonce: &str, original: &str, id: u128) -> MessageRecord {
        MessageRecord {
            id: MessageId(id),
            room: "lobby".into(),
            user_id: 7,
            login: "alice".into(),
            display_name: "Alice".into(),
            color: String::new(),
            badges: String::new(),
            text: format!("skibidi {original}"),
            original: original.into(),
            styled_by: "local".into(),
            client_nonce: nonce.into(),
        }
    }

    #[test]
    fn msg_ids_follow_the_engines_idempotency_key() {
        // The same nonce and text from another node (another id) is the same Msg-Id.
        assert_eq!(
            msg_id(&record("n1", "hi", 1)),
            msg_id(&record("n1", "hi", 2))
        );
        // A reused nonce with another text, another nonce, or another user or room is not.
        assert_ne!(
            msg_id(&record("n1", "hi", 1)),
            msg_id(&record("n1", "ho", 1))
        );
        assert_ne!(
            msg_id(&record("n1", "hi", 1)),
            msg_id(&record("n2", "hi", 1))
        );
        let mut other_user = record("n1", "hi", 1);
        other_user.user_id = 8;
        assert_ne!(msg_id(&record("n1", "hi", 1)), msg_id(&other_user));
        let mut other_room = record("n1", "hi", 1);
        other_room.room = "lobby2".into();
        assert_ne!(msg_id(&record("n1", "hi", 1)), msg_id(&other_room));
        // Length-prefixed parts: moving bytes between nonce and room does not collide.
        let mut a = record("xn1", "hi", 1);
        a.room = "lobb".into();
        assert_ne!(msg_id(&a), msg_id(&record("n1", "hi", 1)));
        // Without a nonce, the message id.
        assert_eq!(msg_id(&record("", "hi", 0xab)), format!("i-{:032x}", 0xab));
        assert_ne!(msg_id(&record("", "hi", 1)), msg_id(&record("", "hi", 2)));
    }

    #[test]
    fn stored_values_round_trip() {
        let token = TokenRecord {
            login: "alice".into(),
            issued_unix_ms: 5,
            expires_unix_ms: 10,
        };
        assert_eq!(decode_token(&encode_token(&token)).unwrap(), token);
        assert!(matches!(
            decode_token(b"short"),
            Err(StorageError::Corrupt(_))
        ));
        let list = vec![(1, [1; 32]), (2, [2; 32])];
        assert_eq!(
            decode_login_tokens(&encode_login_tokens(&list)).unwrap(),
            list
        );
        assert!(decode_login_tokens(&[0; 39]).is_err());
        let account = AccountRecord {
            login: "bob_2".into(),
            user_id: 9,
            password_hash: "$argon2id$x".into(),
            color: "#00FF00".into(),
            created_unix_ms: 3,
        };
        for entry in [
            AccountEntry::Account(account.clone()),
            AccountEntry::Claim {
                from: "bob".into(),
                account,
            },
        ] {
            assert_eq!(
                decode_account_entry(&encode_account_entry(&entry).unwrap()).unwrap(),
                entry
            );
        }
        assert!(decode_account_entry(&[7]).is_err());
    }

    #[test]
    fn too_few_servers_is_recognised() {
        assert!(too_few_servers("insufficient resources (10023)"));
        assert!(too_few_servers(
            "replicas > 1 not supported in non-clustered mode"
        ));
        assert!(!too_few_servers("stream name already in use"));
    }
}
