//! End-to-end tests of moderation in the web client, in headless Chromium against the real `twitchy` binary:
//! moderator actions on chat lines and what viewers see of them, badges, room modes, the AutoMod queue, and the
//! account settings (colour, username) with deleting one's own message.
//!
//! The server runs with a rooms file that names a broadcaster, a moderator and a VIP for `#lobby` and holds
//! flagged messages for review. Pages log in by putting a token (from the HTTP API) where the page keeps it, and
//! other chatters are plain IRC-over-WebSocket clients.

mod common;

// The browser tests' harness, shared with `browser.rs`; this file uses only part of it.
#[allow(dead_code)]
#[path = "browser/harness_ext.rs"]
mod harness_ext;
#[allow(dead_code)]
#[path = "browser/irc_client.rs"]
mod irc_client;
#[allow(dead_code)]
#[path = "browser/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use common::TestServer;
use harness_ext::{register, runtime, serial};
use irc_client::IrcClient;
use webdriver::Browser;

/// Longest wait for something the page should show promptly (account requests hash passwords, and the machine
/// may be busy).
const WAIT: Duration = Duration::from_secs(30);

const ROOMS_TOML: &str = r#"
[[rooms]]
name = "lobby"
style = "pirate"
broadcaster = "sam_streams"
moderators = ["mia_mods"]
vips = ["vic_vip"]
automod = "hold"
banned_phrases = ["buy followers"]

[[rooms]]
name = "tavern"
style = "pirate"
"#;

const PASSWORD: &str = "a-good-password-1";

/// A server started with the moderation rooms file; the directory holding the file lives as long as this.
struct ModServer {
    server: TestServer,
    _dir: tempfile::TempDir,
}

fn start_server() -> ModServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let rooms: PathBuf = dir.path().join("rooms.toml");
    std::fs::write(&rooms, ROOMS_TOML).expect("write rooms file");
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--config",
        rooms.to_str().expect("utf-8 path"),
        "--limits-exempt-loopback",
    ]);
    ModServer { server, _dir: dir }
}

/// What a test reads of one chat line. `actions` lists the moderation buttons the reader can see.
const LINE_INFO_JS: &str = r#"
    const info = (l) => l && ({
        id: l.dataset.id || '',
        login: l.dataset.login || '',
        text: l.querySelector('.text').textContent,
        original: l.querySelector('.original-text').textContent,
        name: l.querySelector('.name').textContent,
        color: getComputedStyle(l.querySelector('.name')).color,
        deleted: l.classList.contains('deleted'),
        badges: [...l.querySelectorAll('.badge')].map((b) => b.getAttribute('aria-label')),
        actions: [...l.querySelectorAll('.act')]
            .filter((b) => getComputedStyle(b).display !== 'none' && b.getAttribute('aria-label'))
            .map((b) => b.dataset.action),
        state: ['pending', 'acked', 'failed', 'held'].find((c) => l.classList.contains(c)) || '',
    });
    const lines = [...document.querySelectorAll('#lines .line.msg')];
"#;

/// Waits for the line whose original text is `original` and returns what it shows.
async fn line_by_original(browser: &Browser, what: &str, original: &str) -> Value {
    let script = format!(
        "{LINE_INFO_JS} return info(lines.find((l) => l.querySelector('.original-text').textContent === arguments[0])) || null;"
    );
    browser
        .wait_js(what, WAIT, &script, vec![json!(original)])
        .await
}

/// Waits until the line with message id `id` satisfies `condition` (a JS expression over `line`); returns it.
async fn line_by_id_when(browser: &Browser, what: &str, id: &str, condition: &str) -> Value {
    let script = format!(
        "{LINE_INFO_JS} const line = info(lines.find((l) => l.dataset.id === arguments[0])); \
         return line && ({condition}) ? line : null;"
    );
    browser.wait_js(what, WAIT, &script, vec![json!(id)]).await
}

/// Waits for a status line containing `needle`; returns its text and msg-id.
async fn system_line(browser: &Browser, what: &str, needle: &str) -> Value {
    browser
        .wait_js(
            what,
            WAIT,
            r#"const l = [...document.querySelectorAll('#lines .line.system')]
                   .find((x) => x.textContent.includes(arguments[0]));
               return l ? { text: l.textContent, msgId: l.dataset.msgId || '', tone: l.className } : null;"#,
            vec![json!(needle)],
        )
        .await
}

