//! End-to-end tests of the real `twitchy` binary over real sockets: WebSocket and TCP IRC clients, HTTP API.

mod common;

use std::time::Duration;

use common::TestServer;
use common::client::{Irc, http, is_ack, metric, register, tag, trailing};

const PASSWORD: &str = "correct horse";

fn privmsg_in(room: &str) -> impl Fn(&str) -> bool {
    let needle = format!(" PRIVMSG #{room} :");
    move |l: &str| l.contains(&needle)
}

#[test]
fn anonymous_viewer_reads_and_registered_user_sends_with_ack() {
    let server = TestServer::start(&["--shards", "2"]);
    let token = register(server.http, "alice", PASSWORD);

    let mut viewer = Irc::ws(server.http);
    viewer.login_anonymous();
    viewer.join("lobby");

    let mut sender = Irc::ws(server.http);
    sender.login(&token_user("alice"), &token);
    sender.join("lobby");
    sender.send("@client-nonce=n-1 PRIVMSG #lobby :hello there chat");

    let line = viewer.expect("the PRIVMSG", privmsg_in("lobby"));
    assert!(
        line.contains(" :alice!alice@alice.tmi.twitch.tv PRIVMSG #lobby :"),
        "{line}"
    );
    assert_eq!(
        tag(&line, "twitchy/original").as_deref(),
        Some("hello there chat")
    );
    assert_eq!(tag(&line, "client-nonce").as_deref(), Some("n-1"));
    assert_eq!(tag(&line, "display-name").as_deref(), Some("alice"));
    let styled = trailing(&line);
    assert_ne!(styled, "hello there chat", "the text is styled");
    for word in ["hello", "there", "chat"] {
        assert!(
            styled.to_lowercase().contains(word),
            "styled text keeps the words: {styled}"
        );
    }
    for key in [
        "badge-info",
        "badges",
        "color",
        "emotes",
        "first-msg",
        "flags",
        "id",
        "mod",
        "returning-chatter",
        "room-id",
        "subscriber",
        "tmi-sent-ts",
        "turbo",
        "user-id",
        "user-type",
    ] {
        assert!(tag(&line, key).is_some(), "tag {key} missing in {line}");
    }
    assert!(tag(&line, "historical").is_none());

    let ack = sender.expect("the ack", is_ack);
    assert_eq!(
        tag(&ack, "id"),
        tag(&line, "id"),
        "the ack names the delivered message"
    );
    assert_eq!(tag(&ack, "client-nonce").as_deref(), Some("n-1"));
    // Like Twitch, the sender does not get its own PRIVMSG back.
    assert!(
        !sender.seen.iter().any(|l| l.contains(" PRIVMSG #lobby ")),
        "{:#?}",
        sender.seen
    );
}

/// Logins are the lowercase usernames.
fn token_user(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[test]
fn tcp_and_websocket_clients_share_rooms_and_ping_works() {
    let server = TestServer::start(&["--shards", "2"]);
    let token = register(server.http, "bob_tcp", PASSWORD);
    let mut viewer = Irc::tcp(server.irc);
    viewer.login_anonymous();
    viewer.join("tavern");
    viewer.send("PING :hello");
    viewer.expect("PONG", |l| l == ":tmi.twitch.tv PONG tmi.twitch.tv :hello");
    viewer.send("PING");
    viewer.expect("PONG", |l| l == "PONG :tmi.twitch.tv");

    let mut sender = Irc::tcp(server.irc);
    sender.login("bob_tcp", &token);
    sender.join("tavern");
    sender.send("PRIVMSG #tavern :ahoy over tcp");
    let line = viewer.expect("PRIVMSG", privmsg_in("tavern"));
    assert_eq!(
        tag(&line, "twitchy/original").as_deref(),
        Some("ahoy over tcp")
    );
    sender.expect("ack", is_ack);
}

#[test]
fn fanout_reaches_every_viewer_spread_over_two_shards() {
    let server = TestServer::start(&["--shards", "2"]);
    let token = register(server.http, "caster", PASSWORD);
    let mut viewers: Vec<Irc> = (0..40)
        .map(|i| {
            let mut v = if i % 2 == 0 {
                Irc::ws(server.http)
            } else {
                Irc::tcp(server.irc)
            };
            v.login_anonymous();
            v.join("globe");
            v
        })
        .collect();
    let per_shard = metric(server.http, "twitchy_connections");
    assert_eq!(per_shard.len(), 2);
    assert!(
        per_shard.iter().all(|&c| c > 0),
        "connections on both shards: {per_shard:?}"
    );

    let rooms = http(server.http, "GET", "/api/rooms", None).json();
    let globe = rooms
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "globe")
        .unwrap();
    assert_eq!(globe["viewers"], 40);

    let mut sender = Irc::ws(server.http);
    sender.login("caster", &token);
    sender.join("globe");
    for i in 0..5 {
        sender.send(&format!("PRIVMSG #globe :message number {i}"));
    }
    for (n, viewer) in viewers.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..5 {
            let line = viewer.expect("5 messages", privmsg_in("globe"));
            got.push(tag(&line, "twitchy/original").unwrap());
        }
        got.sort();
        let want: Vec<String> = (0..5).map(|i| format!("message number {i}")).collect();
        assert_eq!(got, want, "viewer {n}");
    }
    let deliveries: u64 = metric(server.http, "twitchy_deliveries_total").iter().sum();
    assert_eq!(deliveries, 200);
    // One cross-shard hop per message per shard, never one per viewer.
    let messages_out: u64 = metric(server.http, "twitchy_messages_out_total")
        .iter()
        .sum();
    assert_eq!(messages_out, 10);
}

