//! Chat features end to end against the real binary on two shards, over WebSocket and TCP: emotes, `/me`, replies,
//! the last-10 replay's tags and its opt-out, membership (JOIN/PART/NAMES and the chatters API), typing indicators
//! and reactions, and whispers with offline delivery and unread counts.

mod common;

use std::time::Duration;

use common::TestServer;
use common::client::{Irc, http, http_as, is_ack, register, tag, trailing};

const PASSWORD: &str = "correct horse battery";

fn server() -> TestServer {
    TestServer::start(&["--shards", "2", "--limits-exempt-loopback"])
}

fn client(server: &TestServer, user: &str, token: &str, ws: bool) -> Irc {
    let mut irc = if ws {
        Irc::ws(server.http)
    } else {
        Irc::tcp(server.irc)
    };
    irc.send("CAP REQ :twitch.tv/tags twitch.tv/commands twitch.tv/membership");
    irc.send(&format!("PASS oauth:{token}"));
    irc.send(&format!("NICK {user}"));
    irc.expect("welcome 376", |l| l.contains(" 376 "));
    irc
}

fn joined(server: &TestServer, user: &str, token: &str, ws: bool, room: &str) -> Irc {
    let mut irc = client(server, user, token, ws);
    irc.join(room);
    irc
}

/// Sends a line and waits for its acknowledgement; returns the message id.
fn send_acked(irc: &mut Irc, line: &str) -> String {
    irc.send(line);
    let ack = irc.expect(&format!("ack for {line:?}"), is_ack);
    tag(&ack, "id").unwrap()
}

/// The message of a history API page whose `field` is `value`.
fn find_message(page: &serde_json::Value, field: &str, value: &str) -> serde_json::Value {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m[field] == value)
        .unwrap_or_else(|| panic!("no message with {field} {value:?} in {page}"))
        .clone()
}

/// Every range of an `emotes` tag points at that emote's code in `text` (code-point offsets, inclusive).
fn emote_ranges_point_at_codes(emotes: &str, text: &str, codes: &serde_json::Value) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut count = 0;
    for group in emotes.split('/').filter(|g| !g.is_empty()) {
        let (id, ranges) = group.split_once(':').unwrap();
        let code = codes
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("emote id {id} listed by /api/emotes"))["code"]
            .as_str()
            .unwrap()
            .to_owned();
        for range in ranges.split(',') {
            let (start, end) = range.split_once('-').unwrap();
            let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
            let found: String = chars[start..=end].iter().collect();
            assert_eq!(found, code, "range {range} of {emotes:?} in {text:?}");
            count += 1;
        }
    }
    count
}

#[test]
fn emotes_are_tagged_served_and_survive_styling() {
    let server = server();
    let list = http(server.http, "GET", "/api/emotes", None);
    assert_eq!(list.status, 200);
    let emotes = list.json();
    assert!(emotes.as_array().unwrap().len() >= 20);
    for emote in emotes.as_array().unwrap() {
        let url = emote["url"].as_str().unwrap();
        let image = http(server.http, "GET", url, None);
        assert_eq!(image.status, 200, "{url}");
        assert_eq!(
            image.header("content-type").as_deref(),
            Some("image/svg+xml")
        );
        assert!(
            image.header("cache-control").unwrap().contains("max-age="),
            "{url}"
        );
        assert!(
            image.body.contains("<svg") && image.body.contains(emote["code"].as_str().unwrap())
        );
    }
    assert_eq!(
        http(server.http, "GET", "/emotes/999.svg", None).status,
        404
    );

    let token = register(server.http, "emoter", PASSWORD);
    let mut viewer = Irc::tcp(server.irc);
    viewer.login_anonymous();
    viewer.join("lobby");
    let mut sender = joined(&server, "emoter", &token, true, "lobby");
    for text in [
        "twiGG that was a great play twiHype",
        "twiSkibidi twiSkibidi lets go",
        "honestly no emotes in this one",
    ] {
        send_acked(&mut sender, &format!("PRIVMSG #lobby :{text}"));
        let line = viewer.expect("the message", |l| l.contains(" PRIVMSG #lobby "));
        let delivered = trailing(&line).to_owned();
        let tag_value = tag(&line, "emotes").unwrap();
        let found = emote_ranges_point_at_codes(&tag_value, &delivered, &emotes);
        let sent = text.split(' ').filter(|w| w.starts_with("twi")).count();
        assert_eq!(
            found, sent,
            "every emote kept through styling: {delivered:?} ({tag_value})"
        );
    }
}

