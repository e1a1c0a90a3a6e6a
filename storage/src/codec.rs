//! rkyv encoding of records for stores that hold bytes.
//!
//! Reads validate the archived bytes (bytecheck) before touching them, so a damaged value surfaces as
//! [`StorageError::Corrupt`] instead of undefined behaviour. Values coming out of a store are not guaranteed to be
//! aligned for rkyv's archived `u128`, so they are copied into an aligned buffer first; for records of a few hundred
//! bytes that copy is far cheaper than the syscalls around it.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::error::{Result, StorageError};
use crate::record::{AccountRecord, ArchivedAccountRecord, ArchivedMessageRecord, MessageRecord};

/// Encodes a message record.
pub fn encode_message(record: &MessageRecord) -> Result<AlignedVec> {
    rkyv::to_bytes::<rancor::Error>(record)
        .map_err(|e| StorageError::Corrupt(format!("encoding message: {e}")))
}

/// Validates and decodes a message record.
pub fn decode_message(bytes: &[u8]) -> Result<MessageRecord> {
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let archived = rkyv::access::<ArchivedMessageRecord, rancor::Error>(&aligned)
        .map_err(|e| StorageError::Corrupt(format!("message: {e}")))?;
    rkyv::deserialize::<MessageRecord, rancor::Error>(archived)
        .map_err(|e| StorageError::Corrupt(format!("message: {e}")))
}

/// Encodes an account record.
pub fn encode_account(record: &AccountRecord) -> Result<AlignedVec> {
    rkyv::to_bytes::<rancor::Error>(record)
        .map_err(|e| StorageError::Corrupt(format!("encoding account: {e}")))
}

/// Validates and decodes an account record.
pub fn decode_account(bytes: &[u8]) -> Result<AccountRecord> {
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let archived = rkyv::access::<ArchivedAccountRecord, rancor::Error>(&aligned)
        .map_err(|e| StorageError::Corrupt(format!("account: {e}")))?;
    rkyv::deserialize::<AccountRecord, rancor::Error>(archived)
        .map_err(|e| StorageError::Corrupt(format!("account: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::MessageId;

    fn sample() -> MessageRecord {
        MessageRecord {
            id: MessageId(0x0190_f1c2_7a3b_7000_8000_0000_0000_0001),
            room: "forsen".into(),
            user_id: 42,
            login: "alice".into(),
            display_name: "Alice".into(),
            color: "#FF0000".into(),
            badges: "moderator/1".into(),
            text: "skibidi hello, stored out of line".into(),
            original: "hello".into(),
            styled_by: "local".into(),
            client_nonce: String::new(),
        }
    }

    #[test]
    fn message_round_trips_even_from_unaligned_bytes() {
        let record = sample();
        let bytes = encode_message(&record).unwrap();
        assert_eq!(decode_message(&bytes).unwrap(), record);
        // Shift by one byte to prove that decoding does not depend on the caller's alignment.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(decode_message(&shifted[1..]).unwrap(), record);
    }

    #[test]
    fn account_round_trips() {
        let account = AccountRecord {
            login: "alice".into(),
            user_id: 7,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$abc$def".into(),
            color: "#00FF00".into(),
            created_unix_ms: 1_700_000_000_000,
        };
        assert_eq!(
            decode_account(&encode_account(&account).unwrap()).unwrap(),
            account
        );
    }

    #[test]
    fn damaged_bytes_are_reported_not_trusted() {
        let bytes = encode_message(&sample()).unwrap();
        assert!(matches!(
            decode_message(&bytes[..bytes.len() / 2]),
            Err(StorageError::Corrupt(_))
        ));
        assert!(matches!(decode_message(&[]), Err(StorageError::Corrupt(_))));
        // Invalid UTF-8 inside a stored string must be caught by validation, not handed out as a `String`.
        let mut damaged = bytes.to_vec();
        let at = damaged
            .windows(7)
            .position(|w| w == b"skibidi")
            .expect("the text is stored verbatim");
        damaged[at] = 0xff;
        assert!(matches!(
            decode_message(&damaged),
            Err(StorageError::Corrupt(_))
        ));
    }
}
