//! The whole `Store` trait of the ScyllaDB store, through the coalescer, against a real cluster.
//!
//! Skipped (with a message) unless `SCYLLA_NODES` names the cluster, e.g.
//! `SCYLLA_NODES=127.0.0.1:9042 cargo test --release -p twitchy-storage --test scylla_cluster`.
//! Each run uses a fresh keyspace (`twitchy_test_<pid>_<ms>`, replication factor from `SCYLLA_RF`, default 1)
//! and drops it at the end.

mod common;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{block_on, message};
use twitchy_storage::scylla_store::BUCKETS_PER_EPOCH;
use twitchy_storage::{
    AccountRecord, CoalescerConfig, MessageId, MessageIdGen, MessageRecord, ScyllaStore,
    StorageError, StorageService, Store,
};

fn nodes() -> Option<Vec<String>> {
    let nodes = std::env::var("SCYLLA_NODES").ok()?;
    let nodes: Vec<String> = nodes
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    (!nodes.is_empty()).then_some(nodes)
}

/// Drops the test keyspace when the test ends, pass or fail.
struct DropKeyspace {
    nodes: Vec<String>,
    keyspace: String,
}

impl Drop for DropKeyspace {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let session = scylla::client::session_builder::SessionBuilder::new()
                .known_nodes(&self.nodes)
                .build()
                .await;
            if let Ok(session) = session {
                let _ = session
                    .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.keyspace), &[])
                    .await;
            }
        });
    }
}

