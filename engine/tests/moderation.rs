//! Moderation through Twitch's own chat commands, end to end against the real binary: timeouts and bans, deletes,
//! chat modes, roles and badges, AutoMod, the HTTP API, colour and renames, and that all of it survives a restart.
//! Clients are mixed (WebSocket and TCP) and the server runs two shards, so rooms are homed on one shard and seen
//! from the other.

mod common;

use std::path::Path;
use std::time::Duration;

use common::TestServer;
use common::client::{Irc, http, http_as, is_ack, register, tag, trailing};

const ROOMS: &str = r#"
[[rooms]]
name = "lobby"
style = "pirate"
broadcaster = "beatrix"
moderators = ["mona"]
automod = "hold"
banned_phrases = ["buy followers"]

[[rooms]]
name = "tavern"
style = "pirate"
broadcaster = "beatrix"
moderators = ["mona"]
automod = "block"
banned_phrases = ["buy followers"]
"#;

const PASSWORD: &str = "correct horse battery";

struct Room {
    server: TestServer,
    _dir: tempfile::TempDir,
}

fn start() -> Room {
    let dir = tempfile::tempdir().unwrap();
    let rooms = dir.path().join("rooms.toml");
    std::fs::write(&rooms, ROOMS).unwrap();
    let data = dir.path().join("data");
    let server = start_on(&data, &rooms);
    Room { server, _dir: dir }
}

fn start_on(data: &Path, rooms: &Path) -> TestServer {
    TestServer::start_in(
        data,
        &[
            "--shards",
            "2",
            "--config",
            rooms.to_str().unwrap(),
            "--limits-exempt-loopback",
        ],
    )
}

/// A logged-in client (alternating WebSocket and TCP by `ws`) joined to `room`.
fn client(server: &TestServer, user: &str, token: &str, ws: bool, room: &str) -> Irc {
    let mut irc = if ws {
        Irc::ws(server.http)
    } else {
        Irc::tcp(server.irc)
    };
    irc.login(user, token);
    irc.join(room);
    irc
}

/// Sends a PRIVMSG and returns the `msg-id` of the NOTICE that answers it.
fn notice_for(irc: &mut Irc, room: &str, text: &str) -> String {
    irc.send(&format!("PRIVMSG #{room} :{text}"));
    let prefix = format!(" NOTICE #{room} :");
    let line = irc.expect(&format!("NOTICE answering {text:?}"), |l| {
        l.contains(&prefix)
    });
    tag(&line, "msg-id").expect("msg-id")
}

/// Sends a chat message: `Ok(id)` once acknowledged, `Err(msg-id)` when refused.
fn say(irc: &mut Irc, room: &str, text: &str) -> Result<String, String> {
    irc.send(&format!("PRIVMSG #{room} :{text}"));
    let prefix = format!(" NOTICE #{room} :");
    let line = irc.expect(&format!("ack or NOTICE for {text:?}"), |l| {
        is_ack(l) || l.contains(&prefix)
    });
    if is_ack(&line) {
        Ok(tag(&line, "id").unwrap())
    } else {
        Err(tag(&line, "msg-id").unwrap())
    }
}

fn expect_line(irc: &mut Irc, what: &str, needle: &str) -> String {
    irc.expect(what, |l| l.contains(needle))
}