#[test]
fn joining_replays_the_last_ten_messages() {
    let server = TestServer::start(&["--shards", "2"]);
    let token = register(server.http, "historian", PASSWORD);
    let mut sender = Irc::ws(server.http);
    sender.login("historian", &token);
    sender.join("lobby");
    for i in 0..15 {
        sender.send(&format!("PRIVMSG #lobby :history line {i:02}"));
        sender.expect("ack", is_ack);
    }
    for client in [Irc::ws(server.http), Irc::tcp(server.irc)] {
        let mut viewer = client;
        viewer.login_anonymous();
        viewer.join("lobby");
        let history: Vec<String> = viewer
            .drain(Duration::from_millis(500))
            .into_iter()
            .filter(|l| l.contains(" PRIVMSG #lobby "))
            .inspect(|l| assert_eq!(tag(l, "historical").as_deref(), Some("1"), "{l}"))
            .map(|l| tag(&l, "twitchy/original").unwrap())
            .collect();
        let want: Vec<String> = (5..15).map(|i| format!("history line {i:02}")).collect();
        assert_eq!(history, want);
    }
}

#[test]
fn acked_messages_and_accounts_survive_a_crash() {
    let mut server = TestServer::start(&["--shards", "2"]);
    let token = register(server.http, "survivor", PASSWORD);
    let mut sender = Irc::tcp(server.irc);
    sender.login("survivor", &token);
    sender.join("tavern");
    let mut acked = Vec::new();
    for i in 0..12 {
        sender.send(&format!("@client-nonce=c{i} PRIVMSG #tavern :durable {i}"));
        let ack = sender.expect("ack", is_ack);
        acked.push(tag(&ack, "id").unwrap());
    }
    // No graceful shutdown: SIGKILL right after the last ack.
    server.kill();
    server.restart();

    let page = http(
        server.http,
        "GET",
        "/api/rooms/tavern/messages?limit=100",
        None,
    );
    assert_eq!(page.status, 200, "{}", page.body);
    let stored: Vec<String> = page.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    for id in &acked {
        assert_eq!(
            stored.iter().filter(|s| *s == id).count(),
            1,
            "acked message {id} stored exactly once"
        );
    }
    // Newest first.
    assert_eq!(stored.first(), acked.last());

    // The account and its token survive too.
    let login = http(
        server.http,
        "POST",
        "/api/login",
        Some(&serde_json::json!({"username": "survivor", "password": PASSWORD}).to_string()),
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let mut again = Irc::ws(server.http);
    again.login("survivor", &token);
    again.join("tavern");
    let history = again.drain(Duration::from_millis(500));
    let texts: Vec<String> = history
        .iter()
        .filter_map(|l| tag(l, "twitchy/original"))
        .collect();
    let want: Vec<String> = (2..12).map(|i| format!("durable {i}")).collect();
    assert_eq!(texts, want, "history on join after restart");

    // Paging backwards with `before`.
    let before = &stored[4];
    let older = http(
        server.http,
        "GET",
        &format!("/api/rooms/tavern/messages?before={before}&limit=3"),
        None,
    )
    .json();
    let older: Vec<&str> = older["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        older,
        stored[5..8].iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[test]
fn rate_limit_and_length_limit_send_notices() {
    let server = TestServer::start(&["--shards", "2", "--rate-limit-messages", "3"]);
    let token = register(server.http, "chatty", PASSWORD);
    let mut sender = Irc::ws(server.http);
    sender.login("chatty", &token);
    sender.join("lobby");

    let long = "x".repeat(501);
    sender.send(&format!("PRIVMSG #lobby :{long}"));
    let notice = sender.expect("too long NOTICE", |l| l.contains(" NOTICE #lobby "));
    assert_eq!(
        tag(&notice, "msg-id").as_deref(),
        Some("msg_too_long"),
        "{notice}"
    );
    // Exactly 500 characters (multi-byte ones count once) is fine.
    let limit = "é".repeat(500);
    sender.send(&format!("PRIVMSG #lobby :{limit}"));
    sender.expect("ack for 500 chars", is_ack);

    for i in 0..4 {
        sender.send(&format!("PRIVMSG #lobby :spam {i}"));
    }
    let lines = sender.drain(Duration::from_millis(800));
    let acks = lines.iter().filter(|l| is_ack(l)).count();
    let limited: Vec<&String> = lines
        .iter()
        .filter(|l| tag(l, "msg-id").as_deref() == Some("msg_ratelimit"))
        .collect();
    assert_eq!(acks, 2, "{lines:#?}");
    assert_eq!(limited.len(), 2, "{lines:#?}");
}

#[test]
fn anonymous_users_cannot_send_and_nothing_is_stored() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut anon = Irc::tcp(server.irc);
    anon.login_anonymous();
    anon.join("lobby");
    anon.send("PRIVMSG #lobby :can I talk?");
    let notice = anon.expect("NOTICE", |l| l.contains(" NOTICE "));
    assert!(tag(&notice, "msg-id").is_some(), "{notice}");
    let page = http(server.http, "GET", "/api/rooms/lobby/messages", None).json();
    assert_eq!(page["messages"].as_array().unwrap().len(), 0);
}

#[test]
fn unknown_rooms_and_bad_logins_are_refused() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut client = Irc::ws(server.http);
    client.login_anonymous();
    client.send("JOIN #nowhere");
    let notice = client.expect("NOTICE", |l| l.contains(" NOTICE "));
    assert_eq!(
        tag(&notice, "msg-id").as_deref(),
        Some("msg_channel_suspended")
    );

    let mut impostor = Irc::tcp(server.irc);
    impostor.send("PASS oauth:0000000000000000000000000000000000000000000000000000000000000000");
    impostor.send("NICK somebody");
    impostor.expect("auth failure", |l| {
        l.contains("Login authentication failed")
    });
    assert!(
        impostor.next_line(Duration::from_secs(5)).is_none(),
        "connection closed after failed login"
    );
    assert!(impostor.closed);
}

#[test]
fn malformed_input_gets_notices_and_never_breaks_the_server() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut tcp = Irc::tcp(server.irc);
    tcp.login_anonymous();
    tcp.send_raw(b"PRIVMSG #lobby :\xff\xfe invalid utf8\r\n");
    tcp.expect("NOTICE for invalid UTF-8", |l| l.contains(" NOTICE "));
    tcp.send_raw(format!("PRIVMSG #lobby :{}\r\n", "y".repeat(20_000)).as_bytes());
    tcp.expect("NOTICE for an over-long line", |l| l.contains(" NOTICE "));
    for garbage in [
        "@;;=;= PRIVMSG",
        "@",
        ":only-prefix",
        "\u{1}\u{2}\u{3}",
        "FROB x y z",
        "JOIN",
        "PRIVMSG",
        "CAP",
    ] {
        tcp.send(garbage);
    }
    tcp.send("");
    tcp.send("PING :still-alive");
    tcp.expect("PONG after garbage", |l| l.ends_with(":still-alive"));

    let mut ws = Irc::ws(server.http);
    ws.send_raw(b"@a=b\\ PRIVMSG #lobby :\r\nNICK justinfan77\r\nPING :ws-alive\r\n");
    ws.expect("PONG over websocket", |l| l.ends_with(":ws-alive"));

    // HTTP: clear JSON errors.
    let cases = [
        ("POST", "/api/register", Some("not json"), 400),
        (
            "POST",
            "/api/register",
            Some(r#"{"username":"ab","password":"long enough"}"#),
            400,
        ),
        (
            "POST",
            "/api/register",
            Some(r#"{"username":"okname","password":"short"}"#),
            400,
        ),
        (
            "POST",
            "/api/login",
            Some(r#"{"username":"nobody_here","password":"whatever1"}"#),
            401,
        ),
        (
            "GET",
            "/api/rooms/lobby/messages?before=not-an-id",
            None,
            400,
        ),
        ("GET", "/api/rooms/lobby/messages?limit=0", None, 400),
        ("GET", "/api/rooms/nowhere/messages", None, 404),
        ("GET", "/no/such/path", None, 404),
        ("DELETE", "/api/rooms", None, 405),
    ];
    for (method, path, body, status) in cases {
        let response = http(server.http, method, path, body);
        assert_eq!(
            response.status, status,
            "{method} {path}: {}",
            response.body
        );
        assert!(
            response.json()["error"].is_string(),
            "{method} {path}: {}",
            response.body
        );
    }
    register(server.http, "taken_name", PASSWORD);
    let again = http(
        server.http,
        "POST",
        "/api/register",
        Some(r#"{"username":"Taken_Name","password":"another pass"}"#),
    );
    assert_eq!(again.status, 409, "{}", again.body);
    let wrong = http(
        server.http,
        "POST",
        "/api/login",
        Some(r#"{"username":"taken_name","password":"wrong pass"}"#),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(http(server.http, "GET", "/healthz", None).status, 200);
}

#[test]
fn slow_viewer_is_disconnected_without_harming_others() {
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--outbound-queue-bytes-max",
        "262144",
        "--socket-send-buffer-bytes",
        "16384",
        "--rate-limit-messages",
        "1000000",
    ]);
    let token = register(server.http, "firehose", PASSWORD);
    // A viewer that never reads, with a tiny receive buffer so the kernel absorbs little.
    let slow = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    slow.set_recv_buffer_size(4096).unwrap();
    slow.connect(&server.irc.into()).unwrap();
    let mut slow: std::net::TcpStream = slow.into();
    std::io::Write::write_all(&mut slow, b"NICK justinfan999\r\nJOIN #lobby\r\n").unwrap();

    let total = 2000;
    let mut fast = Irc::ws(server.http);
    fast.login_anonymous();
    fast.join("lobby");
    // The fast viewer reads on its own thread, as a real client would, and says how far it got.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader_progress = progress.clone();
    let fast_reader = std::thread::spawn(move || {
        let mut received = 0;
        while received < total {
            let line = fast.expect_within(
                "every message at the fast viewer",
                Duration::from_secs(30),
                |l| l.contains(" PRIVMSG ") || l.ends_with("RECONNECT"),
            );
            assert!(
                !line.ends_with("RECONNECT"),
                "the fast viewer must not be dropped"
            );
            received += 1;
            reader_progress.store(received, std::sync::atomic::Ordering::Relaxed);
        }
        received
    });
    std::thread::sleep(Duration::from_millis(300));

    let mut sender = Irc::tcp(server.irc);
    sender.login("firehose", &token);
    sender.join("lobby");
    let body = "z".repeat(400);
    for batch in 0..(total / 100) {
        for i in 0..100 {
            sender.send(&format!("PRIVMSG #lobby :{} {body}", batch * 100 + i));
        }
        for _ in 0..100 {
            sender.expect("ack", is_ack);
        }
        // A reader that keeps up: the next batch goes out once it has read this one, so only the viewer that
        // never reads falls behind by more than its queue.
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while progress.load(std::sync::atomic::Ordering::Relaxed) < (batch + 1) * 100
            && std::time::Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(fast_reader.join().expect("fast viewer"), total);
    let slow_disconnects: u64 = metric(server.http, "twitchy_slow_disconnects_total")
        .iter()
        .sum();
    assert_eq!(slow_disconnects, 1, "the slow viewer is dropped");
    // The slow viewer's connection ends with RECONNECT (after whatever it had buffered).
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tail = Vec::new();
    let _ = std::io::Read::read_to_end(&mut slow, &mut tail);
    let tail = String::from_utf8_lossy(&tail);
    assert!(
        tail.trim_end().ends_with(":tmi.twitch.tv RECONNECT"),
        "ends with RECONNECT: …{}",
        &tail[tail.len().saturating_sub(200)..]
    );
}

#[test]
fn graceful_shutdown_tells_clients_to_reconnect() {
    let mut server = TestServer::start(&["--shards", "2"]);
    let token = register(server.http, "lastword", PASSWORD);
    let mut viewer = Irc::ws(server.http);
    viewer.login_anonymous();
    viewer.join("lobby");
    let mut sender = Irc::tcp(server.irc);
    sender.login("lastword", &token);
    sender.join("lobby");
    sender.send("PRIVMSG #lobby :goodnight");
    sender.expect("ack", is_ack);
    assert_eq!(server.stop(), Some(0), "clean exit on SIGTERM");
    viewer.expect("RECONNECT", |l| l.ends_with("RECONNECT"));
    sender.expect("RECONNECT", |l| l.ends_with("RECONNECT"));
}

#[test]
fn idle_clients_are_pinged_and_dead_ones_dropped() {
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--idle-ping-secs",
        "1",
        "--idle-timeout-secs",
        "3",
    ]);
    let mut alive = Irc::tcp(server.irc);
    alive.login_anonymous();
    let mut dead = Irc::tcp(server.irc);
    dead.login_anonymous();
    // The live client answers PINGs; the dead one reads them but never answers.
    let mut dead_pinged = false;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(5_500) {
        if let Some(line) = alive.next_line(Duration::from_millis(100))
            && line.starts_with("PING")
        {
            alive.send("PONG :tmi.twitch.tv");
        }
        if let Some(line) = dead.next_line(Duration::from_millis(1)) {
            dead_pinged |= line == "PING :tmi.twitch.tv";
        }
    }
    assert!(dead_pinged, "the server pinged the idle client");
    alive.send("PING :still-here");
    alive.expect("PONG", |l| l.ends_with(":still-here"));
    while dead.next_line(Duration::from_secs(3)).is_some() {}
    assert!(dead.closed, "the silent client was dropped");
    let dropped: u64 = metric(server.http, "twitchy_idle_disconnects_total")
        .iter()
        .sum();
    assert_eq!(dropped, 1);
}

#[test]
fn echo_message_capability_returns_own_messages() {
    let server = TestServer::start(&["--shards", "2"]);
    let token = register(server.http, "echoer", PASSWORD);
    let mut sender = Irc::ws(server.http);
    sender.send("CAP REQ :echo-message");
    sender.expect("ACK", |l| l.ends_with("ACK :echo-message"));
    sender.login("echoer", &token);
    sender.join("globe");
    sender.send("@client-nonce=e1 PRIVMSG #globe :hear myself");
    let own = sender.expect("own PRIVMSG", privmsg_in("globe"));
    assert_eq!(tag(&own, "client-nonce").as_deref(), Some("e1"));
    sender.expect("ack", is_ack);
    // Twitch's command conventions: ". text" sends text; "/ban" is a command (refused to a viewer); an unknown
    // command is answered as Twitch does.
    sender.send("PRIVMSG #globe :. dotted");
    let dotted = sender.expect("dotted PRIVMSG", privmsg_in("globe"));
    assert_eq!(tag(&dotted, "twitchy/original").as_deref(), Some("dotted"));
    sender.send("PRIVMSG #globe :/ban somebody");
    let notice = sender.expect("NOTICE", |l| l.contains(" NOTICE "));
    assert_eq!(tag(&notice, "msg-id").as_deref(), Some("no_permission"));
    sender.send("PRIVMSG #globe :/followers");
    let notice = sender.expect("NOTICE", |l| l.contains(" NOTICE "));
    assert_eq!(tag(&notice, "msg-id").as_deref(), Some("unrecognized_cmd"));
}

#[test]
fn rooms_file_sets_styles_and_moderators() {
    let dir = tempfile::tempdir().unwrap();
    let rooms = dir.path().join("rooms.toml");
    std::fs::write(
        &rooms,
        "[[rooms]]\nname = \"boardroom\"\nstyle = \"corporate\"\nmoderators = [\"Boss\"]\n\n[[rooms]]\nname = \"deck\"\nstyle = \"pirate\"\nid = 4242\n",
    )
    .unwrap();
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--config",
        rooms.to_str().unwrap(),
        "--rate-limit-messages",
        "2",
    ]);
    let listed = http(server.http, "GET", "/api/rooms", None).json();
    let names: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["style"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("boardroom", "corporate"), ("deck", "pirate")]);
    assert_eq!(listed[1]["id"], 4242);

    let boss = register(server.http, "boss", PASSWORD);
    let mut viewer = Irc::tcp(server.irc);
    viewer.login_anonymous();
    viewer.join("boardroom");
    let mut sender = Irc::tcp(server.irc);
    sender.login("boss", &boss);
    sender.join("boardroom");
    // Moderators get the higher limit (100 per window) instead of 2.
    for i in 0..5 {
        sender.send(&format!("PRIVMSG #boardroom :quarterly update {i}"));
        sender.expect("ack", is_ack);
    }
    let line = viewer.expect("PRIVMSG", privmsg_in("boardroom"));
    assert_eq!(tag(&line, "mod").as_deref(), Some("1"));
    assert_eq!(tag(&line, "badges").as_deref(), Some("moderator/1"));
}

