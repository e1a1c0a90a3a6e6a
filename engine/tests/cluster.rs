//! Several engine nodes sharing every room through a real three-server NATS JetStream cluster (R3), started and
//! stopped by the tests on loopback: a sender on one node, viewers on the others over WebSocket and TCP, every
//! message once and in one order everywhere, the same last-10 on join, resends through another node stored once.

mod common;

#[path = "../../storage/tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;

use std::time::Duration;

use common::TestServer;
use common::client::{Irc, is_ack, metric, metric_sample, register, tag};

/// Starts an engine node of the cluster with two shards (the test servers have 1 GB of JetStream file storage
/// each, so the log keeps at most 100 MB).
fn node(cluster: &nats::Cluster, node_id: u16, extra: &[&str]) -> TestServer {
    let urls = cluster.urls().join(",");
    let id = node_id.to_string();
    let mut args = vec![
        "--shards",
        "2",
        "--cluster",
        &urls,
        "--node-id",
        &id,
        "--cluster-retention-bytes",
        "104857600",
    ];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// The ids of the next `count` live chat messages `viewer` receives (history replayed on JOIN skipped), in order.
fn privmsg_ids(viewer: &mut Irc, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let line =
                viewer.expect_within(&format!("message {i}"), Duration::from_secs(30), |l| {
                    l.contains(" PRIVMSG #lobby ") && tag(l, "historical").is_none()
                });
            tag(&line, "id").expect("an id tag")
        })
        .collect()
}

/// The ids of the history a fresh viewer of `server` is replayed on joining #lobby, in order.
fn history_on_join(server: &TestServer) -> Vec<String> {
    let mut late = Irc::tcp(server.irc);
    late.login_anonymous();
    late.join("lobby");
    late.drain(Duration::from_millis(500))
        .iter()
        .filter(|l| l.contains(" PRIVMSG #lobby ") && tag(l, "historical").as_deref() == Some("1"))
        .map(|l| tag(l, "id").unwrap())
        .collect()
}

#[test]
fn nodes_share_a_room_every_viewer_sees_every_message_once_in_one_order() {
    let Some(binary) = nats::nats_server_or_skip("cluster") else {
        return;
    };
    let cluster = nats::Cluster::start(&binary);
    let n1 = node(&cluster, 1, &[]);
    let n2 = node(&cluster, 2, &[]);
    let n3 = node(&cluster, 3, &[]);

    // An account made through node 1 signs in on the others (accounts and tokens live in the cluster).
    let token = register(n1.http, "cluster_sender", "correct horse");
    let mut viewer2 = Irc::ws(n2.http);
    viewer2.login_anonymous();
    viewer2.join("lobby");
    let mut viewer3 = Irc::tcp(n3.irc);
    viewer3.login_anonymous();
    viewer3.join("lobby");
    let mut sender = Irc::tcp(n1.irc);
    sender.login("cluster_sender", &token);
    sender.join("lobby");

    let mut acked = Vec::new();
    // 15: the rate limit (20 per 30 s) leaves room for the resend and one more.
    for i in 0..15 {
        sender.send(&format!(
            "@client-nonce=c{i} PRIVMSG #lobby :message number {i}"
        ));
    }
    for _ in 0..15 {
        let ack = sender.expect_within("an ack", Duration::from_secs(30), is_ack);
        acked.push((tag(&ack, "client-nonce").unwrap(), tag(&ack, "id").unwrap()));
    }
    let on2 = privmsg_ids(&mut viewer2, 15);
    let on3 = privmsg_ids(&mut viewer3, 15);
    assert_eq!(on2, on3, "one order on every node");
    let mut unique = on2.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 15, "every message once: {on2:?}");
    let mut acked_ids: Vec<String> = acked.iter().map(|(_, id)| id.clone()).collect();
    acked_ids.sort();
    assert_eq!(acked_ids, unique, "what was shown is what was acknowledged");

    // The same user resends message 5 through node 2 (say its ack from node 1 was lost): acknowledged with the
    // original id, shown nowhere again.
    let mut resender = Irc::tcp(n2.irc);
    resender.login("cluster_sender", &token);
    resender.join("lobby");
    resender.send("@client-nonce=c5 PRIVMSG #lobby :message number 5");
    let again = resender.expect_within("the resend's ack", Duration::from_secs(30), is_ack);
    let original = &acked.iter().find(|(nonce, _)| nonce == "c5").unwrap().1;
    assert_eq!(tag(&again, "id").as_ref(), Some(original));
    // A fresh message after it: the next thing every viewer sees is that one, not the resend.
    sender.send("@client-nonce=after PRIVMSG #lobby :after the resend");
    let after = sender.expect_within("the last ack", Duration::from_secs(30), is_ack);
    let after_id = tag(&after, "id").unwrap();
    assert_eq!(privmsg_ids(&mut viewer2, 1), vec![after_id.clone()]);
    assert_eq!(privmsg_ids(&mut viewer3, 1), vec![after_id.clone()]);

    // The last 10 on join agree with the live order, on every node.
    let mut expected: Vec<String> = on2[6..].to_vec();
    expected.push(after_id);
    for (name, server) in [("node 1", &n1), ("node 3", &n3)] {
        assert_eq!(history_on_join(server), expected, "last 10 on {name}");
    }

    // The sender deletes its last message through node 1: the viewers of nodes 2 and 3 get CLEARMSG, and it
    // leaves every node's last-10 replay.
    let last = expected.last().unwrap().clone();
    sender.send(&format!("PRIVMSG #lobby :/delete {last}"));
    for viewer in [&mut viewer2, &mut viewer3] {
        viewer.expect_within("CLEARMSG", Duration::from_secs(30), |l| {
            l.contains(" CLEARMSG #lobby ") && tag(l, "target-msg-id").as_deref() == Some(&last)
        });
    }
    for server in [&n2, &n3] {
        // The ten before it, the older one that the deletion lets in included.
        assert_eq!(
            history_on_join(server),
            on2[5..].to_vec(),
            "last 10 after the deletion"
        );
    }

    // `/metrics`: each node is connected; node 1 timed its publishes to their PubAcks; node 2 counted the resend;
    // the viewers' nodes have handed every committed message of the room to their shards.
    for server in [&n1, &n2, &n3] {
        assert_eq!(
            metric_sample(server.http, "twitchy_cluster_connected"),
            Some(1.0)
        );
    }
    assert!(
        metric_sample(n1.http, "twitchy_cluster_publish_ack_seconds_count")
            .is_some_and(|n| n >= 16.0)
    );
    // Node 2 knew the resend from its feed (the nonce of a committed message) and answered it without
    // publishing again.
    assert_eq!(
        metric(n2.http, "twitchy_messages_deduplicated_total")
            .iter()
            .sum::<u64>(),
        1
    );
    for server in [&n2, &n3] {
        assert_eq!(
            metric_sample(
                server.http,
                "twitchy_cluster_consumer_lag_messages{room=\"lobby\"}"
            ),
            Some(0.0)
        );
    }
}

