//! Protocol hot paths, each against a naive baseline measured in the same run:
//!
//! - `irc_parse`: `Message::parse` (borrowed, lazy tags) vs a `split(' ')` parser that builds
//!   owned `String`s for every part.
//! - `privmsg_encode`: `encode_privmsg` into a reused buffer vs `format!` with per-tag
//!   `String` escaping.
//! - `tag_escape`: the single-pass escaper vs chained `.replace()` calls.
//! - `fanout`: one encode shared as `bytes::Bytes` clones with every viewer vs one encode per
//!   viewer.
//!
//! Inputs are small so `cargo bench -- --test` runs every bench in moments.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use twitchy_engine::protocol::irc::Message;
use twitchy_engine::protocol::tags::escape_tag_value;
use twitchy_engine::protocol::twitch::{ChatLine, SERVER_NAME_DEFAULT, encode_privmsg};

/// A delivered PRIVMSG with Twitch's full tag set, as viewers receive it.
const SERVER_LINE: &str = "@badge-info=;badges=moderator/1,subscriber/12;client-nonce=8a1f2c;\
    color=#0D4200;display-name=Ronni;emotes=;first-msg=0;flags=;\
    id=b34ccfc7-4977-403a-8a94-33c6bac34fb8;mod=1;returning-chatter=0;room-id=1337;subscriber=1;\
    tmi-sent-ts=1507246572675;turbo=0;twitchy/original=hello\\sworld\\:\\sskibidi;user-id=42;\
    user-type=mod :ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :skibidi toilet rizz, no cap fr fr";

/// A client's send with a nonce, as the server receives it.
const CLIENT_LINE: &str = "@client-nonce=5d7f1b2a9c;reply-parent-msg-id=b34ccfc7 PRIVMSG #ronni :hello world, how is everyone";

/// The baseline parser: split on spaces and copy every piece into its own `String`.
#[derive(Debug)]
struct NaiveMessage {
    tags: Vec<(String, String)>,
    prefix: Option<String>,
    command: String,
    params: Vec<String>,
}

fn naive_unescape(value: &str) -> String {
    value
        .replace("\\:", ";")
        .replace("\\s", " ")
        .replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\\\", "\\")
}

fn naive_parse(line: &str) -> Option<NaiveMessage> {
    let mut words = line.split(' ').peekable();
    let mut tags = Vec::new();
    if let Some(raw) = words.peek().and_then(|word| word.strip_prefix('@')) {
        for item in raw.split(';') {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            tags.push((key.to_string(), naive_unescape(value)));
        }
        words.next();
    }
    let mut prefix = None;
    if let Some(raw) = words.peek().and_then(|word| word.strip_prefix(':')) {
        prefix = Some(raw.to_string());
        words.next();
    }
    let command = words.next()?.to_string();
    let mut params = Vec::new();
    while let Some(word) = words.next() {
        if let Some(first) = word.strip_prefix(':') {
            let mut trailing = first.to_string();
            for rest in words.by_ref() {
                trailing.push(' ');
                trailing.push_str(rest);
            }
            params.push(trailing);
        } else {
            params.push(word.to_string());
        }
    }
    Some(NaiveMessage {
        tags,
        prefix,
        command,
        params,
    })
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("irc_parse");
    for (name, line) in [
        ("server_privmsg", SERVER_LINE),
        ("client_privmsg", CLIENT_LINE),
    ] {
        group.throughput(Throughput::Bytes(line.len() as u64));
        // Both sides do the same work a server does with a line: read the command, the
        // parameters and one tag.
        group.bench_with_input(BenchmarkId::new("ours", name), line, |b, line| {
            b.iter(|| {
                let message = Message::parse(black_box(line)).expect("valid line");
                let nonce = message.tag("client-nonce");
                black_box((message.command, message.params.len(), nonce));
            });
        });
        group.bench_with_input(BenchmarkId::new("naive_split", name), line, |b, line| {
            b.iter(|| {
                let message = naive_parse(black_box(line)).expect("valid line");
                let nonce = message
                    .tags
                    .iter()
                    .find(|(key, _)| key == "client-nonce")
                    .map(|(_, value)| value.clone());
                black_box((message.command, message.params.len(), message.prefix, nonce));
            });
        });
    }
    group.finish();
}

