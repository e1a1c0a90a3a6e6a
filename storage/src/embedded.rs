//! The embedded store: an append-only commit log ([`crate::commit_log`]) for durability, and fjall (an LSM tree)
//! as the index that history, accounts and tokens are read from, all in the node's data directory.
//!
//! # Write path (why a commit log in front of fjall)
//!
//! A batch of messages is encoded on the writer thread into the exact fjall items that will hold it (one rkyv
//! *chunk* per room, see below), appended to the commit log as one CRC-checked record and `fdatasync`ed. That is
//! the acknowledgement point. The same bytes are then handed to the *indexer* thread, off the acknowledgement
//! path, which appends the chunks to the message archive ([`crate::archive`], one write per record, no fsync) and
//! writes a 21-byte reference to each into fjall under the chunk's key.
//!
//! Measured before this design (fjall's own journal as the commit path, `SyncAll` per batch, in
//! `storage_load --breakdown`): the ack p99 of 100+ ms came from a few batches per run whose `commit()` took
//! 100–200 ms while encode took < 1 ms and the journal fsync itself ~1–3 ms. `commit()` does more than the write
//! and fsync: after applying the batch to the memtable it checks the keyspace for back-pressure and sleeps
//! 100 ms per check while 4+ sealed memtables await flushing (`Keyspace::local_backpressure`), spins or sleeps in
//! 10 ms steps at 20+ L0 runs, and the flush worker rotates the journal (file creation, `set_len`, `sync_all`)
//! while holding the journal lock that `commit()` needs. On two cores the flush and compaction threads also
//! compete with the writer for CPU. None of this can be tuned away while the acknowledgement waits for `commit()`,
//! so fjall stays, as the index, and the acknowledgement waits only for the log. With the log the same run shows
//! the slow batches at the length of one `fdatasync` plus scheduling delay.
//!
//! The indexer and fjall's worker threads (which fjall spawns from the thread that opens it, so they inherit its
//! priority) run at nice [`INDEXER_NICE`] and the lowest best-effort IO priority, and the thread that appends to
//! the log asks for the real-time IO class and the real-time CPU class ([`LOG_WRITER_RT_PRIORITY`], or nice
//! [`LOG_WRITER_NICE`] where refused), so on a busy machine the writer and the producers get the CPU and the disk
//! queue first and indexing catches up in the gaps.
//!
//! # Reads see every acknowledged message
//!
//! A read first waits (at most [`EmbeddedOptions::read_index_wait_ms_max`]) until the indexer has applied every
//! record that was durable when the read started, so history never misses an acknowledged message: paging back
//! ([`Store::messages_before`]) or forward ([`Store::messages_after`], how a client that reconnects catches up).
//!
//! # Layout
//!
//! One fjall keyspace per kind of record:
//!
//! | keyspace   | key                                                          | value                        |
//! |------------|--------------------------------------------------------------|------------------------------|
//! | `messages` | `len(room) as u8`, `room`, first id (16 B BE), batch number (8 B BE), chunk index (4 B BE) | where the chunk (rkyv `Vec<MessageRecord>`) is in the archive; the chunk itself in stores written before the archive |
//! | `accounts` | `login`                                                      | rkyv `AccountRecord`         |
//! | `tokens`   | SHA-256 of the token (32 B)                                  | `1`, issued ms (8 B BE), expires ms (8 B BE), login |
//! | `login_tokens` | `len(login) as u8`, `login`, issued ms (8 B BE), SHA-256 | expires ms (8 B BE)         |
//! | `meta`     | `next_batch`; `archive_mark`; `indexed_seq` (stores written before the archive) | u64 BE; u64 BE and the archive's durable end |
//! | `settings` | the settings key (UTF-8)                                     | the value                    |
//! | `deleted_messages` | `len(room) as u8`, `room`, id (16 B BE)              | empty                        |
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
//! that span below the oldest of them, no further chunk can hold a newer message and the read stops. A forward
//! page is a forward range read that starts `CHUNK_SPAN_MS_MAX` before `after` (a chunk that starts earlier than
//! `after` may still hold newer ids, but none that starts earlier than that) and stops once `limit` messages are
//! in hand and the next chunk starts at or past the newest of them. Chunks are read zero-copy: the archive is
//! validated (bytecheck) and only the records that make the result are deserialized.
//!
//! Token values written before expiry existed (a bare login) are treated as expired: those users log in once more.
//!
//! # Durability and recovery
//!
//! About four times a second (and whenever a log segment is sealed) the indexer syncs the archive, records in
//! fjall how far it is durable together with the last log record it covers (`archive_mark`), fsyncs fjall's
//! journal, and then deletes the log segments whose records are all at or below that record. Opening cuts the
//! archive back to the recorded mark and replays the log records after the mark's record into the index
//! (idempotent: the chunk keys are those of the original write, so a reference fjall kept to bytes past the mark
//! is replaced), so a crash at any point loses no acknowledged message and shows no message whose append failed
//! (the log cuts failed records out before reporting the failure). A store written before the archive existed
//! has no mark; it replays after its `indexed_seq`, and its inline chunks stay readable.
//!
//! Accounts, tokens, settings and deletion markers are written straight to fjall, each change as one batch with
//! `PersistMode::SyncAll` (they are rare, and must be readable at once): durable when the call returns `Ok`. A
//! rename is one such batch (the account's old and new keys and every token of the login), so after a crash the
//! account and its tokens are under exactly one of the two logins.
//!
//! # Deleted messages
//!
//! Chunks are never rewritten. Deleting a message writes a marker under the room's prefix and the id; a history
//! read skips marked ids (one point lookup per candidate, and none at all for a room without markers, which one
//! seek tells) and keeps reading older chunks (newer ones, paging forward) until its page is full.
//! `delete_message` first waits for the index like a history read, so a message that was acknowledged but only
//! in the commit log is found; the marker does not care where the message is, so replaying the log after a crash
//! cannot bring it back.
//!
//! # Failure and recovery without a restart
//!
//! A failed log append fails its batch and leaves the log usable: the next batch (or a [`Store::recover`] probe)
//! tries again, so when disk space comes back, so does the store. After any journal write error fjall poisons
//! itself and refuses all writes until reopened; the indexer then reports the store unavailable
//! ([`Store::health`]) and keeps trying to reopen fjall and replay the log into it, with back-off, until it
//! succeeds. Only a log that could not cut a failed record back out reports [`Health::Failed`]: the process must
//! exit and be restarted by its supervisor.
//!
//! [`CommitPath::FjallJournal`] keeps the previous design (fjall's journal, `SyncAll` per batch, no log) for the
//! same-run comparison in the `storage_load` example and the benchmark.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode,
};
use rkyv::rancor::{self, Fallible};
use rkyv::ser::{Allocator, Writer};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use crate::archive::{ArchiveMark, ArchiveReader, ArchiveWriter, ChunkLocation};
use crate::coalescer::check_room;
use crate::codec;
use crate::commit_log::{self, CommitLog, RecordKind, SealedSegments};
use crate::error::{Result, StorageError};
use crate::id::MessageId;
use crate::record::{AccountRecord, ArchivedMessageRecord, MessageRecord, TokenRecord};
use crate::{Health, Store, settings};