#[test]
fn timeouts_and_bans_hold_on_every_shard_and_viewers_see_clearchat() {
    let room = start();
    let server = &room.server;
    let mona = register(server.http, "mona", PASSWORD);
    let bob = register(server.http, "bob_chatter", PASSWORD);
    let bea = register(server.http, "beatrix", PASSWORD);
    let viewer_token = register(server.http, "vera", PASSWORD);
    let mut mod_ws = client(server, "mona", &mona, true, "lobby");
    let mut bob_tcp = client(server, "bob_chatter", &bob, false, "lobby");
    let mut bob_ws = client(server, "bob_chatter", &bob, true, "lobby");
    let mut viewer = client(server, "vera", &viewer_token, false, "lobby");
    let mut bea_ws = client(server, "beatrix", &bea, true, "lobby");

    assert!(say(&mut bob_tcp, "lobby", "hello everyone").is_ok());
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/timeout bob_chatter 600 spamming"),
        "timeout_success"
    );
    let clear = expect_line(
        &mut viewer,
        "CLEARCHAT for the timeout",
        "CLEARCHAT #lobby :bob_chatter",
    );
    assert_eq!(tag(&clear, "ban-duration").as_deref(), Some("600"));
    assert!(tag(&clear, "target-user-id").is_some_and(|id| !id.is_empty()));
    assert!(tag(&clear, "room-id").is_some() && tag(&clear, "tmi-sent-ts").is_some());
    // Refused on both of the user's connections, whichever shard they are on.
    assert_eq!(
        say(&mut bob_tcp, "lobby", "let me talk").unwrap_err(),
        "msg_timedout"
    );
    assert_eq!(
        say(&mut bob_ws, "lobby", "let me talk").unwrap_err(),
        "msg_timedout"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/untimeout bob_chatter"),
        "untimeout_success"
    );
    assert!(say(&mut bob_ws, "lobby", "thanks for the untimeout").is_ok());

    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/ban bob_chatter rude"),
        "ban_success"
    );
    let ban = expect_line(
        &mut viewer,
        "CLEARCHAT for the ban",
        "CLEARCHAT #lobby :bob_chatter",
    );
    assert_eq!(
        tag(&ban, "ban-duration"),
        None,
        "a ban has no duration: {ban}"
    );
    assert_eq!(
        say(&mut bob_tcp, "lobby", "still here").unwrap_err(),
        "msg_banned"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/ban bob_chatter"),
        "already_banned"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/timeout bob_chatter"),
        "already_banned"
    );

    // The errors Twitch answers with.
    assert_eq!(
        notice_for(&mut viewer, "lobby", "/ban mona"),
        "no_permission"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/ban beatrix"),
        "bad_ban_broadcaster"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/timeout mona"),
        "bad_timeout_self"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/ban nobody_here"),
        "invalid_user"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/timeout"),
        "usage_timeout"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/untimeout vera"),
        "bad_untimeout_no_timeout"
    );
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", "/timeout mona 10"),
        "timeout_success"
    );
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", "/untimeout mona"),
        "untimeout_success"
    );

    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/unban bob_chatter"),
        "unban_success"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/unban bob_chatter"),
        "bad_unban_no_ban"
    );
    assert!(say(&mut bob_tcp, "lobby", "back again").is_ok());

    // A ban is per room.
    bob_tcp.join("tavern");
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/ban bob_chatter"),
        "ban_success"
    );
    assert_eq!(say(&mut bob_tcp, "lobby", "x").unwrap_err(), "msg_banned");
    assert!(say(&mut bob_tcp, "tavern", "the tavern still hears me").is_ok());

    // /clear reaches viewers as a CLEARCHAT without a user.
    mod_ws.send("PRIVMSG #lobby :/clear");
    let all = viewer.expect("CLEARCHAT for /clear", |l| l.ends_with("CLEARCHAT #lobby"));
    assert_eq!(tag(&all, "target-user-id"), None, "{all}");
}

#[test]
fn deleted_messages_leave_chat_history_and_the_replay() {
    let room = start();
    let server = &room.server;
    let mona = register(server.http, "mona", PASSWORD);
    let bob = register(server.http, "bob_chatter", PASSWORD);
    let bea = register(server.http, "beatrix", PASSWORD);
    let vera = register(server.http, "vera", PASSWORD);
    let mut mod_tcp = client(server, "mona", &mona, false, "lobby");
    let mut bob_ws = client(server, "bob_chatter", &bob, true, "lobby");
    let mut bea_ws = client(server, "beatrix", &bea, true, "lobby");
    let mut viewer = client(server, "vera", &vera, true, "lobby");

    let doomed = say(&mut bob_ws, "lobby", "this one goes away").unwrap();
    let kept = say(&mut bob_ws, "lobby", "this one stays").unwrap();
    let own = say(&mut bob_ws, "lobby", "i regret this").unwrap();
    let by_bea = say(&mut bea_ws, "lobby", "the broadcaster speaks").unwrap();

    assert_eq!(
        notice_for(&mut viewer, "lobby", &format!("/delete {doomed}")),
        "no_permission"
    );
    assert_eq!(
        notice_for(&mut mod_tcp, "lobby", &format!("/delete {by_bea}")),
        "bad_delete_message_broadcaster"
    );
    assert_eq!(
        notice_for(
            &mut mod_tcp,
            "lobby",
            "/delete 00000000-0000-7000-8000-000000000000"
        ),
        "bad_delete_message_error"
    );
    assert_eq!(
        notice_for(&mut mod_tcp, "lobby", &format!("/delete {doomed}")),
        "delete_message_success"
    );
    let clear = expect_line(&mut viewer, "CLEARMSG", "CLEARMSG #lobby");
    assert_eq!(
        tag(&clear, "target-msg-id").as_deref(),
        Some(doomed.as_str())
    );
    assert_eq!(tag(&clear, "login").as_deref(), Some("bob_chatter"));
    // The author may delete their own.
    assert_eq!(
        notice_for(&mut bob_ws, "lobby", &format!("/delete {own}")),
        "delete_message_success"
    );

    // Gone from the replay on JOIN (on both shards' copies) and from the history API.
    for ws in [true, false] {
        let mut late = if ws {
            Irc::ws(server.http)
        } else {
            Irc::tcp(server.irc)
        };
        late.login_anonymous();
        late.send("JOIN #lobby");
        let replay = late.drain(Duration::from_millis(800)).join("\n");
        assert!(replay.contains(&kept), "kept message replayed: {replay}");
        assert!(
            !replay.contains(&doomed) && !replay.contains(&own),
            "{replay}"
        );
    }
    let history = http(server.http, "GET", "/api/rooms/lobby/messages", None).json();
    let ids: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&kept.as_str())
            && !ids.contains(&doomed.as_str())
            && !ids.contains(&own.as_str())
    );
}