#[test]
fn the_whole_store_trait_against_a_real_cluster() {
    let Some(nodes) = nodes() else {
        println!(
            "SCYLLA_NODES is not set: skipping the ScyllaDB cluster test (see the crate docs to run it)"
        );
        return;
    };
    let rf: u32 = std::env::var("SCYLLA_RF")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let keyspace = format!("twitchy_test_{}_{now_ms}", std::process::id());
    let _cleanup = DropKeyspace {
        nodes: nodes.clone(),
        keyspace: keyspace.clone(),
    };
    let store = Arc::new(ScyllaStore::connect(&nodes, &keyspace, rf).unwrap());
    // Connecting again finds the schema in place.
    drop(ScyllaStore::connect(&nodes, &keyspace, rf).unwrap());
    let service = StorageService::start(
        store.clone(),
        CoalescerConfig {
            batch_messages_max: 128,
            ..Default::default()
        },
    );
    let h = service.handle();

    // A busy room with many messages per one-second bucket, a room with sparse messages days apart (empty
    // buckets and epochs in between), and a room spanning an epoch boundary.
    let base_ms = now_ms - 60 * 86_400_000;
    let epoch_edge_ms =
        ((base_ms / 1000) as i64 / BUCKETS_PER_EPOCH + 1) as u64 * BUCKETS_PER_EPOCH as u64 * 1000;
    let mut g = MessageIdGen::new(0, 0);
    let busy: Vec<MessageRecord> = (0..2500)
        .map(|n| message(g.next_id(base_ms + n * 3), "busy", n))
        .collect();
    let sparse: Vec<MessageRecord> = (0..7)
        .map(|n| message(g.next_id(base_ms + n * 5 * 86_400_000), "sparse", n))
        .collect();
    let edge: Vec<MessageRecord> = (0..40)
        .map(|n| message(g.next_id(epoch_edge_ms - 20_000 + n * 1000), "edge", n))
        .collect();
    let acks: Vec<_> = busy
        .iter()
        .chain(&sparse)
        .chain(&edge)
        .map(|m| h.append(m.clone()).unwrap())
        .collect();
    for ack in acks {
        block_on(ack).unwrap();
    }

    for (room, all) in [("busy", &busy), ("sparse", &sparse), ("edge", &edge)] {
        for limit in [1, 5, 50, 1200, 5000] {
            let want = all[all.len().saturating_sub(limit)..].to_vec();
            assert_eq!(
                block_on(h.recent_messages(room, limit)).unwrap(),
                want,
                "{room} recent {limit}"
            );
        }
        // Page back through the room; every message once, newest first.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = block_on(h.messages_before(room, before, 333)).unwrap();
            if page.is_empty() {
                break;
            }
            before = Some(page.last().unwrap().id);
            seen.extend(page);
        }
        seen.reverse();
        assert_eq!(&seen, all, "{room} paged");
        let mid = all.len() / 2;
        let page = block_on(h.messages_before(room, Some(all[mid].id), 3)).unwrap();
        let want: Vec<MessageRecord> = all[mid.saturating_sub(3)..mid]
            .iter()
            .rev()
            .cloned()
            .collect();
        assert_eq!(page, want, "{room} before the middle");
        assert!(
            block_on(h.messages_before(room, Some(MessageId(0)), 10))
                .unwrap()
                .is_empty()
        );
        // Page forward through the room, as a client catching up does: every message once, oldest first, the
        // same history as paging back.
        let mut forward = Vec::new();
        let mut after = MessageId(0);
        loop {
            let page = block_on(h.messages_after(room, after, 333)).unwrap();
            let Some(last) = page.last() else { break };
            after = last.id;
            forward.extend(page);
        }
        assert_eq!(&forward, &seen, "{room} paged forward");
        let page = block_on(h.messages_after(room, all[mid].id, 3)).unwrap();
        let end = (mid + 4).min(all.len());
        assert_eq!(page, all[mid + 1..end].to_vec(), "{room} after the middle");
        assert!(
            block_on(h.messages_after(room, all[all.len() - 1].id, 10))
                .unwrap()
                .is_empty()
        );
    }
    assert!(
        block_on(h.recent_messages("nobody", 10))
            .unwrap()
            .is_empty()
    );

    // Appending the same messages again (a retried batch) leaves each exactly once.
    store.append_messages(&busy[..10]).unwrap();
    assert_eq!(block_on(h.recent_messages("busy", 5000)).unwrap(), busy);

    // Accounts: created once, looked up, duplicates refused by the lightweight transaction.
    let alice = AccountRecord {
        login: "alice".into(),
        user_id: 1,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        color: "#FF69B4".into(),
        created_unix_ms: now_ms,
    };
    assert_eq!(block_on(h.account("alice")).unwrap(), None);
    block_on(h.create_account(alice.clone())).unwrap();
    let mut impostor = alice.clone();
    impostor.user_id = 2;
    assert_eq!(
        block_on(h.create_account(impostor)),
        Err(StorageError::AlreadyExists)
    );
    assert_eq!(block_on(h.account("alice")).unwrap(), Some(alice));

    // Tokens.
    assert_eq!(block_on(h.login_for_token([3; 32])).unwrap(), None);
    block_on(h.put_token([3; 32], "alice")).unwrap();
    assert_eq!(
        block_on(h.login_for_token([3; 32])).unwrap().as_deref(),
        Some("alice")
    );

    // Renames: the account and its token move, the old login is free.
    let moved = block_on(h.rename_account("alice", "alicia")).unwrap();
    assert_eq!(moved.user_id, 1);
    assert_eq!(block_on(h.account("alice")).unwrap(), None);
    assert_eq!(block_on(h.account("alicia")).unwrap(), Some(moved));
    assert_eq!(
        block_on(h.login_for_token([3; 32])).unwrap().as_deref(),
        Some("alicia")
    );

    // Deleted messages: skipped by recent and paged reads, pages filled from older messages.
    let gone: Vec<MessageId> = busy[2000..2400].iter().map(|m| m.id).collect();
    for &id in &gone {
        assert!(block_on(h.delete_message("busy", id)).unwrap());
    }
    let kept: Vec<MessageRecord> = busy
        .iter()
        .filter(|m| !gone.contains(&m.id))
        .cloned()
        .collect();
    assert_eq!(
        block_on(h.recent_messages("busy", 200)).unwrap(),
        kept[kept.len() - 200..].to_vec()
    );
    let page = block_on(h.messages_before("busy", Some(busy[2400].id), 50)).unwrap();
    let want: Vec<MessageRecord> = busy[1950..2000].iter().rev().cloned().collect();
    assert_eq!(page, want);
    let page = block_on(h.messages_after("busy", busy[1999].id, 50)).unwrap();
    assert_eq!(
        page,
        busy[2400..2450].to_vec(),
        "forward past the deleted run"
    );

    // Settings, including prefixes deeper than the scope (a clustering range).
    for key in [
        "room/busy/ban/41",
        "room/busy/ban/42",
        "room/busy/modes",
        "room/busy/role/7",
    ] {
        block_on(h.put_setting(key, key.as_bytes().to_vec())).unwrap();
    }
    let keys = |prefix: &str, limit: usize| -> Vec<String> {
        block_on(h.settings(prefix, limit))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(keys("room/busy/", 100).len(), 4);
    assert_eq!(
        keys("room/busy/", 2),
        ["room/busy/ban/41", "room/busy/ban/42"]
    );
    assert_eq!(
        keys("room/busy/ban/", 100),
        ["room/busy/ban/41", "room/busy/ban/42"]
    );
    assert_eq!(keys("room/busy/modes", 100), ["room/busy/modes"]);
    block_on(h.delete_setting("room/busy/ban/41")).unwrap();
    assert_eq!(keys("room/busy/ban/", 100), ["room/busy/ban/42"]);
    service.shutdown().unwrap();
}
