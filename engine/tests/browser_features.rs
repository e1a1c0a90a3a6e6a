//! End-to-end tests of the chat features in the web client, in headless Chromium against the real `twitchy` binary
//! on two shards: emotes drawn as images and the emote picker, `/me` lines, replies, reactions, typing indicators,
//! the viewer list, whispers with unread badges, and catching up on messages missed while the connection was lost.
//!
//! Two pages log in as different users (each browser has its own profile) by putting a token from the HTTP API
//! where the page keeps it; other chatters are plain IRC-over-WebSocket clients.

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

use std::time::Duration;

use serde_json::{Value, json};

use common::TestServer;
use common::client::http_as;
use harness_ext::{FrontProxy, register, runtime, serial};
use irc_client::IrcClient;
use webdriver::Browser;

/// Longest wait for something the page should show promptly (account requests hash passwords, and the machine
/// may be busy).
const WAIT: Duration = Duration::from_secs(30);
/// Longest wait for a page to come back after its connection was cut (backoff included).
const RECONNECT_WAIT: Duration = Duration::from_secs(60);

const PASSWORD: &str = "a-good-password-1";

fn start_server() -> TestServer {
    TestServer::start(&["--shards", "2", "--limits-exempt-loopback"])
}

/// What a test reads of one chat line: the text as shown (emote images read as their alt text), its emote images,
/// the parent of a reply, the reactions, and how an action line looks.
const LINE_INFO_JS: &str = r#"
    const info = (l) => {
        if (!l) return null;
        const body = l.querySelector('.text');
        const name = l.querySelector('.name');
        const parent = l.querySelector('.reply-parent');
        return {
            id: l.dataset.id || '',
            login: l.dataset.login || '',
            shown: [...body.childNodes].map((n) => n.nodeType === 3 ? n.textContent : (n.alt || '')).join(''),
            emotes: [...body.querySelectorAll('img.emote')].map((i) => ({
                alt: i.alt, title: i.title, src: new URL(i.src).pathname, loaded: i.complete && i.naturalWidth > 0,
            })),
            parent: parent ? parent.textContent : null,
            reactions: [...l.querySelectorAll('.reactions .reaction')].map((r) =>
                r.querySelector('.reaction-emoji').textContent + ' ' + r.querySelector('.reaction-count').textContent),
            action: l.classList.contains('action'),
            colon: !!l.querySelector('.colon'),
            italic: getComputedStyle(body).fontStyle === 'italic',
            textColor: getComputedStyle(body).color,
            nameColor: getComputedStyle(name).color,
            state: ['pending', 'acked', 'failed'].find((c) => l.classList.contains(c)) || '',
        };
    };
    const lines = [...document.querySelectorAll('#lines .line.msg')];
"#;

/// Waits for the line whose original text is `original` to satisfy `condition` (a JS expression over `line`).
async fn line_when(browser: &Browser, what: &str, original: &str, condition: &str) -> Value {
    let script = format!(
        "{LINE_INFO_JS} const line = info(lines.find((l) => l.querySelector('.original-text').textContent === arguments[0])); \
         return line && ({condition}) ? line : null;"
    );
    browser
        .wait_js(what, WAIT, &script, vec![json!(original)])
        .await
}

/// Gives the line whose original text is `original` the element id `dom_id`, for clicking inside it.
async fn tag_line(browser: &Browser, original: &str, dom_id: &str) {
    let found = browser
        .js(
            r#"const line = [...document.querySelectorAll('#lines .line.msg')]
                   .find((l) => l.querySelector('.original-text').textContent === arguments[0]);
               if (line) line.id = arguments[1];
               return !!line;"#,
            vec![json!(original), json!(dom_id)],
        )
        .await;
    assert_eq!(found, json!(true), "a line with the original {original:?}");
}

/// Opens the page logged in as `user` and waits until it has joined #lobby.
async fn open_page(server_url: &str, name: &str, user: &str, token: &str) -> Browser {
    let browser = Browser::start(name, 1280, 900).await;
    browser.goto(server_url).await;
    browser
        .js(
            "localStorage.setItem('twitchy.auth', JSON.stringify({ username: arguments[0], token: arguments[1] }));",
            vec![json!(user), json!(token)],
        )
        .await;
    browser.client.refresh().await.expect("reload");
    wait_joined(&browser, "lobby").await;
    browser
}

