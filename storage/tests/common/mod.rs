//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod nats;

use twitchy_storage::{MessageId, MessageIdGen, MessageRecord};

/// A message with predictable content derived from its id and room.
pub fn message(id: MessageId, room: &str, n: u64) -> MessageRecord {
    MessageRecord {
        id,
        room: room.to_owned(),
        user_id: n,
        login: format!("user{n}"),
        display_name: format!("User{n}"),
        color: "#1E90FF".into(),
        badges: if n.is_multiple_of(3) {
            "moderator/1".into()
        } else {
            String::new()
        },
        text: format!("skibidi message number {n} in {room}, no cap fr fr"),
        original: format!("message number {n} in {room}"),
        styled_by: if n.is_multiple_of(2) {
            "llm".into()
        } else {
            "local".into()
        },
        client_nonce: if n.is_multiple_of(3) {
            format!("nonce-{n}")
        } else {
            String::new()
        },
    }
}

/// `count` messages with increasing ids starting at `start_ms`.
pub fn messages(room: &str, shard: u16, start_ms: u64, count: u64) -> Vec<MessageRecord> {
    let mut ids = MessageIdGen::new(1, shard);
    (0..count)
        .map(|n| message(ids.next_id(start_ms + n / 3), room, n))
        .collect()
}

/// Runs a future to completion on the calling thread (the storage futures are executor-agnostic).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures_lite::future::block_on(f)
}
