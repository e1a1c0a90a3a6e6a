//! The cluster store against a real three-server NATS cluster (JetStream, three replicas) that each test starts
//! on loopback ports and kills by pid when it ends.
//!
//! Without `nats-server` installed the tests print that they skipped, unless `CI` is set: then they fail.
//! The cluster tests run one at a time (they share a lock), so that three servers per test do not compete for
//! the CPU with three more. Nothing here asserts on time; waits are generous bounds that fail a hung test.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::block_on;
use common::nats::{Cluster, nats_server_or_skip};
use twitchy_storage::{
    AccountRecord, AppendOutcome, CoalescerConfig, FeedItem, FeedRooms, MessageId, MessageIdGen,
    MessageRecord, NatsConfig, NatsStore, SettingChange, StorageError, StorageService, Store,
    TokenRecord,
};

/// Longest wait for one feed item before the test fails as hung.
const FEED_WAIT: Duration = Duration::from_secs(90);

static CLUSTER_LOCK: Mutex<()> = Mutex::new(());

fn one_cluster_at_a_time() -> MutexGuard<'static, ()> {
    CLUSTER_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The servers of the test cluster have 1 GB of file storage each; the stream must fit.
const TEST_RETENTION_BYTES: u64 = 256 << 20;

fn config(servers: Vec<String>, node_id: u16) -> NatsConfig {
    NatsConfig {
        retention_bytes: TEST_RETENTION_BYTES,
        ..NatsConfig::new(servers, node_id)
    }
}

fn msg(ids: &mut MessageIdGen, room: &str, user_id: u64, nonce: &str, text: &str) -> MessageRecord {
    MessageRecord {
        id: ids.next_id(now_ms()),
        room: room.to_owned(),
        user_id,
        login: format!("user{user_id}"),
        display_name: format!("User{user_id}"),
        color: "#1E90FF".into(),
        badges: String::new(),
        text: format!("skibidi {text}"),
        original: text.to_owned(),
        styled_by: "local".into(),
        client_nonce: nonce.to_owned(),
    }
}

fn ids_of(records: &[MessageRecord]) -> Vec<MessageId> {
    records.iter().map(|r| r.id).collect()
}

/// Appends a batch, retrying (same ids, same Msg-Ids) while the cluster answers "try again".
fn append_until_acked(store: &NatsStore, batch: &[MessageRecord]) -> Vec<AppendOutcome> {
    for _ in 0..20 {
        match store.append_messages_with_outcomes(batch) {
            Ok(outcomes) => return outcomes,
            Err(e) if e.is_transient() => eprintln!("append failed, retrying: {e}"),
            Err(e) => panic!("append failed: {e}"),
        }
    }
    panic!("a batch was never acknowledged");
}

/// The value of the sample `name` (with its labels, exactly as rendered) in Prometheus text.
fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn next_item(rx: &flume::Receiver<FeedItem>) -> FeedItem {
    rx.recv_timeout(FEED_WAIT)
        .expect("the feed delivers within the wait")
}