#[test]
fn me_replies_and_the_replay_carry_twitchs_tags() {
    let server = server();
    let alice = register(server.http, "alice_a", PASSWORD);
    let bob = register(server.http, "bob_b", PASSWORD);
    let mut a = joined(&server, "alice_a", &alice, true, "lobby");
    let mut b = joined(&server, "bob_b", &bob, false, "lobby");

    // /me: styled on its inner text, delivered as an ACTION.
    send_acked(&mut a, "PRIVMSG #lobby :/me waves hello twiWave");
    let action = b.expect("the ACTION", |l| l.contains(" PRIVMSG #lobby "));
    let text = trailing(&action);
    assert!(
        text.starts_with("\u{1}ACTION ") && text.ends_with('\u{1}'),
        "{text:?}"
    );
    assert!(!text.contains("ACTION ACTION"));
    assert_eq!(
        tag(&action, "twitchy/original").as_deref(),
        Some("waves hello twiWave")
    );

    // Replies: the parent's tags; a reply to a reply keeps the thread's first message.
    let parent = send_acked(&mut a, "PRIVMSG #lobby :who wants pizza");
    b.expect("parent", |l| l.contains(&parent));
    let reply = send_acked(
        &mut b,
        &format!("@reply-parent-msg-id={parent} PRIVMSG #lobby :me please"),
    );
    let line = a.expect("the reply", |l| l.contains(&format!("id={reply};")));
    assert_eq!(
        tag(&line, "reply-parent-msg-id").as_deref(),
        Some(parent.as_str())
    );
    assert_eq!(
        tag(&line, "reply-parent-user-login").as_deref(),
        Some("alice_a")
    );
    assert_eq!(
        tag(&line, "reply-thread-parent-msg-id").as_deref(),
        Some(parent.as_str())
    );
    assert!(tag(&line, "reply-parent-msg-body").is_some_and(|b| !b.is_empty()));
    let second = send_acked(
        &mut a,
        &format!("@reply-parent-msg-id={reply} PRIVMSG #lobby :ok bob"),
    );
    let line = b.expect("the reply to the reply", |l| {
        l.contains(&format!("id={second};"))
    });
    assert_eq!(
        tag(&line, "reply-parent-msg-id").as_deref(),
        Some(reply.as_str())
    );
    assert_eq!(
        tag(&line, "reply-thread-parent-msg-id").as_deref(),
        Some(parent.as_str())
    );
    assert_eq!(
        tag(&line, "reply-thread-parent-user-login").as_deref(),
        Some("alice_a")
    );
    // A parent that does not exist is never named: the message goes out plain.
    let orphan = send_acked(
        &mut a,
        "@reply-parent-msg-id=00000000-0000-7000-8000-000000000000 PRIVMSG #lobby :to nobody",
    );
    let line = b.expect("the orphan", |l| l.contains(&format!("id={orphan};")));
    assert_eq!(tag(&line, "reply-parent-msg-id"), None);

    // The replay on JOIN: historical=1 and rm-received-ts, replies keep their tags.
    let mut late = Irc::ws(server.http);
    late.login_anonymous();
    late.send("JOIN #lobby");
    let replayed = late.expect("replayed reply", |l| l.contains(&format!("id={second};")));
    assert_eq!(tag(&replayed, "historical").as_deref(), Some("1"));
    assert!(tag(&replayed, "rm-received-ts").is_some());
    assert_eq!(
        tag(&replayed, "reply-parent-msg-id").as_deref(),
        Some(reply.as_str())
    );

    // Bots opt out of the replay.
    let mut bot = Irc::tcp(server.irc);
    bot.send("CAP REQ :twitch.tv/tags twitch.tv/commands twitchy.tv/no-history");
    bot.login_anonymous();
    bot.join("lobby");
    let after_join = bot.drain(Duration::from_millis(500)).join("\n");
    assert!(!after_join.contains("PRIVMSG"), "{after_join}");

    // History API: actions are marked, emotes tagged.
    let history = http(
        server.http,
        "GET",
        "/api/rooms/lobby/messages?limit=100",
        None,
    )
    .json();
    let me_line = find_message(&history, "original", "waves hello twiWave");
    assert_eq!(me_line["action"], true);
    let reply_line = find_message(&history, "id", &reply);
    assert_eq!(
        reply_line["reply"]["parent_msg_id"],
        parent.as_str(),
        "{reply_line}"
    );
    assert!(!me_line["text"].as_str().unwrap().contains('\u{1}'));
}

