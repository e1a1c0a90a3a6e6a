//! Deterministic simulation of several shard cores with many clients.
//!
//! One seed drives everything: which client acts, what it sends (joins, parts, messages, resends of a nonce,
//! disconnects), which cross-shard message, authentication, styling or storage write completes next and how
//! (storage fails sometimes; completions come in any order), how far the clock moves, and which viewers stop
//! reading. Invariants are checked as bytes reach clients and again once everything has settled; a failure
//! panics with the seed, which reproduces it exactly (`SIM_SEED=<n> cargo test ... core::sim`).
//!
//! Invariants:
//! - no client ever receives a chat line or an ack for a message that is not durable;
//! - within one join, a viewer receives a room's messages in strictly increasing id order (no duplicates), and
//!   history plus live lines form a contiguous run of the room's durable messages;
//! - history on join is the last (up to) 10 durable messages before the first live one;
//! - every message that became durable after a viewer's join completed reaches that viewer, unless the viewer was
//!   dropped as too slow (then it got `RECONNECT`);
//! - a `(user, client-nonce)` is stored at most once, and every ack of it carries the same id;
//! - once settled, no shard has messages in flight and every submit was answered.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use twitchy_inference::StyledBy;
use twitchy_storage::{MessageId, MessageRecord, StorageError};

use super::{
    AuthOutcome, ConnId, CoreConfig, Output, PeerMsg, RoomInfo, ShardCore, StyleRequest, Transport,
};
use crate::protocol::irc::Message;
use crate::protocol::session::{Identity, SessionConfig};
use crate::protocol::test_rng::TestRng;
use crate::protocol::ws;

const ROOMS: [&str; 3] = ["alpha", "beta", "gamma"];

#[derive(Debug, Default)]
struct JoinView {
    history: Vec<MessageId>,
    live: Vec<MessageId>,
    /// Simulation step at which the client saw its JOIN echoed.
    joined_step: u64,
}

#[derive(Debug)]
struct Client {
    shard: usize,
    conn: ConnId,
    transport: Transport,
    /// Registered user number, or None for an anonymous reader.
    user: Option<u64>,
    /// A slow viewer never drains until the end.
    slow: bool,
    rx: Vec<u8>,
    views: BTreeMap<usize, JoinView>,
    /// Rooms the client asked to join (and did not part).
    wanted: BTreeSet<usize>,
    nonces: Vec<(usize, String)>,
    acked: HashMap<String, MessageId>,
    welcomed: bool,
    closed: bool,
    reconnect_seen: bool,
    /// What the client sent and the notable lines it got, for the failure report.
    log: Vec<String>,
}

impl Client {
    fn new(
        shard: usize,
        conn: ConnId,
        transport: Transport,
        user: Option<u64>,
        slow: bool,
    ) -> Client {
        Client {
            shard,
            conn,
            transport,
            user,
            slow,
            rx: Vec::new(),
            views: BTreeMap::new(),
            wanted: BTreeSet::new(),
            nonces: Vec::new(),
            acked: HashMap::new(),
            welcomed: false,
            closed: false,
            reconnect_seen: false,
            log: Vec::new(),
        }
    }
}

struct StoreJob {
    shard: usize,
    room: usize,
    record: MessageRecord,
}