#[test]
fn history_accounts_tokens_and_settings_are_shared_by_every_node() {
    let Some(binary) = nats_server_or_skip("history_accounts_tokens_and_settings") else {
        return;
    };
    let _serial = one_cluster_at_a_time();
    let cluster = Cluster::start(&binary);
    let a = cluster.store(config(vec![cluster.url_of("n1")], 1));
    let b = cluster.store(config(vec![cluster.url_of("n2")], 2));
    assert_eq!(a.replicas(), 3);
    assert!(a.health().is_healthy() && b.health().is_healthy());

    // History: written on A, read on B, in order, pages back and forward.
    let mut ids = MessageIdGen::new(1, 0);
    let lobby: Vec<MessageRecord> = (0..30)
        .map(|n| msg(&mut ids, "lobby", n % 4, "", &format!("lobby {n}")))
        .collect();
    // A room whose name is not a plain subject token, and one that prefixes it.
    let odd: Vec<MessageRecord> = (0..5)
        .map(|n| msg(&mut ids, "a.b c>*", 1, "", &format!("odd {n}")))
        .collect();
    let prefix: Vec<MessageRecord> = (0..3)
        .map(|n| msg(&mut ids, "lob", 1, "", &format!("prefix {n}")))
        .collect();
    for chunk in lobby.chunks(7) {
        assert_eq!(
            a.append_messages_with_outcomes(chunk).unwrap(),
            vec![AppendOutcome::Stored; chunk.len()]
        );
    }
    a.append_messages(&odd).unwrap();
    a.append_messages(&prefix).unwrap();

    assert_eq!(
        b.recent_messages("lobby", 10).unwrap(),
        lobby[20..].to_vec()
    );
    assert_eq!(b.recent_messages("a.b c>*", 10).unwrap(), odd);
    assert_eq!(b.recent_messages("lob", 10).unwrap(), prefix);
    assert!(b.recent_messages("nobody-here", 10).unwrap().is_empty());
    let newest: Vec<MessageRecord> = lobby[23..].iter().rev().cloned().collect();
    assert_eq!(b.messages_before("lobby", None, 7).unwrap(), newest);

    // Paging back through everything, then forward.
    let mut back = Vec::new();
    let mut cursor = None;
    loop {
        let page = b.messages_before("lobby", cursor, 4).unwrap();
        if page.is_empty() {
            break;
        }
        cursor = Some(page.last().unwrap().id);
        back.extend(page);
    }
    back.reverse();
    assert_eq!(ids_of(&back), ids_of(&lobby));
    let mut forward = vec![lobby[0].clone()];
    loop {
        let page = b
            .messages_after("lobby", forward.last().unwrap().id, 6)
            .unwrap();
        if page.is_empty() {
            break;
        }
        forward.extend(page);
    }
    assert_eq!(ids_of(&forward), ids_of(&lobby));
    assert_eq!(
        ids_of(&b.messages_after("lobby", MessageId(0), 3).unwrap()),
        ids_of(&lobby[..3])
    );

    // Deletion on A hides the message on B; history fills the page with older ones.
    assert!(a.delete_message("lobby", lobby[25].id).unwrap());
    assert!(
        a.delete_message("lobby", lobby[25].id).unwrap(),
        "a retry answers the same"
    );
    assert!(!a.delete_message("lobby", MessageId(12345)).unwrap());
    assert!(
        !a.delete_message("a.b c>*", lobby[24].id).unwrap(),
        "wrong room"
    );
    let mut expected: Vec<MessageRecord> = lobby[19..].to_vec();
    expected.retain(|m| m.id != lobby[25].id);
    assert_eq!(b.recent_messages("lobby", 10).unwrap(), expected);
    let after = b.messages_after("lobby", lobby[23].id, 3).unwrap();
    assert_eq!(
        ids_of(&after),
        vec![lobby[24].id, lobby[26].id, lobby[27].id]
    );

    // Accounts: created on A, seen on B, unique across nodes.
    let alice = AccountRecord {
        login: "alice".into(),
        user_id: 7,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$abc$def".into(),
        color: "#00FF00".into(),
        created_unix_ms: 1_700_000_000_000,
    };
    a.create_account(&alice).unwrap();
    assert_eq!(b.account("alice").unwrap(), Some(alice.clone()));
    assert_eq!(b.create_account(&alice), Err(StorageError::AlreadyExists));
    assert_eq!(b.account("bob").unwrap(), None);

    // Tokens: the cap revokes the oldest, a revocation on B is seen on A.
    let token = |issued: u64| TokenRecord {
        login: "alice".into(),
        issued_unix_ms: issued,
        expires_unix_ms: issued + 1_000_000,
    };
    for (i, sha) in [[1u8; 32], [2; 32], [3; 32]].iter().enumerate() {
        a.put_token(*sha, &token(1000 + i as u64), 2).unwrap();
    }
    assert_eq!(b.token([1; 32]).unwrap(), None, "the oldest beyond the cap");
    assert_eq!(b.token([2; 32]).unwrap(), Some(token(1001)));
    assert_eq!(b.token([3; 32]).unwrap(), Some(token(1002)));
    assert!(b.revoke_token([3; 32]).unwrap());
    assert!(!b.revoke_token([3; 32]).unwrap());
    assert_eq!(a.token([3; 32]).unwrap(), None);

    // Rename on B: the account and its tokens move, the old login is free.
    let renamed = b.rename_account("alice", "alice2").unwrap();
    assert_eq!(renamed.login, "alice2");
    assert_eq!(renamed.user_id, 7);
    assert_eq!(a.account("alice").unwrap(), None);
    assert_eq!(a.account("alice2").unwrap(), Some(renamed));
    assert_eq!(a.token([2; 32]).unwrap().unwrap().login, "alice2");
    assert_eq!(
        a.rename_account("nobody", "alice3"),
        Err(StorageError::NotFound("account \"nobody\"".into()))
    );
    a.create_account(&AccountRecord {
        login: "carol".into(),
        user_id: 8,
        ..alice.clone()
    })
    .unwrap();
    assert_eq!(
        a.rename_account("alice2", "carol"),
        Err(StorageError::AlreadyExists)
    );
    a.create_account(&alice).unwrap();

    // Settings: written on A, scanned on B in key order, by scope and prefix.
    a.put_setting("room/lobby/ban/42", b"{\"by\":1}").unwrap();
    a.put_setting("room/lobby/ban/7", b"{}").unwrap();
    a.put_setting("room/lobby/modes", b"slow").unwrap();
    a.put_setting("room/lobbyx/ban/1", b"x").unwrap();
    a.put_setting("room/lob.by/ban/1", b"dots").unwrap();
    let keys =
        |items: Vec<(String, Vec<u8>)>| items.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(b.settings("room/lobby/", 10).unwrap()),
        ["room/lobby/ban/42", "room/lobby/ban/7", "room/lobby/modes"]
    );
    assert_eq!(
        keys(b.settings("room/lobby/ban/", 10).unwrap()),
        ["room/lobby/ban/42", "room/lobby/ban/7"]
    );
    assert_eq!(
        b.settings("room/lobby/modes", 10).unwrap(),
        vec![("room/lobby/modes".to_owned(), b"slow".to_vec())]
    );
    assert_eq!(
        keys(b.settings("room/lobby/", 1).unwrap()),
        ["room/lobby/ban/42"]
    );
    assert_eq!(
        keys(b.settings("room/lob.by/", 10).unwrap()),
        ["room/lob.by/ban/1"]
    );
    b.delete_setting("room/lobby/ban/42").unwrap();
    b.delete_setting("room/lobby/never-set").unwrap();
    assert_eq!(
        keys(a.settings("room/lobby/ban/", 10).unwrap()),
        ["room/lobby/ban/7"]
    );
    assert!(a.settings("room/empty/", 10).unwrap().is_empty());
    assert!(matches!(
        a.put_setting("room/lobby", b"x"),
        Err(StorageError::Invalid(_))
    ));

    // The whole path through the coalescing writer on B.
    let service = StorageService::start(Arc::new(b), CoalescerConfig::default());
    let handle = service.handle();
    let extra = msg(&mut ids, "lobby", 3, "", "through the writer");
    block_on(handle.append(extra.clone()).unwrap()).unwrap();
    let recent = block_on(handle.recent_messages("lobby", 1)).unwrap();
    assert_eq!(recent, vec![extra]);
    assert!(handle.health().is_healthy());
    service.shutdown().unwrap();
}

