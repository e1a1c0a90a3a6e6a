//! End-to-end tests of the web client in headless Chromium against the real `twitchy` binary.
//!
//! Each test starts a server (through the shared harness), a chromedriver with a fresh Chromium
//! profile, and where needed a second chat client speaking the Twitch IRC dialect over a plain
//! WebSocket. The tests run one at a time: a browser is heavy, and the machine is small.
//! Screenshots go to `target/browser-artifacts/` (and `failure-<test>.png` when a wait fails).

mod common;

mod browser {
    // Shared with the other browser test files; this one uses only part of it.
    #[allow(dead_code)]
    pub mod harness_ext;
    pub mod irc_client;
    pub mod webdriver;
}

use std::time::Duration;

use serde_json::{Value, json};

use browser::harness_ext::{FrontProxy, get_json, register, runtime, serial};
use browser::irc_client::IrcClient;
use browser::webdriver::Browser;
use common::TestServer;

/// Longest wait for something the page should show promptly. Generous because account requests
/// hash passwords (deliberately slow) and the machine may be busy.
const WAIT: Duration = Duration::from_secs(30);
/// Longest wait for the page to come back after the server restarted (backoff included).
const RECONNECT_WAIT: Duration = Duration::from_secs(45);

/// A message that would inject markup if the page ever used innerHTML with chat text.
const HTML_PAYLOAD: &str = r#"<img src=x onerror="window.__pwned=true"><b>bold</b><script>window.__pwned=true</script> & &amp; done"#;

/// The chat lines as data: one object per message line, oldest first.
const READ_LINES_JS: &str = r#"
    return [...document.querySelectorAll('#lines .line.msg')].map((l) => ({
        id: l.dataset.id || '',
        original: l.querySelector('.original-text').textContent,
        text: l.querySelector('.text').textContent,
        name: l.querySelector('.name').textContent,
        color: getComputedStyle(l.querySelector('.name')).color,
        time: l.querySelector('.ts').textContent,
        datetime: l.querySelector('.ts').getAttribute('datetime') || '',
        historical: l.classList.contains('historical'),
        own: l.classList.contains('own'),
        state: ['pending', 'acked', 'failed'].find((c) => l.classList.contains(c)) || '',
        status: (l.querySelector('.status') || {}).textContent || '',
    }));
"#;

/// Waits until a message line whose original text is `arguments[0]` exists; returns it.
const FIND_LINE_JS: &str = r#"
    const line = [...document.querySelectorAll('#lines .line.msg')]
        .find((l) => l.querySelector('.original-text').textContent === arguments[0]);
    if (!line) return null;
    return {
        id: line.dataset.id || '',
        text: line.querySelector('.text').textContent,
        historical: line.classList.contains('historical'),
        state: ['pending', 'acked', 'failed'].find((c) => line.classList.contains(c)) || '',
    };
"#;