struct Sim {
    seed: u64,
    rng: TestRng,
    step: u64,
    now_ms: u64,
    shards: Vec<ShardCore>,
    /// `channels[from][to]`, first in first out.
    channels: Vec<Vec<VecDeque<PeerMsg>>>,
    auth_jobs: Vec<(usize, ConnId, String)>,
    inbox_reads: Vec<(usize, u64)>,
    style_jobs: Vec<(usize, StyleRequest)>,
    store_jobs: Vec<StoreJob>,
    clients: Vec<Client>,
    /// Durable messages: id → (room, step it became durable).
    durable: HashMap<MessageId, (usize, u64)>,
    /// The client whose nonce a durable message carries (it does not get its own message back live).
    authors: HashMap<MessageId, usize>,
    /// Stored `(room, user, text)` (the text names the nonce) → id.
    stored_keys: HashMap<(usize, u64, String), MessageId>,
    store_fail_percent: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = TestRng::new(seed);
        let shard_count = 1 + rng.below(3) as usize;
        // Half the seeds run with a busy room's write delay (the clock moves up to 30 ms a step).
        let write_delay_ms = if rng.below(2) == 0 {
            1 + rng.below(100)
        } else {
            0
        };
        Sim::with(seed, rng, shard_count, write_delay_ms)
    }

    fn with(seed: u64, rng: TestRng, shard_count: usize, write_delay_ms: u64) -> Sim {
        Sim::with_feed(seed, rng, shard_count, write_delay_ms, false)
    }

    /// As [`Sim::with`]; `deliver_from_feed` puts every core in cluster mode (see [`CoreConfig::deliver_from_feed`]).
    fn with_feed(
        seed: u64,
        mut rng: TestRng,
        shard_count: usize,
        write_delay_ms: u64,
        deliver_from_feed: bool,
    ) -> Sim {
        let rooms: Vec<RoomInfo> = ROOMS
            .iter()
            .enumerate()
            .map(|(i, name)| RoomInfo {
                name: name.to_string(),
                id: 100 + i as u64,
                style: "pirate".into(),
                moderators: vec!["u0".into()],
                broadcaster: None,
                vips: Vec::new(),
                automod: crate::config::AutoModMode::Off,
                banned_phrases: Vec::new(),
            })
            .collect();
        let base = CoreConfig::for_tests(0, shard_count, rooms);
        let session = Rc::new(SessionConfig::default());
        let metrics = base.metrics.clone();
        let viewers = base.viewers.clone();
        let shards = (0..shard_count)
            .map(|shard| {
                ShardCore::new(CoreConfig {
                    shard,
                    session: session.clone(),
                    metrics: metrics.clone(),
                    viewers: viewers.clone(),
                    // Small queues so slow viewers get dropped within a short run.
                    outbound_queue_bytes_max: 6 * 1024,
                    submits_in_flight_per_conn_max: 4,
                    write_delay_ms,
                    deliver_from_feed,
                    ..base.clone()
                })
            })
            .collect();
        Sim {
            seed,
            store_fail_percent: [0, 5, 20][rng.below(3) as usize],
            rng,
            step: 0,
            now_ms: 1_700_000_000_000,
            channels: (0..shard_count)
                .map(|_| (0..shard_count).map(|_| VecDeque::new()).collect())
                .collect(),
            shards,
            auth_jobs: Vec::new(),
            inbox_reads: Vec::new(),
            style_jobs: Vec::new(),
            store_jobs: Vec::new(),
            clients: Vec::new(),
            durable: HashMap::new(),
            authors: HashMap::new(),
            stored_keys: HashMap::new(),
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "simulation seed {} failed at step {}: {what}",
            self.seed, self.step
        );
    }

    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    /// Moves a shard's outputs into the simulated world.
    fn collect(&mut self, shard: usize) {
        while let Some(output) = self.shards[shard].pop_output() {
            match output {
                Output::Peer { shard: to, msg } => {
                    self.check(to != shard, || "a shard sent a message to itself".into());
                    self.channels[shard][to].push_back(msg);
                }
                Output::Wake(_) | Output::Flush(_) => {}
                Output::Close(conn) => {
                    if let Some(c) = self
                        .clients
                        .iter_mut()
                        .find(|c| c.shard == shard && c.conn == conn && !c.closed)
                    {
                        c.closed = true;
                        self.shards[shard].conn_closed(conn);
                    }
                }
                Output::Authenticate { conn, login, .. } => {
                    self.auth_jobs.push((shard, conn, login));
                }
                Output::Style(request) => self.style_jobs.push((shard, request)),
                Output::Store { room, record } => self.store_jobs.push(StoreJob {
                    shard,
                    room,
                    record,
                }),
                Output::ReadSettings { ticket, .. } => {
                    // Every login reads its whisper inbox; the simulated store holds none.
                    self.inbox_reads.push((shard, ticket));
                }
                Output::ResolveUser { .. }
                | Output::PutSetting { .. }
                | Output::DeleteMessage { .. }
                | Output::ApiReply { .. } => {
                    self.fail("the simulated clients run no chat commands");
                }
            }
        }
        for (shard, ticket) in std::mem::take(&mut self.inbox_reads) {
            self.shards[shard].settings_read(ticket, Ok(Vec::new()), self.now_ms);
        }
    }

    fn send(&mut self, client: usize, text: &str) {
        let step = self.step;
        self.clients[client]
            .log
            .push(format!("{step} > {}", text.trim_end()));
        let c = &self.clients[client];
        let (shard, conn) = (c.shard, c.conn);
        let bytes = match c.transport {
            Transport::Tcp => text.as_bytes().to_vec(),
            Transport::WebSocket => {
                let mut frame = Vec::new();
                let mask = (self.rng.next_u64() as u32).to_be_bytes();
                ws::encode_client_frame(1, text.as_bytes(), mask, &mut frame);
                frame
            }
        };
        // Split the bytes at a random point to exercise partial input.
        let cut = self.rng.below(bytes.len() as u64 + 1) as usize;
        self.shards[shard].conn_input(conn, &bytes[..cut], self.now_ms);
        self.shards[shard].conn_input(conn, &bytes[cut..], self.now_ms);
        self.collect(shard);
    }

    fn open_client(&mut self) {
        let shard = self.rng.below(self.shards.len() as u64) as usize;
        let transport = if self.rng.below(2) == 0 {
            Transport::Tcp
        } else {
            Transport::WebSocket
        };
        let Some(conn) = self.shards[shard].conn_open(transport, self.now_ms) else {
            return;
        };
        let user = (self.rng.below(3) != 0).then(|| self.rng.below(6));
        let slow = self.rng.below(8) == 0;
        self.clients
            .push(Client::new(shard, conn, transport, user, slow));
        let index = self.clients.len() - 1;
        let login = match user {
            Some(u) => format!(
                "CAP REQ :twitch.tv/tags twitch.tv/commands\r\nPASS oauth:t{u}\r\nNICK u{u}\r\n"
            ),
            None => format!(
                "CAP REQ :twitch.tv/tags twitch.tv/commands\r\nNICK justinfan{}\r\n",
                self.rng.below(100_000)
            ),
        };
        self.send(index, &login);
    }

    fn live_client(&mut self) -> Option<usize> {
        if self.clients.is_empty() {
            return None;
        }
        let index = self.rng.below(self.clients.len() as u64) as usize;
        (!self.clients[index].closed).then_some(index)
    }

    fn client_action(&mut self) {
        let Some(index) = self.live_client() else {
            return self.open_client();
        };
        match self.rng.below(10) {
            0..=2 => {
                let room = self.rng.below(ROOMS.len() as u64) as usize;
                self.clients[index].wanted.insert(room);
                self.send(index, &format!("JOIN #{}\r\n", ROOMS[room]));
            }
            3 => {
                let room = self.rng.below(ROOMS.len() as u64) as usize;
                self.clients[index].wanted.remove(&room);
                self.clients[index].views.remove(&room);
                self.send(index, &format!("PART #{}\r\n", ROOMS[room]));
            }
            4..=7 => {
                let c = &self.clients[index];
                let Some(user) = c.user else {
                    return;
                };
                let Some(&room) = c.views.keys().next() else {
                    return;
                };
                // Sometimes resend an earlier nonce of the same room (a client retrying after a lost ack).
                let resend = c
                    .nonces
                    .iter()
                    .filter(|(r, _)| *r == room)
                    .map(|(_, n)| n.clone())
                    .collect::<Vec<_>>();
                let nonce = if !resend.is_empty() && self.rng.below(4) == 0 {
                    resend[self.rng.below(resend.len() as u64) as usize].clone()
                } else {
                    let n = format!("n{}-{}", index, self.rng.next_u64() % 1_000_000);
                    self.clients[index].nonces.push((room, n.clone()));
                    n
                };
                let line = format!(
                    "@client-nonce={nonce} PRIVMSG #{} :hello from u{user} {nonce}\r\n",
                    ROOMS[room]
                );
                self.send(index, &line);
            }
            8 => self.drain(index),
            _ => {
                if self.rng.below(4) == 0 {
                    // The client goes away without a word.
                    let c = &mut self.clients[index];
                    c.closed = true;
                    let (shard, conn) = (c.shard, c.conn);
                    self.shards[shard].conn_closed(conn);
                    self.collect(shard);
                } else {
                    self.open_client();
                }
            }
        }
    }

    /// The client reads everything queued for it and the simulation checks each line.
    fn drain(&mut self, index: usize) {
        let (shard, conn, transport) = {
            let c = &self.clients[index];
            if c.closed {
                return;
            }
            (c.shard, c.conn, c.transport)
        };
        let mut bytes = Vec::new();
        while self.shards[shard].take_writes(conn, &mut bytes, self.now_ms) > 0 {}
        let mut text = Vec::new();
        match transport {
            Transport::Tcp => text = bytes,
            Transport::WebSocket => {
                let (frames, used) = ws::decode_server_frames(&bytes);
                self.check(used == bytes.len(), || "a partial WebSocket frame".into());
                for (opcode, payload) in frames {
                    match opcode {
                        1 => text.extend_from_slice(&payload),
                        8 | 10 => {}
                        other => self.fail(format!("unexpected opcode {other}")),
                    }
                }
            }
        }
        self.clients[index].rx.extend_from_slice(&text);
        let rx = std::mem::take(&mut self.clients[index].rx);
        let text = String::from_utf8(rx).unwrap_or_else(|_| self.fail("server sent invalid UTF-8"));
        let mut rest = text.as_str();
        while let Some(end) = rest.find("\r\n") {
            let line = &rest[..end];
            rest = &rest[end + 2..];
            self.on_line(index, line);
        }
        self.clients[index].rx = rest.as_bytes().to_vec();
        if self.shards[shard].conn_finished(conn) {
            self.clients[index].closed = true;
            self.shards[shard].conn_closed(conn);
            self.collect(shard);
        }
    }

    fn on_line(&mut self, index: usize, line: &str) {
        let message =
            Message::parse(line).unwrap_or_else(|e| self.fail(format!("bad line {line:?}: {e}")));
        let room_of = |m: &Message<'_>| {
            m.param(0)
                .and_then(|r| r.strip_prefix('#'))
                .and_then(|r| ROOMS.iter().position(|n| *n == r))
        };
        let step = self.step;
        if message.command != "PRIVMSG" {
            self.clients[index].log.push(format!("{step} < {line}"));
        }
        match message.command {
            "001" => self.clients[index].welcomed = true,
            "RECONNECT" => self.clients[index].reconnect_seen = true,
            "PART" => {
                if let Some(room) = room_of(&message) {
                    self.clients[index].views.remove(&room);
                }
            }
            "JOIN" => {
                if let Some(room) = room_of(&message) {
                    self.clients[index].views.insert(
                        room,
                        JoinView {
                            joined_step: step,
                            ..JoinView::default()
                        },
                    );
                }
            }
            "PRIVMSG" => {
                let room = room_of(&message).unwrap_or_else(|| self.fail("PRIVMSG to no room"));
                let id: MessageId = message
                    .tag("id")
                    .and_then(|id| id.parse().ok())
                    .unwrap_or_else(|| self.fail(format!("PRIVMSG without id: {line}")));
                match self.durable.get(&id) {
                    Some(&(r, _)) if r == room => {}
                    _ => self.fail(format!(
                        "client {index} saw message {id} that is not durable"
                    )),
                }
                let historical = message.tag("historical").is_some();
                let Some(view) = self.clients[index].views.get_mut(&room) else {
                    // Parted meanwhile (bytes queued before the PART).
                    return;
                };
                let last = view.live.last().or(view.history.last()).copied();
                if let Some(last) = last
                    && id <= last
                {
                    let view = format!("{view:?}");
                    self.fail(format!(
                        "client {index} got {id} after {last} in room {room}: order or duplicate; historical {historical}; view {view}; log {:#?}",
                        self.clients[index].log
                    ));
                }
                if historical {
                    if !view.live.is_empty() {
                        self.fail("history after live lines");
                    }
                    view.history.push(id);
                } else {
                    view.live.push(id);
                }
            }
            "USERSTATE" => {
                let Some(id) = message.tag("id") else {
                    return;
                };
                let id: MessageId = id.parse().unwrap_or_else(|_| self.fail("bad ack id"));
                self.check(self.durable.contains_key(&id), || {
                    format!("ack for {id}, which is not durable")
                });
                let nonce = message
                    .tag("client-nonce")
                    .unwrap_or_else(|| self.fail("ack without the nonce"))
                    .into_owned();
                if let Some(previous) = self.clients[index].acked.insert(nonce.clone(), id) {
                    self.check(previous == id, || {
                        format!("nonce {nonce} acked as {previous} and then as {id}")
                    });
                }
            }
            _ => {}
        }
    }

    fn complete_auth(&mut self) {
        let at = self.rng.below(self.auth_jobs.len() as u64) as usize;
        let (shard, conn, login) = self.auth_jobs.swap_remove(at);
        let outcome = if self.rng.below(20) == 0 {
            AuthOutcome::Unavailable
        } else {
            let user: u64 = login[1..].parse().unwrap_or(0);
            AuthOutcome::Valid(Identity {
                login: login.clone(),
                display_name: login.to_uppercase(),
                user_id: user + 1,
                color: "#FF0000".into(),
                badges: String::new(),
                is_mod: false,
            })
        };
        self.shards[shard].auth_done(conn, outcome, self.now_ms);
        self.collect(shard);
    }

    fn complete_style(&mut self) {
        let at = self.rng.below(self.style_jobs.len() as u64) as usize;
        let (shard, request) = self.style_jobs.swap_remove(at);
        let by = if self.rng.below(2) == 0 {
            StyledBy::Llm
        } else {
            StyledBy::Local
        };
        let text = format!("arr {}", request.text);
        self.shards[shard].styled(request.ticket, text, by, self.now_ms);
        self.collect(shard);
    }

    fn complete_store(&mut self) {
        // The store may answer in any order; the core must release in id order regardless.
        let at = self.rng.below(self.store_jobs.len() as u64) as usize;
        let job = self.store_jobs.swap_remove(at);
        let id = job.record.id;
        let result = if self.rng.below(100) < self.store_fail_percent {
            Err(if self.rng.below(2) == 0 {
                StorageError::Busy
            } else {
                StorageError::Io("disk full".into())
            })
        } else {
            let key = (job.room, job.record.user_id, job.record.original.clone());
            if let Some(previous) = self.stored_keys.insert(key, id) {
                self.fail(format!(
                    "{:?} stored twice, as {previous} and {id}",
                    job.record.original
                ));
            }
            self.durable.insert(id, (job.room, self.step));
            self.note_author(id, &job.record.original);
            Ok(())
        };
        self.shards[job.shard].stored(job.room, id, result, self.now_ms);
        self.collect(job.shard);
    }

    /// Texts end with the nonce `n<client>-<n>`; remembers which client sent the message.
    fn note_author(&mut self, id: MessageId, original: &str) {
        let author = original
            .rsplit(' ')
            .next()
            .and_then(|nonce| nonce.strip_prefix('n'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|index| index.parse().ok());
        if let Some(author) = author {
            self.authors.insert(id, author);
        }
    }

    /// Delivers every cross-shard message in flight, and what that causes, until the channels are empty.
    fn deliver_all_peers(&mut self) {
        while self.channels.iter().flatten().any(|c| !c.is_empty()) {
            self.deliver_peer();
        }
    }

    fn deliver_peer(&mut self) {
        let n = self.shards.len();
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|a| (0..n).map(move |b| (a, b)))
            .filter(|&(a, b)| !self.channels[a][b].is_empty())
            .collect();
        if pairs.is_empty() {
            return;
        }
        let (from, to) = pairs[self.rng.below(pairs.len() as u64) as usize];
        let msg = self.channels[from][to].pop_front().expect("non-empty");
        self.shards[to].peer(msg, self.now_ms);
        self.collect(to);
    }

    fn step_once(&mut self) {
        self.step += 1;
        self.now_ms += self.rng.below(30);
        match self.rng.below(20) {
            0..=5 => self.client_action(),
            6..=9 => self.deliver_peer(),
            10 if !self.auth_jobs.is_empty() => self.complete_auth(),
            11 | 12 if !self.style_jobs.is_empty() => self.complete_style(),
            13..=15 if !self.store_jobs.is_empty() => self.complete_store(),
            16 | 17 => {
                if let Some(index) = self.live_client()
                    && !self.clients[index].slow
                {
                    self.drain(index);
                }
            }
            18 => {
                let shard = self.rng.below(self.shards.len() as u64) as usize;
                self.shards[shard].flush_delayed(self.now_ms);
                self.shards[shard].tick(self.now_ms);
                self.collect(shard);
            }
            _ => {}
        }
    }

    /// Completes everything outstanding, successfully, and lets every client read.
    fn settle(&mut self) {
        self.store_fail_percent = 0;
        for _ in 0..100_000 {
            self.step += 1;
            let busy = !self.auth_jobs.is_empty()
                || !self.style_jobs.is_empty()
                || !self.store_jobs.is_empty()
                || self.channels.iter().flatten().any(|c| !c.is_empty());
            if !busy {
                break;
            }
            if !self.auth_jobs.is_empty() {
                self.complete_auth();
            } else if !self.style_jobs.is_empty() {
                self.complete_style();
            } else if !self.store_jobs.is_empty() {
                self.complete_store();
            } else {
                self.deliver_peer();
            }
        }
        for shard in 0..self.shards.len() {
            self.shards[shard].flush_delayed(u64::MAX);
            self.collect(shard);
        }
        for index in 0..self.clients.len() {
            self.drain(index);
        }
    }

    fn check_final(&self) {
        for (shard, core) in self.shards.iter().enumerate() {
            self.check(core.in_flight() == 0, || {
                format!(
                    "shard {shard} still has {} messages in flight",
                    core.in_flight()
                )
            });
        }
        let mut by_room: Vec<Vec<(MessageId, u64)>> = vec![Vec::new(); ROOMS.len()];
        for (&id, &(room, step)) in &self.durable {
            by_room[room].push((id, step));
        }
        for list in &mut by_room {
            list.sort();
        }
        for (index, client) in self.clients.iter().enumerate() {
            if !client.closed {
                self.check(
                    self.shards[client.shard].conn_submits_in_flight(client.conn) == 0,
                    || format!("client {index} has unanswered submits"),
                );
            }
            for (&room, view) in &client.views {
                self.check_view(index, client, room, view, &by_room[room]);
            }
        }
    }

    fn check_view(
        &self,
        index: usize,
        client: &Client,
        room: usize,
        view: &JoinView,
        all: &[(MessageId, u64)],
    ) {
        let position = |list: &[(MessageId, u64)], id: MessageId| {
            list.iter()
                .position(|(i, _)| *i == id)
                .unwrap_or_else(|| self.fail(format!("received {id}, which is not durable")))
        };
        // History replays everything, the client's own messages included: the last (up to) 10 durable messages.
        if let Some(&first) = view.history.first() {
            let start = position(all, first);
            let expected: Vec<MessageId> = all[start..]
                .iter()
                .take(view.history.len())
                .map(|(id, _)| *id)
                .collect();
            self.check(view.history == expected, || {
                format!(
                    "client {index} room {room}: history {:?} is not a contiguous run",
                    view.history
                )
            });
            let h = view.history.len();
            self.check(h == 10.min(start + h), || {
                format!(
                    "client {index} room {room}: {h} history lines with {start} earlier messages"
                )
            });
        }
        // Live lines skip the client's own messages (no echo-message): compare with everyone else's.
        let others: Vec<(MessageId, u64)> = all
            .iter()
            .filter(|(id, _)| self.authors.get(id) != Some(&index))
            .copied()
            .collect();
        if let Some(&first) = view.live.first() {
            let start = position(&others, first);
            let expected: Vec<MessageId> = others[start..]
                .iter()
                .take(view.live.len())
                .map(|(id, _)| *id)
                .collect();
            self.check(view.live == expected, || {
                format!(
                    "client {index} room {room}: live {:?} is not a contiguous run",
                    view.live
                )
            });
            if let (Some(&last_history), Some(&(before, _))) = (
                view.history.last(),
                start.checked_sub(1).and_then(|b| others.get(b)),
            ) {
                self.check(before <= last_history, || {
                    format!("client {index} room {room}: {before} fell between history and live")
                });
            }
        }
        if !client.closed && !client.reconnect_seen {
            let last = view.live.last().or(view.history.last()).copied();
            let missed = others
                .iter()
                .find(|(id, step)| *step > view.joined_step && Some(*id) > last);
            self.check(missed.is_none(), || {
                format!(
                    "client {index} missed {missed:?} in room {room}: joined at step {}, history {:?}, live {:?}, slow {}, shard {}, user {:?}, queued {}, author {:?}",
                    view.joined_step, view.history, view.live, client.slow, client.shard, client.user,
                    self.shards[client.shard].queued_bytes(client.conn),
                    missed.and_then(|(id, _)| self.authors.get(id))
                ) + &format!(" log {:#?}", client.log) + &format!(" conn {} rooms: {}", client.conn, (0..self.shards.len()).map(|s| format!("[shard {s}: {}]", self.shards[s].describe_room(room))).collect::<Vec<_>>().join(" "))
            });
        }
    }
}

