//! A shard: one glommio executor pinned to one core, owning the connections it accepted and the rooms homed on it.
//!
//! Rooms are spread over shards by [`home_shard`]. A room's home shard sequences its messages (id, timestamp,
//! style, storage, fanout) and knows which shards have viewers. Every other interaction between shards is a typed
//! [`ShardMsg`] over a bounded flume channel; nothing here is shared mutably across threads.
//!
//! Architecture invariant: a shard's inbound loop never awaits a cross-shard send. Outgoing messages go to a
//! per-destination [`Outbox`] drained by one pump task per destination, which keeps them in order (a room's
//! `Snapshot` always precedes its later `Deliver`s) and makes cycles of full channels unable to deadlock.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use twitchy_inference::{StyledBy, Styler, StylerFactory};
use twitchy_storage::{MessageId, MessageIdGen, MessageRecord, StorageError, StorageHandle};

use crate::config::{Args, RoomConfig};
use crate::conn::{Conn, LocalNotify};
use crate::metrics::{ShardMetrics, ViewerCounts};
use crate::protocol::session::{Identity, RoomState, SessionConfig};
use crate::protocol::twitch::{self, ChatLine, UserState, msg_id};
use crate::ratelimit::{RateLimitConfig, RateLimiter};

/// Messages kept per room for history on join.
pub const HISTORY_ON_JOIN: usize = 10;
/// Cross-shard messages queued for one destination before new chat messages are refused with "try again".
pub const OUTBOX_MESSAGES_MAX: usize = 65_536;
/// Capacity of each shard's inbound channel.
pub const INBOUND_CHANNEL_MESSAGES_MAX: usize = 4096;
/// Chat messages a shard may have in flight (styling, awaiting storage) as their home.
pub const SEQUENCING_IN_FLIGHT_MAX: usize = 100_000;

/// The shard that sequences a room. A plain function of the room index so every shard agrees without talking.
pub fn home_shard(room: usize, shard_count: usize) -> usize {
    room % shard_count
}

/// Read-only tables and handles every shard holds (an `Arc` built once at start, never mutated).
pub struct Shared {
    pub args: Args,
    pub rooms: Vec<RoomConfig>,
    pub room_ids: Vec<u64>,
    pub room_index: HashMap<String, usize>,
    pub shard_count: usize,
    pub metrics: Vec<ShardMetrics>,
    pub viewers: ViewerCounts,
    pub storage: StorageHandle,
    pub styler_factory: Arc<dyn StylerFactory>,
    pub inbound: Vec<flume::Sender<ShardMsg>>,
}

impl Shared {
    pub fn room(&self, name: &str) -> Option<usize> {
        self.room_index.get(name).copied()
    }
}

/// The author of a chat message as its home shard needs it.
#[derive(Debug, Clone)]
pub struct Author {
    pub user_id: u64,
    pub login: String,
    pub display_name: String,
    pub color: String,
}

/// A sequenced chat message, shared by every shard that delivers it.
#[derive(Debug)]
pub struct ChatMessage {
    pub record: MessageRecord,
    pub room_id: u64,
    pub is_mod: bool,
    pub client_nonce: Option<String>,
    /// The connection that sent it, which does not get its own message back unless it asked for echoes.
    pub origin: (usize, u64),
}

impl ChatMessage {
    pub fn chat_line<'a>(&'a self, historical: bool, id: &'a str) -> ChatLine<'a> {
        let r = &self.record;
        ChatLine {
            id,
            room: &r.room,
            room_id: self.room_id,
            user_id: r.user_id,
            login: &r.login,
            display_name: &r.display_name,
            color: &r.color,
            badges: &r.badges,
            is_mod: self.is_mod,
            text: &r.text,
            original: &r.original,
            client_nonce: self.client_nonce.as_deref(),
            sent_unix_ms: r.id.unix_ms(),
            historical,
        }
    }
}

/// Events for one connection, sent to the shard that owns it.
#[derive(Debug)]
pub enum ConnEvent {
    Acked {
        room: usize,
        id: MessageId,
        client_nonce: Option<String>,
        is_mod: bool,
    },
    Notice {
        room: usize,
        msg_id: &'static str,
        text: String,
    },
}

