//! The sans-IO Twitch chat protocol: framing, IRC parsing and encoding, Twitch's server lines,
//! and the per-connection state machine.
//!
//! **Architecture invariant:** nothing in this module does IO, reads a clock or spawns a task.
//! Transports feed it bytes or lines plus `now_ms` and write back the bytes it returns; the
//! engine answers its requests (authenticate, join) by calling back into the session.
//!
//! - [`line`] cuts TCP byte streams and WebSocket frames into lines.
//! - [`irc`] parses a line into a borrowed [`irc::Message`] and encodes generic lines.
//! - [`tags`] escapes and unescapes IRCv3 tag values.
//! - [`twitch`] encodes the lines a Twitch server sends (PRIVMSG, USERSTATE, NOTICE, ...).
//! - [`commands`] parses Twitch's chat commands (`/timeout`, `/ban`, `/slow`, `/color`, …) and names the roles.
//! - [`emotes`] is the global emote set (codes and ids).
//! - [`session`] is the per-connection state machine.
//! - [`ws`] decodes client WebSocket frames and writes server frame headers.
//! - [`fuzzing`] is the shared body of the fuzz target and its seeded unit-test stand-in.

pub mod commands;
pub mod emotes;
pub mod fuzzing;
pub mod irc;
pub mod line;
pub mod session;
pub mod tags;
pub mod twitch;
pub mod ws;

#[cfg(test)]
pub(crate) mod test_rng {
    /// SplitMix64: a tiny deterministic generator so randomized tests print and reuse a seed.
    pub struct TestRng(u64);

    impl TestRng {
        pub fn new(seed: u64) -> Self {
            TestRng(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// A value in `0..bound` (`bound` > 0).
        pub fn below(&mut self, bound: u64) -> u64 {
            self.next_u64() % bound
        }
    }
}