#[test]
fn a_resend_through_another_node_is_stored_once_and_acknowledged_with_the_original_id() {
    let Some(binary) = nats_server_or_skip("a_resend_through_another_node") else {
        return;
    };
    let _serial = one_cluster_at_a_time();
    let cluster = Cluster::start(&binary);
    let a = Arc::new(cluster.store(config(vec![cluster.url_of("n1")], 1)));
    let b = Arc::new(cluster.store(config(vec![cluster.url_of("n3")], 2)));
    let feed = b.feed(FeedRooms::All, None, 1024).unwrap();
    let deletions = b.deletions(Some("lobby"), 16).unwrap();
    let every_room = b.deletions(None, 16).unwrap();
    let settings = b.setting_changes("room", 16).unwrap();

    let service_a = StorageService::start(a.clone(), CoalescerConfig::default());
    let service_b = StorageService::start(b.clone(), CoalescerConfig::default());
    let mut ids_a = MessageIdGen::new(1, 0);
    let mut ids_b = MessageIdGen::new(2, 0);

    // Sent through A; its ack was lost, so the client resends the same nonce through B (another id there).
    let first = msg(&mut ids_a, "lobby", 42, "nonce-1", "hello");
    let resend = MessageRecord {
        id: ids_b.next_id(now_ms()),
        ..first.clone()
    };
    assert_ne!(first.id, resend.id);
    let outcome = block_on(service_a.handle().append(first.clone()).unwrap().outcome()).unwrap();
    assert_eq!(outcome, AppendOutcome::Stored);
    let outcome = block_on(service_b.handle().append(resend.clone()).unwrap().outcome()).unwrap();
    assert_eq!(outcome, AppendOutcome::Duplicate { original: first.id });
    // The plain acknowledgement resolves Ok for a resend too.
    block_on(service_b.handle().append(resend.clone()).unwrap()).unwrap();

    // A resend inside one batch, and a reused nonce with another text (a different message).
    let second = msg(&mut ids_b, "lobby", 42, "nonce-2", "again");
    let second_resend = MessageRecord {
        id: ids_b.next_id(now_ms()),
        ..second.clone()
    };
    let other_text = msg(
        &mut ids_b,
        "lobby",
        42,
        "nonce-1",
        "something else entirely",
    );
    assert_eq!(
        b.append_messages_with_outcomes(&[second.clone(), second_resend, other_text.clone()])
            .unwrap(),
        vec![
            AppendOutcome::Stored,
            AppendOutcome::Duplicate {
                original: second.id
            },
            AppendOutcome::Stored
        ]
    );

    // Stored once: history and the feed each have it once.
    let sentinel = msg(&mut ids_a, "lobby", 1, "", "sentinel");
    a.append_messages(std::slice::from_ref(&sentinel)).unwrap();
    assert_eq!(
        ids_of(&a.recent_messages("lobby", 10).unwrap()),
        vec![first.id, second.id, other_text.id, sentinel.id]
    );
    // Before the feed's reader takes anything, its lag is the four stored messages (read and queued here, or
    // still held by the broker for its consumer).
    let lag = |store: &NatsStore| {
        metric_value(
            &store.metrics_text(),
            "twitchy_cluster_consumer_lag_messages{room=\"*\"}",
        )
    };
    let deadline = std::time::Instant::now() + FEED_WAIT;
    while feed.read_seq() < b.last_seq().unwrap() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lag(&b), Some(4));
    let mut seen = Vec::new();
    loop {
        let item = next_item(feed.receiver());
        seen.push(item.record.id);
        if item.record.id == sentinel.id {
            break;
        }
    }
    assert_eq!(seen, vec![first.id, second.id, other_text.id, sentinel.id]);
    assert_eq!(lag(&b), Some(0), "everything taken");
    // B saw three resends (one twice); every publish that was answered was timed.
    let b_metrics = b.metrics_text();
    assert_eq!(
        metric_value(&b_metrics, "twitchy_cluster_duplicates_total"),
        Some(3)
    );
    assert_eq!(
        metric_value(&b_metrics, "twitchy_cluster_connected"),
        Some(1)
    );
    assert!(
        metric_value(
            &a.metrics_text(),
            "twitchy_cluster_publish_ack_seconds_count"
        )
        .is_some_and(|n| n >= 2)
    );
    drop(feed);
    assert_eq!(lag(&b), None, "a dropped feed leaves /metrics");

    // A deletion through A reaches B's deletions of the room; one in another room does not.
    let elsewhere = msg(&mut ids_a, "side", 1, "", "elsewhere");
    a.append_messages(std::slice::from_ref(&elsewhere)).unwrap();
    assert!(a.delete_message("side", elsewhere.id).unwrap());
    assert!(a.delete_message("lobby", second.id).unwrap());
    let deleted = deletions
        .receiver()
        .recv_timeout(FEED_WAIT)
        .expect("the deletion");
    assert_eq!(deleted, ("lobby".to_owned(), second.id));
    assert!(
        deletions.receiver().is_empty(),
        "only the room's own deletions"
    );
    let both: Vec<(String, MessageId)> = (0..2)
        .map(|_| {
            every_room
                .receiver()
                .recv_timeout(FEED_WAIT)
                .expect("a deletion")
        })
        .collect();
    assert_eq!(
        both,
        vec![
            ("side".to_owned(), elsewhere.id),
            ("lobby".to_owned(), second.id)
        ]
    );

    // Settings written and deleted through A reach B's watch of the rooms' settings, in order; a user's do not.
    a.put_setting("user/42/profile", b"{}").unwrap();
    a.put_setting("room/lobby/modes", b"{\"slow\":30}").unwrap();
    a.put_setting("room/a.b c/ban/7", b"{}").unwrap();
    a.delete_setting("room/a.b c/ban/7").unwrap();
    let changes: Vec<SettingChange> = (0..3)
        .map(|_| {
            settings
                .receiver()
                .recv_timeout(FEED_WAIT)
                .expect("a change")
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            SettingChange {
                key: "room/lobby/modes".into(),
                value: Some(b"{\"slow\":30}".to_vec())
            },
            SettingChange {
                key: "room/a.b c/ban/7".into(),
                value: Some(b"{}".to_vec())
            },
            SettingChange {
                key: "room/a.b c/ban/7".into(),
                value: None
            },
        ]
    );
    assert!(settings.receiver().is_empty());
    service_a.shutdown().unwrap();
    service_b.shutdown().unwrap();
}

