//! Twitchy Chat's engine: a thread-per-core live chat server speaking Twitch's IRC dialect.
//!
//! - [`protocol`]: sans-IO Twitch IRC — line framing, IRCv3 tags, the per-connection session state machine, and
//!   encoders for server lines. No sockets, no clocks.
//! - [`shard`]: one glommio executor per core; room routing ([`shard::home_shard`]), sequencing on the room's home
//!   shard, cross-shard messages, and fanout (encode once per shard, share the bytes).
//! - [`conn`]: client connections (TCP IRC and WebSocket IRC) with bounded outbound queues.
//! - [`http`]: hyper on glommio — JSON API, metrics, web client, WebSocket upgrade.
//! - [`auth`]: accounts and tokens. [`ratelimit`]: per-user message limits. [`config`]: flags and rooms file.
//! - [`server`]: start and stop everything.

pub mod auth;
pub mod config;
pub mod conn;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod server;
pub mod shard;
