//! The embedded store: fjall (an LSM tree with a checksummed write-ahead journal) in the node's data directory.
//!
//! # Layout
//!
//! One fjall keyspace per kind of record:
//!
//! | keyspace   | key                                                          | value                        |
//! |------------|--------------------------------------------------------------|------------------------------|
//! | `messages` | `len(room) as u8`, `room`, first id (16 B BE), batch number (8 B BE), chunk index (4 B BE) | rkyv `Vec<MessageRecord>` |
//! | `accounts` | `login`                                                      | rkyv `AccountRecord`         |
//! | `tokens`   | SHA-256 of the token (32 B)                                  | login (UTF-8)                |
//! | `meta`     | `next_batch`                                                 | next batch number (u64 BE)   |
//!
//! Messages are stored in *chunks*: the messages of one room within one coalesced batch, sorted by id, at most
//! [`CHUNK_MESSAGES_MAX`] of them and spanning at most [`CHUNK_SPAN_MS_MAX`] of id time. A batch of a few thousand
//! messages over a few dozen rooms is then a few dozen LSM entries instead of a few thousand, and the per-entry
//! cost (memtable skiplist insert, journal framing, allocation) is what bounded a one-entry-per-message layout.
//! The `(batch number, chunk index)` suffix makes every chunk's key unique even if two chunks start at the same
//! id; the next batch number is written in the same atomic batch as the chunks.
//!
//! The length prefix makes a room's keys one contiguous range that no other room's keys can fall into (a plain
//! separator byte would let a room name containing it collide), and big-endian ids make byte order equal time
//! order, so history is a bounded reverse range read over the room's chunks ordered by first id. Because a
//! chunk spans at most `CHUNK_SPAN_MS_MAX`, once `limit` messages are in hand and the next chunk starts more than
//! that span below the oldest of them, no further chunk can hold a newer message and the read stops. Chunks are
//! read zero-copy: the archive is validated (bytecheck) and only the records that make the result are
//! deserialized. Nothing ever scans a whole keyspace; opening replays only the journal tail that was not yet
//! flushed to tables: the active and sealed memtables (64 MiB each), capped by fjall's 512 MiB journal limit,
//! never proportional to the data size.
//!
//! # Durability
//!
//! A batch of messages is one fjall write batch committed with [`PersistMode::SyncAll`]: the journal frames it
//! with a start marker and an end marker carrying an xxh3 checksum of the items, writes it, and fsyncs before
//! `commit` returns. Recovery replays complete batches and truncates the journal at the first torn or mismatching
//! one, so a crash leaves every acknowledged batch whole and no partial batch visible. After any journal write or
//! fsync failure fjall poisons the database and refuses all further writes, which is what the coalescer needs:
//! nothing is acknowledged after a failure whose on-disk effect is unknown.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode,
};
use rkyv::rancor::{self, Fallible};
use rkyv::ser::{Allocator, Writer};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use crate::codec;
use crate::error::{Result, StorageError};
use crate::id::MessageId;
use crate::record::{AccountRecord, ArchivedMessageRecord, MessageRecord};
use crate::{ROOM_BYTES_MAX, Store};

/// Block cache of the embedded store. Recent history of active rooms is what gets read; it is small.
const CACHE_BYTES: u64 = 64 << 20;
/// Most messages in one stored chunk. Bounds the bytes validated to serve a short history read.
pub const CHUNK_MESSAGES_MAX: usize = 256;
/// Most id time, in milliseconds, between the first and last message of a chunk. Bounds how far past the
/// requested messages a history read has to look.
pub const CHUNK_SPAN_MS_MAX: u64 = 50;

/// Key in the `meta` keyspace of the next message batch number (u64 BE).
const NEXT_BATCH_KEY: &[u8] = b"next_batch";
const ID_BYTES: usize = 16;
const SUFFIX_BYTES: usize = ID_BYTES + 8 + 4;

