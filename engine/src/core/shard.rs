//! [`ShardCore`]: one shard's connections, local rooms and home rooms, as a state machine (see the module docs of
//! [`crate::core`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use twitchy_inference::StyledBy;
use twitchy_storage::{MessageId, MessageIdGen, MessageRecord, StorageError};

use super::moderation::{
    Ban, Grant, Held, Profile, RoomModeration, RoomView, SendVerdict, StoredAutoMod, StoredHeld,
    StoredModes, StoredReply, keys, role_of,
};
use super::outbound::{OutQueue, Stamp, Transport};
use super::{
    ACTION_PREFIX, Actor, ChatMessage, ClearUser, CommandFrom, CommandReply, CommandSubmit, ConnId,
    HISTORY_ON_JOIN, Origin, Output, PeerMsg, ReplyKind, Resolved, RoomEvent, StyleRequest, Submit,
    SubmitReply, TagSubmit, Whisper, WhisperSubmit, home_shard, user_home,
};
use crate::config::AutoModMode;
use crate::metrics::{ShardMetrics, ViewerCounts};
use crate::protocol::commands::{ChatCommand, Role};
use crate::protocol::line::{LineBuffer, LineError, split_frame_lines};
use crate::protocol::session::{
    Action, Identity, Reaction, RoomState, Session, SessionConfig, Typing,
};
use crate::protocol::twitch::{ClearTarget, HeldLine, ReplyTags, msg_id};
use crate::protocol::ws::{self, WsDecoder, WsEvent};
use crate::ratelimit::{RateLimitConfig, RateLimiter};

/// The NOTICE text for a message refused because the server is too busy for it now.
const BUSY_TEXT: &str = "Your message was not sent: the server is busy; please try again.";

/// Largest WebSocket message accepted from a client.
pub const WS_MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// A preset room as every shard knows it.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub name: String,
    pub id: u64,
    pub style: String,
    pub moderators: Vec<String>,
    pub broadcaster: Option<String>,
    pub vips: Vec<String>,
    pub automod: AutoModMode,
    pub banned_phrases: Vec<String>,
}

/// The limits and tables of one shard's core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub shard: usize,
    pub shard_count: usize,
    pub node_id: u16,
    pub rooms: Arc<[RoomInfo]>,
    pub session: Rc<SessionConfig>,
    pub rate: RateLimitConfig,
    /// Bytes queued for one client before it is dropped as too slow (with `RECONNECT`).
    pub outbound_queue_bytes_max: usize,
    pub connections_max: usize,
    /// Submits one connection may have unanswered before its socket is no longer read.
    pub submits_in_flight_per_conn_max: u32,
    /// Messages a home shard may have between submit and durable release.
    pub sequencing_in_flight_max: usize,
    /// A submit older than this when its home gets to it is refused with try-again rather than queued.
    pub submit_age_ms_max: u64,
    /// How long a `(user, client-nonce)` is remembered for idempotent resends.
    pub dedupe_window_ms: u64,
    pub dedupe_entries_max: usize,
    pub idle_ping_ms: u64,
    pub idle_timeout_ms: u64,
    /// A connection not registered this long after it opened is closed with a NOTICE.
    pub registration_timeout_ms: u64,
    /// How long a closing connection may take to flush before it is cut.
    pub close_grace_ms: u64,
    /// With a write delay, connections with new bytes are woken by [`ShardCore::flush_delayed`] instead of at once.
    pub write_delay: bool,
    /// Every shard's counters; this core writes only its own.
    pub metrics: Arc<[ShardMetrics]>,
    pub viewers: Arc<ViewerCounts>,
}

impl CoreConfig {
    /// Defaults for tests and tools: one shard, a small room list, production limits.
    pub fn for_tests(shard: usize, shard_count: usize, rooms: Vec<RoomInfo>) -> CoreConfig {
        let room_count = rooms.len();
        CoreConfig {
            shard,
            shard_count,
            node_id: 0,
            rooms: rooms.into(),
            session: Rc::new(SessionConfig::default()),
            rate: RateLimitConfig {
                messages_per_window_max: 20,
                messages_per_window_max_mod: 100,
                window_ms: 30_000,
                users_tracked_max: 100_000,
            },
            outbound_queue_bytes_max: 1 << 20,
            connections_max: 20_000,
            submits_in_flight_per_conn_max: 64,
            sequencing_in_flight_max: 100_000,
            submit_age_ms_max: 2_000,
            dedupe_window_ms: 10 * 60 * 1000,
            dedupe_entries_max: 1_000_000,
            idle_ping_ms: 60_000,
            idle_timeout_ms: 90_000,
            registration_timeout_ms: 10_000,
            close_grace_ms: 2_000,
            write_delay: false,
            metrics: (0..shard_count).map(|_| ShardMetrics::default()).collect(),
            viewers: Arc::new(ViewerCounts::new(shard_count, room_count)),
        }
    }
}

/// The answer to an [`Output::Authenticate`].
#[derive(Debug, Clone)]
pub enum AuthOutcome {
    Valid(Identity),
    /// Unknown, expired or revoked token, or one that belongs to another login.
    Invalid,
    /// The store could not answer; the token may be fine.
    Unavailable,
}

#[derive(Debug)]
enum InputDecoder {
    Tcp(LineBuffer),
    Ws(WsDecoder),
}

#[derive(Debug)]
struct ConnState {
    transport: Transport,
    session: Session,
    input: InputDecoder,
    /// Rooms joined or being joined (engine view).
    rooms: Vec<usize>,
    queue: OutQueue,
    submits_in_flight: u32,
    opened_ms: u64,
    last_rx_ms: u64,
    pinged: bool,
    /// Set once the connection is closing: no more input is handled, the queue is flushed, then it ends.
    closing_since_ms: Option<u64>,
    /// Whether an `Output::Close` was issued.
    cut: bool,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    conn: Option<Box<ConnState>>,
}

#[derive(Debug, Default)]
enum Subscription {
    #[default]
    None,
    /// Subscribe sent; these connections finish joining when the snapshot arrives.
    Pending(Vec<ConnId>),
    Ready,
}

/// A room as seen by this shard: its local viewers, the last messages, and its roles and modes.
#[derive(Debug, Default)]
struct LocalRoom {
    viewers: Vec<ConnId>,
    subscription: Subscription,
    recent: VecDeque<Arc<ChatMessage>>,
    view: RoomView,
}

/// A chat message as a connection sent it.
#[derive(Debug)]
struct Outgoing {
    text: String,
    client_nonce: Option<String>,
    reply_parent: Option<String>,
    action: bool,
}

/// A message between id assignment and release.
#[derive(Debug)]
struct Pending {
    message: Arc<ChatMessage>,
    durable: bool,
    /// Connections to answer (with when each sent it): the sender, then any resends of the same nonce.
    repliers: Vec<(Origin, u64)>,
    /// Its idempotency entry, if it came with a nonce.
    dedupe: Option<DedupeKey>,
}

/// A room homed on this shard.
#[derive(Debug)]
struct HomeRoom {
    subscribers: Vec<bool>,
    /// The last [`DELETABLE_MESSAGES_MAX`] durable messages: the last 10 are the history on JOIN, and any of them
    /// may be deleted by id.
    recent: VecDeque<Arc<ChatMessage>>,
    /// Messages awaiting durability, in id order.
    pending: VecDeque<Pending>,
    moderation: RoomModeration,
    /// Logged-in users viewing the room, with their connection count over all shards.
    members: HashMap<String, u32>,
    /// Membership changes not yet sent (batched by the tick, as Twitch batches JOIN and PART).
    membership_pending: Vec<(String, bool)>,
    /// Whether subscribers were last told the member list (the room is small enough).
    members_listed: bool,
    /// Who reacted with what to the newest messages (bounded by [`REACTED_MESSAGES_MAX`]).
    reactions: HashMap<MessageId, BTreeMap<String, HashSet<u64>>>,
    reaction_order: VecDeque<MessageId>,
}

/// Rooms with more logged-in users than this get no JOIN/PART lines and no member list in NAMES, as on Twitch.
pub const MEMBERSHIP_LIST_MAX: usize = 1_000;

/// Durable messages per room that `/delete` can find by id (the last ones).
pub const DELETABLE_MESSAGES_MAX: usize = 200;
/// Chat commands a shard may have waiting for a lookup or a write; past it they get "try again".
pub const COMMANDS_IN_FLIGHT_MAX: usize = 1_024;

/// What a command does once its write is durable.
#[derive(Debug)]
enum Effect {
    Ban {
        user_id: u64,
        ban: Ban,
    },
    Unban {
        user_id: u64,
    },
    Role {
        user_id: u64,
        login: String,
        role: Role,
    },
    Modes(crate::protocol::twitch::RoomModes),
    Phrases {
        add: bool,
        phrase: String,
    },
    Delete {
        id: MessageId,
    },
    Color {
        user_id: u64,
        color: String,
    },
}

/// A command's durable write: the setting (`None` deletes it), what it changes, and its answer.
type SettingWrite = (String, Option<Vec<u8>>, Effect, CommandReply);

/// A whisper waiting for its recipient's id, then for its durable write.
#[derive(Debug)]
struct WhisperJob {
    submit: Box<WhisperSubmit>,
    stored: Option<Arc<Whisper>>,
    /// Set once the whisper is durable and its recipient had no connection: the inbox write is what is waited for.
    inboxing: bool,
}

/// Whispers handed to a connection from its inbox at login, at most.
pub const INBOX_READ_MAX: usize = 100;
/// Messages per room whose reactions are counted (the newest).
pub const REACTED_MESSAGES_MAX: usize = 1_000;
/// Different reactions one message may collect.
pub const REACTIONS_PER_MESSAGE_MAX: usize = 20;
/// Users counted per reaction of one message.
pub const REACTING_USERS_PER_EMOJI_MAX: usize = 100_000;

/// A command waiting for a user lookup or its durable write.
#[derive(Debug)]
struct CommandOp {
    submit: Box<CommandSubmit>,
    effect: Option<Effect>,
    success: Option<CommandReply>,
}

