//! The coalescing writer and the request pools: the only place where store calls (blocking IO) happen.
//!
//! Shards call [`StorageHandle::append`], which moves the record into a bounded flume channel with `try_send` and
//! returns an [`AppendAck`] future at once. One writer thread drains the channel into batches — at most
//! `batch_messages_max` messages or `batch_bytes_max` bytes, gathered for at most `batch_wait_us_max` after the
//! first message of the batch arrived — hands each batch to [`Store::append_messages`] (which makes it durable) and
//! only then completes the batch's acknowledgements. While one batch is being written and fsynced, the next one
//! queues up in the channel, so under load the batch size grows with the fsync latency and one fsync covers
//! thousands of messages (group commit). While it gathers, the writer takes what is queued and then sleeps until
//! the window closes, rather than being woken for every message that arrives (at five times the seed's peak that
//! was about 200,000 wake-ups a second, the largest item in the writer thread's profile); a handle wakes it early
//! only when a full batch is queued, and shutdown at once. When the window closes, everything queued by then joins
//! the batch. When the channel is full, `append` fails with [`StorageError::Busy`] without writing anything:
//! memory stays bounded by `queue_messages_max` and the shard tells the sender to try again.
//!
//! Other requests go over three more bounded channels, each with its own threads, so that a flood of one kind
//! cannot starve another: *auth* (account and token lookups, what every login waits on), *history* (message
//! reads and settings scans), and *account writes* (registration, token grants and revocations, renames, message
//! deletions, settings writes). Replies come back on
//! `futures-channel` oneshots, which wake whatever executor polled them, so shards running glommio can await them.
//!
//! # Health
//!
//! A failed batch marks the writes failing: from then on `append` answers [`StorageError::Unavailable`] at once
//! (nothing is queued, so nothing can be shown or acknowledged), and the writer calls [`Store::recover`] every
//! `recover_interval_ms` until it succeeds, which clears the failure. [`StorageHandle::health`] combines this with
//! [`Store::health`]; a store that panicked reports [`Health::Failed`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use crate::error::{Result, StorageError};
use crate::id::MessageId;
use crate::metrics::WriterMetrics;
use crate::record::{AccountRecord, MessageRecord, TokenRecord};
use crate::{AppendOutcome, Clock, Health, Store, SystemClock};

/// Largest room name, in bytes, that the stores accept. Room names are Twitch logins (at most 25 characters); the
/// limit keeps keys small and bounded.
pub const ROOM_BYTES_MAX: usize = 255;

/// Limits of the coalescing writer and the request pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoalescerConfig {
    /// Most messages in one durable batch.
    pub batch_messages_max: usize,
    /// Most (estimated) bytes in one durable batch.
    pub batch_bytes_max: usize,
    /// How long the writer keeps gathering after the first message of a batch arrived, in microseconds.
    pub batch_wait_us_max: u64,
    /// Capacity of the append channel; beyond it [`StorageHandle::append`] returns [`StorageError::Busy`].
    pub queue_messages_max: usize,
    /// Threads serving history reads (they block on the store).
    pub read_threads: usize,
    /// History reads that may wait for a thread before `Busy` is returned.
    pub history_queue_requests_max: usize,
    /// Threads serving account and token lookups.
    pub auth_threads: usize,
    /// Account and token lookups that may wait for a thread before `Busy` is returned.
    pub auth_queue_requests_max: usize,
    /// Threads serving account creation and token grants and revocations.
    pub account_write_threads: usize,
    /// Account writes that may wait for a thread before `Busy` is returned.
    pub account_write_queue_requests_max: usize,
    /// How long a session token is valid after it is issued, in milliseconds.
    pub token_ttl_ms: u64,
    /// Most live tokens per login; issuing one more revokes the oldest.
    pub tokens_per_login_max: usize,
    /// While writes fail, how often the writer asks the store to recover, in milliseconds.
    pub recover_interval_ms: u64,
    /// How long [`StorageService::shutdown`] waits for the queued writes and the threads, in milliseconds; past it
    /// shutdown returns an error and leaves the threads behind (a hung cluster must not hang the process).
    pub shutdown_ms_max: u64,
}

/// Thirty days.
pub const TOKEN_TTL_MS_DEFAULT: u64 = 30 * 24 * 3600 * 1000;

impl Default for CoalescerConfig {
    fn default() -> Self {
        CoalescerConfig {
            batch_messages_max: 4096,
            batch_bytes_max: 4 << 20,
            batch_wait_us_max: 500,
            queue_messages_max: 65_536,
            read_threads: 1,
            history_queue_requests_max: 1024,
            auth_threads: 1,
            auth_queue_requests_max: 1024,
            account_write_threads: 1,
            account_write_queue_requests_max: 256,
            token_ttl_ms: TOKEN_TTL_MS_DEFAULT,
            tokens_per_login_max: 10,
            recover_interval_ms: 250,
            shutdown_ms_max: 15_000,
        }
    }
}

