//! [`ShardCore`]: one shard's connections, local rooms and home rooms, as a state machine (see the module docs of
//! [`crate::core`]).

use std::cell::Cell;
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

mod commands;
mod social;

use commands::{COMMAND_UNAVAILABLE_TEXT, CommandOp, json, role_of_message};
use social::WhisperJob;

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
    /// Bytes queued for all of this shard's clients together; past it the slowest are dropped (with `RECONNECT`).
    pub outbound_bytes_per_shard_max: usize,
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
    /// Several nodes share the rooms through a committed log (the cluster store): a message reaches viewers and
    /// the last-10 only when it comes back from that log through [`ShardCore::committed`], in the log's order,
    /// which every node sees alike; its durable write only acknowledges its sender. Off: a message is released to
    /// viewers as soon as its write is durable.
    pub deliver_from_feed: bool,
    /// A busy room's write delay, in milliseconds (0: none). A room's chat lines leave at once unless its previous
    /// lines left less than this long ago; then they wait until that long after, for [`ShardCore::flush_delayed`],
    /// so a busy room's viewers get several lines per socket write. A quiet room's lines, and replies, acks and
    /// notices, never wait.
    pub write_delay_ms: u64,
    /// Every shard's counters; this core writes only its own.
    pub metrics: Arc<[ShardMetrics]>,
    pub viewers: Arc<ViewerCounts>,
}

impl RoomInfo {
    /// For tests and tools: a room with no roles, no AutoMod and no banned phrases.
    pub fn for_tests(name: &str, id: u64, style: &str) -> RoomInfo {
        RoomInfo {
            name: name.into(),
            id,
            style: style.into(),
            moderators: Vec::new(),
            broadcaster: None,
            vips: Vec::new(),
            automod: AutoModMode::Off,
            banned_phrases: Vec::new(),
        }
    }
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
            outbound_bytes_per_shard_max: 512 << 20,
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
            write_delay_ms: 0,
            deliver_from_feed: false,
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
    /// Its new chat lines wait for a busy room's delayed flush (cleared when anything is taken for writing).
    held: bool,
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
    /// When the room's chat lines last left (or, while `waiting`, when they will): with a write delay, lines that
    /// come sooner than the delay after this wait.
    fanout_ms: u64,
    /// Lines wait for the room's delayed flush at `fanout_ms` (the room is in `ShardCore::held_rooms`).
    waiting: bool,
    /// Viewers whose lines wait for that flush.
    held: Vec<ConnId>,
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
    /// Cluster mode: the committed feed brought it back (and it was shown) before its own write was acknowledged.
    fed: bool,
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
    /// With [`CoreConfig::deliver_from_feed`]: this node's acknowledged messages the committed feed has not brought
    /// back yet (kept whole, so they go out with what the record does not carry, such as reply tags).
    awaiting_feed: VecDeque<Arc<ChatMessage>>,
    moderation: RoomModeration,
    /// Logged-in users viewing the room, with their connection count over all shards.
    members: HashMap<String, u32>,
    /// Membership changes not yet sent (batched by the tick, as Twitch batches JOIN and PART).
    membership_pending: Vec<(String, bool)>,
    /// Whether subscribers were last told the member list (the room is small enough).
    members_listed: bool,
    /// Who reacted with what to the newest messages (bounded by [`REACTED_MESSAGES_MAX`]).
    reactions: HashMap<MessageId, BTreeMap<String, ReactionCount>>,
    reaction_order: VecDeque<MessageId>,
}

/// One reaction's count on one message: what was stored before this process started, plus the users who
/// reacted since (each counted once; one who had reacted before a restart can count once more).
#[derive(Debug, Default)]
struct ReactionCount {
    stored: u32,
    users: HashSet<u64>,
}

impl ReactionCount {
    fn count(&self) -> u32 {
        self.stored + self.users.len() as u32
    }
}

/// Rooms with more logged-in users than this get no JOIN/PART lines and no member list in NAMES, as on Twitch.
pub const MEMBERSHIP_LIST_MAX: usize = 1_000;

impl HomeRoom {
    /// Where the message `id` is among those awaiting durability (kept in id order).
    fn pending_at(&self, id: MessageId) -> Option<usize> {
        self.pending
            .binary_search_by_key(&id, |p| p.message.record.id)
            .ok()
    }