/// Block cache of the embedded store. Recent history of active rooms is what gets read; it is small.
const CACHE_BYTES: u64 = 64 << 20;
/// Most messages in one stored chunk. Bounds the bytes validated to serve a short history read.
pub const CHUNK_MESSAGES_MAX: usize = 256;
/// Most id time, in milliseconds, between the first and last message of a chunk. Bounds how far past the
/// requested messages a history read has to look.
pub const CHUNK_SPAN_MS_MAX: u64 = 50;
/// Niceness asked for by the thread that appends to the log where it may not use the real-time class (needs
/// `CAP_SYS_NICE`; best effort).
pub const LOG_WRITER_NICE: i32 = -10;
/// `SCHED_FIFO` priority asked for by the thread that appends to the log (needs `CAP_SYS_NICE` or an
/// `RLIMIT_RTPRIO` of at least this; best effort). Low within the real-time range: the kernel's own real-time
/// threads stay ahead of it.
pub const LOG_WRITER_RT_PRIORITY: i32 = 10;
/// Log record bytes reserved per message before encoding a batch.
const PAYLOAD_BYTES_PER_MESSAGE_GUESS: usize = 320;
/// Chunks at least this large are stored in blob files (key-value separation), in bytes.
const CHUNK_SEPARATION_BYTES_MIN: u32 = 64;
/// Memtable size of the messages keyspace.
const MESSAGES_MEMTABLE_BYTES: u64 = 16 << 20;
/// Size of the tables compaction writes for the messages keyspace (fjall's default is 64 MiB).
const MESSAGES_TABLE_BYTES: u64 = 8 << 20;
/// Niceness of the indexer thread and of fjall's flush and compaction threads.
pub const INDEXER_NICE: i32 = 10;
/// Log records handed to the indexer that may wait for it; beyond this the indexer reads them back from the log.
const INDEX_QUEUE_RECORDS_MAX: usize = 1024;
/// Record buffers kept for reuse between the indexer and the log writer.
const SPARE_PAYLOADS_MAX: usize = 4;
/// How often, at most, fjall's journal is fsynced so that log segments can be deleted.
const INDEX_PERSIST_INTERVAL: Duration = Duration::from_millis(250);
/// How long the indexer waits for new records before checking whether it missed some.
const INDEX_IDLE_CHECK: Duration = Duration::from_millis(50);
/// Back-off between attempts to reopen a failed index: first and longest.
const INDEX_REOPEN_BACKOFF_MS_MIN: u64 = 50;
const INDEX_REOPEN_BACKOFF_MS_MAX: u64 = 2_000;

/// Keys in the `meta` keyspace: the next message batch number, and the last log record in the index of a store
/// written before the archive (u64 BE).
const NEXT_BATCH_KEY: &[u8] = b"next_batch";
const INDEXED_SEQ_KEY: &[u8] = b"indexed_seq";
/// Key in the `meta` keyspace: the last log record whose chunks the archive holds durably, and how far the
/// archive is durable (u64 BE, then an [`ArchiveMark`]). Recovery replays the log after that record.
const ARCHIVE_MARK_KEY: &[u8] = b"archive_mark";
/// The message archive's directory under the index directory.
const ARCHIVE_DIR: &str = "message-archive";
const ID_BYTES: usize = 16;
const SUFFIX_BYTES: usize = ID_BYTES + 8 + 4;
/// Keyspace tags in a log record's items.
const KS_MESSAGES: u8 = 0;
const KS_META: u8 = 1;
/// First byte of a token value in the current format.
const TOKEN_FORMAT: u8 = 1;
/// Bytes of a recovery probe record.
const PROBE_BYTES: usize = 64 << 10;

/// What makes a batch of messages durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPath {
    /// The commit log, with fjall as an index written off the acknowledgement path (the default).
    CommitLog,
    /// fjall's own journal, `SyncAll` per batch: the previous design, kept as a measured baseline.
    FjallJournal,
}

/// Tuning of the embedded store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    pub commit_path: CommitPath,
    /// Size at which a commit log segment is sealed, in bytes.
    pub segment_bytes_max: u64,
    /// How long a read waits for the index to catch up with the acknowledged messages, in milliseconds, before it
    /// answers [`StorageError::Unavailable`].
    pub read_index_wait_ms_max: u64,
    /// Whether the thread that appends to the log asks for the real-time CPU class ([`LOG_WRITER_RT_PRIORITY`];
    /// else, or where that is refused, nice [`LOG_WRITER_NICE`]). See "The log writer's CPU class" in the crate
    /// docs for why and what it costs.
    pub log_writer_realtime: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            commit_path: CommitPath::CommitLog,
            segment_bytes_max: commit_log::SEGMENT_BYTES_MAX,
            read_index_wait_ms_max: 5_000,
            log_writer_realtime: true,
        }
    }
}

/// Where one durable batch spent its time on the writer thread, in microseconds. Recorded when asked for with
/// [`EmbeddedStore::record_timings`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchTiming {
    pub messages: usize,
    /// Building the chunks (rkyv) and the log record.
    pub encode_us: u64,
    /// Log: the positioned write. fjall journal path: the whole `commit()` (journal write, fsync, memtable insert,
    /// write-stall checks).
    pub write_us: u64,
    /// Log: the `fdatasync`. fjall journal path: 0 (inside `write_us`).
    pub sync_us: u64,
    /// Time the writer thread spent runnable but waiting for a CPU during the batch (from
    /// `/proc/thread-self/schedstat`); 0 where unavailable.
    pub run_delay_us: u64,
    /// fjall's sealed memtables waiting for flush, and L0 tables, of the messages keyspace when the batch started:
    /// fjall journal path only (0 on the log path, whose writer does not touch fjall).
    pub sealed_memtables: usize,
    pub l0_tables: usize,
}

/// Nanoseconds the calling thread has spent runnable but not running, if the kernel reports it.
pub(crate) fn thread_run_delay_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

fn io(e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(e.to_string())
}

/// The fjall database and its keyspaces: the index. Replaced as a whole when reopened after a failure.
struct Index {
    db: Database,
    /// Chunk references (see [`crate::archive`]); chunks stored inline by earlier versions are read as they are.
    messages: Keyspace,
    /// Written by the indexer alone.
    archive_writer: Mutex<ArchiveWriter>,
    archive: ArchiveReader,
    accounts: Keyspace,
    tokens: Keyspace,
    login_tokens: Keyspace,
    meta: Keyspace,
    settings: Keyspace,
    deleted: Keyspace,
}

impl Index {
    fn open(dir: &Path) -> Result<Index> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Io(format!("creating {}: {e}", dir.display())))?;
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            // Durability is asked for explicitly (SyncAll batches, or the indexer's periodic persist).
            .manual_journal_persist(true)
            // Only the indexer (off the acknowledgement path, at low priority) writes the journal: compressing it
            // costs that thread some CPU and saves the disk, which the commit log's fsyncs share, a lot of bytes.
            .journal_compression(CompressionType::Lz4)
            .open()
            .map_err(|e| StorageError::Io(format!("opening {}: {e}", dir.display())))?;
        // Chunks are written once and never updated, and are mostly larger than the separation threshold: kept in
        // blob files, they are not rewritten by compaction, which otherwise cannot keep up with a sustained
        // 40+ MB/s of messages on two cores.
        let messages = db
            .keyspace("messages", || {
                KeyspaceCreateOptions::default()
                    .with_kv_separation(Some(
                        // Every chunk holds at least one whole message, so every chunk goes to blob files: the
                        // default 1 KiB threshold kept the small chunks of small batches in the tree, where
                        // compaction rewrote them over and over.
                        KvSeparationOptions::default()
                            .separation_threshold(CHUNK_SEPARATION_BYTES_MIN),
                    ))
                    // Smaller memtables flush in smaller bursts of writes, which the log's fsyncs queue behind.
                    .max_memtable_size(MESSAGES_MEMTABLE_BYTES)
                    // The same for compaction: each output table is written and synced on its own.
                    .compaction_strategy(Arc::new(
                        fjall::compaction::Leveled::default()
                            .with_table_target_size(MESSAGES_TABLE_BYTES),
                    ))
            })
            .map_err(io)?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(io)
        };
        let accounts = keyspace("accounts")?;
        let tokens = keyspace("tokens")?;
        let login_tokens = keyspace("login_tokens")?;
        let meta = keyspace("meta")?;
        let settings = keyspace("settings")?;
        let deleted = keyspace("deleted_messages")?;
        let archive_dir = dir.join(ARCHIVE_DIR);
        let mark = archive_mark(&meta)?.map(|(_, mark)| mark);
        let archive_writer = Mutex::new(ArchiveWriter::open(&archive_dir, mark)?);
        Ok(Index {
            db,
            messages,
            archive_writer,
            archive: ArchiveReader::new(&archive_dir),
            accounts,
            tokens,
            login_tokens,
            meta,
            settings,
            deleted,
        })
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64> {
        match self.meta.get(key).map_err(io)? {
            Some(bytes) => {
                Ok(u64::from_be_bytes(bytes[..].try_into().map_err(|_| {
                    StorageError::Corrupt("meta value is not 8 bytes".into())
                })?))
            }
            None => Ok(0),
        }
    }

    /// The last log record recovery may start after: the one the archive mark covers, or, in a store written
    /// before the archive existed (chunks inline, no mark), the last record fjall held.
    fn recovered_seq(&self) -> Result<u64> {
        match archive_mark(&self.meta)? {
            Some((seq, _)) => Ok(seq),
            None => self.meta_u64(INDEXED_SEQ_KEY),
        }
    }

    /// Writes the items of one log record to the index, without fsync: its chunks to the archive (one write),
    /// their references and the other items to fjall.
    fn apply(&self, payload: &[u8]) -> Result<()> {
        let mut wb = self.db.batch();
        let mut archive = self
            .archive_writer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for_each_item(payload, |ks, key, value| {
            match ks {
                KS_MESSAGES => {
                    let chunk = archive.stage(value);
                    wb.insert(&self.messages, key, chunk.encode().as_slice());
                }
                KS_META => wb.insert(&self.meta, key, value),
                other => {
                    return Err(StorageError::Corrupt(format!(
                        "commit log item for unknown keyspace {other}"
                    )));
                }
            }
            Ok(())
        })?;
        // The chunks are written before fjall can hand out their references.
        archive.write_staged()?;
        wb.commit().map_err(io)
    }

    /// Makes the archive and fjall durable through log record `seq` (everything applied so far): the archive
    /// first, then its mark, then fjall's journal.
    fn persist_through(&self, seq: u64) -> Result<()> {
        let mark = self
            .archive_writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync()?;
        let mut value = seq.to_be_bytes().to_vec();
        value.extend_from_slice(&mark.encode());
        self.meta.insert(ARCHIVE_MARK_KEY, value).map_err(io)?;
        self.db.persist(PersistMode::SyncAll).map_err(io)
    }

    /// A stored chunk's bytes, from the archive or (written before it existed) inline, into `out`.
    fn chunk_bytes(&self, value: &[u8], out: &mut AlignedVec<16>) -> Result<()> {
        match ChunkLocation::decode(value) {
            Some(chunk) => self.archive.read(&chunk, out),
            None => {
                out.clear();
                out.extend_from_slice(value);
                Ok(())
            }
        }
    }
}

