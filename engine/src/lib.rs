//! Twitchy Chat's engine: a thread-per-core live chat server speaking Twitch's IRC dialect.
//!
//! - [`protocol`]: sans-IO Twitch IRC — line framing, IRCv3 tags, the per-connection session state machine, and
//!   encoders for server lines. No sockets, no clocks.
//! - [`core`]: the sans-IO shard core — connections, sequencing on a room's home shard (commit, then deliver),
//!   idempotent resend, subscriptions, fanout — as a deterministic state machine, tested by simulation.
//! - [`shard`]: the glommio driver of one core: cross-shard channels, timers, and the tasks that wait on the
//!   authenticator, styler and store. [`conn`]: the socket driver of one connection.
//! - [`placement`]: which CPUs shards and helper threads run on. [`stall`]: guards against a glommio scheduler bug
//!   that can leave a shard asleep with work to do.
//! - [`http`]: hyper on glommio — JSON API, metrics, web client, WebSocket upgrade.
//! - [`auth`]: accounts and tokens, password hashing off the shards. [`throttle`]: sign-in limits.
//!   [`ratelimit`]: per-user message limits. [`config`]: flags and rooms file.
//! - [`tls`]: TLS termination (rustls) for HTTPS, WSS and IRC over TLS, with certificate reload.
//! - [`server`]: start and stop everything.

pub mod auth;
pub mod config;
pub mod conn;
pub mod core;
pub mod http;
pub mod ip_limit;
pub mod metrics;
pub mod placement;
pub mod protocol;
pub mod ratelimit;
pub mod server;
pub mod shard;
pub mod stall;
pub mod throttle;
pub mod tls;