fn run_seed(seed: u64, steps: u64) -> (usize, usize) {
    let mut sim = Sim::new(seed);
    for _ in 0..4 {
        sim.open_client();
    }
    for _ in 0..steps {
        sim.step_once();
    }
    sim.settle();
    sim.check_final();
    let delivered = sim
        .clients
        .iter()
        .flat_map(|c| c.views.values())
        .map(|v| v.live.len())
        .sum();
    (sim.durable.len(), delivered)
}

#[test]
fn simulation_keeps_every_invariant_over_many_seeds() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        run_seed(seed, 1_500);
        return;
    }
    let mut durable = 0;
    let mut delivered = 0;
    for seed in 0..seeds {
        let (d, l) = run_seed(seed, 1_500);
        durable += d;
        delivered += l;
    }
    // The runs must exercise the system, not pass vacuously.
    assert!(
        durable > seeds as usize * 5,
        "only {durable} durable messages"
    );
    assert!(
        delivered > seeds as usize * 5,
        "only {delivered} deliveries"
    );
}

#[test]
fn one_seed_is_reproducible() {
    assert_eq!(run_seed(42, 1_000), run_seed(42, 1_000));
}

/// Scenario tests: the same world, driven step by step.
mod scenarios {
    use super::*;

    fn world(shards: usize) -> Sim {
        let mut sim = Sim::with(1, TestRng::new(1), shards, 0);
        sim.store_fail_percent = 0;
        sim
    }

