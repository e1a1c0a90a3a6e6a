//! Time-ordered message ids.
//!
//! A [`MessageId`] is a 128-bit value laid out like a UUIDv7 so that it prints as a UUID (Twitch clients expect the
//! `id` tag to look like one) and sorts by creation time:
//!
//! | bits    | field                                                    |
//! |---------|----------------------------------------------------------|
//! | 127..80 | unix time in milliseconds (48 bits)                      |
//! | 79..76  | UUID version, always 7                                   |
//! | 75..64  | sequence within the millisecond (12 bits)                |
//! | 63..62  | UUID variant, always `0b10`                              |
//! | 61..46  | node id (16 bits)                                        |
//! | 45..36  | shard id (10 bits)                                       |
//! | 35..0   | zero                                                     |
//!
//! Uniqueness across shards and nodes comes from the node and shard fields; order within one generator comes from
//! the sequence. A generator never goes backwards even if the clock does.

use std::fmt;
use std::str::FromStr;

/// Largest shard index that fits in an id.
pub const SHARD_ID_MAX: u16 = (1 << 10) - 1;
const SEQ_PER_MS_MAX: u16 = 1 << 12;

/// A time-ordered, globally unique message id.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct MessageId(pub u128);

impl MessageId {
    /// The smallest id with the given millisecond timestamp: useful as a range bound.
    pub fn min_for_ms(unix_ms: u64) -> MessageId {
        MessageId(((unix_ms as u128) << 80) | (7u128 << 76) | (0b10u128 << 62))
    }

    /// The largest id possible.
    pub const MAX: MessageId = MessageId(u128::MAX);

    /// Milliseconds since the unix epoch at which this id was issued.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }

    /// Big-endian bytes: byte order equals id order, which is what ordered key-value stores need.
    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_be_bytes(bytes: [u8; 16]) -> MessageId {
        MessageId(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            (v & 0xffff_ffff_ffff) as u64
        )
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// The text was not a hyphenated UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a message id (expected a hyphenated UUID)")]
pub struct ParseMessageIdError;

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
            return Err(ParseMessageIdError);
        }
        let mut v: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            let d = (c as char).to_digit(16).ok_or(ParseMessageIdError)?;
            v = (v << 4) | d as u128;
        }
        Ok(MessageId(v))
    }
}

/// Issues ids for one shard of one node. Sans-IO: the caller passes the current time.
#[derive(Debug, Clone)]
pub struct MessageIdGen {
    node: u16,
    shard: u16,
    last_ms: u64,
    seq: u16,
}

impl MessageIdGen {
    pub fn new(node: u16, shard: u16) -> MessageIdGen {
        assert!(
            shard <= SHARD_ID_MAX,
            "shard index {shard} does not fit in a message id"
        );
        MessageIdGen {
            node,
            shard,
            last_ms: 0,
            seq: 0,
        }
    }

    /// The next id, at `now_unix_ms` or later if the clock went backwards or this millisecond is used up.
    pub fn next_id(&mut self, now_unix_ms: u64) -> MessageId {
        if now_unix_ms > self.last_ms {
            self.last_ms = now_unix_ms;
            self.seq = 0;
        } else {
            self.seq += 1;
            if self.seq == SEQ_PER_MS_MAX {
                self.last_ms += 1;
                self.seq = 0;
            }
        }
        assert!(self.last_ms < (1 << 48));
        let v = ((self.last_ms as u128) << 80)
            | (7u128 << 76)
            | ((self.seq as u128) << 64)
            | (0b10u128 << 62)
            | ((self.node as u128) << 46)
            | ((self.shard as u128) << 36);
        MessageId(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ordered_unique_and_round_trip() {
        let mut a = MessageIdGen::new(3, 0);
        let mut b = MessageIdGen::new(3, 1);
        let mut seen = std::collections::HashSet::new();
        let mut prev = MessageId(0);
        for i in 0..10_000u64 {
            // Many ids in the same millisecond, and a clock that goes backwards once.
            let now = 1_700_000_000_000 + i / 5000 - u64::from(i == 7000);
            let id = a.next_id(now);
            assert!(id > prev, "ids from one generator must increase");
            prev = id;
            assert!(seen.insert(id));
            assert!(seen.insert(b.next_id(now)));
            let text = id.to_string();
            assert_eq!(text.parse::<MessageId>().unwrap(), id);
            assert_eq!(&text[14..15], "7", "prints as a UUIDv7");
        }
        assert!(a.next_id(1_700_000_000_000).unix_ms() >= 1_700_000_000_001);
    }

    #[test]
    fn sequence_overflow_moves_to_next_millisecond() {
        let mut g = MessageIdGen::new(0, 0);
        let first = g.next_id(1000);
        for _ in 0..SEQ_PER_MS_MAX {
            g.next_id(1000);
        }
        let later = g.next_id(1000);
        assert_eq!(first.unix_ms(), 1000);
        assert_eq!(later.unix_ms(), 1001);
    }

    #[test]
    fn bad_ids_are_rejected() {
        for s in [
            "",
            "xyz",
            "0190f1c2-7a3b-7000-8000-00000000000g",
            "0190f1c27a3b70008000000000000000",
        ] {
            assert!(s.parse::<MessageId>().is_err(), "{s}");
        }
    }
}
