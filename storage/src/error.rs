//! The storage crate's one error type.

/// What went wrong, as the engine needs to tell it apart. `Clone` because one failed batch fails every
/// acknowledgement in it.
///
/// The engine maps these to what a user sees: [`Busy`](Self::Busy) and [`Unavailable`](Self::Unavailable) (and
/// [`Io`](Self::Io), [`Closed`](Self::Closed)) mean "try again", never "your token is invalid" or "wrong password";
/// [`StorageError::is_transient`] says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The writer's queue is full: the store is slower than the offered load. The caller should ask the sender to
    /// try again; nothing was written.
    #[error("storage is busy, try again")]
    Busy,
    /// An account with this login already exists.
    #[error("already exists")]
    AlreadyExists,
    /// The account (or other record) the request names does not exist; nothing was written.
    #[error("not found: {0}")]
    NotFound(String),
    /// The store failed (IO error, disk full, cluster unavailable). Nothing from the failed batch was acknowledged.
    #[error("store failed: {0}")]
    Io(String),
    /// The store is known to be failing (see [`StorageHandle::health`](crate::StorageHandle::health)), so the
    /// request was refused without trying; nothing was written. It clears by itself once the store recovers.
    #[error("storage is unavailable, try again: {0}")]
    Unavailable(String),
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

impl StorageError {
    /// The failure is the store's, not the request's: the same request may succeed later, so the user is told to
    /// try again (and, for a token check, keeps the token).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Busy
                | StorageError::Io(_)
                | StorageError::Unavailable(_)
                | StorageError::Closed
        )
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_the_stores_not_the_requests() {
        for e in [
            StorageError::Busy,
            StorageError::Io("disk full".into()),
            StorageError::Unavailable("disk full".into()),
            StorageError::Closed,
        ] {
            assert!(e.is_transient(), "{e}");
        }
        for e in [
            StorageError::AlreadyExists,
            StorageError::NotFound("x".into()),
            StorageError::Corrupt("x".into()),
            StorageError::Invalid("x".into()),
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