#[test]
fn modes_show_in_roomstate_and_refuse_what_breaks_them() {
    let room = start();
    let server = &room.server;
    let mona = register(server.http, "mona", PASSWORD);
    let bob = register(server.http, "bob_chatter", PASSWORD);
    let bea = register(server.http, "beatrix", PASSWORD);
    let vicky = register(server.http, "vicky", PASSWORD);
    let mut mod_ws = client(server, "mona", &mona, true, "lobby");
    let mut bob_tcp = client(server, "bob_chatter", &bob, false, "lobby");
    let mut bea_tcp = client(server, "beatrix", &bea, false, "lobby");
    assert_eq!(
        notice_for(&mut bea_tcp, "lobby", "/vip vicky"),
        "vip_success"
    );
    let mut vicky_ws = client(server, "vicky", &vicky, true, "lobby");

    assert_eq!(notice_for(&mut mod_ws, "lobby", "/slow 30"), "slow_on");
    let change = expect_line(&mut bob_tcp, "ROOMSTATE change", "ROOMSTATE #lobby");
    assert_eq!(tag(&change, "slow").as_deref(), Some("30"));
    assert_eq!(
        tag(&change, "emote-only"),
        None,
        "only the changed mode: {change}"
    );
    assert!(say(&mut bob_tcp, "lobby", "first under slow mode").is_ok());
    assert_eq!(
        say(&mut bob_tcp, "lobby", "second too soon").unwrap_err(),
        "msg_slowmode"
    );
    assert!(say(&mut vicky_ws, "lobby", "vips are exempt one").is_ok());
    assert!(say(&mut vicky_ws, "lobby", "vips are exempt two").is_ok());
    assert!(say(&mut mod_ws, "lobby", "mods are exempt one").is_ok());
    assert!(say(&mut mod_ws, "lobby", "mods are exempt two").is_ok());

    // A new JOIN sees every mode in ROOMSTATE.
    let mut late = Irc::ws(server.http);
    late.login_anonymous();
    late.send("JOIN #lobby");
    let state = expect_line(&mut late, "ROOMSTATE on join", "ROOMSTATE #lobby");
    assert_eq!(tag(&state, "slow").as_deref(), Some("30"));
    assert_eq!(tag(&state, "emote-only").as_deref(), Some("0"));
    assert_eq!(notice_for(&mut mod_ws, "lobby", "/slowoff"), "slow_off");
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/slowoff"),
        "already_slow_off"
    );

    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/emoteonly"),
        "emote_only_on"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/emoteonly"),
        "already_emote_only_on"
    );
    let change = expect_line(&mut late, "emote-only ROOMSTATE", "emote-only=1");
    assert!(change.contains("ROOMSTATE #lobby"));
    assert_eq!(
        say(&mut bob_tcp, "lobby", "words are not emotes").unwrap_err(),
        "msg_emoteonly"
    );
    assert!(say(&mut bob_tcp, "lobby", "twiGG twiHype").is_ok());
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/emoteonlyoff"),
        "emote_only_off"
    );

    assert_eq!(notice_for(&mut mod_ws, "lobby", "/uniquechat"), "r9k_on");
    assert!(say(&mut bob_tcp, "lobby", "an original thought").is_ok());
    assert_eq!(
        say(&mut vicky_ws, "lobby", "An   ORIGINAL thought").unwrap_err(),
        "msg_r9k"
    );
    assert_eq!(notice_for(&mut mod_ws, "lobby", "/r9kbetaoff"), "r9k_off");
    assert_eq!(
        notice_for(&mut bob_tcp, "lobby", "/slow 5"),
        "no_permission"
    );
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/slow 500"),
        "usage_slow_on"
    );
}