/// Estimated size of a record in a batch: its strings plus the fixed fields and per-record framing.
pub(crate) fn record_bytes(r: &MessageRecord) -> usize {
    64 + r.room.len()
        + r.login.len()
        + r.display_name.len()
        + r.color.len()
        + r.badges.len()
        + r.text.len()
        + r.original.len()
        + r.styled_by.len()
        + r.client_nonce.len()
}

/// Decides when a batch being gathered is complete. Sans-IO: the caller passes the time, so the window logic is
/// tested without sleeping.
#[derive(Debug, Clone)]
pub(crate) struct Gather {
    messages_max: usize,
    bytes_max: usize,
    wait: Duration,
    messages: usize,
    bytes: usize,
    deadline: Option<Instant>,
}

impl Gather {
    pub(crate) fn new(config: &CoalescerConfig) -> Gather {
        Gather {
            messages_max: config.batch_messages_max.max(1),
            bytes_max: config.batch_bytes_max.max(1),
            wait: Duration::from_micros(config.batch_wait_us_max),
            messages: 0,
            bytes: 0,
            deadline: None,
        }
    }

    /// Counts one more message of `bytes`; the first message of a batch opens the time window at `now`.
    pub(crate) fn push(&mut self, bytes: usize, now: Instant) {
        if self.messages == 0 {
            self.deadline = Some(now + self.wait);
        }
        self.messages += 1;
        self.bytes += bytes;
    }

    /// The batch must be written now because a size limit is reached. A single message larger than
    /// `batch_bytes_max` still forms a batch of its own.
    pub(crate) fn is_full(&self) -> bool {
        self.messages >= self.messages_max || self.bytes >= self.bytes_max
    }

    /// When the time window closes; `None` while the batch is empty.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The window has closed at `now`.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// How many more messages fill the batch (at least 1).
    pub(crate) fn room_left(&self) -> usize {
        self.messages_max.saturating_sub(self.messages).max(1)
    }

    pub(crate) fn reset(&mut self) {
        self.messages = 0;
        self.bytes = 0;
        self.deadline = None;
    }
}

struct Pending {
    record: MessageRecord,
    ack: oneshot::Sender<Result<AppendOutcome>>,
    enqueued: Instant,
}

// Items travel by value through the channel; boxing the large variant would add an allocation per message to
// save space only in the rare stop item.
#[allow(clippy::large_enum_variant)]
enum WriterItem {
    Append(Pending),
    /// Sent once by [`StorageService::shutdown`] after the closed flag is set: write what is queued, then exit.
    Stop,
}

impl WriterItem {
    /// The record of an append that could not be queued. Only appends go through `try_send`.
    fn into_record(self) -> MessageRecord {
        match self {
            WriterItem::Append(p) => p.record,
            WriterItem::Stop => unreachable!("stop items are sent with a blocking send"),
        }
    }
}

/// An append that was not queued: why, and the record, handed back.
#[derive(Debug)]
pub struct AppendRejected {
    pub error: StorageError,
    pub record: MessageRecord,
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// A request for one of the pools; each pool serves only its own kinds.
enum Request {
    Recent {
        room: String,
        limit: usize,
        reply: Reply<Vec<MessageRecord>>,
    },
    Before {
        room: String,
        before: Option<MessageId>,
        limit: usize,
        reply: Reply<Vec<MessageRecord>>,
    },
    After {
        room: String,
        after: MessageId,
        limit: usize,
        reply: Reply<Vec<MessageRecord>>,
    },
    CreateAccount {
        account: AccountRecord,
        reply: Reply<()>,
    },
    Account {
        login: String,
        reply: Reply<Option<AccountRecord>>,
    },
    PutToken {
        token_sha256: [u8; 32],
        token: TokenRecord,
        tokens_per_login_max: usize,
        reply: Reply<()>,
    },
    Token {
        token_sha256: [u8; 32],
        reply: Reply<Option<TokenRecord>>,
    },
    RevokeToken {
        token_sha256: [u8; 32],
        reply: Reply<bool>,
    },
    RenameAccount {
        old_login: String,
        new_login: String,
        reply: Reply<AccountRecord>,
    },
    DeleteMessage {
        room: String,
        id: MessageId,
        reply: Reply<bool>,
    },
    PutSetting {
        key: String,
        value: Vec<u8>,
        reply: Reply<()>,
    },
    DeleteSetting {
        key: String,
        reply: Reply<()>,
    },
    Settings {
        prefix: String,
        limit: usize,
        reply: Reply<Vec<(String, Vec<u8>)>>,
    },
    /// One per pool thread, sent by [`StorageService::shutdown`].
    Stop,
}

/// Which pool a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    History,
    Auth,
    AccountWrite,
}

struct Shared {
    /// Set by shutdown before the stop items are queued; checked by every handle call.
    closed: AtomicBool,
    /// Why the last batch failed, until a batch or a recovery probe succeeds. `writes_failing` mirrors
    /// `is_some()` so that `append` checks one atomic.
    write_failure: Mutex<Option<String>>,
    writes_failing: AtomicBool,
    /// The store panicked: nothing more is acknowledged, ever.
    poisoned: AtomicBool,
    metrics: WriterMetrics,
    /// For health checks. Weak, so that handles kept after shutdown do not keep the store (and its files) open.
    store: Weak<dyn Store>,
    clock: Arc<dyn Clock>,
    token_ttl_ms: u64,
    tokens_per_login_max: usize,
    /// The writer thread, for the handles to wake it while it sleeps through a batch's window.
    writer_thread: OnceLock<std::thread::Thread>,
    /// While the writer sleeps through a batch's window: how many queued messages fill the batch (a handle that
    /// sees that many wakes it); 0 otherwise.
    writer_wake_at: AtomicUsize,
}

