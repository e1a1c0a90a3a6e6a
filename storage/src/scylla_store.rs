//! The ScyllaDB store (being built).

use crate::error::{Result, StorageError};
use crate::id::MessageId;
use crate::record::{AccountRecord, MessageRecord};
use crate::Store;

/// A store backed by a ScyllaDB cluster.
#[derive(Debug)]
pub struct ScyllaStore {
    _private: (),
}

impl ScyllaStore {
    /// Connects to `nodes` and creates the keyspace and tables if needed.
    pub fn connect(_nodes: &[String], _keyspace: &str, _replication_factor: u32) -> Result<ScyllaStore> {
        Err(StorageError::Io("the ScyllaDB store is not available yet".into()))
    }
}

impl Store for ScyllaStore {
    fn append_messages(&self, _batch: &[MessageRecord]) -> Result<()> {
        Err(StorageError::Closed)
    }
    fn recent_messages(&self, _room: &str, _limit: usize) -> Result<Vec<MessageRecord>> {
        Err(StorageError::Closed)
    }
    fn messages_before(&self, _room: &str, _before: Option<MessageId>, _limit: usize) -> Result<Vec<MessageRecord>> {
        Err(StorageError::Closed)
    }
    fn create_account(&self, _account: &AccountRecord) -> Result<()> {
        Err(StorageError::Closed)
    }
    fn account(&self, _login: &str) -> Result<Option<AccountRecord>> {
        Err(StorageError::Closed)
    }
    fn put_token(&self, _token_sha256: [u8; 32], _login: &str) -> Result<()> {
        Err(StorageError::Closed)
    }
    fn login_for_token(&self, _token_sha256: [u8; 32]) -> Result<Option<String>> {
        Err(StorageError::Closed)
    }
}