async fn lines(browser: &Browser) -> Vec<Value> {
    browser
        .js(READ_LINES_JS, vec![])
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn wait_connected(browser: &Browser, what: &str) {
    browser
        .wait_js(
            what,
            WAIT,
            "return document.getElementById('conn').dataset.state === 'open'",
            vec![],
        )
        .await;
}

fn originals(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["original"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn assert_unique_ids(lines: &[Value]) {
    let mut ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["id"].as_str())
        .filter(|id| !id.is_empty())
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "a message is shown twice: {lines:#?}");
}

/// A guest reads without signing in: room list, the last 10 messages on join, older messages
/// over the HTTP API, live messages, HTML shown as text, the original on tap, a flood that stays
/// bounded with "more messages below", room switching, and the phone-sized layout.
#[test]
fn guest_reads_history_live_messages_and_html_as_text() {
    let _serial = serial();
    runtime().block_on(async {
        // A high per-user limit lets one sender produce a flood.
        let server = TestServer::start(&["--shards", "2", "--rate-limit-messages", "2000"]);
        let token = register(server.http, "alice_streamer", "alice-password-1");
        let mut alice = IrcClient::connect(server.http, Some(("alice_streamer", &token)));
        alice.join("lobby");
        let mut sent: Vec<String> = (1..=11).map(|i| format!("history message {i}")).collect();
        sent.push(HTML_PAYLOAD.to_owned());
        for text in &sent {
            alice.say("lobby", text);
        }

        let browser = Browser::start("guest", 1280, 800).await;
        browser.goto(&server.url("/")).await;

        // The room list matches the API: name, style and a live viewer count.
        let (status, api_rooms) = get_json(server.http, "/api/rooms");
        assert_eq!(status, 200, "{api_rooms}");
        let api_rooms = api_rooms.as_array().cloned().expect("room array");
        assert!(api_rooms.len() >= 3, "{api_rooms:?}");
        let shown_rooms = browser
            .wait_js(
                "the room list",
                WAIT,
                r#"const rooms = [...document.querySelectorAll('#room-list .room')];
                   return rooms.length >= arguments[0] ? rooms.map((b) => ({
                       name: b.querySelector('.room-name').textContent,
                       style: b.querySelector('.room-style').textContent,
                       viewers: b.querySelector('.room-viewers').textContent,
                   })) : null;"#,
                vec![json!(api_rooms.len())],
            )
            .await;
        let shown_rooms = shown_rooms.as_array().cloned().expect("shown rooms");
        assert_eq!(shown_rooms.len(), api_rooms.len());
        for (shown, api) in shown_rooms.iter().zip(&api_rooms) {
            assert_eq!(shown["name"], json!(format!("#{}", api["name"].as_str().unwrap())), "{shown} vs {api}");
            assert_eq!(shown["style"], api["style"], "{shown} vs {api}");
            let viewers: u64 = shown["viewers"].as_str().unwrap().parse().expect("viewer count is a number");
            assert!(viewers < 1_000_000);
        }
        // Alice and this page are both in the lobby; the count is live, refreshed from the API.
        browser
            .wait_js(
                "the lobby's viewer count to include its viewers",
                Duration::from_secs(25),
                r#"const b = document.querySelector('#room-list li[data-room="lobby"] .room-viewers');
                   return b && Number(b.textContent) >= 1;"#,
                vec![],
            )
            .await;

        // The last 10 messages arrive on join, marked historical, oldest first.
        wait_connected(&browser, "the guest to join #lobby").await;
        browser
            .wait_js(
                "10 history lines",
                WAIT,
                "return document.querySelectorAll('#lines .line.msg').length >= 10",
                vec![],
            )
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let history = lines(&browser).await;
        assert_eq!(originals(&history), sent[2..].to_vec(), "the last 10 messages, in order");
        for line in &history {
            assert_eq!(line["historical"], json!(true), "{line}");
            assert_eq!(line["name"], json!("alice_streamer"), "{line}");
            assert!(!line["text"].as_str().unwrap().is_empty(), "styled text shown: {line}");
            assert!(!line["time"].as_str().unwrap().is_empty(), "timestamp shown: {line}");
            assert!(!line["datetime"].as_str().unwrap().is_empty(), "timestamp shown: {line}");
            assert!(line["color"].as_str().unwrap().starts_with("rgb"), "name in a color: {line}");
        }

        // Markup in a message stays text: nothing was created and no handler ran.
        let injected = browser
            .js(
                r#"return {
                    elements: document.querySelectorAll('#lines img, #lines b, #lines script').length,
                    pwned: window.__pwned === true,
                };"#,
                vec![],
            )
            .await;
        assert_eq!(injected, json!({ "elements": 0, "pwned": false }), "HTML in a message must render as text");

        // Tapping a line reveals the original, unstyled text exactly as sent.
        browser
            .js(
                r#"const line = [...document.querySelectorAll('#lines .line.msg')]
                       .find((l) => l.querySelector('.original-text').textContent === arguments[0]);
                   line.id = 'payload-line';"#,
                vec![json!(HTML_PAYLOAD)],
            )
            .await;
        browser.click("#payload-line .name").await;
        let revealed = browser
            .wait_js(
                "the original text on tap",
                WAIT,
                r#"const o = document.querySelector('#payload-line .original');
                   return getComputedStyle(o).display !== 'none' ? o.querySelector('.original-text').textContent : null;"#,
                vec![],
            )
            .await;
        assert_eq!(revealed, json!(HTML_PAYLOAD));

        // Older messages come from the HTTP API on request, above the history.
        browser.click("#load-older").await;
        browser
            .wait_js(
                "earlier messages",
                WAIT,
                "return document.querySelectorAll('#lines .line.msg').length >= 12",
                vec![],
            )
            .await;
        let all = lines(&browser).await;
        assert_eq!(originals(&all), sent, "earlier messages are prepended in order");
        assert_unique_ids(&all);

        // Live messages from another client appear without a reload.
        alice.say("lobby", "live message one");
        let live = browser.wait_js("a live message", WAIT, FIND_LINE_JS, vec![json!("live message one")]).await;
        assert_eq!(live["historical"], json!(false), "{live}");
        let shot = browser.screenshot("chat.png").await;
        eprintln!("screenshot: {}", shot.display());

        // A flood stays bounded and follows the bottom while the reader is there.
        let mut last_nonce = String::new();
        for i in 1..=400 {
            last_nonce = alice.privmsg("lobby", &format!("flood {i}"));
        }
        alice.wait_ack(&last_nonce);
        browser.wait_js("the end of the flood", WAIT, FIND_LINE_JS, vec![json!("flood 400")]).await;
        let after_flood = browser
            .js(
                r#"const log = document.getElementById('log');
                   return {
                       lines: document.getElementById('lines').childElementCount,
                       fromBottom: log.scrollHeight - log.scrollTop - log.clientHeight,
                       moreBelow: !document.getElementById('more-below').hidden,
                   };"#,
                vec![],
            )
            .await;
        let kept = after_flood["lines"].as_u64().unwrap();
        assert!((100..=250).contains(&kept), "bounded number of lines: {after_flood}");
        assert!(after_flood["fromBottom"].as_f64().unwrap() < 4.0, "follows the bottom: {after_flood}");
        assert_eq!(after_flood["moreBelow"], json!(false), "{after_flood}");
        assert_unique_ids(&lines(&browser).await);

        // Scrolled up, the reader stays put and is told that more arrived below.
        browser.js("document.getElementById('log').scrollTop = 0;", vec![]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 1..=5 {
            alice.say("lobby", &format!("while scrolled up {i}"));
        }
        browser.wait_js("a line while scrolled up", WAIT, FIND_LINE_JS, vec![json!("while scrolled up 5")]).await;
        let more = browser
            .wait_js(
                "the 'more messages below' button",
                WAIT,
                r#"const button = document.getElementById('more-below');
                   return button.hidden ? null : button.textContent;"#,
                vec![],
            )
            .await;
        assert!(more.as_str().unwrap().contains("More messages below"), "{more}");
        let from_bottom = browser
            .js("const log = document.getElementById('log'); return log.scrollHeight - log.scrollTop - log.clientHeight;", vec![])
            .await;
        assert!(from_bottom.as_f64().unwrap() > 200.0, "no auto-scroll while reading above: {from_bottom}");
        browser.click("#more-below").await;
        browser
            .wait_js(
                "back at the bottom",
                WAIT,
                r#"const log = document.getElementById('log');
                   return document.getElementById('more-below').hidden
                       && log.scrollHeight - log.scrollTop - log.clientHeight < 4;"#,
                vec![],
            )
            .await;

        // Switching rooms joins the other room and shows only its messages.
        let other = api_rooms.iter().map(|r| r["name"].as_str().unwrap()).find(|n| *n != "lobby").unwrap().to_owned();
        browser.click(&format!("#room-list li[data-room=\"{other}\"] .room")).await;
        browser
            .wait_js(
                "the other room's header",
                WAIT,
                "return document.getElementById('room-title').textContent === '#' + arguments[0] && location.hash === '#' + arguments[0]",
                vec![json!(other)],
            )
            .await;
        wait_connected(&browser, "the guest to join the other room").await;
        alice.join(&other);
        alice.say(&other, "hello from the other room");
        browser.wait_js("a message in the other room", WAIT, FIND_LINE_JS, vec![json!("hello from the other room")]).await;
        let in_other = originals(&lines(&browser).await);
        assert!(!in_other.iter().any(|o| o.starts_with("flood ")), "lobby lines left behind: {in_other:?}");

        // Phone-sized screen: the room list becomes a drawer, nothing overflows sideways.
        browser.client.set_window_size(390, 844).await.expect("resize");
        let phone = browser
            .wait_js(
                "the phone layout",
                WAIT,
                r#"const toggle = document.getElementById('rooms-toggle');
                   const side = document.getElementById('sidebar').getBoundingClientRect();
                   return getComputedStyle(toggle).display !== 'none' && side.right <= 0
                       ? { overflow: document.documentElement.scrollWidth - window.innerWidth } : null;"#,
                vec![],
            )
            .await;
        assert!(phone["overflow"].as_f64().unwrap() <= 0.0, "horizontal overflow on a phone: {phone}");
        browser.click("#rooms-toggle").await;
        browser
            .wait_js(
                "the room drawer",
                WAIT,
                "return document.getElementById('sidebar').getBoundingClientRect().left >= 0",
                vec![],
            )
            .await;
        browser.screenshot("rooms-phone.png").await;
        browser.click("#room-list li[data-room=\"lobby\"] .room").await;
        browser
            .wait_js(
                "back in the lobby on a phone",
                WAIT,
                r#"return document.getElementById('room-title').textContent === '#lobby'
                    && !document.getElementById('app').classList.contains('nav-open')
                    && document.querySelectorAll('#lines .line.msg').length >= 10;"#,
                vec![],
            )
            .await;
        wait_connected(&browser, "the guest to rejoin #lobby").await;
        alice.say("lobby", "seen on a phone");
        browser.wait_js("a live message on a phone", WAIT, FIND_LINE_JS, vec![json!("seen on a phone")]).await;
        let shot = browser.screenshot("chat-phone.png").await;
        eprintln!("screenshot: {}", shot.display());

        browser.close().await;
        drop(server);
    });
}

/// Accounts and sending: sign-up errors (taken name, bad password), sign up with the keyboard,
/// an own message pending until acknowledged and matching what other clients receive, log out,
/// a wrong password, log in, a reload that stays logged in, the 500-character counter, and the
/// rate-limit NOTICE.
#[test]
fn account_send_acknowledgement_and_errors() {
    let _serial = serial();
    runtime().block_on(async {
        let server = TestServer::start(&["--shards", "2"]);
        register(server.http, "taken_name", "some-password-1");
        let mut watcher = IrcClient::connect(server.http, None);
        watcher.join("lobby");

        let browser = Browser::start("account", 1280, 800).await;
        browser.goto(&server.url("/")).await;
        wait_connected(&browser, "the guest view").await;
        let guest = browser
            .js(
                "return { guestBar: !document.getElementById('guest-bar').hidden, composer: !document.getElementById('composer').hidden };",
                vec![],
            )
            .await;
        assert_eq!(guest, json!({ "guestBar": true, "composer": false }), "a guest reads, and is offered to sign up");

        // Keyboard only: focus "Sign up", press Enter, type, Tab, type, Enter.
        browser.js("document.getElementById('btn-signup').focus();", vec![]).await;
        browser.type_active("\u{E007}").await;
        browser
            .wait_js(
                "the sign-up dialog with the username focused",
                WAIT,
                "return document.getElementById('auth-dialog').open && document.activeElement.id === 'auth-username'",
                vec![],
            )
            .await;
        let auth_error = r#"const e = document.getElementById('auth-error'); return e.hidden ? null : e.textContent;"#;
        let clear_auth = r#"document.getElementById('auth-username').value = '';
                            document.getElementById('auth-password').value = '';
                            document.getElementById('auth-error').hidden = true;
                            document.getElementById('auth-username').focus();"#;

        browser.type_active("taken_name\u{E004}good-password-1\u{E007}").await;
        let taken = browser.wait_js("the taken-username error", WAIT, auth_error, vec![]).await;
        assert!(taken.as_str().unwrap().contains("taken"), "{taken}");
        browser.screenshot("signup-error.png").await;

        browser.js(clear_auth, vec![]).await;
        browser.type_active("viewer_bob\u{E004}short\u{E007}").await;
        let short = browser.wait_js("the bad-password error", WAIT, auth_error, vec![]).await;
        assert!(short.as_str().unwrap().contains("8 to 128"), "{short}");

        browser.js(clear_auth, vec![]).await;
        browser.type_active("no\u{E004}good-password-1\u{E007}").await;
        let bad_name = browser.wait_js("the bad-username error", WAIT, auth_error, vec![]).await;
        assert!(bad_name.as_str().unwrap().contains("4–25"), "{bad_name}");

        browser.js(clear_auth, vec![]).await;
        browser.type_active("Viewer_Bob\u{E004}bob-password-1\u{E007}").await;
        browser
            .wait_js(
                "signed in",
                WAIT,
                r#"return !document.getElementById('auth-dialog').open
                    && !document.getElementById('auth-user').hidden
                    && document.getElementById('me-name').textContent === 'viewer_bob'
                    && !document.getElementById('composer').hidden;"#,
                vec![],
            )
            .await;
        wait_connected(&browser, "the signed-in connection").await;

        // Record every state an own line goes through.
        browser
            .js(
                r#"window.__ownStates = [];
                   const record = () => {
                       for (const l of document.querySelectorAll('#lines .line.own')) {
                           const s = ['pending', 'acked', 'failed'].find((c) => l.classList.contains(c)) || 'none';
                           const key = l.querySelector('.original-text').textContent + '|' + s;
                           if (!window.__ownStates.includes(key)) window.__ownStates.push(key);
                       }
                   };
                   new MutationObserver(record).observe(document.getElementById('lines'),
                       { subtree: true, childList: true, attributes: true, attributeFilter: ['class'] });"#,
                vec![],
            )
            .await;

        // Enter sends; the line is pending, then acknowledged with the server's id.
        browser.type_into("#input", "hello from the browser\u{E007}").await;
        let own = browser
            .wait_js(
                "the own message acknowledged",
                WAIT,
                r#"const l = [...document.querySelectorAll('#lines .line.own')]
                       .find((x) => x.querySelector('.original-text').textContent === 'hello from the browser');
                   return l && l.classList.contains('acked') && l.dataset.id ? { id: l.dataset.id } : null;"#,
                vec![],
            )
            .await;
        let states = browser.js("return window.__ownStates;", vec![]).await;
        assert_eq!(
            states,
            json!(["hello from the browser|pending", "hello from the browser|acked"]),
            "own message shows pending until acknowledged"
        );
        assert_eq!(browser.js("return document.getElementById('input').value", vec![]).await, json!(""));
        // Another client got the same message (same id), and the own line ends up showing the
        // same styled text as everyone else sees.
        let seen = watcher.expect(WAIT, "the browser's message", |l| {
            l.command == "PRIVMSG" && l.tag("twitchy/original") == Some("hello from the browser")
        });
        assert_eq!(json!(seen.tag("id")), own["id"], "{seen:?}");
        assert_eq!(seen.prefix.split('!').next(), Some("viewer_bob"));
        let styled = seen.params.get(1).cloned().expect("PRIVMSG text");
        browser
            .wait_js(
                "the own line to show the styled text",
                WAIT,
                r#"const l = [...document.querySelectorAll('#lines .line.own')]
                       .find((x) => x.querySelector('.original-text').textContent === 'hello from the browser');
                   return l.querySelector('.text').textContent === arguments[0];"#,
                vec![json!(styled)],
            )
            .await;

        // Log out, fail a login, log in again.
        browser.click("#btn-logout").await;
        browser
            .wait_js(
                "logged out",
                WAIT,
                "return !document.getElementById('auth-anon').hidden && !document.getElementById('guest-bar').hidden",
                vec![],
            )
            .await;
        assert_eq!(browser.js("return localStorage.length", vec![]).await, json!(0), "token removed on log out");
        browser.click("#btn-login").await;
        browser.js(clear_auth, vec![]).await;
        browser.type_into("#auth-username", "viewer_bob").await;
        browser.type_into("#auth-password", "wrong-password-9\u{E007}").await;
        let wrong = browser.wait_js("the wrong-password error", WAIT, auth_error, vec![]).await;
        assert!(wrong.as_str().unwrap().contains("Wrong username or password"), "{wrong}");
        browser.js("document.getElementById('auth-password').value = '';", vec![]).await;
        browser.type_into("#auth-password", "bob-password-1\u{E007}").await;
        browser
            .wait_js(
                "logged in",
                WAIT,
                "return !document.getElementById('auth-user').hidden && !document.getElementById('auth-dialog').open",
                vec![],
            )
            .await;

        // A reload keeps the session (the token is in localStorage).
        browser.client.refresh().await.expect("reload");
        browser
            .wait_js(
                "still logged in after a reload",
                WAIT,
                r#"return !document.getElementById('auth-user').hidden
                    && document.getElementById('me-name').textContent === 'viewer_bob'
                    && document.getElementById('conn').dataset.state === 'open';"#,
                vec![],
            )
            .await;

        // The live counter refuses 501 characters and accepts 500.
        let own_count = "return document.querySelectorAll('#lines .line.own').length";
        let before = browser.js(own_count, vec![]).await;
        browser.type_into("#input", &"x".repeat(501)).await;
        let over = browser
            .wait_js(
                "the over-limit counter",
                WAIT,
                r#"const c = document.getElementById('counter');
                   const e = document.getElementById('composer-error');
                   return c.classList.contains('over') && !e.hidden
                       ? { counter: c.textContent, error: e.textContent, disabled: document.getElementById('send').disabled }
                       : null;"#,
                vec![],
            )
            .await;
        assert_eq!(over["counter"], json!("501/500"), "{over}");
        assert!(over["error"].as_str().unwrap().contains("limit is 500"), "{over}");
        assert_eq!(over["disabled"], json!(true), "{over}");
        browser.screenshot("over-limit.png").await;
        browser.type_into("#input", "\u{E007}").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(browser.js(own_count, vec![]).await, before, "a 501-character message is not sent");
        browser.type_into("#input", "\u{E003}").await;
        let at_limit = browser
            .js(
                r#"return { counter: document.getElementById('counter').textContent,
                            error: !document.getElementById('composer-error').hidden };"#,
                vec![],
            )
            .await;
        assert_eq!(at_limit, json!({ "counter": "500/500", "error": false }));
        browser.type_into("#input", "\u{E007}").await;
        browser.wait_js("the 500-character message", WAIT, FIND_LINE_JS, vec![json!("x".repeat(500))]).await;
        browser
            .wait_js(
                "the 500-character message acknowledged",
                WAIT,
                "const own = document.querySelectorAll('#lines .line.own'); const l = own[own.length - 1]; return !!l && l.classList.contains('acked');",
                vec![],
            )
            .await;

        // Past 20 messages in 30 s the server refuses with msg_ratelimit: the refused lines say so,
        // and the server's text is shown above the input box.
        for i in 1..=22 {
            browser.type_into("#input", &format!("spam {i}\u{E007}")).await;
        }
        let notice = browser
            .wait_js(
                "the rate-limit notice",
                WAIT,
                r#"const n = document.querySelector('#lines .line.own.failed[data-msg-id="msg_ratelimit"]');
                   const e = document.getElementById('composer-error');
                   return n && !e.hidden ? { line: n.textContent, composer: e.textContent } : null;"#,
                vec![],
            )
            .await;
        assert!(!notice["line"].as_str().unwrap().is_empty(), "{notice}");
        assert!(notice["composer"].as_str().unwrap().contains("too quickly"), "the server's NOTICE text: {notice}");
        let settled = browser
            .wait_js(
                "every own message settled",
                Duration::from_secs(30),
                r#"const own = [...document.querySelectorAll('#lines .line.own')];
                   return own.some((l) => l.classList.contains('pending')) ? null : own.map((l) => ({
                       state: ['acked', 'failed'].find((c) => l.classList.contains(c)) || '',
                       status: l.querySelector('.status').textContent,
                       msgId: l.dataset.msgId || '',
                   }));"#,
                vec![],
            )
            .await;
        let settled = settled.as_array().unwrap();
        let failed: Vec<&Value> = settled.iter().filter(|l| l["state"] == json!("failed")).collect();
        let acked = settled.iter().filter(|l| l["state"] == json!("acked")).count();
        assert!(!failed.is_empty(), "some messages refused: {settled:?}");
        // 20 per 30 s: the message sent before the reload plus these 19 (the 500-character one and
        // 18 of the spam) fill the window.
        assert!(acked >= 19, "the first 20 messages were accepted: {settled:?}");
        assert_eq!(acked + failed.len(), 23, "{settled:?}");
        for line in &failed {
            assert_eq!(line["status"], json!("not sent: sending too fast"), "refused by the server's NOTICE: {line}");
            assert_eq!(line["msgId"], json!("msg_ratelimit"), "{line}");
        }
        let shot = browser.screenshot("chat-signed-in.png").await;
        eprintln!("screenshot: {}", shot.display());

        // A token the server refuses (NOTICE * :Login authentication failed) drops the page back
        // to reading as a guest, and says why.
        browser
            .js(
                r#"localStorage.setItem('twitchy.auth', JSON.stringify({ username: 'viewer_bob', token: 'not-a-real-token' }));"#,
                vec![],
            )
            .await;
        browser.client.refresh().await.expect("reload");
        let expired = browser
            .wait_js(
                "the guest view after a refused token",
                WAIT,
                r#"const line = [...document.querySelectorAll('#lines .line.system')]
                       .find((l) => l.textContent.includes('log in again'));
                   return line && !document.getElementById('guest-bar').hidden
                       && document.getElementById('conn').dataset.state === 'open'
                       && localStorage.getItem('twitchy.auth') === null ? line.textContent : null;"#,
                vec![],
            )
            .await;
        assert!(expired.as_str().unwrap().contains("authentication failed"), "{expired}");

        browser.close().await;
        drop(server);
    });
}