/// Everything one shard tells another.
#[derive(Debug)]
pub enum ShardMsg {
    /// To a room's home: a client's message to sequence.
    Submit(Box<Submit>),
    /// To a room's home: `shard` has viewers and wants the room's messages.
    Subscribe { room: usize, shard: usize },
    /// To a room's home: `shard` has no viewers left.
    Unsubscribe { room: usize, shard: usize },
    /// From a room's home: the latest messages, sent in reply to `Subscribe`.
    Snapshot {
        room: usize,
        messages: Vec<Arc<ChatMessage>>,
    },
    /// From a room's home: one new message, once per shard.
    Deliver {
        room: usize,
        message: Arc<ChatMessage>,
    },
    /// To a connection's shard.
    ToConn { conn: u64, event: ConnEvent },
    /// Stop: finish in-flight work, tell clients to reconnect, exit.
    Shutdown,
}

#[derive(Debug)]
pub struct Submit {
    pub room: usize,
    pub reply_shard: usize,
    pub conn: u64,
    pub author: Author,
    pub text: String,
    pub client_nonce: Option<String>,
}

/// A room as seen by one shard: its local viewers and the recent messages.
#[derive(Default)]
struct LocalRoom {
    viewers: Vec<Rc<Conn>>,
    subscription: Subscription,
    recent: VecDeque<Arc<ChatMessage>>,
}

#[derive(Default)]
enum Subscription {
    #[default]
    None,
    /// Subscribe sent; these connections wait for the snapshot to finish joining.
    Pending(Vec<Rc<Conn>>),
    Ready,
}

/// A room homed on this shard.
struct HomeRoom {
    subscribers: Vec<bool>,
    recent: VecDeque<Arc<ChatMessage>>,
}

/// Ordered, bounded queue of messages to one other shard, drained by its pump task.
struct Outbox {
    queue: RefCell<VecDeque<ShardMsg>>,
    notify: LocalNotify,
}

/// One shard's state. Lives in an `Rc` on its executor thread.
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub session_config: Rc<SessionConfig>,
    pub styler: Rc<dyn Styler>,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    next_conn_id: Cell<u64>,
    rooms: Vec<RefCell<LocalRoom>>,
    home: HashMap<usize, RefCell<HomeRoom>>,
    outboxes: Vec<Outbox>,
    ids: RefCell<MessageIdGen>,
    rate: RefCell<RateLimiter>,
    in_flight: Cell<usize>,
    in_flight_idle: LocalNotify,
    pub shutting_down: Cell<bool>,
}

