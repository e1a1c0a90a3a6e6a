//! The embedded store through the coalescing writer: ordering, paging, accounts, persistence across reopen.

mod common;

use std::sync::Arc;

use common::{block_on, message, messages};
use twitchy_storage::{
    AccountRecord, CoalescerConfig, EmbeddedStore, MessageId, MessageIdGen, SETTING_KEY_BYTES_MAX,
    SETTING_VALUE_BYTES_MAX, StorageError, StorageService, Store, StoreConfig, open_store,
};

fn account(login: &str, user_id: u64) -> AccountRecord {
    AccountRecord {
        login: login.into(),
        user_id,
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt{user_id}$hash"),
        color: "#00FF7F".into(),
        created_unix_ms: 1_700_000_000_000 + user_id,
    }
}

#[test]
fn history_is_ordered_paged_and_per_room() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&StoreConfig::Embedded {
        dir: dir.path().join("data"),
    })
    .unwrap();
    let service = StorageService::start(store, CoalescerConfig::default());
    let h = service.handle();

    // Rooms whose names are prefixes of each other must not see each other's messages.
    let a = messages("ab", 0, 1_700_000_000_000, 300);
    let b = messages("a", 1, 1_700_000_000_000, 50);
    let c = messages("abc", 2, 1_700_000_000_000, 20);
    let acks: Vec<_> = a
        .iter()
        .chain(&b)
        .chain(&c)
        .map(|m| h.append(m.clone()).unwrap())
        .collect();
    for ack in acks {
        block_on(ack).unwrap();
    }

    let recent = block_on(h.recent_messages("ab", 100)).unwrap();
    assert_eq!(
        recent,
        a[200..].to_vec(),
        "recent is the newest 100, oldest first"
    );
    assert_eq!(block_on(h.recent_messages("a", 1000)).unwrap(), b);
    assert_eq!(block_on(h.recent_messages("abc", 1000)).unwrap(), c);
    assert!(
        block_on(h.recent_messages("nobody", 10))
            .unwrap()
            .is_empty()
    );
    assert!(block_on(h.recent_messages("ab", 0)).unwrap().is_empty());

    // Page backwards through "ab" 64 at a time and get every message exactly once, newest first.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = block_on(h.messages_before("ab", before, 64)).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(
            page.windows(2).all(|w| w[0].id > w[1].id),
            "a page is newest first"
        );
        before = Some(page.last().unwrap().id);
        seen.extend(page);
    }
    seen.reverse();
    assert_eq!(seen, a);

    // `before` is exclusive and works with an id that was never stored.
    let page = block_on(h.messages_before("ab", Some(a[10].id), 5)).unwrap();
    assert_eq!(page, a[5..10].iter().rev().cloned().collect::<Vec<_>>());
    let between = MessageId(a[10].id.0 + 1);
    assert_eq!(
        block_on(h.messages_before("ab", Some(between), 1)).unwrap(),
        vec![a[10].clone()]
    );
    assert!(
        block_on(h.messages_before("ab", Some(MessageId(0)), 5))
            .unwrap()
            .is_empty()
    );

    service.shutdown().unwrap();
}

/// Every page of a forward walk from `after`, `limit` at a time, through the handle; checks that each page is
/// full but the last, and oldest first.
fn pages_forward(
    h: &twitchy_storage::StorageHandle,
    room: &str,
    mut after: MessageId,
    limit: usize,
) -> Vec<twitchy_storage::MessageRecord> {
    let mut seen: Vec<twitchy_storage::MessageRecord> = Vec::new();
    let mut short = false;
    loop {
        let page = block_on(h.messages_after(room, after, limit)).unwrap();
        let Some(last) = page.last() else { break };
        assert!(!short, "only the last page is short");
        assert!(page.len() <= limit);
        short = page.len() < limit;
        assert!(page[0].id > after, "after is exclusive");
        assert!(
            page.windows(2).all(|w| w[0].id < w[1].id),
            "a page is oldest first"
        );
        after = last.id;
        seen.extend(page);
    }
    seen
}