#[test]
fn roles_carry_badges_and_the_mod_flag_everywhere() {
    let room = start();
    let server = &room.server;
    let bea = register(server.http, "beatrix", PASSWORD);
    let mona = register(server.http, "mona", PASSWORD);
    let carl = register(server.http, "carl", PASSWORD);
    let vera = register(server.http, "vera", PASSWORD);
    let mut bea_ws = client(server, "beatrix", &bea, true, "lobby");
    let mut viewer = client(server, "vera", &vera, false, "lobby");
    let mut carl_tcp = Irc::tcp(server.irc);
    carl_tcp.login("carl", &carl);
    carl_tcp.send("JOIN #lobby");
    let joined = expect_line(&mut carl_tcp, "USERSTATE on join", "USERSTATE #lobby");
    assert_eq!(tag(&joined, "mod").as_deref(), Some("0"));

    // The broadcaster: broadcaster badge, mod=0, as on Twitch.
    say(&mut bea_ws, "lobby", "welcome to my room").unwrap();
    let line = expect_line(&mut viewer, "beatrix's message", "PRIVMSG #lobby");
    assert_eq!(tag(&line, "badges").as_deref(), Some("broadcaster/1"));
    assert_eq!(tag(&line, "mod").as_deref(), Some("0"));

    let mut mona_ws = client(server, "mona", &mona, true, "lobby");
    assert_eq!(
        notice_for(&mut mona_ws, "lobby", "/mod carl"),
        "no_permission"
    );
    assert_eq!(notice_for(&mut bea_ws, "lobby", "/mod carl"), "mod_success");
    let promoted = expect_line(&mut carl_tcp, "USERSTATE after /mod", "USERSTATE #lobby");
    assert_eq!(tag(&promoted, "mod").as_deref(), Some("1"));
    assert_eq!(tag(&promoted, "badges").as_deref(), Some("moderator/1"));
    assert_eq!(notice_for(&mut bea_ws, "lobby", "/mod carl"), "bad_mod_mod");

    carl_tcp.send("PRIVMSG #lobby :now i moderate");
    let ack = carl_tcp.expect("ack", is_ack);
    assert_eq!(tag(&ack, "mod").as_deref(), Some("1"));
    let line = expect_line(&mut viewer, "carl's message", "now i moderate");
    assert_eq!(tag(&line, "mod").as_deref(), Some("1"));
    assert_eq!(tag(&line, "badges").as_deref(), Some("moderator/1"));
    // A fresh JOIN says so too.
    let mut carl_ws = Irc::ws(server.http);
    carl_ws.login("carl", &carl);
    carl_ws.send("JOIN #lobby");
    let joined = expect_line(&mut carl_ws, "USERSTATE on join", "USERSTATE #lobby");
    assert_eq!(tag(&joined, "mod").as_deref(), Some("1"));
    assert_eq!(
        notice_for(&mut carl_ws, "lobby", "/timeout vera 5"),
        "timeout_success"
    );
    assert_eq!(
        notice_for(&mut carl_ws, "lobby", "/untimeout vera"),
        "untimeout_success"
    );

    mona_ws.send("PRIVMSG #lobby :/mods");
    let mods = expect_line(&mut mona_ws, "/mods", "NOTICE #lobby");
    assert_eq!(tag(&mods, "msg-id").as_deref(), Some("room_mods"));
    assert!(
        trailing(&mods).contains("carl") && trailing(&mods).contains("mona"),
        "{mods}"
    );

    assert_eq!(notice_for(&mut bea_ws, "lobby", "/vip vera"), "vip_success");
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", "/vip vera"),
        "bad_vip_grantee_already_vip"
    );
    bea_ws.send("PRIVMSG #lobby :/vips");
    let vips = expect_line(&mut bea_ws, "/vips", "NOTICE #lobby");
    assert_eq!(tag(&vips, "msg-id").as_deref(), Some("vips_success"));
    assert!(trailing(&vips).contains("vera"), "{vips}");
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", "/unvip vera"),
        "unvip_success"
    );
    assert_eq!(notice_for(&mut bea_ws, "lobby", "/vips"), "no_vips");
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", "/unmod carl"),
        "unmod_success"
    );
    let demoted = expect_line(&mut carl_tcp, "USERSTATE after /unmod", "USERSTATE #lobby");
    assert_eq!(tag(&demoted, "mod").as_deref(), Some("0"));
    // A moderator from the rooms file can be removed too.
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", "/unmod mona"),
        "unmod_success"
    );
    assert_eq!(
        notice_for(&mut mona_ws, "lobby", "/timeout carl"),
        "no_permission"
    );
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", "/unvip carl"),
        "bad_unvip_grantee_not_vip"
    );
}