#[test]
fn membership_names_and_chatters_cover_every_shard() {
    let server = server();
    let tokens: Vec<(String, String)> = (0..4)
        .map(|i| {
            let login = format!("member_{i}");
            let token = register(server.http, &login, PASSWORD);
            (login, token)
        })
        .collect();
    let mut first = joined(&server, &tokens[0].0, &tokens[0].1, true, "tavern");
    // Others join over both transports (and so both shards).
    let mut others: Vec<Irc> = tokens[1..]
        .iter()
        .enumerate()
        .map(|(i, (login, token))| joined(&server, login, token, i % 2 == 0, "tavern"))
        .collect();
    let mut anonymous = Irc::tcp(server.irc);
    anonymous.login_anonymous();
    anonymous.join("tavern");
    for (login, _) in &tokens[1..] {
        let suffix = format!(":{login}!{login}@{login}.tmi.twitch.tv JOIN #tavern");
        first.expect(&format!("JOIN of {login}"), |l| l == suffix);
    }
    // Anonymous viewers never appear, as on Twitch.
    let seen = first.drain(Duration::from_millis(300)).join("\n");
    assert!(!seen.contains("justinfan"), "{seen}");

    // A newcomer's NAMES lists everyone logged in.
    let newcomer = register(server.http, "newcomer", PASSWORD);
    let mut late = client(&server, "newcomer", &newcomer, false);
    late.send("JOIN #tavern");
    let names = late.expect("NAMES", |l| l.contains(" 353 "));
    for (login, _) in &tokens {
        assert!(names.contains(login.as_str()), "{names}");
    }
    let chatters = http(
        server.http,
        "GET",
        "/api/rooms/tavern/chatters?limit=2",
        None,
    );
    assert_eq!(chatters.status, 200, "{}", chatters.body);
    let page = chatters.json();
    assert_eq!(page["chatters"].as_array().unwrap().len(), 2);
    assert_eq!(page["logged_in"], 5);
    assert_eq!(page["anonymous"], 1);
    let next = page["next"].as_str().unwrap();
    let rest = http(
        server.http,
        "GET",
        &format!("/api/rooms/tavern/chatters?after={next}&limit=100"),
        None,
    )
    .json();
    assert_eq!(rest["chatters"].as_array().unwrap().len(), 3);
    assert_eq!(rest["next"], serde_json::Value::Null);
    assert_eq!(
        http(
            server.http,
            "GET",
            "/api/rooms/tavern/chatters?limit=0",
            None
        )
        .status,
        400
    );
    assert_eq!(
        http(server.http, "GET", "/api/rooms/nowhere/chatters", None).status,
        404
    );

    // Leaving: a PART for the last connection of a user.
    let leaver = others.pop().unwrap();
    drop(leaver);
    let login = &tokens[3].0;
    let part = format!(":{login}!{login}@{login}.tmi.twitch.tv PART #tavern");
    first.expect("PART", |l| l == part);
}

