//! Command line, environment and the rooms file.
//!
//! Every option is a flag and an environment variable (`TWITCHY_*`). The rooms file (TOML) lists the preset rooms
//! and their styles; without one, three built-in rooms are served.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

/// Twitchy Chat: a thread-per-core live chat server that speaks Twitch's IRC dialect over WebSocket and TCP, and
/// rewrites every message in its room's style.
#[derive(Parser, Debug, Clone)]
#[command(name = "twitchy", version, about, long_about = None)]
pub struct Args {
    /// Address for HTTP, the web client and WebSocket IRC (path `/`).
    #[arg(long, env = "TWITCHY_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// Address for plain TCP IRC.
    #[arg(long, env = "TWITCHY_IRC", default_value = "127.0.0.1:6667")]
    pub irc: SocketAddr,

    /// PEM certificate chain for TLS. With `--tls-key`, the HTTP listener speaks only TLS (`https://`, `wss://`)
    /// and `--irc-tls` may add an IRC-over-TLS listener. SIGHUP reloads both files.
    #[arg(long, env = "TWITCHY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "TWITCHY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Address for IRC over TLS (Twitch uses port 6697); needs `--tls-cert` and `--tls-key`.
    #[arg(long, env = "TWITCHY_IRC_TLS", requires = "tls_cert")]
    pub irc_tls: Option<SocketAddr>,

    /// Time a client has to complete the TLS handshake after connecting.
    #[arg(
        long,
        env = "TWITCHY_TLS_HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub tls_handshake_timeout_ms: u64,

    /// Directory of the embedded store.
    #[arg(long, env = "TWITCHY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Number of shards (one glommio executor per core); 0 means one per CPU in `--cpus` (or per CPU this process
    /// may run on).
    #[arg(long, env = "TWITCHY_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// CPUs to pin shards to, e.g. `0,2-3`; they must be inside the process's allowed set (`taskset`, cpuset).
    /// Allowed CPUs not listed here run the storage, styler and hashing threads. Empty: every allowed CPU.
    #[arg(long, env = "TWITCHY_CPUS", default_value = "")]
    pub cpus: String,

    /// A busy room's write delay: a room whose previous lines left less than this long ago holds its new lines
    /// until this long after, so its viewers get several lines per write (0: write as soon as the shard has worked
    /// through its current batch of events). Quiet rooms, replies, acks and notices never wait.
    #[arg(long, env = "TWITCHY_WRITE_DELAY_MS", default_value_t = 0)]
    pub write_delay_ms: u64,

    /// Rooms file (TOML). Without it, the built-in rooms are served.
    #[arg(long, env = "TWITCHY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Server name used in IRC prefixes; Twitch clients match on `tmi.twitch.tv`.
    #[arg(long, env = "TWITCHY_SERVER_NAME", default_value = "tmi.twitch.tv")]
    pub server_name: String,

    /// This node's id, part of every message id (unique per node in a cluster).
    #[arg(long, env = "TWITCHY_NODE_ID", default_value_t = 0)]
    pub node_id: u16,

    /// NATS servers of the cluster, `nats://host:port[,nats://host:port…]`: every node given the same servers shares
    /// every room (messages, history, accounts, tokens and moderation state live in JetStream). Empty: one node,
    /// the embedded store (or `--store scylla`).
    #[arg(long, env = "TWITCHY_CLUSTER", default_value = "")]
    pub cluster: String,

    /// Replicas of the cluster's stream and key-value buckets (capped by the number of NATS servers).
    #[arg(long, env = "TWITCHY_CLUSTER_REPLICAS", default_value_t = 3)]
    pub cluster_replicas: usize,

    /// The cluster keeps messages this many days (older ones are discarded from the shared log).
    #[arg(long, env = "TWITCHY_CLUSTER_RETENTION_DAYS", default_value_t = 7)]
    pub cluster_retention_days: u64,