/// Opens the page, logged in as `auth` when given, and waits until it has joined the lobby.
async fn open_page(server: &TestServer, name: &str, auth: Option<(&str, &str)>) -> Browser {
    let browser = Browser::start(name, 1280, 900).await;
    browser.goto(&server.url("/#lobby")).await;
    if let Some((user, token)) = auth {
        browser
            .js(
                "localStorage.setItem('twitchy.auth', JSON.stringify({ username: arguments[0], token: arguments[1] }));",
                vec![json!(user), json!(token)],
            )
            .await;
        browser.client.refresh().await.expect("reload");
        browser
            .wait_js(
                "logged in",
                WAIT,
                "return !document.getElementById('auth-user').hidden && !document.getElementById('composer').hidden",
                vec![],
            )
            .await;
    }
    browser
        .wait_js(
            "joined #lobby",
            WAIT,
            "return document.getElementById('conn').dataset.state === 'open' && document.getElementById('room-title').textContent === '#lobby'",
            vec![],
        )
        .await;
    browser
}

async fn is_moderator_view(browser: &Browser) -> bool {
    browser
        .js(
            "return document.getElementById('app').classList.contains('can-moderate')",
            vec![],
        )
        .await
        == json!(true)
}

/// Types a line into the composer and sends it with Enter.
async fn send(browser: &Browser, text: &str) {
    browser
        .type_into("#input", &format!("{text}\u{E007}"))
        .await;
}

/// The author of a held message is told so (NOTICE `msg_rejected`).
fn expect_held_notice(author: &mut IrcClient) {
    author.expect(WAIT, "msg_rejected", |l| {
        l.command == "NOTICE" && l.tag("msg-id") == Some("msg_rejected")
    });
}

