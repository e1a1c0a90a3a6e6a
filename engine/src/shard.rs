//! A shard's driver: one glommio executor pinned to one core, carrying its [`ShardCore`]'s inputs in and outputs
//! out.
//!
//! The driver owns what the core cannot: sockets (in [`crate::conn`]), the cross-shard channels, timers, and the
//! tasks that wait on the authenticator, the styler and the store. Everything it learns goes into the core as an
//! input; everything the core decides comes back as an [`Output`] that [`Shard::pump`] carries out. Nothing here
//! decides anything about chat.
//!
//! Architecture invariant: the inbound loop never awaits a cross-shard send. Outgoing messages go to a
//! per-destination outbox drained by one pump task per destination, which sends them in batches, in order.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use twitchy_inference::{Styler, StylerFactory};
use twitchy_storage::{AppendOutcome, StorageError, StorageHandle};

use crate::config::{Args, RoomConfig};
use crate::core::{
    Actor, AuthOutcome, CommandReply, ConnId, CoreConfig, Output, PeerMsg, RoomInfo, ShardCore,
    Transport,
};
use crate::metrics::{ShardMetrics, ViewerCounts};
use crate::protocol::commands::ChatCommand;
use crate::protocol::session::SessionConfig;
use crate::ratelimit::RateLimitConfig;

/// Cross-shard messages queued for one destination before new chat messages are refused with "try again".
pub const OUTBOX_MESSAGES_MAX: usize = 65_536;
/// Capacity of each shard's inbound channel, in batches.
pub const INBOUND_CHANNEL_BATCHES_MAX: usize = 1024;
/// Chat messages a shard may have in flight (styling, awaiting storage) as their home.
pub const SEQUENCING_IN_FLIGHT_MAX: usize = 100_000;
/// Submits one connection may have unanswered before its socket stops being read.
pub const SUBMITS_IN_FLIGHT_PER_CONN_MAX: u32 = 32;
/// A submit this old when its home shard gets to it is shed with try-again.
pub const SUBMIT_AGE_MS_MAX: u64 = 2_000;
/// How long a `(user, client-nonce)` pair is remembered for idempotent resends.
pub const DEDUPE_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Messages per room read at start to rebuild the idempotency table (and the last-10 history).
pub const DEDUPE_RESTORE_MESSAGES_MAX: usize = 10_000;
/// Idempotency entries a home shard keeps at most.
pub const DEDUPE_ENTRIES_MAX: usize = 1_000_000;
/// How long a closing connection may take to flush its last lines.
pub const CLOSE_GRACE_MS: u64 = 2_000;
/// Period of the keep-alive and deadline sweep.
pub const TICK_MS: u64 = 500;
/// Size of the shard's read buffer, shared by all its connections (reads never hold it across an await).
pub const READ_SCRATCH_BYTES: usize = 64 * 1024;

/// A batch of cross-shard messages, sent as one channel item.
pub type PeerBatch = Vec<PeerMsg>;

/// Read-only tables and handles every shard holds (an `Arc` built once at start, never mutated).
pub struct Shared {
    pub args: Args,
    pub rooms: Vec<RoomConfig>,
    pub room_infos: Arc<[RoomInfo]>,
    pub room_ids: Vec<u64>,
    pub room_index: HashMap<String, usize>,
    pub shard_count: usize,
    pub metrics: Arc<[ShardMetrics]>,
    pub viewers: Arc<ViewerCounts>,
    pub storage: StorageHandle,
    pub auth: crate::auth::AuthService,
    pub styler_factory: Arc<dyn StylerFactory>,
    pub inbound: Vec<flume::Sender<PeerBatch>>,
    /// Open connections per client address, over every shard.
    pub ip_connections: Arc<crate::ip_limit::IpConnections>,
    /// TLS for the HTTP listener and the IRC-over-TLS listener, when configured.
    pub tls: Option<crate::tls::TlsTerminator>,
    /// With `--cluster`: each room's history as read at start, and where its committed feed continues.
    pub cluster: Option<ClusterStart>,
}