    /// The cluster keeps at most this many bytes of messages (the oldest go first); it must fit the NATS servers'
    /// JetStream file storage.
    #[arg(
        long,
        env = "TWITCHY_CLUSTER_RETENTION_BYTES",
        default_value_t = 10 << 30
    )]
    pub cluster_retention_bytes: u64,

    /// Storage backend: `embedded` (in the data dir) or `scylla`.
    #[arg(long, env = "TWITCHY_STORE", default_value = "embedded", value_parser = ["embedded", "scylla"])]
    pub store: String,

    /// ScyllaDB contact points, comma separated `host:port` (with `--store scylla`).
    #[arg(long, env = "TWITCHY_SCYLLA_NODES", value_delimiter = ',')]
    pub scylla_nodes: Vec<String>,

    /// ScyllaDB keyspace (created on first start).
    #[arg(long, env = "TWITCHY_SCYLLA_KEYSPACE", default_value = "twitchy")]
    pub scylla_keyspace: String,

    /// ScyllaDB replication factor for a new keyspace.
    #[arg(long, env = "TWITCHY_SCYLLA_REPLICATION_FACTOR", default_value_t = 3)]
    pub scylla_replication_factor: u32,

    /// vLLM (OpenAI-compatible) endpoints, comma separated base URLs. Empty: the local rewriter styles everything.
    #[arg(long, env = "TWITCHY_VLLM", value_delimiter = ',')]
    pub vllm: Vec<String>,

    /// Model name served by the vLLM endpoints.
    #[arg(long, env = "TWITCHY_VLLM_MODEL", default_value = "tiny")]
    pub vllm_model: String,

    /// Chat template applied to prompts client-side: `chatml` (SmolLM2, Qwen), `llama3`, or `plain` (base models).
    #[arg(long, env = "TWITCHY_VLLM_CHAT_TEMPLATE", default_value = "chatml")]
    pub vllm_chat_template: String,

    /// Prompts sent to the model in one request (a list of prompts per batch).
    #[arg(long, env = "TWITCHY_STYLE_BATCH_PROMPTS_MAX", default_value_t = 32)]
    pub style_batch_prompts_max: usize,

    /// Requests in flight per model endpoint (a small CPU server wants 1).
    #[arg(
        long,
        env = "TWITCHY_STYLE_REQUESTS_IN_FLIGHT_MAX",
        default_value_t = 16
    )]
    pub style_requests_in_flight_max: usize,

    /// Deadline for the LLM's rewrite of one message; later, the local rewrite is used.
    #[arg(long, env = "TWITCHY_STYLE_DEADLINE_MS", default_value_t = 150)]
    pub style_deadline_ms: u64,

    /// Messages a user may send per window (per room).
    #[arg(long, env = "TWITCHY_RATE_LIMIT_MESSAGES", default_value_t = 20)]
    pub rate_limit_messages: u32,

    /// Messages a moderator may send per window (per room).
    #[arg(long, env = "TWITCHY_RATE_LIMIT_MESSAGES_MOD", default_value_t = 100)]
    pub rate_limit_messages_mod: u32,

    /// Length of the rate-limit window.
    #[arg(long, env = "TWITCHY_RATE_LIMIT_WINDOW_MS", default_value_t = 30_000)]
    pub rate_limit_window_ms: u64,

    /// JOINs a connection may send per window.
    #[arg(long, env = "TWITCHY_JOINS_PER_WINDOW_MAX", default_value_t = 20)]
    pub joins_per_window_max: u32,

    /// Length of the JOIN rate window.
    #[arg(long, env = "TWITCHY_JOIN_WINDOW_MS", default_value_t = 10_000)]
    pub join_window_ms: u64,

    /// Bytes queued for one client before it is disconnected as too slow.
    #[arg(long, env = "TWITCHY_OUTBOUND_QUEUE_BYTES_MAX", default_value_t = 1 << 20)]
    pub outbound_queue_bytes_max: usize,

    /// Bytes queued for all of one shard's clients together; past it the clients furthest behind are disconnected
    /// (with `RECONNECT`), slowest first, until the shard is back under it.
    #[arg(
        long,
        env = "TWITCHY_OUTBOUND_BYTES_PER_SHARD_MAX",
        default_value_t = 512 << 20
    )]
    pub outbound_bytes_per_shard_max: usize,

    /// Kernel send buffer per client socket (SO_SNDBUF), bytes; 0 keeps the kernel's autotuning. A small buffer
    /// bounds kernel memory per connection and makes `--outbound-queue-bytes-max` the real limit on lag.
    #[arg(long, env = "TWITCHY_SOCKET_SEND_BUFFER_BYTES", default_value_t = 0)]
    pub socket_send_buffer_bytes: usize,

    /// Connections one shard accepts (chat over TCP and WebSocket, and HTTP); more are refused (HTTP with `429`).
    #[arg(
        long,
        env = "TWITCHY_CONNECTIONS_PER_SHARD_MAX",
        default_value_t = 20_000
    )]
    pub connections_per_shard_max: usize,

    /// Chat and HTTP connections one client address may hold at once, over all shards; more are refused (IRC with
    /// a NOTICE, HTTP with `429`). `--limits-exempt-loopback` lifts it for 127.0.0.1 and ::1.
    #[arg(long, env = "TWITCHY_CONNECTIONS_PER_IP_MAX", default_value_t = 200)]
    pub connections_per_ip_max: u32,

    /// A connection that has not finished registering (NICK, and `CAP END` after `CAP LS`) this long after it
    /// opened is closed with a NOTICE.
    #[arg(
        long,
        env = "TWITCHY_REGISTRATION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub registration_timeout_ms: u64,

    /// Serve `/metrics` on this separate address instead of the main HTTP port (which then answers 404 there).
    #[arg(long, env = "TWITCHY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// HTTP: time a client has to send a whole request head; past it the request gets `408` and the connection
    /// closes.
    #[arg(long, env = "TWITCHY_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,

    /// HTTP: time a client has to send a whole request body, from the end of its head (a body trickling in is
    /// cut with `408`).
    #[arg(long, env = "TWITCHY_HTTP_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_body_timeout_ms: u64,

    /// HTTP: a keep-alive connection idle this long between requests is closed.
    #[arg(
        long,
        env = "TWITCHY_HTTP_KEEP_ALIVE_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub http_keep_alive_timeout_ms: u64,

    /// Send PING to a client that has been silent this long.
    #[arg(long, env = "TWITCHY_IDLE_PING_SECS", default_value_t = 60)]
    pub idle_ping_secs: u64,

    /// Drop a client that has been silent this long (it did not answer PING).
    #[arg(long, env = "TWITCHY_IDLE_TIMEOUT_SECS", default_value_t = 90)]
    pub idle_timeout_secs: u64,

    /// io_uring registered memory per shard, KiB (locked memory is scarce; keep it small).
    #[arg(long, env = "TWITCHY_IO_MEMORY_KIB", default_value_t = 512)]
    pub io_memory_kib: usize,

    /// Longest a shard runs tasks before it polls the network again, milliseconds. Lower keeps latency flat when a
    /// shard is busy (glommio's default is 100 ms); higher trades latency for throughput.
    #[arg(long, env = "TWITCHY_TASK_PREEMPT_MS", default_value_t = 10)]
    pub task_preempt_ms: u64,

    /// Log glommio task stalls longer than this many milliseconds (0: off).
    #[arg(long, env = "TWITCHY_DETECT_STALLS_MS", default_value_t = 0)]
    pub detect_stalls_ms: u64,

    /// Days a login token stays valid.
    #[arg(long, env = "TWITCHY_TOKEN_TTL_DAYS", default_value_t = 30)]
    pub token_ttl_days: u64,

    /// Live tokens one login may hold; logging in once more revokes the oldest.
    #[arg(long, env = "TWITCHY_TOKENS_PER_LOGIN_MAX", default_value_t = 10)]
    pub tokens_per_login_max: usize,

    /// Storage: longest wait to fill a write batch after its first message.
    #[arg(long, env = "TWITCHY_STORAGE_BATCH_WAIT_US", default_value_t = 500)]
    pub storage_batch_wait_us: u64,

    /// Storage: messages queued for writing before senders are told to try again.
    #[arg(
        long,
        env = "TWITCHY_STORAGE_QUEUE_MESSAGES_MAX",
        default_value_t = 65_536
    )]
    pub storage_queue_messages_max: usize,

    /// Password-hashing threads (0: one per CPU no shard uses, at least 1, at most 4).
    #[arg(long, env = "TWITCHY_AUTH_THREADS", default_value_t = 0)]
    pub auth_threads: usize,

    /// Sign-ins (logins and registrations) waiting for a hashing thread; past this they are answered 503 at once.
    #[arg(long, env = "TWITCHY_AUTH_QUEUE_MAX", default_value_t = 64)]
    pub auth_queue_max: usize,

    /// Wrong passwords for one account inside the sign-in window before it is locked (the lock starts at 30 s and
    /// doubles with each further failure, up to 15 minutes).
    #[arg(
        long,
        env = "TWITCHY_LOGIN_FAILURES_PER_ACCOUNT_MAX",
        default_value_t = 5
    )]
    pub login_failures_per_account_max: u32,

    /// Wrong passwords from one address (over any accounts) inside the sign-in window before it is locked.
    #[arg(long, env = "TWITCHY_LOGIN_FAILURES_PER_IP_MAX", default_value_t = 20)]
    pub login_failures_per_ip_max: u32,

    /// Accounts one address may create per sign-in window.
    #[arg(long, env = "TWITCHY_REGISTRATIONS_PER_IP_MAX", default_value_t = 10)]
    pub registrations_per_ip_max: u32,

    /// The window the sign-in limits count in, seconds.
    #[arg(long, env = "TWITCHY_SIGN_IN_WINDOW_SECS", default_value_t = 900)]
    pub sign_in_window_secs: u64,

    /// Exempt loopback addresses from the per-address limits (for load tests from the same machine).
    #[arg(long, env = "TWITCHY_LIMITS_EXEMPT_LOOPBACK", default_value_t = false)]
    pub limits_exempt_loopback: bool,
}