    /// The shards with viewers of the room (this one included).
    fn subscriber_shards(&self) -> Vec<usize> {
        self.subscribers
            .iter()
            .enumerate()
            .filter_map(|(shard, &on)| on.then_some(shard))
            .collect()
    }

    /// One of the room's last messages by its id as clients write it (parsed once, not formatted per message).
    fn recent_by_id(&self, id: &str) -> Option<&Arc<ChatMessage>> {
        let parsed: MessageId = id.parse().ok()?;
        // Only the id's own spelling names it, as a string comparison would.
        if parsed.to_string() != id {
            return None;
        }
        self.recent.iter().rev().find(|m| m.record.id == parsed)
    }
}

/// Durable messages per room that `/delete` can find by id (the last ones).
pub const DELETABLE_MESSAGES_MAX: usize = 200;
/// This node's acknowledged messages per room kept until the committed feed brings them back (cluster mode); an
/// older one that never came back is shown from its record alone when it does.
pub const AWAITING_FEED_MAX: usize = 10_000;
/// Chat commands a shard may have waiting for a lookup or a write; past it they get "try again".
pub const COMMANDS_IN_FLIGHT_MAX: usize = 1_024;

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
    /// What every connection's outbound queue holds, together (kept by the queues).
    queued_total: Rc<Cell<usize>>,
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
    /// Rooms with viewers waiting for a delayed flush, each once.
    held_rooms: Vec<usize>,
    outputs: VecDeque<Output>,
    last_sweep_ms: u64,
}