#[test]
fn automod_blocks_or_holds_for_moderators() {
    let room = start();
    let server = &room.server;
    let mona = register(server.http, "mona", PASSWORD);
    let bob = register(server.http, "bob_chatter", PASSWORD);
    let vera = register(server.http, "vera", PASSWORD);
    let mut mod_ws = client(server, "mona", &mona, true, "lobby");
    let mut bob_tcp = client(server, "bob_chatter", &bob, false, "lobby");
    let mut viewer = client(server, "vera", &vera, true, "lobby");
    bob_tcp.join("tavern");

    // Block: refused, told to the sender only.
    assert_eq!(
        say(&mut bob_tcp, "tavern", "come BUY followers cheap").unwrap_err(),
        "msg_rejected_mandatory"
    );
    assert!(say(&mut bob_tcp, "tavern", "a perfectly fine message").is_ok());

    // Hold: the sender is told, moderators see it, viewers do not; a moderator allows it.
    assert_eq!(
        say(&mut bob_tcp, "lobby", "please buy followers from me").unwrap_err(),
        "msg_rejected"
    );
    let held = expect_line(&mut mod_ws, "held message", "msg-id=automod-held");
    assert_eq!(trailing(&held), "please buy followers from me");
    assert_eq!(tag(&held, "reason").as_deref(), Some("phrase"));
    assert_eq!(tag(&held, "login").as_deref(), Some("bob_chatter"));
    let held_id = tag(&held, "held-id").unwrap();
    // Moderators see the resolution (which clears the held message from every moderator's queue), then the answer.
    mod_ws.send(&format!("PRIVMSG #lobby :/automod allow {held_id}"));
    let resolved = expect_line(&mut mod_ws, "resolution", "msg-id=automod-resolved");
    assert_eq!(tag(&resolved, "status").as_deref(), Some("allowed"));
    assert_eq!(tag(&resolved, "held-id"), Some(held_id.clone()));
    let answer = expect_line(&mut mod_ws, "allow NOTICE", " NOTICE #lobby ");
    assert_eq!(tag(&answer, "msg-id").as_deref(), Some("automod_allowed"));
    let approved = expect_line(&mut bob_tcp, "approval", "automod_message_approved");
    assert!(approved.contains("NOTICE #lobby"));
    let delivered = expect_line(&mut viewer, "the allowed message", "PRIVMSG #lobby");
    assert_eq!(
        tag(&delivered, "twitchy/original").as_deref(),
        Some("please buy followers from me")
    );
    let seen = viewer.drain(Duration::from_millis(300)).join("\n");
    assert!(
        !seen.contains("automod-held"),
        "viewers never see held messages: {seen}"
    );

    // A denied one never appears.
    assert_eq!(
        say(&mut bob_tcp, "lobby", "buy followers now!!").unwrap_err(),
        "msg_rejected"
    );
    let held = expect_line(&mut mod_ws, "held message", "msg-id=automod-held");
    let held_id = tag(&held, "held-id").unwrap();
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", &format!("/automod deny {held_id}")),
        "automod_denied"
    );
    expect_line(&mut bob_tcp, "denial", "automod_message_denied");
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", &format!("/automod deny {held_id}")),
        "automod_not_found"
    );
    let seen = viewer.drain(Duration::from_millis(500)).join("\n");
    assert!(!seen.contains("buy followers now"), "{seen}");

    // Moderators add phrases; heuristics flag spam; moderators are exempt.
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/automod add free vbucks"),
        "automod_phrase_added"
    );
    assert_eq!(
        say(&mut bob_tcp, "lobby", "get FREE V-BUCKS here").unwrap_err(),
        "msg_rejected"
    );
    assert_eq!(
        say(&mut bob_tcp, "lobby", "THIS IS ALL CAPS AND VERY LOUD").unwrap_err(),
        "msg_rejected"
    );
    assert!(say(&mut mod_ws, "lobby", "mods may say free vbucks").is_ok());
    assert_eq!(
        notice_for(&mut mod_ws, "lobby", "/automod remove free vbucks"),
        "automod_phrase_removed"
    );
    assert!(say(&mut bob_tcp, "lobby", "so free vbucks are fine now").is_ok());
    assert_eq!(
        notice_for(&mut bob_tcp, "lobby", "/automod add x"),
        "no_permission"
    );
    let held_total: u64 = common::client::metric(server.http, "twitchy_automod_held_total")
        .iter()
        .sum();
    assert!(held_total >= 4, "held counted: {held_total}");
    let blocked: u64 = common::client::metric(server.http, "twitchy_automod_blocked_total")
        .iter()
        .sum();
    assert_eq!(blocked, 1);
}