fn actions(line: &Value) -> Vec<String> {
    line["actions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A moderator's actions on chat lines reach every viewer: delete replaces the text, a timeout hides the user's
/// lines, mode changes are announced and shown beside the input, and a clear empties the view. Badges show who is
/// the broadcaster, a moderator or a VIP; only moderators get the actions, and everyone may delete their own lines.
#[test]
fn moderator_actions_badges_and_modes_reach_viewers() {
    let _serial = serial();
    runtime().block_on(async {
        let ms = start_server();
        let server = &ms.server;
        let sam_token = register(server.http, "sam_streams", PASSWORD);
        let mia_token = register(server.http, "mia_mods", PASSWORD);
        let vic_token = register(server.http, "vic_vip", PASSWORD);
        let tom_token = register(server.http, "tom_troll", PASSWORD);
        let vera_token = register(server.http, "vera_views", PASSWORD);

        let mut sam = IrcClient::connect(server.http, Some(("sam_streams", &sam_token)));
        sam.join("lobby");
        let mut vic = IrcClient::connect(server.http, Some(("vic_vip", &vic_token)));
        vic.join("lobby");
        let mut tom = IrcClient::connect(server.http, Some(("tom_troll", &tom_token)));
        tom.join("lobby");

        let moderator = open_page(server, "mod-moderator", Some(("mia_mods", &mia_token))).await;
        moderator
            .wait_js(
                "the moderator view",
                WAIT,
                "return document.getElementById('app').classList.contains('can-moderate')",
                vec![],
            )
            .await;
        let viewer = open_page(server, "mod-viewer", Some(("vera_views", &vera_token))).await;
        assert!(!is_moderator_view(&viewer).await, "a plain viewer gets no moderator view");

        sam.say("lobby", "hello chat from sam");
        vic.say("lobby", "vip says hi");
        let tom_ids: Vec<String> = ["tom line one", "tom line two", "tom line three"]
            .iter()
            .map(|t| tom.say("lobby", t))
            .collect();
        send(&moderator, "mia keeps order").await;
        send(&viewer, "vera says hello").await;

        // Badges, with text alternatives, and names in their colour.
        let sam_line = line_by_original(&viewer, "sam's line", "hello chat from sam").await;
        assert_eq!(sam_line["badges"], json!(["Broadcaster"]), "{sam_line}");
        assert_eq!(sam_line["name"], json!("sam_streams"), "{sam_line}");
        assert!(sam_line["color"].as_str().unwrap().starts_with("rgb"), "{sam_line}");
        let mia_line = line_by_original(&viewer, "mia's line", "mia keeps order").await;
        assert_eq!(mia_line["badges"], json!(["Moderator"]), "{mia_line}");
        let vic_line = line_by_original(&viewer, "vic's line", "vip says hi").await;
        assert_eq!(vic_line["badges"], json!(["VIP"]), "{vic_line}");
        let tom_line = line_by_original(&viewer, "tom's line", "tom line one").await;
        assert_eq!(tom_line["badges"], json!([]), "{tom_line}");
        assert_eq!(tom_line["id"], json!(tom_ids[0]), "{tom_line}");
        let shot = viewer.screenshot("moderation-badges.png").await;
        eprintln!("screenshot: {}", shot.display());

        // A viewer gets no actions on others' lines, and "delete" on their own.
        assert_eq!(actions(&tom_line), Vec::<String>::new(), "{tom_line}");
        let own = viewer
            .wait_js(
                "vera's own line acknowledged",
                WAIT,
                &format!(
                    "{LINE_INFO_JS} const l = info(lines.find((x) => x.classList.contains('own') \
                     && x.querySelector('.original-text').textContent === 'vera says hello')); \
                     return l && l.state === 'acked' && l.id ? l : null;"
                ),
                vec![],
            )
            .await;
        assert_eq!(actions(&own), vec!["delete"], "{own}");

        // The moderator gets delete, timeout and ban on a viewer's line; only delete on their own; nothing on the
        // broadcaster's.
        let on_tom = line_by_original(&moderator, "tom's line for the moderator", "tom line one").await;
        assert_eq!(actions(&on_tom), vec!["delete", "timeout", "ban"], "{on_tom}");
        let on_vic = line_by_original(&moderator, "vic's line for the moderator", "vip says hi").await;
        assert_eq!(actions(&on_vic), vec!["delete", "timeout", "ban"], "{on_vic}");
        let on_sam = line_by_original(&moderator, "sam's line for the moderator", "hello chat from sam").await;
        assert_eq!(actions(&on_sam), Vec::<String>::new(), "{on_sam}");
        let on_self = moderator
            .wait_js(
                "the moderator's own line acknowledged",
                WAIT,
                &format!(
                    "{LINE_INFO_JS} const l = info(lines.find((x) => x.querySelector('.original-text').textContent === 'mia keeps order')); \
                     return l && l.id && l.actions.length ? l : null;"
                ),
                vec![],
            )
            .await;
        assert_eq!(actions(&on_self), vec!["delete"], "{on_self}");
        let shot = moderator.screenshot("moderation-actions.png").await;
        eprintln!("screenshot: {}", shot.display());

        // Delete: the viewer's page replaces the text, and keeps tom's other lines.
        moderator
            .click(&format!("#lines .line.msg[data-id=\"{}\"] .act-delete", tom_ids[0]))
            .await;
        let deleted = line_by_id_when(&viewer, "the deleted line", &tom_ids[0], "line.deleted").await;
        assert_eq!(deleted["text"], json!("message deleted by a moderator"), "{deleted}");
        assert_eq!(deleted["original"], json!(""), "the deleted text is gone from the page: {deleted}");
        let kept = line_by_id_when(&viewer, "tom's second line", &tom_ids[1], "true").await;
        assert_eq!(kept["deleted"], json!(false), "{kept}");
        line_by_id_when(&moderator, "the deleted line for the moderator", &tom_ids[0], "line.deleted").await;
        let done = system_line(&moderator, "the delete confirmation", "now deleted").await;
        assert_eq!(done["msgId"], json!("delete_message_success"), "{done}");
        assert!(!done["tone"].as_str().unwrap().contains("error"), "a success is not an error: {done}");

        // Timeout: tom's remaining lines are hidden on the viewer's page, which says why; tom cannot talk.
        moderator
            .click(&format!("#lines .line.msg[data-id=\"{}\"] .act-timeout", tom_ids[1]))
            .await;
        for id in &tom_ids[1..] {
            let hidden = line_by_id_when(&viewer, "tom's lines hidden", id, "line.deleted").await;
            assert_eq!(hidden["text"], json!("<message deleted>"), "{hidden}");
        }
        let why = system_line(&viewer, "the timeout status line", "timed out").await;
        assert_eq!(why["text"], json!("tom_troll has been timed out for 10 minutes."), "{why}");
        let still = line_by_original(&viewer, "sam's line after the timeout", "hello chat from sam").await;
        assert_eq!(still["deleted"], json!(false), "other users' lines stay: {still}");
        let clear = tom.expect(WAIT, "CLEARCHAT for tom", |l| {
            l.command == "CLEARCHAT" && l.params.get(1).map(String::as_str) == Some("tom_troll")
        });
        assert_eq!(clear.tag("ban-duration"), Some("600"), "{clear:?}");
        tom.privmsg("lobby", "am i muted");
        tom.expect(WAIT, "msg_timedout", |l| {
            l.command == "NOTICE" && l.tag("msg-id") == Some("msg_timedout")
        });
        let shot = viewer.screenshot("moderation-timeout.png").await;
        eprintln!("screenshot: {}", shot.display());

        // A viewer's moderation command is refused, and the page says so.
        send(&viewer, "/timeout vic_vip").await;
        let refused = viewer
            .wait_js(
                "the no_permission notice",
                WAIT,
                r#"const l = document.querySelector('#lines .line.system[data-msg-id="no_permission"]');
                   return l ? l.textContent : null;"#,
                vec![],
            )
            .await;
        assert!(refused.as_str().unwrap().contains("permission"), "{refused}");

        // Slow mode: announced as a status line and shown beside the input; a fast second message is refused
        // with a readable reason.
        send(&moderator, "/slow 30").await;
        let slow = system_line(&viewer, "slow mode announced", "Slow mode on").await;
        assert_eq!(slow["text"], json!("Slow mode on: 30 s"), "{slow}");
        let modes = viewer
            .wait_js(
                "the modes beside the input",
                WAIT,
                "const m = document.getElementById('room-modes'); return m.hidden ? null : m.textContent;",
                vec![],
            )
            .await;
        assert_eq!(modes, json!("Slow mode: 30 s"));
        send(&viewer, "slow one").await;
        send(&viewer, "slow two").await;
        let too_fast = viewer
            .wait_js(
                "the slow-mode refusal",
                WAIT,
                r#"const l = document.querySelector('#lines .line.system[data-msg-id="msg_slowmode"]');
                   const own = document.querySelector('#lines .line.own.failed[data-msg-id="msg_slowmode"] .status');
                   return l && own ? { line: l.textContent, status: own.textContent } : null;"#,
                vec![],
            )
            .await;
        assert!(too_fast["line"].as_str().unwrap().contains("slow mode"), "{too_fast}");
        assert_eq!(too_fast["status"], json!("not sent: slow mode"), "{too_fast}");
        let shot = viewer.screenshot("moderation-slow-mode.png").await;
        eprintln!("screenshot: {}", shot.display());
        send(&moderator, "/slowoff").await;
        system_line(&viewer, "slow mode off", "Slow mode off").await;
        send(&moderator, "/emoteonly").await;
        system_line(&viewer, "emote-only on", "Emote-only mode on").await;
        let modes = viewer
            .wait_js(
                "emote-only beside the input",
                WAIT,
                "const m = document.getElementById('room-modes'); return m.hidden ? null : m.textContent;",
                vec![],
            )
            .await;
        assert_eq!(modes, json!("Emote-only"));
        send(&moderator, "/emoteonlyoff").await;
        system_line(&viewer, "emote-only off", "Emote-only mode off").await;
        viewer
            .wait_js(
                "no modes beside the input",
                WAIT,
                "return document.getElementById('room-modes').hidden",
                vec![],
            )
            .await;

        // Clear: the view empties, with a status line.
        send(&moderator, "/clear").await;
        system_line(&viewer, "the clear status line", "Chat was cleared by a moderator").await;
        let left = viewer
            .js("return document.querySelectorAll('#lines .line.msg').length", vec![])
            .await;
        assert_eq!(left, json!(0), "a clear empties the view");

        moderator.close().await;
        viewer.close().await;
    });
}

/// AutoMod holds a flagged message for the room's moderators: it waits in the moderator's queue with Allow and
/// Deny, Allow delivers it to viewers, Deny drops it, and a decision by another moderator removes it from the queue.
#[test]
fn automod_queue_allow_and_deny() {
    let _serial = serial();
    runtime().block_on(async {
        let ms = start_server();
        let server = &ms.server;
        let sam_token = register(server.http, "sam_streams", PASSWORD);
        let mia_token = register(server.http, "mia_mods", PASSWORD);
        let tom_token = register(server.http, "tom_troll", PASSWORD);
        let mut sam = IrcClient::connect(server.http, Some(("sam_streams", &sam_token)));
        sam.join("lobby");
        let mut tom = IrcClient::connect(server.http, Some(("tom_troll", &tom_token)));
        tom.join("lobby");

        let moderator = open_page(server, "automod-moderator", Some(("mia_mods", &mia_token))).await;
        moderator
            .wait_js(
                "the moderator view",
                WAIT,
                "return document.getElementById('app').classList.contains('can-moderate')",
                vec![],
            )
            .await;
        let viewer = open_page(server, "automod-viewer", None).await;
        // `queue`: the held messages the moderator's page shows.
        let queue_js = r#"const q = document.getElementById('automod-queue');
            const queue = q.hidden ? [] : [...q.querySelectorAll('.held')].map((h) => ({
                heldId: h.dataset.heldId,
                name: h.querySelector('.name').textContent,
                reason: h.querySelector('.held-reason').textContent,
                text: h.querySelector('.held-text').textContent,
                buttons: [...h.querySelectorAll('button')].map((b) => b.getAttribute('aria-label')),
            }));"#;
        let non_empty_queue = format!("{queue_js} return queue.length ? queue : null;");
        let empty_queue = format!("{queue_js} return queue.length === 0;");

        // Held: the author is told, the moderator's queue shows it, viewers do not see it.
        let held_text = "you should buy followers today";
        tom.privmsg("lobby", held_text);
        expect_held_notice(&mut tom);
        let queue = moderator
            .wait_js(
                "the held message in the queue",
                WAIT,
                &non_empty_queue,
                vec![],
            )
            .await;
        let held = &queue[0];
        assert_eq!(queue.as_array().unwrap().len(), 1, "{queue}");
        assert_eq!(held["text"], json!(held_text), "{held}");
        assert_eq!(held["name"], json!("tom_troll"), "{held}");
        assert_eq!(held["reason"], json!("held: blocked phrase"), "{held}");
        assert_eq!(
            held["buttons"],
            json!(["Allow the message from tom_troll", "Deny the message from tom_troll"]),
            "{held}"
        );
        let shot = moderator.screenshot("automod-queue.png").await;
        eprintln!("screenshot: {}", shot.display());
        let held_id = held["heldId"].as_str().unwrap().to_owned();
        let seen_by_sam = sam.expect(WAIT, "automod-held for the broadcaster", |l| {
            l.command == "USERNOTICE" && l.tag("msg-id") == Some("automod-held")
        });
        assert_eq!(seen_by_sam.tag("held-id"), Some(held_id.as_str()), "{seen_by_sam:?}");

        // Allow: the viewer's page gets the message; the queue empties; the author is told.
        moderator
            .click(&format!("#automod-list .held[data-held-id=\"{held_id}\"] .held-allow"))
            .await;
        let delivered = line_by_original(&viewer, "the allowed message", held_text).await;
        assert_eq!(delivered["name"], json!("tom_troll"), "{delivered}");
        moderator
            .wait_js("the queue emptied", WAIT, &empty_queue, vec![])
            .await;
        tom.expect(WAIT, "automod_message_approved", |l| {
            l.command == "NOTICE" && l.tag("msg-id") == Some("automod_message_approved")
        });

        // Deny: the queue empties and nobody sees the message.
        let denied_text = "please buy followers now";
        tom.privmsg("lobby", denied_text);
        expect_held_notice(&mut tom);
        let queue = moderator
            .wait_js(
                "the second held message",
                WAIT,
                &non_empty_queue,
                vec![],
            )
            .await;
        let denied_id = queue[0]["heldId"].as_str().unwrap().to_owned();
        assert_eq!(queue[0]["text"], json!(denied_text), "{queue}");
        moderator
            .click(&format!("#automod-list .held[data-held-id=\"{denied_id}\"] .held-deny"))
            .await;
        moderator
            .wait_js("the queue emptied after deny", WAIT, &empty_queue, vec![])
            .await;
        tom.expect(WAIT, "automod_message_denied", |l| {
            l.command == "NOTICE" && l.tag("msg-id") == Some("automod_message_denied")
        });

        // Resolved by another moderator (the broadcaster, over IRC): it leaves this moderator's queue too.
        let third_text = "cheap way to buy followers";
        tom.privmsg("lobby", third_text);
        expect_held_notice(&mut tom);
        let third = sam.expect(WAIT, "the third held message", |l| {
            l.command == "USERNOTICE"
                && l.tag("msg-id") == Some("automod-held")
                && l.params.get(1).map(String::as_str) == Some(third_text)
        });
        let third_id = third.tag("held-id").expect("held-id").to_owned();
        moderator
            .wait_js(
                "the third held message in the queue",
                WAIT,
                &format!("{queue_js} return queue.some((h) => h.heldId === arguments[0]);"),
                vec![json!(third_id)],
            )
            .await;
        sam.send(&format!("PRIVMSG #lobby :/automod deny {third_id}"));
        moderator
            .wait_js(
                "the queue emptied by another moderator",
                WAIT,
                &empty_queue,
                vec![],
            )
            .await;
        tom.expect(WAIT, "automod_message_denied for the third message", |l| {
            l.command == "NOTICE" && l.tag("msg-id") == Some("automod_message_denied")
        });

        // A plain message after all of it arrives; the denied ones never did.
        tom.say("lobby", "just a normal message");
        line_by_original(&viewer, "the marker message", "just a normal message").await;
        let shown: Vec<String> = viewer
            .js(
                "return [...document.querySelectorAll('#lines .line.msg .original-text')].map((o) => o.textContent)",
                vec![],
            )
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert!(!shown.iter().any(|t| t == denied_text || t == third_text), "denied messages shown: {shown:?}");
        assert_eq!(shown.iter().filter(|t| *t == held_text).count(), 1, "{shown:?}");

        moderator.close().await;
        viewer.close().await;
    });
}

/// Settings: a user picks a Twitch colour and a new username (a taken one and an invalid one are refused with the
/// server's reasons), and their next line shows both, to themselves and to others; the page reconnects under the
/// new login. They can also delete their own message.
#[test]
fn settings_colour_and_username_and_own_delete() {
    let _serial = serial();
    runtime().block_on(async {
        let ms = start_server();
        let server = &ms.server;
        let kat_token = register(server.http, "kat_chats", PASSWORD);
        register(server.http, "taken_name", PASSWORD);
        let mut watcher = IrcClient::connect(server.http, None);
        watcher.join("lobby");

        let browser = open_page(server, "settings", Some(("kat_chats", &kat_token))).await;
        browser.click("#btn-settings").await;
        browser
            .wait_js("the settings dialog", WAIT, "return document.getElementById('settings-dialog').open", vec![])
            .await;
        let swatches = browser
            .js(
                "return [...document.querySelectorAll('#color-swatches .swatch')].map((s) => s.getAttribute('aria-label'))",
                vec![],
            )
            .await;
        assert_eq!(swatches.as_array().unwrap().len(), 15, "Twitch's colour list: {swatches}");
        browser.click("#color-swatches .swatch[data-color=\"#FF69B4\"]").await;
        browser.click("#color-save").await;
        let saved = browser
            .wait_js(
                "the colour saved",
                WAIT,
                r#"const m = document.getElementById('color-msg');
                   return !m.hidden && m.dataset.kind === 'ok' ? m.textContent : null;"#,
                vec![],
            )
            .await;
        assert!(saved.as_str().unwrap().contains("#FF69B4"), "{saved}");
        browser.click("#settings-close").await;

        // The colour applies at once, without reconnecting.
        send(&browser, "in my new colour").await;
        let seen = watcher.expect(WAIT, "the message in the new colour", |l| {
            l.command == "PRIVMSG" && l.tag("twitchy/original") == Some("in my new colour")
        });
        assert_eq!(seen.tag("color"), Some("#FF69B4"), "{seen:?}");
        let own = line_by_original(&browser, "the own line in the new colour", "in my new colour").await;
        assert_eq!(own["color"], json!("rgb(255, 105, 180)"), "{own}");
        browser.click("#btn-settings").await;

        let username_result = r#"const m = document.getElementById('username-msg');
            return !m.hidden && !document.getElementById('username-save').disabled
                ? { kind: m.dataset.kind, text: m.textContent } : null;"#;
        let set_name = "const i = document.getElementById('settings-username'); i.value = ''; \
                        document.getElementById('username-msg').hidden = true;";
        browser.js(set_name, vec![]).await;
        browser.type_into("#settings-username", "Taken_Name\u{E007}").await;
        let taken = browser.wait_js("the taken-name error", WAIT, username_result, vec![]).await;
        assert_eq!(taken["kind"], json!("error"), "{taken}");
        assert!(taken["text"].as_str().unwrap().to_lowercase().contains("taken"), "{taken}");
        browser.js(set_name, vec![]).await;
        browser.type_into("#settings-username", "_x\u{E007}").await;
        let invalid = browser.wait_js("the invalid-name error", WAIT, username_result, vec![]).await;
        assert_eq!(invalid["kind"], json!("error"), "{invalid}");
        assert!(!invalid["text"].as_str().unwrap().is_empty(), "{invalid}");
        browser.js(set_name, vec![]).await;
        browser.type_into("#settings-username", "Kat_Renamed\u{E007}").await;
        let renamed = browser.wait_js("the new name", WAIT, username_result, vec![]).await;
        assert_eq!(renamed["kind"], json!("ok"), "{renamed}");
        assert!(renamed["text"].as_str().unwrap().contains("Kat_Renamed"), "{renamed}");
        let shot = browser.screenshot("settings.png").await;
        eprintln!("screenshot: {}", shot.display());
        browser.click("#settings-close").await;
        browser
            .wait_js(
                "reconnected under the new name",
                WAIT,
                r#"return document.getElementById('conn').dataset.state === 'open'
                    && document.getElementById('me-name').textContent === 'Kat_Renamed'
                    && JSON.parse(localStorage.getItem('twitchy.auth')).username === 'kat_renamed';"#,
                vec![],
            )
            .await;

        // The next line carries the new name and colour, on the page and for everyone else.
        send(&browser, "my new look").await;
        let seen = watcher.expect(WAIT, "the renamed user's message", |l| {
            l.command == "PRIVMSG" && l.tag("twitchy/original") == Some("my new look")
        });
        assert_eq!(seen.prefix.split('!').next(), Some("kat_renamed"), "{seen:?}");
        assert_eq!(seen.tag("display-name"), Some("Kat_Renamed"), "{seen:?}");
        assert_eq!(seen.tag("color"), Some("#FF69B4"), "{seen:?}");
        let own = browser
            .wait_js(
                "the own line acknowledged",
                WAIT,
                &format!(
                    "{LINE_INFO_JS} const l = info(lines.find((x) => x.classList.contains('own') \
                     && x.querySelector('.original-text').textContent === 'my new look')); \
                     return l && l.state === 'acked' && l.id ? l : null;"
                ),
                vec![],
            )
            .await;
        assert_eq!(own["name"], json!("Kat_Renamed"), "{own}");
        assert_eq!(own["color"], json!("rgb(255, 105, 180)"), "{own}");
        assert_eq!(json!(seen.tag("id")), own["id"], "{seen:?}");

        // Deleting one's own message: the line says so, and everyone else is told (CLEARMSG).
        let id = own["id"].as_str().unwrap().to_owned();
        browser
            .click(&format!("#lines .line.msg[data-id=\"{id}\"] .act-delete"))
            .await;
        let gone = line_by_id_when(&browser, "the own line deleted", &id, "line.deleted").await;
        assert_eq!(gone["text"], json!("message deleted"), "{gone}");
        let clearmsg = watcher.expect(WAIT, "CLEARMSG for the own message", |l| l.command == "CLEARMSG");
        assert_eq!(clearmsg.tag("target-msg-id"), Some(id.as_str()), "{clearmsg:?}");

        // A reload logs in again with the new login.
        browser.client.refresh().await.expect("reload");
        browser
            .wait_js(
                "logged in after a reload under the new name",
                WAIT,
                r#"return document.getElementById('conn').dataset.state === 'open'
                    && !document.getElementById('auth-user').hidden
                    && document.getElementById('me-name').textContent === 'Kat_Renamed';"#,
                vec![],
            )
            .await;
        browser.close().await;
    });
}