#[test]
fn typing_and_reactions_reach_the_room_but_not_the_sender() {
    let mut server = server();
    let alice = register(server.http, "alice_t", PASSWORD);
    let bob = register(server.http, "bob_t", PASSWORD);
    let mut a = joined(&server, "alice_t", &alice, true, "globe");
    let mut b = joined(&server, "bob_t", &bob, false, "globe");
    a.send("@+typing=active TAGMSG #globe");
    let typing = b.expect("typing", |l| l.contains(" TAGMSG #globe"));
    assert_eq!(tag(&typing, "+typing").as_deref(), Some("active"));
    assert!(typing.contains(":alice_t!alice_t@"));
    let id = send_acked(&mut a, "PRIVMSG #globe :react to this");
    b.send(&format!("@+draft/react=🔥;+draft/reply={id} TAGMSG #globe"));
    let react = a.expect("reaction", |l| l.contains(" TAGMSG #globe"));
    assert_eq!(tag(&react, "+draft/react").as_deref(), Some("🔥"));
    assert_eq!(tag(&react, "+draft/reply").as_deref(), Some(id.as_str()));
    assert_eq!(tag(&react, "twitchy/reaction-count").as_deref(), Some("1"));
    // The same user reacting again does not count twice; another user does.
    b.send(&format!("@+draft/react=🔥;+draft/reply={id} TAGMSG #globe"));
    let again = a.expect("reaction again", |l| l.contains(" TAGMSG #globe"));
    assert_eq!(tag(&again, "twitchy/reaction-count").as_deref(), Some("1"));
    a.send(&format!("@+draft/react=🔥;+draft/reply={id} TAGMSG #globe"));
    let counted = b.expect("alice's reaction", |l| l.contains("+draft/react"));
    assert_eq!(
        tag(&counted, "twitchy/reaction-count").as_deref(),
        Some("2")
    );
    // The sender does not get its own back; anonymous users cannot send them.
    let own = b.drain(Duration::from_millis(300)).join("\n");
    assert!(!own.contains("bob_t!bob_t@"), "{own}");
    let mut anon = Irc::ws(server.http);
    anon.login_anonymous();
    anon.join("globe");
    anon.send("@+typing=active TAGMSG #globe");
    let quiet = a.drain(Duration::from_millis(400)).join("\n");
    assert!(!quiet.contains("justinfan"), "{quiet}");

    // A reaction to a message the room no longer holds is refused with a NOTICE.
    a.send("@+draft/react=🔥;+draft/reply=00000000-0000-7000-8000-000000000000 TAGMSG #globe");
    let refused = a.expect("reaction refused", |l| l.contains(" NOTICE #globe "));
    assert_eq!(
        tag(&refused, "msg-id").as_deref(),
        Some("msg_reaction_not_found")
    );

    // The counts are kept beside the message: in the history API, and counting on after a restart.
    let history = http(server.http, "GET", "/api/rooms/globe/messages", None).json();
    let reacted = find_message(&history, "id", &id);
    assert_eq!(reacted["reactions"]["🔥"], 2, "{reacted}");
    drop((a, b, anon));
    server.restart();
    let carol = register(server.http, "carol_t", PASSWORD);
    let mut c = joined(&server, "carol_t", &carol, true, "globe");
    let mut watcher = joined(&server, "bob_t", &bob, false, "globe");
    c.send(&format!("@+draft/react=🔥;+draft/reply={id} TAGMSG #globe"));
    let third = watcher.expect("reaction after the restart", |l| l.contains("+draft/react"));
    assert_eq!(tag(&third, "twitchy/reaction-count").as_deref(), Some("3"));
}