#[test]
fn the_http_api_runs_commands_with_json_errors() {
    let room = start();
    let server = &room.server;
    let mona = register(server.http, "mona", PASSWORD);
    let bob = register(server.http, "bob_chatter", PASSWORD);
    let mut viewer = Irc::ws(server.http);
    viewer.login_anonymous();
    viewer.join("lobby");
    let post = |token: Option<&str>, room: &str, command: &str| {
        http_as(
            server.http,
            "POST",
            &format!("/api/rooms/{room}/moderation"),
            token,
            Some(&serde_json::json!({ "command": command }).to_string()),
        )
    };
    let ok = post(Some(&mona), "lobby", "/timeout bob_chatter 60 calm down");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["msg_id"], "timeout_success");
    expect_line(
        &mut viewer,
        "CLEARCHAT from the API",
        "CLEARCHAT #lobby :bob_chatter",
    );
    let refused = post(Some(&bob), "lobby", "/ban mona");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["msg_id"], "no_permission");
    assert!(refused.json()["error"].is_string());
    assert_eq!(post(None, "lobby", "/ban bob_chatter").status, 401);
    assert_eq!(
        post(Some("not-a-token"), "lobby", "/ban bob_chatter").status,
        401
    );
    assert_eq!(post(Some(&mona), "nowhere", "/ban bob_chatter").status, 404);
    assert_eq!(post(Some(&mona), "lobby", "/ban no_such_user").status, 404);
    let usage = post(Some(&mona), "lobby", "/slow forever");
    assert_eq!(usage.status, 400);
    assert_eq!(usage.json()["msg_id"], "usage_slow_on");
    assert_eq!(
        post(Some(&mona), "lobby", "/dance").json()["msg_id"],
        "unrecognized_cmd"
    );
    assert_eq!(post(Some(&mona), "lobby", "slow 10").status, 200);
    let bad_json = http_as(
        server.http,
        "POST",
        "/api/rooms/lobby/moderation",
        Some(&mona),
        Some("{"),
    );
    assert_eq!(bad_json.status, 400);

    let state = http_as(
        server.http,
        "GET",
        "/api/rooms/lobby/moderation",
        Some(&mona),
        None,
    );
    assert_eq!(state.status, 200, "{}", state.body);
    let state = state.json();
    assert_eq!(state["modes"]["slow"], 10);
    assert_eq!(state["broadcaster"], "beatrix");
    assert_eq!(state["banned"][0]["login"], "bob_chatter");
    assert!(state["banned"][0]["until_unix_ms"].is_u64());
    assert_eq!(state["automod"]["action"], "hold");
    let denied = http_as(
        server.http,
        "GET",
        "/api/rooms/lobby/moderation",
        Some(&bob),
        None,
    );
    assert_eq!(denied.status, 403);
}

#[test]
fn colour_and_display_name_and_renames() {
    let room = start();
    let server = &room.server;
    let body = serde_json::json!({ "username": "CamelCase", "password": PASSWORD }).to_string();
    let registered = http(server.http, "POST", "/api/register", Some(&body));
    assert_eq!(registered.status, 201);
    assert_eq!(registered.json()["login"], "camelcase");
    assert_eq!(registered.json()["display_name"], "CamelCase");
    let token = registered.json()["token"].as_str().unwrap().to_string();
    let mut viewer = Irc::tcp(server.irc);
    viewer.login_anonymous();
    viewer.join("lobby");

    let mut camel = client(server, "camelcase", &token, true, "lobby");
    let old_id = say(&mut camel, "lobby", "hi from camel").unwrap();
    let line = expect_line(&mut viewer, "camel's line", "hi from camel");
    assert_eq!(tag(&line, "display-name").as_deref(), Some("CamelCase"));

    assert_eq!(
        notice_for(&mut camel, "lobby", "/color HotPink"),
        "color_changed"
    );
    say(&mut camel, "lobby", "now in pink").unwrap();
    let line = expect_line(&mut viewer, "pink line", "now in pink");
    assert_eq!(tag(&line, "color").as_deref(), Some("#FF69B4"));
    assert_eq!(
        notice_for(&mut camel, "lobby", "/color mauve"),
        "usage_color"
    );
    let via_api = http_as(
        server.http,
        "POST",
        "/api/account/color",
        Some(&token),
        Some(r##"{"color":"#00ff7f"}"##),
    );
    assert_eq!(via_api.status, 200, "{}", via_api.body);
    assert_eq!(via_api.json()["color"], "#00FF7F");

    // Rename: same user id, the token keeps working under the new login, old messages keep their name.
    let rename = |name: &str| {
        http_as(
            server.http,
            "POST",
            "/api/account/username",
            Some(&token),
            Some(&serde_json::json!({ "username": name }).to_string()),
        )
    };
    register(server.http, "taken_name", PASSWORD);
    assert_eq!(rename("taken_name").status, 409);
    assert_eq!(rename("no").status, 400);
    assert_eq!(rename("_underscore").status, 400);
    let renamed = rename("NewCamel");
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.json()["login"], "newcamel");
    let mut again = client(server, "newcamel", &token, false, "lobby");
    say(&mut again, "lobby", "same me, new name").unwrap();
    let line = expect_line(&mut viewer, "renamed line", "same me, new name");
    assert_eq!(tag(&line, "display-name").as_deref(), Some("NewCamel"));
    assert_eq!(
        tag(&line, "color").as_deref(),
        Some("#00FF7F"),
        "the colour stays"
    );
    let old_line = common::client::tag(&line, "user-id");
    let history = http(server.http, "GET", "/api/rooms/lobby/messages", None).json();
    let old = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == old_id.as_str())
        .expect("old message in history")
        .clone();
    assert_eq!(
        old["login"], "camelcase",
        "old messages keep the name they were sent with"
    );
    assert_eq!(
        old_line.as_deref(),
        old["user_id"].as_u64().map(|id| id.to_string()).as_deref(),
        "the user id stays"
    );
    // The old login is free again.
    register(server.http, "camelcase", PASSWORD);
}