/// The recorded archive mark: the last log record the archive holds durably, and how far it is durable.
fn archive_mark(meta: &Keyspace) -> Result<Option<(u64, ArchiveMark)>> {
    let Some(value) = meta.get(ARCHIVE_MARK_KEY).map_err(io)? else {
        return Ok(None);
    };
    let (seq, mark) = value
        .split_first_chunk::<8>()
        .ok_or_else(|| StorageError::Corrupt("archive mark is too short".into()))?;
    Ok(Some((u64::from_be_bytes(*seq), ArchiveMark::decode(mark)?)))
}

/// Appends one item to a log record payload.
fn push_item(out: &mut Vec<u8>, ks: u8, key: &[u8], value: &[u8]) {
    out.push(ks);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Walks the items of a log record payload.
fn for_each_item(
    mut payload: &[u8],
    mut each: impl FnMut(u8, &[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let bad = || StorageError::Corrupt("commit log record items are malformed".into());
    while !payload.is_empty() {
        let head = payload.get(..9).ok_or_else(bad)?;
        let key_len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        let value_len = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes")) as usize;
        let key = payload.get(9..9 + key_len).ok_or_else(bad)?;
        let value = payload
            .get(9 + key_len..9 + key_len + value_len)
            .ok_or_else(bad)?;
        each(head[0], key, value)?;
        payload = &payload[9 + key_len + value_len..];
    }
    Ok(())
}

/// How far the log and the index have got, with a condition variable for readers waiting on the index.
#[derive(Default)]
struct Progress {
    /// (last durable log record, last record applied to the index)
    seqs: Mutex<(u64, u64)>,
    indexed: Condvar,
}

impl Progress {
    fn get(&self) -> (u64, u64) {
        *self.seqs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_durable(&self, seq: u64) {
        self.seqs.lock().unwrap_or_else(|p| p.into_inner()).0 = seq;
    }

    fn set_indexed(&self, seq: u64) {
        self.seqs.lock().unwrap_or_else(|p| p.into_inner()).1 = seq;
        self.indexed.notify_all();
    }

    /// Waits until every record durable now is indexed; false on timeout.
    fn wait_indexed(&self, timeout: Duration) -> bool {
        let guard = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
        let target = guard.0;
        let (_guard, result) = self
            .indexed
            .wait_timeout_while(guard, timeout, |s| s.1 < target)
            .unwrap_or_else(|p| p.into_inner());
        !result.timed_out()
    }
}

/// What the store's threads share.
struct Inner {
    index_dir: PathBuf,
    log_dir: PathBuf,
    /// `None` while the index is being reopened.
    index: RwLock<Option<Arc<Index>>>,
    progress: Progress,
    /// Why the index is unusable, while it is.
    index_failure: Mutex<Option<String>>,
}

impl Inner {
    fn index(&self) -> Result<Arc<Index>> {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StorageError::Unavailable("the index is being reopened".into()))
    }

    fn set_failure(&self, reason: Option<String>) {
        *self.index_failure.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    fn failure(&self) -> Option<String> {
        self.index_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replays the durable log records the index lacks into `index`; returns the new indexed sequence number.
    fn catch_up(&self, index: &Index, indexed: u64, through: u64) -> Result<u64> {
        let mut last = indexed;
        commit_log::replay(&self.log_dir, indexed, through, |seq, payload| {
            index.apply(payload)?;
            last = seq;
            Ok(())
        })?;
        // Probes at the end of the range are not replayed but are covered.
        Ok(last.max(through))
    }

    /// Drops the failed index (once no reader holds it), opens it again from its journal, and replays the log into
    /// it. Returns the new indexed sequence number.
    fn reopen(&self) -> Result<u64> {
        let old = self.index.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(old) = old {
            // Readers hold the index for one read at most; the database must be closed before it is reopened.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        let index = Index::open(&self.index_dir)?;
        let indexed = index.recovered_seq()?;
        let (durable, _) = self.progress.get();
        let indexed = self.catch_up(&index, indexed, durable)?;
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(index));
        Ok(indexed)
    }
}

/// A record for the indexer: a batch's items, or `None` for a probe (nothing to index).
struct IndexItem {
    seq: u64,
    payload: Option<Vec<u8>>,
}

/// The commit path's writing end.
struct LogWriter {
    log: CommitLog,
    /// Record buffers the indexer is done with, for reuse: a fresh buffer of a few hundred kilobytes per batch
    /// would be faulted in (and zeroed by the kernel) again and again.
    spare_payloads: flume::Receiver<Vec<u8>>,
}

/// A durable single-machine store.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    options: EmbeddedOptions,
    /// The commit log (commit-log path only).
    log: Option<Mutex<LogWriter>>,
    index_tx: Option<flume::Sender<IndexItem>>,
    indexer: Option<JoinHandle<()>>,
    /// The number of the next message batch; see `append_messages`.
    next_batch: Mutex<u64>,
    /// Serialises account creation and token grants, so that checks and writes are one step.
    account_lock: Mutex<()>,
    timings: Mutex<Option<Vec<BatchTiming>>>,
    /// Set (for good) when the log could not cut a failed append back out; read by `health` without waiting for
    /// the log's lock.
    log_fatal: Mutex<Option<String>>,
    /// Why the log cannot prepare its next segment, while it cannot (see [`CommitLog::preparer_failure`]).
    log_preparer_failure: Option<Arc<Mutex<Option<String>>>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The key prefix of every chunk of `room`.
fn room_prefix(room: &str) -> Result<Vec<u8>> {
    check_room(room)?;
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

/// Sets the calling thread's niceness (on Linux niceness is per thread, and threads it spawns inherit it). Best
/// effort: a failure only costs the priority split.
pub(crate) fn set_thread_nice(nice: i32) {
    // SAFETY: plain syscalls that only read the calling thread's id and change its own scheduling priority.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if result != 0 {
        log::debug!("storage: could not set a thread's niceness to {nice}");
    }
}

/// IO priority classes (`ioprio_set(2)`).
const IOPRIO_CLASS_RT: u64 = 1;
const IOPRIO_CLASS_BE: u64 = 2;
const IOPRIO_CLASS_SHIFT: u64 = 13;

/// Sets the calling thread's IO priority. Best effort: without the privilege for the real-time class, or with an
/// IO scheduler that ignores priorities, it changes nothing.
pub(crate) fn set_thread_io_priority(class: u64, level: u64) -> bool {
    // SAFETY: plain syscalls on the calling thread's own IO priority.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(
            libc::SYS_ioprio_set,
            1, // IOPRIO_WHO_PROCESS: with a thread id, that thread
            tid,
            (class << IOPRIO_CLASS_SHIFT) | level,
        )
    };
    result == 0
}

/// Puts the calling thread in the `SCHED_FIFO` class at `priority`, with `SCHED_RESET_ON_FORK` so that threads
/// it spawns start in the normal class. Best effort: false where the process may not (no `CAP_SYS_NICE` and too
/// low an `RLIMIT_RTPRIO`).
pub(crate) fn set_thread_realtime(priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a plain syscall on the calling thread's own scheduling class (pid 0 is the calling thread), with a
    // parameter that lives across the call.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) == 0
    }
}

/// Turns transparent huge pages off for the whole process (`PR_SET_THP_DISABLE`, which the kernel checks at every
/// page fault, so it holds for memory mapped earlier too; child processes inherit it). Meant for a process's
/// start: the engine calls it when it starts, and so do the storage load generator and benchmark. Returns false
/// where the kernel refuses. See "Huge pages" in the crate docs for why.
pub fn disable_transparent_huge_pages() -> bool {
    // SAFETY: a plain prctl that changes only this process's own memory settings.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

/// Gives the thread that appends to the log (the coalescer's writer) the real-time IO class and a higher CPU
/// priority, once: its small writes and fsyncs then go before the background writes of fjall's flushes and
/// compactions (and of other processes) in the block layer's queue, where the scheduler honours classes
/// (mq-deadline, bfq); and every message of a batch waits for this thread alone, so it preempts background work
/// (and, where the process may, other processes) for the CPU: the real-time class when `realtime` and allowed,
/// else nice [`LOG_WRITER_NICE`]. Without the privilege both are no-ops.
fn prioritise_log_writer(realtime: bool) {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    DONE.with(|done| {
        if !done.get() {
            done.set(true);
            if !set_thread_io_priority(IOPRIO_CLASS_RT, 4) {
                set_thread_io_priority(IOPRIO_CLASS_BE, 0);
            }
            if !(realtime && set_thread_realtime(LOG_WRITER_RT_PRIORITY)) {
                set_thread_nice(LOG_WRITER_NICE);
            }
        }
    });
}

/// Builds the items of one batch: the rooms' chunks and the next batch number.
fn encode_batch(
    batch: &[MessageRecord],
    batch_seqno: u64,
    mut put: impl FnMut(u8, &[u8], &[u8]),
) -> Result<()> {
    let mut rooms: HashMap<&str, Vec<&MessageRecord>> = HashMap::new();
    for record in batch {
        room_prefix(&record.room)?;
        rooms.entry(record.room.as_str()).or_default().push(record);
    }
    put(
        KS_META,
        NEXT_BATCH_KEY,
        (batch_seqno + 1).to_be_bytes().as_slice(),
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
            put(KS_MESSAGES, &key, buf.as_slice());
        }
    }
    Ok(())
}

/// The key prefix of a login's entries in `login_tokens`.
fn login_prefix(login: &str) -> Result<Vec<u8>> {
    if login.is_empty() || login.len() > u8::MAX as usize {
        return Err(StorageError::Invalid(
            "login must be 1..=255 bytes".to_string(),
        ));
    }
    let mut key = Vec::with_capacity(1 + login.len() + 8 + 32);
    key.push(login.len() as u8);
    key.extend_from_slice(login.as_bytes());
    Ok(key)
}

fn encode_token(token: &TokenRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(17 + token.login.len());
    v.push(TOKEN_FORMAT);
    v.extend_from_slice(&token.issued_unix_ms.to_be_bytes());
    v.extend_from_slice(&token.expires_unix_ms.to_be_bytes());
    v.extend_from_slice(token.login.as_bytes());
    v
}

/// Decodes a token value; `None` for the format without expiry (a bare login), which counts as expired.
fn decode_token(bytes: &[u8]) -> Result<Option<TokenRecord>> {
    if bytes.first() != Some(&TOKEN_FORMAT) {
        return Ok(None);
    }
    let bad = || StorageError::Corrupt("token value is malformed".into());
    let issued = bytes.get(1..9).ok_or_else(bad)?;
    let expires = bytes.get(9..17).ok_or_else(bad)?;
    let login = std::str::from_utf8(&bytes[17..]).map_err(|_| bad())?;
    Ok(Some(TokenRecord {
        login: login.to_owned(),
        issued_unix_ms: u64::from_be_bytes(issued.try_into().expect("8 bytes")),
        expires_unix_ms: u64::from_be_bytes(expires.try_into().expect("8 bytes")),
    }))
}

fn login_token_key(token: &TokenRecord, token_sha256: &[u8; 32]) -> Result<Vec<u8>> {
    let mut key = login_prefix(&token.login)?;
    key.extend_from_slice(&token.issued_unix_ms.to_be_bytes());
    key.extend_from_slice(token_sha256);
    Ok(key)
}

/// The indexer thread: applies log records to fjall in order, reads back from the log whatever it was not handed
/// (a full queue, a probe, a reopen), persists fjall and deletes covered log segments, and reopens fjall after a
/// failure. Returns when the store is dropped and everything durable is indexed.
fn run_indexer(
    inner: &Inner,
    rx: flume::Receiver<IndexItem>,
    spare_payloads: flume::Sender<Vec<u8>>,
    sealed: SealedSegments,
    mut indexed: u64,
) {
    let mut persisted = 0u64;
    let mut last_persist = Instant::now();
    let mut backoff_ms = INDEX_REOPEN_BACKOFF_MS_MIN;
    let mut stopping = false;
    loop {
        if inner.failure().is_some() {
            if rx.is_disconnected() {
                log::error!(
                    "storage: closing with the index failed; the log will be replayed on the next open"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(backoff_ms));
            match inner.reopen() {
                Ok(seq) => {
                    indexed = seq;
                    persisted = 0;
                    inner.progress.set_indexed(seq);
                    inner.set_failure(None);
                    backoff_ms = INDEX_REOPEN_BACKOFF_MS_MIN;
                    log::info!("storage: the index is reopened and caught up to log record {seq}");
                }
                Err(e) => {
                    inner.set_failure(Some(format!("index cannot be reopened: {e}")));
                    backoff_ms = (backoff_ms * 2).min(INDEX_REOPEN_BACKOFF_MS_MAX);
                }
            }
            continue;
        }
        let item = match rx.recv_timeout(INDEX_IDLE_CHECK) {
            Ok(item) => Some(item),
            Err(flume::RecvTimeoutError::Timeout) => None,
            Err(flume::RecvTimeoutError::Disconnected) => {
                stopping = true;
                None
            }
        };
        let step = || -> Result<()> {
            let index = inner.index()?;
            match item {
                Some(item) if item.seq > indexed => {
                    if item.seq > indexed + 1 {
                        indexed = inner.catch_up(&index, indexed, item.seq - 1)?;
                    }
                    if let Some(payload) = item.payload {
                        index.apply(&payload)?;
                        // Back to the log writer; when it has enough spares, the buffer is dropped.
                        let _ = spare_payloads.try_send(payload);
                    }
                    indexed = item.seq;
                }
                Some(_) => {}
                None => {
                    let (durable, _) = inner.progress.get();
                    if durable > indexed {
                        indexed = inner.catch_up(&index, indexed, durable)?;
                    }
                }
            }
            inner.progress.set_indexed(indexed);
            if indexed > persisted
                && (stopping
                    || last_persist.elapsed() >= INDEX_PERSIST_INTERVAL
                    || !sealed.is_empty())
            {
                index.persist_through(indexed)?;
                persisted = indexed;
                last_persist = Instant::now();
                if let Err(e) = sealed.delete_through(persisted) {
                    log::warn!("storage: deleting indexed commit log segments: {e}");
                }
            }
            Ok(())
        };
        if let Err(e) = step() {
            log::error!("storage: indexing failed: {e}");
            inner.set_failure(Some(format!("index write failed: {e}")));
        }
        if stopping && inner.failure().is_none() {
            return;
        }
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` with the default options, and recovers it.
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`: fjall in `dir`, the commit log in `dir/commit-log`. Log
    /// records not yet in the index are replayed into it before this returns.
    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Io(format!("creating {}: {e}", dir.display())))?;
        let inner = Arc::new(Inner {
            index_dir: dir.to_owned(),
            log_dir: dir.join("commit-log"),
            index: RwLock::new(None),
            progress: Progress::default(),
            index_failure: Mutex::new(None),
        });
        let mut store = EmbeddedStore {
            inner: Arc::clone(&inner),
            options: options.clone(),
            log: None,
            index_tx: None,
            indexer: None,
            next_batch: Mutex::new(0),
            account_lock: Mutex::new(()),
            timings: Mutex::new(None),
            log_fatal: Mutex::new(None),
            log_preparer_failure: None,
        };
        if options.commit_path == CommitPath::FjallJournal {
            let index = Index::open(dir)?;
            *store
                .next_batch
                .get_mut()
                .unwrap_or_else(|p| p.into_inner()) = index.meta_u64(NEXT_BATCH_KEY)?;
            *inner.index.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(index));
            return Ok(store);
        }
        let mut log = CommitLog::open(
            &inner.log_dir,
            options.segment_bytes_max,
            Some(INDEXER_NICE),
        )?;
        let log_last = log.last_seq();
        inner.progress.set_durable(log_last);
        let (tx, rx) = flume::bounded(INDEX_QUEUE_RECORDS_MAX);
        let (spare_tx, spare_rx) = flume::bounded(SPARE_PAYLOADS_MAX);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(u64, u64)>>();
        let sealed = log.sealed();
        let thread_inner = Arc::clone(&inner);
        let indexer = std::thread::Builder::new()
            .name("storage-indexer".into())
            .spawn(move || {
                // fjall spawns its flush and compaction threads from the thread that opens it: here, so they
                // inherit the lower priority.
                set_thread_nice(INDEXER_NICE);
                set_thread_io_priority(IOPRIO_CLASS_BE, 7);
                let inner = &*thread_inner;
                let opened = (|| {
                    let index = Index::open(&inner.index_dir)?;
                    let indexed = index.recovered_seq()?;
                    let indexed = inner.catch_up(&index, indexed, log_last)?;
                    let next_batch = index.meta_u64(NEXT_BATCH_KEY)?;
                    Ok((Arc::new(index), indexed, next_batch))
                })();
                match opened {
                    Ok((index, indexed, next_batch)) => {
                        *inner.index.write().unwrap_or_else(|p| p.into_inner()) = Some(index);
                        inner.progress.set_indexed(indexed);
                        let _ = ready_tx.send(Ok((indexed, next_batch)));
                        run_indexer(inner, rx, spare_tx, sealed, indexed);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| StorageError::Io(format!("spawning the indexer thread: {e}")))?;
        let ready = ready_rx.recv().unwrap_or_else(|_| {
            Err(StorageError::Io(
                "the indexer thread ended while opening".into(),
            ))
        });
        let (indexed, next_batch) = match ready {
            Ok(r) => r,
            Err(e) => {
                let _ = indexer.join();
                return Err(e);
            }
        };
        // Sequence numbers continue past everything the index holds, even if the log segments holding it are gone.
        log.advance_to(indexed);
        inner.progress.set_durable(log.last_seq());
        *store
            .next_batch
            .get_mut()
            .unwrap_or_else(|p| p.into_inner()) = next_batch;
        store.log_preparer_failure = Some(log.preparer_failure_handle());
        store.log = Some(Mutex::new(LogWriter {
            log,
            spare_payloads: spare_rx,
        }));
        store.index_tx = Some(tx);
        store.indexer = Some(indexer);
        Ok(store)
    }

    /// Starts (or stops) recording a [`BatchTiming`] per appended batch.
    pub fn record_timings(&self, on: bool) {
        *self.timings.lock().unwrap_or_else(|p| p.into_inner()) = on.then(Vec::new);
    }

    /// The timings recorded since the last call.
    pub fn take_timings(&self) -> Vec<BatchTiming> {
        self.timings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn sealed_segments_for_test(&self) -> usize {
        self.log.as_ref().map_or(0, |l| {
            l.lock()
                .unwrap_or_else(|p| p.into_inner())
                .log
                .sealed()
                .len()
        })
    }

    /// Log records not yet in the index, right now.
    pub fn index_lag_records(&self) -> u64 {
        let (durable, indexed) = self.inner.progress.get();
        durable.saturating_sub(indexed)
    }

    fn timing_on(&self) -> bool {
        self.timings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn push_timing(&self, t: BatchTiming) {
        if let Some(v) = self
            .timings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            v.push(t);
        }
    }

    fn note_log_fatal(&self, log: &CommitLog) {
        if let Some(reason) = log.fatal() {
            *self.log_fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
        }
    }

    /// Records a failed fjall write: fjall is poisoned now and has to be reopened.
    fn index_error(&self, e: impl std::fmt::Display) -> StorageError {
        let reason = format!("index write failed: {e}");
        log::error!("storage: {reason}");
        self.inner.set_failure(Some(reason.clone()));
        StorageError::Io(reason)
    }

    /// The index for a message read: waits until it holds every message acknowledged so far.
    fn index_for_history(&self) -> Result<Arc<Index>> {
        if self.log.is_some()
            && !self
                .inner
                .progress
                .wait_indexed(Duration::from_millis(self.options.read_index_wait_ms_max))
        {
            return Err(StorageError::Unavailable(
                self.inner
                    .failure()
                    .unwrap_or_else(|| "the history index is behind the log".into()),
            ));
        }
        self.inner.index()
    }

    fn append_to_log(&self, log: &Mutex<LogWriter>, batch: &[MessageRecord]) -> Result<()> {
        prioritise_log_writer(self.options.log_writer_realtime);
        let timing = self.timing_on();
        let delay_before = if timing { thread_run_delay_ns() } else { None };
        let started = Instant::now();
        let mut w = log.lock().unwrap_or_else(|p| p.into_inner());
        let mut next_batch = self.next_batch.lock().unwrap_or_else(|p| p.into_inner());
        // The previous record's buffer went to the indexer, which hands buffers back when it is done; size this
        // one for the batch up front (records run a few hundred bytes a message) so that it is not grown and
        // copied.
        let mut payload = w.spare_payloads.try_recv().unwrap_or_default();
        payload.clear();
        payload.reserve(batch.len() * PAYLOAD_BYTES_PER_MESSAGE_GUESS);
        encode_batch(batch, *next_batch, |ks, key, value| {
            push_item(&mut payload, ks, key, value)
        })?;
        let encoded = Instant::now();
        let appended = w.log.append(RecordKind::Batch, &payload);
        let seq = match appended {
            Ok(seq) => seq,
            Err(e) => {
                self.note_log_fatal(&w.log);
                return Err(e);
            }
        };
        *next_batch += 1;
        self.inner.progress.set_durable(seq);
        let (write, sync) = w.log.last_append_durations();
        drop(w);
        if let Some(tx) = &self.index_tx {
            // A full queue (or a stopped indexer) only means the indexer reads this record back from the log.
            let _ = tx.try_send(IndexItem {
                seq,
                payload: Some(payload),
            });
        }
        if timing {
            // fjall's table counts are left out here: reading them takes fjall's version lock, which a flush or
            // compaction at low priority may hold, and the writer would wait for it.
            self.push_timing(BatchTiming {
                messages: batch.len(),
                encode_us: (encoded - started).as_micros() as u64,
                write_us: write.as_micros() as u64,
                sync_us: sync.as_micros() as u64,
                run_delay_us: delay_before
                    .zip(thread_run_delay_ns())
                    .map_or(0, |(a, b)| b.saturating_sub(a) / 1000),
                sealed_memtables: 0,
                l0_tables: 0,
            });
        }
        Ok(())
    }

    fn append_to_fjall_journal(&self, batch: &[MessageRecord]) -> Result<()> {
        let timing = self.timing_on();
        let index = self.inner.index()?;
        // Read before the clock starts: these take fjall's version lock, which a compaction may hold.
        let (sealed_memtables, l0_tables) = if timing {
            (
                index.messages.sealed_memtable_count(),
                index.messages.l0_table_count(),
            )
        } else {
            (0, 0)
        };
        let delay_before = if timing { thread_run_delay_ns() } else { None };
        let started = Instant::now();
        // The batch number tells this batch's chunks apart from every other batch's. It is stored with the batch
        // (same atomic write), so after a crash numbering resumes past every batch that made it to disk.
        let mut next_batch = self.next_batch.lock().unwrap_or_else(|p| p.into_inner());
        let mut wb = index.db.batch().durability(Some(PersistMode::SyncAll));
        encode_batch(batch, *next_batch, |ks, key, value| {
            let keyspace = if ks == KS_MESSAGES {
                &index.messages
            } else {
                &index.meta
            };
            wb.insert(keyspace, key, value);
        })?;
        let encoded = Instant::now();
        wb.commit().map_err(|e| self.index_error(e))?;
        *next_batch += 1;
        if timing {
            self.push_timing(BatchTiming {
                messages: batch.len(),
                encode_us: (encoded - started).as_micros() as u64,
                write_us: encoded.elapsed().as_micros() as u64,
                sync_us: 0,
                run_delay_us: delay_before
                    .zip(thread_run_delay_ns())
                    .map_or(0, |(a, b)| b.saturating_sub(a) / 1000),
                sealed_memtables,
                l0_tables,
            });
        }
        Ok(())
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue tells the indexer to finish what is durable, persist, and stop.
        self.index_tx = None;
        if let Some(indexer) = self.indexer.take()
            && indexer.join().is_err()
        {
            log::error!("storage: the indexer thread panicked");
        }
    }
}

/// Up to `limit` messages of `room` with id `< before`, newest first.
fn newest_first(
    index: &Index,
    room: &str,
    before: Option<MessageId>,
    limit: usize,
) -> Result<Vec<MessageRecord>> {
    let prefix = room_prefix(room)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let prefix_len = prefix.len();
    // Most rooms never had a message deleted: one seek tells, and spares them a lookup per message.
    let any_deleted = index.deleted.prefix(&prefix).next().is_some();
    let mut deleted_key = prefix.clone();
    let iter = match before {
        // Chunks that start at or after `before` hold nothing older than it; their keys sort after this end.
        Some(id) => {
            let mut end = prefix.clone();
            end.extend_from_slice(&id.to_be_bytes());
            index.messages.range(prefix..end)
        }
        // Every key with this prefix belongs to this room: see the layout note on the length byte.
        None => index.messages.prefix(prefix),
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
        index.chunk_bytes(&value, &mut aligned)?;
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
            if any_deleted && marked_deleted(index, &mut deleted_key, prefix_len, id)? {
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

/// Up to `limit` messages of `room` with id `> after`, oldest first: a forward range read over the room's chunks.
fn oldest_first(
    index: &Index,
    room: &str,
    after: MessageId,
    limit: usize,
) -> Result<Vec<MessageRecord>> {
    let prefix = room_prefix(room)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let prefix_len = prefix.len();
    let any_deleted = index.deleted.prefix(&prefix).next().is_some();
    let mut deleted_key = prefix.clone();
    // A chunk spans at most `CHUNK_SPAN_MS_MAX`, so one that starts before `after` may still hold newer ids, but
    // only if it starts within that span of it: chunks that start earlier hold nothing newer than `after`.
    let mut start = prefix.clone();
    start.extend_from_slice(
        &MessageId::min_for_ms(after.unix_ms().saturating_sub(CHUNK_SPAN_MS_MAX)).to_be_bytes(),
    );
    // Every chunk key of the room is the prefix and a suffix of this length; see the layout note on the length
    // byte for why no other room's key falls in between.
    let mut end = prefix;
    end.extend_from_slice(&[0xff; SUFFIX_BYTES]);
    // The best `limit` messages so far, keyed by id (which also drops any id stored twice).
    let mut best: BTreeMap<MessageId, MessageRecord> = BTreeMap::new();
    let mut aligned = AlignedVec::<16>::new();
    for guard in index.messages.range(start..=end) {
        let (key, value) = guard.into_inner().map_err(io)?;
        let first = chunk_first_id(&key, prefix_len)?;
        // Chunks come in order of their first (smallest) id: once the page is full and a chunk starts at or past
        // its newest message, neither it nor any chunk after it holds an older one.
        if best.len() == limit
            && best
                .last_key_value()
                .is_some_and(|(newest, _)| first >= *newest)
        {
            break;
        }
        index.chunk_bytes(&value, &mut aligned)?;
        let chunk = rkyv::access::<ArchivedVec<ArchivedMessageRecord>, rancor::Error>(&aligned)
            .map_err(|e| StorageError::Corrupt(format!("message chunk: {e}")))?;
        for archived in chunk.iter() {
            let id = MessageId(archived.id.0.to_native());
            if id <= after {
                continue;
            }
            if best.len() == limit
                && best
                    .last_key_value()
                    .is_some_and(|(newest, _)| id >= *newest)
            {
                // Records are sorted within a chunk: the rest of this chunk is newer still.
                break;
            }
            if best.contains_key(&id) {
                continue;
            }
            if any_deleted && marked_deleted(index, &mut deleted_key, prefix_len, id)? {
                continue;
            }
            let record = rkyv::deserialize::<MessageRecord, rancor::Error>(archived)
                .map_err(|e| StorageError::Corrupt(format!("message: {e}")))?;
            best.insert(id, record);
            if best.len() > limit {
                best.pop_last();
            }
        }
    }
    Ok(best.into_values().collect())
}

/// Whether message `id` carries a deletion marker. `key` holds the room's prefix in its first `prefix_len` bytes
/// and is reused from call to call, so a page read allocates one key, not one per message.
fn marked_deleted(
    index: &Index,
    key: &mut Vec<u8>,
    prefix_len: usize,
    id: MessageId,
) -> Result<bool> {
    key.truncate(prefix_len);
    key.extend_from_slice(&id.to_be_bytes());
    index.deleted.contains_key(&*key).map_err(io)
}

/// Whether `room` has a message with this id in the index. A chunk spans at most `CHUNK_SPAN_MS_MAX`, so only
/// the chunks that start in that span before the id (and at the id) can hold it.
fn message_exists(index: &Index, room: &str, id: MessageId) -> Result<bool> {
    let prefix = room_prefix(room)?;
    let prefix_len = prefix.len();
    let mut start = prefix.clone();
    start.extend_from_slice(
        &MessageId::min_for_ms(id.unix_ms().saturating_sub(CHUNK_SPAN_MS_MAX)).to_be_bytes(),
    );
    // Keys of chunks whose first id is `id` continue past `prefix + id`; the end is the next id, exclusive.
    let mut end = prefix;
    end.extend_from_slice(&id.to_be_bytes());
    end.extend_from_slice(&[0xff; SUFFIX_BYTES - ID_BYTES]);
    let mut aligned = AlignedVec::<16>::new();
    for guard in index.messages.range(start..=end) {
        let (key, value) = guard.into_inner().map_err(io)?;
        chunk_first_id(&key, prefix_len)?;
        index.chunk_bytes(&value, &mut aligned)?;
        let chunk = rkyv::access::<ArchivedVec<ArchivedMessageRecord>, rancor::Error>(&aligned)
            .map_err(|e| StorageError::Corrupt(format!("message chunk: {e}")))?;
        if chunk.iter().any(|m| m.id.0.to_native() == id.0) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The key of a message's deletion marker: the room's chunk prefix and the id.
fn deleted_key(room: &str, id: MessageId) -> Result<Vec<u8>> {
    let mut key = room_prefix(room)?;
    key.extend_from_slice(&id.to_be_bytes());
    Ok(key)
}

impl Store for EmbeddedStore {
    fn append_messages(&self, batch: &[MessageRecord]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        match &self.log {
            Some(log) => self.append_to_log(log, batch),
            None => self.append_to_fjall_journal(batch),
        }
    }

    fn recent_messages(&self, room: &str, limit: usize) -> Result<Vec<MessageRecord>> {
        let index = self.index_for_history()?;
        let mut out = newest_first(&index, room, None, limit)?;
        out.reverse();
        Ok(out)
    }

    fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        let index = self.index_for_history()?;
        newest_first(&index, room, before, limit)
    }

    fn messages_after(
        &self,
        room: &str,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        // Like every history read, waits until the index holds every acknowledged message, so a client catching
        // up also gets the messages that are only in the commit log so far.
        let index = self.index_for_history()?;
        oldest_first(&index, room, after, limit)
    }

    fn create_account(&self, account: &AccountRecord) -> Result<()> {
        let value = codec::encode_account(account)?;
        let index = self.inner.index()?;
        let _guard = self.account_lock.lock().unwrap_or_else(|p| p.into_inner());
        if index
            .accounts
            .contains_key(account.login.as_bytes())
            .map_err(io)?
        {
            return Err(StorageError::AlreadyExists);
        }
        let mut wb = index.db.batch().durability(Some(PersistMode::SyncAll));
        wb.insert(&index.accounts, account.login.as_bytes(), value.as_slice());
        wb.commit().map_err(|e| self.index_error(e))
    }

    fn account(&self, login: &str) -> Result<Option<AccountRecord>> {
        let index = self.inner.index()?;
        match index.accounts.get(login.as_bytes()).map_err(io)? {
            Some(bytes) => Ok(Some(codec::decode_account(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_token(
        &self,
        token_sha256: [u8; 32],
        token: &TokenRecord,
        tokens_per_login_max: usize,
    ) -> Result<()> {
        let index = self.inner.index()?;
        let prefix = login_prefix(&token.login)?;
        let _guard = self.account_lock.lock().unwrap_or_else(|p| p.into_inner());
        // The login's tokens, oldest first (keys sort by issue time): expired ones go, and the oldest live ones
        // go until the new one fits under the cap.
        let mut live = Vec::new();
        let mut remove = Vec::new();
        for guard in index.login_tokens.prefix(&prefix) {
            let (key, value) = guard.into_inner().map_err(io)?;
            let expires = value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StorageError::Corrupt("login token entry is malformed".into()))?;
            if expires <= token.issued_unix_ms {
                remove.push(key);
            } else {
                live.push(key);
            }
        }
        let keep = tokens_per_login_max.max(1) - 1;
        if live.len() > keep {
            remove.extend(live.drain(..live.len() - keep));
        }
        let mut wb = index.db.batch().durability(Some(PersistMode::SyncAll));
        for key in remove {
            let sha = key
                .get(key.len().saturating_sub(32)..)
                .ok_or_else(|| StorageError::Corrupt("login token key is malformed".into()))?;
            wb.remove(&index.tokens, sha.to_vec());
            wb.remove(&index.login_tokens, key.to_vec());
        }
        wb.insert(&index.tokens, token_sha256.as_slice(), encode_token(token));
        wb.insert(
            &index.login_tokens,
            login_token_key(token, &token_sha256)?,
            token.expires_unix_ms.to_be_bytes().as_slice(),
        );
        wb.commit().map_err(|e| self.index_error(e))
    }

    fn token(&self, token_sha256: [u8; 32]) -> Result<Option<TokenRecord>> {
        let index = self.inner.index()?;
        match index.tokens.get(token_sha256).map_err(io)? {
            Some(bytes) => decode_token(&bytes),
            None => Ok(None),
        }
    }

    fn revoke_token(&self, token_sha256: [u8; 32]) -> Result<bool> {
        let index = self.inner.index()?;
        let _guard = self.account_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bytes) = index.tokens.get(token_sha256).map_err(io)? else {
            return Ok(false);
        };
        let mut wb = index.db.batch().durability(Some(PersistMode::SyncAll));
        wb.remove(&index.tokens, token_sha256.as_slice());
        if let Some(token) = decode_token(&bytes)? {
            wb.remove(&index.login_tokens, login_token_key(&token, &token_sha256)?);
        }
        wb.commit().map_err(|e| self.index_error(e))?;
        Ok(true)
    }

    fn rename_account(&self, old_login: &str, new_login: &str) -> Result<AccountRecord> {
        let old_prefix = login_prefix(old_login)?;
        login_prefix(new_login)?;
        let index = self.inner.index()?;
        let _guard = self.account_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bytes) = index.accounts.get(old_login.as_bytes()).map_err(io)? else {
            return Err(StorageError::NotFound(format!("no account {old_login:?}")));
        };
        if old_login == new_login
            || index
                .accounts
                .contains_key(new_login.as_bytes())
                .map_err(io)?
        {
            return Err(StorageError::AlreadyExists);
        }
        let mut account = codec::decode_account(&bytes)?;
        account.login = new_login.to_owned();
        // One batch, so a crash leaves the account, and every token, under exactly one of the two logins.
        let mut wb = index.db.batch().durability(Some(PersistMode::SyncAll));
        wb.remove(&index.accounts, old_login.as_bytes());
        wb.insert(
            &index.accounts,
            new_login.as_bytes(),
            codec::encode_account(&account)?.as_slice(),
        );
        for guard in index.login_tokens.prefix(&old_prefix) {
            let (key, expires) = guard.into_inner().map_err(io)?;
            let sha: [u8; 32] = key
                .get(key.len().saturating_sub(32)..)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| StorageError::Corrupt("login token key is malformed".into()))?;
            wb.remove(&index.login_tokens, key.to_vec());
            let Some(mut token) = index
                .tokens
                .get(sha)
                .map_err(io)?
                .map(|b| decode_token(&b))
                .transpose()?
                .flatten()
            else {
                // A token in the old format (no expiry) counts as expired: it is dropped, not moved.
                wb.remove(&index.tokens, sha.as_slice());
                continue;
            };
            token.login = new_login.to_owned();
            wb.insert(&index.tokens, sha.as_slice(), encode_token(&token));
            wb.insert(
                &index.login_tokens,
                login_token_key(&token, &sha)?,
                expires.to_vec(),
            );
        }
        wb.commit().map_err(|e| self.index_error(e))?;
        Ok(account)
    }

    fn delete_message(&self, room: &str, id: MessageId) -> Result<bool> {
        let key = deleted_key(room, id)?;
        // Waiting for the index means a message acknowledged but still only in the commit log is found too. The
        // marker does not depend on where the message is: reads check it whatever the index holds, and it is
        // durable before this returns, so a replay of the log after a crash cannot bring the message back.
        let index = self.index_for_history()?;
        if !message_exists(&index, room, id)? {
            return Ok(false);
        }
        let mut wb = index.db.batch().durability(Some(PersistMode::SyncAll));
        wb.insert(&index.deleted, key, []);
        wb.commit().map_err(|e| self.index_error(e))?;
        Ok(true)
    }

    fn put_setting(&self, key: &str, value: &[u8]) -> Result<()> {
        settings::key_scope(key)?;
        settings::check_value(value)?;
        let index = self.inner.index()?;
        let mut wb = index.db.batch().durability(Some(PersistMode::SyncAll));
        wb.insert(&index.settings, key.as_bytes(), value);
        wb.commit().map_err(|e| self.index_error(e))
    }

    fn delete_setting(&self, key: &str) -> Result<()> {
        settings::key_scope(key)?;
        let index = self.inner.index()?;
        let mut wb = index.db.batch().durability(Some(PersistMode::SyncAll));
        wb.remove(&index.settings, key.as_bytes());
        wb.commit().map_err(|e| self.index_error(e))
    }

    fn settings(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>> {
        settings::prefix_scope(prefix)?;
        let index = self.inner.index()?;
        let mut out = Vec::new();
        for guard in index.settings.prefix(prefix.as_bytes()).take(limit) {
            let (key, value) = guard.into_inner().map_err(io)?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|_| StorageError::Corrupt("setting key is not UTF-8".into()))?;
            out.push((key, value.to_vec()));
        }
        Ok(out)
    }

    fn health(&self) -> Health {
        if let Some(fatal) = self
            .log_fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Health::Failed(fatal);
        }
        if let Some(reason) = self.inner.failure() {
            return Health::Unavailable(reason);
        }
        let preparer = self
            .log_preparer_failure
            .as_ref()
            .and_then(|f| f.lock().unwrap_or_else(|p| p.into_inner()).clone());
        match preparer {
            Some(reason) => Health::Unavailable(reason),
            None => Health::Healthy,
        }
    }

    fn recover(&self) -> Result<()> {
        match &self.log {
            Some(log) => {
                // A probe of some size: a full disk often still has room for a few bytes in the last page.
                let probe = vec![0u8; PROBE_BYTES];
                let mut w = log.lock().unwrap_or_else(|p| p.into_inner());
                let appended = w.log.append(RecordKind::Probe, &probe);
                self.note_log_fatal(&w.log);
                drop(w);
                let seq = appended?;
                self.inner.progress.set_durable(seq);
                if let Some(tx) = &self.index_tx {
                    let _ = tx.try_send(IndexItem { seq, payload: None });
                }
            }
            None => {
                if self.inner.failure().is_some() {
                    self.inner.reopen()?;
                    self.inner.set_failure(None);
                }
            }
        }
        match self.health() {
            Health::Healthy => Ok(()),
            Health::Unavailable(reason) | Health::Failed(reason) => {
                Err(StorageError::Unavailable(reason))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::MessageIdGen;

    fn batch(ids: &mut MessageIdGen, start_ms: u64, count: u64) -> Vec<MessageRecord> {
        (0..count)
            .map(|n| MessageRecord {
                id: ids.next_id(start_ms + n),
                room: format!("room{}", n % 3),
                user_id: n,
                login: "u".into(),
                display_name: "U".into(),
                color: String::new(),
                badges: String::new(),
                text: format!("message {n}"),
                original: String::new(),
                styled_by: "local".into(),
                client_nonce: String::new(),
            })
            .collect()
    }

    /// A thread put in the real-time class keeps it, and threads it starts begin in the normal class (the log
    /// writer may start the log's preparer when it reopens the log after a failure).
    #[test]
    fn a_real_time_thread_starts_threads_in_the_normal_class() {
        let classes = std::thread::spawn(|| {
            if !set_thread_realtime(LOG_WRITER_RT_PRIORITY) {
                return None; // not allowed here: nothing to check
            }
            // SAFETY: plain syscalls reading the calling thread's own scheduling class.
            let policy = || unsafe { libc::sched_getscheduler(0) };
            let child = std::thread::spawn(policy).join().unwrap();
            Some((policy(), child))
        })
        .join()
        .unwrap();
        let Some((own, child)) = classes else {
            println!("skipped: this process may not use the real-time class (run as root)");
            return;
        };
        assert_eq!(own, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK);
        assert_eq!(child, libc::SCHED_OTHER);
    }

    fn all(store: &EmbeddedStore) -> Vec<MessageId> {
        let mut ids: Vec<MessageId> = (0..3)
            .flat_map(|r| {
                store
                    .messages_before(&format!("room{r}"), None, usize::MAX)
                    .unwrap()
            })
            .map(|m| m.id)
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_failed_index_is_reopened_and_caught_up_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            segment_bytes_max: 1 << 20,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open_with(dir.path(), options.clone()).unwrap();
        let mut ids = MessageIdGen::new(0, 0);
        let mut written = Vec::new();
        for b in 0..20 {
            let records = batch(&mut ids, 1_700_000_000_000 + b * 1000, 50);
            store.append_messages(&records).unwrap();
            written.extend(records.iter().map(|m| m.id));
        }
        assert_eq!(all(&store), written);

        // As after a failed fjall write: the indexer drops fjall, reopens it and replays what it lacks, while the
        // log keeps taking (and acknowledging) batches.
        store
            .inner
            .set_failure(Some("injected index failure".into()));
        assert!(matches!(store.health(), Health::Unavailable(_)));
        for b in 20..40 {
            let records = batch(&mut ids, 1_700_000_000_000 + b * 1000, 50);
            store.append_messages(&records).unwrap();
            written.extend(records.iter().map(|m| m.id));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !store.health().is_healthy() {
            assert!(Instant::now() < deadline, "{:?}", store.health());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(all(&store), written, "every batch, once, after the reopen");
        drop(store);
        let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
        assert_eq!(all(&store), written, "and after reopening the store");
        assert!(
            store.sealed_segments_for_test() <= 3,
            "covered segments are retired"
        );
    }

    #[test]
    fn a_message_only_in_the_log_can_be_deleted_and_stays_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut ids = MessageIdGen::new(0, 0);
        let before = batch(&mut ids, 1_700_000_000_000, 30);
        store.append_messages(&before).unwrap();
        // The index fails: what is appended now is acknowledged from the log alone, until the indexer has reopened
        // fjall and replayed the log into it.
        store
            .inner
            .set_failure(Some("injected index failure".into()));
        let logged = batch(&mut ids, 1_700_000_001_000, 30);
        store.append_messages(&logged).unwrap();
        let victim = &logged[29];
        assert!(store.delete_message(&victim.room, victim.id).unwrap());
        let room_ids = |store: &EmbeddedStore| -> Vec<MessageId> {
            store
                .messages_before(&victim.room, None, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect()
        };
        let mut expected: Vec<MessageId> = before
            .iter()
            .chain(&logged)
            .filter(|m| m.room == victim.room && m.id != victim.id)
            .map(|m| m.id)
            .collect();
        expected.reverse();
        assert_eq!(room_ids(&store), expected);
        assert_eq!(
            store.recent_messages(&victim.room, 1).unwrap()[0].id,
            expected[0],
            "the newest message left, not the deleted one"
        );
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(room_ids(&store), expected, "and after reopening");
    }

    #[test]
    fn a_forward_read_sees_messages_only_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            // Generous: the read below waits for the index while this machine may be busy.
            read_index_wait_ms_max: 60_000,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open_with(dir.path(), options.clone()).unwrap();
        let mut ids = MessageIdGen::new(0, 0);
        let indexed = batch(&mut ids, 1_700_000_000_000, 30);
        store.append_messages(&indexed).unwrap();
        // The index fails, and holding it keeps the indexer inside its reopen (which waits for readers to let go,
        // with the index taken out) until released: what is appended meanwhile is acknowledged from the log
        // alone.
        let held = store.inner.index().unwrap();
        store
            .inner
            .set_failure(Some("injected index failure".into()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.inner.index().is_ok() {
            assert!(Instant::now() < deadline, "the indexer starts reopening");
            std::thread::sleep(Duration::from_millis(1));
        }
        let logged = batch(&mut ids, 1_700_000_001_000, 30);
        store.append_messages(&logged).unwrap();
        assert!(
            store.index_lag_records() > 0,
            "the batch is only in the log"
        );
        let victim = &logged[3];
        let room = victim.room.clone();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let room_ids = |store: &EmbeddedStore, after: MessageId| -> Vec<MessageId> {
            store
                .messages_after(&room, after, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect()
        };
        let expected = |after: MessageId, gone: Option<MessageId>| -> Vec<MessageId> {
            indexed
                .iter()
                .chain(&logged)
                .filter(|m| m.room == room && m.id > after && Some(m.id) != gone)
                .map(|m| m.id)
                .collect()
        };
        // Read while the batch is not indexed: the read waits for the index rather than answering without it.
        assert_eq!(room_ids(&store, MessageId(0)), expected(MessageId(0), None));
        release.join().unwrap();
        let gone = Some(victim.id);
        assert!(store.delete_message(&room, victim.id).unwrap());
        assert_eq!(room_ids(&store, MessageId(0)), expected(MessageId(0), gone));
        // From the newest message indexed before the failure: exactly the logged ones, less the deleted one.
        let from = indexed.iter().rfind(|m| m.room == room).unwrap().id;
        assert_eq!(room_ids(&store, from), expected(from, gone));
        assert_eq!(expected(from, gone).len(), 9);
        drop(store);
        let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
        assert_eq!(
            room_ids(&store, MessageId(0)),
            expected(MessageId(0), gone),
            "and after reopening"
        );
    }
}