/// After the server stops, the page says it is reconnecting; once the server is back (same data
/// directory), the page reconnects by itself, does not repeat messages, and shows new ones.
#[test]
fn reconnects_after_server_restart() {
    let _serial = serial();
    runtime().block_on(async {
        // The server PINGs after 1 s of silence and drops a client silent for 6 s, so a page that
        // did not answer PING with PONG would lose its connection during the 9 s pause below.
        let mut server = TestServer::start(&[
            "--shards",
            "2",
            "--idle-ping-secs",
            "1",
            "--idle-timeout-secs",
            "6",
        ]);
        let token = register(server.http, "carol_caster", "carol-password-1");
        let proxy = FrontProxy::start(server.http);
        {
            let mut carol = IrcClient::connect(server.http, Some(("carol_caster", &token)));
            carol.join("lobby");
            carol.say("lobby", "before the restart");
        }

        let browser = Browser::start("reconnect", 1024, 720).await;
        browser.goto(&proxy.url("/")).await;
        wait_connected(&browser, "the first connection").await;
        browser.wait_js("history before the restart", WAIT, FIND_LINE_JS, vec![json!("before the restart")]).await;
        tokio::time::sleep(Duration::from_secs(9)).await;
        let kept = browser
            .js(
                r#"return {
                       state: document.getElementById('conn').dataset.state,
                       banner: !document.getElementById('banner').hidden,
                       lost: [...document.querySelectorAll('#lines .line.system')].some((l) => /lost|timed out|Reconnect/.test(l.textContent)),
                   };"#,
                vec![],
            )
            .await;
        assert_eq!(kept, json!({ "state": "open", "banner": false, "lost": false }), "the page answers the server's PING");

        server.stop();
        let banner = browser
            .wait_js(
                "the reconnecting banner",
                WAIT,
                r#"const b = document.getElementById('banner');
                   return !b.hidden && document.getElementById('conn').dataset.state !== 'open'
                       ? document.getElementById('banner-text').textContent : null;"#,
                vec![],
            )
            .await;
        assert!(banner.as_str().unwrap().contains("Reconnecting"), "{banner}");
        let shot = browser.screenshot("reconnecting.png").await;
        eprintln!("screenshot: {}", shot.display());

        server.restart();
        proxy.set_backend(server.http);
        browser
            .wait_js(
                "the page to reconnect on its own",
                RECONNECT_WAIT,
                r#"return document.getElementById('conn').dataset.state === 'open'
                    && document.getElementById('banner').hidden
                    && [...document.querySelectorAll('#lines .line.system')].some((l) => l.textContent.includes('Reconnected'));"#,
                vec![],
            )
            .await;

        let mut carol = IrcClient::connect(server.http, Some(("carol_caster", &token)));
        carol.join("lobby");
        carol.say("lobby", "after the restart");
        browser.wait_js("a message after the restart", WAIT, FIND_LINE_JS, vec![json!("after the restart")]).await;
        let all = lines(&browser).await;
        assert_eq!(
            originals(&all).iter().filter(|o| *o == "before the restart").count(),
            1,
            "the replayed history is not shown twice: {all:#?}"
        );
        assert_unique_ids(&all);
        drop(carol);

        // A crash (no RECONNECT first) is a plain lost connection; the page comes back again.
        server.kill();
        let banner = browser
            .wait_js(
                "the lost-connection banner",
                WAIT,
                r#"const b = document.getElementById('banner');
                   return !b.hidden && document.getElementById('conn').dataset.state !== 'open'
                       ? document.getElementById('banner-text').textContent : null;"#,
                vec![],
            )
            .await;
        assert!(banner.as_str().unwrap().starts_with("Connection lost. Reconnecting"), "{banner}");
        server.restart();
        proxy.set_backend(server.http);
        browser
            .wait_js(
                "the page to reconnect after a crash",
                RECONNECT_WAIT,
                r#"return document.getElementById('conn').dataset.state === 'open'
                    && document.getElementById('banner').hidden
                    && [...document.querySelectorAll('#lines .line.system')]
                        .filter((l) => l.textContent.includes('Reconnected')).length >= 2;"#,
                vec![],
            )
            .await;
        let mut carol = IrcClient::connect(server.http, Some(("carol_caster", &token)));
        carol.join("lobby");
        carol.say("lobby", "after the crash");
        browser.wait_js("a message after the crash", WAIT, FIND_LINE_JS, vec![json!("after the crash")]).await;
        assert_unique_ids(&lines(&browser).await);

        browser.close().await;
        drop(proxy);
        drop(server);
    });
}