#[derive(Debug)]
struct StyleJob {
    submit: Box<Submit>,
    role: Role,
    repliers: Vec<(Origin, u64)>,
    dedupe: Option<DedupeKey>,
    /// The parent's tags, when the message answers one the home still has.
    reply: Option<ReplyTags>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DedupeKey {
    room: usize,
    user_id: u64,
    nonce: String,
    /// A hash of the text as sent: a client that reuses a nonce for a different message gets it sent, not
    /// swallowed as a resend.
    text_hash: u64,
}

impl DedupeKey {
    fn new(room: usize, user_id: u64, nonce: &str, text: &str) -> DedupeKey {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same text hashes alike on every shard and across restarts.
        let mut hasher = std::hash::DefaultHasher::new();
        text.hash(&mut hasher);
        DedupeKey {
            room,
            user_id,
            nonce: nonce.to_owned(),
            text_hash: hasher.finish(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum DedupeState {
    Styling(u64),
    Storing(MessageId),
    Acked(MessageId),
}

/// Every `(room, user, client-nonce)` accepted in the window, for idempotent resends. Bounded by count and age.
#[derive(Debug, Default)]
struct Dedupe {
    entries: HashMap<DedupeKey, DedupeState>,
    /// Insertion order with time, for expiry.
    order: VecDeque<(u64, DedupeKey)>,
}

/// One shard's state machine. See the module docs.
#[derive(Debug)]
pub struct ShardCore {
    cfg: CoreConfig,
    room_index: HashMap<String, usize>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    conn_count: usize,
    /// Plain HTTP connections (not upgraded): they count against the same limit.
    http_count: usize,
    rooms: Vec<LocalRoom>,
    home: Vec<Option<HomeRoom>>,
    styling: HashMap<u64, StyleJob>,
    next_ticket: u64,
    commands: HashMap<u64, CommandOp>,
    /// Whispers waiting for their recipient's lookup or their durable write (user-home side).
    whispers: HashMap<u64, WhisperJob>,
    /// Logged-in users whose home this shard is, with their connections: where whispers go.
    online: HashMap<String, Vec<Origin>>,
    /// Inbox reads for connections that just logged in.
    inbox_reads: HashMap<u64, Origin>,
    /// Inbox entries delivered whose removal is not yet durable (by ticket): a login meanwhile must not get them
    /// again.
    inbox_removing: HashMap<u64, String>,
    ids: MessageIdGen,
    rate: RateLimiter,
    dedupe: Dedupe,
    in_flight: usize,
    shutting_down: bool,
    congested: bool,
    delayed_wakes: Vec<ConnId>,
    outputs: VecDeque<Output>,
    last_sweep_ms: u64,
}

fn slot_of(id: ConnId) -> usize {
    (id & 0xffff_ffff) as usize
}

/// Asks the driver to flush connection `id` now, or at the next write-delay tick.
fn flush_later(
    write_delay: bool,
    delayed: &mut Vec<ConnId>,
    outputs: &mut VecDeque<Output>,
    id: ConnId,
) {
    if write_delay {
        delayed.push(id);
    } else {
        outputs.push_back(Output::Flush(id));
    }
}

/// The live connection `id` in `slots` (a free function so other fields of the core stay borrowable).
fn conn_in(slots: &mut [Slot], id: ConnId) -> Option<&mut ConnState> {
    let slot = slots.get_mut(slot_of(id))?;
    if u64::from(slot.generation) != id >> 32 {
        return None;
    }
    slot.conn.as_deref_mut()
}

impl ShardCore {
    pub fn new(cfg: CoreConfig) -> ShardCore {
        assert!(cfg.shard < cfg.shard_count);
        let room_count = cfg.rooms.len();
        let home = (0..room_count)
            .map(|room| {
                (home_shard(room, cfg.shard_count) == cfg.shard).then(|| HomeRoom {
                    subscribers: vec![false; cfg.shard_count],
                    recent: VecDeque::new(),
                    pending: VecDeque::new(),
                    moderation: RoomModeration::new(room, &cfg.rooms[room]),
                    members: HashMap::new(),
                    membership_pending: Vec::new(),
                    members_listed: true,
                    reactions: HashMap::new(),
                    reaction_order: VecDeque::new(),
                })
            })
            .collect();
        ShardCore {
            room_index: cfg
                .rooms
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name.clone(), i))
                .collect(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            conn_count: 0,
            http_count: 0,
            rooms: (0..room_count).map(|_| LocalRoom::default()).collect(),
            home,
            styling: HashMap::new(),
            next_ticket: 1,
            commands: HashMap::new(),
            whispers: HashMap::new(),
            online: HashMap::new(),
            inbox_reads: HashMap::new(),
            inbox_removing: HashMap::new(),
            ids: MessageIdGen::new(cfg.node_id, cfg.shard as u16),
            rate: RateLimiter::new(cfg.rate),
            dedupe: Dedupe::default(),
            in_flight: 0,
            shutting_down: false,
            congested: false,
            delayed_wakes: Vec::new(),
            outputs: VecDeque::new(),
            last_sweep_ms: 0,
            cfg,
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn room(&self, name: &str) -> Option<usize> {
        self.room_index.get(name).copied()
    }

    /// The next thing for the driver to do.
    pub fn pop_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Messages this shard is sequencing as their home (styling or awaiting durability).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn connection_count(&self) -> usize {
        self.conn_count
    }

    /// Connections alive now, for shutdown and tests.
    pub fn connections(&self) -> Vec<ConnId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| (u64::from(s.generation) << 32) | i as u64)
            .collect()
    }

    /// The driver's cross-shard outboxes are (or are no longer) over their limit: refuse new messages meanwhile.
    pub fn set_congested(&mut self, congested: bool) {
        self.congested = congested;
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.cfg.metrics[self.cfg.shard]
    }

    fn conn(&self, id: ConnId) -> Option<&ConnState> {
        let slot = self.slots.get(slot_of(id))?;
        if u64::from(slot.generation) != id >> 32 {
            return None;
        }
        slot.conn.as_deref()
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut ConnState> {
        conn_in(&mut self.slots, id)
    }

    // ----- connections -----

    fn publish_connections(&self) {
        self.metrics().connections.store(
            (self.conn_count + self.http_count) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// An HTTP connection opened. False when the shard is at its connection limit (chat and HTTP connections
    /// together); the driver then refuses it.
    pub fn http_open(&mut self) -> bool {
        if self.conn_count + self.http_count >= self.cfg.connections_max || self.shutting_down {
            ShardMetrics::inc(&self.metrics().connections_refused_total);
            return false;
        }
        self.http_count += 1;
        ShardMetrics::inc(&self.metrics().connections_accepted_total);
        self.publish_connections();
        true
    }

    /// An HTTP connection ended, or became a chat connection (which [`ShardCore::conn_open`] counts again).
    pub fn http_closed(&mut self) {
        assert!(self.http_count > 0, "an HTTP close without an open");
        self.http_count -= 1;
        self.publish_connections();
    }

    /// A client connected. `None` when the shard is at its connection limit (the driver closes the socket).
    pub fn conn_open(&mut self, transport: Transport, now_ms: u64) -> Option<ConnId> {
        if self.conn_count + self.http_count >= self.cfg.connections_max || self.shutting_down {
            ShardMetrics::inc(&self.metrics().connections_refused_total);
            return None;
        }
        let index = match self.free_slots.pop() {
            Some(index) => index as usize,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        let line_bytes_max = self.cfg.session.line_bytes_max;
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1);
        slot.conn = Some(Box::new(ConnState {
            transport,
            session: Session::new(self.cfg.session.clone()),
            input: match transport {
                Transport::Tcp => InputDecoder::Tcp(LineBuffer::new(line_bytes_max)),
                Transport::WebSocket => InputDecoder::Ws(WsDecoder::new(WS_MESSAGE_BYTES_MAX)),
            },
            rooms: Vec::new(),
            queue: OutQueue::default(),
            submits_in_flight: 0,
            opened_ms: now_ms,
            last_rx_ms: now_ms,
            pinged: false,
            closing_since_ms: None,
            cut: false,
        }));
        let id = (u64::from(slot.generation) << 32) | index as u64;
        self.conn_count += 1;
        ShardMetrics::inc(&self.metrics().connections_accepted_total);
        self.publish_connections();
        Some(id)
    }

    /// The socket is gone (closed by either side, or cut): forget the connection.
    pub fn conn_closed(&mut self, id: ConnId) {
        let Some(rooms) = self.conn_mut(id).map(|c| std::mem::take(&mut c.rooms)) else {
            return;
        };
        for room in rooms {
            self.leave_room(id, room);
        }
        let user = self
            .conn(id)
            .and_then(|c| c.session.identity())
            .map(|i| (i.login.clone(), i.user_id));
        if let Some((login, user_id)) = user {
            self.tell_user_home(id, login, user_id, false, 0);
        }
        let index = slot_of(id);
        self.slots[index].conn = None;
        self.free_slots.push(index as u32);
        self.conn_count -= 1;
        self.publish_connections();
    }

    /// Whether the driver should read from this client now. Reads pause while the client has too many messages
    /// unanswered or too many bytes waiting to be written to it: a client that sends faster than it reads is
    /// slowed down, not dropped.
    pub fn conn_wants_read(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| {
            c.closing_since_ms.is_none()
                && c.submits_in_flight < self.cfg.submits_in_flight_per_conn_max
                && c.queue.bytes() <= self.cfg.outbound_queue_bytes_max / 2
        })
    }

    /// Whether the connection is done: closing with everything flushed (or gone).
    pub fn conn_finished(&self, id: ConnId) -> bool {
        self.conn(id)
            .is_none_or(|c| c.cut || (c.closing_since_ms.is_some() && c.queue.is_empty()))
    }

    /// A room's local state, for diagnostics: subscription, viewers, recent ids.
    pub fn describe_room(&self, room: usize) -> String {
        let local = &self.rooms[room];
        let home = self.home[room].as_ref().map(|h| {
            (
                h.subscribers.clone(),
                h.pending.len(),
                h.recent
                    .iter()
                    .map(|m| m.record.id.to_string())
                    .collect::<Vec<_>>(),
            )
        });
        format!(
            "subscription {:?}, viewers {:?}, recent {}, home {:?}",
            local.subscription,
            local.viewers,
            local.recent.len(),
            home
        )
    }

    /// Submits of the connection still unanswered.
    pub fn conn_submits_in_flight(&self, id: ConnId) -> u32 {
        self.conn(id).map_or(0, |c| c.submits_in_flight)
    }

    /// Bytes queued for the connection.
    pub fn queued_bytes(&self, id: ConnId) -> usize {
        self.conn(id).map_or(0, |c| c.queue.bytes())
    }

    /// Moves what is queued for the connection into `out`, framed for its transport, for one socket write.
    /// Lines that measure a latency (chat lines, acks) record it against `now_ms`, the time of the write.
    pub fn take_writes(&mut self, id: ConnId, out: &mut Vec<u8>, now_ms: u64) -> usize {
        let metrics = &self.cfg.metrics[self.cfg.shard];
        let Some(conn) = conn_in(&mut self.slots, id) else {
            return 0;
        };
        let transport = conn.transport;
        conn.queue.take(transport, out, now_ms, metrics)
    }

    /// Bytes arrived from the client.
    pub fn conn_input(&mut self, id: ConnId, bytes: &[u8], now_ms: u64) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing_since_ms.is_some() {
            return;
        }
        conn.last_rx_ms = now_ms;
        conn.pinged = false;
        match &mut conn.input {
            InputDecoder::Tcp(lines) => lines.push(bytes),
            InputDecoder::Ws(decoder) => decoder.push(bytes),
        }
        loop {
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            if conn.closing_since_ms.is_some() {
                break;
            }
            match &mut conn.input {
                InputDecoder::Tcp(lines) => match lines.next_line() {
                    None => break,
                    Some(Ok(line)) => self.handle_line(id, &line, now_ms),
                    Some(Err(err)) => self.line_error(id, err, now_ms),
                },
                InputDecoder::Ws(decoder) => match decoder.next_event() {
                    None => break,
                    Some(event) => self.ws_event(id, event, now_ms),
                },
            }
        }
        if let Some(conn) = self.conn_mut(id) {
            match &mut conn.input {
                InputDecoder::Tcp(lines) => lines.release_if_empty(),
                InputDecoder::Ws(decoder) => decoder.release_if_idle(),
            }
        }
    }

    fn ws_event(&mut self, id: ConnId, event: WsEvent, now_ms: u64) {
        match event {
            WsEvent::Text(text) => {
                for line in split_frame_lines(&text) {
                    self.handle_line(id, line, now_ms);
                }
            }
            WsEvent::Binary(data) => match std::str::from_utf8(&data) {
                Ok(text) => {
                    for line in split_frame_lines(text) {
                        self.handle_line(id, line, now_ms);
                    }
                }
                Err(_) => self.line_error(id, LineError::InvalidUtf8, now_ms),
            },
            WsEvent::Ping(payload) => {
                let mut frame = Vec::with_capacity(payload.len() + 2);
                ws::encode_control(ws::ServerFrame::Pong, &payload, &mut frame);
                self.push_frame(id, frame);
            }
            WsEvent::Close => {
                let mut frame = Vec::with_capacity(4);
                ws::encode_close(ws::close_code::NORMAL, &mut frame);
                self.push_frame(id, frame);
                self.close(id, Farewell::None, now_ms);
            }
            WsEvent::Fail(code) => {
                ShardMetrics::inc(&self.metrics().protocol_disconnects_total);
                let explained = match code {
                    ws::close_code::TOO_BIG => Some((
                        msg_id::MESSAGE_TOO_BIG,
                        "Closing the connection: your WebSocket message is larger than the server accepts.",
                    )),
                    ws::close_code::INVALID_PAYLOAD => Some((
                        msg_id::INVALID_UTF8,
                        "Closing the connection: your WebSocket text message is not valid UTF-8.",
                    )),
                    _ => None,
                };
                if let Some((id_text, text)) = explained {
                    let mut line = Vec::new();
                    if let Some(conn) = self.conn(id) {
                        conn.session.encode_notice(None, id_text, text, &mut line);
                    }
                    ShardMetrics::inc(&self.metrics().notices_total);
                    self.push_owned(id, line, now_ms);
                }
                let mut frame = Vec::with_capacity(4);
                ws::encode_close(code, &mut frame);
                self.push_frame(id, frame);
                self.close(id, Farewell::None, now_ms);
            }
        }
    }

    fn line_error(&mut self, id: ConnId, err: LineError, now_ms: u64) {
        let mut actions = Vec::new();
        if let Some(conn) = self.conn_mut(id) {
            conn.session.handle_line_error(err, &mut actions);
        }
        ShardMetrics::inc(&self.metrics().notices_total);
        self.run_actions(id, actions, now_ms);
    }

    fn handle_line(&mut self, id: ConnId, line: &str, now_ms: u64) {
        let mut actions = Vec::new();
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing_since_ms.is_some() {
            return;
        }
        conn.session.handle_line(line, now_ms, &mut actions);
        self.run_actions(id, actions, now_ms);
    }

    fn run_actions(&mut self, id: ConnId, actions: Vec<Action>, now_ms: u64) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Reply(bytes) => self.push_owned(id, bytes, now_ms),
                Action::Close => self.close(id, Farewell::None, now_ms),
                Action::Authenticate { login, token } => {
                    self.outputs.push_back(Output::Authenticate {
                        conn: id,
                        login,
                        token,
                    });
                }
                Action::Join { room } => match self.room(&room) {
                    Some(index) => self.join(id, index, now_ms),
                    None => {
                        let mut more = Vec::new();
                        if let Some(conn) = self.conn_mut(id) {
                            conn.session.join_failed(&room, &mut more);
                        }
                        queue.extend(more);
                    }
                },
                Action::Part { room } => {
                    if let Some(index) = self.room(&room) {
                        if let Some(conn) = self.conn_mut(id) {
                            conn.rooms.retain(|&r| r != index);
                        }
                        self.leave_room(id, index);
                    }
                }
                Action::Privmsg {
                    room,
                    text,
                    client_nonce,
                    reply_parent_msg_id,
                    action,
                } => {
                    // The session only passes PRIVMSGs for rooms that exist.
                    if let Some(index) = self.room(&room) {
                        let message = Outgoing {
                            text,
                            client_nonce,
                            reply_parent: reply_parent_msg_id,
                            action,
                        };
                        self.submit(id, index, message, now_ms);
                    }
                }
                Action::TagMsg {
                    room,
                    typing,
                    react,
                } => {
                    if let Some(index) = self.room(&room) {
                        self.tag_from_conn(id, index, typing, react, now_ms);
                    }
                }
                Action::Whisper { to, text } => self.whisper_from_conn(id, to, text, now_ms),
                Action::Command { room, command } => {
                    let actor = self
                        .conn(id)
                        .and_then(|c| c.session.identity())
                        .map(|i| Actor {
                            user_id: i.user_id,
                            login: i.login.clone(),
                            display_name: i.display_name.clone(),
                            color: i.color.clone(),
                        });
                    if let (Some(index), Some(actor)) = (self.room(&room), actor) {
                        let from = CommandFrom::Conn(Origin {
                            shard: self.cfg.shard,
                            conn: id,
                        });
                        self.command(from, index, actor, command, now_ms);
                    }
                }
            }
        }
    }

    /// The answer to an `Output::Authenticate`.
    pub fn auth_done(&mut self, id: ConnId, outcome: AuthOutcome, now_ms: u64) {
        let mut actions = Vec::new();
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let mut seen = None;
        match outcome {
            AuthOutcome::Valid(identity) => {
                seen = Some((identity.login.clone(), identity.user_id));
                conn.session.authenticated(identity, &mut actions)
            }
            AuthOutcome::Invalid => conn.session.authentication_failed(&mut actions),
            AuthOutcome::Unavailable => conn.session.authentication_unavailable(&mut actions),
        }
        if let Some((login, user_id)) = seen.filter(|_| conn.session.is_registered()) {
            self.tell_user_home(id, login, user_id, true, now_ms);
        }
        self.run_actions(id, actions, now_ms);
    }

    /// New bytes for a connection whose queue was empty.
    fn wake(&mut self, id: ConnId) {
        flush_later(
            self.cfg.write_delay,
            &mut self.delayed_wakes,
            &mut self.outputs,
            id,
        );
    }

    /// With a write delay: flushes every connection that got bytes since the last call.
    pub fn flush_delayed(&mut self) {
        for id in std::mem::take(&mut self.delayed_wakes) {
            self.outputs.push_back(Output::Flush(id));
        }
    }

    /// Queues bytes for this client only (replies, acks, notices, history), against the same limit as fanout.
    fn push_owned(&mut self, id: ConnId, bytes: Vec<u8>, now_ms: u64) {
        self.push_owned_stamped(id, bytes, Stamp::None, now_ms);
    }

    fn push_owned_stamped(&mut self, id: ConnId, bytes: Vec<u8>, stamp: Stamp, now_ms: u64) {
        if bytes.is_empty() {
            return;
        }
        let limit = self.cfg.outbound_queue_bytes_max;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing_since_ms.is_some() {
            return;
        }
        if conn.queue.bytes() + bytes.len() > limit {
            self.drop_slow(id, now_ms);
            return;
        }
        let was_empty = conn.queue.is_empty();
        conn.queue.push_stamped(Bytes::from(bytes), stamp);
        if was_empty {
            self.wake(id);
        }
    }

    fn push_frame(&mut self, id: ConnId, frame: Vec<u8>) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing_since_ms.is_some() {
            return;
        }
        let was_empty = conn.queue.is_empty();
        conn.queue.push_frame(Bytes::from(frame));
        if was_empty {
            self.wake(id);
        }
    }