/// What a node in a cluster read from the shared log before its shards started.
#[derive(Debug)]
pub struct ClusterStart {
    /// Per room: its newest messages in log order (taken by the room's home shard), and the first log sequence
    /// its feed delivers (anything earlier is in that history already).
    pub rooms: Vec<std::sync::Mutex<Option<Vec<twitchy_storage::MessageRecord>>>>,
    pub feed_from_seq: Vec<u64>,
    /// Per room: its feed (taken by the room's home shard).
    pub feeds: Vec<std::sync::Mutex<Option<twitchy_storage::Feed>>>,
    /// Per shard: watches of every room's settings and of every room's deleted messages, started before the rooms'
    /// settings and last messages were read, so nothing changed in between is missed (taken by the shard, which
    /// applies the changes of the rooms homed there).
    pub watches: Vec<
        std::sync::Mutex<Option<(twitchy_storage::SettingChanges, twitchy_storage::Deletions)>>,
    >,
}

impl Shared {
    pub fn room(&self, name: &str) -> Option<usize> {
        self.room_index.get(name).copied()
    }
}

/// Takes what a start-up slot holds (each is taken once, by the shard it is for).
fn take_slot<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Milliseconds since the unix epoch, as the driver's only clock: the system clock read once at start, advanced by
/// the monotonic clock. Every duration the core measures with it (idle and registration timeouts, rate windows,
/// shedding) is immune to the system clock being stepped (a manual change, a VM resume, NTP correcting a large
/// error), which would otherwise drop or block every client at once; timestamps stay within the clock's slew of
/// real time, and message ids are kept increasing by their generator anyway.
pub fn unix_ms() -> u64 {
    static START: std::sync::OnceLock<(u64, std::time::Instant)> = std::sync::OnceLock::new();
    let (start_unix_ms, start) =
        START.get_or_init(|| (system_unix_ms(), std::time::Instant::now()));
    start_unix_ms + start.elapsed().as_millis() as u64
}

/// The system clock in milliseconds since the unix epoch.
fn system_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn the_driver_clock_never_goes_back_and_tracks_the_system_clock() {
        let mut last = unix_ms();
        for _ in 0..10_000 {
            let now = unix_ms();
            assert!(now >= last, "{now} after {last}");
            last = now;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = unix_ms();
        assert!(later >= last + 20, "the clock advances with real time");
        assert!(
            later.abs_diff(system_unix_ms()) < 5_000,
            "it stays near the system clock"
        );
    }
}

/// One JSON-valued setting, if it is set and reads as a `T` (a value that does not is treated as unset: a bad
/// entry must not keep the server from starting).
pub async fn json_setting<T: serde::de::DeserializeOwned>(
    storage: &StorageHandle,
    key: &str,
) -> Result<Option<T>, StorageError> {
    Ok(storage
        .setting(key)
        .await?
        .and_then(|value| serde_json::from_slice(&value).ok()))
}