/// With `--tls-cert`/`--tls-key` the web client works over `https://` and its chat over `wss://` (under the
/// page's Content-Security-Policy): the page loads, signs up through the API, connects, and shows a live message
/// sent over plain TCP IRC.
#[test]
fn web_client_over_https_and_wss() {
    let _serial = serial();
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
        let server = TestServer::start(&[
            "--shards",
            "2",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);

        // The certificate is self-signed: the browser is told to accept it.
        let browser = Browser::start_with("https", 1024, 720, &["--ignore-certificate-errors"]).await;
        browser
            .goto(&format!("https://127.0.0.1:{}/", server.http.port()))
            .await;
        wait_connected(&browser, "the page's wss:// connection").await;
        let scheme = browser.js("return location.protocol", vec![]).await;
        assert_eq!(scheme, json!("https:"));

        // The page's own HTTPS request registers an account (same origin, allowed by the CSP).
        let registered = browser
            .js(
                r#"const x = new XMLHttpRequest();
                   x.open('POST', '/api/register', false);
                   x.setRequestHeader('Content-Type', 'application/json');
                   x.send(JSON.stringify({ username: 'tls_browser_user', password: 'tls-password-1' }));
                   return [x.status, JSON.parse(x.responseText).token || null];"#,
                vec![],
            )
            .await;
        assert_eq!(registered[0], json!(201), "{registered}");
        let token = registered[1].as_str().expect("a token").to_owned();

        let mut sender = common::client::Irc::tcp(server.irc);
        sender.login("tls_browser_user", &token);
        sender.join("lobby");
        sender.send("PRIVMSG #lobby :seen through wss");
        sender.expect("the ack", common::client::is_ack);
        browser
            .wait_js("the live message over wss://", WAIT, FIND_LINE_JS, vec![json!("seen through wss")])
            .await;
        browser.close().await;
    });
}