    /// Opens a tagged client on `shard` (registered as user `user`, or anonymous) that joined `room` and read the
    /// join replies.
    fn client(
        sim: &mut Sim,
        shard: usize,
        transport: Transport,
        user: Option<u64>,
        room: usize,
    ) -> usize {
        let conn = sim.shards[shard].conn_open(transport, sim.now_ms).unwrap();
        sim.clients
            .push(Client::new(shard, conn, transport, user, false));
        let index = sim.clients.len() - 1;
        let login = match user {
            Some(u) => format!(
                "CAP REQ :twitch.tv/tags twitch.tv/commands\r\nPASS oauth:x\r\nNICK u{u}\r\n"
            ),
            None => "CAP REQ :twitch.tv/tags twitch.tv/commands\r\nNICK justinfan1\r\n".into(),
        };
        sim.send(index, &login);
        while !sim.auth_jobs.is_empty() {
            sim.store_fail_percent = 0;
            let (shard, conn, login) = sim.auth_jobs.pop().unwrap();
            let user: u64 = login[1..].parse().unwrap();
            sim.shards[shard].auth_done(
                conn,
                AuthOutcome::Valid(Identity {
                    login: login.clone(),
                    display_name: login.clone(),
                    user_id: user + 1,
                    color: String::new(),
                    badges: String::new(),
                    is_mod: false,
                }),
                sim.now_ms,
            );
            sim.collect(shard);
        }
        sim.send(index, &format!("JOIN #{}\r\n", ROOMS[room]));
        sim.deliver_all_peers();
        sim.drain(index);
        assert!(sim.clients[index].views.contains_key(&room));
        index
    }

