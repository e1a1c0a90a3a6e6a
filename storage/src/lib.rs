//! Durable storage for Twitchy Chat.
//!
//! (Internals doc: see the end of this section; it is completed as the crate grows.)

mod coalescer;
pub mod codec;
pub mod embedded;
pub mod error;
pub mod id;
mod metrics;
pub mod record;
pub mod scylla_store;

use std::path::PathBuf;
use std::sync::Arc;

pub use coalescer::{
    AppendAck, AppendRejected, CoalescerConfig, ROOM_BYTES_MAX, StorageHandle, StorageService,
};
pub use embedded::EmbeddedStore;
pub use error::{Result, StorageError};
pub use id::{MessageId, MessageIdGen};
pub use record::{AccountRecord, MessageRecord};
pub use scylla_store::ScyllaStore;

/// What the engine needs from a store. Implementations block (disk or network IO), so they are only ever called
/// from the storage threads, never from a glommio shard.
///
/// Architecture invariant: `append_messages` returns `Ok` only once every message in the batch is durable; a batch
/// is all-or-nothing.
pub trait Store: Send + Sync + 'static {
    /// Appends a batch and makes it durable.
    fn append_messages(&self, batch: &[MessageRecord]) -> Result<()>;
    /// The room's newest `limit` messages, oldest first.
    fn recent_messages(&self, room: &str, limit: usize) -> Result<Vec<MessageRecord>>;
    /// Up to `limit` messages of the room with id `< before` (all if `None`), newest first.
    fn messages_before(
        &self,
        room: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>>;
    /// Creates an account durably; `AlreadyExists` if the login is taken.
    fn create_account(&self, account: &AccountRecord) -> Result<()>;
    /// Looks an account up by login.
    fn account(&self, login: &str) -> Result<Option<AccountRecord>>;
    /// Records a session token (its SHA-256) for a login, durably.
    fn put_token(&self, token_sha256: [u8; 32], login: &str) -> Result<()>;
    /// The login a token (by its SHA-256) belongs to.
    fn login_for_token(&self, token_sha256: [u8; 32]) -> Result<Option<String>>;
}

/// Which store to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded store in a data directory on this machine.
    Embedded { dir: PathBuf },
    /// A ScyllaDB (or Cassandra) cluster; the keyspace and tables are created on first start.
    Scylla {
        nodes: Vec<String>,
        keyspace: String,
        replication_factor: u32,
    },
}

/// Opens the configured store. Embedded: creates the directory and recovers from the journal. ScyllaDB: connects
/// and creates the keyspace and tables if they do not exist.
pub fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>> {
    match config {
        StoreConfig::Embedded { dir } => Ok(Arc::new(EmbeddedStore::open(dir)?)),
        StoreConfig::Scylla {
            nodes,
            keyspace,
            replication_factor,
        } => Ok(Arc::new(ScyllaStore::connect(
            nodes,
            keyspace,
            *replication_factor,
        )?)),
    }
}