#[test]
fn moderation_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rooms = dir.path().join("rooms.toml");
    std::fs::write(&rooms, ROOMS).unwrap();
    let data = dir.path().join("data");
    let mut server = start_on(&data, &rooms);
    let bea = register(server.http, "beatrix", PASSWORD);
    let bob = register(server.http, "bob_chatter", PASSWORD);
    let carl = register(server.http, "carl", PASSWORD);
    let mut bea_ws = client(&server, "beatrix", &bea, true, "lobby");
    let mut bob_tcp = client(&server, "bob_chatter", &bob, false, "lobby");
    let doomed = say(&mut bob_tcp, "lobby", "delete me before the restart").unwrap();
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", &format!("/delete {doomed}")),
        "delete_message_success"
    );
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", "/ban bob_chatter"),
        "ban_success"
    );
    assert_eq!(notice_for(&mut bea_ws, "lobby", "/mod carl"), "mod_success");
    assert_eq!(notice_for(&mut bea_ws, "lobby", "/slow 42"), "slow_on");
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", "/automod add secret sauce"),
        "automod_phrase_added"
    );
    // A message AutoMod holds stays in the moderators' queue across the restart.
    let dave = register(server.http, "dave_d", PASSWORD);
    let mut dave_tcp = client(&server, "dave_d", &dave, false, "lobby");
    assert_eq!(
        say(&mut dave_tcp, "lobby", "buy followers from dave").unwrap_err(),
        "msg_rejected"
    );
    expect_line(&mut bea_ws, "held", "msg-id=automod-held");
    drop(dave_tcp);
    drop(bea_ws);
    drop(bob_tcp);
    server.stop();
    let server = start_on(&data, &rooms);
    let state = http_as(
        server.http,
        "GET",
        "/api/rooms/lobby/moderation",
        Some(&bea),
        None,
    )
    .json();
    let held = state["held"].as_array().unwrap().clone();
    assert_eq!(held.len(), 1, "{state}");
    assert_eq!(held[0]["text"], "buy followers from dave");
    let held_id = held[0]["held_id"].as_u64().unwrap();
    let mut viewer = Irc::tcp(server.irc);
    viewer.login_anonymous();
    viewer.join("lobby");
    let mut bea_ws = client(&server, "beatrix", &bea, true, "lobby");
    assert_eq!(
        notice_for(&mut bea_ws, "lobby", &format!("/automod allow {held_id}")),
        "automod_allowed"
    );
    let allowed = expect_line(&mut viewer, "the allowed message", "PRIVMSG #lobby");
    assert_eq!(
        tag(&allowed, "twitchy/original").as_deref(),
        Some("buy followers from dave")
    );

    let mut bob_tcp = client(&server, "bob_chatter", &bob, false, "lobby");
    assert_eq!(
        say(&mut bob_tcp, "lobby", "am i still banned").unwrap_err(),
        "msg_banned"
    );
    let mut carl_ws = Irc::ws(server.http);
    carl_ws.login("carl", &carl);
    carl_ws.send("JOIN #lobby");
    let user_state = expect_line(&mut carl_ws, "USERSTATE", "USERSTATE #lobby");
    assert_eq!(tag(&user_state, "mod").as_deref(), Some("1"));
    let room_state = expect_line(&mut carl_ws, "ROOMSTATE", "ROOMSTATE #lobby");
    assert_eq!(tag(&room_state, "slow").as_deref(), Some("42"));
    let replay = carl_ws.drain(Duration::from_millis(500)).join("\n");
    assert!(!replay.contains(&doomed), "{replay}");
    let vera = register(server.http, "vera", PASSWORD);
    let mut vera_tcp = client(&server, "vera", &vera, false, "lobby");
    assert_eq!(
        say(&mut vera_tcp, "lobby", "the secret sauce is").unwrap_err(),
        "msg_rejected"
    );
}