async fn wait_joined(browser: &Browser, room: &str) {
    browser
        .wait_js(
            &format!("joined #{room}"),
            WAIT,
            "return document.getElementById('conn').dataset.state === 'open' \
             && document.getElementById('room-title').textContent === '#' + arguments[0]",
            vec![json!(room)],
        )
        .await;
}

/// Types a line into the composer and sends it with Enter.
async fn send(browser: &Browser, text: &str) {
    browser
        .type_into("#input", &format!("{text}\u{E007}"))
        .await;
}

/// The emote codes of `text`, in order, as `/api/emotes` lists them.
fn codes_in(text: &str, known: &[String]) -> Vec<String> {
    text.split(' ')
        .filter(|w| known.iter().any(|k| k == w))
        .map(str::to_owned)
        .collect()
}

/// Emotes render as images whose alt text is the code (at the right code-point offsets, after characters outside
/// the BMP), the picker inserts a code, `/me` lines render as actions, a reply shows its parent on the other page,
/// reactions are counted on both pages, and typing shows "is typing" on the other page until the input is cleared.
#[test]
fn emotes_actions_replies_reactions_and_typing_between_two_pages() {
    let _serial = serial();
    runtime().block_on(async {
        let server = start_server();
        let alice_token = register(server.http, "alice_feat", PASSWORD);
        let bob_token = register(server.http, "bob_feat", PASSWORD);
        let carol_token = register(server.http, "carol_feat", PASSWORD);
        let (status, emotes) = harness_ext::get_json(server.http, "/api/emotes");
        assert_eq!(status, 200, "{emotes}");
        let known: Vec<String> = emotes
            .as_array()
            .expect("emote list")
            .iter()
            .map(|e| e["code"].as_str().expect("code").to_owned())
            .collect();
        let mut watcher = IrcClient::connect(server.http, None);
        watcher.join("lobby");
        let mut carol = IrcClient::connect(server.http, Some(("carol_feat", &carol_token)));
        carol.join("lobby");

        let url = server.url("/#lobby");
        let alice = open_page(&url, "features-alice", "alice_feat", &alice_token).await;
        let bob = open_page(&url, "features-bob", "bob_feat", &bob_token).await;

        // Emotes: Twitch's offsets count code points, so the emoji before each code (two UTF-16 units in
        // JavaScript) must not shift the images.
        let sent = "🎉🎉 twiGG that was close 🚀 twiHype";
        send(&alice, sent).await;
        let delivered = watcher.expect(WAIT, "alice's emote message", |l| {
            l.command == "PRIVMSG" && l.tag("twitchy/original") == Some(sent)
        });
        let text = delivered.params[1].clone();
        assert!(
            delivered.tag("emotes").is_some_and(|t| !t.is_empty()),
            "{delivered:?}"
        );
        let codes = codes_in(&text, &known);
        assert!(!codes.is_empty(), "styling keeps the codes: {text:?}");
        let line = line_when(&bob, "alice's emotes on bob's page", sent, "line.emotes.length > 0").await;
        assert_eq!(line["shown"], json!(text), "text and images in order: {line}");
        let alts: Vec<&str> = line["emotes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["alt"].as_str().unwrap())
            .collect();
        assert_eq!(alts, codes, "{line}");
        for emote in line["emotes"].as_array().unwrap() {
            assert_eq!(emote["title"], emote["alt"], "a tooltip names the emote: {emote}");
            let id = known.iter().position(|k| *k == emote["alt"]).unwrap();
            assert_eq!(
                emote["src"],
                emotes[id]["url"],
                "the emote's image: {emote}"
            );
        }
        let loaded = bob
            .wait_js(
                "the emote images loaded (the CSP allows them)",
                WAIT,
                "return [...document.querySelectorAll('#lines img.emote')].every((i) => i.complete && i.naturalWidth > 0)",
                vec![],
            )
            .await;
        assert_eq!(loaded, json!(true));
        // Alice's own line gets the images too once the server's copy comes back.
        line_when(&alice, "alice's own emotes", sent, "line.emotes.length > 0").await;

        // The picker lists /api/emotes and inserts a code at the caret.
        alice.type_into("#input", "gg").await;
        alice.click("#emote-button").await;
        let listed = alice
            .wait_js(
                "the emote picker",
                WAIT,
                r#"const p = document.getElementById('emote-picker');
                   const b = [...document.querySelectorAll('#emote-grid button[data-code]')];
                   return !p.hidden && b.length ? b.map((x) => x.querySelector('img').alt) : null;"#,
                vec![],
            )
            .await;
        assert_eq!(listed, json!(known), "every global emote is offered");
        alice.click("#emote-grid button[data-code=\"twiSkull\"]").await;
        let input = alice
            .js("return document.getElementById('input').value", vec![])
            .await;
        assert_eq!(input, json!("gg twiSkull "), "the code is inserted as a word");
        alice.type_into("#input", "\u{E007}").await;
        let line = line_when(&bob, "the picked emote on bob's page", "gg twiSkull", "line.emotes.length > 0").await;
        assert_eq!(line["emotes"][0]["alt"], json!("twiSkull"), "{line}");
        alice.click("#emote-button").await;

        // /me: the whole text in the author's colour, italic, no colon.
        send(&alice, "/me waves at everyone").await;
        let action = line_when(&bob, "alice's /me on bob's page", "waves at everyone", "true").await;
        assert_eq!(action["action"], json!(true), "{action}");
        assert_eq!(action["colon"], json!(false), "{action}");
        assert_eq!(action["italic"], json!(true), "{action}");
        assert_eq!(action["textColor"], action["nameColor"], "{action}");
        assert!(!action["shown"].as_str().unwrap().contains('\u{1}'), "{action}");
        let own = line_when(&alice, "alice's own /me", "waves at everyone", "line.state === 'acked'").await;
        assert_eq!(own["action"], json!(true), "{own}");

        // Replies: bob replies to alice's line; alice's page shows the parent above bob's line.
        send(&alice, "who wants pizza").await;
        let parent = line_when(&bob, "the parent on bob's page", "who wants pizza", "line.id").await;
        tag_line(&bob, "who wants pizza", "pizza-line").await;
        bob.click("#pizza-line .tool-reply").await;
        let bar = bob
            .wait_js(
                "the reply bar",
                WAIT,
                r#"const b = document.getElementById('reply-bar');
                   return b.hidden ? null : document.getElementById('reply-text').textContent;"#,
                vec![],
            )
            .await;
        let bar = bar.as_str().unwrap();
        assert!(bar.starts_with("Replying to @alice_feat: "), "{bar}");
        assert!(bar.ends_with(parent["shown"].as_str().unwrap()), "{bar}");
        // Cancel works, and a second start replies again.
        bob.click("#reply-cancel").await;
        assert_eq!(
            bob.js("return document.getElementById('reply-bar').hidden", vec![]).await,
            json!(true)
        );
        bob.click("#pizza-line .tool-reply").await;
        send(&bob, "me please").await;
        let sent_reply = carol.expect(WAIT, "bob's reply as IRC", |l| {
            l.command == "PRIVMSG" && l.tag("twitchy/original") == Some("me please")
        });
        assert_eq!(
            sent_reply.tag("reply-parent-msg-id"),
            parent["id"].as_str(),
            "the page sends reply-parent-msg-id"
        );
        let reply = line_when(&alice, "bob's reply on alice's page", "me please", "line.parent").await;
        let shown_parent = reply["parent"].as_str().unwrap();
        assert!(shown_parent.contains("@alice_feat"), "{reply}");
        assert!(shown_parent.contains(parent["shown"].as_str().unwrap()), "{reply}");
        let own_reply = line_when(&bob, "bob's own reply", "me please", "line.parent").await;
        assert!(own_reply["parent"].as_str().unwrap().contains("@alice_feat"), "{own_reply}");
        assert_eq!(
            bob.js("return document.getElementById('reply-bar').hidden", vec![]).await,
            json!(true),
            "sending ends the reply"
        );

        // Reactions: alice reacts to bob's reply; both pages show the count, and carol's makes it two.
        tag_line(&alice, "me please", "reply-line").await;
        alice.click("#reply-line .tool-react").await;
        alice
            .click("#reply-line .react-choice[data-emoji=\"🔥\"]")
            .await;
        let on_bob = line_when(&bob, "alice's reaction on bob's page", "me please", "line.reactions.length").await;
        assert_eq!(on_bob["reactions"], json!(["🔥 1"]), "{on_bob}");
        let on_alice = line_when(&alice, "alice's own reaction", "me please", "line.reactions.length").await;
        assert_eq!(on_alice["reactions"], json!(["🔥 1"]), "{on_alice}");
        let reply_id = reply["id"].as_str().unwrap().to_owned();
        carol.send(&format!("@+draft/react=🔥;+draft/reply={reply_id} TAGMSG #lobby"));
        line_when(&bob, "two reactions on bob's page", "me please", "line.reactions[0] === '🔥 2'").await;
        line_when(&alice, "two reactions on alice's page", "me please", "line.reactions[0] === '🔥 2'").await;

        // Typing: bob types without sending; alice sees it, and it goes when bob clears the input.
        bob.type_into("#input", "thinking about it").await;
        let typing = alice
            .wait_js(
                "bob typing on alice's page",
                WAIT,
                "const t = document.getElementById('typing').textContent; return t.includes('is typing') ? t : null;",
                vec![],
            )
            .await;
        assert!(typing.as_str().unwrap().contains("bob_feat"), "{typing}");
        carol.expect(WAIT, "bob's typing TAGMSG", |l| {
            l.command == "TAGMSG"
                && l.tag("+typing") == Some("active")
                && l.prefix.starts_with("bob_feat!")
        });
        bob.js(
            "const i = document.getElementById('input'); i.value = ''; i.dispatchEvent(new Event('input'));",
            vec![],
        )
        .await;
        alice
            .wait_js(
                "the typing indicator gone after bob cleared the input",
                WAIT,
                "return document.getElementById('typing').textContent === ''",
                vec![],
            )
            .await;
        // An indicator that is not renewed expires by itself.
        carol.send("@+typing=active TAGMSG #lobby");
        alice
            .wait_js(
                "carol typing",
                WAIT,
                "return document.getElementById('typing').textContent.includes('carol_feat')",
                vec![],
            )
            .await;
        alice
            .wait_js(
                "carol's indicator expired",
                Duration::from_secs(15),
                "return document.getElementById('typing').textContent === ''",
                vec![],
            )
            .await;
        let shot = alice.screenshot("features.png").await;
        eprintln!("screenshot: {}", shot.display());

        alice.close().await;
        bob.close().await;
        drop(server);
    });
}

/// The viewer list shows the room's logged-in users with the counts, and drops one who leaves; a whisper from one
/// page reaches the other's whispers panel with an unread badge that clears (on the server too) once opened, and
/// the answer appears live in the first page's open conversation.
#[test]
fn viewer_list_and_whispers_between_two_pages() {
    let _serial = serial();
    runtime().block_on(async {
        let server = start_server();
        let alice_token = register(server.http, "alice_talks", PASSWORD);
        let bob_token = register(server.http, "bob_talks", PASSWORD);
        let mut anonymous = IrcClient::connect(server.http, None);
        anonymous.join("lobby");

        let url = server.url("/#lobby");
        let alice = open_page(&url, "whispers-alice", "alice_talks", &alice_token).await;
        let bob = open_page(&url, "whispers-bob", "bob_talks", &bob_token).await;

        // The viewer list: both logged-in users, the anonymous viewer only counted.
        alice.click("#btn-chatters").await;
        let viewers = r#"const p = document.getElementById('chatters-panel');
            const c = document.getElementById('chatters-counts');
            return p.hidden ? null : {
                names: [...document.querySelectorAll('#chatters-list .chatter')].map((l) => l.dataset.login),
                loggedIn: Number(c.dataset.loggedIn), anonymous: Number(c.dataset.anonymous), text: c.textContent,
            };"#;
        let list = alice
            .wait_js(
                "two logged-in viewers",
                WAIT,
                &format!("const v = (() => {{ {viewers} }})(); return v && v.names.length === 2 && v.anonymous >= 1 ? v : null;"),
                vec![],
            )
            .await;
        assert_eq!(list["names"], json!(["alice_talks", "bob_talks"]), "{list}");
        assert_eq!(list["loggedIn"], json!(2), "{list}");
        assert!(list["text"].as_str().unwrap().starts_with("2 logged in · "), "{list}");
        alice.screenshot("viewer-list.png").await;

        // Bob goes to another room: his PART reaches alice's list.
        bob.click("#room-list li[data-room=\"tavern\"] .room").await;
        wait_joined(&bob, "tavern").await;
        let list = alice
            .wait_js(
                "bob gone from the viewer list",
                WAIT,
                &format!("const v = (() => {{ {viewers} }})(); return v && v.names.length === 1 ? v : null;"),
                vec![],
            )
            .await;
        assert_eq!(list["names"], json!(["alice_talks"]), "{list}");
        assert_eq!(list["loggedIn"], json!(1), "{list}");
        alice.click("#chatters-close").await;

        // Bob whispers alice from his whispers panel.
        bob.click("#btn-whispers").await;
        bob.type_into("#whisper-to", "alice_talks\u{E007}").await;
        bob.wait_js(
            "the conversation with alice",
            WAIT,
            "return !document.getElementById('whisper-thread').hidden",
            vec![],
        )
        .await;
        bob.type_into("#whisper-input", "psst alice twiGG\u{E007}").await;
        let acked = bob
            .wait_js(
                "bob's whisper acknowledged",
                WAIT,
                r#"const w = [...document.querySelectorAll('#whisper-messages .whisper.mine')];
                   const l = w[w.length - 1];
                   return l && l.dataset.id && !l.classList.contains('pending') ? l.dataset.id : null;"#,
                vec![],
            )
            .await;
        assert!(!acked.as_str().unwrap().is_empty());

        // Alice: a badge on the panel button and on the conversation.
        let badge = alice
            .wait_js(
                "the unread badge",
                WAIT,
                r#"const b = document.getElementById('whispers-unread');
                   return b.hidden ? null : { text: b.textContent,
                       label: document.getElementById('btn-whispers').getAttribute('aria-label') };"#,
                vec![],
            )
            .await;
        assert_eq!(badge["text"], json!("1"), "{badge}");
        assert_eq!(badge["label"], json!("Whispers, 1 unread"), "{badge}");
        alice.click("#btn-whispers").await;
        let conversation = alice
            .wait_js(
                "bob's conversation in the list",
                WAIT,
                r#"const c = document.querySelector('#whisper-list .conversation[data-login="bob_talks"]');
                   const u = c && c.querySelector('.unread');
                   return c ? (u.hidden ? '' : u.textContent) : null;"#,
                vec![],
            )
            .await;
        assert_eq!(conversation, json!("1"), "the conversation's unread count");
        alice.screenshot("whispers-unread.png").await;
        alice
            .click("#whisper-list .conversation-open[data-whisper=\"bob_talks\"]")
            .await;
        let thread = alice
            .wait_js(
                "the conversation with bob",
                WAIT,
                r#"const w = [...document.querySelectorAll('#whisper-messages .whisper')];
                   return w.length ? w.map((l) => ({
                       name: l.querySelector('.name').textContent,
                       shown: [...l.querySelector('.text').childNodes]
                           .map((n) => n.nodeType === 3 ? n.textContent : n.alt).join(''),
                       emotes: [...l.querySelectorAll('img.emote')].map((i) => i.alt),
                   })) : null;"#,
                vec![],
            )
            .await;
        assert_eq!(
            thread,
            json!([{ "name": "bob_talks", "shown": "psst alice twiGG", "emotes": ["twiGG"] }]),
            "{thread}"
        );
        alice
            .wait_js(
                "the unread badges cleared",
                WAIT,
                r#"return document.getElementById('whispers-unread').hidden
                    && document.querySelector('#whisper-list .conversation[data-login="bob_talks"] .unread').hidden;"#,
                vec![],
            )
            .await;
        // The server has it read too.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let list = http_as(server.http, "GET", "/api/whispers", Some(&alice_token), None).json();
            let unread = list["conversations"][0]["unread"].clone();
            if unread == json!(0) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "still unread on the server: {list}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Alice answers; bob has the conversation open and sees it at once, with no unread badge.
        alice.type_into("#whisper-input", "hi bob\u{E007}").await;
        bob.wait_js(
            "alice's answer in bob's open conversation",
            WAIT,
            r#"return [...document.querySelectorAll('#whisper-messages .whisper:not(.mine) .text')]
                   .some((t) => t.textContent === 'hi bob');"#,
            vec![],
        )
        .await;
        let order = bob
            .js(
                "return [...document.querySelectorAll('#whisper-messages .whisper .text')].map((t) => t.textContent)",
                vec![],
            )
            .await;
        assert_eq!(order, json!(["psst alice ", "hi bob"]), "oldest at the top");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            bob.js("return document.getElementById('whispers-unread').hidden", vec![]).await,
            json!(true),
            "a whisper read as it arrives is not counted"
        );
        bob.screenshot("whispers-thread.png").await;

        alice.close().await;
        bob.close().await;
        drop(server);
    });
}