    fn say(sim: &mut Sim, index: usize, room: usize, nonce: &str) {
        let line = format!(
            "@client-nonce={nonce} PRIVMSG #{} :hi {nonce}\r\n",
            ROOMS[room]
        );
        sim.send(index, &line);
        sim.deliver_all_peers();
        while !sim.style_jobs.is_empty() {
            sim.complete_style();
        }
    }

    fn finish_store(sim: &mut Sim, at: usize, ok: bool) {
        let job = sim.store_jobs.remove(at);
        let id = job.record.id;
        let result = if ok {
            sim.durable.insert(id, (job.room, sim.step));
            Ok(())
        } else {
            Err(StorageError::Io("no space left on device".into()))
        };
        sim.shards[job.shard].stored(job.room, id, result, sim.now_ms);
        sim.collect(job.shard);
        sim.deliver_all_peers();
    }

    #[test]
    fn a_connection_that_does_not_register_in_time_gets_a_notice_and_is_closed() {
        let mut sim = world(1);
        let deadline_ms = sim.shards[0].config().registration_timeout_ms;
        let opened_ms = sim.now_ms;
        // CAP LS without CAP END, NICK without CAP END, and nothing at all: none of them registers.
        let inputs: [&[u8]; 3] = [b"CAP LS 302\r\n", b"CAP LS\r\nNICK justinfan7\r\n", b""];
        let conns: Vec<_> = inputs
            .iter()
            .map(|input| {
                let conn = sim.shards[0].conn_open(Transport::Tcp, opened_ms).unwrap();
                sim.shards[0].conn_input(conn, input, opened_ms);
                conn
            })
            .collect();
        let registered = sim.shards[0].conn_open(Transport::Tcp, opened_ms).unwrap();
        sim.shards[0].conn_input(registered, b"NICK justinfan8\r\n", opened_ms);
        // Keep the registered one talking so that only the registration deadline can apply.
        sim.shards[0].tick(opened_ms + deadline_ms - 1);
        for &conn in &conns {
            assert!(
                !sim.shards[0].conn_finished(conn),
                "closed before its deadline"
            );
        }
        sim.shards[0].conn_input(registered, b"PING :x\r\n", opened_ms + deadline_ms);
        sim.shards[0].tick(opened_ms + deadline_ms);
        for &conn in &conns {
            let mut bytes = Vec::new();
            while sim.shards[0].take_writes(conn, &mut bytes, sim.now_ms) > 0 {}
            let text = String::from_utf8(bytes).unwrap();
            assert!(
                text.ends_with(
                    ":tmi.twitch.tv NOTICE * :Closing the connection: it did not finish logging in \
                     (NICK, and CAP END after CAP LS) in time.\r\n"
                ),
                "{text}"
            );
            assert!(sim.shards[0].conn_finished(conn));
            assert!(!sim.shards[0].conn_wants_read(conn));
        }
        assert!(!sim.shards[0].conn_finished(registered));
    }

    #[test]
    fn websocket_size_and_utf8_errors_are_explained_before_the_close_frame() {
        let mut sim = world(1);
        let too_big = crate::core::shard::WS_MESSAGE_BYTES_MAX + 1;
        let mut big_header = Vec::new();
        // The header of a text frame larger than the limit, and the first bytes of its payload.
        ws::encode_client_frame(1, &vec![b'a'; too_big], [1, 2, 3, 4], &mut big_header);
        big_header.truncate(64);
        let mut bad_utf8 = Vec::new();
        ws::encode_client_frame(1, b"PRIVMSG #a :\xff\xfe\r\n", [9, 8, 7, 6], &mut bad_utf8);
        for (input, msg_id, code) in [
            (big_header, "msg_message_too_big", ws::close_code::TOO_BIG),
            (
                bad_utf8,
                "msg_invalid_utf8",
                ws::close_code::INVALID_PAYLOAD,
            ),
        ] {
            let conn = sim.shards[0]
                .conn_open(Transport::WebSocket, sim.now_ms)
                .unwrap();
            let mut login = Vec::new();
            ws::encode_client_frame(
                1,
                b"CAP REQ :twitch.tv/tags\r\nNICK justinfan12\r\n",
                [5, 5, 5, 5],
                &mut login,
            );
            sim.shards[0].conn_input(conn, &login, sim.now_ms);
            let mut bytes = Vec::new();
            while sim.shards[0].take_writes(conn, &mut bytes, sim.now_ms) > 0 {}
            sim.shards[0].conn_input(conn, &input, sim.now_ms);
            let mut bytes = Vec::new();
            while sim.shards[0].take_writes(conn, &mut bytes, sim.now_ms) > 0 {}
            let (frames, _) = ws::decode_server_frames(&bytes);
            assert_eq!(frames.len(), 2, "{frames:?}");
            let notice = String::from_utf8(frames[0].1.clone()).unwrap();
            assert_eq!(frames[0].0, 1);
            assert!(
                notice.starts_with(&format!(
                    "@msg-id={msg_id} :tmi.twitch.tv NOTICE * :Closing"
                )),
                "{notice}"
            );
            assert_eq!(frames[1].0, 8, "a close frame");
            assert_eq!(frames[1].1[..2], code.to_be_bytes());
            assert!(sim.shards[0].conn_finished(conn));
        }
    }

