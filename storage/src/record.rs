//! The records the store keeps. Encoded with rkyv where a store holds bytes, so reads are zero-copy.

use crate::id::MessageId;

/// One chat message as stored and replayed (history on join, history pages).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MessageRecord {
    /// Time-ordered id; also the message's server timestamp (`MessageId::unix_ms`).
    pub id: MessageId,
    /// Room name without the leading `#`, lowercase.
    pub room: String,
    /// Numeric account id of the sender.
    pub user_id: u64,
    /// Sender's login (lowercase).
    pub login: String,
    /// Sender's display name.
    pub display_name: String,
    /// Sender's name color as `#RRGGBB`, or empty.
    pub color: String,
    /// Twitch `badges` tag value, e.g. `moderator/1`, or empty.
    pub badges: String,
    /// The styled (skibidified) text that viewers see.
    pub text: String,
    /// The text as the sender typed it.
    pub original: String,
    /// How the text was styled: `llm` or `local`.
    pub styled_by: String,
    /// The sender's IRCv3 `client-nonce`, or empty. Kept so that a resend of the same message after a restart is
    /// still recognised and acknowledged with this id instead of being stored twice.
    pub client_nonce: String,
}

/// A registered account.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AccountRecord {
    /// Lowercase login, `[a-z0-9_]{4,25}`.
    pub login: String,
    pub user_id: u64,
    /// Argon2 hash in PHC string form.
    pub password_hash: String,
    /// Name color `#RRGGBB`.
    pub color: String,
    pub created_unix_ms: u64,
}

/// A session token's grant, stored under the token's SHA-256 (the token itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The login the token belongs to.
    pub login: String,
    pub issued_unix_ms: u64,
    /// The token is refused from this instant on.
    pub expires_unix_ms: u64,
}

impl TokenRecord {
    /// Still valid at `now_unix_ms`.
    pub fn is_live(&self, now_unix_ms: u64) -> bool {
        now_unix_ms < self.expires_unix_ms
    }
}
