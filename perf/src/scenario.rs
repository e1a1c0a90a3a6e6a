//! Load scenarios: what to connect, how fast to send, for how long.
//!
//! The named presets scale the seed's workload (3 rooms, 417 messages/s on
//! average, 41,667 messages/s at peak) to one 2-core machine that also runs
//! the load generator. Each has a `quick` variant small enough for CI.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket on the HTTP address, subprotocol `irc`.
    Ws,
    /// Plain TCP on the IRC address.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub transport: Transport,
    /// Rooms used; the server's listed rooms come first, then generated names.
    pub rooms: u32,
    /// Registered, logged-in senders in each room.
    pub senders_per_room: u32,
    /// Anonymous viewers in each room that read as fast as they can.
    pub viewers_per_room: u32,
    /// Anonymous viewers in each room that read `slow_read_bytes` every
    /// `slow_read_interval_ms` through a small receive buffer.
    pub slow_viewers_per_room: u32,
    /// Messages per second offered over all rooms (open loop).
    pub rate_msgs_per_s: f64,
    pub duration_ms: u64,
    /// Longest wait after sending stops for outstanding deliveries and acks.
    pub drain_ms_max: u64,
    /// Approximate length of each message text.
    pub message_bytes: u32,
    /// Connections opened at once; 0 opens every connection at once (a storm).
    pub connect_concurrency: u32,
    /// A connection that has not finished joining by then counts as failed.
    pub connect_timeout_ms: u64,
    pub slow_read_interval_ms: u64,
    pub slow_read_bytes: u32,
}

/// Preset names accepted by [`Scenario::preset`].
pub const PRESETS: &[&str] = &[
    "average",
    "peak",
    "fanout",
    "many-rooms",
    "storm",
    "slow",
    "cluster",
];

impl Scenario {
    /// A named preset, or `None` for an unknown name.
    pub fn preset(name: &str, quick: bool) -> Option<Scenario> {
        let base = Scenario {
            name: name.to_string(),
            transport: Transport::Ws,
            rooms: 3,
            senders_per_room: 5,
            viewers_per_room: 20,
            slow_viewers_per_room: 0,
            rate_msgs_per_s: 417.0,
            duration_ms: if quick { 3_000 } else { 20_000 },
            drain_ms_max: if quick { 1_500 } else { 3_000 },
            message_bytes: 60,
            connect_concurrency: 64,
            connect_timeout_ms: 10_000,
            slow_read_interval_ms: 500,
            slow_read_bytes: 512,
        };
        let scenario = match name {
            // The seed's average: 417 messages/s over its 3 rooms.
            "average" => base,
            // The seed's peak rate offered to the same 3 rooms; past what one
            // shared 2-core machine sustains, so it measures saturation.
            // One sender per room: every sender also receives its room's
            // traffic, and the load generator must keep up with reading it.
            "peak" => Scenario {
                senders_per_room: 1,
                viewers_per_room: 2,
                rate_msgs_per_s: 41_667.0,
                duration_ms: if quick { 1_500 } else { 10_000 },
                ..base
            },
            // One room, thousands of viewers: measures deliveries/s.
            "fanout" => Scenario {
                rooms: 1,
                senders_per_room: 2,
                viewers_per_room: if quick { 500 } else { 2_000 },
                rate_msgs_per_s: 20.0,
                duration_ms: if quick { 2_000 } else { 15_000 },
                ..base
            },
            "many-rooms" => Scenario {
                rooms: if quick { 50 } else { 200 },
                senders_per_room: 1,
                viewers_per_room: 5,
                rate_msgs_per_s: if quick { 100.0 } else { 400.0 },
                duration_ms: if quick { 2_000 } else { 15_000 },
                ..base
            },
            // Every viewer connects at the same moment, then light traffic.
            "storm" => Scenario {
                senders_per_room: 1,
                viewers_per_room: if quick { 300 } else { 1_000 },
                rate_msgs_per_s: 30.0,
                duration_ms: if quick { 1_500 } else { 10_000 },
                connect_concurrency: 0,
                connect_timeout_ms: 30_000,
                ..base
            },
            // The average load with a few viewers that barely read.
            "slow" => Scenario {
                slow_viewers_per_room: 3,
                ..base
            },
            // The seed's average rate into 3 rooms with viewers spread over the nodes of a cluster (the target's
            // `viewers=`), compared with one node: what the broker hop costs in latency and CPU.
            "cluster" => Scenario {
                viewers_per_room: if quick { 30 } else { 300 },
                duration_ms: if quick { 3_000 } else { 20_000 },
                ..base
            },
            _ => return None,
        };
        Some(scenario)
    }

    pub fn senders(&self) -> u32 {
        self.rooms * self.senders_per_room
    }

    pub fn viewers(&self) -> u32 {
        self.rooms * (self.viewers_per_room + self.slow_viewers_per_room)
    }

    /// Messages per second each sender offers.
    pub fn rate_per_sender(&self) -> f64 {
        if self.senders() == 0 {
            0.0
        } else {
            self.rate_msgs_per_s / f64::from(self.senders())
        }
    }

    /// Checks the numbers make a run that can end and measure something.
    pub fn validate(&self) -> Result<(), String> {
        if self.rooms == 0 {
            return Err("rooms must be at least 1".into());
        }
        if self.senders_per_room == 0 && self.rate_msgs_per_s > 0.0 {
            return Err("a positive rate needs at least one sender per room".into());
        }
        if !(self.rate_msgs_per_s.is_finite() && self.rate_msgs_per_s >= 0.0) {
            return Err("rate must be a finite number >= 0".into());
        }
        if self.duration_ms == 0 || self.duration_ms > 3_600_000 {
            return Err("duration must be between 1 ms and 1 hour".into());
        }
        if self.message_bytes == 0 || self.message_bytes > 450 {
            return Err("message length must be 1..=450 bytes (IRC's 512-byte line)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_exists_validates_and_quick_is_shorter() {
        for name in PRESETS {
            let full = Scenario::preset(name, false).unwrap();
            let quick = Scenario::preset(name, true).unwrap();
            full.validate().unwrap();
            quick.validate().unwrap();
            assert!(quick.duration_ms < full.duration_ms, "{name}");
            assert!(quick.viewers() <= full.viewers(), "{name}");
        }
        assert_eq!(Scenario::preset("nope", false), None);
    }

    #[test]
    fn average_matches_the_seed_rate() {
        let average = Scenario::preset("average", false).unwrap();
        assert_eq!(average.rooms, 3);
        assert_eq!(average.rate_msgs_per_s, 417.0);
        assert!((average.rate_per_sender() * 15.0 - 417.0).abs() < 1e-9);
    }

    #[test]
    fn validation_rejects_runs_that_cannot_end_or_send() {
        let base = Scenario::preset("average", true).unwrap();
        let bad = [
            Scenario {
                rooms: 0,
                ..base.clone()
            },
            Scenario {
                senders_per_room: 0,
                ..base.clone()
            },
            Scenario {
                rate_msgs_per_s: f64::NAN,
                ..base.clone()
            },
            Scenario {
                duration_ms: 0,
                ..base.clone()
            },
            Scenario {
                message_bytes: 600,
                ..base.clone()
            },
        ];
        for scenario in bad {
            assert!(scenario.validate().is_err(), "{scenario:?}");
        }
    }
}