/// Most password-hashing threads chosen automatically.
pub const AUTH_THREADS_AUTO_MAX: usize = 4;

/// One preset room.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    /// Lowercase name without `#`.
    pub name: String,
    /// Style name (see `twitchy_inference::style_names`).
    pub style: String,
    /// Numeric room id for the `room-id` tag; derived from the name when absent.
    #[serde(default)]
    pub id: Option<u64>,
    /// Logins with the moderator badge and the higher rate limit in this room (`/unmod` can revoke it).
    #[serde(default)]
    pub moderators: Vec<String>,
    /// The room's owner: the broadcaster badge, and the only one who may `/mod` and `/vip`.
    #[serde(default)]
    pub broadcaster: Option<String>,
    /// Logins with the VIP badge (exempt from slow mode and AutoMod's link rule).
    #[serde(default)]
    pub vips: Vec<String>,
    /// What AutoMod does with a message it flags: `off`, `block` (refused, told to the sender only) or `hold`
    /// (moderators allow or deny it).
    #[serde(default)]
    pub automod: AutoModMode,
    /// Phrases AutoMod flags from the start; moderators add and remove more with `/automod add|remove`.
    #[serde(default)]
    pub banned_phrases: Vec<String>,
}

/// What AutoMod does with a message it flags.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AutoModMode {
    #[default]
    Off,
    Block,
    Hold,
}