    #[test]
    fn acks_and_deliveries_record_their_latency_when_written() {
        let mut sim = world(1);
        let viewer = client(&mut sim, 0, Transport::Tcp, None, 0);
        let sender = client(&mut sim, 0, Transport::WebSocket, Some(3), 0);
        let all_metrics = sim.shards[0].config().metrics.clone();
        let metrics = &all_metrics[0];
        let sent_ms = sim.now_ms;
        say(&mut sim, sender, 0, "n1");
        sim.now_ms += 7;
        finish_store(&mut sim, 0, true);
        sim.now_ms += 5;
        assert_eq!(metrics.ack_latency.count(), 0, "recorded only when written");
        let _ = lines(&mut sim, sender);
        let _ = lines(&mut sim, viewer);
        assert_eq!(metrics.ack_latency.count(), 1);
        assert_eq!(metrics.delivery_latency.count(), 1);
        let mut text = String::new();
        crate::metrics::render(&sim.shards[0].config().metrics, &mut text);
        // Sent at `sent_ms`, sequenced then too (styling was instant here), written 12 ms later.
        assert_eq!(sim.now_ms - sent_ms, 12);
        assert!(
            text.contains("twitchy_ack_latency_seconds_sum 0.012\n"),
            "{text}"
        );
        assert!(
            text.contains("twitchy_delivery_latency_seconds_sum 0.012\n"),
            "{text}"
        );
    }

    fn lines(sim: &mut Sim, index: usize) -> String {
        let c = &sim.clients[index];
        let (shard, conn, transport) = (c.shard, c.conn, c.transport);
        let mut bytes = Vec::new();
        while sim.shards[shard].take_writes(conn, &mut bytes, sim.now_ms) > 0 {}
        match transport {
            Transport::Tcp => String::from_utf8(bytes).unwrap(),
            Transport::WebSocket => {
                let (frames, _) = ws::decode_server_frames(&bytes);
                frames
                    .into_iter()
                    .map(|(_, p)| String::from_utf8(p).unwrap())
                    .collect()
            }
        }
    }

    /// A world of cores in cluster mode (messages reach viewers only through the committed feed).
    fn cluster_world(shards: usize) -> Sim {
        let mut sim = Sim::with_feed(1, TestRng::new(1), shards, 0, true);
        sim.store_fail_percent = 0;
        sim
    }

    /// Stores the first pending message successfully and returns its record (what the shared log will carry).
    fn store_ok(sim: &mut Sim) -> MessageRecord {
        let record = sim.store_jobs[0].record.clone();
        finish_store(sim, 0, true);
        record
    }

    /// A message another node committed: the same room, another user, its own id.
    fn remote_record(like: &MessageRecord, at_ms: u64, user_id: u64, text: &str) -> MessageRecord {
        MessageRecord {
            id: twitchy_storage::MessageIdGen::new(7, 1).next_id(at_ms),
            user_id,
            login: format!("remote{user_id}"),
            display_name: format!("remote{user_id}"),
            text: text.to_owned(),
            original: text.to_owned(),
            client_nonce: String::new(),
            ..like.clone()
        }
    }

    /// Feeds a committed record to the room's home and carries the deliveries to the viewers' shards.
    fn commit(sim: &mut Sim, room: usize, record: MessageRecord) {
        let home = crate::core::home_shard(room, sim.shards.len());
        let now_ms = sim.now_ms;
        // Committed to the shared log: durable, whichever node wrote it.
        sim.durable.entry(record.id).or_insert((room, sim.step));
        sim.shards[home].committed(room, record, now_ms);
        sim.collect(home);
        sim.deliver_all_peers();
    }

    #[test]
    fn in_cluster_mode_viewers_see_messages_only_from_the_committed_feed_in_its_order() {
        let mut sim = cluster_world(2);
        let viewer = client(&mut sim, 1, Transport::WebSocket, None, 0);
        let sender = client(&mut sim, 0, Transport::Tcp, Some(3), 0);
        say(&mut sim, sender, 0, "c1");
        let local = store_ok(&mut sim);
        let ack = lines(&mut sim, sender);
        assert!(
            ack.contains("USERSTATE #alpha") && ack.contains("client-nonce=c1"),
            "{ack}"
        );
        assert!(
            !lines(&mut sim, viewer).contains("PRIVMSG"),
            "durable here, but not yet committed to the shared log"
        );
        // The log put another node's message (sent a moment earlier) first: every node shows that order, although
        // this node's own message was durable before the other reached it.
        let remote = remote_record(&local, local.id.unix_ms() - 1, 99, "from another node");
        commit(&mut sim, 0, remote);
        commit(&mut sim, 0, local);
        let seen = lines(&mut sim, viewer);
        let order: Vec<&str> = seen.lines().filter(|l| l.contains("PRIVMSG")).collect();
        assert_eq!(order.len(), 2, "{seen}");
        assert!(order[0].contains("from another node"), "{seen}");
        assert!(order[1].contains("hi c1"), "{seen}");
        // The last-10 replay on JOIN has the same order.
        let late = client(&mut sim, 1, Transport::Tcp, None, 0);
        let history: Vec<String> = sim.clients[late].views[&0]
            .history
            .iter()
            .map(|id| id.to_string())
            .collect();
        assert_eq!(history.len(), 2, "{history:?}");
    }

    #[test]
    fn in_cluster_mode_the_feed_may_bring_a_message_back_before_its_write_is_acknowledged() {
        let mut sim = cluster_world(2);
        let viewer = client(&mut sim, 1, Transport::Tcp, None, 0);
        let sender = client(&mut sim, 0, Transport::Tcp, Some(8), 0);
        say(&mut sim, sender, 0, "early");
        let record = sim.store_jobs[0].record.clone();
        commit(&mut sim, 0, record);
        assert_eq!(lines(&mut sim, viewer).matches("PRIVMSG").count(), 1);
        assert!(
            !lines(&mut sim, sender).contains("USERSTATE"),
            "acked only by its write"
        );
        finish_store(&mut sim, 0, true);
        assert!(lines(&mut sim, sender).contains("client-nonce=early"));
        assert_eq!(lines(&mut sim, viewer), "", "shown once");
        // Counted once against the rate limit: 19 more fit in the window.
        for i in 0..19 {
            say(&mut sim, sender, 0, &format!("more{i}"));
            assert_eq!(sim.store_jobs.len(), 1, "message {i} admitted");
            finish_store(&mut sim, 0, true);
            lines(&mut sim, sender);
            lines(&mut sim, viewer);
        }
    }