#[test]
fn the_feed_sees_another_nodes_messages_once_in_order_and_resumes_after_its_server_is_killed() {
    let Some(binary) = nats_server_or_skip("the_feed_resumes") else {
        return;
    };
    let _serial = one_cluster_at_a_time();
    let mut cluster = Cluster::start(&binary);
    let a = cluster.store(config(cluster.urls(), 1));
    let b = cluster.store(config(cluster.urls(), 2));
    let feed = b
        .feed(FeedRooms::Rooms(vec!["lobby".into()]), Some(1), 64)
        .unwrap();
    let both = b
        .feed(
            FeedRooms::Rooms(vec!["lobby".into(), "side".into()]),
            None,
            4096,
        )
        .unwrap();
    // A watch of the rooms' settings lives through the kill too.
    let settings = b.setting_changes("room", 16).unwrap();
    let modes = |slow: u32| SettingChange {
        key: "room/lobby/modes".into(),
        value: Some(format!("{{\"slow\":{slow}}}").into_bytes()),
    };
    a.put_setting("room/lobby/modes", &modes(1).value.unwrap())
        .unwrap();

    let mut ids = MessageIdGen::new(1, 0);
    let mut sent = Vec::new();
    let mut side = Vec::new();
    let mut received: Vec<FeedItem> = Vec::new();
    for round in 0..40 {
        let mut batch: Vec<MessageRecord> = (0..5)
            .map(|n| {
                msg(
                    &mut ids,
                    "lobby",
                    n,
                    "",
                    &format!("round {round} message {n}"),
                )
            })
            .collect();
        let noise = msg(&mut ids, "elsewhere", 9, "", "not for this feed");
        let aside = msg(&mut ids, "side", 8, "", &format!("side {round}"));
        batch.push(noise);
        batch.push(aside.clone());
        append_until_acked(&a, &batch);
        sent.extend(batch.into_iter().filter(|m| m.room == "lobby"));
        side.push(aside);
        if round == 20 {
            // Read part of the feed, then kill the server B's client is connected to.
            while received.len() < 50 {
                received.push(next_item(feed.receiver()));
            }
            let victim = b.connected_server();
            eprintln!("killing {victim}, the server B is connected to");
            cluster.kill(&victim);
        }
    }
    while received.len() < sent.len() {
        received.push(next_item(feed.receiver()));
    }
    // A setting written after the kill reaches the watch, after the one written before it (a put that failed
    // may still have been applied, so the new value can come twice: the test reads its first copy only).
    for attempt in 0.. {
        match a.put_setting("room/lobby/modes", &modes(2).value.unwrap()) {
            Ok(()) => break,
            Err(e) if e.is_transient() && attempt < 80 => {
                // The bucket's stream may be electing a leader (answered at once with "no responders").
                eprintln!("put failed, retrying: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => panic!("put failed: {e}"),
        }
    }
    let first = settings
        .receiver()
        .recv_timeout(FEED_WAIT)
        .expect("the first change");
    assert_eq!(first, modes(1));
    let second = settings
        .receiver()
        .recv_timeout(FEED_WAIT)
        .expect("the change after the kill");
    assert_eq!(second, modes(2));
    // Nothing after: the next item is a new sentinel, not a repeat.
    let sentinel = msg(&mut ids, "lobby", 1, "", "sentinel");
    append_until_acked(&a, std::slice::from_ref(&sentinel));
    let last = next_item(feed.receiver());
    assert_eq!(last.record.id, sentinel.id);
    assert_eq!(feed.read_seq(), last.seq);
    assert_eq!(
        b.last_seq().unwrap(),
        last.seq,
        "lag 0 once the feed has read everything"
    );

    assert!(
        received.windows(2).all(|w| w[0].seq < w[1].seq),
        "stream order"
    );
    let got: Vec<MessageId> = received.iter().map(|i| i.record.id).collect();
    assert_eq!(got.len(), sent.len());
    let got_set: HashSet<MessageId> = got.iter().copied().collect();
    assert_eq!(got_set.len(), got.len(), "no message twice");
    assert_eq!(got_set, ids_of(&sent).into_iter().collect::<HashSet<_>>());
    assert_eq!(
        got,
        ids_of(&sent),
        "one publisher: the order it appended in"
    );

    // The two-room feed (started at the end of the stream) got both rooms' messages and nothing else.
    let mut two: Vec<FeedItem> = Vec::new();
    while two.last().map(|i| i.record.id) != Some(sentinel.id) {
        two.push(next_item(both.receiver()));
    }
    let rooms: HashMap<String, usize> = two.iter().fold(HashMap::new(), |mut m, i| {
        *m.entry(i.record.room.clone()).or_default() += 1;
        m
    });
    assert_eq!(rooms.get("elsewhere"), None);
    assert_eq!(rooms["side"], side.len());
    assert_eq!(rooms["lobby"], sent.len() + 1);
}

#[test]
fn killing_one_of_three_servers_during_appends_loses_no_acknowledged_message() {
    let Some(binary) = nats_server_or_skip("killing_one_of_three_servers") else {
        return;
    };
    let _serial = one_cluster_at_a_time();
    let mut cluster = Cluster::start(&binary);
    let store = Arc::new(cluster.store(config(cluster.urls(), 1)));
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let handle = service.handle();

    // A client keeps sending, 50 messages in flight, while the stream's leader is killed. Like a chat client it
    // resends what was refused or not acknowledged, with the same nonce (and, through the engine, a new id),
    // until it is acknowledged; an acknowledgement of a resend may name the original id.
    const MESSAGES: u64 = 2_000;
    const IN_FLIGHT: usize = 50;
    let (progress_tx, progress_rx) = flume::unbounded::<usize>();
    let writer = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            let mut ids = MessageIdGen::new(1, 0);
            // nonce -> the id its acknowledgement carried
            let mut acked: HashMap<String, MessageId> = HashMap::new();
            let mut retries = 0u64;
            let mut to_send: Vec<u64> = (0..MESSAGES).rev().collect();
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !to_send.is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the cluster never took the messages"
                );
                let mut in_flight = Vec::new();
                while in_flight.len() < IN_FLIGHT {
                    let Some(n) = to_send.pop() else { break };
                    let record = msg(
                        &mut ids,
                        "lobby",
                        n % 7,
                        &format!("n{n}"),
                        &format!("m {n}"),
                    );
                    match handle.append(record.clone()) {
                        Ok(ack) => in_flight.push((n, record.id, ack.outcome())),
                        Err(e) => {
                            assert!(e.is_transient(), "{e}");
                            retries += 1;
                            to_send.push(n);
                            std::thread::sleep(Duration::from_millis(20));
                            break;
                        }
                    }
                }
                for (n, id, ack) in in_flight {
                    match block_on(ack) {
                        Ok(AppendOutcome::Stored) => {
                            assert!(
                                acked.insert(format!("n{n}"), id).is_none(),
                                "n{n} acked twice"
                            );
                        }
                        Ok(AppendOutcome::Duplicate { original }) => {
                            assert!(
                                acked.insert(format!("n{n}"), original).is_none(),
                                "n{n} acked twice"
                            );
                        }
                        Err(e) => {
                            assert!(e.is_transient(), "{e}");
                            retries += 1;
                            to_send.push(n);
                        }
                    }
                }
                let _ = progress_tx.send(acked.len());
            }
            (acked, retries)
        })
    };
    // Kill the stream leader a third of the way in.
    loop {
        let n = progress_rx
            .recv_timeout(FEED_WAIT)
            .expect("the writer makes progress");
        if n as u64 >= MESSAGES / 3 {
            break;
        }
    }
    let leader = store
        .stream_leader()
        .unwrap()
        .expect("the stream has a leader");
    eprintln!("killing {leader}, the stream leader");
    cluster.kill(&leader);
    let (acked, retries) = writer.join().unwrap();
    eprintln!("{} acknowledged after {retries} resends", acked.len());
    assert_eq!(
        acked.len() as u64,
        MESSAGES,
        "appends continue after a server is lost"
    );
    assert!(handle.health().is_healthy(), "{:?}", handle.health());
    service.shutdown().unwrap();
    drop(store);

    // Every acknowledged message is there exactly once, read from another node through the two servers left.
    let reader = cluster.store(config(cluster.urls(), 2));
    let feed = reader
        .feed(FeedRooms::Rooms(vec!["lobby".into()]), Some(1), 4096)
        .unwrap();
    let last = reader.last_seq().unwrap();
    let mut stored: Vec<FeedItem> = Vec::new();
    while stored.last().map(|i| i.seq) != Some(last) {
        stored.push(next_item(feed.receiver()));
    }
    let stored_ids: HashSet<MessageId> = stored.iter().map(|i| i.record.id).collect();
    let stored_nonces: HashSet<&str> = stored
        .iter()
        .map(|i| i.record.client_nonce.as_str())
        .collect();
    assert_eq!(stored_ids.len(), stored.len(), "each message stored once");
    assert_eq!(stored_nonces.len(), stored.len(), "each nonce stored once");
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(_, id)| !stored_ids.contains(id))
        .map(|(nonce, _)| nonce)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost: {lost:?}",
        lost.len()
    );
    assert_eq!(
        stored.len(),
        acked.len(),
        "nothing stored that was not acknowledged in the end"
    );
    // History agrees with the feed.
    let forward = reader.messages_after("lobby", MessageId(0), 5_000).unwrap();
    assert_eq!(
        forward.iter().map(|m| m.id).collect::<Vec<_>>(),
        stored.iter().map(|i| i.record.id).collect::<Vec<_>>()
    );
}