fn slot_of(id: ConnId) -> usize {
    (id & 0xffff_ffff) as usize
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
                    awaiting_feed: VecDeque::new(),
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
            queued_total: Rc::new(Cell::new(0)),
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
            held_rooms: Vec::new(),
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
            queue: OutQueue::counted(self.queued_total.clone()),
            submits_in_flight: 0,
            opened_ms: now_ms,
            last_rx_ms: now_ms,
            pinged: false,
            held: false,
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
        self.outputs.push_back(Output::Flush(id));
    }

    /// When the first delayed flush is due (see [`CoreConfig::write_delay_ms`]), if any lines wait.
    pub fn delayed_flush_due_ms(&self) -> Option<u64> {
        self.held_rooms
            .iter()
            .map(|&room| self.rooms[room].fanout_ms)
            .min()
    }

    /// With a write delay: flushes the waiting viewers of every room whose delay has passed by `now_ms`.
    pub fn flush_delayed(&mut self, now_ms: u64) {
        let mut index = 0;
        while index < self.held_rooms.len() {
            let room = &mut self.rooms[self.held_rooms[index]];
            if room.fanout_ms > now_ms {
                index += 1;
                continue;
            }
            room.waiting = false;
            for id in room.held.drain(..) {
                if let Some(conn) = conn_in(&mut self.slots, id)
                    && conn.held
                {
                    conn.held = false;
                    self.outputs.push_back(Output::Flush(id));
                }
            }
            self.held_rooms.swap_remove(index);
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
        if conn.queue.bytes() + OutQueue::owned_charge(&bytes, bytes.capacity()) > limit {
            self.drop_slow(id, now_ms);
            return;
        }
        // A connection whose chat lines wait for a busy room's delayed flush is written now: replies never wait,
        // and the waiting lines go with them, in order.
        let wake = conn.queue.is_empty() || conn.held;
        conn.held = false;
        conn.queue.push_owned(bytes, stamp);
        if wake {
            self.wake(id);
        }
        self.shed_over_budget(now_ms);
    }

    fn push_frame(&mut self, id: ConnId, frame: Vec<u8>) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing_since_ms.is_some() {
            return;
        }
        let wake = conn.queue.is_empty() || conn.held;
        conn.held = false;
        conn.queue.push_frame(frame);
        if wake {
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
            conn.queue.push_owned(line, Stamp::None);
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
                    let at = home.pending_at(id).expect("dedupe names a pending message");
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
            fed: false,
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
        let Some(at) = home.pending_at(id) else {
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
        let deliver_from_feed = self.cfg.deliver_from_feed;
        loop {
            let home = self.home_room(room);
            if !home.pending.front().is_some_and(|p| p.durable) {
                return;
            }
            let Pending {
                message,
                repliers,
                dedupe,
                fed,
                ..
            } = home.pending.pop_front().expect("front checked");
            if deliver_from_feed {
                // Shown when the committed feed brings it back, in the log's order (unless it already did).
                if !fed {
                    if home.awaiting_feed.len() == AWAITING_FEED_MAX {
                        home.awaiting_feed.pop_front();
                    }
                    home.awaiting_feed.push_back(message.clone());
                }
            } else {
                self.show(room, &message, now_ms);
            }
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
            self.ack_repliers(room, &message, id, repliers, now_ms);
        }
    }

    /// Puts a durable message among the room's last ones and sends it to every shard with viewers of the room.
    fn show(&mut self, room: usize, message: &Arc<ChatMessage>, now_ms: u64) {
        let home = self.home_room(room);
        if home.recent.len() == DELETABLE_MESSAGES_MAX {
            home.recent.pop_front();
        }
        home.recent.push_back(message.clone());
        for shard in home.subscriber_shards() {
            self.send_peer(
                shard,
                PeerMsg::Deliver {
                    room,
                    message: message.clone(),
                },
                now_ms,
            );
        }
    }

    /// Acknowledges a message, as `id`, to every connection that sent it (the sender, then any resends).
    fn ack_repliers(
        &mut self,
        room: usize,
        message: &ChatMessage,
        id: MessageId,
        repliers: Vec<(Origin, u64)>,
        now_ms: u64,
    ) {
        for (to, received_ms) in repliers {
            let reply = SubmitReply::Acked {
                id,
                client_nonce: message.client_nonce().map(str::to_owned),
                role: role_of_message(message),
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

    /// With [`CoreConfig::deliver_from_feed`]: a message committed to the shared log (by this node or another), in
    /// the log's order. It joins the last-10 and goes to every subscribed shard; one from another node also counts
    /// against its sender's rate limit here, so the limit holds whichever node the user sends through, and its
    /// nonce is remembered for resends.
    pub fn committed(&mut self, room: usize, record: MessageRecord, now_ms: u64) {
        assert!(
            self.cfg.deliver_from_feed,
            "the committed feed is only read in cluster mode"
        );
        let info_id = self.cfg.rooms[room].id;
        let window_ms = self.cfg.dedupe_window_ms;
        let home = self.home_room(room);
        // This node's own message: acknowledged and waiting for the feed, or (the feed can be quicker than the
        // acknowledgement) still waiting for its write's answer.
        let local = home
            .awaiting_feed
            .iter()
            .position(|m| m.record.id == record.id)
            .and_then(|at| home.awaiting_feed.remove(at))
            .or_else(|| {
                let at = home.pending_at(record.id)?;
                home.pending[at].fed = true;
                Some(home.pending[at].message.clone())
            });
        let message = match local {
            Some(message) => message,
            None => {
                let is_mod = record
                    .badges
                    .split(',')
                    .any(|b| b == Role::Moderator.badge());
                let rate_key = record.user_id.wrapping_mul(1024).wrapping_add(room as u64);
                // Counted, not judged: the node it was sent through already admitted it.
                let _ = self.rate.try_acquire(rate_key, is_mod, now_ms);
                if !record.client_nonce.is_empty()
                    && now_ms.saturating_sub(record.id.unix_ms()) < window_ms
                {
                    let key = DedupeKey::new(
                        room,
                        record.user_id,
                        &record.client_nonce,
                        &record.original,
                    );
                    if !self.dedupe.entries.contains_key(&key) {
                        self.dedupe_insert(key, DedupeState::Acked(record.id), now_ms);
                    }
                }
                Arc::new(ChatMessage::new(record, info_id, is_mod, None, None))
            }
        };
        self.show(room, &message, now_ms);
    }

    /// The shared log already held this message (the same sender and nonce, sent again through any node): the
    /// sender is acknowledged with the original's id, and nothing is shown (the original was, or will be, by the
    /// feed).
    pub fn stored_duplicate(
        &mut self,
        room: usize,
        id: MessageId,
        original: MessageId,
        now_ms: u64,
    ) {
        let home = self.home_room(room);
        let Some(at) = home.pending_at(id) else {
            return;
        };
        let Pending {
            message,
            repliers,
            dedupe,
            ..
        } = home.pending.remove(at).expect("index from search");
        self.in_flight -= 1;
        ShardMetrics::inc(&self.metrics().messages_deduplicated_total);
        if let Some(state) = dedupe
            .as_ref()
            .and_then(|key| self.dedupe.entries.get_mut(key))
        {
            *state = DedupeState::Acked(original);
        }
        self.ack_repliers(room, &message, original, repliers, now_ms);
        self.release(room, now_ms);
    }

    /// After a restart: the room's recent durable messages, oldest first. The last ones become the history on
    /// join, and the nonces accepted within the idempotency window are remembered, so a resend after a restart is
    /// acknowledged with its original id.
    pub fn restore_room(
        &mut self,
        room: usize,
        records: Vec<MessageRecord>,
        mut replies: HashMap<MessageId, ReplyTags>,
        reactions: HashMap<MessageId, BTreeMap<String, u32>>,
        now_ms: u64,
    ) {
        let home = self.home_room(room);
        let mut reactions: Vec<_> = reactions.into_iter().collect();
        reactions.sort_unstable_by_key(|(id, _)| *id);
        for (id, counts) in reactions {
            home.reaction_order.push_back(id);
            let counts = counts
                .into_iter()
                .map(|(emoji, stored)| {
                    let count = ReactionCount {
                        stored,
                        users: HashSet::new(),
                    };
                    (emoji, count)
                })
                .collect();
            home.reactions.insert(id, counts);
        }
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
        let parent = home.recent_by_id(parent_id)?;
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
        // A busy room (its last lines left less than the write delay ago) holds this line with the next ones until
        // the delay has passed since then; a quiet room's line leaves at once.
        let delay_ms = self.cfg.write_delay_ms;
        let hold = delay_ms > 0 && now_ms < local.fanout_ms.saturating_add(delay_ms);
        if hold {
            if !local.waiting {
                local.waiting = true;
                local.fanout_ms += delay_ms;
                self.held_rooms.push(room);
            }
        } else {
            local.fanout_ms = now_ms;
        }
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
            if conn.queue.bytes() + OutQueue::shared_charge(bytes) > limit {
                too_slow.push(viewer);
                continue;
            }
            let was_empty = conn.queue.is_empty();
            conn.queue
                .push_stamped(bytes.clone(), Stamp::Delivery(sequenced_ms));
            delivered += 1;
            if hold {
                // Lines already queued and not held leave with the write that is pending anyway.
                if was_empty && !conn.held {
                    conn.held = true;
                    local.held.push(viewer);
                }
            } else if was_empty || conn.held {
                conn.held = false;
                self.outputs.push_back(Output::Flush(viewer));
            }
        }
        ShardMetrics::add(
            &self.cfg.metrics[self.cfg.shard].deliveries_total,
            delivered,
        );
        for viewer in too_slow {
            self.drop_slow(viewer, now_ms);
        }
        self.shed_over_budget(now_ms);
    }

    /// The bytes queued for all of this shard's clients.
    pub fn queued_bytes_total(&self) -> usize {
        self.queued_total.get()
    }

    /// While the shard's queues together hold more than their budget, drops the client furthest behind (with
    /// `RECONNECT`): the slowest reader goes first, and readers that keep up are never dropped for others.
    fn shed_over_budget(&mut self, now_ms: u64) {
        while self.queued_total.get() > self.cfg.outbound_bytes_per_shard_max {
            let slowest = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(index, slot)| {
                    let conn = slot.conn.as_deref()?;
                    (conn.closing_since_ms.is_none() && !conn.queue.is_empty()).then(|| {
                        let id = (u64::from(slot.generation) << 32) | index as u64;
                        (conn.queue.bytes(), id)
                    })
                })
                .max();
            let Some((_, id)) = slowest else {
                return;
            };
            ShardMetrics::inc(&self.metrics().outbound_budget_drops_total);
            self.drop_slow(id, now_ms);
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

#[cfg(test)]
mod budget_tests {
    use super::*;

    fn core(budget: usize) -> ShardCore {
        let room = RoomInfo::for_tests("lobby", 1, "pirate");
        let mut cfg = CoreConfig::for_tests(0, 1, vec![room]);
        cfg.outbound_bytes_per_shard_max = budget;
        ShardCore::new(cfg)
    }

    /// A client that sends PINGs and never reads: each PONG stays queued.
    fn pings(core: &mut ShardCore, id: ConnId, count: usize) {
        for i in 0..count {
            core.conn_input(id, format!("PING :{i}\r\n").as_bytes(), 1_000);
        }
    }

    #[test]
    fn over_the_shard_budget_the_slowest_reader_goes_first() {
        let mut core = core(40_000);
        let slow = core.conn_open(Transport::Tcp, 0).unwrap();
        let slower = core.conn_open(Transport::Tcp, 0).unwrap();
        for id in [slow, slower] {
            core.conn_input(id, b"NICK justinfan77\r\n", 0);
        }
        pings(&mut core, slower, 250);
        pings(&mut core, slow, 100);
        let before = core.queued_bytes(slow);
        assert!(core.queued_bytes_total() <= 40_000);
        // More PINGs from the slow one push the shard over: the slower one (the biggest queue) is dropped.
        pings(&mut core, slow, 80);
        assert!(
            core.queued_bytes(slow) > before,
            "the slow reader keeps its queue"
        );
        let mut out = Vec::new();
        while core.take_writes(slower, &mut out, 2_000) > 0 {}
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text, ":tmi.twitch.tv RECONNECT\r\n",
            "only the farewell is left for it"
        );
        assert_eq!(
            core.config().metrics[0]
                .outbound_budget_drops_total
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(core.queued_bytes_total() <= 40_000);
        // Writing what is queued gives it back to the budget.
        let mut drained = Vec::new();
        while core.take_writes(slow, &mut drained, 2_000) > 0 {}
        assert!(
            core.queued_bytes_total() < 200,
            "{}",
            core.queued_bytes_total()
        );
        core.conn_closed(slower);
        core.conn_closed(slow);
        assert_eq!(
            core.queued_bytes_total(),
            0,
            "closed connections hold nothing"
        );
    }
}

#[cfg(test)]
mod write_delay_tests {
    use super::*;
    use crate::protocol::session::Identity;

    const DELAY_MS: u64 = 100;

    /// One shard with a write delay, a viewer and a registered sender in one room; styling and storage complete
    /// at once.
    struct World {
        core: ShardCore,
        viewer: ConnId,
        sender: ConnId,
        flushed: Vec<ConnId>,
        seq: u64,
    }

    impl World {
        fn new() -> World {
            let room = RoomInfo::for_tests("lobby", 1, "pirate");
            let mut cfg = CoreConfig::for_tests(0, 1, vec![room]);
            cfg.write_delay_ms = DELAY_MS;
            cfg.rate.messages_per_window_max = 1_000;
            let mut core = ShardCore::new(cfg);
            let viewer = core.conn_open(Transport::Tcp, 0).unwrap();
            core.conn_input(
                viewer,
                b"CAP REQ :twitch.tv/commands\r\nNICK justinfan1\r\nJOIN #lobby\r\n",
                0,
            );
            let sender = core.conn_open(Transport::Tcp, 0).unwrap();
            core.conn_input(
                sender,
                b"CAP REQ :twitch.tv/commands\r\nPASS oauth:x\r\nNICK ronni\r\n",
                0,
            );
            core.auth_done(
                sender,
                AuthOutcome::Valid(Identity {
                    login: "ronni".into(),
                    display_name: "Ronni".into(),
                    user_id: 7,
                    color: String::new(),
                    badges: String::new(),
                    is_mod: false,
                }),
                0,
            );
            let mut world = World {
                core,
                viewer,
                sender,
                flushed: Vec::new(),
                seq: 0,
            };
            world.pump(0);
            world.core.conn_input(sender, b"JOIN #lobby\r\n", 0);
            world.pump(0);
            world.read(viewer);
            world.read(sender);
            world
        }

        fn pump(&mut self, now_ms: u64) {
            while let Some(output) = self.core.pop_output() {
                match output {
                    Output::Flush(id) => self.flushed.push(id),
                    Output::Style(r) => self.core.styled(r.ticket, r.text, StyledBy::Local, now_ms),
                    Output::Store { room, record } => {
                        self.core.stored(room, record.id, Ok(()), now_ms)
                    }
                    Output::ReadSettings { ticket, .. } => {
                        self.core.settings_read(ticket, Ok(Vec::new()), now_ms)
                    }
                    _ => {}
                }
            }
        }

        /// The sender says something at `now_ms`; returns whether the viewer was flushed at once.
        fn say(&mut self, now_ms: u64) -> bool {
            self.seq += 1;
            let line = format!("PRIVMSG #lobby :line {}\r\n", self.seq);
            self.read(self.sender);
            self.flushed.clear();
            self.core.conn_input(self.sender, line.as_bytes(), now_ms);
            self.pump(now_ms);
            assert!(
                self.flushed.contains(&self.sender),
                "the sender's ack never waits: {:?}",
                self.read(self.sender)
            );
            self.flushed.contains(&self.viewer)
        }

        fn read(&mut self, id: ConnId) -> String {
            let mut out = Vec::new();
            while self.core.take_writes(id, &mut out, 0) > 0 {}
            String::from_utf8(out).unwrap()
        }

        /// The numbers of the chat lines in `text`, in order.
        fn lines(text: &str) -> Vec<u64> {
            text.lines()
                .filter_map(|l| l.split_once(" PRIVMSG #lobby :line ").map(|(_, n)| n))
                .map(|n| n.parse().unwrap())
                .collect()
        }
    }

    #[test]
    fn a_busy_room_holds_its_lines_for_the_delay_and_a_quiet_one_does_not() {
        let mut w = World::new();
        assert!(w.say(1_000), "a quiet room's line leaves at once");
        assert_eq!(World::lines(&w.read(w.viewer)), [1]);
        assert_eq!(w.core.delayed_flush_due_ms(), None);

        // Within the delay of the last lines: held until the delay has passed since them.
        assert!(!w.say(1_030));
        assert!(!w.say(1_060));
        assert_eq!(w.core.delayed_flush_due_ms(), Some(1_000 + DELAY_MS));
        w.flushed.clear();
        w.core.flush_delayed(1_099);
        w.pump(1_099);
        assert!(w.flushed.is_empty(), "not due yet");
        w.core.flush_delayed(1_100);
        w.pump(1_100);
        assert_eq!(w.flushed, [w.viewer]);
        assert_eq!(w.core.delayed_flush_due_ms(), None);
        assert_eq!(
            World::lines(&w.read(w.viewer)),
            [2, 3],
            "one write, in order"
        );

        // Still busy: the next line waits for the delay after that flush.
        assert!(!w.say(1_150));
        assert_eq!(w.core.delayed_flush_due_ms(), Some(1_100 + DELAY_MS));
        // A reply to a waiting viewer is not held: it leaves now, after the waiting line.
        w.flushed.clear();
        w.core.conn_input(w.viewer, b"PING :x\r\n", 1_160);
        w.pump(1_160);
        assert_eq!(w.flushed, [w.viewer]);
        let text = w.read(w.viewer);
        assert_eq!(World::lines(&text), [4]);
        assert!(text.ends_with("PONG tmi.twitch.tv :x\r\n"), "{text}");
        // The room's flush still comes, with nothing left to write.
        w.core.flush_delayed(1_200);
        w.pump(1_200);
        assert_eq!(w.read(w.viewer), "");

        // Quiet again (nothing for longer than the delay): at once.
        assert!(w.say(1_400));
        assert_eq!(World::lines(&w.read(w.viewer)), [5]);
    }

    #[test]
    fn without_a_delay_every_line_leaves_at_once() {
        let mut w = World::new();
        w.core.cfg.write_delay_ms = 0;
        for at_ms in [1_000, 1_001, 1_002] {
            assert!(w.say(at_ms));
            assert_eq!(w.read(w.viewer).lines().count(), 1);
        }
        assert_eq!(w.core.delayed_flush_due_ms(), None);
    }
}