    fn drop_slow(&mut self, id: ConnId, now_ms: u64) {
        ShardMetrics::inc(&self.metrics().slow_disconnects_total);
        ShardMetrics::inc(&self.metrics().drops_total);
        self.close(id, Farewell::ReconnectNow, now_ms);
    }

    /// Starts closing: stops reading, leaves every room, optionally says `RECONNECT`, and lets the driver flush
    /// what is queued within the grace period.
    fn close(&mut self, id: ConnId, farewell: Farewell, now_ms: u64) {
        let Some(conn) = conn_in(&mut self.slots, id) else {
            return;
        };
        if conn.closing_since_ms.is_some() {
            return;
        }
        conn.closing_since_ms = Some(now_ms);
        if farewell == Farewell::ReconnectNow {
            // Too slow for what is queued anyway: drop it so RECONNECT goes out next.
            conn.queue.clear();
        }
        if farewell != Farewell::None {
            let mut line = Vec::with_capacity(32);
            conn.session.encode_reconnect(&mut line);
            conn.queue.push_lines(Bytes::from(line));
            ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].reconnects_sent_total);
        }
        let rooms = std::mem::take(&mut conn.rooms);
        for room in rooms {
            self.leave_room(id, room);
        }
        // A closing connection is always woken, even with a write delay, so it can end.
        self.outputs.push_back(Output::Wake(id));
    }

    /// Shutdown: every client is told to reconnect after what is already queued (acks included).
    pub fn close_all_with_reconnect(&mut self, now_ms: u64) {
        for id in self.connections() {
            self.close(id, Farewell::ReconnectAfterQueued, now_ms);
        }
    }

    /// Keep-alive and deadlines: PINGs silent clients, drops dead ones, closes connections that did not register
    /// in time, cuts connections that take too long to close, and expires idempotency entries. Call about once a
    /// second.
    pub fn tick(&mut self, now_ms: u64) {
        let ping_ms = self.cfg.idle_ping_ms;
        let timeout_ms = self.cfg.idle_timeout_ms;
        let grace_ms = self.cfg.close_grace_ms;
        let registration_ms = self.cfg.registration_timeout_ms;
        let mut to_close = Vec::new();
        let mut to_ping = Vec::new();
        let mut unregistered = Vec::new();
        for id in self.connections() {
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            if let Some(since) = conn.closing_since_ms {
                if !conn.cut && now_ms.saturating_sub(since) >= grace_ms {
                    conn.cut = true;
                    self.outputs.push_back(Output::Close(id));
                }
                continue;
            }
            if !conn.session.is_registered()
                && now_ms.saturating_sub(conn.opened_ms) >= registration_ms
            {
                unregistered.push(id);
                continue;
            }
            let idle_ms = now_ms.saturating_sub(conn.last_rx_ms);
            if idle_ms >= timeout_ms {
                to_close.push(id);
            } else if idle_ms >= ping_ms && !conn.pinged {
                conn.pinged = true;
                to_ping.push(id);
            }
        }
        for id in to_ping {
            let mut line = Vec::new();
            if let Some(conn) = self.conn(id) {
                conn.session.encode_ping(&mut line);
            }
            self.push_owned(id, line, now_ms);
        }
        for id in to_close {
            ShardMetrics::inc(&self.metrics().idle_disconnects_total);
            self.close(id, Farewell::None, now_ms);
        }
        for id in unregistered {
            let mut line = Vec::new();
            if let Some(conn) = self.conn(id) {
                conn.session.encode_notice(
                    None,
                    msg_id::REGISTRATION_TIMEOUT,
                    "Closing the connection: it did not finish logging in (NICK, and CAP END after CAP LS) in time.",
                    &mut line,
                );
            }
            ShardMetrics::inc(&self.metrics().notices_total);
            ShardMetrics::inc(&self.metrics().idle_disconnects_total);
            self.push_owned(id, line, now_ms);
            self.close(id, Farewell::None, now_ms);
        }
        if now_ms.saturating_sub(self.last_sweep_ms) >= 10_000 {
            self.last_sweep_ms = now_ms;
            self.rate.forget_idle(now_ms);
            for home in self.home.iter_mut().flatten() {
                home.moderation.bans.retain(|_, ban| ban.active(now_ms));
            }
        }
        self.expire_dedupe(now_ms);
        self.flush_membership(now_ms);
    }

    // ----- joining and leaving -----

    fn join(&mut self, id: ConnId, room: usize, now_ms: u64) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.rooms.contains(&room) {
            return;
        }
        conn.rooms.push(room);
        let local = &mut self.rooms[room];
        match &mut local.subscription {
            Subscription::Ready => {}
            Subscription::Pending(waiting) => {
                waiting.push(id);
                return;
            }
            Subscription::None => {
                local.subscription = Subscription::Pending(vec![id]);
                let shard = self.cfg.shard;
                self.send_peer(
                    home_shard(room, self.cfg.shard_count),
                    PeerMsg::Subscribe { room, shard },
                    now_ms,
                );
                return;
            }
        }
        self.complete_join(id, room, now_ms);
    }

    fn complete_join(&mut self, id: ConnId, room: usize, now_ms: u64) {
        let info = &self.cfg.rooms[room];
        let Some(slot) = self.slots.get_mut(slot_of(id)) else {
            return;
        };
        let Some(conn) = slot.conn.as_deref_mut() else {
            return;
        };
        if u64::from(slot.generation) != id >> 32
            || conn.closing_since_ms.is_some()
            || !conn.rooms.contains(&room)
        {
            return;
        }
        if !matches!(self.rooms[room].subscription, Subscription::Ready) {
            // Earlier joiners of the same snapshot left meanwhile (a slow one dropped while its history was
            // queued) and the room was unsubscribed: this one joins afresh, with a new subscription.
            conn.rooms.retain(|&r| r != room);
            return self.join(id, room, now_ms);
        }
        let local = &self.rooms[room];
        let role = conn.session.identity().map_or(Role::Viewer, |identity| {
            role_of(info, &local.view.granted, identity.user_id, &identity.login)
        });
        let mut actions = Vec::new();
        let confirmed = conn.session.joined(
            &info.name,
            &RoomState {
                room_id: info.id,
                role,
                modes: local.view.modes,
                members: local
                    .view
                    .members
                    .as_ref()
                    .map(|m| m.iter().cloned().collect())
                    .unwrap_or_default(),
            },
            &mut actions,
        );
        // The session may have run ahead of this join (lines held during login are replayed at once, so a JOIN,
        // PART, JOIN can all be decided before the first JOIN completes): the session's view of the room wins.
        if !conn
            .session
            .joined_rooms()
            .any(|joined| joined == info.name)
        {
            conn.rooms.retain(|&r| r != room);
            return;
        }
        let local = &mut self.rooms[room];
        let mut presence = None;
        if !local.viewers.contains(&id) {
            local.viewers.push(id);
            self.cfg
                .viewers
                .set(self.cfg.shard, room, local.viewers.len() as u64);
            presence = conn.session.identity().map(|i| i.login.clone());
        }
        if !confirmed {
            return;
        }
        // History follows the JOIN reply in the same write.
        let mut history = Vec::new();
        let skip = if conn.session.wants_history() {
            local.recent.len().saturating_sub(HISTORY_ON_JOIN)
        } else {
            local.recent.len()
        };
        for message in local.recent.iter().skip(skip) {
            let id_text = message.record.id.to_string();
            conn.session
                .encode_privmsg(&message.chat_line(true, &id_text), &mut history);
        }
        let (replies, rest): (Vec<Action>, Vec<Action>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::Reply(_)));
        if let Some(login) = presence {
            let home = home_shard(room, self.cfg.shard_count);
            let msg = PeerMsg::Presence {
                room,
                login,
                joined: true,
            };
            self.send_peer(home, msg, now_ms);
        }
        self.run_actions(id, replies, now_ms);
        self.push_owned(id, history, now_ms);
        // PRIVMSGs held until the JOIN was confirmed.
        self.run_actions(id, rest, now_ms);
    }

    /// Removes the connection from a room's viewers (or waiters); unsubscribes when it was the last viewer.
    fn leave_room(&mut self, id: ConnId, room: usize) {
        let login = self
            .conn(id)
            .and_then(|c| c.session.identity())
            .map(|i| i.login.clone());
        let local = &mut self.rooms[room];
        let was_viewer = local.viewers.contains(&id);
        local.viewers.retain(|&v| v != id);
        if let (true, Some(login)) = (was_viewer, login) {
            let home = home_shard(room, self.cfg.shard_count);
            let msg = PeerMsg::Presence {
                room,
                login,
                joined: false,
            };
            self.send_peer(home, msg, 0);
        }
        let local = &mut self.rooms[room];
        if let Subscription::Pending(waiting) = &mut local.subscription {
            waiting.retain(|&v| v != id);
        }
        self.cfg
            .viewers
            .set(self.cfg.shard, room, local.viewers.len() as u64);
        if matches!(local.subscription, Subscription::Ready) && local.viewers.is_empty() {
            self.unsubscribe(room);
        }
    }

    fn unsubscribe(&mut self, room: usize) {
        let local = &mut self.rooms[room];
        local.subscription = Subscription::None;
        local.recent.clear();
        let shard = self.cfg.shard;
        // The time only matters for submits; an unsubscribe carries none.
        self.send_peer(
            home_shard(room, self.cfg.shard_count),
            PeerMsg::Unsubscribe { room, shard },
            0,
        );
    }

    fn on_snapshot(
        &mut self,
        room: usize,
        messages: Vec<Arc<ChatMessage>>,
        view: RoomView,
        now_ms: u64,
    ) {
        let local = &mut self.rooms[room];
        local.recent = messages.into();
        local.view = view;
        let waiting = match std::mem::replace(&mut local.subscription, Subscription::Ready) {
            Subscription::Pending(waiting) => waiting,
            // Every waiter left before the snapshot came.
            _ => Vec::new(),
        };
        for id in waiting {
            self.complete_join(id, room, now_ms);
        }
        let local = &self.rooms[room];
        if matches!(local.subscription, Subscription::Ready) && local.viewers.is_empty() {
            self.unsubscribe(room);
        }
    }

    // ----- cross-shard -----

    fn send_peer(&mut self, shard: usize, msg: PeerMsg, now_ms: u64) {
        if shard == self.cfg.shard {
            self.peer(msg, now_ms);
        } else {
            ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].cross_shard_sent_total);
            self.outputs.push_back(Output::Peer { shard, msg });
        }
    }

    /// A message from another shard (or from this one).
    pub fn peer(&mut self, msg: PeerMsg, now_ms: u64) {
        match msg {
            PeerMsg::Submit(submit) => self.sequence(submit, now_ms),
            PeerMsg::Subscribe { room, shard } => {
                let home = self.home_room(room);
                home.subscribers[shard] = true;
                let skip = home.recent.len().saturating_sub(HISTORY_ON_JOIN);
                let messages = home.recent.iter().skip(skip).cloned().collect();
                let mut view = Box::new(home.moderation.view.clone());
                view.members = (home.members.len() <= MEMBERSHIP_LIST_MAX)
                    .then(|| home.members.keys().cloned().collect());
                self.send_peer(
                    shard,
                    PeerMsg::Snapshot {
                        room,
                        messages,
                        view,
                    },
                    now_ms,
                );
            }
            PeerMsg::Unsubscribe { room, shard } => {
                self.home_room(room).subscribers[shard] = false;
            }
            PeerMsg::Snapshot {
                room,
                messages,
                view,
            } => self.on_snapshot(room, messages, *view, now_ms),
            PeerMsg::Command(submit) => self.moderate(submit, now_ms),
            PeerMsg::ColorChanged { user_id, color } => {
                for slot in &mut self.slots {
                    let Some(conn) = slot.conn.as_deref_mut() else {
                        continue;
                    };
                    if conn
                        .session
                        .identity()
                        .is_some_and(|i| i.user_id == user_id)
                    {
                        conn.session.set_color(&color);
                    }
                }
            }
            PeerMsg::Tag(submit) => self.tag_home(*submit, now_ms),
            PeerMsg::Whisper(submit) => self.whisper_home(submit, now_ms),
            PeerMsg::UserSeen {
                login,
                user_id,
                at,
                online,
            } => self.user_seen(login, user_id, at, online),
            PeerMsg::WhisperTo { conn, whisper } => self.whisper_to_conn(conn, &whisper, now_ms),
            PeerMsg::WhisperRefused { conn, msg_id, text } => {
                let mut out = Vec::new();
                if let Some(c) = self.conn(conn) {
                    c.session.encode_notice(None, msg_id, &text, &mut out);
                    ShardMetrics::inc(&self.metrics().notices_total);
                    self.push_owned(conn, out, now_ms);
                }
            }
            PeerMsg::Presence {
                room,
                login,
                joined,
            } => self.presence(room, login, joined),
            PeerMsg::CommandReply { to, room, reply } => {
                self.command_answered(to, room, reply, now_ms)
            }
            PeerMsg::Event {
                room,
                event,
                at_unix_ms,
            } => self.event_local(room, &event, at_unix_ms, now_ms),
            PeerMsg::Deliver { room, message } => self.deliver_local(room, &message, now_ms),
            PeerMsg::Reply { conn, room, reply } => self.conn_reply(conn, room, reply, now_ms),
        }
    }

    fn home_room(&mut self, room: usize) -> &mut HomeRoom {
        let shard = self.cfg.shard;
        self.home[room]
            .as_mut()
            .unwrap_or_else(|| panic!("room {room} is not homed on shard {shard}"))
    }

    // ----- sending (origin shard) -----

    fn submit(&mut self, id: ConnId, room: usize, message: Outgoing, now_ms: u64) {
        ShardMetrics::inc(&self.metrics().messages_in_total);
        let shard = self.cfg.shard;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Some(identity) = conn.session.identity() else {
            return;
        };
        let submit = Submit {
            room,
            origin: Origin { shard, conn: id },
            user_id: identity.user_id,
            login: identity.login.clone(),
            display_name: identity.display_name.clone(),
            color: identity.color.clone(),
            text: message.text,
            client_nonce: message.client_nonce,
            sent_ms: now_ms,
            action: message.action,
            reply_parent: message.reply_parent,
        };
        conn.submits_in_flight += 1;
        self.send_peer(
            home_shard(room, self.cfg.shard_count),
            PeerMsg::Submit(Box::new(submit)),
            now_ms,
        );
    }

    fn conn_reply(&mut self, id: ConnId, room: usize, reply: SubmitReply, now_ms: u64) {
        let max = self.cfg.submits_in_flight_per_conn_max;
        let name = &self.cfg.rooms[room].name;
        let Some(conn) = conn_in(&mut self.slots, id) else {
            return;
        };
        assert!(conn.submits_in_flight > 0, "a reply without a submit");
        let was_paused = conn.submits_in_flight >= max;
        conn.submits_in_flight -= 1;
        let mut out = Vec::new();
        let mut stamp = Stamp::None;
        match reply {
            SubmitReply::Acked {
                id: message_id,
                client_nonce,
                role,
                received_ms,
            } => {
                stamp = Stamp::Ack(received_ms);
                let message_id = message_id.to_string();
                conn.session
                    .encode_ack(name, role, &message_id, client_nonce.as_deref(), &mut out);
            }
            SubmitReply::Refused { msg_id, text } => {
                conn.session
                    .encode_notice(Some(name), msg_id, &text, &mut out);
                ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].notices_total);
            }
        }
        self.push_owned_stamped(id, out, stamp, now_ms);
        if was_paused {
            // Reads were paused on this connection's in-flight count; let the driver read again.
            self.outputs.push_back(Output::Wake(id));
        }
    }

    // ----- sequencing (home shard) -----

    fn refuse(
        &mut self,
        to: Origin,
        room: usize,
        msg_id: &'static str,
        text: impl Into<std::borrow::Cow<'static, str>>,
        now_ms: u64,
    ) {
        let text = text.into();
        ShardMetrics::inc(&self.metrics().messages_rejected_total);
        self.send_peer(
            to.shard,
            PeerMsg::Reply {
                conn: to.conn,
                room,
                reply: SubmitReply::Refused { msg_id, text },
            },
            now_ms,
        );
    }

    /// Stops accepting new messages (shutdown); those in flight still finish.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    fn sequence(&mut self, submit: Box<Submit>, now_ms: u64) {
        let room = submit.room;
        let origin = submit.origin;
        if self.shutting_down {
            return self.refuse(
                origin,
                room,
                msg_id::TRY_AGAIN,
                "The server is restarting; please send your message again.",
                now_ms,
            );
        }
        let key = submit
            .client_nonce
            .as_ref()
            .map(|nonce| DedupeKey::new(room, submit.user_id, nonce, &submit.text));
        let role = self.role_in(room, submit.user_id, &submit.login);
        if let Some(state) = key
            .as_ref()
            .and_then(|k| self.dedupe.entries.get(k))
            .copied()
        {
            ShardMetrics::inc(&self.metrics().messages_deduplicated_total);
            match state {
                DedupeState::Acked(id) => {
                    let reply = SubmitReply::Acked {
                        id,
                        client_nonce: submit.client_nonce,
                        role,
                        received_ms: submit.sent_ms,
                    };
                    self.send_peer(
                        origin.shard,
                        PeerMsg::Reply {
                            conn: origin.conn,
                            room,
                            reply,
                        },
                        now_ms,
                    );
                }
                DedupeState::Styling(ticket) => {
                    let job = self.styling.get_mut(&ticket).expect("dedupe names a job");
                    job.repliers.push((origin, submit.sent_ms));
                }
                DedupeState::Storing(id) => {
                    let home = self.home_room(room);
                    let at = home
                        .pending
                        .binary_search_by_key(&id, |p| p.message.record.id)
                        .expect("dedupe names a pending message");
                    home.pending[at].repliers.push((origin, submit.sent_ms));
                }
            }
            return;
        }
        if now_ms.saturating_sub(submit.sent_ms) > self.cfg.submit_age_ms_max {
            // This home has fallen far behind (a busy or shared core): shed rather than build seconds of queue.
            ShardMetrics::inc(&self.metrics().messages_shed_total);
            return self.refuse(origin, room, msg_id::TRY_AGAIN, BUSY_TEXT, now_ms);
        }
        let room_name = &self.cfg.rooms[room].name;
        let verdict = self.home[room]
            .as_mut()
            .expect("sequenced on the home shard")
            .moderation
            .check_send(room_name, submit.user_id, role, &submit.text, now_ms);
        match verdict {
            SendVerdict::Accept => {}
            SendVerdict::Refuse(refusal) => {
                ShardMetrics::inc(&self.metrics().messages_moderated_total);
                if refusal.msg_id == "msg_rejected_mandatory" {
                    ShardMetrics::inc(&self.metrics().automod_blocked_total);
                }
                return self.refuse(origin, room, refusal.msg_id, refusal.text, now_ms);
            }
            SendVerdict::Hold(reason) => {
                ShardMetrics::inc(&self.metrics().automod_held_total);
                // Held ids outlive a restart (held messages are stored): time-based, unique per home.
                let held_id = now_ms * 1024 + self.ticket() % 1024;
                let event = RoomEvent::Held {
                    held_id,
                    login: submit.login.clone(),
                    display_name: submit.display_name.clone(),
                    user_id: submit.user_id,
                    reason: reason.as_str(),
                    text: submit.text.clone(),
                };
                let held = Held { submit, reason };
                let stored = json(&StoredHeld::of(&held));
                self.outputs.push_back(Output::PutSetting {
                    ticket: 0,
                    key: keys::held(&self.cfg.rooms[room].name, held_id),
                    value: Some(stored),
                });
                let evicted = self.home_room(room).moderation.hold(held_id, held);
                self.broadcast(room, event, now_ms);
                if let Some((old_id, old)) = evicted {
                    self.resolve_held(room, old_id, old, false, now_ms);
                }
                return self.refuse(
                    origin,
                    room,
                    "msg_rejected",
                    "Your message is being checked by mods and has not been sent.",
                    now_ms,
                );
            }
        }
        if let Some(reason) = self.admit(&submit, role, now_ms) {
            let (msg_id, text) = reason;
            return self.refuse(origin, room, msg_id, text, now_ms);
        }
        self.home_room(room)
            .moderation
            .accepted(submit.user_id, &submit.text, now_ms);
        let received_ms = submit.sent_ms;
        self.start_styling(submit, role, vec![(origin, received_ms)], key, now_ms);
    }

    /// The rate limit and the home's own load; `Some` refuses the message.
    fn admit(
        &mut self,
        submit: &Submit,
        role: Role,
        now_ms: u64,
    ) -> Option<(&'static str, &'static str)> {
        let rate_key = submit
            .user_id
            .wrapping_mul(1024)
            .wrapping_add(submit.room as u64);
        if !self.rate.try_acquire(rate_key, role.moderates(), now_ms) {
            return Some((
                msg_id::RATELIMIT,
                "Your message was not sent because you are sending messages too quickly.",
            ));
        }
        if self.in_flight >= self.cfg.sequencing_in_flight_max || self.congested {
            return Some((msg_id::TRY_AGAIN, BUSY_TEXT));
        }
        None
    }

    /// Asks for the styling of an accepted message; its id comes when styling completes.
    fn start_styling(
        &mut self,
        submit: Box<Submit>,
        role: Role,
        repliers: Vec<(Origin, u64)>,
        key: Option<DedupeKey>,
        now_ms: u64,
    ) {
        let room = submit.room;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.in_flight += 1;
        ShardMetrics::inc(&self.metrics().messages_sequenced_total);
        if let Some(key) = &key {
            self.dedupe_insert(key.clone(), DedupeState::Styling(ticket), now_ms);
        }
        let seed = ticket ^ submit.user_id.rotate_left(17) ^ (self.cfg.shard as u64) << 56;
        self.outputs.push_back(Output::Style(StyleRequest {
            ticket,
            room,
            text: submit.text.clone(),
            seed,
        }));
        self.styling.insert(
            ticket,
            StyleJob {
                reply: submit
                    .reply_parent
                    .as_deref()
                    .and_then(|parent| self.reply_tags(room, parent)),
                submit,
                role,
                repliers,
                dedupe: key,
            },
        );
    }

    /// The style of a room, for the driver's styler.
    pub fn room_style(&self, room: usize) -> &str {
        &self.cfg.rooms[room].style
    }

    /// Styling finished (the styler's deadline and fallback are its own): assign the id and store the message.
    pub fn styled(&mut self, ticket: u64, text: String, by: StyledBy, now_ms: u64) {
        let Some(job) = self.styling.remove(&ticket) else {
            return;
        };
        match by {
            StyledBy::Llm => ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].styled_llm_total),
            StyledBy::Local => {
                ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].styler_fallbacks_total)
            }
        }
        let StyleJob {
            submit,
            role,
            repliers,
            dedupe,
            reply,
        } = job;
        let Submit {
            room,
            user_id,
            login,
            display_name,
            color,
            text: original,
            client_nonce,
            action,
            ..
        } = *submit;
        // `/me` was styled on its inner text; it is stored and delivered as IRC carries it.
        let text = if action {
            format!("{ACTION_PREFIX}{text}\x01")
        } else {
            text
        };
        let id = self.ids.next_id(now_ms);
        let info = &self.cfg.rooms[room];
        let record = MessageRecord {
            id,
            room: info.name.clone(),
            user_id,
            login,
            display_name,
            color,
            badges: role.badge().into(),
            text,
            original,
            styled_by: by.as_str().to_string(),
            client_nonce: client_nonce.unwrap_or_default(),
        };
        if let Some(state) = dedupe
            .as_ref()
            .and_then(|key| self.dedupe.entries.get_mut(key))
        {
            *state = DedupeState::Storing(id);
        }
        let message = Arc::new(ChatMessage::new(
            record.clone(),
            info.id,
            role.mod_tag(),
            repliers.first().map(|&(origin, _)| origin),
            reply,
        ));
        let home = self.home_room(room);
        debug_assert!(home.pending.back().is_none_or(|p| p.message.record.id < id));
        home.pending.push_back(Pending {
            message,
            durable: false,
            repliers,
            dedupe,
        });
        self.outputs.push_back(Output::Store { room, record });
    }

    /// The store answered for a message: durable, or failed (then nobody sees it and its sender is told).
    pub fn stored(
        &mut self,
        room: usize,
        id: MessageId,
        result: Result<(), StorageError>,
        now_ms: u64,
    ) {
        let home = self.home_room(room);
        let Ok(at) = home
            .pending
            .binary_search_by_key(&id, |p| p.message.record.id)
        else {
            return;
        };
        match result {
            Ok(()) => home.pending[at].durable = true,
            Err(err) => {
                let failed = home.pending.remove(at).expect("index from search");
                self.in_flight -= 1;
                ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].store_errors_total);
                if let Some(key) = &failed.dedupe {
                    // A failed message may be sent again under the same nonce.
                    self.dedupe.entries.remove(key);
                }
                let text = if matches!(err, StorageError::Busy) {
                    BUSY_TEXT
                } else {
                    "Your message could not be saved; please send it again."
                };
                for (to, _) in failed.repliers {
                    self.refuse(to, room, msg_id::TRY_AGAIN, text, now_ms);
                }
            }
        }
        self.release(room, now_ms);
    }

    /// Releases the durable prefix of a room's pending messages, in id order.
    fn release(&mut self, room: usize, now_ms: u64) {
        loop {
            let home = self.home_room(room);
            if !home.pending.front().is_some_and(|p| p.durable) {
                return;
            }
            let Pending {
                message,
                repliers,
                dedupe,
                ..
            } = home.pending.pop_front().expect("front checked");
            if home.recent.len() == DELETABLE_MESSAGES_MAX {
                home.recent.pop_front();
            }
            home.recent.push_back(message.clone());
            let subscribers: Vec<usize> = home
                .subscribers
                .iter()
                .enumerate()
                .filter_map(|(shard, &on)| on.then_some(shard))
                .collect();
            self.in_flight -= 1;
            ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].messages_acked_total);
            let id = message.record.id;
            if let Some(state) = dedupe
                .as_ref()
                .and_then(|key| self.dedupe.entries.get_mut(key))
            {
                *state = DedupeState::Acked(id);
            }
            if let Some(reply) = &message.reply {
                // The reply's link is kept beside the message (the record has no field for it), once the message is
                // durable; ticket 0 answers nobody. Losing it (a failed write) shows the message without its parent.
                let key = keys::reply(&message.record.room, message.record.id);
                self.outputs.push_back(Output::PutSetting {
                    ticket: 0,
                    key,
                    value: Some(json(&StoredReply::from(reply))),
                });
            }
            for shard in subscribers {
                self.send_peer(
                    shard,
                    PeerMsg::Deliver {
                        room,
                        message: message.clone(),
                    },
                    now_ms,
                );
            }
            for (to, received_ms) in repliers {
                let reply = SubmitReply::Acked {
                    id,
                    client_nonce: message.client_nonce().map(str::to_owned),
                    role: role_of_message(&message),
                    received_ms,
                };
                self.send_peer(
                    to.shard,
                    PeerMsg::Reply {
                        conn: to.conn,
                        room,
                        reply,
                    },
                    now_ms,
                );
            }
        }
    }

    /// After a restart: the room's recent durable messages, oldest first. The last ones become the history on
    /// join, and the nonces accepted within the idempotency window are remembered, so a resend after a restart is
    /// acknowledged with its original id.
    pub fn restore_room(
        &mut self,
        room: usize,
        records: Vec<MessageRecord>,
        mut replies: HashMap<MessageId, ReplyTags>,
        now_ms: u64,
    ) {
        let info = self.cfg.rooms[room].clone();
        let window_ms = self.cfg.dedupe_window_ms;
        let count = records.len();
        let mut keys = Vec::new();
        let home = self.home_room(room);
        for (index, record) in records.into_iter().enumerate() {
            if !record.client_nonce.is_empty()
                && now_ms.saturating_sub(record.id.unix_ms()) < window_ms
            {
                keys.push((
                    record.id.unix_ms(),
                    DedupeKey::new(room, record.user_id, &record.client_nonce, &record.original),
                    record.id,
                ));
            }
            if index + DELETABLE_MESSAGES_MAX >= count {
                let is_mod = record
                    .badges
                    .split(',')
                    .any(|b| b == Role::Moderator.badge());
                let reply = replies.remove(&record.id);
                home.recent.push_back(Arc::new(ChatMessage::new(
                    record, info.id, is_mod, None, reply,
                )));
            }
        }
        for (at_ms, key, id) in keys {
            self.dedupe_insert(key, DedupeState::Acked(id), at_ms);
        }
    }

    fn dedupe_insert(&mut self, key: DedupeKey, state: DedupeState, now_ms: u64) {
        if self.dedupe.order.len() >= self.cfg.dedupe_entries_max
            && let Some((_, oldest)) = self.dedupe.order.pop_front()
        {
            self.forget_dedupe(&oldest);
        }
        self.dedupe.order.push_back((now_ms, key.clone()));
        self.dedupe.entries.insert(key, state);
    }

    fn forget_dedupe(&mut self, key: &DedupeKey) {
        // Only settled entries are forgotten; one still in flight is needed to answer its resends.
        if matches!(self.dedupe.entries.get(key), Some(DedupeState::Acked(_))) {
            self.dedupe.entries.remove(key);
        }
    }

    fn expire_dedupe(&mut self, now_ms: u64) {
        let window_ms = self.cfg.dedupe_window_ms;
        while let Some((at_ms, _)) = self.dedupe.order.front() {
            if now_ms.saturating_sub(*at_ms) < window_ms {
                break;
            }
            let (_, key) = self.dedupe.order.pop_front().expect("front checked");
            self.forget_dedupe(&key);
        }
    }

    /// The reply tags for a message answering `parent_id`, when the room's home still has that message (its last
    /// [`DELETABLE_MESSAGES_MAX`]). Otherwise the message goes out as a plain one: no reply tags ever name a message
    /// that is not there.
    fn reply_tags(&self, room: usize, parent_id: &str) -> Option<ReplyTags> {
        let home = self.home[room].as_ref()?;
        let parent = home
            .recent
            .iter()
            .rev()
            .find(|m| m.record.id.to_string() == parent_id)?;
        let r = &parent.record;
        let (thread_msg_id, thread_login) = match &parent.reply {
            Some(grand) => (grand.thread_msg_id.clone(), grand.thread_login.clone()),
            None => (parent_id.to_owned(), r.login.clone()),
        };
        Some(ReplyTags {
            parent_msg_id: parent_id.to_owned(),
            parent_user_id: r.user_id,
            parent_login: r.login.clone(),
            parent_display_name: r.display_name.clone(),
            parent_body: super::action_inner(&r.text).unwrap_or(&r.text).to_owned(),
            thread_msg_id,
            thread_login,
        })
    }

    // ----- typing indicators and reactions -----

    fn tag_from_conn(
        &mut self,
        id: ConnId,
        room: usize,
        typing: Option<Typing>,
        react: Option<Reaction>,
        now_ms: u64,
    ) {
        let Some(identity) = self.conn(id).and_then(|c| c.session.identity()) else {
            return;
        };
        let submit = Box::new(TagSubmit {
            room,
            origin: Origin {
                shard: self.cfg.shard,
                conn: id,
            },
            user_id: identity.user_id,
            login: identity.login.clone(),
            display_name: identity.display_name.clone(),
            typing,
            react,
        });
        self.send_peer(
            home_shard(room, self.cfg.shard_count),
            PeerMsg::Tag(submit),
            now_ms,
        );
    }

    /// A typing indicator or reaction at the room's home: a reaction counts once per user and emoji, for a message
    /// the home still has (others are dropped: no count for a message that is not there), and its counts are kept
    /// beside the message; both are relayed to the room.
    fn tag_home(&mut self, submit: TagSubmit, now_ms: u64) {
        let room = submit.room;
        let TagSubmit {
            origin,
            user_id,
            login,
            display_name,
            typing,
            react,
            ..
        } = submit;
        let mut relayed_react = None;
        if let Some(reaction) = react {
            let home = self.home_room(room);
            let Some(message) = home
                .recent
                .iter()
                .rev()
                .find(|m| m.record.id.to_string() == reaction.msg_id)
            else {
                return;
            };
            let id = message.record.id;
            if !home.reactions.contains_key(&id) {
                if home.reaction_order.len() >= REACTED_MESSAGES_MAX
                    && let Some(oldest) = home.reaction_order.pop_front()
                {
                    home.reactions.remove(&oldest);
                }
                home.reaction_order.push_back(id);
            }
            let counts = home.reactions.entry(id).or_default();
            if !counts.contains_key(&reaction.emoji) && counts.len() >= REACTIONS_PER_MESSAGE_MAX {
                return;
            }
            let users = counts.entry(reaction.emoji.clone()).or_default();
            if users.len() < REACTING_USERS_PER_EMOJI_MAX {
                users.insert(user_id);
            }
            let count = users.len() as u32;
            let stored: BTreeMap<&str, usize> =
                counts.iter().map(|(e, u)| (e.as_str(), u.len())).collect();
            let value = json(&stored);
            let key = keys::reactions(&self.cfg.rooms[room].name, id);
            self.outputs.push_back(Output::PutSetting {
                ticket: 0,
                key,
                value: Some(value),
            });
            relayed_react = Some((reaction.emoji, reaction.msg_id, count));
        }
        if typing.is_none() && relayed_react.is_none() {
            return;
        }
        let event = RoomEvent::Tag {
            origin,
            login,
            display_name,
            user_id,
            typing,
            react: relayed_react,
        };
        self.broadcast(room, event, now_ms);
    }

    // ----- whispers -----

    fn whisper_from_conn(&mut self, id: ConnId, to_login: String, text: String, now_ms: u64) {
        let Some(identity) = self.conn(id).and_then(|c| c.session.identity()) else {
            return;
        };
        let submit = Box::new(WhisperSubmit {
            from: Actor {
                user_id: identity.user_id,
                login: identity.login.clone(),
                display_name: identity.display_name.clone(),
                color: identity.color.clone(),
            },
            origin: Origin {
                shard: self.cfg.shard,
                conn: id,
            },
            to_login,
            text,
        });
        let home = user_home(&submit.to_login, self.cfg.shard_count);
        self.send_peer(home, PeerMsg::Whisper(submit), now_ms);
    }

    fn refuse_whisper(
        &mut self,
        to: Origin,
        msg_id: &'static str,
        text: impl Into<std::borrow::Cow<'static, str>>,
        now_ms: u64,
    ) {
        let text = text.into();
        self.send_peer(
            to.shard,
            PeerMsg::WhisperRefused {
                conn: to.conn,
                msg_id,
                text,
            },
            now_ms,
        );
    }

    /// A whisper at the recipient's user home: rate limit, look the recipient up, store it; delivery follows in
    /// [`ShardCore::write_done`].
    fn whisper_home(&mut self, submit: Box<WhisperSubmit>, now_ms: u64) {
        let origin = submit.origin;
        // Whispers have their own window per sender, apart from any room's.
        let rate_key = submit.from.user_id.wrapping_mul(1024).wrapping_add(1023);
        if !self.rate.try_acquire(rate_key, false, now_ms) {
            return self.refuse_whisper(
                origin,
                msg_id::RATELIMIT,
                "Your whisper was not sent because you are sending whispers too quickly.",
                now_ms,
            );
        }
        if self.whispers.len() >= COMMANDS_IN_FLIGHT_MAX {
            return self.refuse_whisper(origin, msg_id::TRY_AGAIN, BUSY_TEXT, now_ms);
        }
        let ticket = self.ticket();
        let login = submit.to_login.clone();
        self.whispers.insert(
            ticket,
            WhisperJob {
                submit,
                stored: None,
                inboxing: false,
            },
        );
        self.outputs
            .push_back(Output::ResolveUser { ticket, login });
    }

    fn whisper_resolved(&mut self, job: WhisperJob, resolved: Resolved, now_ms: u64) {
        let origin = job.submit.origin;
        let to_id = match resolved {
            Ok(Some(user_id)) => user_id,
            Ok(None) => {
                return self.refuse_whisper(
                    origin,
                    "whisper_invalid_recipient",
                    "That user does not exist.",
                    now_ms,
                );
            }
            Err(_) => {
                return self.refuse_whisper(
                    origin,
                    msg_id::TRY_AGAIN,
                    COMMAND_UNAVAILABLE_TEXT,
                    now_ms,
                );
            }
        };
        let submit = job.submit;
        let whisper = Arc::new(Whisper {
            id: self.ids.next_id(now_ms).to_string(),
            from_id: submit.from.user_id,
            from_login: submit.from.login.clone(),
            from_display_name: submit.from.display_name.clone(),
            from_color: submit.from.color.clone(),
            to_id,
            to_login: submit.to_login.clone(),
            text: submit.text.clone(),
            sent_unix_ms: now_ms,
        });
        let key = keys::whisper(&whisper.thread_id(), &whisper.id);
        let value = json(&*whisper);
        let ticket = self.ticket();
        self.whispers.insert(
            ticket,
            WhisperJob {
                submit,
                stored: Some(whisper),
                inboxing: false,
            },
        );
        self.outputs.push_back(Output::PutSetting {
            ticket,
            key,
            value: Some(value),
        });
    }

    /// A whisper is durable (or, for an offline recipient, also in their inbox): deliver it to every connection of
    /// the recipient, acknowledge it to the sender (its own line back), and index the conversation for both. An
    /// offline recipient's inbox entry is written before the acknowledgement, so a login after the ack finds it.
    fn whisper_stored(
        &mut self,
        mut job: WhisperJob,
        result: Result<(), StorageError>,
        now_ms: u64,
    ) {
        let origin = job.submit.origin;
        let whisper = job.stored.clone().expect("a stored whisper");
        if result.is_err() {
            if job.inboxing {
                // The whisper is stored; only the delivery at next login is lost. It still counts as unread.
                log::warn!(
                    "whisper {} could not be put in {}'s inbox",
                    whisper.id,
                    whisper.to_login
                );
            } else {
                return self.refuse_whisper(
                    origin,
                    msg_id::TRY_AGAIN,
                    COMMAND_UNAVAILABLE_TEXT,
                    now_ms,
                );
            }
        }
        let recipients = self
            .online
            .get(&whisper.to_login)
            .cloned()
            .unwrap_or_default();
        if recipients.is_empty() && !job.inboxing && result.is_ok() {
            job.inboxing = true;
            let ticket = self.ticket();
            let key = keys::inbox(whisper.to_id, &whisper.id);
            let value = json(&*whisper);
            self.whispers.insert(ticket, job);
            self.outputs.push_back(Output::PutSetting {
                ticket,
                key,
                value: Some(value),
            });
            return;
        }
        if job.inboxing && !recipients.is_empty() {
            // The recipient logged in while the inbox entry was written: hand it over now instead.
            self.outputs.push_back(Output::PutSetting {
                ticket: 0,
                key: keys::inbox(whisper.to_id, &whisper.id),
                value: None,
            });
        }
        for at in &recipients {
            let msg = PeerMsg::WhisperTo {
                conn: at.conn,
                whisper: whisper.clone(),
            };
            self.send_peer(at.shard, msg, now_ms);
        }
        let echo = PeerMsg::WhisperTo {
            conn: origin.conn,
            whisper: whisper.clone(),
        };
        self.send_peer(origin.shard, echo, now_ms);
        // The conversation list follows (ticket 0: nobody waits); a failed entry costs the listing, never the
        // whisper, which stays in its thread.
        for (key, login) in [
            (
                keys::conversation(whisper.to_id, whisper.from_id),
                &whisper.from_login,
            ),
            (
                keys::conversation(whisper.from_id, whisper.to_id),
                &whisper.to_login,
            ),
        ] {
            self.outputs.push_back(Output::PutSetting {
                ticket: 0,
                key,
                value: Some(json(&serde_json::json!({ "login": login }))),
            });
        }
    }

    /// Tells a user's home that connection `id` of theirs logged in (`online`) or closed.
    fn tell_user_home(
        &mut self,
        id: ConnId,
        login: String,
        user_id: u64,
        online: bool,
        now_ms: u64,
    ) {
        let home = user_home(&login, self.cfg.shard_count);
        let at = Origin {
            shard: self.cfg.shard,
            conn: id,
        };
        let msg = PeerMsg::UserSeen {
            login,
            user_id,
            at,
            online,
        };
        self.send_peer(home, msg, now_ms);
    }

    /// One of a user's connections logged in or closed (at the user's home): keep the directory whispers are
    /// delivered by, and hand a new connection what waited in the user's inbox.
    fn user_seen(&mut self, login: String, user_id: u64, at: Origin, online: bool) {
        if online {
            let entry = self.online.entry(login.clone()).or_default();
            if !entry.contains(&at) {
                entry.push(at);
            }
            let ticket = self.ticket();
            self.inbox_reads.insert(ticket, at);
            self.outputs.push_back(Output::ReadSettings {
                ticket,
                prefix: keys::inbox_prefix(user_id),
                limit: INBOX_READ_MAX,
            });
        } else if let Some(entry) = self.online.get_mut(&login) {
            entry.retain(|o| *o != at);
            if entry.is_empty() {
                self.online.remove(&login);
            }
        }
    }

    /// The answer to an [`Output::ReadSettings`]: a new connection's waiting whispers are delivered to it, then
    /// taken out of the inbox.
    pub fn settings_read(
        &mut self,
        ticket: u64,
        result: Result<Vec<(String, Vec<u8>)>, StorageError>,
        now_ms: u64,
    ) {
        let Some(at) = self.inbox_reads.remove(&ticket) else {
            return;
        };
        let Ok(entries) = result else {
            // Left in the inbox for the next login.
            return;
        };
        for (key, value) in entries {
            if self.inbox_removing.values().any(|k| *k == key) {
                continue;
            }
            let whisper = serde_json::from_slice::<Whisper>(&value);
            if let Ok(whisper) = whisper {
                let msg = PeerMsg::WhisperTo {
                    conn: at.conn,
                    whisper: Arc::new(whisper),
                };
                self.send_peer(at.shard, msg, now_ms);
            } else {
                log::warn!("inbox entry {key:?} is not a whisper; removed");
            }
            let ticket = self.ticket();
            self.inbox_removing.insert(ticket, key.clone());
            self.outputs.push_back(Output::PutSetting {
                ticket,
                key,
                value: None,
            });
        }
    }

    /// Writes a whisper to one of this shard's connections.
    fn whisper_to_conn(&mut self, id: ConnId, whisper: &Whisper, now_ms: u64) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let thread_id = whisper.thread_id();
        let line = crate::protocol::twitch::WhisperLine {
            from_login: &whisper.from_login,
            from_display_name: &whisper.from_display_name,
            from_color: &whisper.from_color,
            from_id: whisper.from_id,
            to_login: &whisper.to_login,
            text: &whisper.text,
            message_id: &whisper.id,
            thread_id: &thread_id,
            emotes: &crate::protocol::emotes::emotes_tag(&whisper.text),
        };
        let mut out = Vec::new();
        conn.session.encode_whisper(&line, &mut out);
        self.push_owned(id, out, now_ms);
    }

    // ----- membership -----

    /// A logged-in user's connection came to or left a room (home shard): the first connection is a JOIN, the
    /// last one leaving a PART, sent in the next batch.
    fn presence(&mut self, room: usize, login: String, joined: bool) {
        let home = self.home_room(room);
        if joined {
            let count = home.members.entry(login.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                home.membership_pending.push((login, true));
            }
        } else if let Some(count) = home.members.get_mut(&login) {
            *count -= 1;
            if *count == 0 {
                home.members.remove(&login);
                home.membership_pending.push((login, false));
            }
        }
    }

    /// Sends each home room's batch of JOINs and PARTs to its subscribers (from the tick).
    fn flush_membership(&mut self, now_ms: u64) {
        for room in 0..self.home.len() {
            let Some(home) = self.home[room].as_mut() else {
                continue;
            };
            let listed = home.members.len() <= MEMBERSHIP_LIST_MAX;
            if home.membership_pending.is_empty() && listed == home.members_listed {
                continue;
            }
            let pending = std::mem::take(&mut home.membership_pending);
            let was_listed = std::mem::replace(&mut home.members_listed, listed);
            if !listed && !was_listed {
                continue;
            }
            // A user who came and went within one batch is neither.
            let mut joined = Vec::new();
            let mut parted = Vec::new();
            for (login, join) in pending {
                let (this, other) = if join {
                    (&mut joined, &mut parted)
                } else {
                    (&mut parted, &mut joined)
                };
                if let Some(at) = other.iter().position(|l| *l == login) {
                    other.swap_remove(at);
                } else {
                    this.push(login);
                }
            }
            self.broadcast(
                room,
                RoomEvent::Membership {
                    joined,
                    parted,
                    listed,
                },
                now_ms,
            );
        }
    }

    // ----- chat commands -----

    /// A chat command from this shard's connection or API request: the user's own settings (`/color`) are done
    /// here, room commands go to the room's home.
    fn command(
        &mut self,
        from: CommandFrom,
        room: usize,
        actor: Actor,
        command: ChatCommand,
        now_ms: u64,
    ) {
        let submit = Box::new(CommandSubmit {
            room,
            from,
            actor,
            command,
        });
        if submit.command.is_personal() {
            return self.personal_command(submit, now_ms);
        }
        let home = home_shard(room, self.cfg.shard_count);
        self.send_peer(home, PeerMsg::Command(submit), now_ms);
    }

    /// A command from the HTTP API by an authenticated user; answered with [`Output::ApiReply`] and `ticket`.
    pub fn api_command(
        &mut self,
        ticket: u64,
        room: usize,
        actor: Actor,
        command: ChatCommand,
        now_ms: u64,
    ) {
        let from = CommandFrom::Api {
            shard: self.cfg.shard,
            ticket,
        };
        self.command(from, room, actor, command, now_ms);
    }

    fn personal_command(&mut self, submit: Box<CommandSubmit>, now_ms: u64) {
        let ChatCommand::Color { color } = &submit.command else {
            unreachable!("only /color is personal");
        };
        let profile = Profile {
            display_name: submit.actor.display_name.clone(),
            color: color.clone(),
        };
        let effect = Effect::Color {
            user_id: submit.actor.user_id,
            color: color.clone(),
        };
        let key = keys::profile(submit.actor.user_id);
        let success = done("color_changed", "Your color has been changed.".into());
        self.write_setting(submit, key, Some(json(&profile)), effect, success, now_ms);
    }

    /// Answers a command, on whichever shard it came from.
    fn answer(&mut self, submit: &CommandSubmit, reply: CommandReply, now_ms: u64) {
        let metric = if reply.kind == ReplyKind::Done {
            &self.cfg.metrics[self.cfg.shard].commands_total
        } else {
            &self.cfg.metrics[self.cfg.shard].commands_refused_total
        };
        ShardMetrics::inc(metric);
        self.send_peer(
            submit.from.shard(),
            PeerMsg::CommandReply {
                to: submit.from,
                room: submit.room,
                reply,
            },
            now_ms,
        );
    }

    fn command_answered(&mut self, to: CommandFrom, room: usize, reply: CommandReply, now_ms: u64) {
        match to {
            CommandFrom::Api { ticket, .. } => {
                self.outputs.push_back(Output::ApiReply { ticket, reply });
            }
            CommandFrom::Conn(origin) => {
                if !reply.notice {
                    return;
                }
                let name = &self.cfg.rooms[room].name;
                let Some(conn) = conn_in(&mut self.slots, origin.conn) else {
                    return;
                };
                let mut out = Vec::new();
                conn.session
                    .encode_notice(Some(name), reply.msg_id, &reply.text, &mut out);
                ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].notices_total);
                self.push_owned(origin.conn, out, now_ms);
            }
        }
    }

    /// A room command at the room's home: permission, then a user lookup if it names one, then the durable
    /// write, and only then the change, the event and the answer.
    fn moderate(&mut self, submit: Box<CommandSubmit>, now_ms: u64) {
        let room = submit.room;
        let info = &self.cfg.rooms[room];
        let home = self.home[room].as_mut().expect("commands go to the home");
        let actor = &submit.actor;
        let role = role_of(
            info,
            &home.moderation.view.granted,
            actor.user_id,
            &actor.login,
        );
        let room_name = info.name.clone();
        let needs = match &submit.command {
            ChatCommand::Mods | ChatCommand::Vips | ChatCommand::Chatters { .. } => Role::Viewer,
            // Authors may delete their own messages; the rest is checked with the message.
            ChatCommand::Delete { .. } => Role::Viewer,
            ChatCommand::Mod { .. }
            | ChatCommand::Unmod { .. }
            | ChatCommand::Vip { .. }
            | ChatCommand::Unvip { .. } => Role::Broadcaster,
            _ => Role::Moderator,
        };
        if role < needs {
            return self.answer(&submit, no_permission(), now_ms);
        }
        // Commands count against the sender's message rate, as on Twitch.
        let rate_key = actor.user_id.wrapping_mul(1024).wrapping_add(room as u64);
        if !submit.command.is_query() && !self.rate.try_acquire(rate_key, role.moderates(), now_ms)
        {
            let reply = failed(
                ReplyKind::Unavailable,
                msg_id::RATELIMIT,
                "Your message was not sent because you are sending messages too quickly.".into(),
            );
            return self.answer(&submit, reply, now_ms);
        }
        if self.commands.len() >= COMMANDS_IN_FLIGHT_MAX {
            let reply = failed(ReplyKind::Unavailable, msg_id::TRY_AGAIN, BUSY_TEXT.into());
            return self.answer(&submit, reply, now_ms);
        }
        let moderation = &mut home.moderation;
        match &submit.command {
            ChatCommand::Chatters { after, limit } => {
                let mut logins: Vec<&String> = home
                    .members
                    .keys()
                    .filter(|l| l.as_str() > after.as_str())
                    .collect();
                logins.sort_unstable();
                let more = logins.len() > *limit;
                logins.truncate(*limit);
                let registered: u64 = home.members.values().map(|&n| u64::from(n)).sum();
                let viewers = self.cfg.viewers.total(room);
                let state = serde_json::json!({
                    "chatters": logins,
                    "next": if more { logins.last().map(|l| l.as_str()) } else { None },
                    "logged_in": home.members.len(),
                    "anonymous": viewers.saturating_sub(registered),
                    "connections": viewers,
                });
                let reply = done("chatters", state.to_string());
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::ModerationState => {
                let state = self.moderation_json(room, now_ms).expect("home room");
                let reply = done("moderation_state", state.to_string());
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::Mods | ChatCommand::Vips => {
                let (listed, some_id, none_id, what) = if submit.command == ChatCommand::Mods {
                    (Role::Moderator, "room_mods", "no_mods", "moderators")
                } else {
                    (Role::Vip, "vips_success", "no_vips", "VIPs")
                };
                let logins = moderation.logins_with(info, listed);
                let reply = if logins.is_empty() {
                    done(none_id, format!("There are no {what} of this channel."))
                } else {
                    done(
                        some_id,
                        format!("The {what} of this channel are: {}.", logins.join(", ")),
                    )
                };
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::Clear => {
                self.broadcast(room, RoomEvent::Clear { user: None }, now_ms);
                let mut reply = done("clear_success", "The chat was cleared.".into());
                reply.notice = false;
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::Slow { .. }
            | ChatCommand::SlowOff
            | ChatCommand::EmoteOnly(_)
            | ChatCommand::UniqueChat(_) => {
                let before = moderation.view.modes;
                let mut after = before;
                let (already, success) = match &submit.command {
                    ChatCommand::Slow { seconds } => {
                        after.slow_secs = *seconds;
                        (
                            None,
                            done(
                                "slow_on",
                                format!(
                                    "This room is now in slow mode. You may send messages every {seconds} seconds."
                                ),
                            ),
                        )
                    }
                    ChatCommand::SlowOff => {
                        after.slow_secs = 0;
                        (
                            (before.slow_secs == 0)
                                .then_some(("already_slow_off", "This room is not in slow mode.")),
                            done("slow_off", "This room is no longer in slow mode.".into()),
                        )
                    }
                    ChatCommand::EmoteOnly(on) => {
                        after.emote_only = *on;
                        if *on {
                            (
                                before.emote_only.then_some((
                                    "already_emote_only_on",
                                    "This room is already in emote-only mode.",
                                )),
                                done(
                                    "emote_only_on",
                                    "This room is now in emote-only mode.".into(),
                                ),
                            )
                        } else {
                            (
                                (!before.emote_only).then_some((
                                    "already_emote_only_off",
                                    "This room is not in emote-only mode.",
                                )),
                                done(
                                    "emote_only_off",
                                    "This room is no longer in emote-only mode.".into(),
                                ),
                            )
                        }
                    }
                    ChatCommand::UniqueChat(on) => {
                        after.r9k = *on;
                        if *on {
                            (
                                before.r9k.then_some((
                                    "already_r9k_on",
                                    "This room is already in unique-chat mode.",
                                )),
                                done("r9k_on", "This room is now in unique-chat mode.".into()),
                            )
                        } else {
                            (
                                (!before.r9k).then_some((
                                    "already_r9k_off",
                                    "This room is not in unique-chat mode.",
                                )),
                                done(
                                    "r9k_off",
                                    "This room is no longer in unique-chat mode.".into(),
                                ),
                            )
                        }
                    }
                    _ => unreachable!("mode commands only"),
                };
                if let Some((msg_id, text)) = already {
                    let reply = failed(ReplyKind::Invalid, msg_id, text.into());
                    return self.answer(&submit, reply, now_ms);
                }
                let key = keys::modes(&room_name);
                let value = json(&StoredModes::from(after));
                self.write_setting(
                    submit,
                    key,
                    Some(value),
                    Effect::Modes(after),
                    success,
                    now_ms,
                )
            }
            ChatCommand::AutoModAdd { phrase } | ChatCommand::AutoModRemove { phrase } => {
                let add = matches!(submit.command, ChatCommand::AutoModAdd { .. });
                // Try the change on a copy of the list: the real one changes only once the new list is durable.
                let mut trial = super::automod::AutoMod::new(Default::default());
                for existing in moderation.phrases() {
                    let _ = trial.add_phrase(&existing);
                }
                let changed = if add {
                    match trial.add_phrase(phrase) {
                        Ok(changed) => changed,
                        Err(err) => {
                            let reply =
                                failed(ReplyKind::Invalid, "usage_automod", err.to_string());
                            return self.answer(&submit, reply, now_ms);
                        }
                    }
                } else {
                    trial.remove_phrase(phrase)
                };
                if !changed {
                    let text = if add {
                        "That phrase is already blocked."
                    } else {
                        "That phrase is not blocked."
                    };
                    let reply = failed(ReplyKind::Invalid, "automod_phrase_unchanged", text.into());
                    return self.answer(&submit, reply, now_ms);
                }
                let stored = StoredAutoMod {
                    phrases: trial.phrases().to_vec(),
                };
                let (msg_id, text) = if add {
                    (
                        "automod_phrase_added",
                        "The phrase was added to AutoMod's blocked terms.",
                    )
                } else {
                    (
                        "automod_phrase_removed",
                        "The phrase was removed from AutoMod's blocked terms.",
                    )
                };
                let effect = Effect::Phrases {
                    add,
                    phrase: phrase.clone(),
                };
                let key = keys::automod(&room_name);
                let value = json(&stored);
                self.write_setting(
                    submit,
                    key,
                    Some(value),
                    effect,
                    done(msg_id, text.into()),
                    now_ms,
                )
            }
            ChatCommand::AutoModAllow { held_id } | ChatCommand::AutoModDeny { held_id } => {
                let allowed = matches!(submit.command, ChatCommand::AutoModAllow { .. });
                let held_id = *held_id;
                let Some(held) = moderation.held.remove(&held_id) else {
                    let reply = failed(
                        ReplyKind::NotFound,
                        "automod_not_found",
                        "That message is no longer held (it was allowed, denied or expired)."
                            .into(),
                    );
                    return self.answer(&submit, reply, now_ms);
                };
                self.resolve_held(room, held_id, held, allowed, now_ms);
                let reply = if allowed {
                    done("automod_allowed", "The message was allowed.".into())
                } else {
                    done("automod_denied", "The message was denied.".into())
                };
                self.answer(&submit, reply, now_ms)
            }
            ChatCommand::Delete { message_id } => {
                let found = home
                    .recent
                    .iter()
                    .find(|m| m.record.id.to_string() == *message_id)
                    .cloned();
                let Some(message) = found else {
                    let reply = failed(
                        ReplyKind::NotFound,
                        "bad_delete_message_error",
                        format!(
                            "The message you specified was not found: only the last {DELETABLE_MESSAGES_MAX} messages of a room can be deleted."
                        ),
                    );
                    return self.answer(&submit, reply, now_ms);
                };
                let own = message.record.user_id == actor.user_id;
                let author_role = role_of_message(&message);
                let refusal = if own {
                    None
                } else if role < Role::Moderator {
                    Some(no_permission())
                } else if author_role == Role::Broadcaster {
                    Some(failed(
                        ReplyKind::Invalid,
                        "bad_delete_message_broadcaster",
                        "You cannot delete the broadcaster's messages.".into(),
                    ))
                } else if author_role == Role::Moderator && role < Role::Broadcaster {
                    Some(failed(
                        ReplyKind::Invalid,
                        "bad_delete_message_mod",
                        format!(
                            "You cannot delete messages from another moderator {}.",
                            message.record.login
                        ),
                    ))
                } else {
                    None
                };
                if let Some(reply) = refusal {
                    return self.answer(&submit, reply, now_ms);
                }
                let success = done(
                    "delete_message_success",
                    format!("The message from {} is now deleted.", message.record.login),
                );
                let ticket = self.ticket();
                let id = message.record.id;
                self.commands.insert(
                    ticket,
                    CommandOp {
                        submit,
                        effect: Some(Effect::Delete { id }),
                        success: Some(success),
                    },
                );
                self.outputs
                    .push_back(Output::DeleteMessage { ticket, room, id });
            }
            ChatCommand::Timeout { user, .. }
            | ChatCommand::Untimeout { user }
            | ChatCommand::Ban { user, .. }
            | ChatCommand::Unban { user }
            | ChatCommand::Mod { user }
            | ChatCommand::Unmod { user }
            | ChatCommand::Vip { user }
            | ChatCommand::Unvip { user } => {
                let is_self = *user == actor.login;
                let self_refusal = match &submit.command {
                    ChatCommand::Timeout { .. } if is_self => {
                        Some(("bad_timeout_self", "You cannot timeout yourself."))
                    }
                    ChatCommand::Ban { .. } if is_self => {
                        Some(("bad_ban_self", "You cannot ban yourself."))
                    }
                    _ => None,
                };
                if let Some((msg_id, text)) = self_refusal {
                    let reply = failed(ReplyKind::Invalid, msg_id, text.into());
                    return self.answer(&submit, reply, now_ms);
                }
                let ticket = self.ticket();
                let login = user.clone();
                self.commands.insert(
                    ticket,
                    CommandOp {
                        submit,
                        effect: None,
                        success: None,
                    },
                );
                self.outputs
                    .push_back(Output::ResolveUser { ticket, login });
            }
            ChatCommand::Color { .. } => unreachable!("personal commands stay on their shard"),
        }
    }

    fn ticket(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// Asks for a durable write; the command's effect and answer follow in [`ShardCore::write_done`].
    fn write_setting(
        &mut self,
        submit: Box<CommandSubmit>,
        key: String,
        value: Option<Vec<u8>>,
        effect: Effect,
        success: CommandReply,
        _now_ms: u64,
    ) {
        let ticket = self.ticket();
        self.commands.insert(
            ticket,
            CommandOp {
                submit,
                effect: Some(effect),
                success: Some(success),
            },
        );
        self.outputs
            .push_back(Output::PutSetting { ticket, key, value });
    }

    /// The answer to an [`Output::ResolveUser`]: the command's target exists (or not); check it and write.
    pub fn user_resolved(&mut self, ticket: u64, resolved: Resolved, now_ms: u64) {
        if let Some(job) = self.whispers.remove(&ticket) {
            return self.whisper_resolved(job, resolved, now_ms);
        }
        let Some(op) = self.commands.remove(&ticket) else {
            return;
        };
        let submit = op.submit;
        let target_id = match resolved {
            Ok(Some(user_id)) => user_id,
            Ok(None) => {
                let reply = failed(
                    ReplyKind::NotFound,
                    "invalid_user",
                    "Invalid username.".into(),
                );
                return self.answer(&submit, reply, now_ms);
            }
            Err(_) => {
                let reply = failed(
                    ReplyKind::Unavailable,
                    msg_id::TRY_AGAIN,
                    COMMAND_UNAVAILABLE_TEXT.into(),
                );
                return self.answer(&submit, reply, now_ms);
            }
        };
        let room = submit.room;
        let info = &self.cfg.rooms[room];
        let room_name = info.name.clone();
        let moderation = &self.home[room].as_ref().expect("home").moderation;
        let actor_role = role_of(
            info,
            &moderation.view.granted,
            submit.actor.user_id,
            &submit.actor.login,
        );
        let (target_login, target_role) = match &submit.command {
            ChatCommand::Timeout { user, .. }
            | ChatCommand::Untimeout { user }
            | ChatCommand::Ban { user, .. }
            | ChatCommand::Unban { user }
            | ChatCommand::Mod { user }
            | ChatCommand::Unmod { user }
            | ChatCommand::Vip { user }
            | ChatCommand::Unvip { user } => (
                user.clone(),
                role_of(info, &moderation.view.granted, target_id, user),
            ),
            _ => unreachable!("only commands with a target are resolved"),
        };
        let ban = moderation
            .bans
            .get(&target_id)
            .filter(|b| b.active(now_ms))
            .cloned();
        let bans_full = moderation.bans.len() >= super::moderation::BANS_PER_ROOM_MAX
            && !moderation.bans.contains_key(&target_id);
        let roles_full = moderation.view.granted.len() >= super::moderation::ROLES_PER_ROOM_MAX
            && !moderation.view.granted.contains_key(&target_id);
        let adds_ban = matches!(
            submit.command,
            ChatCommand::Timeout { .. } | ChatCommand::Ban { .. }
        );
        let adds_role = matches!(
            submit.command,
            ChatCommand::Mod { .. }
                | ChatCommand::Unmod { .. }
                | ChatCommand::Vip { .. }
                | ChatCommand::Unvip { .. }
        );
        if (adds_ban && bans_full) || (adds_role && roles_full) {
            let reply = failed(
                ReplyKind::Invalid,
                "msg_list_full",
                "This room's list of bans or roles is full; remove some first.".into(),
            );
            return self.answer(&submit, reply, now_ms);
        }
        let invalid =
            |msg_id: &'static str, text: String| Err(failed(ReplyKind::Invalid, msg_id, text));
        let decided: Result<SettingWrite, CommandReply> = match &submit.command {
            ChatCommand::Timeout { reason, .. } | ChatCommand::Ban { reason, .. } => {
                let seconds = match &submit.command {
                    ChatCommand::Timeout { seconds, .. } => Some(*seconds),
                    _ => None,
                };
                let (verb, bad_broadcaster, bad_mod) = match seconds {
                    Some(_) => ("timeout", "bad_timeout_broadcaster", "bad_timeout_mod"),
                    None => ("ban", "bad_ban_broadcaster", "bad_ban_mod"),
                };
                if target_role == Role::Broadcaster {
                    invalid(
                        bad_broadcaster,
                        format!("You cannot {verb} the broadcaster."),
                    )
                } else if target_role == Role::Moderator && actor_role < Role::Broadcaster {
                    invalid(
                        bad_mod,
                        format!(
                            "You cannot {verb} moderator {target_login} unless you are the owner of this channel."
                        ),
                    )
                } else if ban.as_ref().is_some_and(|b| b.until_unix_ms.is_none()) {
                    invalid(
                        "already_banned",
                        format!("{target_login} is already banned in this channel."),
                    )
                } else {
                    let ban = Ban {
                        login: target_login.clone(),
                        until_unix_ms: seconds.map(|s| now_ms + u64::from(s) * 1000),
                        reason: reason.clone(),
                    };
                    let success = match seconds {
                        Some(s) => done(
                            "timeout_success",
                            format!("{target_login} has been timed out for {s} seconds."),
                        ),
                        None => done(
                            "ban_success",
                            format!("{target_login} is now banned from this channel."),
                        ),
                    };
                    Ok((
                        keys::ban(&room_name, target_id),
                        Some(json(&ban)),
                        Effect::Ban {
                            user_id: target_id,
                            ban,
                        },
                        success,
                    ))
                }
            }
            ChatCommand::Untimeout { .. } => match &ban {
                Some(Ban {
                    until_unix_ms: Some(_),
                    ..
                }) => Ok((
                    keys::ban(&room_name, target_id),
                    None,
                    Effect::Unban { user_id: target_id },
                    done(
                        "untimeout_success",
                        format!("{target_login} is no longer timed out in this channel."),
                    ),
                )),
                Some(_) => invalid(
                    "untimeout_banned",
                    format!(
                        "{target_login} is permanently banned; use \"/unban\" to remove a ban."
                    ),
                ),
                None => invalid(
                    "bad_untimeout_no_timeout",
                    format!("{target_login} is not timed out from this channel."),
                ),
            },
            ChatCommand::Unban { .. } => match &ban {
                Some(_) => Ok((
                    keys::ban(&room_name, target_id),
                    None,
                    Effect::Unban { user_id: target_id },
                    done(
                        "unban_success",
                        format!("{target_login} is no longer banned from this channel."),
                    ),
                )),
                None => invalid(
                    "bad_unban_no_ban",
                    format!("{target_login} is not banned from this channel."),
                ),
            },
            ChatCommand::Mod { .. }
            | ChatCommand::Unmod { .. }
            | ChatCommand::Vip { .. }
            | ChatCommand::Unvip { .. } => {
                let (role, result) = match &submit.command {
                    ChatCommand::Mod { .. } if target_role == Role::Moderator => (
                        Role::Moderator,
                        Err((
                            "bad_mod_mod",
                            format!("{target_login} is already a moderator of this channel."),
                        )),
                    ),
                    ChatCommand::Mod { .. } if ban.is_some() => (
                        Role::Moderator,
                        Err((
                            "bad_mod_banned",
                            format!("{target_login} is banned from this channel."),
                        )),
                    ),
                    ChatCommand::Mod { .. } => (
                        Role::Moderator,
                        Ok((
                            "mod_success",
                            format!(
                                "You have added {target_login} as a moderator of this channel."
                            ),
                        )),
                    ),
                    ChatCommand::Unmod { .. } if target_role != Role::Moderator => (
                        Role::Viewer,
                        Err((
                            "bad_unmod_mod",
                            format!("{target_login} is not a moderator of this channel."),
                        )),
                    ),
                    ChatCommand::Unmod { .. } => (
                        Role::Viewer,
                        Ok((
                            "unmod_success",
                            format!(
                                "You have removed {target_login} as a moderator of this channel."
                            ),
                        )),
                    ),
                    ChatCommand::Vip { .. } if target_role == Role::Vip => (
                        Role::Vip,
                        Err((
                            "bad_vip_grantee_already_vip",
                            format!("{target_login} is already a VIP of this channel."),
                        )),
                    ),
                    ChatCommand::Vip { .. } if ban.is_some() => (
                        Role::Vip,
                        Err((
                            "bad_vip_grantee_banned",
                            format!(
                                "{target_login} is banned in this channel and cannot be a VIP."
                            ),
                        )),
                    ),
                    ChatCommand::Vip { .. } => (
                        Role::Vip,
                        Ok((
                            "vip_success",
                            format!("You have added {target_login} as a VIP of this channel."),
                        )),
                    ),
                    ChatCommand::Unvip { .. } if target_role != Role::Vip => (
                        Role::Viewer,
                        Err((
                            "bad_unvip_grantee_not_vip",
                            format!("{target_login} is not a VIP of this channel."),
                        )),
                    ),
                    _ => (
                        Role::Viewer,
                        Ok((
                            "unvip_success",
                            format!("You have removed {target_login} as a VIP of this channel."),
                        )),
                    ),
                };
                if target_role == Role::Broadcaster {
                    invalid(
                        "bad_role_broadcaster",
                        "The broadcaster's role cannot be changed.".into(),
                    )
                } else {
                    match result {
                        Err((msg_id, text)) => invalid(msg_id, text),
                        Ok((msg_id, text)) => {
                            let grant = Grant {
                                login: target_login.clone(),
                                role: role.as_str().into(),
                            };
                            Ok((
                                keys::role(&room_name, target_id),
                                Some(json(&grant)),
                                Effect::Role {
                                    user_id: target_id,
                                    login: target_login.clone(),
                                    role,
                                },
                                done(msg_id, text),
                            ))
                        }
                    }
                }
            }
            _ => unreachable!("only commands with a target are resolved"),
        };
        match decided {
            Err(reply) => self.answer(&submit, reply, now_ms),
            Ok((key, value, effect, success)) => {
                self.write_setting(submit, key, value, effect, success, now_ms)
            }
        }
    }

    /// The answer to an [`Output::PutSetting`] or [`Output::DeleteMessage`]: the change is durable (apply it, tell
    /// the room, answer) or failed (answer "try again"; nothing changed).
    pub fn write_done(&mut self, ticket: u64, result: Result<(), StorageError>, now_ms: u64) {
        if let Some(job) = self.whispers.remove(&ticket) {
            return self.whisper_stored(job, result, now_ms);
        }
        if let Some(key) = self.inbox_removing.remove(&ticket) {
            if let Err(err) = result {
                // Delivered, but still in the inbox: the next login gets it again (at least once, never lost).
                log::warn!("inbox entry {key} not removed: {err}");
            }
            return;
        }
        let Some(op) = self.commands.remove(&ticket) else {
            return;
        };
        let submit = op.submit;
        if let Err(err) = result {
            log::warn!("/{} could not be saved: {err}", submit.command.name());
            let reply = failed(
                ReplyKind::Unavailable,
                msg_id::TRY_AGAIN,
                COMMAND_UNAVAILABLE_TEXT.into(),
            );
            return self.answer(&submit, reply, now_ms);
        }
        let room = submit.room;
        match op.effect.expect("a write has an effect") {
            Effect::Color { user_id, color } => {
                // Every shard, this one included, before the answer: the user's next line anywhere has the colour.
                for shard in 0..self.cfg.shard_count {
                    let msg = PeerMsg::ColorChanged {
                        user_id,
                        color: color.clone(),
                    };
                    self.send_peer(shard, msg, now_ms);
                }
            }
            Effect::Ban { user_id, ban } => {
                let user = ClearUser {
                    login: ban.login.clone(),
                    user_id,
                    duration_secs: ban
                        .until_unix_ms
                        .map(|until| (until.saturating_sub(now_ms).div_ceil(1000)) as u32),
                };
                self.home_room(room).moderation.bans.insert(user_id, ban);
                self.broadcast(room, RoomEvent::Clear { user: Some(user) }, now_ms);
            }
            Effect::Unban { user_id } => {
                self.home_room(room).moderation.bans.remove(&user_id);
            }
            Effect::Role {
                user_id,
                login,
                role,
            } => {
                self.home_room(room)
                    .moderation
                    .set_role(user_id, &login, role);
                self.broadcast(room, RoomEvent::Role { user_id, role }, now_ms);
            }
            Effect::Modes(after) => {
                let moderation = &mut self.home_room(room).moderation;
                let before = moderation.view.modes;
                moderation.view.modes = after;
                if before != after {
                    self.broadcast(room, RoomEvent::Modes { before, after }, now_ms);
                }
            }
            Effect::Phrases { add, phrase } => {
                let automod = self.home_room(room).moderation.automod();
                if add {
                    let _ = automod.add_phrase(&phrase);
                } else {
                    automod.remove_phrase(&phrase);
                }
            }
            Effect::Delete { id } => {
                let home = self.home_room(room);
                let Some(at) = home.recent.iter().position(|m| m.record.id == id) else {
                    // Already gone (deleted twice at once): the first delete told the room.
                    return self.answer(&submit, op.success.expect("success"), now_ms);
                };
                let message = home.recent.remove(at).expect("found");
                let event = RoomEvent::Deleted {
                    id,
                    login: message.record.login.clone(),
                    text: message.record.text.clone(),
                };
                self.broadcast(room, event, now_ms);
            }
        }
        self.answer(&submit, op.success.expect("a write has an answer"), now_ms);
    }

    /// A held message is allowed (it goes on to styling, storage and delivery like any other, answered to nobody:
    /// its sender was told it is held) or denied; the moderators and the author are told.
    fn resolve_held(&mut self, room: usize, held_id: u64, held: Held, allowed: bool, now_ms: u64) {
        let author = RoomModeration::held_origin(&held);
        self.outputs.push_back(Output::PutSetting {
            ticket: 0,
            key: keys::held(&self.cfg.rooms[room].name, held_id),
            value: None,
        });
        self.broadcast(room, RoomEvent::Resolved { held_id, allowed }, now_ms);
        let (msg_id, text) = if allowed {
            (
                "automod_message_approved",
                "A moderator approved your message; it was sent.",
            )
        } else {
            (
                "automod_message_denied",
                "A moderator denied your message; it was not sent.",
            )
        };
        let reply = CommandReply {
            kind: ReplyKind::Done,
            msg_id,
            text: text.into(),
            notice: true,
        };
        self.send_peer(
            author.shard,
            PeerMsg::CommandReply {
                to: CommandFrom::Conn(author),
                room,
                reply,
            },
            now_ms,
        );
        if allowed {
            let submit = held.submit;
            let role = self.role_in(room, submit.user_id, &submit.login);
            self.home_room(room)
                .moderation
                .accepted(submit.user_id, &submit.text, now_ms);
            self.start_styling(submit, role, Vec::new(), None, now_ms);
        }
    }

    /// Sends a room event to every subscribed shard (this one included), in order with the room's messages.
    fn broadcast(&mut self, room: usize, event: RoomEvent, now_ms: u64) {
        let event = Arc::new(event);
        let subscribers: Vec<usize> = self
            .home_room(room)
            .subscribers
            .iter()
            .enumerate()
            .filter_map(|(shard, &on)| on.then_some(shard))
            .collect();
        for shard in subscribers {
            self.send_peer(
                shard,
                PeerMsg::Event {
                    room,
                    event: event.clone(),
                    at_unix_ms: now_ms,
                },
                now_ms,
            );
        }
    }

    /// A room event on a shard with viewers: update the local copy, then tell each viewer it concerns.
    fn event_local(&mut self, room: usize, event: &RoomEvent, at_unix_ms: u64, now_ms: u64) {
        let rooms = self.cfg.rooms.clone();
        let info = &rooms[room];
        let local = &mut self.rooms[room];
        if !matches!(local.subscription, Subscription::Ready) {
            // As with messages: a snapshot that includes it is on its way, or we no longer care.
            return;
        }
        match event {
            RoomEvent::Deleted { id, .. } => local.recent.retain(|m| m.record.id != *id),
            RoomEvent::Modes { after, .. } => local.view.modes = *after,
            RoomEvent::Role { user_id, role } => {
                local.view.granted.insert(*user_id, *role);
            }
            RoomEvent::Membership {
                joined,
                parted,
                listed,
            } => {
                if !listed {
                    local.view.members = None;
                } else {
                    let members = local.view.members.get_or_insert_with(Default::default);
                    for login in parted {
                        members.remove(login);
                    }
                    members.extend(joined.iter().cloned());
                }
            }
            _ => {}
        }
        let id_text = match event {
            RoomEvent::Deleted { id, .. } => id.to_string(),
            _ => String::new(),
        };
        let viewers = local.viewers.clone();
        let mut lines = Vec::new();
        for viewer in viewers {
            let Some(conn) = conn_in(&mut self.slots, viewer) else {
                continue;
            };
            if conn.closing_since_ms.is_some() {
                continue;
            }
            let session = &conn.session;
            let viewer_role = session
                .identity()
                .map(|i| role_of(info, &self.rooms[room].view.granted, i.user_id, &i.login));
            let mut out = Vec::new();
            match event {
                RoomEvent::Clear { user } => {
                    let target = match user {
                        None => ClearTarget::All,
                        Some(user) => ClearTarget::User {
                            login: &user.login,
                            user_id: user.user_id,
                            ban_duration_secs: user.duration_secs,
                        },
                    };
                    session.encode_clearchat(&info.name, info.id, target, at_unix_ms, &mut out);
                }
                RoomEvent::Deleted { login, text, .. } => {
                    session.encode_clearmsg(
                        &info.name, info.id, login, &id_text, text, at_unix_ms, &mut out,
                    );
                }
                RoomEvent::Modes { before, after } => {
                    session.encode_modes_change(&info.name, info.id, before, after, &mut out);
                }
                RoomEvent::Role { user_id, role } => {
                    if session.identity().is_some_and(|i| i.user_id == *user_id) {
                        let effective = viewer_role.unwrap_or(*role);
                        session.encode_role_change(&info.name, effective, &mut out);
                    }
                }
                RoomEvent::Held {
                    held_id,
                    login,
                    display_name,
                    user_id,
                    reason,
                    text,
                } => {
                    if viewer_role.is_some_and(Role::moderates) {
                        let held = HeldLine {
                            held_id: *held_id,
                            login,
                            display_name,
                            user_id: *user_id,
                            reason,
                            text,
                        };
                        session
                            .encode_automod(&info.name, info.id, &held, None, at_unix_ms, &mut out);
                    }
                }
                RoomEvent::Tag {
                    origin,
                    login,
                    display_name,
                    user_id,
                    typing,
                    react,
                } => {
                    let own = origin.shard == self.cfg.shard && origin.conn == viewer;
                    if !own {
                        let line = crate::protocol::twitch::TagLine {
                            room: &info.name,
                            room_id: info.id,
                            login,
                            display_name,
                            user_id: *user_id,
                            typing: typing.map(Typing::as_str),
                            react: react.as_ref().map(|(e, m, c)| (e.as_str(), m.as_str(), *c)),
                        };
                        session.encode_tagmsg(&line, &mut out);
                    }
                }
                RoomEvent::Membership { joined, parted, .. } => {
                    session.encode_membership(&info.name, joined, parted, &mut out);
                }
                RoomEvent::Resolved { held_id, allowed } => {
                    if viewer_role.is_some_and(Role::moderates) {
                        let held = HeldLine {
                            held_id: *held_id,
                            login: "",
                            display_name: "",
                            user_id: 0,
                            reason: "",
                            text: "",
                        };
                        session.encode_automod(
                            &info.name,
                            info.id,
                            &held,
                            Some(*allowed),
                            at_unix_ms,
                            &mut out,
                        );
                    }
                }
            }
            if !out.is_empty() {
                lines.push((viewer, out));
            }
        }
        for (viewer, out) in lines {
            self.push_owned(viewer, out, now_ms);
        }
    }

    /// Restores a home room's moderation state from its stored settings (keys under `room/{room}/`).
    pub fn restore_moderation(
        &mut self,
        room: usize,
        settings: Vec<(String, Vec<u8>)>,
        now_ms: u64,
    ) {
        let prefix = keys::room_prefix(&self.cfg.rooms[room].name);
        let moderation = &mut self.home_room(room).moderation;
        for (key, value) in settings {
            if let Some(rest) = key.strip_prefix(&prefix) {
                moderation.restore(rest, &value, now_ms);
            }
        }
    }

    /// A room's moderation state for the HTTP API (home shard only), as JSON.
    pub fn moderation_json(&self, room: usize, now_ms: u64) -> Option<serde_json::Value> {
        let info = &self.cfg.rooms[room];
        let moderation = &self.home[room].as_ref()?.moderation;
        let mut banned: Vec<serde_json::Value> = moderation
            .bans
            .iter()
            .filter(|(_, ban)| ban.active(now_ms))
            .map(|(user_id, ban)| {
                serde_json::json!({
                    "login": ban.login, "user_id": user_id,
                    "until_unix_ms": ban.until_unix_ms, "reason": ban.reason,
                })
            })
            .collect();
        banned.sort_by(|a, b| a["login"].as_str().cmp(&b["login"].as_str()));
        let held: Vec<serde_json::Value> = moderation
            .held
            .iter()
            .map(|(held_id, held)| {
                serde_json::json!({
                    "held_id": held_id, "login": held.submit.login,
                    "text": held.submit.text, "reason": held.reason.as_str(),
                })
            })
            .collect();
        let modes = moderation.view.modes;
        Some(serde_json::json!({
            "modes": {"slow": modes.slow_secs, "emote_only": modes.emote_only, "r9k": modes.r9k},
            "broadcaster": info.broadcaster,
            "moderators": moderation.logins_with(info, Role::Moderator),
            "vips": moderation.logins_with(info, Role::Vip),
            "banned": banned,
            "automod": {"action": moderation.automod_mode().as_str(), "phrases": moderation.phrases()},
            "held": held,
        }))
    }

    /// The role of a user in a room, as this shard knows it (the home's view, or the local copy).
    pub fn role_in(&self, room: usize, user_id: u64, login: &str) -> Role {
        let info = &self.cfg.rooms[room];
        let granted = match &self.home[room] {
            Some(home) => &home.moderation.view.granted,
            None => &self.rooms[room].view.granted,
        };
        role_of(info, granted, user_id, login)
    }

    // ----- fanout -----

    /// Fans one durable message out to this shard's viewers: encoded at most once per variant, the same bytes
    /// queued to each.
    fn deliver_local(&mut self, room: usize, message: &Arc<ChatMessage>, now_ms: u64) {
        let local = &mut self.rooms[room];
        if !matches!(local.subscription, Subscription::Ready) {
            // Sent before our unsubscribe reached the home, or before the snapshot of a new subscription (which
            // includes it): either way not ours to deliver.
            return;
        }
        if local.recent.len() == HISTORY_ON_JOIN {
            local.recent.pop_front();
        }
        local.recent.push_back(message.clone());
        ShardMetrics::inc(&self.cfg.metrics[self.cfg.shard].messages_out_total);
        let mut variants: [Option<Bytes>; 2] = [None, None];
        let mut delivered = 0u64;
        let mut too_slow = Vec::new();
        let limit = self.cfg.outbound_queue_bytes_max;
        let origin = message.origin;
        let shard = self.cfg.shard;
        let id_text = message.record.id.to_string();
        let sequenced_ms = message.record.id.unix_ms();
        for &viewer in &local.viewers {
            let slot = &mut self.slots[slot_of(viewer)];
            let Some(conn) = slot.conn.as_deref_mut() else {
                continue;
            };
            if origin
                == Some(Origin {
                    shard,
                    conn: viewer,
                })
                && !conn.session.wants_echo()
            {
                continue;
            }
            let variant = usize::from(conn.session.wants_tags());
            let bytes = variants[variant].get_or_insert_with(|| {
                let mut line = Vec::with_capacity(512);
                conn.session
                    .encode_privmsg(&message.chat_line(false, &id_text), &mut line);
                Bytes::from(line)
            });
            if conn.queue.bytes() + bytes.len() > limit {
                too_slow.push(viewer);
                continue;
            }
            let was_empty = conn.queue.is_empty();
            conn.queue
                .push_stamped(bytes.clone(), Stamp::Delivery(sequenced_ms));
            delivered += 1;
            if was_empty {
                flush_later(
                    self.cfg.write_delay,
                    &mut self.delayed_wakes,
                    &mut self.outputs,
                    viewer,
                );
            }
        }
        ShardMetrics::add(
            &self.cfg.metrics[self.cfg.shard].deliveries_total,
            delivered,
        );
        for viewer in too_slow {
            self.drop_slow(viewer, now_ms);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Farewell {
    None,
    /// Drop what is queued and send `RECONNECT` (a viewer too slow for its queue).
    ReconnectNow,
    /// Send `RECONNECT` after what is queued (shutdown).
    ReconnectAfterQueued,
}

/// The role a message's sender had when it was sent, from its badges.
fn role_of_message(message: &ChatMessage) -> Role {
    let badges = &message.record.badges;
    [Role::Broadcaster, Role::Moderator, Role::Vip]
        .into_iter()
        .find(|role| badges.split(',').any(|b| b == role.badge()))
        .unwrap_or(Role::Viewer)
}

/// NOTICE text when a command could not be saved.
const COMMAND_UNAVAILABLE_TEXT: &str = "That could not be saved just now; please try again.";

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("settings serialise")
}

fn done(msg_id: &'static str, text: String) -> CommandReply {
    CommandReply {
        kind: ReplyKind::Done,
        msg_id,
        text,
        notice: true,
    }
}

fn failed(kind: ReplyKind, msg_id: &'static str, text: String) -> CommandReply {
    CommandReply {
        kind,
        msg_id,
        text,
        notice: true,
    }
}

fn no_permission() -> CommandReply {
    failed(
        ReplyKind::Forbidden,
        "no_permission",
        "You don't have permission to perform that action.".into(),
    )
}