#[test]
fn paging_forward_crosses_chunks_and_batches_and_is_paging_back_reversed() {
    let dir = tempfile::tempdir().unwrap();
    // Three messages a millisecond: a chunk (at most `CHUNK_SPAN_MS_MAX` of id time) holds about 150 of them, and
    // the batches of 700 below cut chunks too, so pages start and end in the middle of chunks and batches.
    let written = messages("forsen", 0, 1_700_000_000_000, 5000);
    let other = messages("forsenx", 1, 1_700_000_000_000, 500);
    let check = |h: &twitchy_storage::StorageHandle| {
        for limit in [1, 64, 100, 1000] {
            assert_eq!(
                pages_forward(h, "forsen", MessageId(0), limit),
                written,
                "limit {limit}"
            );
        }
        // The round trip: forward from the oldest is the backward walk's whole history reversed.
        let mut back = block_on(h.messages_before("forsen", None, usize::MAX)).unwrap();
        back.reverse();
        assert_eq!(back, written);
        assert_eq!(
            pages_forward(h, "forsen", written[0].id, 64),
            written[1..].to_vec()
        );
        assert_eq!(pages_forward(h, "forsenx", MessageId(0), 64), other);
        // From the middle of chunks: an existing id, an id never stored, the first id of a millisecond.
        for i in (0..written.len()).step_by(37) {
            let id = written[i].id;
            for (after, from) in [
                (id, i + 1),
                (MessageId(id.0 + 1), i + 1),
                (MessageId(id.0 - 1), i),
                (
                    MessageId::min_for_ms(id.unix_ms()),
                    written.partition_point(|m| m.id.unix_ms() < id.unix_ms()),
                ),
            ] {
                let page = block_on(h.messages_after("forsen", after, 64)).unwrap();
                let end = (from + 64).min(written.len());
                assert_eq!(page, written[from..end].to_vec(), "{i} {after}");
            }
        }
        let last = written.last().unwrap().id;
        for after in [last, MessageId::MAX] {
            assert!(
                block_on(h.messages_after("forsen", after, 64))
                    .unwrap()
                    .is_empty()
            );
        }
        assert!(
            block_on(h.messages_after("forsen", MessageId(0), 0))
                .unwrap()
                .is_empty()
        );
        assert!(
            block_on(h.messages_after("nobody", MessageId(0), 10))
                .unwrap()
                .is_empty()
        );
    };
    // Right after writing (the index may still be catching up with the log), and after reopening.
    for reopened in [false, true] {
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        if !reopened {
            for (mine, theirs) in written.chunks(700).zip(other.chunks(70)) {
                let mut batch = mine.to_vec();
                batch.extend_from_slice(theirs);
                store.append_messages(&batch).unwrap();
            }
        }
        let service = StorageService::start(store, CoalescerConfig::default());
        check(&service.handle());
        service.shutdown().unwrap();
    }
}

#[test]
fn acknowledged_messages_and_accounts_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = messages("forsen", 0, 1_700_000_000_000, 1000);
    {
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let service = StorageService::start(store, CoalescerConfig::default());
        let h = service.handle();
        let acks: Vec<_> = written
            .iter()
            .map(|m| h.append(m.clone()).unwrap())
            .collect();
        for ack in acks {
            block_on(ack).unwrap();
        }
        block_on(h.create_account(account("alice", 1))).unwrap();
        block_on(h.put_token([7; 32], "alice")).unwrap();
        service.shutdown().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.recent_messages("forsen", 5000).unwrap(), written);
    assert_eq!(store.account("alice").unwrap(), Some(account("alice", 1)));
    assert_eq!(
        store.token([7; 32]).unwrap().map(|t| t.login).as_deref(),
        Some("alice")
    );
}