#[test]
fn moderation_through_one_node_holds_on_the_others_and_their_viewers_are_told() {
    let Some(binary) = nats::nats_server_or_skip("cluster") else {
        return;
    };
    let cluster = nats::Cluster::start(&binary);
    let dir = tempfile::tempdir().unwrap();
    let rooms = dir.path().join("rooms.toml");
    std::fs::write(
        &rooms,
        "[[rooms]]\nname = \"lobby\"\nstyle = \"pirate\"\nbroadcaster = \"cluster_owner\"\n",
    )
    .unwrap();
    let extra = ["--config", rooms.to_str().unwrap()];
    let start = |node_id: u16| node(&cluster, node_id, &extra);
    let n1 = start(1);
    let n2 = start(2);
    let owner_token = register(n1.http, "cluster_owner", "correct horse");
    let victim_token = register(n2.http, "cluster_victim", "battery staple");

    let mut victim = Irc::tcp(n2.irc);
    victim.login("cluster_victim", &victim_token);
    victim.join("lobby");
    victim.send("@client-nonce=v1 PRIVMSG #lobby :before the ban");
    victim.expect_within("an ack before the ban", Duration::from_secs(30), is_ack);

    let mut watcher = Irc::ws(n2.http);
    watcher.login_anonymous();
    watcher.join("lobby");

    let mut owner = Irc::tcp(n1.irc);
    owner.login("cluster_owner", &owner_token);
    owner.join("lobby");
    owner.send("PRIVMSG #lobby :/ban cluster_victim spamming");
    owner.expect_within("the ban's confirmation", Duration::from_secs(30), |l| {
        l.contains("NOTICE") && l.contains("cluster_victim")
    });

    // Through node 2, whose home learns the ban from the shared settings within a refresh.
    let mut refused = None;
    for attempt in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        victim.send(&format!(
            "@client-nonce=v2-{attempt} PRIVMSG #lobby :after the ban"
        ));
        let answer = victim.expect_within("an answer", Duration::from_secs(30), |l| {
            is_ack(l) || l.contains(" NOTICE ")
        });
        if !is_ack(&answer) {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("the ban holds on node 2");
    assert_eq!(
        tag(&refused, "msg-id").as_deref(),
        Some("msg_banned"),
        "{refused}"
    );
    // Node 2's viewers were told, as node 1's were: CLEARCHAT for the banned user.
    watcher.expect_within("CLEARCHAT on node 2", Duration::from_secs(30), |l| {
        l.contains("CLEARCHAT #lobby :cluster_victim")
    });
    // A mode set through node 1 reaches node 2's viewers as a ROOMSTATE.
    owner.send("PRIVMSG #lobby :/slow 10");
    watcher.expect_within("slow mode on node 2", Duration::from_secs(30), |l| {
        l.contains("ROOMSTATE #lobby") && tag(l, "slow").as_deref() == Some("10")
    });
}

#[test]
fn sends_go_on_when_a_nats_server_dies_it_rejoins_and_nothing_acknowledged_is_lost() {
    let Some(binary) = nats::nats_server_or_skip("cluster") else {
        return;
    };
    let mut cluster = nats::Cluster::start(&binary);
    let extra = ["--rate-limit-messages", "1000"];
    let start = |node_id: u16| node(&cluster, node_id, &extra);
    let n1 = start(1);
    let n2 = start(2);
    let token = register(n1.http, "cluster_steady", "correct horse");
    let mut viewer = Irc::tcp(n2.irc);
    viewer.login_anonymous();
    viewer.join("lobby");
    let mut sender = Irc::tcp(n1.irc);
    sender.login("cluster_steady", &token);
    sender.join("lobby");

    // Each message is sent until it is acknowledged, under the same nonce, as a client does after "try again".
    let mut acked: Vec<String> = Vec::new();
    for i in 0..40 {
        match i {
            // The first server in every node's list: the one the nodes most likely talk to.
            15 => cluster.kill("n1"),
            // It comes back with its data and rejoins...
            25 => cluster.restart("n1"),
            // ...and is one of the quorum once another server is lost: sends go on only if it caught up.
            32 => cluster.kill("n2"),
            _ => {}
        }
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries <= 60, "message {i} was never acknowledged");
            sender.send(&format!("@client-nonce=s{i} PRIVMSG #lobby :steady {i}"));
            let answer = sender.expect_within("an answer", Duration::from_secs(60), |l| {
                is_ack(l) || l.contains(" NOTICE ")
            });
            if is_ack(&answer) {
                assert_eq!(
                    tag(&answer, "client-nonce").as_deref(),
                    Some(format!("s{i}").as_str())
                );
                acked.push(tag(&answer, "id").unwrap());
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // The viewer on the other node gets every acknowledged message exactly once, and nothing else.
    let mut shown = privmsg_ids(&mut viewer, acked.len());
    shown.sort();
    let mut expected = acked.clone();
    expected.sort();
    assert_eq!(shown, expected);
    let extra: Vec<String> = viewer
        .drain(Duration::from_secs(2))
        .into_iter()
        .filter(|l| l.contains(" PRIVMSG "))
        .collect();
    assert!(
        extra.is_empty(),
        "shown twice or never acknowledged: {extra:?}"
    );
}

#[test]
fn viewers_of_a_killed_node_reconnect_to_another_and_catch_up_exactly() {
    let Some(binary) = nats::nats_server_or_skip("cluster") else {
        return;
    };
    let cluster = nats::Cluster::start(&binary);
    let extra = ["--rate-limit-messages", "1000"];
    let start = |node_id: u16| node(&cluster, node_id, &extra);
    let n1 = start(1);
    let n2 = start(2);
    let mut n3 = start(3);
    let token = register(n1.http, "cluster_talker", "correct horse");
    let mut viewer = Irc::tcp(n3.irc);
    viewer.login_anonymous();
    viewer.join("lobby");
    let mut sender = Irc::tcp(n1.irc);
    sender.login("cluster_talker", &token);
    sender.join("lobby");
    let mut say = |i: usize| -> String {
        sender.send(&format!("@client-nonce=k{i} PRIVMSG #lobby :talk {i}"));
        let ack = sender.expect_within("an ack", Duration::from_secs(30), is_ack);
        tag(&ack, "id").unwrap()
    };

    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(say(i));
    }
    let mut seen = privmsg_ids(&mut viewer, 5);
    // Node 3 dies with SIGKILL while the room goes on.
    n3.kill();
    for i in 5..25 {
        acked.push(say(i));
    }
    // The viewer notices, reconnects to node 2 and asks for what it missed after the last message it saw.
    while viewer.next_line(Duration::from_secs(5)).is_some() {}
    assert!(viewer.closed, "the connection to the killed node ended");
    let mut viewer = Irc::tcp(n2.irc);
    viewer.login_anonymous();
    viewer.join("lobby");
    let page = common::client::http(
        n2.http,
        "GET",
        &format!(
            "/api/rooms/lobby/messages?after={}&limit=100",
            seen.last().unwrap()
        ),
        None,
    );
    assert_eq!(page.status, 200, "{}", page.body);
    let caught_up: Vec<String> = page.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    seen.extend(caught_up);
    // And then live again.
    for i in 25..30 {
        acked.push(say(i));
    }
    seen.extend(privmsg_ids(&mut viewer, 5));
    assert_eq!(
        seen, acked,
        "every acknowledged message exactly once, in order"
    );
}