/// Milliseconds since the unix epoch, from the system clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Shard> {
        let args = &shared.args;
        let session_config = Rc::new(SessionConfig {
            server_name: args.server_name.clone(),
            joins_per_window_max: args.joins_per_window_max,
            join_window_ms: args.join_window_ms,
            ..SessionConfig::default()
        });
        let rate = RateLimiter::new(RateLimitConfig {
            messages_per_window_max: args.rate_limit_messages,
            messages_per_window_max_mod: args.rate_limit_messages_mod,
            window_ms: args.rate_limit_window_ms,
            users_tracked_max: 1_000_000,
        });
        let home = (0..shared.rooms.len())
            .filter(|&room| home_shard(room, shared.shard_count) == id)
            .map(|room| {
                (
                    room,
                    RefCell::new(HomeRoom {
                        subscribers: vec![false; shared.shard_count],
                        recent: VecDeque::new(),
                    }),
                )
            })
            .collect();
        Rc::new(Shard {
            id,
            styler: shared.styler_factory.local_styler(id),
            session_config,
            conns: RefCell::default(),
            next_conn_id: Cell::new(1),
            rooms: (0..shared.rooms.len())
                .map(|_| RefCell::default())
                .collect(),
            home,
            outboxes: (0..shared.shard_count)
                .map(|_| Outbox {
                    queue: RefCell::default(),
                    notify: LocalNotify::default(),
                })
                .collect(),
            ids: RefCell::new(MessageIdGen::new(args.node_id, id as u16)),
            rate: RefCell::new(rate),
            in_flight: Cell::new(0),
            in_flight_idle: LocalNotify::default(),
            shutting_down: Cell::new(false),
            shared,
        })
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics[self.id]
    }

    /// Loads the recent messages of the rooms homed here, so history on join survives restarts.
    pub async fn load_history(&self) -> Result<(), StorageError> {
        for (&room, home) in &self.home {
            let name = &self.shared.rooms[room].name;
            let records = self
                .shared
                .storage
                .recent_messages(name, HISTORY_ON_JOIN)
                .await?;
            let mut home = home.borrow_mut();
            for record in records {
                let is_mod = self.shared.rooms[room].moderators.contains(&record.login);
                home.recent.push_back(Arc::new(ChatMessage {
                    record,
                    room_id: self.shared.room_ids[room],
                    is_mod,
                    client_nonce: None,
                    origin: (usize::MAX, 0),
                }));
            }
        }
        Ok(())
    }

    /// Starts one pump task per other shard.
    pub fn start_pumps(self: &Rc<Self>) {
        for dest in 0..self.shared.shard_count {
            if dest == self.id {
                continue;
            }
            let shard = self.clone();
            glommio::spawn_local(async move { shard.pump(dest).await }).detach();
        }
    }

    async fn pump(&self, dest: usize) {
        let outbox = &self.outboxes[dest];
        let sender = self.shared.inbound[dest].clone();
        loop {
            let next = outbox.queue.borrow_mut().pop_front();
            match next {
                Some(msg) => {
                    ShardMetrics::inc(&self.metrics().cross_shard_sent_total);
                    if sender.send_async(msg).await.is_err() {
                        // The destination has exited (shutdown): nothing more can reach it.
                        return;
                    }
                }
                None => outbox.notify.wait().await,
            }
        }
    }

    /// Sends to another shard in order, or handles it here when `dest` is this shard.
    fn send_to(self: &Rc<Self>, dest: usize, msg: ShardMsg) {
        if dest == self.id {
            self.handle(msg);
        } else {
            self.outboxes[dest].queue.borrow_mut().push_back(msg);
            self.outboxes[dest].notify.notify();
        }
    }

    fn outboxes_full(&self) -> bool {
        self.outboxes
            .iter()
            .any(|o| o.queue.borrow().len() >= OUTBOX_MESSAGES_MAX)
    }

    /// Handles one inbound message. Never awaits.
    pub fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Submit(submit) => self.sequence(*submit),
            ShardMsg::Subscribe { room, shard } => {
                let messages = {
                    let mut home = self.home[&room].borrow_mut();
                    home.subscribers[shard] = true;
                    home.recent.iter().cloned().collect()
                };
                self.send_to(shard, ShardMsg::Snapshot { room, messages });
            }
            ShardMsg::Unsubscribe { room, shard } => {
                self.home[&room].borrow_mut().subscribers[shard] = false;
            }
            ShardMsg::Snapshot { room, messages } => self.on_snapshot(room, messages),
            ShardMsg::Deliver { room, message } => self.deliver_local(room, &message),
            ShardMsg::ToConn { conn, event } => {
                let conn = self.conns.borrow().get(&conn).cloned();
                if let Some(conn) = conn {
                    self.conn_event(&conn, event);
                }
            }
            ShardMsg::Shutdown => self.shutting_down.set(true),
        }
    }

    // ----- connections -----

    pub fn register_conn(&self, make: impl FnOnce(u64) -> Rc<Conn>) -> Option<Rc<Conn>> {
        if self.conns.borrow().len() >= self.shared.args.connections_per_shard_max {
            ShardMetrics::inc(&self.metrics().connections_refused_total);
            return None;
        }
        let id = self.next_conn_id.get();
        self.next_conn_id.set(id + 1);
        let conn = make(id);
        self.conns.borrow_mut().insert(id, conn.clone());
        ShardMetrics::inc(&self.metrics().connections_accepted_total);
        self.metrics().connections.store(
            self.conns.borrow().len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Some(conn)
    }

    /// Removes a closed connection from every room it was in.
    pub fn unregister_conn(self: &Rc<Self>, conn: &Rc<Conn>) {
        self.conns.borrow_mut().remove(&conn.id);
        self.metrics().connections.store(
            self.conns.borrow().len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let rooms: Vec<usize> = conn.rooms.borrow().clone();
        for room in rooms {
            self.part(conn, room);
        }
    }

    pub fn all_conns(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().values().cloned().collect()
    }

    // ----- joining and leaving -----

    /// Starts joining `room`; the join completes now or when the home shard's snapshot arrives.
    pub fn join(self: &Rc<Self>, conn: &Rc<Conn>, room: usize) {
        if conn.rooms.borrow().contains(&room) {
            return;
        }
        conn.rooms.borrow_mut().push(room);
        let mut local = self.rooms[room].borrow_mut();
        match &mut local.subscription {
            Subscription::Ready => {
                drop(local);
                self.complete_join(conn, room);
            }
            Subscription::Pending(waiting) => waiting.push(conn.clone()),
            Subscription::None => {
                local.subscription = Subscription::Pending(vec![conn.clone()]);
                drop(local);
                self.send_to(
                    home_shard(room, self.shared.shard_count),
                    ShardMsg::Subscribe {
                        room,
                        shard: self.id,
                    },
                );
            }
        }
    }

    fn complete_join(&self, conn: &Rc<Conn>, room: usize) {
        if conn.is_closing() {
            return;
        }
        let mut local = self.rooms[room].borrow_mut();
        local.viewers.push(conn.clone());
        self.shared
            .viewers
            .set(self.id, room, local.viewers.len() as u64);
        let mut out = Vec::new();
        conn.session.borrow_mut().joined(
            &self.shared.rooms[room].name,
            &RoomState {
                room_id: self.shared.room_ids[room],
            },
            &mut out,
        );
        conn.run_replies(out);
        let with_tags = conn.session.borrow().wants_tags();
        let mut lines = Vec::new();
        for message in &local.recent {
            let id = message.record.id.to_string();
            twitch::encode_privmsg(
                &message.chat_line(true, &id),
                &self.shared.args.server_name,
                with_tags,
                &mut lines,
            );
        }
        if !lines.is_empty() {
            conn.push_owned(lines);
        }
    }

    pub fn part(self: &Rc<Self>, conn: &Rc<Conn>, room: usize) {
        conn.rooms.borrow_mut().retain(|&r| r != room);
        let mut local = self.rooms[room].borrow_mut();
        local.viewers.retain(|v| !Rc::ptr_eq(v, conn));
        if let Subscription::Pending(waiting) = &mut local.subscription {
            waiting.retain(|v| !Rc::ptr_eq(v, conn));
        }
        self.shared
            .viewers
            .set(self.id, room, local.viewers.len() as u64);
        let unsubscribe =
            matches!(local.subscription, Subscription::Ready) && local.viewers.is_empty();
        drop(local);
        if unsubscribe {
            self.unsubscribe(room);
        }
    }

    /// This shard has no viewers left in `room`: stop receiving its messages.
    fn unsubscribe(self: &Rc<Self>, room: usize) {
        {
            let mut local = self.rooms[room].borrow_mut();
            local.subscription = Subscription::None;
            local.recent.clear();
        }
        let home = home_shard(room, self.shared.shard_count);
        self.send_to(
            home,
            ShardMsg::Unsubscribe {
                room,
                shard: self.id,
            },
        );
    }

    fn on_snapshot(self: &Rc<Self>, room: usize, messages: Vec<Arc<ChatMessage>>) {
        let waiting = {
            let mut local = self.rooms[room].borrow_mut();
            local.recent = messages.into();
            match std::mem::replace(&mut local.subscription, Subscription::Ready) {
                Subscription::Pending(waiting) => waiting,
                // A snapshot we no longer wait for (every waiter left): drop the subscription again.
                _ => Vec::new(),
            }
        };
        for conn in &waiting {
            self.complete_join(conn, room);
        }
        let empty = self.rooms[room].borrow().viewers.is_empty();
        if empty {
            self.unsubscribe(room);
        }
    }

    /// Fans one message out to this shard's viewers: encoded once, the same bytes queued to each.
    fn deliver_local(&self, room: usize, message: &Arc<ChatMessage>) {
        let mut local = self.rooms[room].borrow_mut();
        if !matches!(local.subscription, Subscription::Ready) {
            // Sent before our unsubscribe reached the home shard, or before the snapshot of a new subscription
            // (which includes it): either way not ours to deliver.
            return;
        }
        if local.recent.len() == HISTORY_ON_JOIN {
            local.recent.pop_front();
        }
        local.recent.push_back(message.clone());
        ShardMetrics::inc(&self.metrics().messages_out_total);
        let encoded = crate::conn::SharedLine::new(message, &self.shared.args.server_name);
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        for viewer in &local.viewers {
            if message.origin == (self.id, viewer.id) && !viewer.echo.get() {
                continue;
            }
            if viewer.push_shared(&encoded, self.metrics()) {
                delivered += 1;
            } else {
                dropped += 1;
            }
        }
        ShardMetrics::add(&self.metrics().deliveries_total, delivered);
        ShardMetrics::add(&self.metrics().drops_total, dropped);
    }

    // ----- sending -----

    /// A client on this shard sent a PRIVMSG to `room`; forwards it to the room's home.
    pub fn submit(
        self: &Rc<Self>,
        conn: &Rc<Conn>,
        room: usize,
        text: String,
        client_nonce: Option<String>,
    ) {
        ShardMetrics::inc(&self.metrics().messages_in_total);
        let Some(identity) = conn.session.borrow().identity().cloned() else {
            return;
        };
        let author = author_of(&identity);
        let submit = Submit {
            room,
            reply_shard: self.id,
            conn: conn.id,
            author,
            text,
            client_nonce,
        };
        self.send_to(
            home_shard(room, self.shared.shard_count),
            ShardMsg::Submit(Box::new(submit)),
        );
    }

    /// On the room's home shard: rate limit, id, style, store, fan out, and acknowledge once durable.
    fn sequence(self: &Rc<Self>, submit: Submit) {
        let Submit {
            room,
            reply_shard,
            conn,
            author,
            text,
            client_nonce,
        } = submit;
        let config = &self.shared.rooms[room];
        let is_mod = config.moderators.contains(&author.login);
        let now_ms = unix_ms();
        let refuse = move |shard: &Rc<Shard>, msg_id: &'static str, text: &str| {
            ShardMetrics::inc(&shard.metrics().messages_rejected_total);
            let event = ConnEvent::Notice {
                room,
                msg_id,
                text: text.to_string(),
            };
            shard.send_to(reply_shard, ShardMsg::ToConn { conn, event });
        };
        if self.shutting_down.get() {
            return refuse(
                self,
                msg_id::TRY_AGAIN,
                "The server is restarting; please send your message again.",
            );
        }
        if !self
            .rate
            .borrow_mut()
            .try_acquire(author.user_id * 1024 + room as u64, is_mod, now_ms)
        {
            return refuse(
                self,
                msg_id::RATELIMIT,
                "Your message was not sent because you are sending messages too quickly.",
            );
        }
        if self.in_flight.get() >= SEQUENCING_IN_FLIGHT_MAX || self.outboxes_full() {
            return refuse(
                self,
                msg_id::TRY_AGAIN,
                "The server is busy; please send your message again.",
            );
        }
        let id = self.ids.borrow_mut().next_id(now_ms);
        self.in_flight.set(self.in_flight.get() + 1);
        ShardMetrics::inc(&self.metrics().messages_sequenced_total);
        let shard = self.clone();
        glommio::spawn_local(async move {
            let style = &shard.shared.rooms[room].style;
            let seed = (id.0 as u64) ^ ((id.0 >> 64) as u64);
            let styled = shard.styler.style(style, &text, seed).await;
            match styled.by {
                StyledBy::Llm => ShardMetrics::inc(&shard.metrics().styled_llm_total),
                StyledBy::Local => ShardMetrics::inc(&shard.metrics().styler_fallbacks_total),
            }
            let record = MessageRecord {
                id,
                room: shard.shared.rooms[room].name.clone(),
                user_id: author.user_id,
                login: author.login,
                display_name: author.display_name,
                color: author.color,
                badges: if is_mod {
                    "moderator/1".into()
                } else {
                    String::new()
                },
                text: styled.text,
                original: text,
                styled_by: styled.by.as_str().to_string(),
            };
            let ack = shard.shared.storage.append(record.clone());
            let ack = match ack {
                Ok(ack) => ack,
                Err(err) => {
                    shard.finish_in_flight();
                    let text = if matches!(err, StorageError::Busy) {
                        "Your message was not sent: the server is busy; please try again."
                    } else {
                        log::error!("storage refused message {id}: {err}");
                        "Your message could not be saved; please try again."
                    };
                    return refuse(&shard, msg_id::TRY_AGAIN, text);
                }
            };
            let client_nonce_ack = client_nonce.clone();
            let message = Arc::new(ChatMessage {
                record,
                room_id: shard.shared.room_ids[room],
                is_mod,
                client_nonce,
                origin: (reply_shard, conn),
            });
            shard.fan_out(room, message);
            let event = match ack.await {
                Ok(()) => {
                    ShardMetrics::inc(&shard.metrics().messages_acked_total);
                    ConnEvent::Acked {
                        room,
                        id,
                        client_nonce: client_nonce_ack,
                        is_mod,
                    }
                }
                Err(err) => {
                    log::error!("storing message {id} failed: {err}");
                    ShardMetrics::inc(&shard.metrics().store_errors_total);
                    ConnEvent::Notice {
                        room,
                        msg_id: msg_id::TRY_AGAIN,
                        text: "Your message could not be saved; please send it again.".into(),
                    }
                }
            };
            shard.send_to(reply_shard, ShardMsg::ToConn { conn, event });
            shard.finish_in_flight();
        })
        .detach();
    }

    fn finish_in_flight(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        if self.in_flight.get() == 0 {
            self.in_flight_idle.notify();
        }
    }

    /// Waits until every message this shard sequenced is acknowledged or failed.
    pub async fn drain_in_flight(&self) {
        while self.in_flight.get() > 0 {
            self.in_flight_idle.wait().await;
        }
    }

    fn fan_out(self: &Rc<Self>, room: usize, message: Arc<ChatMessage>) {
        let subscribers: Vec<usize> = {
            let mut home = self.home[&room].borrow_mut();
            if home.recent.len() == HISTORY_ON_JOIN {
                home.recent.pop_front();
            }
            home.recent.push_back(message.clone());
            home.subscribers
                .iter()
                .enumerate()
                .filter(|(_, s)| **s)
                .map(|(i, _)| i)
                .collect()
        };
        for shard in subscribers {
            self.send_to(
                shard,
                ShardMsg::Deliver {
                    room,
                    message: message.clone(),
                },
            );
        }
    }

    fn conn_event(&self, conn: &Rc<Conn>, event: ConnEvent) {
        let server = &self.shared.args.server_name;
        let mut out = Vec::new();
        match event {
            ConnEvent::Acked {
                room,
                id,
                client_nonce,
                is_mod,
            } => {
                let session = conn.session.borrow();
                let Some(identity) = session.identity() else {
                    return;
                };
                let badges = if is_mod { "moderator/1" } else { "" };
                let user = UserState {
                    login: &identity.login,
                    display_name: &identity.display_name,
                    color: &identity.color,
                    badges,
                    is_mod,
                };
                let id = id.to_string();
                twitch::encode_ack(
                    &self.shared.rooms[room].name,
                    &user,
                    &id,
                    client_nonce.as_deref(),
                    server,
                    session.wants_tags(),
                    &mut out,
                );
            }
            ConnEvent::Notice { room, msg_id, text } => {
                ShardMetrics::inc(&self.metrics().notices_total);
                let with_tags = conn.session.borrow().wants_tags();
                twitch::encode_notice(
                    Some(&self.shared.rooms[room].name),
                    Some(msg_id),
                    &text,
                    server,
                    with_tags,
                    &mut out,
                );
            }
        }
        conn.push_owned(out);
    }
}

pub fn author_of(identity: &Identity) -> Author {
    Author {
        user_id: identity.user_id,
        login: identity.login.clone(),
        display_name: identity.display_name.clone(),
        color: identity.color.clone(),
    }
}

/// Shared line bytes for one message on one shard (see `conn::SharedLine`).
pub type SharedBytes = Bytes;