#[test]
fn help_documents_every_option_with_its_environment_variable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_twitchy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--http",
        "--irc",
        "--data-dir",
        "--shards",
        "--config",
        "--store",
        "--scylla-nodes",
        "--vllm",
        "--metrics-addr",
        "--http-header-timeout-ms",
        "--http-body-timeout-ms",
        "--http-keep-alive-timeout-ms",
        "--registration-timeout-ms",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
    for env in [
        "TWITCHY_HTTP",
        "TWITCHY_IRC",
        "TWITCHY_DATA_DIR",
        "TWITCHY_SHARDS",
        "TWITCHY_CONFIG",
        "TWITCHY_VLLM",
        "TWITCHY_METRICS_ADDR",
        "TWITCHY_HTTP_HEADER_TIMEOUT_MS",
        "TWITCHY_HTTP_BODY_TIMEOUT_MS",
        "TWITCHY_HTTP_KEEP_ALIVE_TIMEOUT_MS",
        "TWITCHY_REGISTRATION_TIMEOUT_MS",
    ] {
        assert!(help.contains(env), "{env} missing from --help");
    }
    // A bad rooms file is a clear error, not a panic.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_twitchy"))
        .args([
            "--config",
            "/nonexistent/rooms.toml",
            "--http",
            "127.0.0.1:0",
            "--irc",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot read /nonexistent/rooms.toml"));
}

#[test]
fn a_resent_nonce_is_acked_with_its_original_id_even_after_a_crash() {
    let mut server = TestServer::start(&["--shards", "2"]);
    let token = register(server.http, "resender", PASSWORD);
    let mut viewer = Irc::ws(server.http);
    viewer.login_anonymous();
    viewer.join("globe");
    let mut sender = Irc::tcp(server.irc);
    sender.login("resender", &token);
    sender.join("globe");
    sender.send("@client-nonce=once-1 PRIVMSG #globe :only once please");
    let first = tag(&sender.expect("ack", is_ack), "id").unwrap();
    // The ack was lost (say): the client sends the same message again with the same nonce.
    sender.send("@client-nonce=once-1 PRIVMSG #globe :only once please");
    let again = tag(&sender.expect("ack of the resend", is_ack), "id").unwrap();
    assert_eq!(again, first);
    let seen = viewer.drain(Duration::from_millis(500));
    assert_eq!(
        seen.iter().filter(|l| l.contains(" PRIVMSG ")).count(),
        1,
        "delivered once: {seen:?}"
    );

    // And after a crash and restart.
    server.kill();
    server.restart();
    let mut sender = Irc::tcp(server.irc);
    sender.login("resender", &token);
    sender.join("globe");
    sender.send("@client-nonce=once-1 PRIVMSG #globe :only once please");
    let after = tag(&sender.expect("ack after restart", is_ack), "id").unwrap();
    assert_eq!(after, first);
    let page = http(
        server.http,
        "GET",
        "/api/rooms/globe/messages?limit=100",
        None,
    );
    let stored = page.json()["messages"].as_array().unwrap().len();
    assert_eq!(stored, 1, "stored once: {}", page.body);
}