impl Shared {
    fn set_write_failure(&self, reason: Option<String>) {
        let failing = reason.is_some();
        *self.write_failure.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.writes_failing.store(failing, Ordering::Release);
    }

    fn write_failure(&self) -> Option<String> {
        self.write_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn health(&self) -> Health {
        if self.poisoned.load(Ordering::Acquire) {
            return Health::Failed("the store panicked while writing".into());
        }
        let Some(store) = self.store.upgrade() else {
            return Health::Unavailable("storage is shut down".into());
        };
        match store.health() {
            Health::Healthy => {}
            failed @ Health::Failed(_) => return failed,
            unavailable @ Health::Unavailable(_) => {
                return match self.write_failure() {
                    Some(reason) => Health::Unavailable(reason),
                    None => unavailable,
                };
            }
        }
        match self.write_failure() {
            Some(reason) => Health::Unavailable(reason),
            None => Health::Healthy,
        }
    }
}

/// Resolves `Ok(())` once the record is durable, or with the error of its batch. If the writer went away without
/// writing the record (the service shut down first), it resolves `Err(Closed)`. Works on any executor.
///
/// With a store that recognises resends across nodes (the cluster store), `Ok(())` may also mean that an
/// earlier copy of the message is durable under another id: use [`AppendAck::outcome`] to learn which.
#[must_use = "an append is only durable once its acknowledgement resolves Ok"]
#[derive(Debug)]
pub struct AppendAck {
    rx: oneshot::Receiver<Result<AppendOutcome>>,
}

impl AppendAck {
    /// The acknowledgement with what the store did: [`AppendOutcome::Stored`], or
    /// [`AppendOutcome::Duplicate`] with the id of the message stored earlier, which the sender must be
    /// acknowledged with (this record is not stored and must not be shown).
    pub fn outcome(self) -> AppendOutcomeAck {
        AppendOutcomeAck { rx: self.rx }
    }
}

impl Future for AppendAck {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result.map(|_| ())),
            Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(Err(StorageError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// [`AppendAck`] with the store's [`AppendOutcome`]; see [`AppendAck::outcome`].
#[must_use = "an append is only durable once its acknowledgement resolves Ok"]
#[derive(Debug)]
pub struct AppendOutcomeAck {
    rx: oneshot::Receiver<Result<AppendOutcome>>,
}

impl Future for AppendOutcomeAck {
    type Output = Result<AppendOutcome>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<AppendOutcome>> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(Err(StorageError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A cheap, cloneable entry point to the storage threads; safe to use from any thread or shard.
#[derive(Clone)]
pub struct StorageHandle {
    writer_tx: flume::Sender<WriterItem>,
    history_tx: flume::Sender<Request>,
    auth_tx: flume::Sender<Request>,
    account_write_tx: flume::Sender<Request>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StorageHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageHandle")
            .field("queue_depth", &self.writer_tx.len())
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl StorageHandle {
    /// Queues a message for the next durable batch. Never blocks. `Err(Busy)` when the queue is full,
    /// `Err(Unavailable)` while the store is failing, and `Err(Closed)` after shutdown; in each case nothing was
    /// written.
    pub fn append(&self, record: MessageRecord) -> Result<AppendAck> {
        self.try_append(record).map_err(|rejected| rejected.error)
    }

    /// Like [`append`](Self::append), but a rejected record is handed back with the reason, so the caller can
    /// offer it again later without having cloned it.
    // The error is large because it carries the record back; that is its purpose, and it is moved, not copied
    // around.
    #[allow(clippy::result_large_err)]
    pub fn try_append(
        &self,
        record: MessageRecord,
    ) -> std::result::Result<AppendAck, AppendRejected> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(AppendRejected {
                error: StorageError::Closed,
                record,
            });
        }
        if self.shared.writes_failing.load(Ordering::Acquire)
            || self.shared.poisoned.load(Ordering::Acquire)
        {
            self.shared.metrics.record_unavailable();
            let reason = self
                .shared
                .health()
                .reason()
                .unwrap_or("storage is recovering")
                .to_owned();
            return Err(AppendRejected {
                error: StorageError::Unavailable(reason),
                record,
            });
        }
        if let Err(error) = check_room(&record.room) {
            return Err(AppendRejected { error, record });
        }
        let (ack, rx) = oneshot::channel();
        let pending = Pending {
            record,
            ack,
            enqueued: Instant::now(),
        };
        match self.writer_tx.try_send(WriterItem::Append(pending)) {
            Ok(()) => {
                let wake_at = self.shared.writer_wake_at.load(Ordering::SeqCst);
                if wake_at != 0
                    && self.writer_tx.len() >= wake_at
                    && let Some(writer) = self.shared.writer_thread.get()
                {
                    writer.unpark();
                }
                Ok(AppendAck { rx })
            }
            Err(flume::TrySendError::Full(item)) => {
                self.shared.metrics.record_busy();
                Err(AppendRejected {
                    error: StorageError::Busy,
                    record: item.into_record(),
                })
            }
            Err(flume::TrySendError::Disconnected(item)) => Err(AppendRejected {
                error: StorageError::Closed,
                record: item.into_record(),
            }),
        }
    }

    /// The room's newest `limit` messages, oldest first.
    pub async fn recent_messages(&self, room: &str, limit: usize) -> Result<Vec<MessageRecord>> {
        check_room(room)?;
        self.request(Pool::History, |reply| Request::Recent {
            room: room.to_owned(),
            limit,
            reply,
        })
        .await
    }

    /// Up to `limit` messages with id `< before` (all if `None`), newest first.
    pub async fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        check_room(room)?;
        self.request(Pool::History, |reply| Request::Before {
            room: room.to_owned(),
            before,
            limit,
            reply,
        })
        .await
    }

    /// Up to `limit` messages with id `> after`, oldest first: how a client that reconnects catches up, page by
    /// page, passing the newest id it has. Deleted messages are skipped and the page filled from newer ones.
    pub async fn messages_after(
        &self,
        room: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        check_room(room)?;
        self.request(Pool::History, |reply| Request::After {
            room: room.to_owned(),
            after,
            limit,
            reply,
        })
        .await
    }

    /// Creates an account durably; `AlreadyExists` if the login is taken.
    pub async fn create_account(&self, account: AccountRecord) -> Result<()> {
        self.request(Pool::AccountWrite, |reply| Request::CreateAccount {
            account,
            reply,
        })
        .await
    }

    /// Looks an account up by login.
    pub async fn account(&self, login: &str) -> Result<Option<AccountRecord>> {
        self.request(Pool::Auth, |reply| Request::Account {
            login: login.to_owned(),
            reply,
        })
        .await
    }

    /// Records a session token (its SHA-256) for a login, durably, valid for `token_ttl_ms` from now. If the login
    /// then has more than `tokens_per_login_max` live tokens, the oldest are revoked.
    pub async fn put_token(&self, token_sha256: [u8; 32], login: &str) -> Result<()> {
        let now = self.shared.clock.now_unix_ms();
        let token = TokenRecord {
            login: login.to_owned(),
            issued_unix_ms: now,
            expires_unix_ms: now.saturating_add(self.shared.token_ttl_ms),
        };
        let tokens_per_login_max = self.shared.tokens_per_login_max;
        self.request(Pool::AccountWrite, |reply| Request::PutToken {
            token_sha256,
            token,
            tokens_per_login_max,
            reply,
        })
        .await
    }

    /// The login a live token (by its SHA-256) belongs to: `Ok(None)` for an unknown, revoked or expired token
    /// (the token is invalid), `Err` when the store cannot tell (try again; the token may well be valid).
    pub async fn login_for_token(&self, token_sha256: [u8; 32]) -> Result<Option<String>> {
        let token = self.token(token_sha256).await?;
        let now = self.shared.clock.now_unix_ms();
        Ok(token.filter(|t| t.is_live(now)).map(|t| t.login))
    }

    /// The stored grant of a token, expired or not.
    pub async fn token(&self, token_sha256: [u8; 32]) -> Result<Option<TokenRecord>> {
        self.request(Pool::Auth, |reply| Request::Token {
            token_sha256,
            reply,
        })
        .await
    }

    /// Revokes a token (logout); `Ok(false)` if it was not known.
    pub async fn revoke_token(&self, token_sha256: [u8; 32]) -> Result<bool> {
        self.request(Pool::AccountWrite, |reply| Request::RevokeToken {
            token_sha256,
            reply,
        })
        .await
    }

    /// Moves an account to a new login, keeping its user id, password hash, colour, creation time and tokens
    /// (see [`Store::rename_account`]); `AlreadyExists` if the new login is taken, `NotFound` if the old one has
    /// no account.
    pub async fn rename_account(&self, old_login: &str, new_login: &str) -> Result<AccountRecord> {
        self.request(Pool::AccountWrite, |reply| Request::RenameAccount {
            old_login: old_login.to_owned(),
            new_login: new_login.to_owned(),
            reply,
        })
        .await
    }

    /// Marks a message deleted durably, so that history never returns it again; `Ok(false)` if the room has no
    /// message with this id. An account write: it is rare, and must not wait behind a flood of history reads.
    pub async fn delete_message(&self, room: &str, id: MessageId) -> Result<bool> {
        check_room(room)?;
        self.request(Pool::AccountWrite, |reply| Request::DeleteMessage {
            room: room.to_owned(),
            id,
            reply,
        })
        .await
    }

    /// Sets a settings key durably (see [`crate::settings`] for keys and limits).
    pub async fn put_setting(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.request(Pool::AccountWrite, |reply| Request::PutSetting {
            key: key.to_owned(),
            value,
            reply,
        })
        .await
    }

    /// Removes a settings key durably.
    pub async fn delete_setting(&self, key: &str) -> Result<()> {
        self.request(Pool::AccountWrite, |reply| Request::DeleteSetting {
            key: key.to_owned(),
            reply,
        })
        .await
    }

    /// Every settings key starting with `prefix` (at most `limit`), in key order. Served by the history pool:
    /// a scan of a room's settings is a bounded range read like a history page, and keeping it off the auth pool
    /// means loading a room with many bans cannot delay logins.
    pub async fn settings(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>> {
        self.request(Pool::History, |reply| Request::Settings {
            prefix: prefix.to_owned(),
            limit,
            reply,
        })
        .await
    }

    /// The value of one settings key, if it is set: a scan with the whole key as the prefix, keeping only the
    /// exact key (a longer key that starts with it is another setting).
    pub async fn setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .settings(key, 1)
            .await?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value))
    }

    /// Whether the store takes writes, and if not why. Cheap; meant for `/healthz`.
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// Shorthand for `health().is_healthy()`.
    pub fn is_healthy(&self) -> bool {
        self.health().is_healthy()
    }

    /// Prometheus text for the writer's counters, histograms, queue depth and health, then the store's own
    /// ([`Store::metrics_text`]).
    pub fn metrics_text(&self) -> String {
        let health = self.health();
        let mut out = self.shared.metrics.render(
            self.writer_tx.len(),
            &[
                ("history", self.history_tx.len()),
                ("auth", self.auth_tx.len()),
                ("account_write", self.account_write_tx.len()),
            ],
            &health,
        );
        if let Some(store) = self.shared.store.upgrade() {
            out.push_str(&store.metrics_text());
        }
        out
    }

    /// Messages waiting for the writer right now.
    pub fn queue_depth(&self) -> usize {
        self.writer_tx.len()
    }

    async fn request<T>(&self, pool: Pool, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let tx = match pool {
            Pool::History => &self.history_tx,
            Pool::Auth => &self.auth_tx,
            Pool::AccountWrite => &self.account_write_tx,
        };
        let (reply, rx) = oneshot::channel();
        match tx.try_send(make(reply)) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                self.shared.metrics.record_busy();
                return Err(StorageError::Busy);
            }
            Err(flume::TrySendError::Disconnected(_)) => return Err(StorageError::Closed),
        }
        rx.await.unwrap_or(Err(StorageError::Closed))
    }
}