#[test]
fn whispers_reach_every_connection_and_wait_for_offline_users() {
    let server = server();
    let alice = register(server.http, "alice_w", PASSWORD);
    let bob = register(server.http, "bob_w", PASSWORD);
    let carol = register(server.http, "carol_w", PASSWORD);
    let mut a = client(&server, "alice_w", &alice, true);
    let mut b1 = client(&server, "bob_w", &bob, false);
    let mut b2 = client(&server, "bob_w", &bob, true);

    // WHISPER and /w (in a channel not joined), to every connection of the recipient; the sender gets its echo.
    a.send("WHISPER bob_w :psst twiGG");
    for (name, conn) in [("tcp", &mut b1), ("ws", &mut b2)] {
        let line = conn.expect(&format!("whisper on {name}"), |l| {
            l.contains(" WHISPER bob_w :")
        });
        assert_eq!(trailing(&line), "psst twiGG");
        assert!(line.contains(":alice_w!alice_w@"));
        assert!(tag(&line, "message-id").is_some());
        assert!(tag(&line, "thread-id").unwrap().contains('_'));
        assert_eq!(tag(&line, "emotes").as_deref(), Some("15:5-9"));
    }
    a.expect("echo", |l| l.contains(" WHISPER bob_w :psst twiGG"));
    a.send("PRIVMSG #globe :/w bob_w second one");
    b1.expect("/w", |l| l.contains(" WHISPER bob_w :second one"));

    // Refusals.
    a.send("WHISPER alice_w :me?");
    let refused = a.expect("self", |l| l.contains(" NOTICE "));
    assert_eq!(
        tag(&refused, "msg-id").as_deref(),
        Some("whisper_invalid_self")
    );
    a.send("WHISPER nobody_here :hello?");
    let refused = a.expect("unknown", |l| l.contains(" NOTICE "));
    assert_eq!(
        tag(&refused, "msg-id").as_deref(),
        Some("whisper_invalid_recipient")
    );
    let mut anon = Irc::tcp(server.irc);
    anon.login_anonymous();
    anon.send("WHISPER bob_w :hi");
    let refused = anon.expect("anonymous", |l| l.contains(" NOTICE "));
    assert_eq!(
        tag(&refused, "msg-id").as_deref(),
        Some("msg_login_required")
    );

    // Offline: carol is not connected; she gets them when she next connects.
    a.send("WHISPER carol_w :are you there");
    a.expect("echo", |l| l.contains(" WHISPER carol_w :are you there"));
    b1.send("WHISPER carol_w :from bob too");
    b1.expect("echo", |l| l.contains(" WHISPER carol_w :from bob too"));
    let mut c = client(&server, "carol_w", &carol, true);
    c.expect("waiting whisper", |l| {
        l.contains(" WHISPER carol_w :are you there")
    });
    c.expect("waiting whisper", |l| {
        l.contains(" WHISPER carol_w :from bob too")
    });
    drop(c);
    // Delivered once: a second login gets nothing old.
    let mut c2 = client(&server, "carol_w", &carol, false);
    let again = c2.drain(Duration::from_millis(500)).join("\n");
    assert!(!again.contains("WHISPER"), "{again}");

    // Conversations with unread counts, the thread, and read markers.
    let list = http_as(server.http, "GET", "/api/whispers", Some(&carol), None);
    assert_eq!(list.status, 200, "{}", list.body);
    let conversations = list.json()["conversations"].as_array().unwrap().clone();
    assert_eq!(conversations.len(), 2);
    assert!(conversations.iter().all(|c| c["unread"] == 1));
    let thread = http_as(
        server.http,
        "GET",
        "/api/whispers/alice_w",
        Some(&carol),
        None,
    )
    .json();
    assert_eq!(thread["whispers"][0]["text"], "are you there");
    let bob_view = http_as(
        server.http,
        "GET",
        "/api/whispers/alice_w",
        Some(&bob),
        None,
    )
    .json();
    let with_emote = bob_view["whispers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["text"] == "psst twiGG")
        .unwrap()
        .clone();
    assert_eq!(with_emote["emotes"], "15:5-9");
    let bad_marker = http_as(
        server.http,
        "POST",
        "/api/whispers/alice_w/read?up_to=~",
        Some(&carol),
        None,
    );
    assert_eq!(bad_marker.status, 400);
    let read = http_as(
        server.http,
        "POST",
        "/api/whispers/alice_w/read",
        Some(&carol),
        None,
    );
    assert_eq!(read.status, 200);
    let list = http_as(server.http, "GET", "/api/whispers", Some(&carol), None).json();
    let alice_conv = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["login"] == "alice_w")
        .unwrap()
        .clone();
    assert_eq!(alice_conv["unread"], 0);
    let bob_thread = http_as(
        server.http,
        "GET",
        "/api/whispers/alice_w",
        Some(&bob),
        None,
    )
    .json();
    assert_eq!(
        bob_thread["whispers"].as_array().unwrap().len(),
        2,
        "alice and bob's own thread"
    );
    assert_eq!(
        http_as(server.http, "GET", "/api/whispers", None, None).status,
        401
    );
    assert_eq!(
        http_as(
            server.http,
            "GET",
            "/api/whispers/nobody_here",
            Some(&carol),
            None
        )
        .status,
        404
    );
}