impl AutoModMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AutoModMode::Off => "off",
            AutoModMode::Block => "block",
            AutoModMode::Hold => "hold",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomsFile {
    rooms: Vec<RoomConfig>,
}

/// Rooms a server may have at most (room state is per shard and preallocated).
pub const ROOMS_MAX: usize = 1024;

/// The built-in rooms file.
pub const DEFAULT_ROOMS_TOML: &str = r#"
[[rooms]]
name = "lobby"
style = "brainrot"

[[rooms]]
name = "tavern"
style = "pirate"

[[rooms]]
name = "globe"
style = "shakespeare"
"#;

/// Errors in the rooms file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid rooms file: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid rooms file: {0}")]
    Invalid(String),
}

/// Parses and validates a rooms file.
pub fn parse_rooms(text: &str) -> Result<Vec<RoomConfig>, ConfigError> {
    let file: RoomsFile = toml::from_str(text)?;
    if file.rooms.is_empty() {
        return Err(ConfigError::Invalid("no rooms".into()));
    }
    if file.rooms.len() > ROOMS_MAX {
        return Err(ConfigError::Invalid(format!("more than {ROOMS_MAX} rooms")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut rooms = Vec::with_capacity(file.rooms.len());
    for mut room in file.rooms {
        if !valid_room_name(&room.name) {
            return Err(ConfigError::Invalid(format!(
                "room name {:?}: use 1-25 characters of [a-z0-9_]",
                room.name
            )));
        }
        if !seen.insert(room.name.clone()) {
            return Err(ConfigError::Invalid(format!(
                "room {:?} listed twice",
                room.name
            )));
        }
        if !twitchy_inference::style_names().contains(&room.style.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "room {:?}: unknown style {:?} (known: {})",
                room.name,
                room.style,
                twitchy_inference::style_names().join(", ")
            )));
        }
        let lower = |logins: &[String]| -> Vec<String> {
            logins.iter().map(|m| m.to_ascii_lowercase()).collect()
        };
        room.moderators = lower(&room.moderators);
        room.vips = lower(&room.vips);
        room.broadcaster = room.broadcaster.map(|b| b.to_ascii_lowercase());
        rooms.push(room);
    }
    Ok(rooms)
}