/// A page whose connection is lost while the room goes on shows, once it is back, every message sent meanwhile
/// exactly once and in order: more than the JOIN's last-10 replay covers, read from the history API after the
/// last message it had seen, without repeating the replayed ones.
#[test]
fn catching_up_after_a_lost_connection_shows_missed_messages_once() {
    let _serial = serial();
    runtime().block_on(async {
        let server = start_server();
        let token = register(server.http, "dora_speaks", PASSWORD);
        let mut dora = IrcClient::connect(server.http, Some(("dora_speaks", &token)));
        dora.join("lobby");
        let before: Vec<String> = (1..=3).map(|i| format!("before the cut {i}")).collect();
        for text in &before {
            dora.say("lobby", text);
        }

        let proxy = FrontProxy::start(server.http);
        let browser = Browser::start("catch-up", 1024, 800).await;
        browser.goto(&proxy.url("/#lobby")).await;
        wait_joined(&browser, "lobby").await;
        line_when(&browser, "the last line before the cut", "before the cut 3", "true").await;

        // The page loses its connection while the server and the room go on.
        proxy.cut();
        browser
            .wait_js(
                "the page offline",
                WAIT,
                "return document.getElementById('conn').dataset.state !== 'open' && !document.getElementById('banner').hidden",
                vec![],
            )
            .await;
        let missed: Vec<String> = (1..=15).map(|i| format!("while away {i}")).collect();
        for text in &missed {
            dora.say("lobby", text);
        }
        proxy.set_backend(server.http);
        browser
            .wait_js(
                "the page back",
                RECONNECT_WAIT,
                r#"return document.getElementById('conn').dataset.state === 'open'
                    && [...document.querySelectorAll('#lines .line.system')].some((l) => l.textContent.includes('Reconnected'));"#,
                vec![],
            )
            .await;
        dora.say("lobby", "live again");
        line_when(&browser, "a live line after the reconnect", "live again", "true").await;

        let originals = browser
            .js(
                r#"return [...document.querySelectorAll('#lines .line.msg')].map((l) => ({
                       original: l.querySelector('.original-text').textContent, id: l.dataset.id || '' }));"#,
                vec![],
            )
            .await;
        let shown: Vec<&str> = originals
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["original"].as_str().unwrap())
            .collect();
        let mut expected: Vec<&str> = before.iter().map(String::as_str).collect();
        expected.extend(missed.iter().map(String::as_str));
        expected.push("live again");
        assert_eq!(shown, expected, "every missed message once, in order, before the live one");
        let mut ids: Vec<&str> = originals
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), expected.len(), "ids are unique: {originals}");
        let note = browser
            .js(
                r#"const l = document.querySelector('#lines .line.system[data-msg-id="catch-up"]');
                   return l ? l.textContent : null;"#,
                vec![],
            )
            .await;
        assert_eq!(note, json!("15 messages sent while you were offline:"));
        let shot = browser.screenshot("catch-up.png").await;
        eprintln!("screenshot: {}", shot.display());

        browser.close().await;
        drop(proxy);
        drop(server);
    });
}