#[test]
fn accounts_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let service = StorageService::start(
        store,
        CoalescerConfig {
            read_threads: 4,
            ..CoalescerConfig::default()
        },
    );
    let h = service.handle();

    assert_eq!(block_on(h.account("alice")).unwrap(), None);
    block_on(h.create_account(account("alice", 1))).unwrap();
    assert_eq!(
        block_on(h.create_account(account("alice", 2))),
        Err(StorageError::AlreadyExists)
    );
    assert_eq!(
        block_on(h.account("alice")).unwrap(),
        Some(account("alice", 1)),
        "the first account is kept"
    );

    // Many threads racing to create the same login: exactly one wins.
    let winners: usize = std::thread::scope(|s| {
        let joins: Vec<_> = (0..8)
            .map(|i| {
                let h = h.clone();
                s.spawn(move || {
                    block_on(h.create_account(account("bob_race", 100 + i))).is_ok() as usize
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).sum()
    });
    assert_eq!(winners, 1);

    assert_eq!(block_on(h.login_for_token([1; 32])).unwrap(), None);
    block_on(h.put_token([1; 32], "alice")).unwrap();
    block_on(h.put_token([2; 32], "bob_race")).unwrap();
    assert_eq!(
        block_on(h.login_for_token([1; 32])).unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(
        block_on(h.login_for_token([2; 32])).unwrap().as_deref(),
        Some("bob_race")
    );
    service.shutdown().unwrap();
}

#[test]
fn bad_room_names_are_rejected_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let h = service.handle();
    let mut ids = MessageIdGen::new(0, 0);
    let long = "x".repeat(twitchy_storage::ROOM_BYTES_MAX + 1);
    for room in ["", long.as_str()] {
        assert!(matches!(
            h.append(message(ids.next_id(1), room, 1)),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            block_on(h.recent_messages(room, 10)),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            block_on(h.messages_after(room, MessageId(0), 10)),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            store.messages_after(room, MessageId(0), 10),
            Err(StorageError::Invalid(_))
        ));
        assert!(matches!(
            store.append_messages(&[message(ids.next_id(1), room, 1)]),
            Err(StorageError::Invalid(_))
        ));
    }
    // Odd but valid names (bytes that are separators elsewhere, the longest name) work.
    let max = "y".repeat(twitchy_storage::ROOM_BYTES_MAX);
    for room in ["a\0b", "\u{ff}\u{ff}", max.as_str()] {
        let m = message(ids.next_id(2), room, 2);
        block_on(h.append(m.clone()).unwrap()).unwrap();
        assert_eq!(
            block_on(h.messages_after(room, MessageId(0), 10)).unwrap(),
            vec![m.clone()]
        );
        assert_eq!(block_on(h.recent_messages(room, 10)).unwrap(), vec![m]);
    }
    assert!(block_on(h.recent_messages("a", 10)).unwrap().is_empty());
    assert!(
        block_on(h.messages_after("a", MessageId(0), 10))
            .unwrap()
            .is_empty()
    );
    service.shutdown().unwrap();
}

/// Batches whose id ranges overlap, arrive late, repeat ids or span long stretches of time must still read back
/// as one id-ordered history with every message once. Compared with a brute-force answer over many queries.
#[test]
fn overlapping_late_and_repeated_batches_read_back_in_id_order() {
    let seed: u64 = std::env::var("TWITCHY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7717c4);
    println!("seed {seed} (set TWITCHY_TEST_SEED to replay)");
    let mut rng = seed;
    let mut next = move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut gens: Vec<MessageIdGen> = (0..8).map(|s| MessageIdGen::new(0, s)).collect();
    let mut all: std::collections::BTreeMap<MessageId, twitchy_storage::MessageRecord> =
        Default::default();
    let base_ms = 1_700_000_000_000u64;
    let mut now_ms = base_ms;
    for b in 0..150 {
        now_ms += next(40);
        let mut batch = Vec::new();
        for _ in 0..next(400) {
            // Most messages are fresh; some lag behind by up to two seconds (a slow shard); a few ids repeat.
            let shard = next(8) as usize;
            let lag = if next(10) == 0 { next(2000) } else { next(3) };
            let id = gens[shard].next_id(now_ms.saturating_sub(lag).max(base_ms));
            let m = message(id, "room", b);
            if next(50) == 0
                && let Some(old) = all.values().nth(next(all.len() as u64 + 1) as usize)
            {
                batch.push(old.clone());
            }
            all.insert(id, m.clone());
            batch.push(m);
        }
        // Rarely, a batch stretches over a long time window (a backlog after a stall).
        if next(20) == 0 {
            let id = gens[0].next_id(now_ms + 700);
            let m = message(id, "room", b);
            all.insert(id, m.clone());
            batch.push(m);
            now_ms += 700;
        }
        store.append_messages(&batch).unwrap();
    }
    let newest_first: Vec<_> = all.values().rev().cloned().collect();
    let ids: Vec<MessageId> = all.keys().copied().collect();
    for limit in [0usize, 1, 3, 50, 257, 1000, usize::MAX] {
        let got = store.messages_before("room", None, limit).unwrap();
        assert_eq!(
            got,
            newest_first[..limit.min(newest_first.len())].to_vec(),
            "limit {limit}"
        );
        for _ in 0..8 {
            let pick = ids[next(ids.len() as u64) as usize];
            for before in [
                pick,
                MessageId(pick.0 + 1),
                MessageId::min_for_ms(pick.unix_ms()),
            ] {
                let want: Vec<_> = all
                    .range(..before)
                    .rev()
                    .take(limit)
                    .map(|(_, m)| m.clone())
                    .collect();
                assert_eq!(
                    store.messages_before("room", Some(before), limit).unwrap(),
                    want,
                    "{limit} {before}"
                );
                // Forward from the same points (chunks that start before `after` and hold newer ids included).
                let after = before;
                let want: Vec<_> = all
                    .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                    .take(limit)
                    .map(|(_, m)| m.clone())
                    .collect();
                assert_eq!(
                    store.messages_after("room", after, limit).unwrap(),
                    want,
                    "after {limit} {after}"
                );
            }
        }
    }
    // Paging forward through all of it, a page at a time, gives every message once, in id order.
    for limit in [1usize, 7, 256, 1000] {
        let mut seen = Vec::new();
        let mut after = MessageId(0);
        loop {
            let page = store.messages_after("room", after, limit).unwrap();
            let Some(last) = page.last() else { break };
            after = last.id;
            seen.extend(page);
        }
        assert_eq!(seen, all.values().cloned().collect::<Vec<_>>(), "{limit}");
    }
    let recent = store.recent_messages("room", 100).unwrap();
    assert_eq!(
        recent,
        all.values()
            .rev()
            .take(100)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
    );
}

/// A clock the test moves by hand.
#[derive(Default)]
struct ManualClock(std::sync::atomic::AtomicU64);

impl twitchy_storage::Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn tokens_expire_are_revoked_and_capped_per_login() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let clock = Arc::new(ManualClock::default());
    clock
        .0
        .store(1_700_000_000_000, std::sync::atomic::Ordering::SeqCst);
    let config = CoalescerConfig {
        token_ttl_ms: 60_000,
        tokens_per_login_max: 3,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start_with_clock(store.clone(), config, clock.clone());
    let h = service.handle();
    let advance = |ms: u64| {
        clock.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    };

    block_on(h.put_token([1; 32], "alice")).unwrap();
    assert_eq!(
        block_on(h.login_for_token([1; 32])).unwrap().as_deref(),
        Some("alice")
    );
    let grant = block_on(h.token([1; 32])).unwrap().unwrap();
    assert_eq!(grant.expires_unix_ms - grant.issued_unix_ms, 60_000);

    // Expiry: valid until the last millisecond, refused from then on (an invalid token, not an error).
    advance(59_999);
    assert!(block_on(h.login_for_token([1; 32])).unwrap().is_some());
    advance(1);
    assert_eq!(block_on(h.login_for_token([1; 32])).unwrap(), None);

    // Logout revokes exactly the presented token.
    block_on(h.put_token([2; 32], "alice")).unwrap();
    block_on(h.put_token([3; 32], "bob_b")).unwrap();
    assert!(block_on(h.revoke_token([2; 32])).unwrap());
    assert!(
        !block_on(h.revoke_token([2; 32])).unwrap(),
        "already revoked"
    );
    assert_eq!(block_on(h.login_for_token([2; 32])).unwrap(), None);
    assert!(block_on(h.login_for_token([3; 32])).unwrap().is_some());

    // At most three live tokens per login: a fourth revokes the oldest; expired ones are cleared on the way.
    for (i, t) in [10u8, 11, 12, 13].into_iter().enumerate() {
        advance(10);
        block_on(h.put_token([t; 32], "carol")).unwrap();
        assert!(
            block_on(h.login_for_token([t; 32])).unwrap().is_some(),
            "{i}"
        );
    }
    assert_eq!(block_on(h.login_for_token([10; 32])).unwrap(), None);
    for t in [11u8, 12, 13] {
        assert!(block_on(h.login_for_token([t; 32])).unwrap().is_some());
    }
    assert_eq!(
        block_on(h.login_for_token([3; 32])).unwrap().as_deref(),
        Some("bob_b")
    );

    // Durable: the same answers after reopening.
    service.shutdown().unwrap();
    drop(h);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.token([10; 32]).unwrap(), None);
    assert_eq!(store.token([2; 32]).unwrap(), None);
    assert_eq!(store.token([13; 32]).unwrap().unwrap().login, "carol");
}

#[test]
fn settings_are_listed_by_prefix_in_key_order_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    // Written out of order, with a room whose name extends another's and a key that sorts between the scopes.
    for (key, value) in [
        ("room/lobby/role/7", "mod"),
        ("room/lobby/ban/42", "ban42"),
        ("room/lobby2/modes", "other room"),
        ("room/lobby/modes", "{\"slow\":30}"),
        ("room/lobby/ban/41", "ban41"),
        ("user/42/profile", "profile"),
    ] {
        store.put_setting(key, value.as_bytes()).unwrap();
    }
    let keys = |prefix: &str, limit: usize| -> Vec<String> {
        store
            .settings(prefix, limit)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(
        keys("room/lobby/", 100),
        [
            "room/lobby/ban/41",
            "room/lobby/ban/42",
            "room/lobby/modes",
            "room/lobby/role/7"
        ]
    );
    assert_eq!(
        keys("room/lobby/", 2),
        ["room/lobby/ban/41", "room/lobby/ban/42"]
    );
    assert!(keys("room/lobby/", 0).is_empty());
    assert_eq!(
        keys("room/lobby/ban/", 100),
        ["room/lobby/ban/41", "room/lobby/ban/42"]
    );
    assert_eq!(
        store.settings("room/lobby/modes", 100).unwrap(),
        vec![("room/lobby/modes".to_string(), b"{\"slow\":30}".to_vec())]
    );
    assert_eq!(keys("user/42/", 100), ["user/42/profile"]);
    assert!(keys("room/nobody/", 100).is_empty());

    // Overwrite and delete; deleting an absent key is fine.
    store.put_setting("room/lobby/modes", b"{}").unwrap();
    store.delete_setting("room/lobby/ban/41").unwrap();
    store.delete_setting("room/lobby/ban/41").unwrap();
    drop(store);

    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        store.settings("room/lobby/", 100).unwrap(),
        vec![
            ("room/lobby/ban/42".to_string(), b"ban42".to_vec()),
            ("room/lobby/modes".to_string(), b"{}".to_vec()),
            ("room/lobby/role/7".to_string(), b"mod".to_vec()),
        ]
    );
}

#[test]
fn bad_setting_keys_prefixes_and_values_are_rejected_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let invalid = |r: twitchy_storage::Result<()>| matches!(r, Err(StorageError::Invalid(_)));
    assert!(invalid(store.put_setting("room/lobby", b"x")));
    assert!(invalid(store.put_setting("room//modes", b"x")));
    let long_key = format!("room/lobby/{}", "k".repeat(SETTING_KEY_BYTES_MAX));
    assert!(invalid(store.put_setting(&long_key, b"x")));
    assert!(invalid(store.put_setting(
        "room/lobby/modes",
        &vec![b'x'; SETTING_VALUE_BYTES_MAX + 1]
    )));
    assert!(invalid(store.delete_setting("room")));
    assert!(matches!(
        store.settings("room/", 10),
        Err(StorageError::Invalid(_))
    ));
    store
        .put_setting("room/lobby/modes", &vec![b'x'; SETTING_VALUE_BYTES_MAX])
        .unwrap();
    assert_eq!(store.settings("room/lobby/", 10).unwrap().len(), 1);
}