    #[test]
    fn in_cluster_mode_a_duplicate_in_the_log_is_acked_with_the_original_id_and_shows_nothing() {
        let mut sim = cluster_world(2);
        let viewer = client(&mut sim, 1, Transport::Tcp, None, 0);
        let sender = client(&mut sim, 0, Transport::Tcp, Some(5), 0);
        say(&mut sim, sender, 0, "d1");
        let job = sim.store_jobs.remove(0);
        // Another node stored it first (the client resent after losing that node's ack).
        let original =
            twitchy_storage::MessageIdGen::new(3, 0).next_id(job.record.id.unix_ms() - 5);
        let now_ms = sim.now_ms;
        sim.shards[job.shard].stored_duplicate(job.room, job.record.id, original, now_ms);
        sim.collect(job.shard);
        sim.deliver_all_peers();
        let ack = lines(&mut sim, sender);
        assert!(ack.contains(&format!("id={original}")), "{ack}");
        assert!(!ack.contains(&format!("id={}", job.record.id)), "{ack}");
        assert_eq!(lines(&mut sim, viewer), "");
        // A resend to this node now is answered from the idempotency table, with the same original id.
        say(&mut sim, sender, 0, "d1");
        assert!(sim.store_jobs.is_empty());
        assert!(lines(&mut sim, sender).contains(&format!("id={original}")));
    }

    #[test]
    fn in_cluster_mode_a_deletion_in_the_log_leaves_the_last_10_of_every_shard_and_ten_are_still_replayed()
     {
        let mut sim = cluster_world(2);
        let home = crate::core::home_shard(0, 2);
        let other = 1 - home;
        // A viewer on each shard: both keep a copy of the room's last 10.
        let here = client(&mut sim, home, Transport::Tcp, None, 0);
        let there = client(&mut sim, other, Transport::Tcp, None, 0);
        let sender = client(&mut sim, home, Transport::Tcp, Some(4), 0);
        say(&mut sim, sender, 0, "first");
        let first = store_ok(&mut sim);
        commit(&mut sim, 0, first.clone());
        let mut ids = vec![first.id];
        for i in 1..12 {
            let record = remote_record(&first, first.id.unix_ms() + i, 50 + i, &format!("m{i}"));
            ids.push(record.id);
            commit(&mut sim, 0, record);
        }
        lines(&mut sim, here);
        lines(&mut sim, there);
        // Deleted through another node: the home learns it from the log.
        let doomed = ids[11];
        let now_ms = sim.now_ms;
        sim.shards[home].deleted_in_log(0, doomed, now_ms);
        sim.collect(home);
        sim.deliver_all_peers();
        for viewer in [here, there] {
            let seen = lines(&mut sim, viewer);
            assert!(
                seen.contains(&format!("target-msg-id={doomed}")),
                "CLEARMSG: {seen}"
            );
        }
        // A late viewer on either shard is replayed the ten before it, the one the deletion let in included.
        let expected: Vec<String> = ids[1..11].iter().map(|id| id.to_string()).collect();
        for shard in [home, other] {
            let late = client(&mut sim, shard, Transport::Tcp, None, 0);
            let history: Vec<String> = sim.clients[late].views[&0]
                .history
                .iter()
                .map(|id| id.to_string())
                .collect();
            assert_eq!(history, expected, "shard {shard}");
        }
    }

    #[test]
    fn in_cluster_mode_messages_sent_through_other_nodes_count_against_the_rate_limit() {
        let mut sim = cluster_world(1);
        let sender = client(&mut sim, 0, Transport::Tcp, Some(6), 0);
        say(&mut sim, sender, 0, "first");
        let local = store_ok(&mut sim);
        commit(&mut sim, 0, local.clone());
        lines(&mut sim, sender);
        // The same user (id 7 in this world) sent 19 more through other nodes within the window.
        for i in 0..19 {
            commit(
                &mut sim,
                0,
                remote_record(
                    &local,
                    local.id.unix_ms() + 1 + i,
                    local.user_id,
                    &format!("elsewhere {i}"),
                ),
            );
            lines(&mut sim, sender);
        }
        say(&mut sim, sender, 0, "over");
        assert!(sim.store_jobs.is_empty(), "refused at the limit");
        let refused = lines(&mut sim, sender);
        assert!(refused.contains("msg-id=msg_ratelimit"), "{refused}");
    }

    #[test]
    fn viewers_see_a_message_only_once_it_is_durable_and_the_sender_is_acked_then() {
        let mut sim = world(2);
        let viewer = client(&mut sim, 1, Transport::WebSocket, None, 0);
        let sender = client(&mut sim, 1, Transport::Tcp, Some(3), 0);
        say(&mut sim, sender, 0, "a1");
        assert_eq!(sim.store_jobs.len(), 1);
        assert!(
            !lines(&mut sim, viewer).contains("PRIVMSG"),
            "delivered before durable"
        );
        assert!(
            !lines(&mut sim, sender).contains("USERSTATE"),
            "acked before durable"
        );
        finish_store(&mut sim, 0, true);
        let seen = lines(&mut sim, viewer);
        assert!(seen.contains("PRIVMSG #alpha :arr hi a1"), "{seen}");
        let ack = lines(&mut sim, sender);
        assert!(
            ack.contains("USERSTATE #alpha") && ack.contains("client-nonce=a1"),
            "{ack}"
        );
    }

    #[test]
    fn a_failed_write_tells_the_sender_and_shows_nothing_anywhere() {
        let mut sim = world(2);
        let viewer = client(&mut sim, 0, Transport::Tcp, None, 1);
        let sender = client(&mut sim, 1, Transport::WebSocket, Some(2), 1);
        say(&mut sim, sender, 1, "f1");
        finish_store(&mut sim, 0, false);
        assert_eq!(lines(&mut sim, viewer), "");
        let notice = lines(&mut sim, sender);
        assert!(notice.contains("msg-id=msg_try_again"), "{notice}");
        // Not in history either: a new viewer gets no replay of it.
        let late = client(&mut sim, 0, Transport::Tcp, None, 1);
        assert!(sim.clients[late].views[&1].history.is_empty());
        // The same nonce may be sent again, and then it is stored.
        say(&mut sim, sender, 1, "f1");
        assert_eq!(sim.store_jobs.len(), 1);
    }

    #[test]
    fn a_resent_nonce_is_acked_with_the_original_id_and_stored_once() {
        let mut sim = world(3);
        let viewer = client(&mut sim, 2, Transport::Tcp, None, 0);
        let sender = client(&mut sim, 1, Transport::Tcp, Some(4), 0);
        say(&mut sim, sender, 0, "r1");
        // Resent while the first is still being stored: answered when the first is.
        say(&mut sim, sender, 0, "r1");
        assert_eq!(sim.store_jobs.len(), 1);
        finish_store(&mut sim, 0, true);
        // And resent after it was acknowledged.
        say(&mut sim, sender, 0, "r1");
        assert!(sim.store_jobs.is_empty());
        // A client that reuses the nonce for a different message gets that message sent.
        sim.send(
            sender,
            "@client-nonce=r1 PRIVMSG #alpha :something else entirely\r\n",
        );
        sim.deliver_all_peers();
        while !sim.style_jobs.is_empty() {
            sim.complete_style();
        }
        assert_eq!(
            sim.store_jobs.len(),
            1,
            "a different text is a different message"
        );
        finish_store(&mut sim, 0, true);
        let acks = lines(&mut sim, sender);
        let acks: String = acks
            .lines()
            .filter(|l| !l.contains("something else"))
            .take(3)
            .map(|l| format!("{l}\n"))
            .collect();
        let ids: Vec<&str> = acks
            .lines()
            .filter(|l| l.contains("USERSTATE"))
            .map(|l| l.split("id=").nth(1).unwrap().split(';').next().unwrap())
            .collect();
        assert_eq!(ids.len(), 3, "{acks}");
        assert!(ids.iter().all(|id| *id == ids[0]));
        assert_eq!(lines(&mut sim, viewer).matches("PRIVMSG").count(), 2);
    }

