//! The embedded store: fjall (an LSM tree with a checksummed write-ahead journal) in the node's data directory.
//!
//! Layout, one fjall keyspace per kind of record:
//!
//! | keyspace   | key                                       | value                  |
//! |------------|-------------------------------------------|------------------------|
//! | `messages` | `len(room) as u8`, `room`, `id` (16 B, BE) | rkyv `MessageRecord`   |
//! | `accounts` | `login`                                   | rkyv `AccountRecord`   |
//! | `tokens`   | SHA-256 of the token (32 B)               | login (UTF-8)          |
//!
//! The length prefix makes a room's keys one contiguous range that no other room's keys can fall into (a plain
//! separator byte would let a room name containing it collide), and big-endian ids make byte order equal time
//! order, so history is a bounded reverse range read: `[room, before)` backwards, `limit` entries. Nothing ever
//! scans a whole keyspace; opening replays only the journal tail that was not yet flushed to tables.
//!
//! A batch of messages is one fjall write batch committed with [`PersistMode::SyncAll`]: the journal frames it with
//! a start marker and an end marker carrying an xxh3 checksum of the items, writes it, and fsyncs before `commit`
//! returns. Recovery replays complete batches and truncates the journal at the first torn or mismatching one, so a
//! crash leaves every acknowledged batch whole and no partial batch visible. After any journal write or fsync
//! failure fjall poisons the database and refuses all further writes, which is what the coalescer needs: nothing
//! is acknowledged after a failure whose on-disk effect is unknown.

use std::path::Path;
use std::sync::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::codec;
use crate::error::{Result, StorageError};
use crate::id::MessageId;
use crate::record::{AccountRecord, MessageRecord};
use crate::{ROOM_BYTES_MAX, Store};

/// Block cache of the embedded store. Recent history of active rooms is what gets read; it is small.
const CACHE_BYTES: u64 = 64 << 20;

/// A durable single-machine store.
pub struct EmbeddedStore {
    db: Database,
    messages: Keyspace,
    accounts: Keyspace,
    tokens: Keyspace,
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

/// The key prefix of every message of `room`.
fn room_prefix(room: &str) -> Result<Vec<u8>> {
    if room.is_empty() || room.len() > ROOM_BYTES_MAX {
        return Err(StorageError::Invalid(format!("room name must be 1..={ROOM_BYTES_MAX} bytes")));
    }
    let mut key = Vec::with_capacity(1 + room.len() + 16);
    key.push(room.len() as u8);
    key.extend_from_slice(room.as_bytes());
    Ok(key)
}

fn message_key(room: &str, id: MessageId) -> Result<Vec<u8>> {
    let mut key = room_prefix(room)?;
    key.extend_from_slice(&id.to_be_bytes());
    Ok(key)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` and recovers it from its journal.
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Io(format!("creating {}: {e}", dir.display())))?;
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            // Batches carry their own durability (SyncAll); no need for the extra flush on every commit.
            .manual_journal_persist(true)
            .open()
            .map_err(|e| StorageError::Io(format!("opening {}: {e}", dir.display())))?;
        let messages = db.keyspace("messages", KeyspaceCreateOptions::default).map_err(io)?;
        let accounts = db.keyspace("accounts", KeyspaceCreateOptions::default).map_err(io)?;
        let tokens = db.keyspace("tokens", KeyspaceCreateOptions::default).map_err(io)?;
        Ok(EmbeddedStore { db, messages, accounts, tokens, account_create_lock: Mutex::new(()) })
    }

    /// Up to `limit` messages of `room` with id `< before`, newest first.
    fn newest_first(&self, room: &str, before: Option<MessageId>, limit: usize) -> Result<Vec<MessageRecord>> {
        let prefix = room_prefix(room)?;
        let iter = match before {
            Some(id) => {
                let end = message_key(room, id)?;
                self.messages.range(prefix..end)
            }
            // Every key with this prefix belongs to this room: see the layout note on the length byte.
            None => self.messages.prefix(prefix),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for guard in iter.rev().take(limit) {
            let value = guard.value().map_err(io)?;
            out.push(codec::decode_message(&value)?);
        }
        Ok(out)
    }
}

impl Store for EmbeddedStore {
    fn append_messages(&self, batch: &[MessageRecord]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut wb = self.db.batch().durability(Some(PersistMode::SyncAll));
        for record in batch {
            let key = message_key(&record.room, record.id)?;
            let value = codec::encode_message(record)?;
            wb.insert(&self.messages, key, value.as_slice());
        }
        wb.commit().map_err(io)
    }

    fn recent_messages(&self, room: &str, limit: usize) -> Result<Vec<MessageRecord>> {
        let mut out = self.newest_first(room, None, limit)?;
        out.reverse();
        Ok(out)
    }

    fn messages_before(&self, room: &str, before: Option<MessageId>, limit: usize) -> Result<Vec<MessageRecord>> {
        self.newest_first(room, before, limit)
    }

    fn create_account(&self, account: &AccountRecord) -> Result<()> {
        let value = codec::encode_account(account)?;
        let _guard = self.account_create_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.accounts.contains_key(account.login.as_bytes()).map_err(io)? {
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