#[test]
fn deleted_messages_leave_history_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let written = messages("forsen", 0, 1_700_000_000_000, 300);
    let other = messages("forsenx", 1, 1_700_000_000_000, 10);
    // The ids deleted: the newest, a run in the middle, and the oldest.
    let mut gone: Vec<MessageId> = vec![written[299].id, written[0].id];
    gone.extend(written[100..150].iter().map(|m| m.id));
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        // Appended and deleted at once: the delete does not depend on the indexer having caught up.
        for chunk in written.chunks(50) {
            store.append_messages(chunk).unwrap();
        }
        store.append_messages(&other).unwrap();
        for &id in &gone {
            assert!(store.delete_message("forsen", id).unwrap(), "{id}");
        }
        assert!(
            store.delete_message("forsen", written[0].id).unwrap(),
            "a second delete still finds the message"
        );
        assert!(
            !store.delete_message("forsen", other[0].id).unwrap(),
            "another room's"
        );
        assert!(
            !store
                .delete_message("forsen", MessageId(written[5].id.0 + 1))
                .unwrap(),
            "an id never written"
        );
        assert!(matches!(
            store.delete_message("", written[5].id),
            Err(StorageError::Invalid(_))
        ));
    }
    let kept: Vec<_> = written
        .iter()
        .filter(|m| !gone.contains(&m.id))
        .cloned()
        .collect();
    assert_eq!(kept.len(), 248);
    // After reopening (the log replayed into the index), through the coalescer as the engine reads.
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let h = service.handle();
    assert_eq!(
        block_on(h.recent_messages("forsen", 20)).unwrap(),
        kept[kept.len() - 20..].to_vec(),
        "a full page, the deleted newest message skipped"
    );
    // Paging back across the deleted run: pages stay full and nothing repeats or goes missing.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = block_on(h.messages_before("forsen", before, 30)).unwrap();
        if page.is_empty() {
            break;
        }
        if paged.len() + page.len() < kept.len() {
            assert_eq!(page.len(), 30, "pages are filled past deleted messages");
        }
        before = page.last().map(|m| m.id);
        paged.extend(page);
    }
    paged.reverse();
    assert_eq!(paged, kept);
    // And forward: pages filled with newer messages past the deleted oldest one and the deleted run.
    assert_eq!(pages_forward(&h, "forsen", MessageId(0), 30), kept);
    assert_eq!(
        block_on(h.messages_after("forsen", written[99].id, 5)).unwrap(),
        written[150..155].to_vec(),
        "the deleted run is skipped"
    );
    assert_eq!(block_on(h.recent_messages("forsenx", 100)).unwrap(), other);

    // A message deleted through the handle, right after it was acknowledged.
    let late = message(
        MessageIdGen::new(0, 9).next_id(1_700_000_100_000),
        "forsen",
        7,
    );
    block_on(h.append(late.clone()).unwrap()).unwrap();
    assert!(block_on(h.delete_message("forsen", late.id)).unwrap());
    assert_eq!(
        block_on(h.recent_messages("forsen", 1)).unwrap(),
        vec![kept[kept.len() - 1].clone()]
    );
    service.shutdown().unwrap();
}