/// Loads the rooms file named on the command line, or the built-in one.
pub fn load_rooms(path: Option<&PathBuf>) -> Result<Vec<RoomConfig>, ConfigError> {
    match path {
        None => parse_rooms(DEFAULT_ROOMS_TOML),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            parse_rooms(&text)
        }
    }
}

/// Room names follow Twitch's login rules, loosened to allow short names.
pub fn valid_room_name(name: &str) -> bool {
    (1..=25).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A stable numeric id for a room without an explicit one (FNV-1a, 31 bits so every client parses it).
pub fn derived_room_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash & 0x7fff_ffff).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rooms_have_distinct_styles() {
        let rooms = parse_rooms(DEFAULT_ROOMS_TOML).unwrap();
        assert_eq!(rooms.len(), 3);
        let styles: std::collections::HashSet<_> = rooms.iter().map(|r| r.style.clone()).collect();
        assert_eq!(styles.len(), 3);
    }

    #[test]
    fn bad_rooms_files_are_rejected_with_a_reason() {
        let cases = [
            ("rooms = []", "no rooms"),
            (
                "[[rooms]]\nname = \"Bad Name\"\nstyle = \"pirate\"",
                "room name",
            ),
            ("[[rooms]]\nname = \"a\"\nstyle = \"nope\"", "unknown style"),
            (
                "[[rooms]]\nname = \"a\"\nstyle = \"pirate\"\n[[rooms]]\nname = \"a\"\nstyle = \"pirate\"",
                "twice",
            ),
            (
                "[[rooms]]\nname = \"a\"\nstyle = \"pirate\"\ncolour = 1",
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let err = parse_rooms(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn derived_room_ids_are_stable_and_positive() {
        assert_eq!(derived_room_id("lobby"), derived_room_id("lobby"));
        assert_ne!(derived_room_id("lobby"), derived_room_id("tavern"));
        assert!(derived_room_id("x") > 0 && derived_room_id("x") < (1 << 31));
    }
}