/// A shard-local one-waiter event.
#[derive(Default)]
pub struct LocalNotify {
    notified: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl LocalNotify {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// The driver's side of one connection: its socket for direct writes, and how the core wakes its task.
pub struct ConnHandle {
    /// The socket, written directly by the shard's flusher while the connection's task sleeps (`None` for TLS,
    /// whose bytes the task must encrypt: the flusher wakes the task instead).
    pub fd: Option<RawFd>,
    pub wake: LocalNotify,
    /// Set when the core says to end the connection now.
    pub cut: Cell<bool>,
    /// Set while the connection's task holds bytes it is writing; the flusher leaves the socket alone then.
    pub writing: Cell<bool>,
    /// Bytes a direct write could not finish (the socket was full), for the task to write first.
    pub pending: RefCell<Option<Vec<u8>>>,
}

impl ConnHandle {
    fn new(fd: Option<RawFd>) -> ConnHandle {
        ConnHandle {
            fd,
            wake: LocalNotify::default(),
            cut: Cell::new(false),
            writing: Cell::new(false),
            pending: RefCell::new(None),
        }
    }
}

/// One non-blocking `send`; never raises SIGPIPE.
pub fn send_now(fd: RawFd, bytes: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `bytes` is a valid buffer of its length; `fd` is an open socket owned by a live connection (the
    // handle is removed before the socket is closed).
    let sent = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Ordered queue of messages to one other shard, drained by its pump task.
#[derive(Default)]
struct Outbox {
    queue: RefCell<Vec<PeerMsg>>,
    notify: LocalNotify,
}

/// One shard's driver. Lives in an `Rc` on its executor thread.
pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub core: RefCell<ShardCore>,
    styler: Rc<dyn Styler>,
    handles: RefCell<HashMap<ConnId, Rc<ConnHandle>>>,
    outboxes: Vec<Outbox>,
    /// The read buffer all connections share.
    pub read_scratch: RefCell<Vec<u8>>,
    /// Write buffers handed to connections while they write and taken back after.
    write_buffers: RefCell<Vec<Vec<u8>>>,
    /// Notified whenever the core's in-flight count may have reached zero.
    in_flight_idle: LocalNotify,
    pumping: Cell<bool>,
    /// Connections with new bytes, written by the flusher once the shard has worked through what is runnable.
    dirty: RefCell<Vec<ConnId>>,
    flush_needed: LocalNotify,
    /// Notified when a busy room's lines wait for the write delay (see [`CoreConfig::write_delay_ms`]).
    delayed_lines: LocalNotify,
    direct_buffer: RefCell<Vec<u8>>,
    /// Connections open on the metrics listener.
    metrics_connections: Cell<usize>,
    /// HTTP API commands waiting for their answer, by ticket.
    api_waiters: RefCell<HashMap<u64, futures_channel::oneshot::Sender<CommandReply>>>,
    next_api_ticket: Cell<u64>,
}

/// Builds the core's configuration from the command line.
pub fn core_config(shared: &Shared, shard: usize) -> CoreConfig {
    let args = &shared.args;
    CoreConfig {
        shard,
        shard_count: shared.shard_count,
        node_id: args.node_id,
        rooms: shared.room_infos.clone(),
        session: Rc::new(SessionConfig {
            server_name: args.server_name.clone(),
            joins_per_window_max: args.joins_per_window_max,
            join_window_ms: args.join_window_ms,
            known_rooms: Some(shared.rooms.iter().map(|r| r.name.clone()).collect()),
            ..SessionConfig::default()
        }),
        rate: RateLimitConfig {
            messages_per_window_max: args.rate_limit_messages,
            messages_per_window_max_mod: args.rate_limit_messages_mod,
            window_ms: args.rate_limit_window_ms,
            users_tracked_max: 1_000_000,
        },
        outbound_queue_bytes_max: args.outbound_queue_bytes_max,
        outbound_bytes_per_shard_max: args.outbound_bytes_per_shard_max,
        connections_max: args.connections_per_shard_max,
        submits_in_flight_per_conn_max: SUBMITS_IN_FLIGHT_PER_CONN_MAX,
        sequencing_in_flight_max: SEQUENCING_IN_FLIGHT_MAX,
        submit_age_ms_max: SUBMIT_AGE_MS_MAX,
        dedupe_window_ms: DEDUPE_WINDOW_MS,
        dedupe_entries_max: DEDUPE_ENTRIES_MAX,
        idle_ping_ms: args.idle_ping_secs.max(1) * 1000,
        idle_timeout_ms: args.idle_timeout_secs.max(1) * 1000,
        registration_timeout_ms: args.registration_timeout_ms.max(1),
        close_grace_ms: CLOSE_GRACE_MS,
        write_delay_ms: args.write_delay_ms,
        deliver_from_feed: !args.cluster.trim().is_empty(),
        metrics: shared.metrics.clone(),
        viewers: shared.viewers.clone(),
    }
}

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Shard> {
        let core = ShardCore::new(core_config(&shared, id));
        Rc::new(Shard {
            id,
            styler: shared.styler_factory.local_styler(id),
            core: RefCell::new(core),
            handles: RefCell::default(),
            outboxes: (0..shared.shard_count).map(|_| Outbox::default()).collect(),
            read_scratch: RefCell::new(vec![0; READ_SCRATCH_BYTES]),
            write_buffers: RefCell::default(),
            in_flight_idle: LocalNotify::default(),
            pumping: Cell::new(false),
            dirty: RefCell::default(),
            flush_needed: LocalNotify::default(),
            delayed_lines: LocalNotify::default(),
            direct_buffer: RefCell::default(),
            metrics_connections: Cell::new(0),
            api_waiters: RefCell::default(),
            next_api_ticket: Cell::new(1),
            shared,
        })
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics[self.id]
    }

    /// Loads the recent messages of the rooms homed here, so history on join and idempotent resends survive
    /// restarts.
    pub async fn load_history(&self) -> Result<(), StorageError> {
        for room in 0..self.shared.rooms.len() {
            if crate::core::home_shard(room, self.shared.shard_count) != self.id {
                continue;
            }
            let name = &self.shared.rooms[room].name;
            let preloaded = self
                .shared
                .cluster
                .as_ref()
                .and_then(|cluster| take_slot(&cluster.rooms[room]));
            // Enough recent messages for the last-10 history and for resends within the idempotency window (in
            // a cluster, what was read with the feed's starting point, so the two meet exactly).
            let records = match preloaded {
                Some(records) => records,
                None => {
                    self.shared
                        .storage
                        .recent_messages(name, DEDUPE_RESTORE_MESSAGES_MAX)
                        .await?
                }
            };
            // Reaction counts of the messages reactions may still come for, so counting goes on from them.
            let mut reactions = HashMap::new();
            let window = records
                .len()
                .saturating_sub(crate::core::DELETABLE_MESSAGES_MAX);
            for record in &records[window..] {
                let key = crate::core::moderation::keys::reactions(name, record.id);
                if let Some(counts) = json_setting(&self.shared.storage, &key).await? {
                    reactions.insert(record.id, counts);
                }
            }
            // Replies replayed on JOIN carry their parent's tags: read the links of the last few back.
            let mut replies = HashMap::new();
            let skip = records.len().saturating_sub(crate::core::HISTORY_ON_JOIN);
            for record in &records[skip..] {
                let key = crate::core::moderation::keys::reply(name, record.id);
                let stored: Option<crate::core::moderation::StoredReply> =
                    json_setting(&self.shared.storage, &key).await?;
                if let Some(stored) = stored {
                    replies.insert(record.id, stored.into());
                }
            }
            self.core
                .borrow_mut()
                .restore_room(room, records, replies, reactions, unix_ms());
            let settings = self
                .shared
                .storage
                .settings(
                    &crate::core::moderation::keys::room_prefix(name),
                    crate::core::moderation::SETTINGS_PER_ROOM_MAX,
                )
                .await?;
            self.core
                .borrow_mut()
                .restore_moderation(room, settings, unix_ms());
        }
        Ok(())
    }

    /// Starts one pump task per other shard, the keep-alive ticker and the write-delay flusher.
    pub fn start(self: &Rc<Self>) -> Vec<glommio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for dest in 0..self.shared.shard_count {
            if dest == self.id {
                continue;
            }
            let shard = self.clone();
            tasks.push(glommio::spawn_local(async move { shard.send_loop(dest).await }).detach());
        }
        let shard = self.clone();
        tasks.push(glommio::spawn_local(async move { shard.flush_loop().await }).detach());
        // One feed per room homed here (each its own consumer, so `/metrics` shows each room's lag).
        if let Some(cluster) = self.shared.cluster.as_ref() {
            let homed = (0..self.shared.rooms.len())
                .filter(|&room| crate::core::home_shard(room, self.shared.shard_count) == self.id);
            for room in homed {
                if let Some(feed) = take_slot(&cluster.feeds[room]) {
                    let shard = self.clone();
                    tasks.push(
                        glommio::spawn_local(async move { shard.feed_loop(feed).await }).detach(),
                    );
                }
            }
        }
        if let Some((settings, deletions)) = self
            .shared
            .cluster
            .as_ref()
            .and_then(|cluster| take_slot(&cluster.watches[self.id]))
        {
            let shard = self.clone();
            tasks.push(
                glommio::spawn_local(async move { shard.settings_loop(settings).await }).detach(),
            );
            let shard = self.clone();
            tasks.push(
                glommio::spawn_local(async move { shard.deletions_loop(deletions).await }).detach(),
            );
        }
        let shard = self.clone();
        tasks.push(
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
                    shard.core.borrow_mut().tick(unix_ms());
                    shard.pump();
                }
            })
            .detach(),
        );
        let delay_ms = self.shared.args.write_delay_ms;
        if delay_ms > 0 {
            let shard = self.clone();
            tasks.push(
                glommio::spawn_local(async move {
                    loop {
                        let due = shard.core.borrow().delayed_flush_due_ms();
                        let Some(due_ms) = due else {
                            shard.delayed_lines.wait().await;
                            continue;
                        };
                        let wait_ms = due_ms.saturating_sub(unix_ms());
                        if wait_ms > 0 {
                            glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
                        }
                        shard.core.borrow_mut().flush_delayed(unix_ms());
                        shard.pump();
                    }
                })
                .detach(),
            );
        }
        tasks
    }

    async fn send_loop(&self, dest: usize) {
        let outbox = &self.outboxes[dest];
        let sender = self.shared.inbound[dest].clone();
        loop {
            let batch = std::mem::take(&mut *outbox.queue.borrow_mut());
            if batch.is_empty() {
                outbox.notify.wait().await;
                continue;
            }
            self.core.borrow_mut().set_congested(false);
            if sender.send_async(batch).await.is_err() {
                // The destination has exited (shutdown): nothing more can reach it.
                return;
            }
        }
    }

    /// Runs `work` as a task of this shard, then hands its result to the core with `done` (with the time it
    /// finished) and carries out what the core decided: how every request to the authenticator and the store
    /// comes back.
    fn complete_later<T: 'static>(
        self: &Rc<Self>,
        work: impl Future<Output = T> + 'static,
        done: impl FnOnce(&mut ShardCore, T, u64) + 'static,
    ) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            let result = work.await;
            done(&mut shard.core.borrow_mut(), result, unix_ms());
            shard.pump();
        })
        .detach();
    }

    /// Runs a chat command for the HTTP API; the answer arrives when the room's home has carried it out.
    pub fn api_command(
        self: &Rc<Self>,
        room: usize,
        actor: Actor,
        command: ChatCommand,
    ) -> futures_channel::oneshot::Receiver<CommandReply> {
        let ticket = self.next_api_ticket.get();
        self.next_api_ticket.set(ticket + 1);
        let (reply, answer) = futures_channel::oneshot::channel();
        self.api_waiters.borrow_mut().insert(ticket, reply);
        self.core
            .borrow_mut()
            .api_command(ticket, room, actor, command, unix_ms());
        self.pump();
        answer
    }

    /// Handles a batch of messages from another shard.
    pub fn receive(self: &Rc<Self>, batch: PeerBatch) {
        let now_ms = unix_ms();
        {
            let mut core = self.core.borrow_mut();
            for msg in batch {
                core.peer(msg, now_ms);
            }
        }
        self.pump();
    }

    /// Carries out everything the core asked for. Never awaits.
    pub fn pump(self: &Rc<Self>) {
        // Outputs may feed the core again (a store refusal); the loop picks up what that adds.
        if self.pumping.replace(true) {
            return;
        }
        loop {
            let next = self.core.borrow_mut().pop_output();
            let Some(output) = next else {
                break;
            };
            match output {
                Output::Peer { shard, msg } => {
                    let outbox = &self.outboxes[shard];
                    let len = {
                        let mut queue = outbox.queue.borrow_mut();
                        queue.push(msg);
                        queue.len()
                    };
                    outbox.notify.notify();
                    if len >= OUTBOX_MESSAGES_MAX {
                        self.core.borrow_mut().set_congested(true);
                    }
                }
                Output::Flush(id) => {
                    self.dirty.borrow_mut().push(id);
                    self.flush_needed.notify();
                }
                Output::Wake(id) => {
                    if let Some(handle) = self.handles.borrow().get(&id) {
                        handle.wake.notify();
                    }
                }
                Output::Close(id) => {
                    if let Some(handle) = self.handles.borrow().get(&id) {
                        handle.cut.set(true);
                        handle.wake.notify();
                    }
                }
                Output::Authenticate { conn, login, token } => {
                    let storage = self.shared.storage.clone();
                    let check = async move {
                        match crate::auth::check_token(&storage, &login, &token).await {
                            crate::auth::TokenCheck::Valid(identity) => {
                                AuthOutcome::Valid(identity)
                            }
                            crate::auth::TokenCheck::Invalid => AuthOutcome::Invalid,
                            crate::auth::TokenCheck::Unavailable => AuthOutcome::Unavailable,
                        }
                    };
                    self.complete_later(check, move |core, outcome, now_ms| {
                        core.auth_done(conn, outcome, now_ms)
                    });
                }
                Output::Style(request) => {
                    let shard = self.clone();
                    glommio::spawn_local(async move {
                        let styled = {
                            let style = shard.core.borrow().room_style(request.room).to_owned();
                            let started = std::time::Instant::now();
                            let styled = shard
                                .styler
                                .style(&style, &request.text, request.seed)
                                .await;
                            shard
                                .metrics()
                                .style_latency
                                .record_us(started.elapsed().as_micros() as u64);
                            styled
                        };
                        shard.core.borrow_mut().styled(
                            request.ticket,
                            styled.text,
                            styled.by,
                            unix_ms(),
                        );
                        shard.pump();
                    })
                    .detach();
                }
                Output::ResolveUser { ticket, login } => {
                    let storage = self.shared.storage.clone();
                    let lookup = async move {
                        let account = storage.account(&login).await;
                        account.map(|found| found.map(|a| a.user_id))
                    };
                    self.complete_later(lookup, move |core, resolved, now_ms| {
                        core.user_resolved(ticket, resolved, now_ms)
                    });
                }
                Output::PutSetting { ticket, key, value } => {
                    let storage = self.shared.storage.clone();
                    let write = async move {
                        match value {
                            Some(value) => storage.put_setting(&key, value).await,
                            None => storage.delete_setting(&key).await,
                        }
                    };
                    self.complete_later(write, move |core, result, now_ms| {
                        core.write_done(ticket, result, now_ms)
                    });
                }
                Output::ReadSettings {
                    ticket,
                    prefix,
                    limit,
                } => {
                    let storage = self.shared.storage.clone();
                    let read = async move { storage.settings(&prefix, limit).await };
                    self.complete_later(read, move |core, result, now_ms| {
                        core.settings_read(ticket, result, now_ms)
                    });
                }
                Output::DeleteMessage { ticket, room, id } => {
                    let storage = self.shared.storage.clone();
                    let name = self.shared.rooms[room].name.clone();
                    let delete = async move { storage.delete_message(&name, id).await.map(|_| ()) };
                    self.complete_later(delete, move |core, result, now_ms| {
                        core.write_done(ticket, result, now_ms)
                    });
                }
                Output::ApiReply { ticket, reply } => {
                    if let Some(waiter) = self.api_waiters.borrow_mut().remove(&ticket) {
                        // The request may have gone away (client closed): nobody to answer.
                        let _ = waiter.send(reply);
                    }
                }
                Output::Store { room, record } => {
                    let id = record.id;
                    match self.shared.storage.try_append(record) {
                        Ok(ack) => {
                            let shard = self.clone();
                            glommio::spawn_local(async move {
                                let outcome = ack.outcome().await;
                                match outcome {
                                    Ok(AppendOutcome::Duplicate { original }) => {
                                        // The shared log already had it (a resend through another node).
                                        shard.core.borrow_mut().stored_duplicate(
                                            room,
                                            id,
                                            original,
                                            unix_ms(),
                                        );
                                    }
                                    Ok(AppendOutcome::Stored) => {
                                        shard.core.borrow_mut().stored(room, id, Ok(()), unix_ms())
                                    }
                                    Err(err) => {
                                        log::error!("storing message {id} failed: {err}");
                                        shard.core.borrow_mut().stored(
                                            room,
                                            id,
                                            Err(err),
                                            unix_ms(),
                                        );
                                    }
                                }
                                shard.pump();
                            })
                            .detach();
                        }
                        Err(rejected) => {
                            self.core
                                .borrow_mut()
                                .stored(room, id, Err(rejected.error), unix_ms());
                        }
                    }
                }
            }
        }
        self.pumping.set(false);
        let core = self.core.borrow();
        if core.in_flight() == 0 {
            self.in_flight_idle.notify();
        }
        if core.delayed_flush_due_ms().is_some() {
            self.delayed_lines.notify();
        }
    }

    /// Cluster mode: hands the core every change of a setting of the rooms homed here, made through any node, in
    /// the order the changes were made (the watch of every room's settings; other shards' rooms are skipped).
    async fn settings_loop(self: Rc<Self>, changes: twitchy_storage::SettingChanges) {
        while let Ok(change) = changes.receiver().recv_async().await {
            let name = change
                .key
                .strip_prefix("room/")
                .and_then(|rest| rest.split_once('/'))
                .map_or("", |(name, _)| name);
            let Some(room) = self.homed_room(name) else {
                continue;
            };
            self.core.borrow_mut().shared_setting_changed(
                room,
                &change.key,
                change.value.as_deref(),
                unix_ms(),
            );
            self.pump();
        }
        log::error!("shard {}: the watch of the rooms' settings ended", self.id);
    }

    /// Cluster mode: hands the core every deletion of a message of the rooms homed here, made through this node
    /// or another (the watch of every room's deletions; other shards' rooms are skipped).
    async fn deletions_loop(self: Rc<Self>, deletions: twitchy_storage::Deletions) {
        while let Ok((name, id)) = deletions.receiver().recv_async().await {
            let Some(room) = self.homed_room(&name) else {
                continue;
            };
            self.core.borrow_mut().deleted_in_log(room, id, unix_ms());
            self.pump();
        }
        log::error!("shard {}: the watch of the rooms' deletions ended", self.id);
    }

    /// The index of the room named `name`, if it is homed on this shard.
    fn homed_room(&self, name: &str) -> Option<usize> {
        self.shared
            .room(name)
            .filter(|&room| crate::core::home_shard(room, self.shared.shard_count) == self.id)
    }

    /// Cluster mode: hands every committed message of the rooms homed here to the core, in the log's order.
    async fn feed_loop(self: Rc<Self>, feed: twitchy_storage::Feed) {
        let Some(cluster) = self.shared.cluster.as_ref() else {
            return;
        };
        while let Ok(item) = feed.receiver().recv_async().await {
            let Some(room) = self.shared.room(&item.record.room) else {
                continue;
            };
            if item.seq < cluster.feed_from_seq[room] {
                // Already in the history the room started with.
                continue;
            }
            self.core
                .borrow_mut()
                .committed(room, item.record, unix_ms());
            self.pump();
        }
        log::error!("shard {}: the cluster feed ended", self.id);
    }

    /// Writes what is queued for every connection flushed since the last pass. It runs after the tasks that were
    /// runnable when the first connection was flushed, so everything they queued leaves in one write per
    /// connection, and a connection's task is not woken for it at all unless its socket is full.
    async fn flush_loop(&self) {
        loop {
            self.flush_needed.wait().await;
            let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
            for id in dirty {
                self.flush_direct(id);
            }
        }
    }

    fn flush_direct(&self, id: ConnId) {
        let Some(handle) = self.handles.borrow().get(&id).cloned() else {
            return;
        };
        if handle.writing.get() || handle.cut.get() {
            // The connection's task is writing; it takes what is queued when it is done.
            return;
        }
        let Some(fd) = handle.fd else {
            // A TLS connection: its task encrypts and writes what is queued.
            handle.wake.notify();
            return;
        };
        let mut buffer = self.direct_buffer.borrow_mut();
        // A queue larger than one gather is written in several sends, as long as the socket takes them whole.
        loop {
            buffer.clear();
            if self
                .core
                .borrow_mut()
                .take_writes(id, &mut buffer, crate::shard::unix_ms())
                == 0
            {
                break;
            }
            ShardMetrics::inc(&self.metrics().socket_writes_total);
            // A full (or failing) socket sends nothing: the task then waits for it (or finds the error and ends
            // the connection).
            let sent = send_now(fd, &buffer).unwrap_or_default();
            if sent < buffer.len() {
                *handle.pending.borrow_mut() = Some(buffer[sent..].to_vec());
                handle.writing.set(true);
                handle.wake.notify();
                break;
            }
        }
        if buffer.capacity() > 4 * crate::core::WRITE_GATHER_BYTES_MAX {
            *buffer = Vec::new();
        }
    }

    // ----- connections (for the connection driver) -----

    /// Counts a new HTTP connection; false at the connection limit (chat and HTTP connections together).
    pub fn http_open(&self) -> bool {
        self.core.borrow_mut().http_open()
    }

    /// An HTTP connection ended or was upgraded.
    pub fn http_closed(&self) {
        self.core.borrow_mut().http_closed();
    }

    /// Counts a connection on the metrics listener; false past `max` (it has its own small limit, so monitoring
    /// still gets in while chat connections are at theirs).
    pub fn metrics_conn_open(&self, max: usize) -> bool {
        let open = self.metrics_connections.get();
        if open >= max {
            return false;
        }
        self.metrics_connections.set(open + 1);
        true
    }

    pub fn metrics_conn_closed(&self) {
        self.metrics_connections
            .set(self.metrics_connections.get().saturating_sub(1));
    }

    /// Registers a new connection on socket `fd` (`None`: no direct writes, as for TLS); `None` at the connection
    /// limit.
    pub fn open_conn(
        &self,
        transport: Transport,
        fd: Option<RawFd>,
    ) -> Option<(ConnId, Rc<ConnHandle>)> {
        let id = self.core.borrow_mut().conn_open(transport, unix_ms())?;
        let handle = Rc::new(ConnHandle::new(fd));
        self.handles.borrow_mut().insert(id, handle.clone());
        Some((id, handle))
    }

    /// Stops direct writes to the connection's socket: call before the socket is closed.
    pub fn forget_socket(&self, id: ConnId) {
        self.handles.borrow_mut().remove(&id);
    }

    /// Bytes from a client.
    pub fn conn_input(self: &Rc<Self>, id: ConnId, bytes: &[u8]) {
        self.core.borrow_mut().conn_input(id, bytes, unix_ms());
        self.pump();
    }

    /// The connection's socket is closed (its handle was forgotten before, with [`Shard::forget_socket`]).
    pub fn close_conn(self: &Rc<Self>, id: ConnId) {
        debug_assert!(
            !self.handles.borrow().contains_key(&id),
            "socket forgotten first"
        );
        self.core.borrow_mut().conn_closed(id);
        self.pump();
    }

    pub fn take_write_buffer(&self) -> Vec<u8> {
        self.write_buffers.borrow_mut().pop().unwrap_or_default()
    }

    pub fn give_write_buffer(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut pool = self.write_buffers.borrow_mut();
        // Keep a few ordinary-sized buffers; idle connections hold none.
        if pool.len() < 64 && buffer.capacity() <= 2 * crate::core::WRITE_GATHER_BYTES_MAX {
            pool.push(buffer);
        }
    }

    // ----- shutdown -----

    /// Refuses new messages from now on.
    pub fn begin_shutdown(&self) {
        self.core.borrow_mut().begin_shutdown();
    }

    /// Waits until every message this shard sequenced is acknowledged or failed.
    pub async fn drain_in_flight(&self) {
        while self.core.borrow().in_flight() > 0 {
            self.in_flight_idle.wait().await;
        }
    }

    /// Tells every client to reconnect (after what is queued) and lets the writers flush.
    pub fn close_all(self: &Rc<Self>) {
        self.core.borrow_mut().close_all_with_reconnect(unix_ms());
        self.pump();
    }

    pub fn connection_count(&self) -> usize {
        self.core.borrow().connection_count()
    }
}