    #[test]
    fn out_of_order_durability_is_released_in_id_order_in_one_write() {
        let mut sim = world(1);
        let viewer = client(&mut sim, 0, Transport::WebSocket, None, 2);
        let sender = client(&mut sim, 0, Transport::Tcp, Some(1), 2);
        for n in 0..3 {
            say(&mut sim, sender, 2, &format!("o{n}"));
        }
        // The last becomes durable first: nothing may show until the earlier ones are durable too.
        finish_store(&mut sim, 2, true);
        assert_eq!(lines(&mut sim, viewer), "");
        finish_store(&mut sim, 0, true);
        finish_store(&mut sim, 0, true);
        let c = &sim.clients[viewer];
        let mut bytes = Vec::new();
        while sim.shards[c.shard].take_writes(c.conn, &mut bytes, sim.now_ms) > 0 {}
        let (frames, _) = ws::decode_server_frames(&bytes);
        // Three lines queued in one pass leave as one frame.
        assert_eq!(frames.len(), 1);
        let text = String::from_utf8(frames[0].1.clone()).unwrap();
        let order: Vec<usize> = ["o0", "o1", "o2"]
            .iter()
            .map(|n| text.find(n).unwrap())
            .collect();
        assert!(order[0] < order[1] && order[1] < order[2], "{text}");
    }

    #[test]
    fn a_moderator_is_mod_in_join_userstate_and_in_the_ack() {
        let mut sim = world(1);
        let moderator = client(&mut sim, 0, Transport::Tcp, Some(0), 0);
        say(&mut sim, moderator, 0, "m1");
        finish_store(&mut sim, 0, true);
        let acks = lines(&mut sim, moderator);
        assert!(
            acks.contains("badges=moderator/1") && acks.contains("mod=1"),
            "{acks}"
        );
        // The USERSTATE that confirms a JOIN says the same.
        sim.send(moderator, "JOIN #beta\r\n");
        let joined = lines(&mut sim, moderator);
        let userstate = joined
            .lines()
            .find(|l| l.contains("USERSTATE #beta"))
            .unwrap();
        assert!(
            userstate.contains("mod=1") && userstate.contains("badges=moderator/1"),
            "{joined}"
        );
        // Someone else is not.
        let viewer = client(&mut sim, 0, Transport::Tcp, Some(5), 1);
        sim.send(viewer, "JOIN #gamma\r\n");
        let joined = lines(&mut sim, viewer);
        assert!(joined.contains("mod=0"), "{joined}");
    }

    #[test]
    fn a_client_with_too_many_unanswered_messages_is_not_read_until_answers_come() {
        let mut sim = world(2);
        let sender = client(&mut sim, 0, Transport::Tcp, Some(2), 1);
        let (shard, conn) = (sim.clients[sender].shard, sim.clients[sender].conn);
        // The world's limit is 4 unanswered submits per connection.
        for n in 0..4 {
            assert!(sim.shards[shard].conn_wants_read(conn));
            say(&mut sim, sender, 1, &format!("b{n}"));
        }
        assert!(
            !sim.shards[shard].conn_wants_read(conn),
            "paused by in-flight submits"
        );
        finish_store(&mut sim, 0, true);
        assert!(
            sim.shards[shard].conn_wants_read(conn),
            "an answer resumes reading"
        );
        let out = lines(&mut sim, sender);
        assert_eq!(out.matches("USERSTATE #beta").count(), 1, "{out}");
    }

    #[test]
    fn a_viewer_too_slow_for_its_queue_gets_reconnect_and_is_counted() {
        let mut sim = world(1);
        let slow = client(&mut sim, 0, Transport::WebSocket, None, 0);
        // A moderator, whose rate limit (100 per window) leaves room for the flood.
        let sender = client(&mut sim, 0, Transport::Tcp, Some(0), 0);
        let before = sim.shards[0].config().metrics[0]
            .slow_disconnects_total
            .load(std::sync::atomic::Ordering::Relaxed);
        // 6 KiB queue in this world: a few dozen lines overflow it while the viewer reads nothing.
        for n in 0..60 {
            say(&mut sim, sender, 0, &format!("s{n}"));
            finish_store(&mut sim, 0, true);
            let _ = lines(&mut sim, sender);
        }
        let c = &sim.clients[slow];
        assert!(sim.shards[0].conn_finished(c.conn) || sim.shards[0].queued_bytes(c.conn) > 0);
        let out = lines(&mut sim, slow);
        assert!(
            out.ends_with("RECONNECT\r\n"),
            "{}",
            &out[out.len().saturating_sub(200)..]
        );
        let after = sim.shards[0].config().metrics[0]
            .slow_disconnects_total
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(after, before + 1);
        assert!(sim.shards[0].conn_finished(sim.clients[slow].conn));
    }

    #[test]
    fn a_store_that_cannot_answer_is_not_a_bad_token() {
        let mut sim = world(1);
        for (outcome, expected) in [
            (
                AuthOutcome::Invalid,
                "NOTICE * :Login authentication failed",
            ),
            (
                AuthOutcome::Unavailable,
                "msg-id=login_unavailable :tmi.twitch.tv NOTICE * :Login unavailable, try again",
            ),
        ] {
            let conn = sim.shards[0].conn_open(Transport::Tcp, sim.now_ms).unwrap();
            sim.shards[0].conn_input(
                conn,
                b"CAP REQ :twitch.tv/tags\r\nPASS oauth:abc\r\nNICK someone\r\n",
                sim.now_ms,
            );
            sim.collect(0);
            let (_, asked, _) = sim.auth_jobs.pop().expect("a token check");
            assert_eq!(asked, conn);
            sim.shards[0].auth_done(conn, outcome, sim.now_ms);
            let mut bytes = Vec::new();
            while sim.shards[0].take_writes(conn, &mut bytes, sim.now_ms) > 0 {}
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains(expected), "{text}");
            // Either way the connection closes: the client reconnects (and keeps its token on "try again").
            assert!(sim.shards[0].conn_finished(conn));
        }
    }
}
