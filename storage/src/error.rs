//! The storage crate's one error type.

/// What went wrong, as the engine needs to tell it apart. `Clone` because one failed batch fails every
/// acknowledgement in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The writer's queue is full: the store is slower than the offered load. The caller should ask the sender to
    /// try again; nothing was written.
    #[error("storage is busy, try again")]
    Busy,
    /// An account with this login already exists.
    #[error("already exists")]
    AlreadyExists,
    /// The store failed (IO error, disk full, cluster unavailable). Nothing from the failed batch was acknowledged.
    #[error("store failed: {0}")]
    Io(String),
    /// Stored bytes failed validation (checksum or rkyv check).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The request itself is malformed (for example a room name longer than
    /// [`ROOM_BYTES_MAX`](crate::ROOM_BYTES_MAX)); nothing was written.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The storage service has stopped.
    #[error("storage is shut down")]
    Closed,
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