#[test]
fn a_rename_moves_the_account_and_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let config = CoalescerConfig {
            tokens_per_login_max: 3,
            ..CoalescerConfig::default()
        };
        let service = StorageService::start(store.clone(), config);
        let h = service.handle();
        block_on(h.create_account(account("alice", 1))).unwrap();
        block_on(h.create_account(account("bob_b", 2))).unwrap();
        block_on(h.put_token([1; 32], "alice")).unwrap();
        block_on(h.put_token([2; 32], "alice")).unwrap();
        block_on(h.put_token([9; 32], "bob_b")).unwrap();

        let moved = block_on(h.rename_account("alice", "alicia")).unwrap();
        assert_eq!(
            moved,
            AccountRecord {
                login: "alicia".into(),
                ..account("alice", 1)
            }
        );
        assert_eq!(block_on(h.account("alicia")).unwrap(), Some(moved.clone()));
        assert_eq!(block_on(h.account("alice")).unwrap(), None);
        for t in [1u8, 2] {
            assert_eq!(
                block_on(h.login_for_token([t; 32])).unwrap().as_deref(),
                Some("alicia"),
                "token {t} follows the account"
            );
        }
        assert_eq!(
            block_on(h.login_for_token([9; 32])).unwrap().as_deref(),
            Some("bob_b")
        );

        // The per-login cap counts the moved tokens: two more grants (cap 3) revoke the oldest moved one.
        block_on(h.put_token([3; 32], "alicia")).unwrap();
        block_on(h.put_token([4; 32], "alicia")).unwrap();
        assert_eq!(block_on(h.login_for_token([1; 32])).unwrap(), None);
        for t in [2u8, 3, 4] {
            assert!(block_on(h.login_for_token([t; 32])).unwrap().is_some());
        }
        // Revoking a moved token works under its new login.
        assert!(block_on(h.revoke_token([2; 32])).unwrap());
        assert_eq!(block_on(h.login_for_token([2; 32])).unwrap(), None);

        // Taken (by another account, or by itself), unknown, and a free old login.
        assert_eq!(
            block_on(h.rename_account("alicia", "bob_b")),
            Err(StorageError::AlreadyExists)
        );
        assert_eq!(
            block_on(h.rename_account("alicia", "alicia")),
            Err(StorageError::AlreadyExists)
        );
        let err = block_on(h.rename_account("alice", "alice2")).unwrap_err();
        assert!(matches!(err, StorageError::NotFound(_)), "{err}");
        assert!(!err.is_transient());
        block_on(h.create_account(account("alice", 3))).unwrap();
        service.shutdown().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.account("alicia").unwrap().unwrap().user_id, 1);
    assert_eq!(store.account("alice").unwrap().unwrap().user_id, 3);
    assert_eq!(store.token([3; 32]).unwrap().unwrap().login, "alicia");
    assert_eq!(store.token([9; 32]).unwrap().unwrap().login, "bob_b");
    assert_eq!(store.token([1; 32]).unwrap(), None);
}