/// A room name every store accepts: 1 to [`ROOM_BYTES_MAX`] bytes.
pub(crate) fn check_room(room: &str) -> Result<()> {
    if room.is_empty() || room.len() > ROOM_BYTES_MAX {
        return Err(StorageError::Invalid(format!(
            "room name must be 1..={ROOM_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// The running writer and pool threads. Dropping it shuts it down like [`StorageService::shutdown`].
pub struct StorageService {
    handle: StorageHandle,
    writer: Option<JoinHandle<Result<()>>>,
    /// Pool threads with the channel that feeds each.
    pools: Vec<(JoinHandle<()>, Pool)>,
    shutdown_ms_max: u64,
}

impl std::fmt::Debug for StorageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageService")
            .field("handle", &self.handle)
            .field("pool_threads", &self.pools.len())
            .finish()
    }
}

impl StorageService {
    /// Spawns the writer thread and the pool threads (at least one each) over `store`, with the system clock.
    pub fn start(store: Arc<dyn Store>, config: CoalescerConfig) -> StorageService {
        Self::start_with_clock(store, config, Arc::new(SystemClock))
    }

    /// Like [`start`](Self::start) with an injected clock (token issue and expiry times).
    pub fn start_with_clock(
        store: Arc<dyn Store>,
        config: CoalescerConfig,
        clock: Arc<dyn Clock>,
    ) -> StorageService {
        let (writer_tx, writer_rx) = flume::bounded(config.queue_messages_max.max(1));
        let (history_tx, history_rx) = flume::bounded(config.history_queue_requests_max.max(1));
        let (auth_tx, auth_rx) = flume::bounded(config.auth_queue_requests_max.max(1));
        let (account_write_tx, account_write_rx) =
            flume::bounded(config.account_write_queue_requests_max.max(1));
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            write_failure: Mutex::new(None),
            writes_failing: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            metrics: WriterMetrics::default(),
            store: Arc::downgrade(&store),
            clock,
            token_ttl_ms: config.token_ttl_ms,
            tokens_per_login_max: config.tokens_per_login_max.max(1),
            writer_thread: OnceLock::new(),
            writer_wake_at: AtomicUsize::new(0),
        });
        let writer = {
            let store = Arc::clone(&store);
            let shared = Arc::clone(&shared);
            let config = config.clone();
            std::thread::Builder::new()
                .name("storage-writer".into())
                .spawn(move || run_writer(&*store, writer_rx, &config, &shared))
                .expect("spawning the storage writer thread")
        };
        let _ = shared.writer_thread.set(writer.thread().clone());
        let mut pools = Vec::new();
        for (pool, rx, threads, name) in [
            (Pool::History, history_rx, config.read_threads, "history"),
            (Pool::Auth, auth_rx, config.auth_threads, "auth"),
            (
                Pool::AccountWrite,
                account_write_rx,
                config.account_write_threads,
                "account",
            ),
        ] {
            for i in 0..threads.max(1) {
                let store = Arc::clone(&store);
                let rx = rx.clone();
                let shared = Arc::clone(&shared);
                let thread = std::thread::Builder::new()
                    .name(format!("storage-{name}-{i}"))
                    .spawn(move || run_pool(&*store, rx, &shared))
                    .expect("spawning a storage pool thread");
                pools.push((thread, pool));
            }
        }
        StorageService {
            handle: StorageHandle {
                writer_tx,
                history_tx,
                auth_tx,
                account_write_tx,
                shared,
            },
            writer: Some(writer),
            pools,
            shutdown_ms_max: config.shutdown_ms_max,
        }
    }

    /// A handle for a shard (clone it freely).
    pub fn handle(&self) -> StorageHandle {
        self.handle.clone()
    }

    /// Stops accepting new appends, writes and acknowledges everything already queued, joins the threads. Returns
    /// the first error of a batch written during the drain, if any, or an error if that took longer than
    /// `shutdown_ms_max` (the threads are then left behind, still owning their store).
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_millis(self.shutdown_ms_max);
        let h = &self.handle;
        h.shared.closed.store(true, Ordering::Release);
        // The writer keeps draining, so room for the stop item appears, unless the store hangs: bounded.
        let _ = h.writer_tx.send_deadline(WriterItem::Stop, deadline);
        writer.thread().unpark();
        for (_, pool) in &self.pools {
            let tx = match pool {
                Pool::History => &h.history_tx,
                Pool::Auth => &h.auth_tx,
                Pool::AccountWrite => &h.account_write_tx,
            };
            let _ = tx.send_deadline(Request::Stop, deadline);
        }
        fn wait<T>(thread: &JoinHandle<T>, deadline: Instant) -> bool {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            thread.is_finished()
        }
        if !wait(&writer, deadline) {
            let queued = h.writer_tx.len();
            log::error!(
                "storage: the writer did not finish within {} ms ({queued} messages still queued); leaving it",
                self.shutdown_ms_max
            );
            return Err(StorageError::Unavailable(format!(
                "storage did not stop within {} ms",
                self.shutdown_ms_max
            )));
        }
        let mut result = match writer.join() {
            Ok(r) => r,
            Err(_) => Err(StorageError::Io("storage writer thread panicked".into())),
        };
        for (thread, _) in self.pools.drain(..) {
            if !wait(&thread, deadline) {
                if result.is_ok() {
                    result = Err(StorageError::Unavailable(format!(
                        "a storage request thread did not stop within {} ms",
                        self.shutdown_ms_max
                    )));
                }
                continue;
            }
            if thread.join().is_err() && result.is_ok() {
                result = Err(StorageError::Io("storage request thread panicked".into()));
            }
        }
        result
    }
}

