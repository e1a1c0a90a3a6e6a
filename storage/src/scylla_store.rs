//! The ScyllaDB store: the `scylla` driver on a small tokio runtime of its own, behind the same sync [`Store`]
//! trait (and so behind the same coalescing writer) as the embedded store.
//!
//! # Schema
//!
//! Messages are partitioned by room and time bucket and clustered by id, newest first, as Discord stores
//! messages:
//!
//! ```text
//! messages     PRIMARY KEY ((room, bucket), id)   CLUSTERING ORDER BY (id DESC)   -- the messages
//! room_buckets PRIMARY KEY ((room, epoch), bucket) CLUSTERING ORDER BY (bucket DESC) -- non-empty buckets
//! room_epochs  PRIMARY KEY ((room), epoch)         CLUSTERING ORDER BY (epoch DESC)  -- non-empty epochs
//! accounts     PRIMARY KEY (login)                 -- created with IF NOT EXISTS (a lightweight transaction)
//! sessions     PRIMARY KEY (token)                 -- SHA-256 of the session token, login, issued, expires
//! login_sessions PRIMARY KEY ((login), issued_unix_ms, token) -- a login's tokens, oldest first (for the cap)
//! deleted_messages PRIMARY KEY ((room, bucket), id) -- deletion markers, partitioned like the messages
//! settings     PRIMARY KEY ((scope), setting_key)  -- scope = the key's first two segments, e.g. room/lobby
//! ```
//!
//! `accounts.renamed_from` (added with `ALTER TABLE` to tables created before it existed) marks a row as a
//! rename's reservation while the rename is unfinished; null or '' is an account.
//!
//! The `tokens` table of earlier versions (no expiry) is no longer read: those tokens count as expired. Expired
//! session rows are deleted when their login is next issued a token.
//!
//! The keyspace is created with `TABLETS = {'enabled': false}` where the server knows the option (ScyllaDB with
//! tablets cannot run the lightweight transaction that makes logins unique) and without it elsewhere.
//!
//! `bucket` is the id's timestamp in whole seconds ([`BUCKET_MS`]) and `epoch` is `bucket / BUCKETS_PER_EPOCH`
//! (about 11.6 days). Ids are 16 big-endian bytes in a `blob` column, whose unsigned byte order is the ids' time
//! order (the `uuid` type's comparator is not plain byte order, so it is not used).
//!
//! # Bucket size arithmetic
//!
//! The partition-size bound must hold even if the seed's whole peak, 41,667 msg/s of ~150 bytes, goes to one room.
//! A stored row is the ~150 bytes of content plus the 16-byte id and per-cell framing (9 cells, a few bytes each):
//! budget 250 bytes. 41,667 × 250 B ≈ 10.4 MB per second of traffic, so a one-second bucket holds at most ~10 MB
//! — ten times under the 100 MB guideline — and a room at a more typical 100 msg/s fills ~25 KB per bucket. The
//! index partitions stay small as well: at most 1,000,000 buckets per epoch × ~20 bytes per `room_buckets` row
//! ≈ 20 MB in the extreme case of a room that speaks every second for 11.6 days, and `room_epochs` gains one
//! ~20-byte row per 11.6 days of activity.
//!
//! # Reads
//!
//! One-second buckets would make "the 50 newest messages of a quiet room" a walk over thousands of empty
//! partitions; the two index tables turn it into: newest epoch of the room (one row), its newest non-empty
//! buckets (one small partition read), then those buckets' messages. Buckets are read a chunk at a time (1, 2,
//! 4, ... up to [`BUCKETS_PER_READ_MAX`] partitions concurrently), so a busy room is usually served by one
//! partition read and a quiet one by a few rounds. Each bucket read is paged by id (`id < last seen`,
//! [`MESSAGES_PAGE_MAX`] rows at a time), so no request ever returns an unbounded result.
//!
//! A forward page ([`Store::messages_after`], what a client that reconnects reads to catch up) walks the same
//! index the other way: the room's oldest epoch from `after`'s on, its non-empty buckets from `after`'s bucket
//! on, oldest first (`ORDER BY ... ASC`, a reversed read of the tables' clustering order), and each bucket
//! paged by `id > last seen`, ascending. Walking the index rather than every one-second bucket up to now means a
//! client that was away for a day costs a few reads, not 86,400. It reads at most
//! [`AFTER_BUCKETS_PER_CALL_MAX`] buckets per call: every bucket it reads holds a message, so a page ends short
//! only where more whole buckets than that were deleted.
//!
//! A history read also reads the deleted ids of each bucket it reads (concurrently with the bucket's first page)
//! and skips them, reading further pages of the bucket, and further buckets, until its page is full. Deleting a
//! message reads the message's row (so that the answer says whether it exists) and writes the marker; the row
//! itself stays.
//!
//! Settings scans of a whole scope read its partition, paged; a longer prefix reads the clustering range from the
//! prefix on and stops at the first key past it.
//!
//! # Renames
//!
//! A lightweight transaction cannot span partitions, so a rename is two steps: `INSERT ... IF NOT EXISTS` of the
//! new login's row with `renamed_from` set (the claim: it makes the new login unique exactly as registration
//! does, and the row is not yet an account: `account()` ignores it), then one LOGGED batch that deletes the old
//! row, marks the new one finished, points every session of the old login at the new one and moves its
//! `login_sessions` rows. The batchlog makes the second step all-or-nothing. A crash between the steps leaves
//! the old login owning the account and the new login reserved for it; retrying the same rename finds its own
//! reservation (same user id, same `renamed_from`) and finishes. Sessions are moved with `UPDATE ... SET login`,
//! so a session revoked during the rename can come back only as a row without its times, which reads as unknown
//! (its `login_sessions` row may survive until it expires and counts toward the cap meanwhile).
//!
//! # Writes
//!
//! One `append_messages` call groups the batch by partition `(room, bucket)`, splits each group into UNLOGGED
//! batches of at most [`PARTITION_BATCH_BYTES_MAX`] (a single-partition batch is applied as one mutation, with
//! none of a logged batch's batchlog round trips), adds the index rows for buckets and epochs it has not written
//! before, and runs all of those requests concurrently (at most [`REQUESTS_IN_FLIGHT_MAX`]). It returns `Ok` only
//! when every request succeeded at `LOCAL_QUORUM`, so an acknowledged message is on a quorum of replicas. All
//! writes are idempotent upserts keyed by the message id, so a batch that failed part-way and is written again
//! leaves each message exactly once: a failed batch is retried whole, with the same ids, at most
//! [`APPEND_ATTEMPTS_MAX`] times within [`APPEND_RETRY_BUDGET_MS`], before it fails. Every request (and every
//! attempt) is bounded by [`REQUEST_TIMEOUT_MS`], so a hung cluster holds the writer, and with it shutdown, for a
//! bounded time. The driver's default token- and shard-aware load balancing is left on; a single-partition batch
//! is routed to that partition's replica and shard.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use crate::coalescer::check_room;
use crate::coalescer::record_bytes;
use crate::error::{Result, StorageError};
use crate::id::MessageId;
use crate::record::{AccountRecord, MessageRecord, TokenRecord};
use crate::{Store, settings};

/// Width of a message partition's time bucket, in milliseconds. See the module docs for the arithmetic.
pub const BUCKET_MS: u64 = 1000;
/// Buckets per `room_buckets` partition.
pub const BUCKETS_PER_EPOCH: i64 = 1_000_000;
/// Largest UNLOGGED batch sent for one partition, in (estimated) bytes. Well under the batch size warning
/// thresholds of ScyllaDB (128 KiB) and Cassandra (5 KiB warns, 50 KiB fails: this stays under the failure).
pub const PARTITION_BATCH_BYTES_MAX: usize = 32 << 10;
/// Requests one `append_messages` call keeps in flight at once.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// Rows asked for per message read.
pub const MESSAGES_PAGE_MAX: usize = 1000;
/// Most bucket partitions read concurrently while walking back through a room's history.
pub const BUCKETS_PER_READ_MAX: usize = 32;
/// Most bucket partitions one forward read ([`Store::messages_after`]) reads. Only non-empty buckets are read and
/// each holds at least one message, so a page of `limit` messages needs more than `limit` buckets only where
/// whole buckets were deleted; past this bound the page is returned as it is, short.
pub const AFTER_BUCKETS_PER_CALL_MAX: usize = 1024;
/// Rooms whose newest written bucket is remembered, to skip rewriting index rows. Cleared when exceeded: the
/// index rows are idempotent, so forgetting only costs a rewrite.
const INDEX_CACHE_ROOMS_MAX: usize = 100_000;
/// How long connecting and creating the schema may take before `connect` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of one batch (the first included) before it fails, and the time they may take together, in
/// milliseconds. Every write of a batch is an idempotent upsert keyed by the message id, so writing it again
/// after a partial failure leaves each message once.
pub const APPEND_ATTEMPTS_MAX: u32 = 4;
pub const APPEND_RETRY_BUDGET_MS: u64 = 3_000;
/// Back-off before the first retry, in milliseconds; doubled before each further one.
pub const APPEND_RETRY_BACKOFF_MS: u64 = 50;
/// Longest one attempt (or one read) may take, in milliseconds, so that a hung cluster cannot hang the writer
/// (and with it shutdown) for longer.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Most session rows of one login read when a token is issued or the login renamed.
const LOGIN_SESSIONS_READ_MAX: usize = 1000;
/// Rows per page of the paged reads (deleted message ids of a bucket, settings of a scope).
pub const ROWS_PAGE_MAX: usize = 1000;
/// Driver worker threads. The driver is IO-bound; the storage threads block on it from outside.
const RUNTIME_THREADS: usize = 2;

