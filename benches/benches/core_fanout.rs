//! The user-space cost of one chat message fanned out to a room of WebSocket viewers on one shard: everything the
//! core and its driver do per delivery except the socket write itself.
//!
//! - `core`: a sender's PRIVMSG goes through `ShardCore` (decode, sequence, style and store completions, release),
//!   every viewer's queue gets the shared line, and each flushed connection's bytes are taken for one write, as
//!   the shard's flusher does. `lines_per_write` > 1 is the coalescing path (a write delay, or a busy shard): that
//!   many messages are queued before the writes are taken.
//! - `naive`: the baseline server's way, per viewer: format the line, frame it in a fresh buffer (what
//!   `twitchy-naive` does under its lock before each `write`).
//!
//! Throughput is in deliveries, so the figure is time per delivery. The kernel's share (one `send` per write) is
//! measured by `perf/core-bench.sh`, not here. `TWITCHY_BENCH_QUICK=1` shrinks sample counts and times for CI.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use twitchy_engine::core::{
    AuthOutcome, ConnId, CoreConfig, Output, RoomInfo, ShardCore, Transport,
};
use twitchy_engine::protocol::session::Identity;
use twitchy_engine::protocol::ws;
use twitchy_inference::StyledBy;

/// Viewers in the room, as in `perf/core-bench.sh`'s pinned scenario.
const VIEWERS: usize = 1000;

fn quick() -> bool {
    std::env::var("TWITCHY_BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn client_frame(text: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    ws::encode_client_frame(1, text.as_bytes(), [1, 2, 3, 4], &mut frame);
    frame
}

/// One shard core with a sender and `VIEWERS` joined WebSocket viewers, driven the way the glommio driver drives
/// it.
struct Room {
    core: ShardCore,
    sender: ConnId,
    now_ms: u64,
    seq: u64,
    dirty: Vec<ConnId>,
    buffer: Vec<u8>,
}

impl Room {
    fn new() -> Room {
        let mut cfg = CoreConfig::for_tests(0, 1, vec![RoomInfo::for_tests("lobby", 1, "pirate")]);
        cfg.rate.messages_per_window_max = u32::MAX;
        cfg.rate.messages_per_window_max_mod = u32::MAX;
        let mut room = Room {
            core: ShardCore::new(cfg),
            sender: 0,
            now_ms: 1_700_000_000_000,
            seq: 0,
            dirty: Vec::new(),
            buffer: Vec::new(),
        };
        for viewer in 0..VIEWERS {
            let id = room.open(&format!(
                "CAP REQ :twitch.tv/tags twitch.tv/commands\r\nNICK justinfan{viewer}\r\nJOIN #lobby\r\n"
            ));
            room.drain(id);
        }
        room.sender = room
            .open("CAP REQ :twitch.tv/tags twitch.tv/commands\r\nPASS oauth:x\r\nNICK ronni\r\n");
        room.core.auth_done(
            room.sender,
            AuthOutcome::Valid(Identity {
                login: "ronni".into(),
                display_name: "Ronni".into(),
                user_id: 42,
                color: "#0D4200".into(),
                badges: String::new(),
                is_mod: false,
            }),
            room.now_ms,
        );
        room.pump();
        room.input(room.sender, "JOIN #lobby\r\n");
        room.pump();
        room.flush();
        room
    }

    fn open(&mut self, login: &str) -> ConnId {
        let id = self
            .core
            .conn_open(Transport::WebSocket, self.now_ms)
            .expect("under the connection limit");
        self.input(id, login);
        self.pump();
        id
    }

    fn input(&mut self, id: ConnId, text: &str) {
        self.core.conn_input(id, &client_frame(text), self.now_ms);
    }

    fn drain(&mut self, id: ConnId) {
        self.buffer.clear();
        while self.core.take_writes(id, &mut self.buffer, self.now_ms) > 0 {}
    }

    /// Carries out the core's outputs: styling and storage complete at once, flushed connections are remembered.
    fn pump(&mut self) {
        while let Some(output) = self.core.pop_output() {
            match output {
                Output::Flush(id) => self.dirty.push(id),
                Output::Style(request) => {
                    self.core
                        .styled(request.ticket, request.text, StyledBy::Local, self.now_ms)
                }
                Output::Store { room, record } => {
                    self.core.stored(room, record.id, Ok(()), self.now_ms)
                }
                Output::ReadSettings { ticket, .. } => {
                    self.core.settings_read(ticket, Ok(Vec::new()), self.now_ms)
                }
                _ => {}
            }
        }
    }

    /// What the shard's flusher does: one take (one socket write) per flushed connection.
    fn flush(&mut self) -> usize {
        let mut bytes = 0;
        for id in std::mem::take(&mut self.dirty) {
            self.buffer.clear();
            bytes += self.core.take_writes(id, &mut self.buffer, self.now_ms);
            black_box(&self.buffer);
        }
        bytes
    }

    /// `lines` messages from the sender, then the writes they cause.
    fn messages(&mut self, lines: usize) -> usize {
        for _ in 0..lines {
            self.seq += 1;
            self.now_ms += 1;
            let line = format!(
                "@client-nonce=b{} PRIVMSG #lobby :skibidi toilet rizz, no cap fr fr {}\r\n",
                self.seq, self.seq
            );
            self.input(self.sender, &line);
            self.pump();
        }
        self.flush()
    }
}

/// The baseline: per viewer, the line formatted and framed into a fresh buffer.
fn naive_fanout(line: &str, viewers: usize) -> usize {
    let mut bytes = 0;
    for _ in 0..viewers {
        let mut text = line.as_bytes().to_vec();
        text.extend_from_slice(b"\r\n");
        let mut frame = Vec::with_capacity(text.len() + 8);
        frame.push(0x81);
        if text.len() < 126 {
            frame.push(text.len() as u8);
        } else {
            frame.push(126);
            frame.extend_from_slice(&(text.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&text);
        bytes += black_box(frame).len();
    }
    bytes
}

fn core_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_fanout");
    if quick() {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300));
    } else {
        group
            .sample_size(30)
            .measurement_time(Duration::from_secs(3));
    }
    for lines in [1usize, 4] {
        group.throughput(Throughput::Elements((VIEWERS * lines) as u64));
        let mut room = Room::new();
        assert!(room.messages(lines) > 0, "the viewers get the messages");
        group.bench_with_input(BenchmarkId::new("core", lines), &lines, |b, &lines| {
            b.iter(|| room.messages(lines))
        });
        let line = "@badge-info=;badges=;client-nonce=b1;color=#0D4200;display-name=Ronni;emotes=;\
            first-msg=0;flags=;id=b34ccfc7-4977-403a-8a94-33c6bac34fb8;mod=0;returning-chatter=0;\
            room-id=1;subscriber=0;tmi-sent-ts=1507246572675;turbo=0;user-id=42;user-type= \
            :ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #lobby :skibidi toilet rizz, no cap fr fr 1";
        group.bench_with_input(BenchmarkId::new("naive", lines), &lines, |b, &lines| {
            b.iter(|| {
                (0..lines)
                    .map(|_| naive_fanout(line, VIEWERS))
                    .sum::<usize>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, core_fanout);
criterion_main!(benches);