impl Drop for StorageService {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("storage shutdown: {e}");
        }
    }
}

/// The writer thread's timer slack (how late the kernel may end its sleeps to merge wake-ups): it sleeps through
/// every batch's window, which the default of 50 µs would stretch by a tenth.
const WRITER_TIMER_SLACK_NS: libc::c_ulong = 10_000;

/// The writer thread: gather, write, fsync (inside the store), acknowledge; repeat. While writes fail, it asks the
/// store to recover every `recover_interval_ms`.
fn run_writer(
    store: &dyn Store,
    rx: flume::Receiver<WriterItem>,
    config: &CoalescerConfig,
    shared: &Shared,
) -> Result<()> {
    let mut gather = Gather::new(config);
    let mut records: Vec<MessageRecord> =
        Vec::with_capacity(config.batch_messages_max.clamp(1, 65_536));
    // Each acknowledgement with the instant its message was queued.
    let mut acks: Vec<(oneshot::Sender<Result<AppendOutcome>>, Instant)> =
        Vec::with_capacity(records.capacity());
    let recover_interval = Duration::from_millis(config.recover_interval_ms.max(1));
    // SAFETY: prctl on the calling thread's own timer slack; no pointers involved.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, WRITER_TIMER_SLACK_NS, 0, 0, 0);
    }
    let mut stopping = false;
    let mut drain_result = Ok(());
    loop {
        // Wait for the first message of the next batch; once stopping, only take what is already queued.
        let first = if stopping {
            rx.try_recv().ok()
        } else if shared.writes_failing.load(Ordering::Acquire)
            && !shared.poisoned.load(Ordering::Acquire)
        {
            match rx.recv_timeout(recover_interval) {
                Ok(item) => Some(item),
                Err(flume::RecvTimeoutError::Timeout) => {
                    let recovered = std::panic::catch_unwind(AssertUnwindSafe(|| store.recover()));
                    match recovered {
                        Ok(Ok(())) => {
                            log::info!("storage: the store takes writes again");
                            shared.set_write_failure(None);
                        }
                        Ok(Err(e)) => {
                            shared.set_write_failure(Some(format!("recovering: {e}")));
                        }
                        Err(_) => shared.poisoned.store(true, Ordering::Release),
                    }
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => None,
            }
        } else {
            rx.recv().ok()
        };
        let Some(first) = first else { break };
        let WriterItem::Append(pending) = first else {
            stopping = true;
            continue;
        };
        gather.reset();
        // The window opens now; later pushes do not move it, so they are given the same instant instead of a
        // clock read per message.
        let opened = Instant::now();
        gather.push(record_bytes(&pending.record), opened);
        let oldest = pending.enqueued;
        records.push(pending.record);
        acks.push((pending.ack, pending.enqueued));
        // Take what is queued; when the queue is empty, sleep until the window closes instead of waking for
        // every message that arrives meanwhile (at high rates those wake-ups were the writer's largest cost). A
        // handle wakes the writer early only when enough messages for a full batch are queued.
        while !gather.is_full() {
            match rx.try_recv() {
                // Everything queued joins the batch, also after the window closed (what arrived while the writer
                // slept would otherwise wait for the next window); the size limits bound it.
                Ok(WriterItem::Append(p)) => {
                    gather.push(record_bytes(&p.record), opened);
                    records.push(p.record);
                    acks.push((p.ack, p.enqueued));
                }
                Ok(WriterItem::Stop) => stopping = true,
                Err(flume::TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
                Err(flume::TryRecvError::Empty) if stopping => break,
                Err(flume::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if gather.is_due(now) {
                        break;
                    }
                    let deadline = gather
                        .deadline()
                        .expect("a batch with a message has a deadline");
                    let room_left = gather.room_left();
                    shared.writer_wake_at.store(room_left, Ordering::SeqCst);
                    // A handle that queued the message filling the batch between the empty queue above and the
                    // store has not woken the writer: look again before sleeping.
                    if rx.len() < room_left {
                        std::thread::park_timeout(deadline - now);
                    }
                    shared.writer_wake_at.store(0, Ordering::SeqCst);
                }
            }
        }
        let result = if shared.poisoned.load(Ordering::Acquire) {
            Err(StorageError::Unavailable(
                "the store failed earlier; writes are refused".into(),
            ))
        } else {
            let started = Instant::now();
            shared
                .metrics
                .record_queue_wait((started - oldest).as_micros() as u64);
            match std::panic::catch_unwind(AssertUnwindSafe(|| {
                store.append_messages_with_outcomes(&records)
            })) {
                Ok(Ok(outcomes)) if outcomes.len() != records.len() => {
                    // A store that answers for fewer (or more) messages than it was given is broken; no
                    // acknowledgement can be trusted.
                    shared.poisoned.store(true, Ordering::Release);
                    Err(StorageError::Io(format!(
                        "the store answered {} outcomes for {} messages",
                        outcomes.len(),
                        records.len()
                    )))
                }
                Ok(Ok(outcomes)) => {
                    shared
                        .metrics
                        .record_batch(records.len(), started.elapsed().as_micros() as u64);
                    if shared.writes_failing.load(Ordering::Acquire) {
                        log::info!("storage: writes succeed again");
                        shared.set_write_failure(None);
                    }
                    Ok(outcomes)
                }
                Ok(Err(e)) => {
                    shared.set_write_failure(Some(e.to_string()));
                    Err(e)
                }
                Err(_) => {
                    shared.poisoned.store(true, Ordering::Release);
                    Err(StorageError::Io("the store panicked while writing".into()))
                }
            }
        };
        if let Err(e) = &result {
            shared.metrics.record_error();
            log::error!(
                "storage: batch of {} messages failed, not acknowledged: {e}",
                records.len()
            );
            if stopping && drain_result.is_ok() {
                drain_result = Err(e.clone());
            }
        }
        let acked_at = Instant::now();
        for (i, (ack, enqueued)) in acks.drain(..).enumerate() {
            let answer = match &result {
                Ok(outcomes) => {
                    shared
                        .metrics
                        .record_ack((acked_at - enqueued).as_micros() as u64);
                    Ok(outcomes[i])
                }
                Err(e) => Err(e.clone()),
            };
            // The receiver may be gone (the shard stopped waiting); the record is durable regardless.
            let _ = ack.send(answer);
        }
        // Freeing a large batch's records takes a while; the acknowledgements go out first.
        records.clear();
    }
    drain_result
}

/// A pool thread: serve requests until told to stop.
fn run_pool(store: &dyn Store, rx: flume::Receiver<Request>, shared: &Shared) {
    fn reply<T>(shared: &Shared, tx: Reply<T>, result: Result<T>) {
        if matches!(
            result,
            Err(StorageError::Io(_) | StorageError::Corrupt(_) | StorageError::Unavailable(_))
        ) {
            shared.metrics.record_error();
        }
        let _ = tx.send(result);
    }
    while let Ok(request) = rx.recv() {
        // A panicking store must not take the thread (and with it the pool's capacity) down: the caller gets an
        // error and the thread serves the next request.
        let served = std::panic::catch_unwind(AssertUnwindSafe(|| {
            match request {
                Request::Recent {
                    room,
                    limit,
                    reply: tx,
                } => reply(shared, tx, store.recent_messages(&room, limit)),
                Request::Before {
                    room,
                    before,
                    limit,
                    reply: tx,
                } => reply(shared, tx, store.messages_before(&room, before, limit)),
                Request::After {
                    room,
                    after,
                    limit,
                    reply: tx,
                } => reply(shared, tx, store.messages_after(&room, after, limit)),
                Request::CreateAccount { account, reply: tx } => {
                    reply(shared, tx, store.create_account(&account))
                }
                Request::Account { login, reply: tx } => reply(shared, tx, store.account(&login)),
                Request::PutToken {
                    token_sha256,
                    token,
                    tokens_per_login_max,
                    reply: tx,
                } => reply(
                    shared,
                    tx,
                    store.put_token(token_sha256, &token, tokens_per_login_max),
                ),
                Request::Token {
                    token_sha256,
                    reply: tx,
                } => reply(shared, tx, store.token(token_sha256)),
                Request::RevokeToken {
                    token_sha256,
                    reply: tx,
                } => reply(shared, tx, store.revoke_token(token_sha256)),
                Request::RenameAccount {
                    old_login,
                    new_login,
                    reply: tx,
                } => reply(shared, tx, store.rename_account(&old_login, &new_login)),
                Request::DeleteMessage {
                    room,
                    id,
                    reply: tx,
                } => reply(shared, tx, store.delete_message(&room, id)),
                Request::PutSetting {
                    key,
                    value,
                    reply: tx,
                } => reply(shared, tx, store.put_setting(&key, &value)),
                Request::DeleteSetting { key, reply: tx } => {
                    reply(shared, tx, store.delete_setting(&key))
                }
                Request::Settings {
                    prefix,
                    limit,
                    reply: tx,
                } => reply(shared, tx, store.settings(&prefix, limit)),
                Request::Stop => return false,
            }
            true
        }));
        match served {
            Ok(true) => {}
            Ok(false) => break,
            // The reply sender was dropped during unwinding, so the caller sees `Closed`.
            Err(_) => {
                shared.metrics.record_error();
                log::error!("storage: the store panicked while serving a request");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(messages: usize, bytes: usize, wait_us: u64) -> CoalescerConfig {
        CoalescerConfig {
            batch_messages_max: messages,
            batch_bytes_max: bytes,
            batch_wait_us_max: wait_us,
            ..CoalescerConfig::default()
        }
    }

    #[test]
    fn the_window_opens_at_the_first_message_and_does_not_slide() {
        let t0 = Instant::now();
        let mut g = Gather::new(&config(100, 1 << 20, 500));
        assert_eq!(g.deadline(), None);
        assert!(
            !g.is_due(t0 + Duration::from_secs(10)),
            "an empty batch is never due"
        );
        g.push(100, t0);
        assert_eq!(g.deadline(), Some(t0 + Duration::from_micros(500)));
        g.push(100, t0 + Duration::from_micros(400));
        assert_eq!(
            g.deadline(),
            Some(t0 + Duration::from_micros(500)),
            "later messages do not extend it"
        );
        assert!(!g.is_due(t0 + Duration::from_micros(499)));
        assert!(g.is_due(t0 + Duration::from_micros(500)));
        assert!(!g.is_full());
        g.reset();
        assert_eq!(g.deadline(), None);
        g.push(1, t0 + Duration::from_secs(1));
        assert_eq!(
            g.deadline(),
            Some(t0 + Duration::from_secs(1) + Duration::from_micros(500))
        );
    }

    #[test]
    fn size_limits_close_a_batch() {
        let now = Instant::now();
        let mut by_count = Gather::new(&config(3, 1 << 20, 500));
        for i in 0..3 {
            assert!(!by_count.is_full(), "{i}");
            by_count.push(10, now);
        }
        assert!(by_count.is_full());

        let mut by_bytes = Gather::new(&config(100, 1000, 500));
        by_bytes.push(600, now);
        assert!(!by_bytes.is_full());
        by_bytes.push(400, now);
        assert!(by_bytes.is_full());

        // One message larger than the byte limit is a batch on its own.
        let mut huge = Gather::new(&config(100, 1000, 500));
        huge.push(5000, now);
        assert!(huge.is_full());

        // Zero limits are treated as one, so the writer always makes progress.
        let mut zero = Gather::new(&config(0, 0, 0));
        zero.push(1, now);
        assert!(zero.is_full());
        assert!(zero.is_due(now));
    }

    #[test]
    fn record_size_estimate_counts_every_string() {
        let mut r = MessageRecord {
            id: MessageId(1),
            room: "r".into(),
            user_id: 1,
            login: String::new(),
            display_name: String::new(),
            color: String::new(),
            badges: String::new(),
            text: String::new(),
            original: String::new(),
            styled_by: String::new(),
            client_nonce: String::new(),
        };
        let base = record_bytes(&r);
        r.text = "x".repeat(100);
        r.original = "y".repeat(50);
        r.badges = "b".repeat(7);
        assert_eq!(record_bytes(&r), base + 157);
    }
}