fn io(e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

/// The message partition an id belongs to.
pub fn bucket_of(id: MessageId) -> i64 {
    (id.unix_ms() / BUCKET_MS) as i64
}

/// The `room_buckets` partition a bucket belongs to.
pub fn epoch_of(bucket: i64) -> i64 {
    bucket.div_euclid(BUCKETS_PER_EPOCH)
}

/// The CQL statements, one place so the schema and the statements using it are read together.
fn schema_statements(keyspace: &str, replication_factor: u32) -> Vec<String> {
    vec![
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH REPLICATION = \
             {{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.messages (room text, bucket bigint, id blob, user_id bigint, \
             login text, display_name text, color text, badges text, body text, original text, styled_by text, \
             client_nonce text, PRIMARY KEY ((room, bucket), id)) WITH CLUSTERING ORDER BY (id DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.room_buckets (room text, epoch bigint, bucket bigint, \
             PRIMARY KEY ((room, epoch), bucket)) WITH CLUSTERING ORDER BY (bucket DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.room_epochs (room text, epoch bigint, \
             PRIMARY KEY ((room), epoch)) WITH CLUSTERING ORDER BY (epoch DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.accounts (login text, user_id bigint, password_hash text, \
             color text, created_unix_ms bigint, renamed_from text, PRIMARY KEY (login))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.sessions (token blob, login text, issued_unix_ms bigint, \
             expires_unix_ms bigint, PRIMARY KEY (token))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.login_sessions (login text, issued_unix_ms bigint, token blob, \
             expires_unix_ms bigint, PRIMARY KEY ((login), issued_unix_ms, token))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.deleted_messages (room text, bucket bigint, id blob, \
             PRIMARY KEY ((room, bucket), id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.settings (scope text, setting_key text, setting_value blob, \
             PRIMARY KEY ((scope), setting_key))"
        ),
    ]
}

/// Adds the column that tables created before renames existed lack. Run after [`schema_statements`]; a server
/// that already has the column rejects it, which is fine.
fn schema_upgrade_statements(keyspace: &str) -> Vec<String> {
    vec![format!(
        "ALTER TABLE {keyspace}.accounts ADD renamed_from text"
    )]
}

const MESSAGE_COLUMNS: &str =
    "id, user_id, login, display_name, color, badges, body, original, styled_by, client_nonce";

struct Prepared {
    insert_message: PreparedStatement,
    insert_room_bucket: PreparedStatement,
    insert_room_epoch: PreparedStatement,
    select_newest: PreparedStatement,
    select_before: PreparedStatement,
    select_buckets: PreparedStatement,
    select_epoch: PreparedStatement,
    select_after: PreparedStatement,
    select_buckets_from: PreparedStatement,
    select_epoch_from: PreparedStatement,
    insert_account: PreparedStatement,
    select_account: PreparedStatement,
    insert_session: PreparedStatement,
    insert_login_session: PreparedStatement,
    select_session: PreparedStatement,
    select_login_sessions: PreparedStatement,
    delete_session: PreparedStatement,
    delete_login_session: PreparedStatement,
    insert_renamed_account: PreparedStatement,
    delete_account: PreparedStatement,
    clear_renamed_from: PreparedStatement,
    set_session_login: PreparedStatement,
    delete_login_sessions: PreparedStatement,
    select_message_id: PreparedStatement,
    insert_deleted: PreparedStatement,
    select_deleted: PreparedStatement,
    insert_setting: PreparedStatement,
    delete_setting: PreparedStatement,
    select_settings_scope: PreparedStatement,
    select_settings_from: PreparedStatement,
}

/// The newest bucket and epoch whose index rows are known to be written, per room.
#[derive(Default)]
struct IndexCache {
    rooms: HashMap<String, (i64, i64)>,
}

/// A store backed by a ScyllaDB (or Cassandra) cluster.
pub struct ScyllaStore {
    runtime: tokio::runtime::Runtime,
    session: Session,
    statements: Prepared,
    index_cache: Mutex<IndexCache>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore").finish_non_exhaustive()
    }
}

/// A keyspace name is spliced into CQL text, so it must be a plain identifier.
fn check_keyspace(keyspace: &str) -> Result<()> {
    let mut chars = keyspace.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || keyspace.len() > 48 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StorageError::Invalid(format!(
            "keyspace {keyspace:?} must be a letter followed by up to 47 letters, digits or '_'"
        )));
    }
    Ok(())
}

impl ScyllaStore {
    /// Connects to `nodes` (`host:port`), creates the keyspace and tables if they do not exist, and prepares the
    /// statements.
    pub fn connect(
        nodes: &[String],
        keyspace: &str,
        replication_factor: u32,
    ) -> Result<ScyllaStore> {
        check_keyspace(keyspace)?;
        if nodes.is_empty() {
            return Err(StorageError::Invalid("no ScyllaDB nodes given".into()));
        }
        if replication_factor == 0 {
            return Err(StorageError::Invalid(
                "replication factor must be at least 1".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("storage-scylla")
            .enable_all()
            .build()
            .map_err(io)?;
        let (session, statements) = runtime.block_on(async {
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                Self::setup(nodes, keyspace, replication_factor),
            )
            .await
            .map_err(|_| StorageError::Io(format!("connecting to {nodes:?} timed out")))?
        })?;
        Ok(ScyllaStore {
            runtime,
            session,
            statements,
            index_cache: Mutex::new(IndexCache::default()),
        })
    }

    async fn setup(
        nodes: &[String],
        ks: &str,
        replication_factor: u32,
    ) -> Result<(Session, Prepared)> {
        let session = SessionBuilder::new()
            .known_nodes(nodes)
            // Schema agreement is still awaited after each DDL statement, but the metadata refresh is done once,
            // below, where its failure is not fatal.
            .refresh_metadata_on_auto_schema_agreement(false)
            .build()
            .await
            .map_err(|e| StorageError::Io(format!("connecting to {nodes:?}: {e}")))?;
        // Lightweight transactions (account creation) are not available in ScyllaDB keyspaces that use tablets,
        // so the keyspace asks for vnodes. Cassandra and older ScyllaDB reject the `TABLETS` option; for them the
        // plain statement is used.
        let keyspace_cql = schema_statements(ks, replication_factor).swap_remove(0);
        let vnodes_cql = format!("{keyspace_cql} AND TABLETS = {{'enabled': false}}");
        match session.query_unpaged(vnodes_cql, &[]).await {
            Ok(_) => {}
            // Only a rejected statement falls back; a timeout or an unavailable cluster is reported as is.
            Err(ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::SyntaxError | DbError::Invalid | DbError::ConfigError,
                message,
            ))) => {
                log::info!("storage: creating the keyspace without the TABLETS option ({message})");
                session
                    .query_unpaged(keyspace_cql, &[])
                    .await
                    .map_err(|e| StorageError::Io(format!("creating keyspace: {e}")))?;
            }
            Err(e) => return Err(StorageError::Io(format!("creating keyspace: {e}"))),
        }
        for statement in schema_statements(ks, replication_factor)
            .into_iter()
            .skip(1)
        {
            session
                .query_unpaged(statement, &[])
                .await
                .map_err(|e| StorageError::Io(format!("creating schema: {e}")))?;
        }
        for statement in schema_upgrade_statements(ks) {
            match session.query_unpaged(statement.clone(), &[]).await {
                Ok(_) => log::info!("storage: upgraded the schema: {statement}"),
                // The column exists already (the usual case: the table was created with it). Had the statement
                // failed for another reason, preparing the statements that use the column fails below.
                Err(ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                    DbError::Invalid | DbError::SyntaxError | DbError::ConfigError,
                    _,
                ))) => {}
                Err(e) => return Err(StorageError::Io(format!("upgrading schema: {e}"))),
            }
        }
        // Fresh metadata lets token-aware routing see the new keyspace's replication at once. If it cannot be
        // fetched (a node with incomplete system tables), requests still work and the driver refreshes
        // periodically, so this is only a warning.
        if let Err(e) = session.refresh_metadata().await {
            log::warn!("storage: refreshing cluster metadata after schema creation: {e}");
        }
        let prepare = |cql: String, idempotent: bool| {
            let session = &session;
            async move {
                let mut p = session
                    .prepare(cql.clone())
                    .await
                    .map_err(|e| StorageError::Io(format!("{cql}: {e}")))?;
                p.set_consistency(Consistency::LocalQuorum);
                p.set_is_idempotent(idempotent);
                Ok::<_, StorageError>(p)
            }
        };
        // Statements read with paging: each page is one bounded request.
        let prepare_paged = |cql: String| {
            let prepare = &prepare;
            async move {
                let mut p = prepare(cql, true).await?;
                p.set_page_size(ROWS_PAGE_MAX as i32);
                Ok::<_, StorageError>(p)
            }
        };
        let statements = Prepared {
            insert_message: prepare(
                format!(
                    "INSERT INTO {ks}.messages (room, bucket, id, user_id, login, display_name, color, badges, \
                     body, original, styled_by, client_nonce) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            insert_room_bucket: prepare(
                format!("INSERT INTO {ks}.room_buckets (room, epoch, bucket) VALUES (?, ?, ?)"),
                true,
            )
            .await?,
            insert_room_epoch: prepare(format!("INSERT INTO {ks}.room_epochs (room, epoch) VALUES (?, ?)"), true)
                .await?,
            select_newest: prepare(
                format!("SELECT {MESSAGE_COLUMNS} FROM {ks}.messages WHERE room = ? AND bucket = ? LIMIT ?"),
                true,
            )
            .await?,
            select_before: prepare(
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages WHERE room = ? AND bucket = ? AND id < ? LIMIT ?"
                ),
                true,
            )
            .await?,
            select_buckets: prepare(
                format!("SELECT bucket FROM {ks}.room_buckets WHERE room = ? AND epoch = ? AND bucket <= ? LIMIT ?"),
                true,
            )
            .await?,
            select_epoch: prepare(
                format!("SELECT epoch FROM {ks}.room_epochs WHERE room = ? AND epoch <= ? LIMIT 1"),
                true,
            )
            .await?,
            // The forward reads: the same partitions and clustering ranges, in ascending order (a reversed read of
            // the tables' descending clustering order).
            select_after: prepare(
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages WHERE room = ? AND bucket = ? AND id > ? \
                     ORDER BY id ASC LIMIT ?"
                ),
                true,
            )
            .await?,
            select_buckets_from: prepare(
                format!(
                    "SELECT bucket FROM {ks}.room_buckets WHERE room = ? AND epoch = ? AND bucket >= ? \
                     ORDER BY bucket ASC LIMIT ?"
                ),
                true,
            )
            .await?,
            select_epoch_from: prepare(
                format!(
                    "SELECT epoch FROM {ks}.room_epochs WHERE room = ? AND epoch >= ? ORDER BY epoch ASC LIMIT 1"
                ),
                true,
            )
            .await?,
            // A lightweight transaction: the login check and the insert are one step on the cluster.
            insert_account: prepare(
                format!(
                    "INSERT INTO {ks}.accounts (login, user_id, password_hash, color, created_unix_ms) \
                     VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            select_account: prepare(
                format!(
                    "SELECT login, user_id, password_hash, color, created_unix_ms, renamed_from FROM {ks}.accounts \
                     WHERE login = ?"
                ),
                true,
            )
            .await?,
            insert_session: prepare(
                format!(
                    "INSERT INTO {ks}.sessions (token, login, issued_unix_ms, expires_unix_ms) VALUES (?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            insert_login_session: prepare(
                format!(
                    "INSERT INTO {ks}.login_sessions (login, issued_unix_ms, token, expires_unix_ms) \
                     VALUES (?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            select_session: prepare(
                format!("SELECT login, issued_unix_ms, expires_unix_ms FROM {ks}.sessions WHERE token = ?"),
                true,
            )
            .await?,
            select_login_sessions: prepare(
                format!(
                    "SELECT issued_unix_ms, token, expires_unix_ms FROM {ks}.login_sessions WHERE login = ? \
                     LIMIT {LOGIN_SESSIONS_READ_MAX}"
                ),
                true,
            )
            .await?,
            delete_session: prepare(format!("DELETE FROM {ks}.sessions WHERE token = ?"), true).await?,
            delete_login_session: prepare(
                format!(
                    "DELETE FROM {ks}.login_sessions WHERE login = ? AND issued_unix_ms = ? AND token = ?"
                ),
                true,
            )
            .await?,
            // The rename's claim on the new login: a lightweight transaction, like account creation. The row is
            // a reservation (`renamed_from` set) until the rename's logged batch clears it.
            insert_renamed_account: prepare(
                format!(
                    "INSERT INTO {ks}.accounts (login, user_id, password_hash, color, created_unix_ms, renamed_from) \
                     VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            delete_account: prepare(format!("DELETE FROM {ks}.accounts WHERE login = ?"), true).await?,
            // Sets `renamed_from` to '' (finished) rather than deleting the cell: the in-process test node can
            // neither prepare a column DELETE nor store a null.
            clear_renamed_from: prepare(
                format!("UPDATE {ks}.accounts SET renamed_from = ? WHERE login = ?"),
                true,
            )
            .await?,
            // An UPDATE, not an INSERT: a token revoked meanwhile comes back, if at all, as a row without its
            // times, which reads as unknown.
            set_session_login: prepare(format!("UPDATE {ks}.sessions SET login = ? WHERE token = ?"), true)
                .await?,
            delete_login_sessions: prepare(format!("DELETE FROM {ks}.login_sessions WHERE login = ?"), true)
                .await?,
            select_message_id: prepare(
                format!("SELECT id FROM {ks}.messages WHERE room = ? AND bucket = ? AND id = ?"),
                true,
            )
            .await?,
            insert_deleted: prepare(
                format!("INSERT INTO {ks}.deleted_messages (room, bucket, id) VALUES (?, ?, ?)"),
                true,
            )
            .await?,
            select_deleted: prepare_paged(format!(
                "SELECT id FROM {ks}.deleted_messages WHERE room = ? AND bucket = ?"
            ))
            .await?,
            insert_setting: prepare(
                format!("INSERT INTO {ks}.settings (scope, setting_key, setting_value) VALUES (?, ?, ?)"),
                true,
            )
            .await?,
            delete_setting: prepare(
                format!("DELETE FROM {ks}.settings WHERE scope = ? AND setting_key = ?"),
                true,
            )
            .await?,
            select_settings_scope: prepare_paged(format!(
                "SELECT setting_key, setting_value FROM {ks}.settings WHERE scope = ?"
            ))
            .await?,
            select_settings_from: prepare_paged(format!(
                "SELECT setting_key, setting_value FROM {ks}.settings WHERE scope = ? AND setting_key >= ?"
            ))
            .await?,
        };
        Ok((session, statements))
    }

    async fn write_partition_chunk(&self, chunk: &[&MessageRecord]) -> Result<()> {
        let values: Vec<_> = chunk.iter().map(|m| insert_values(m)).collect();
        if values.len() == 1 {
            self.session
                .execute_unpaged(&self.statements.insert_message, &values[0])
                .await
                .map_err(io)?;
            return Ok(());
        }
        let statement = BatchStatement::PreparedStatement(self.statements.insert_message.clone());
        let mut batch =
            Batch::new_with_statements(BatchType::Unlogged, vec![statement; values.len()]);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_is_idempotent(true);
        self.session.batch(&batch, values).await.map_err(io)?;
        Ok(())
    }

    async fn append(&self, batch: &[MessageRecord]) -> Result<()> {
        // Group by partition, keeping each group's order.
        let mut partitions: HashMap<(&str, i64), Vec<&MessageRecord>> = HashMap::new();
        for m in batch {
            check_room(&m.room)?;
            partitions
                .entry((m.room.as_str(), bucket_of(m.id)))
                .or_default()
                .push(m);
        }
        // Index rows this batch needs that are not known to be written.
        let (new_buckets, new_epochs) = {
            let cache = self.index_cache.lock().unwrap_or_else(|p| p.into_inner());
            let mut buckets = Vec::new();
            let mut epochs = Vec::new();
            for &(room, bucket) in partitions.keys() {
                let known = cache.rooms.get(room);
                if known.is_none_or(|&(b, _)| b != bucket) {
                    buckets.push((room, bucket));
                }
                let epoch = epoch_of(bucket);
                if known.is_none_or(|&(_, e)| e != epoch) && !epochs.contains(&(room, epoch)) {
                    epochs.push((room, epoch));
                }
            }
            (buckets, epochs)
        };

        let mut requests = Vec::new();
        for group in partitions.values() {
            let mut start = 0;
            let mut bytes = 0;
            for (i, m) in group.iter().enumerate() {
                let b = record_bytes(m);
                if i > start && bytes + b > PARTITION_BATCH_BYTES_MAX {
                    requests.push(Request::Messages(&group[start..i]));
                    start = i;
                    bytes = 0;
                }
                bytes += b;
            }
            requests.push(Request::Messages(&group[start..]));
        }
        requests.extend(
            new_buckets
                .iter()
                .map(|&(room, bucket)| Request::Bucket(room, bucket)),
        );
        requests.extend(
            new_epochs
                .iter()
                .map(|&(room, epoch)| Request::Epoch(room, epoch)),
        );

        let mut pending = requests.into_iter();
        let mut in_flight = FuturesUnordered::new();
        let mut first_error = None;
        loop {
            while in_flight.len() < REQUESTS_IN_FLIGHT_MAX && first_error.is_none() {
                let Some(request) = pending.next() else { break };
                in_flight.push(self.run(request));
            }
            match in_flight.next().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    // Stop issuing new requests but let the ones in flight finish before reporting.
                    first_error.get_or_insert(e);
                }
                None => break,
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }

        let mut cache = self.index_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.rooms.len() > INDEX_CACHE_ROOMS_MAX {
            cache.rooms.clear();
        }
        for &(room, bucket) in partitions.keys() {
            let entry = cache
                .rooms
                .entry(room.to_owned())
                .or_insert((bucket, epoch_of(bucket)));
            if bucket >= entry.0 {
                *entry = (bucket, epoch_of(bucket));
            }
        }
        Ok(())
    }

    async fn run(&self, request: Request<'_>) -> Result<()> {
        match request {
            Request::Messages(chunk) => self.write_partition_chunk(chunk).await,
            Request::Bucket(room, bucket) => {
                let values = (room, epoch_of(bucket), bucket);
                self.session
                    .execute_unpaged(&self.statements.insert_room_bucket, values)
                    .await
                    .map_err(io)?;
                Ok(())
            }
            Request::Epoch(room, epoch) => {
                self.session
                    .execute_unpaged(&self.statements.insert_room_epoch, (room, epoch))
                    .await
                    .map_err(io)?;
                Ok(())
            }
        }
    }
}

/// The reads the history walks (backward and forward) are made of. The walks themselves are plain logic over
/// them, so they are tested against an in-memory model in the unit tests below (the in-process CQL node ignores
/// clustering ranges, `ORDER BY` and `LIMIT`, so it cannot stand in for these reads).
trait HistoryReads {
    /// The room's newest epoch `<= epoch_max` that has messages.
    async fn newest_epoch(&self, room: &str, epoch_max: i64) -> Result<Option<i64>>;
    /// Up to `limit` non-empty buckets of the room in `epoch` that are `<= bucket_max`, newest first.
    async fn buckets(
        &self,
        room: &str,
        epoch: i64,
        bucket_max: i64,
        limit: usize,
    ) -> Result<Vec<i64>>;
    /// The ids of the bucket's messages that are marked deleted.
    async fn deleted_in_bucket(&self, room: &str, bucket: i64) -> Result<HashSet<MessageId>>;
    /// Up to `limit` messages of one bucket with id `< before` (all if `None`), newest first.
    async fn bucket_page(
        &self,
        room: &str,
        bucket: i64,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>>;
    /// The room's oldest epoch `>= epoch_min` that has messages.
    async fn oldest_epoch(&self, room: &str, epoch_min: i64) -> Result<Option<i64>>;
    /// Up to `limit` non-empty buckets of the room in `epoch` that are `>= bucket_min`, oldest first.
    async fn buckets_from(
        &self,
        room: &str,
        epoch: i64,
        bucket_min: i64,
        limit: usize,
    ) -> Result<Vec<i64>>;
    /// Up to `limit` messages of one bucket with id `> after`, oldest first.
    async fn bucket_page_after(
        &self,
        room: &str,
        bucket: i64,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageRecord>>;
}

impl HistoryReads for ScyllaStore {
    async fn deleted_in_bucket(&self, room: &str, bucket: i64) -> Result<HashSet<MessageId>> {
        let mut rows = self
            .session
            .execute_iter(self.statements.select_deleted.clone(), (room, bucket))
            .await
            .map_err(io)?
            .rows_stream::<(Vec<u8>,)>()
            .map_err(corrupt)?;
        let mut out = HashSet::new();
        while let Some(row) = rows.next().await {
            let (id,) = row.map_err(io)?;
            out.insert(message_id(id)?);
        }
        Ok(out)
    }

    async fn newest_epoch(&self, room: &str, epoch_max: i64) -> Result<Option<i64>> {
        let result = self
            .session
            .execute_unpaged(&self.statements.select_epoch, (room, epoch_max))
            .await
            .map_err(io)?;
        Ok(first_row::<(i64,)>(result)?.map(|(e,)| e))
    }

    async fn buckets(
        &self,
        room: &str,
        epoch: i64,
        bucket_max: i64,
        limit: usize,
    ) -> Result<Vec<i64>> {
        let values = (room, epoch, bucket_max, limit.min(i32::MAX as usize) as i32);
        let result = self
            .session
            .execute_unpaged(&self.statements.select_buckets, values)
            .await
            .map_err(io)?;
        Ok(rows::<(i64,)>(result)?.into_iter().map(|(b,)| b).collect())
    }

    async fn bucket_page(
        &self,
        room: &str,
        bucket: i64,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        let limit = limit.min(i32::MAX as usize) as i32;
        let result = match before {
            Some(id) => {
                let id = id.to_be_bytes();
                let values = (room, bucket, id.as_slice(), limit);
                self.session
                    .execute_unpaged(&self.statements.select_before, values)
                    .await
            }
            None => {
                self.session
                    .execute_unpaged(&self.statements.select_newest, (room, bucket, limit))
                    .await
            }
        }
        .map_err(io)?;
        message_rows(result, room)
    }

    async fn oldest_epoch(&self, room: &str, epoch_min: i64) -> Result<Option<i64>> {
        let result = self
            .session
            .execute_unpaged(&self.statements.select_epoch_from, (room, epoch_min))
            .await
            .map_err(io)?;
        Ok(first_row::<(i64,)>(result)?.map(|(e,)| e))
    }

    async fn buckets_from(
        &self,
        room: &str,
        epoch: i64,
        bucket_min: i64,
        limit: usize,
    ) -> Result<Vec<i64>> {
        let values = (room, epoch, bucket_min, limit.min(i32::MAX as usize) as i32);
        let result = self
            .session
            .execute_unpaged(&self.statements.select_buckets_from, values)
            .await
            .map_err(io)?;
        Ok(rows::<(i64,)>(result)?.into_iter().map(|(b,)| b).collect())
    }

    async fn bucket_page_after(
        &self,
        room: &str,
        bucket: i64,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        let id = after.to_be_bytes();
        let values = (
            room,
            bucket,
            id.as_slice(),
            limit.min(i32::MAX as usize) as i32,
        );
        let result = self
            .session
            .execute_unpaged(&self.statements.select_after, values)
            .await
            .map_err(io)?;
        message_rows(result, room)
    }
}

/// Up to `want` messages of one bucket with id `< before` that are not deleted, newest first, in pages of
/// [`MESSAGES_PAGE_MAX`]. The bucket's deleted ids are read alongside its first page; a page that loses rows to
/// them is followed by another, so the result is as long as without deletions wherever the bucket allows.
async fn bucket_newest_first<H: HistoryReads>(
    h: &H,
    room: &str,
    bucket: i64,
    mut before: Option<MessageId>,
    want: usize,
) -> Result<Vec<MessageRecord>> {
    let mut out = Vec::new();
    if want == 0 {
        return Ok(out);
    }
    let mut page = want.min(MESSAGES_PAGE_MAX);
    let (deleted, mut rows) = futures_util::future::try_join(
        h.deleted_in_bucket(room, bucket),
        h.bucket_page(room, bucket, before, page),
    )
    .await?;
    loop {
        let got = rows.len();
        if got > page || rows.iter().any(|m| before.is_some_and(|b| m.id >= b)) {
            return Err(StorageError::Corrupt(
                "a bucket read returned rows outside its bounds".into(),
            ));
        }
        before = rows.last().map(|m| m.id);
        out.extend(rows.into_iter().filter(|m| !deleted.contains(&m.id)));
        if got < page || out.len() == want {
            return Ok(out);
        }
        page = (want - out.len()).min(MESSAGES_PAGE_MAX);
        rows = h.bucket_page(room, bucket, before, page).await?;
    }
}

/// Up to `limit` messages of `room` with id `< before` (all if `None`), newest first: epochs newest first, their
/// non-empty buckets newest first in chunks of 1, 2, 4, ... [`BUCKETS_PER_READ_MAX`] read concurrently, each
/// bucket paged by id.
async fn walk_newest_first<H: HistoryReads>(
    h: &H,
    room: &str,
    before: Option<MessageId>,
    limit: usize,
) -> Result<Vec<MessageRecord>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let top_bucket = before.map_or(i64::MAX, bucket_of);
    let mut epoch_max = epoch_of(top_bucket);
    loop {
        let Some(epoch) = h.newest_epoch(room, epoch_max).await? else {
            return Ok(out);
        };
        if epoch > epoch_max {
            return Err(StorageError::Corrupt(
                "room_epochs returned an epoch above the bound".into(),
            ));
        }
        let mut bucket_max = top_bucket.min(
            epoch
                .saturating_mul(BUCKETS_PER_EPOCH)
                .saturating_add(BUCKETS_PER_EPOCH - 1),
        );
        let mut chunk = 1usize;
        loop {
            let buckets = h.buckets(room, epoch, bucket_max, chunk).await?;
            let Some(&last) = buckets.last() else { break };
            if buckets.len() > chunk
                || buckets.windows(2).any(|w| w[0] <= w[1])
                || buckets[0] > bucket_max
            {
                return Err(StorageError::Corrupt(
                    "room_buckets returned buckets out of order or bounds".into(),
                ));
            }
            let want = limit - out.len();
            let reads: Vec<_> = buckets
                .iter()
                .map(|&b| bucket_newest_first(h, room, b, before.filter(|_| b == top_bucket), want))
                .collect();
            for messages in futures_util::future::join_all(reads).await {
                for m in messages? {
                    out.push(m);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            if buckets.len() < chunk || last == i64::MIN {
                break;
            }
            bucket_max = last - 1;
            chunk = (chunk * 2).min(BUCKETS_PER_READ_MAX);
        }
        if epoch == i64::MIN {
            return Ok(out);
        }
        epoch_max = epoch - 1;
    }
}

/// Up to `want` messages of one bucket with id `> after` that are not deleted, oldest first, in pages of
/// [`MESSAGES_PAGE_MAX`]: [`bucket_newest_first`] the other way round.
async fn bucket_oldest_first<H: HistoryReads>(
    h: &H,
    room: &str,
    bucket: i64,
    mut after: MessageId,
    want: usize,
) -> Result<Vec<MessageRecord>> {
    let mut out = Vec::new();
    if want == 0 {
        return Ok(out);
    }
    let mut page = want.min(MESSAGES_PAGE_MAX);
    let (deleted, mut rows) = futures_util::future::try_join(
        h.deleted_in_bucket(room, bucket),
        h.bucket_page_after(room, bucket, after, page),
    )
    .await?;
    loop {
        let got = rows.len();
        if got > page
            || rows.first().is_some_and(|m| m.id <= after)
            || rows.windows(2).any(|w| w[0].id >= w[1].id)
        {
            return Err(StorageError::Corrupt(
                "a bucket read returned rows outside its bounds or out of order".into(),
            ));
        }
        if let Some(last) = rows.last() {
            after = last.id;
        }
        out.extend(rows.into_iter().filter(|m| !deleted.contains(&m.id)));
        if got < page || out.len() == want {
            return Ok(out);
        }
        page = (want - out.len()).min(MESSAGES_PAGE_MAX);
        rows = h.bucket_page_after(room, bucket, after, page).await?;
    }
}

/// Up to `limit` messages of `room` with id `> after`, oldest first: from `after`'s bucket forward, epochs
/// oldest first, their non-empty buckets oldest first in chunks of 1, 2, 4, ... [`BUCKETS_PER_READ_MAX`] read
/// concurrently, each bucket paged by id, at most [`AFTER_BUCKETS_PER_CALL_MAX`] buckets in all. Walking the
/// index rather than every one-second bucket up to now keeps a client that was away for a day from costing
/// 86,400 partition reads.
async fn walk_oldest_first<H: HistoryReads>(
    h: &H,
    room: &str,
    after: MessageId,
    limit: usize,
) -> Result<Vec<MessageRecord>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let first_bucket = bucket_of(after);
    let mut epoch_min = epoch_of(first_bucket);
    let mut buckets_left = AFTER_BUCKETS_PER_CALL_MAX;
    loop {
        let Some(epoch) = h.oldest_epoch(room, epoch_min).await? else {
            return Ok(out);
        };
        if epoch < epoch_min {
            return Err(StorageError::Corrupt(
                "room_epochs returned an epoch below the bound".into(),
            ));
        }
        let mut bucket_min = first_bucket.max(epoch.saturating_mul(BUCKETS_PER_EPOCH));
        let mut chunk = 1usize;
        loop {
            let ask = chunk.min(buckets_left);
            if ask == 0 {
                // The bound on buckets per call: the page goes back short (see `AFTER_BUCKETS_PER_CALL_MAX`).
                return Ok(out);
            }
            let buckets = h.buckets_from(room, epoch, bucket_min, ask).await?;
            let Some(&last) = buckets.last() else { break };
            if buckets.len() > ask
                || buckets.windows(2).any(|w| w[0] >= w[1])
                || buckets[0] < bucket_min
                || epoch_of(last) != epoch
            {
                return Err(StorageError::Corrupt(
                    "room_buckets returned buckets out of order or bounds".into(),
                ));
            }
            buckets_left -= buckets.len();
            let want = limit - out.len();
            let reads: Vec<_> = buckets
                .iter()
                .map(|&b| bucket_oldest_first(h, room, b, after, want))
                .collect();
            for messages in futures_util::future::join_all(reads).await {
                for m in messages? {
                    out.push(m);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            if buckets.len() < ask || last == i64::MAX {
                break;
            }
            bucket_min = last + 1;
            chunk = (chunk * 2).min(BUCKETS_PER_READ_MAX);
        }
        if epoch == i64::MAX {
            return Ok(out);
        }
        epoch_min = epoch + 1;
    }
}

enum Request<'a> {
    Messages(&'a [&'a MessageRecord]),
    Bucket(&'a str, i64),
    Epoch(&'a str, i64),
}

type InsertValues<'a> = (
    &'a str,
    i64,
    [u8; 16],
    i64,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
);

fn insert_values(m: &MessageRecord) -> InsertValues<'_> {
    (
        m.room.as_str(),
        bucket_of(m.id),
        m.id.to_be_bytes(),
        m.user_id as i64,
        m.login.as_str(),
        m.display_name.as_str(),
        m.color.as_str(),
        m.badges.as_str(),
        m.text.as_str(),
        m.original.as_str(),
        m.styled_by.as_str(),
        m.client_nonce.as_str(),
    )
}

fn rows<R>(result: QueryResult) -> Result<Vec<R>>
where
    R: for<'f> scylla::deserialize::row::DeserializeRow<'f, 'f>,
{
    let rows = result.into_rows_result().map_err(corrupt)?;
    let out = rows
        .rows::<R>()
        .map_err(corrupt)?
        .collect::<std::result::Result<Vec<R>, _>>()
        .map_err(corrupt)?;
    Ok(out)
}

fn first_row<R>(result: QueryResult) -> Result<Option<R>>
where
    R: for<'f> scylla::deserialize::row::DeserializeRow<'f, 'f>,
{
    Ok(rows::<R>(result)?.into_iter().next())
}

type MessageRow = (
    Vec<u8>,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    // Null in rows written before nonces were kept.
    Option<String>,
);

/// A message id from its 16-byte `blob` column.
fn message_id(bytes: Vec<u8>) -> Result<MessageId> {
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("message id is not 16 bytes".into()))?;
    Ok(MessageId::from_be_bytes(id))
}

type AccountRow = (String, i64, String, String, i64, Option<String>);

/// Whether a lightweight transaction applied: it answers with an `[applied]` boolean first column.
fn applied(result: QueryResult) -> Result<bool> {
    let row =
        first_row::<Row>(result)?.ok_or_else(|| corrupt("no [applied] row from IF NOT EXISTS"))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        _ => Err(corrupt(
            "the [applied] column of IF NOT EXISTS is not a boolean",
        )),
    }
}

fn check_login(login: &str) -> Result<()> {
    if login.is_empty() || login.len() > u8::MAX as usize {
        return Err(StorageError::Invalid("login must be 1..=255 bytes".into()));
    }
    Ok(())
}

fn message_rows(result: QueryResult, room: &str) -> Result<Vec<MessageRecord>> {
    rows::<MessageRow>(result)?
        .into_iter()
        .map(
            |(
                id,
                user_id,
                login,
                display_name,
                color,
                badges,
                text,
                original,
                styled_by,
                client_nonce,
            )| {
                Ok(MessageRecord {
                    id: message_id(id)?,
                    room: room.to_owned(),
                    user_id: user_id as u64,
                    login,
                    display_name,
                    color,
                    badges,
                    text,
                    original,
                    styled_by,
                    client_nonce: client_nonce.unwrap_or_default(),
                })
            },
        )
        .collect()
}

/// Runs `attempt` until it succeeds, at most `attempts_max` times and while `budget` lasts, sleeping
/// `backoff`, doubled each time, between attempts. Only failures of the store are retried, not invalid requests.
async fn with_retries<F, Fut>(
    attempts_max: u32,
    budget: Duration,
    backoff: Duration,
    mut attempt: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = backoff;
    let mut tries = 0;
    loop {
        tries += 1;
        let error = match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let retriable = matches!(error, StorageError::Io(_) | StorageError::Unavailable(_));
        if !retriable || tries >= attempts_max || started.elapsed() + backoff > budget {
            return Err(error);
        }
        log::warn!("storage: batch attempt {tries} failed, retrying in {backoff:?}: {error}");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}

/// Bounds one request (or one attempt) by [`REQUEST_TIMEOUT_MS`].
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), f)
        .await
        .unwrap_or_else(|_| {
            Err(StorageError::Io(format!(
                "{what} timed out after {REQUEST_TIMEOUT_MS} ms"
            )))
        })
}

impl ScyllaStore {
    fn token_blocking(&self, token_sha256: [u8; 32]) -> Result<Option<TokenRecord>> {
        let values = (token_sha256.as_slice(),);
        let result = self.runtime.block_on(bounded("token read", async {
            self.session
                .execute_unpaged(&self.statements.select_session, values)
                .await
                .map_err(io)
        }))?;
        // A row without its times is what a rename's UPDATE leaves of a token revoked meanwhile: unknown.
        Ok(
            match first_row::<(Option<String>, Option<i64>, Option<i64>)>(result)? {
                Some((Some(login), Some(issued), Some(expires))) => Some(TokenRecord {
                    login,
                    issued_unix_ms: issued as u64,
                    expires_unix_ms: expires as u64,
                }),
                _ => None,
            },
        )
    }

    /// The account row of a login, with its `renamed_from` while the row is an unfinished rename's reservation
    /// (`None` for an account: the column is null, or '' once a rename finished).
    async fn account_row(&self, login: &str) -> Result<Option<(AccountRecord, Option<String>)>> {
        let result = self
            .session
            .execute_unpaged(&self.statements.select_account, (login,))
            .await
            .map_err(io)?;
        Ok(first_row::<AccountRow>(result)?.map(
            |(login, user_id, password_hash, color, created_unix_ms, renamed_from)| {
                let account = AccountRecord {
                    login,
                    user_id: user_id as u64,
                    password_hash,
                    color,
                    created_unix_ms: created_unix_ms as u64,
                };
                (account, renamed_from.filter(|from| !from.is_empty()))
            },
        ))
    }

    /// See [`Store::rename_account`] and the module docs on renames.
    async fn rename(&self, old_login: &str, new_login: &str) -> Result<AccountRecord> {
        let account = match self.account_row(old_login).await? {
            Some((account, None)) => account,
            // A reservation of an unfinished rename owns nothing.
            Some((_, Some(_))) | None => {
                return Err(StorageError::NotFound(format!("no account {old_login:?}")));
            }
        };
        if old_login == new_login {
            return Err(StorageError::AlreadyExists);
        }
        let moved = AccountRecord {
            login: new_login.to_owned(),
            ..account
        };
        let claim = (
            new_login,
            moved.user_id as i64,
            moved.password_hash.as_str(),
            moved.color.as_str(),
            moved.created_unix_ms as i64,
            old_login,
        );
        let result = self
            .session
            .execute_unpaged(&self.statements.insert_renamed_account, claim)
            .await
            .map_err(io)?;
        if !applied(result)? {
            // The same rename claimed the login before and did not finish (a crash or a timeout): finish it now.
            match self.account_row(new_login).await? {
                Some((taken, Some(from)))
                    if from == old_login && taken.user_id == moved.user_id => {}
                _ => return Err(StorageError::AlreadyExists),
            }
        }
        let result = self
            .session
            .execute_unpaged(&self.statements.select_login_sessions, (old_login,))
            .await
            .map_err(io)?;
        let sessions = rows::<(i64, Vec<u8>, i64)>(result)?;
        let text = |s: &str| Some(CqlValue::Text(s.to_owned()));
        let p = &self.statements;
        let mut statements = vec![p.delete_account.clone(), p.clear_renamed_from.clone()];
        let mut values = vec![vec![text(old_login)], vec![text(""), text(new_login)]];
        for (issued, sha, expires) in sessions {
            statements.push(p.set_session_login.clone());
            values.push(vec![text(new_login), Some(CqlValue::Blob(sha.clone()))]);
            statements.push(p.insert_login_session.clone());
            values.push(vec![
                text(new_login),
                Some(CqlValue::BigInt(issued)),
                Some(CqlValue::Blob(sha)),
                Some(CqlValue::BigInt(expires)),
            ]);
        }
        statements.push(p.delete_login_sessions.clone());
        values.push(vec![text(old_login)]);
        // LOGGED: the batchlog applies every statement or, after a coordinator failure, replays them all, so the
        // account and its tokens end up under the new login only.
        let mut batch = Batch::new_with_statements(
            BatchType::Logged,
            statements
                .into_iter()
                .map(BatchStatement::PreparedStatement)
                .collect(),
        );
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_is_idempotent(true);
        self.session.batch(&batch, values).await.map_err(io)?;
        Ok(moved)
    }

    async fn delete_token(&self, login: &str, issued_unix_ms: i64, token: &[u8]) -> Result<()> {
        self.session
            .execute_unpaged(&self.statements.delete_session, (token,))
            .await
            .map_err(io)?;
        self.session
            .execute_unpaged(
                &self.statements.delete_login_session,
                (login, issued_unix_ms, token),
            )
            .await
            .map_err(io)?;
        Ok(())
    }
}

impl Store for ScyllaStore {
    fn append_messages(&self, batch: &[MessageRecord]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.runtime.block_on(with_retries(
            APPEND_ATTEMPTS_MAX,
            Duration::from_millis(APPEND_RETRY_BUDGET_MS),
            Duration::from_millis(APPEND_RETRY_BACKOFF_MS),
            || bounded("batch write", self.append(batch)),
        ))
    }

    fn recent_messages(&self, room: &str, limit: usize) -> Result<Vec<MessageRecord>> {
        let mut out = self
            .runtime
            .block_on(walk_newest_first(self, room, None, limit))?;
        out.reverse();
        Ok(out)
    }

    fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        self.runtime
            .block_on(walk_newest_first(self, room, before, limit))
    }

    fn messages_after(
        &self,
        room: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        check_room(room)?;
        self.runtime
            .block_on(walk_oldest_first(self, room, after, limit))
    }

    fn rename_account(&self, old_login: &str, new_login: &str) -> Result<AccountRecord> {
        check_login(old_login)?;
        check_login(new_login)?;
        self.runtime
            .block_on(bounded("account rename", self.rename(old_login, new_login)))
    }

    fn delete_message(&self, room: &str, id: MessageId) -> Result<bool> {
        check_room(room)?;
        let bucket = bucket_of(id);
        let id = id.to_be_bytes();
        self.runtime.block_on(bounded("message deletion", async {
            let result = self
                .session
                .execute_unpaged(
                    &self.statements.select_message_id,
                    (room, bucket, id.as_slice()),
                )
                .await
                .map_err(io)?;
            if first_row::<(Vec<u8>,)>(result)?.is_none() {
                return Ok(false);
            }
            self.session
                .execute_unpaged(
                    &self.statements.insert_deleted,
                    (room, bucket, id.as_slice()),
                )
                .await
                .map_err(io)?;
            Ok(true)
        }))
    }

    fn put_setting(&self, key: &str, value: &[u8]) -> Result<()> {
        let scope = settings::key_scope(key)?;
        settings::check_value(value)?;
        self.runtime.block_on(bounded("setting write", async {
            self.session
                .execute_unpaged(&self.statements.insert_setting, (scope, key, value))
                .await
                .map_err(io)?;
            Ok(())
        }))
    }

    fn delete_setting(&self, key: &str) -> Result<()> {
        let scope = settings::key_scope(key)?;
        self.runtime.block_on(bounded("setting deletion", async {
            self.session
                .execute_unpaged(&self.statements.delete_setting, (scope, key))
                .await
                .map_err(io)?;
            Ok(())
        }))
    }

    fn settings(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let scope = settings::prefix_scope(prefix)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // A whole scope is its whole partition; a longer prefix starts a clustering range at itself.
        let whole_scope = prefix.len() == scope.len() + 1;
        let mut statement = if whole_scope {
            self.statements.select_settings_scope.clone()
        } else {
            self.statements.select_settings_from.clone()
        };
        statement.set_page_size(limit.min(ROWS_PAGE_MAX) as i32);
        self.runtime.block_on(bounded("settings read", async {
            let pager = if whole_scope {
                self.session.execute_iter(statement, (scope,)).await
            } else {
                self.session.execute_iter(statement, (scope, prefix)).await
            };
            let mut rows = pager
                .map_err(io)?
                .rows_stream::<(String, Vec<u8>)>()
                .map_err(corrupt)?;
            let mut out = Vec::new();
            // Rows come in key order from the prefix on, so the first key past the prefix ends the scan.
            while let Some(row) = rows.next().await {
                let (key, value) = row.map_err(io)?;
                if !key.starts_with(prefix) {
                    if key.as_str() < prefix {
                        return Err(corrupt(format!(
                            "settings read returned {key:?}, before the prefix {prefix:?}"
                        )));
                    }
                    break;
                }
                out.push((key, value));
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        }))
    }

    fn create_account(&self, account: &AccountRecord) -> Result<()> {
        let values = (
            account.login.as_str(),
            account.user_id as i64,
            account.password_hash.as_str(),
            account.color.as_str(),
            account.created_unix_ms as i64,
        );
        let result = self
            .runtime
            .block_on(
                self.session
                    .execute_unpaged(&self.statements.insert_account, values),
            )
            .map_err(io)?;
        if applied(result)? {
            Ok(())
        } else {
            Err(StorageError::AlreadyExists)
        }
    }

    fn account(&self, login: &str) -> Result<Option<AccountRecord>> {
        let row = self.runtime.block_on(self.account_row(login))?;
        // A rename's reservation is not an account until the rename's batch has finished it.
        Ok(row.and_then(|(account, renamed_from)| renamed_from.is_none().then_some(account)))
    }

    fn put_token(
        &self,
        token_sha256: [u8; 32],
        token: &TokenRecord,
        tokens_per_login_max: usize,
    ) -> Result<()> {
        let login = token.login.as_str();
        self.runtime.block_on(bounded("token write", async {
            // The login's sessions, oldest first: expired ones go, and the oldest live ones beyond the cap.
            let result = self
                .session
                .execute_unpaged(&self.statements.select_login_sessions, (login,))
                .await
                .map_err(io)?;
            let mut live = Vec::new();
            for (issued, sha, expires) in rows::<(i64, Vec<u8>, i64)>(result)? {
                if (expires as u64) <= token.issued_unix_ms {
                    self.delete_token(login, issued, &sha).await?;
                } else {
                    live.push((issued, sha));
                }
            }
            let keep = tokens_per_login_max.max(1) - 1;
            if live.len() > keep {
                for (issued, sha) in live.drain(..live.len() - keep) {
                    self.delete_token(login, issued, &sha).await?;
                }
            }
            let issued = token.issued_unix_ms as i64;
            let expires = token.expires_unix_ms as i64;
            self.session
                .execute_unpaged(
                    &self.statements.insert_login_session,
                    (login, issued, token_sha256.as_slice(), expires),
                )
                .await
                .map_err(io)?;
            self.session
                .execute_unpaged(
                    &self.statements.insert_session,
                    (token_sha256.as_slice(), login, issued, expires),
                )
                .await
                .map_err(io)?;
            Ok(())
        }))
    }

    fn token(&self, token_sha256: [u8; 32]) -> Result<Option<TokenRecord>> {
        self.token_blocking(token_sha256)
    }

    fn revoke_token(&self, token_sha256: [u8; 32]) -> Result<bool> {
        let Some(token) = self.token_blocking(token_sha256)? else {
            return Ok(false);
        };
        self.runtime.block_on(bounded(
            "token revocation",
            self.delete_token(
                &token.login,
                token.issued_unix_ms as i64,
                token_sha256.as_slice(),
            ),
        ))?;
        Ok(true)
    }

    fn recover(&self) -> Result<()> {
        // A cheap read that needs the cluster to answer at LOCAL_QUORUM.
        self.token_blocking([0; 32]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::MessageIdGen;
    use std::cell::Cell;
    use std::collections::BTreeMap;

    #[test]
    fn buckets_and_epochs_follow_id_time() {
        let a = MessageId::min_for_ms(1_700_000_000_999);
        let b = MessageId::min_for_ms(1_700_000_001_000);
        assert_eq!(bucket_of(a), 1_700_000_000);
        assert_eq!(bucket_of(b), 1_700_000_001);
        assert_eq!(epoch_of(1_700_000_001), 1_700);
        assert_eq!(epoch_of(1_699_999_999), 1_699);
        assert_eq!(
            epoch_of(bucket_of(MessageId::MAX)),
            bucket_of(MessageId::MAX) / BUCKETS_PER_EPOCH
        );
    }

    /// The three history reads over ordered maps, with the semantics CQL gives them on a real cluster.
    #[derive(Default)]
    struct Model {
        partitions: BTreeMap<(String, i64), BTreeMap<MessageId, MessageRecord>>,
        deleted: HashSet<MessageId>,
        reads: Cell<usize>,
    }

    impl Model {
        fn insert(&mut self, m: MessageRecord) {
            self.partitions
                .entry((m.room.clone(), bucket_of(m.id)))
                .or_default()
                .insert(m.id, m);
        }

        /// The answer by brute force: all of the room's messages, filtered and sorted.
        fn reference(
            &self,
            room: &str,
            before: Option<MessageId>,
            limit: usize,
        ) -> Vec<MessageRecord> {
            let mut all: Vec<MessageRecord> = self
                .partitions
                .iter()
                .filter(|((r, _), _)| r == room)
                .flat_map(|(_, p)| p.values().cloned())
                .filter(|m| before.is_none_or(|b| m.id < b) && !self.deleted.contains(&m.id))
                .collect();
            all.sort_by_key(|m| std::cmp::Reverse(m.id));
            all.truncate(limit);
            all
        }

        /// The forward answer by brute force.
        fn reference_after(
            &self,
            room: &str,
            after: MessageId,
            limit: usize,
        ) -> Vec<MessageRecord> {
            let mut all: Vec<MessageRecord> = self
                .partitions
                .iter()
                .filter(|((r, _), _)| r == room)
                .flat_map(|(_, p)| p.values().cloned())
                .filter(|m| m.id > after && !self.deleted.contains(&m.id))
                .collect();
            all.sort_by_key(|m| m.id);
            all.truncate(limit);
            all
        }

        fn room_buckets<'a>(&'a self, room: &'a str) -> impl DoubleEndedIterator<Item = i64> + 'a {
            self.partitions
                .keys()
                .filter(move |(r, _)| r == room)
                .map(|&(_, b)| b)
        }
    }

    impl HistoryReads for Model {
        async fn deleted_in_bucket(&self, room: &str, bucket: i64) -> Result<HashSet<MessageId>> {
            self.reads.set(self.reads.get() + 1);
            let Some(p) = self.partitions.get(&(room.to_owned(), bucket)) else {
                return Ok(HashSet::new());
            };
            Ok(p.keys()
                .filter(|id| self.deleted.contains(id))
                .copied()
                .collect())
        }

        async fn newest_epoch(&self, room: &str, epoch_max: i64) -> Result<Option<i64>> {
            self.reads.set(self.reads.get() + 1);
            Ok(self
                .room_buckets(room)
                .map(epoch_of)
                .filter(|&e| e <= epoch_max)
                .max())
        }

        async fn buckets(
            &self,
            room: &str,
            epoch: i64,
            bucket_max: i64,
            limit: usize,
        ) -> Result<Vec<i64>> {
            self.reads.set(self.reads.get() + 1);
            Ok(self
                .room_buckets(room)
                .rev()
                .filter(|&b| epoch_of(b) == epoch && b <= bucket_max)
                .take(limit)
                .collect())
        }

        async fn bucket_page(
            &self,
            room: &str,
            bucket: i64,
            before: Option<MessageId>,
            limit: usize,
        ) -> Result<Vec<MessageRecord>> {
            self.reads.set(self.reads.get() + 1);
            let Some(p) = self.partitions.get(&(room.to_owned(), bucket)) else {
                return Ok(Vec::new());
            };
            Ok(p.values()
                .rev()
                .filter(|m| before.is_none_or(|b| m.id < b))
                .take(limit)
                .cloned()
                .collect())
        }

        async fn oldest_epoch(&self, room: &str, epoch_min: i64) -> Result<Option<i64>> {
            self.reads.set(self.reads.get() + 1);
            Ok(self
                .room_buckets(room)
                .map(epoch_of)
                .filter(|&e| e >= epoch_min)
                .min())
        }

        async fn buckets_from(
            &self,
            room: &str,
            epoch: i64,
            bucket_min: i64,
            limit: usize,
        ) -> Result<Vec<i64>> {
            self.reads.set(self.reads.get() + 1);
            Ok(self
                .room_buckets(room)
                .filter(|&b| epoch_of(b) == epoch && b >= bucket_min)
                .take(limit)
                .collect())
        }

        async fn bucket_page_after(
            &self,
            room: &str,
            bucket: i64,
            after: MessageId,
            limit: usize,
        ) -> Result<Vec<MessageRecord>> {
            self.reads.set(self.reads.get() + 1);
            let Some(p) = self.partitions.get(&(room.to_owned(), bucket)) else {
                return Ok(Vec::new());
            };
            Ok(p.values()
                .filter(|m| m.id > after)
                .take(limit)
                .cloned()
                .collect())
        }
    }

    fn record(id: MessageId, room: &str) -> MessageRecord {
        MessageRecord {
            id,
            room: room.into(),
            user_id: 1,
            login: "a".into(),
            display_name: "A".into(),
            color: String::new(),
            badges: String::new(),
            text: format!("{id}"),
            original: String::new(),
            styled_by: "local".into(),
            client_nonce: String::new(),
        }
    }

    fn walk(
        model: &Model,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Vec<MessageRecord> {
        futures_lite::future::block_on(walk_newest_first(model, room, before, limit)).unwrap()
    }

    fn walk_after(model: &Model, room: &str, after: MessageId, limit: usize) -> Vec<MessageRecord> {
        futures_lite::future::block_on(walk_oldest_first(model, room, after, limit)).unwrap()
    }

    /// A seeded random number source (the seed is printed so that a changed seed can be replayed).
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        println!("seed {seed:#x}");
        let mut rng = seed;
        move || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        }
    }

    /// Three rooms of random history with scattered deleted messages and one long run of them. Returns the model
    /// and every id.
    fn random_model(next: &mut impl FnMut() -> u64) -> (Model, Vec<MessageId>) {
        let mut model = Model::default();
        let base_ms = BUCKETS_PER_EPOCH as u64 * 1000 * 1700 - 5_000;
        let mut gens: Vec<MessageIdGen> = (0..4).map(|s| MessageIdGen::new(0, s)).collect();
        // Bursts (many messages per bucket), sparse chatter, and long silences that cross epochs.
        let mut ms = base_ms;
        for i in 0..3000 {
            ms += match next() % 10 {
                0 => 40 * 86_400_000 + next() % 1000,
                1..=3 => 1000 + next() % 5000,
                _ => next() % 3,
            };
            let shard = (i % 4) as usize;
            let room = ["busy", "busy", "quiet", "other"][shard];
            model.insert(record(gens[shard].next_id(ms), room));
        }
        let ids: Vec<MessageId> = model
            .partitions
            .values()
            .flat_map(|p| p.keys().copied())
            .collect();
        // Deleted messages: scattered single ones, and a whole run of them so that pages must reach past it.
        for (i, id) in ids.iter().enumerate() {
            if next().is_multiple_of(7) || (1200..1500).contains(&i) {
                model.deleted.insert(*id);
            }
        }
        (model, ids)
    }

    #[test]
    fn history_walk_matches_brute_force() {
        // A fixed seed keeps failures reproducible.
        let mut next = rng(0x5eed);
        let (model, ids) = random_model(&mut next);
        for room in ["busy", "quiet", "other", "nobody"] {
            for limit in [0, 1, 2, 7, 50, 1001, 5000] {
                assert_eq!(
                    walk(&model, room, None, limit),
                    model.reference(room, None, limit),
                    "{room} {limit}"
                );
                for _ in 0..5 {
                    let pick = ids[(next() as usize) % ids.len()];
                    // An existing id, the id just after it, and the first id of its bucket.
                    for before in [
                        pick,
                        MessageId(pick.0 + 1),
                        MessageId::min_for_ms(pick.unix_ms() / 1000 * 1000),
                    ] {
                        let got = walk(&model, room, Some(before), limit);
                        assert_eq!(
                            got,
                            model.reference(room, Some(before), limit),
                            "{room} {limit} {before}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_quiet_room_costs_a_few_reads_not_one_per_empty_bucket() {
        let mut model = Model::default();
        let mut g = MessageIdGen::new(0, 0);
        // Three messages a year apart: ~31 million empty one-second buckets between each.
        let year_ms = 365 * 86_400_000;
        for k in 0..3 {
            model.insert(record(g.next_id(1_600_000_000_000 + k * year_ms), "quiet"));
        }
        let got = walk(&model, "quiet", None, 50);
        assert_eq!(got, model.reference("quiet", None, 50));
        assert_eq!(got.len(), 3);
        // Per non-empty epoch: the epoch, its buckets (twice at most), one bucket page and its deleted ids; then
        // one final epoch read.
        assert!(
            model.reads.get() <= 3 * 5 + 1,
            "{} reads",
            model.reads.get()
        );
    }

    #[test]
    fn deleted_messages_are_skipped_and_the_page_filled_from_older_ones() {
        let mut model = Model::default();
        let mut g = MessageIdGen::new(0, 0);
        // One bucket larger than a read page, so that filling up needs a second page of the same bucket.
        let ids: Vec<MessageId> = (0..MESSAGES_PAGE_MAX + 100)
            .map(|_| g.next_id(1_700_000_000_000))
            .collect();
        for &id in &ids {
            model.insert(record(id, "busy"));
        }
        // The newest 600 are deleted: the newest 500 that remain come from further back.
        model.deleted.extend(ids[ids.len() - 600..].iter().copied());
        let got = walk(&model, "busy", None, 500);
        assert_eq!(got.len(), 500);
        assert_eq!(got, model.reference("busy", None, 500));
        assert!(got.iter().all(|m| !model.deleted.contains(&m.id)));
        assert_eq!(got[0].id, ids[ids.len() - 601]);
    }

    #[test]
    fn forward_walk_matches_brute_force_and_paging_forward_is_paging_back_reversed() {
        let mut next = rng(0xf0_5eed);
        let (model, ids) = random_model(&mut next);
        for room in ["busy", "quiet", "other", "nobody"] {
            for limit in [0, 1, 2, 7, 50, 1001, 5000] {
                assert_eq!(
                    walk_after(&model, room, MessageId(0), limit),
                    model.reference_after(room, MessageId(0), limit),
                    "{room} {limit}"
                );
                for _ in 0..5 {
                    let pick = ids[(next() as usize) % ids.len()];
                    // An existing id, the id just before it (never stored), the first id of its bucket (so the
                    // bucket is read from its start), and the last millisecond of its bucket.
                    for after in [
                        pick,
                        MessageId(pick.0 - 1),
                        MessageId::min_for_ms(pick.unix_ms() / 1000 * 1000),
                        MessageId::min_for_ms(pick.unix_ms() / 1000 * 1000 + 999),
                    ] {
                        assert_eq!(
                            walk_after(&model, room, after, limit),
                            model.reference_after(room, after, limit),
                            "{room} {limit} {after}"
                        );
                    }
                }
            }
            // Paging forward from before the first message, as a client that catches up does, yields exactly
            // the backward walk's full history reversed.
            for page in [3, 50, 333] {
                let mut seen = Vec::new();
                let mut after = MessageId(0);
                loop {
                    let got = walk_after(&model, room, after, page);
                    assert!(got.len() <= page);
                    let Some(last) = got.last() else { break };
                    after = last.id;
                    seen.extend(got);
                }
                let mut back = walk(&model, room, None, usize::MAX);
                back.reverse();
                assert_eq!(seen, back, "{room} {page}");
            }
        }
    }

    #[test]
    fn a_quiet_room_costs_a_few_reads_forward_too() {
        let mut model = Model::default();
        let mut g = MessageIdGen::new(0, 0);
        let year_ms = 365 * 86_400_000;
        for k in 0..3 {
            model.insert(record(g.next_id(1_600_000_000_000 + k * year_ms), "quiet"));
        }
        let got = walk_after(
            &model,
            "quiet",
            MessageId::min_for_ms(1_500_000_000_000),
            50,
        );
        assert_eq!(got.len(), 3);
        assert_eq!(got, model.reference_after("quiet", MessageId(0), 50));
        // Per non-empty epoch: the epoch, its buckets (twice at most), one bucket page and its deleted ids; then
        // one final epoch read. Walking every one-second bucket instead would be ~63 million reads.
        assert!(
            model.reads.get() <= 3 * 5 + 1,
            "{} reads",
            model.reads.get()
        );
    }

    #[test]
    fn deleted_messages_are_skipped_and_a_forward_page_filled_from_newer_ones() {
        let mut model = Model::default();
        let mut g = MessageIdGen::new(0, 0);
        // One bucket larger than a read page, so that filling up needs a second page of the same bucket.
        let ids: Vec<MessageId> = (0..MESSAGES_PAGE_MAX + 100)
            .map(|_| g.next_id(1_700_000_000_000))
            .collect();
        for &id in &ids {
            model.insert(record(id, "busy"));
        }
        // The oldest 600 are deleted: the oldest 500 that remain come from further on.
        model.deleted.extend(ids[..600].iter().copied());
        let got = walk_after(&model, "busy", MessageId(0), 500);
        assert_eq!(got.len(), 500);
        assert_eq!(got, model.reference_after("busy", MessageId(0), 500));
        assert_eq!(got[0].id, ids[600]);
        // The whole bucket, past the page size, in one call.
        let n = ids.len() - 600;
        assert_eq!(walk_after(&model, "busy", ids[0], n + 5).len(), n);
    }

    #[test]
    fn a_forward_walk_reads_at_most_its_bound_of_buckets() {
        let mut model = Model::default();
        let mut g = MessageIdGen::new(0, 0);
        // More non-empty buckets than one call may read, every message in them deleted, then one that is kept.
        let n = AFTER_BUCKETS_PER_CALL_MAX + 10;
        let ids: Vec<MessageId> = (0..n as u64)
            .map(|k| g.next_id(1_700_000_000_000 + k * 1000))
            .collect();
        for &id in &ids {
            model.insert(record(id, "cleared"));
        }
        model.deleted.extend(ids[..n - 1].iter().copied());
        let got = walk_after(&model, "cleared", MessageId(0), 10);
        assert!(
            got.is_empty(),
            "the bound stops the walk before the kept one"
        );
        // A page and the deleted ids per bucket, the bucket lists (1, 2, 4, ... then 32 at a time), one epoch.
        let reads_max =
            2 * AFTER_BUCKETS_PER_CALL_MAX + AFTER_BUCKETS_PER_CALL_MAX / BUCKETS_PER_READ_MAX + 8;
        assert!(
            model.reads.get() <= reads_max,
            "{} reads",
            model.reads.get()
        );
        // Past the deleted buckets the kept message is found.
        assert_eq!(
            walk_after(&model, "cleared", ids[n - 2], 10),
            vec![record(ids[n - 1], "cleared")]
        );
    }

    #[test]
    fn a_bucket_larger_than_a_page_is_read_completely() {
        let mut model = Model::default();
        let mut g = MessageIdGen::new(0, 0);
        let n = MESSAGES_PAGE_MAX * 2 + 17;
        for _ in 0..n {
            model.insert(record(g.next_id(1_700_000_000_000), "busy"));
        }
        assert_eq!(model.partitions.len(), 1, "one bucket");
        let got = walk(&model, "busy", None, n + 5);
        assert_eq!(got.len(), n);
        assert_eq!(got, model.reference("busy", None, n + 5));
    }

    #[test]
    fn a_failed_batch_is_retried_within_its_budget() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let calls = Cell::new(0);
        let flaky = || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(StorageError::Io("timeout".into()))
                } else {
                    Ok(())
                }
            }
        };
        let ms = Duration::from_millis;
        runtime
            .block_on(with_retries(4, ms(1000), ms(1), flaky))
            .unwrap();
        assert_eq!(calls.get(), 3, "two failures, then success");

        calls.set(0);
        let down = || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(StorageError::Io("unavailable".into())) }
        };
        assert!(
            runtime
                .block_on(with_retries(4, ms(1000), ms(1), down))
                .is_err()
        );
        assert_eq!(calls.get(), 4, "at most the attempt limit");

        calls.set(0);
        assert!(
            runtime
                .block_on(with_retries(100, ms(20), ms(8), down))
                .is_err()
        );
        assert!(
            calls.get() <= 3,
            "the time budget ends retries: {}",
            calls.get()
        );

        calls.set(0);
        let invalid = || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(StorageError::Invalid("room".into())) }
        };
        assert!(
            runtime
                .block_on(with_retries(4, ms(1000), ms(1), invalid))
                .is_err()
        );
        assert_eq!(calls.get(), 1, "invalid requests are not retried");
    }

    #[test]
    fn keyspace_names_are_identifiers() {
        for ok in ["twitchy", "t", "chat_2"] {
            assert!(check_keyspace(ok).is_ok(), "{ok}");
        }
        for bad in ["", "2chat", "a;DROP", "a b", "a-b", "é", &"x".repeat(49)] {
            assert!(
                matches!(check_keyspace(bad), Err(StorageError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