fn chat_line() -> ChatLine<'static> {
    ChatLine {
        id: "b34ccfc7-4977-403a-8a94-33c6bac34fb8",
        room: "ronni",
        room_id: 1337,
        user_id: 42,
        login: "ronni",
        display_name: "Ronni",
        color: "#0D4200",
        badges: "moderator/1,subscriber/12",
        is_mod: true,
        text: "skibidi toilet rizz, no cap fr fr",
        original: "hello world; what's up",
        client_nonce: Some("8a1f2c"),
        sent_unix_ms: 1_507_246_572_675,
        historical: false,
        emotes: "",
        reply: None,
    }
}

fn naive_escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace(';', "\\:")
        .replace(' ', "\\s")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

/// The baseline encoder: `format!` with an escaped `String` per tag value.
fn naive_encode_privmsg(line: &ChatLine<'_>, server: &str) -> Vec<u8> {
    let subscriber = line.badges.contains("subscriber/");
    format!(
        "@badge-info=;badges={};client-nonce={};color={};display-name={};emotes=;first-msg=0;flags=;\
         id={};mod={};returning-chatter=0;room-id={};subscriber={};tmi-sent-ts={};turbo=0;\
         twitchy/original={};user-id={};user-type={} :{}!{}@{}.{} PRIVMSG #{} :{}\r\n",
        naive_escape(line.badges),
        naive_escape(line.client_nonce.unwrap_or("")),
        naive_escape(line.color),
        naive_escape(line.display_name),
        naive_escape(line.id),
        u8::from(line.is_mod),
        line.room_id,
        u8::from(subscriber),
        line.sent_unix_ms,
        naive_escape(line.original),
        line.user_id,
        if line.is_mod { "mod" } else { "" },
        line.login,
        line.login,
        line.login,
        server,
        line.room,
        line.text.replace(['\r', '\n'], " "),
    )
    .into_bytes()
}

fn bench_encode(c: &mut Criterion) {
    let line = chat_line();
    let mut group = c.benchmark_group("privmsg_encode");
    let mut out = Vec::with_capacity(1024);
    group.bench_function("ours_reused_buffer", |b| {
        b.iter(|| {
            out.clear();
            encode_privmsg(black_box(&line), SERVER_NAME_DEFAULT, true, &mut out);
            black_box(out.len());
        });
    });
    group.bench_function("naive_format", |b| {
        b.iter(|| black_box(naive_encode_privmsg(black_box(&line), SERVER_NAME_DEFAULT)));
    });
    group.finish();
}

fn bench_escape(c: &mut Criterion) {
    let mut group = c.benchmark_group("tag_escape");
    let values = [
        ("plain", "b34ccfc7-4977-403a-8a94-33c6bac34fb8"),
        (
            "specials",
            "hello world; this\\that \r\n and more words here",
        ),
    ];
    let mut out = String::with_capacity(256);
    for (name, value) in values {
        group.bench_with_input(BenchmarkId::new("ours", name), value, |b, value| {
            b.iter(|| {
                out.clear();
                escape_tag_value(black_box(value), &mut out);
                black_box(out.len());
            });
        });
        group.bench_with_input(
            BenchmarkId::new("naive_replace", name),
            value,
            |b, value| {
                b.iter(|| black_box(naive_escape(black_box(value))));
            },
        );
    }
    group.finish();
}

/// Viewers one message is delivered to per iteration.
const FANOUT_VIEWERS: usize = 1000;

fn bench_fanout(c: &mut Criterion) {
    let line = chat_line();
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(FANOUT_VIEWERS as u64));
    // Each viewer's outbound queue, reused across iterations like a connection's queue.
    let mut shared_queues: Vec<Vec<Bytes>> =
        (0..FANOUT_VIEWERS).map(|_| Vec::with_capacity(1)).collect();
    group.bench_function("encode_once_share_bytes", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(512);
            encode_privmsg(black_box(&line), SERVER_NAME_DEFAULT, true, &mut out);
            let shared = Bytes::from(out);
            for queue in &mut shared_queues {
                queue.clear();
                queue.push(shared.clone());
            }
            black_box(&shared_queues);
        });
    });
    let mut owned_queues: Vec<Vec<Vec<u8>>> =
        (0..FANOUT_VIEWERS).map(|_| Vec::with_capacity(1)).collect();
    group.bench_function("encode_per_viewer", |b| {
        b.iter(|| {
            for queue in &mut owned_queues {
                queue.clear();
                let mut out = Vec::with_capacity(512);
                encode_privmsg(black_box(&line), SERVER_NAME_DEFAULT, true, &mut out);
                queue.push(out);
            }
            black_box(&owned_queues);
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_parse,
    bench_encode,
    bench_escape,
    bench_fanout
);
criterion_main!(benches);