#[test]
fn history_pages_forward_from_the_last_seen_message() {
    let server = server();
    let token = register(server.http, "catcher", PASSWORD);
    let mut sender = joined(&server, "catcher", &token, false, "tavern");
    let ids: Vec<String> = (0..7)
        .map(|i| send_acked(&mut sender, &format!("PRIVMSG #tavern :message number {i}")))
        .collect();
    // A client that saw the second message catches up on the rest, oldest first, two at a time.
    let mut seen = vec![ids[1].clone()];
    loop {
        let last = seen.last().unwrap().clone();
        let page = http(
            server.http,
            "GET",
            &format!("/api/rooms/tavern/messages?after={last}&limit=2"),
            None,
        );
        assert_eq!(page.status, 200, "{}", page.body);
        let messages = page.json()["messages"].as_array().unwrap().clone();
        assert!(messages.len() <= 2);
        if messages.is_empty() {
            break;
        }
        seen.extend(
            messages
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(seen, ids[1..], "every later message once, in order");
    let bad = |query: &str| {
        http(
            server.http,
            "GET",
            &format!("/api/rooms/tavern/messages?{query}"),
            None,
        )
    };
    assert_eq!(bad("after=not-an-id").status, 400);
    assert_eq!(
        bad(&format!("after={}&before={}", ids[0], ids[6])).status,
        400
    );
    assert_eq!(bad(&format!("after={}&limit=101", ids[0])).status, 400);
    assert_eq!(bad("since=x").status, 400);
}

/// The `twitch-irc` crate reads what these features send as it reads Twitch: emotes, JOINs of others, replies and
/// whispers.
mod twitch_irc_reader {
    use super::{PASSWORD, joined, register, send_acked, server};
    use twitch_irc::ClientConfig;
    use twitch_irc::login::StaticLoginCredentials;
    use twitch_irc::message::ServerMessage;

    use crate::common::twitch_irc::{Client, next_matching, point_at};

    #[test]
    fn twitch_irc_reads_emotes_joins_replies_and_whispers() {
        let server = server();
        point_at(server.irc);
        let reader_token = register(server.http, "crate_reader", PASSWORD);
        let other_token = register(server.http, "other_user", PASSWORD);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let credentials =
                StaticLoginCredentials::new("crate_reader".to_owned(), Some(reader_token.clone()));
            let (mut incoming, reader) = Client::new(ClientConfig::new_simple(credentials));
            reader.join("lobby".to_owned()).unwrap();
            next_matching(&mut incoming, "ROOMSTATE", |m| match m {
                ServerMessage::RoomState(s) => Some(s),
                _ => None,
            })
            .await;

            // Twitch sends others' JOINs only with the membership capability, which the library leaves to its user.
            reader
                .send_message(twitch_irc::message::IRCMessage::new_simple(
                    "CAP".to_owned(),
                    vec!["REQ".to_owned(), "twitch.tv/membership".to_owned()],
                ))
                .await
                .unwrap();
            let mut other = joined(&server, "other_user", &other_token, true, "lobby");
            let join = next_matching(&mut incoming, "JOIN of other_user", |m| match m {
                ServerMessage::Join(j) if j.user_login == "other_user" => Some(j),
                _ => None,
            })
            .await;
            assert_eq!(join.channel_login, "lobby");

            let parent = send_acked(&mut other, "PRIVMSG #lobby :twiGG hello crate");
            let message = next_matching(&mut incoming, "PRIVMSG", |m| match m {
                ServerMessage::Privmsg(p) => Some(p),
                _ => None,
            })
            .await;
            assert_eq!(message.message_id, parent);
            assert!(
                message
                    .emotes
                    .iter()
                    .any(|e| e.code == "twiGG" && e.id == "15"),
                "{:?} in {:?}",
                message.emotes,
                message.message_text
            );

            send_acked(
                &mut other,
                &format!("@reply-parent-msg-id={parent} PRIVMSG #lobby :replying"),
            );
            let reply = next_matching(&mut incoming, "reply", |m| match m {
                ServerMessage::Privmsg(p) if p.reply_parent.is_some() => Some(p),
                _ => None,
            })
            .await;
            let parent_tags = reply.reply_parent.unwrap();
            assert_eq!(parent_tags.message_id, parent);
            assert_eq!(parent_tags.reply_parent_user.login, "other_user");

            other.send("WHISPER crate_reader :a secret twiGG");
            let whisper = next_matching(&mut incoming, "WHISPER", |m| match m {
                ServerMessage::Whisper(w) => Some(w),
                _ => None,
            })
            .await;
            assert_eq!(whisper.sender.login, "other_user");
            assert_eq!(whisper.message_text, "a secret twiGG");
            assert!(whisper.emotes.iter().any(|e| e.code == "twiGG"));
        });
    }
}
