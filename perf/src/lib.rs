//! Load generator, baseline server and report tooling for Twitchy Chat.
//!
//! The crate is built around one pipeline: a [`scenario::Scenario`] says what
//! to connect and how fast to send; [`load`] drives it against one or more
//! servers over real sockets (one thread, a tokio `LocalSet`, so the server
//! under test keeps the machine's other core); [`stats`] turns what arrived
//! into a serializable summary; [`report`] draws it as HTML/SVG, and
//! [`results`] gathers summaries and criterion estimates into `RESULTS.md`.
//!
//! Protocol handling is sans-IO and shared by both ends: [`irc`] splits and
//! parses lines and encodes the `client-nonce` that carries each message's
//! intended send time (so latency counts send-side queueing, not only the
//! server); [`ws`] frames WebSocket by hand so plain TCP and WebSocket share
//! one cancel-safe read path; [`http`] covers the few HTTP calls. [`conn`] is
//! the socket edge.
//!
//! [`naive`] is the baseline: the same dialect served by one thread per
//! connection and one global lock, so reports can state Twitchy's figures as
//! ratios measured in the same run on the same machine.

pub mod conn;
pub mod http;
pub mod irc;
pub mod load;
pub mod naive;
pub mod report;
pub mod results;
pub mod scenario;
pub mod stats;
pub mod ws;