/// A durable single-machine store.
pub struct EmbeddedStore {
    db: Database,
    messages: Keyspace,
    accounts: Keyspace,
    tokens: Keyspace,
    meta: Keyspace,
    /// The number of the next message batch; see `append_messages`.
    next_batch: Mutex<u64>,
    /// Serialises account creation so that the check for an existing login and the insert are one step.
    account_create_lock: Mutex<()>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn io(e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(e.to_string())
}

/// The key prefix of every chunk of `room`.
fn room_prefix(room: &str) -> Result<Vec<u8>> {
    if room.is_empty() || room.len() > ROOM_BYTES_MAX {
        return Err(StorageError::Invalid(format!(
            "room name must be 1..={ROOM_BYTES_MAX} bytes"
        )));
    }
    let mut key = Vec::with_capacity(1 + room.len() + SUFFIX_BYTES);
    key.push(room.len() as u8);
    key.extend_from_slice(room.as_bytes());
    Ok(key)
}

/// The first id of the chunk stored under `key` (whose room prefix is `prefix_len` bytes).
fn chunk_first_id(key: &[u8], prefix_len: usize) -> Result<MessageId> {
    let bytes: [u8; ID_BYTES] = key
        .get(prefix_len..prefix_len + ID_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt("message chunk key too short".into()))?;
    if key.len() != prefix_len + SUFFIX_BYTES {
        return Err(StorageError::Corrupt(
            "message chunk key has the wrong length".into(),
        ));
    }
    Ok(MessageId::from_be_bytes(bytes))
}

/// Serialises a chunk of borrowed records exactly as a `Vec<MessageRecord>` would be, without cloning them.
struct ChunkRef<'a>(&'a [&'a MessageRecord]);

impl Archive for ChunkRef<'_> {
    type Archived = ArchivedVec<ArchivedMessageRecord>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for ChunkRef<'_>
where
    MessageRecord: Serialize<S, Archived = ArchivedMessageRecord>,
{
    fn serialize(&self, serializer: &mut S) -> std::result::Result<Self::Resolver, S::Error> {
        ArchivedVec::<ArchivedMessageRecord>::serialize_from_iter::<MessageRecord, _, _>(
            self.0.iter().copied(),
            serializer,
        )
    }
}

/// Splits one room's messages (sorted by id) into chunks within the count and span limits.
fn chunk_bounds(sorted: &[&MessageRecord]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..sorted.len() {
        let span_ms = sorted[i]
            .id
            .unix_ms()
            .saturating_sub(sorted[start].id.unix_ms());
        if i - start == CHUNK_MESSAGES_MAX || span_ms > CHUNK_SPAN_MS_MAX {
            out.push(start..i);
            start = i;
        }
    }
    if start < sorted.len() {
        out.push(start..sorted.len());
    }
    out
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` and recovers it from its journal.
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Io(format!("creating {}: {e}", dir.display())))?;
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            // Batches carry their own durability (SyncAll); no need for the extra flush on every commit.
            .manual_journal_persist(true)
            // Compressing journal entries costs the writer thread CPU on every batch; the data is compressed
            // anyway when it moves to tables and blob files in the background.
            .journal_compression(CompressionType::None)
            .open()
            .map_err(|e| StorageError::Io(format!("opening {}: {e}", dir.display())))?;
        // Chunks are written once and never updated, and are mostly larger than the separation threshold: kept in
        // blob files, they are not rewritten by compaction, which otherwise cannot keep up with a sustained
        // 40+ MB/s of messages on two cores and stalls writes.
        let messages = db
            .keyspace("messages", || {
                KeyspaceCreateOptions::default()
                    .with_kv_separation(Some(KvSeparationOptions::default()))
            })
            .map_err(io)?;
        let accounts = db
            .keyspace("accounts", KeyspaceCreateOptions::default)
            .map_err(io)?;
        let tokens = db
            .keyspace("tokens", KeyspaceCreateOptions::default)
            .map_err(io)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(io)?;
        let next_batch =
            match meta.get(NEXT_BATCH_KEY).map_err(io)? {
                Some(bytes) => u64::from_be_bytes(bytes[..].try_into().map_err(|_| {
                    StorageError::Corrupt("next batch number is not 8 bytes".into())
                })?),
                None => 0,
            };
        Ok(EmbeddedStore {
            db,
            messages,
            accounts,
            tokens,
            meta,
            next_batch: Mutex::new(next_batch),
            account_create_lock: Mutex::new(()),
        })
    }

    /// Up to `limit` messages of `room` with id `< before`, newest first.
    fn newest_first(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        let prefix = room_prefix(room)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix_len = prefix.len();
        let iter = match before {
            // Chunks that start at or after `before` hold nothing older than it; their keys sort after this end.
            Some(id) => {
                let mut end = prefix.clone();
                end.extend_from_slice(&id.to_be_bytes());
                self.messages.range(prefix..end)
            }
            // Every key with this prefix belongs to this room: see the layout note on the length byte.
            None => self.messages.prefix(prefix),
        };
        // The best `limit` messages so far, keyed by id (which also drops any id stored twice).
        let mut best: BTreeMap<MessageId, MessageRecord> = BTreeMap::new();
        let mut aligned = AlignedVec::<16>::new();
        for guard in iter.rev() {
            let (key, value) = guard.into_inner().map_err(io)?;
            let first = chunk_first_id(&key, prefix_len)?;
            if best.len() == limit {
                // Every id in this chunk and in the chunks after it (which start no later) is below `ceiling`.
                let ceiling =
                    MessageId::min_for_ms(first.unix_ms().saturating_add(CHUNK_SPAN_MS_MAX + 1));
                if best
                    .first_key_value()
                    .is_some_and(|(oldest, _)| *oldest >= ceiling)
                {
                    break;
                }
            }
            aligned.clear();
            aligned.extend_from_slice(&value);
            let chunk = rkyv::access::<ArchivedVec<ArchivedMessageRecord>, rancor::Error>(&aligned)
                .map_err(|e| StorageError::Corrupt(format!("message chunk: {e}")))?;
            for archived in chunk.iter().rev() {
                let id = MessageId(archived.id.0.to_native());
                if before.is_some_and(|b| id >= b) {
                    continue;
                }
                let full = best.len() == limit;
                if full
                    && best
                        .first_key_value()
                        .is_some_and(|(oldest, _)| id <= *oldest)
                {
                    // Records are sorted within a chunk: the rest of this chunk is older still.
                    break;
                }
                if best.contains_key(&id) {
                    continue;
                }
                let record = rkyv::deserialize::<MessageRecord, rancor::Error>(archived)
                    .map_err(|e| StorageError::Corrupt(format!("message: {e}")))?;
                best.insert(id, record);
                if best.len() > limit {
                    best.pop_first();
                }
            }
        }
        Ok(best.into_values().rev().collect())
    }
}

impl Store for EmbeddedStore {
    fn append_messages(&self, batch: &[MessageRecord]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut rooms: HashMap<&str, Vec<&MessageRecord>> = HashMap::new();
        for record in batch {
            room_prefix(&record.room)?;
            rooms.entry(record.room.as_str()).or_default().push(record);
        }
        // The batch number tells this batch's chunks apart from every other batch's. It is stored with the batch
        // (same atomic write), so after a crash numbering resumes past every batch that made it to disk. The lock
        // keeps numbers and their stored high-water mark in order should two threads ever append at once.
        let mut next_batch = self.next_batch.lock().unwrap_or_else(|p| p.into_inner());
        let batch_seqno = *next_batch;
        *next_batch += 1;
        let mut wb = self.db.batch().durability(Some(PersistMode::SyncAll));
        wb.insert(
            &self.meta,
            NEXT_BATCH_KEY,
            next_batch.to_be_bytes().as_slice(),
        );
        let mut chunk_index = 0u32;
        let mut buf = AlignedVec::<16>::new();
        for (room, mut records) in rooms {
            records.sort_by_key(|r| r.id);
            records.dedup_by_key(|r| r.id);
            for range in chunk_bounds(&records) {
                let chunk = &records[range];
                let mut key = room_prefix(room)?;
                key.extend_from_slice(&chunk[0].id.to_be_bytes());
                key.extend_from_slice(&batch_seqno.to_be_bytes());
                key.extend_from_slice(&chunk_index.to_be_bytes());
                chunk_index += 1;
                buf.clear();
                buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&ChunkRef(chunk), buf)
                    .map_err(|e| StorageError::Corrupt(format!("encoding messages: {e}")))?;
                wb.insert(&self.messages, key, buf.as_slice());
            }
        }
        wb.commit().map_err(io)
    }

    fn recent_messages(&self, room: &str, limit: usize) -> Result<Vec<MessageRecord>> {
        let mut out = self.newest_first(room, None, limit)?;
        out.reverse();
        Ok(out)
    }

    fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        self.newest_first(room, before, limit)
    }

    fn create_account(&self, account: &AccountRecord) -> Result<()> {
        let value = codec::encode_account(account)?;
        let _guard = self
            .account_create_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self
            .accounts
            .contains_key(account.login.as_bytes())
            .map_err(io)?
        {
            return Err(StorageError::AlreadyExists);
        }
        let mut wb = self.db.batch().durability(Some(PersistMode::SyncAll));
        wb.insert(&self.accounts, account.login.as_bytes(), value.as_slice());
        wb.commit().map_err(io)
    }

    fn account(&self, login: &str) -> Result<Option<AccountRecord>> {
        match self.accounts.get(login.as_bytes()).map_err(io)? {
            Some(bytes) => Ok(Some(codec::decode_account(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_token(&self, token_sha256: [u8; 32], login: &str) -> Result<()> {
        let mut wb = self.db.batch().durability(Some(PersistMode::SyncAll));
        wb.insert(&self.tokens, token_sha256.as_slice(), login.as_bytes());
        wb.commit().map_err(io)
    }

    fn login_for_token(&self, token_sha256: [u8; 32]) -> Result<Option<String>> {
        match self.tokens.get(token_sha256).map_err(io)? {
            Some(bytes) => String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|_| StorageError::Corrupt("token login is not UTF-8".into())),
            None => Ok(None),
        }
    }
}