/// The `twitch-irc` crate, as a moderator, runs commands with Twitch's wire forms and parses what comes back:
/// NOTICE msg-ids, CLEARMSG, CLEARCHAT (timeout and ban) and ROOMSTATE.
mod twitch_irc_moderator {
    use std::time::Duration;

    use super::{PASSWORD, client, register, say, start};
    use twitch_irc::ClientConfig;
    use twitch_irc::login::StaticLoginCredentials;
    use twitch_irc::message::{ClearChatAction, ServerMessage};

    use crate::common::twitch_irc::{Client, next_matching, point_at};

    fn notice_id(message: ServerMessage) -> Option<String> {
        match message {
            ServerMessage::Notice(notice) => notice.message_id,
            _ => None,
        }
    }

    #[test]
    fn a_twitch_irc_moderator_runs_commands() {
        let room = start();
        let server = &room.server;
        point_at(server.irc);
        let mona = register(server.http, "mona", PASSWORD);
        let bob = register(server.http, "bob_chatter", PASSWORD);
        let mut bob_ws = client(server, "bob_chatter", &bob, true, "lobby");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let credentials = StaticLoginCredentials::new("mona".to_owned(), Some(mona.clone()));
            let (mut incoming, moderator) =
                Client::new(
                    ClientConfig::new_simple(credentials),
                );
            moderator.join("lobby".to_owned()).unwrap();
            let state = next_matching(&mut incoming, "the moderator's USERSTATE", |m| match m {
                ServerMessage::UserState(state) => Some(state),
                _ => None,
            })
            .await;
            assert!(state.badges.iter().any(|b| b.name == "moderator"), "{state:?}");

            let id = say(&mut bob_ws, "lobby", "a message to delete").unwrap();
            let privmsg = next_matching(&mut incoming, "bob's message", |m| match m {
                ServerMessage::Privmsg(p) => Some(p),
                _ => None,
            })
            .await;
            assert_eq!(privmsg.message_id, id);

            moderator
                .privmsg("lobby".into(), format!("/delete {id}"))
                .await
                .unwrap();
            let cleared = next_matching(&mut incoming, "CLEARMSG", |m| match m {
                ServerMessage::ClearMsg(c) => Some(c),
                _ => None,
            })
            .await;
            assert_eq!(cleared.message_id, id);
            assert_eq!(cleared.sender_login, "bob_chatter");
            let notice = next_matching(&mut incoming, "delete NOTICE", notice_id).await;
            assert_eq!(notice, "delete_message_success");

            moderator
                .privmsg("lobby".into(), "/timeout bob_chatter 30".into())
                .await
                .unwrap();
            let action = next_matching(&mut incoming, "CLEARCHAT", |m| match m {
                ServerMessage::ClearChat(c) => Some(c.action),
                _ => None,
            })
            .await;
            match action {
                ClearChatAction::UserTimedOut {
                    user_login,
                    timeout_length,
                    ..
                } => {
                    assert_eq!(user_login, "bob_chatter");
                    assert_eq!(timeout_length, Duration::from_secs(30));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                next_matching(&mut incoming, "timeout NOTICE", notice_id).await,
                "timeout_success"
            );

            moderator
                .privmsg("lobby".into(), "/slow 10".into())
                .await
                .unwrap();
            let state = next_matching(&mut incoming, "ROOMSTATE", |m| match m {
                ServerMessage::RoomState(s) => Some(s),
                _ => None,
            })
            .await;
            assert_eq!(state.slow_mode, Some(Duration::from_secs(10)));

            moderator
                .privmsg("lobby".into(), "/ban bob_chatter".into())
                .await
                .unwrap();
            let action = next_matching(&mut incoming, "CLEARCHAT ban", |m| match m {
                ServerMessage::ClearChat(c) => Some(c.action),
                _ => None,
            })
            .await;
            assert!(
                matches!(action, ClearChatAction::UserBanned { ref user_login, .. } if user_login == "bob_chatter"),
                "{action:?}"
            );
            assert_eq!(
                next_matching(&mut incoming, "ban NOTICE", notice_id).await,
                "ban_success"
            );
            moderator
                .privmsg("lobby".into(), "/ban nobody_at_all".into())
                .await
                .unwrap();
            assert_eq!(
                next_matching(&mut incoming, "invalid_user NOTICE", notice_id).await,
                "invalid_user"
            );
        });
        assert_eq!(
            say(&mut bob_ws, "lobby", "banned?").unwrap_err(),
            "msg_banned"
        );
    }
}
