//! The shard core: everything a shard decides, as a deterministic state machine.
//!
//! [`ShardCore`] owns one shard's connections (their protocol sessions, input decoders and outbound queues), the
//! rooms homed on the shard (sequencing, idempotent resend, last-10 history, subscribers) and the local side of
//! every room (viewers, recent messages). It takes inputs — bytes from a client, a message from another shard, a
//! completed authentication, styling or storage write, the time — and produces [`Output`]s for its driver to carry
//! out: messages to other shards, wake-ups of connections with bytes to write, and requests to the authenticator,
//! the styler and the store. It does no IO, reads no clock, spawns nothing and never blocks, so the simulation in
//! `core::sim` can drive several shards through millions of interleavings from one seed.
//!
//! The path of a chat message:
//! 1. A client's PRIVMSG becomes a [`Submit`] to the room's home shard ([`home_shard`]).
//! 2. The home checks idempotency (`client-nonce`), the rate limit and its own load, then asks for styling.
//! 3. When styling completes, the home assigns the message its id — ids are assigned in the order messages become
//!    ready, so id order, storage order and delivery order are one order — and asks the store to append it.
//! 4. Only when the store says the message is durable, and every earlier message of the room is durable or has
//!    failed, does the home release it: into the last-10 history, to every subscribed shard, and as an ack to the
//!    sender. A failed write is reported to the sender and shows nowhere.
//!
//! **Architecture invariant:** a viewer never sees a message that is not durable, and sees each room's messages in
//! id order, without duplicates. **Architecture invariant:** every [`Submit`] is answered exactly once (ack or
//! NOTICE), which is what lets a connection's in-flight count pause its reads (backpressure).

pub mod automod;
pub mod moderation;
mod outbound;
mod shard;
#[cfg(test)]
mod sim;

use std::sync::Arc;

pub use outbound::{OutQueue, Stamp, Transport, WRITE_GATHER_BYTES_MAX};
pub use shard::{AuthOutcome, CoreConfig, RoomInfo, ShardCore};

use twitchy_storage::{MessageId, MessageRecord, StorageError};

use crate::protocol::commands::{ChatCommand, Role};
use crate::protocol::twitch::{ChatLine, RoomModes};
use moderation::RoomView;

/// A connection, unique on its shard for the shard's lifetime: slot index in the low 32 bits, generation above.
pub type ConnId = u64;

/// The shard that sequences a room. A plain function of the room index, so every shard agrees without talking.
pub fn home_shard(room: usize, shard_count: usize) -> usize {
    room % shard_count
}

/// Messages kept per room for history on join.
pub const HISTORY_ON_JOIN: usize = 10;

/// Where a chat message came from: the connection to answer and to skip in fanout (unless it wants echoes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub shard: usize,
    pub conn: ConnId,
}

/// A durable chat message, shared by every shard that delivers it.
#[derive(Debug)]
pub struct ChatMessage {
    pub record: MessageRecord,
    pub room_id: u64,
    pub is_mod: bool,
    pub origin: Option<Origin>,
}

impl ChatMessage {
    /// The sender's `client-nonce`, kept in the record.
    pub fn client_nonce(&self) -> Option<&str> {
        let nonce = self.record.client_nonce.as_str();
        (!nonce.is_empty()).then_some(nonce)
    }

    pub fn chat_line<'a>(&'a self, historical: bool, id: &'a str) -> ChatLine<'a> {
        let r = &self.record;
        ChatLine {
            id,
            room: &r.room,
            room_id: self.room_id,
            user_id: r.user_id,
            login: &r.login,
            display_name: &r.display_name,
            color: &r.color,
            badges: &r.badges,
            is_mod: self.is_mod,
            text: &r.text,
            original: &r.original,
            client_nonce: self.client_nonce(),
            sent_unix_ms: r.id.unix_ms(),
            historical,
        }
    }
}

/// A client's chat message on its way to the room's home shard.
#[derive(Debug)]
pub struct Submit {
    pub room: usize,
    pub origin: Origin,
    pub user_id: u64,
    pub login: String,
    pub display_name: String,
    pub color: String,
    pub text: String,
    pub client_nonce: Option<String>,
    /// When the origin shard received it; a home too far behind sheds it instead of queueing.
    pub sent_ms: u64,
}

/// The home shard's answer to a [`Submit`].
#[derive(Debug, Clone)]
pub enum SubmitReply {
    Acked {
        id: MessageId,
        client_nonce: Option<String>,
        /// The sender's role in the room when the message was sequenced (USERSTATE's badges and `mod`).
        role: Role,
        /// When the origin shard received the message (the start of the ack latency).
        received_ms: u64,
    },
    Refused {
        msg_id: &'static str,
        text: std::borrow::Cow<'static, str>,
    },
}

/// Everything one shard tells another. Between a pair of shards, messages arrive in the order they were sent.
#[derive(Debug)]
pub enum PeerMsg {
    /// To a room's home: a client's message to sequence.
    Submit(Box<Submit>),
    /// To a room's home: `shard` has viewers and wants the room's messages.
    Subscribe { room: usize, shard: usize },
    /// To a room's home: `shard` has no viewers left.
    Unsubscribe { room: usize, shard: usize },
    /// From a room's home: the last durable messages and the room's roles and modes, in reply to `Subscribe`.
    Snapshot {
        room: usize,
        messages: Vec<Arc<ChatMessage>>,
        view: Box<RoomView>,
    },
    /// To a room's home: a chat command to check and carry out.
    Command(Box<CommandSubmit>),
    /// To the shard a command came from: its answer.
    CommandReply {
        to: CommandFrom,
        room: usize,
        reply: CommandReply,
    },
    /// From a room's home: something moderation changed, for every shard with viewers.
    Event {
        room: usize,
        event: Arc<RoomEvent>,
        at_unix_ms: u64,
    },
    /// From a room's home: one newly durable message.
    Deliver {
        room: usize,
        message: Arc<ChatMessage>,
    },
    /// To a connection's shard: the answer to its submit.
    Reply {
        conn: ConnId,
        room: usize,
        reply: SubmitReply,
    },
}

/// Who ran a chat command: a chat connection, or a request to the HTTP API (answered by ticket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandFrom {
    Conn(Origin),
    Api { shard: usize, ticket: u64 },
}

impl CommandFrom {
    pub fn shard(&self) -> usize {
        match self {
            CommandFrom::Conn(origin) => origin.shard,
            CommandFrom::Api { shard, .. } => *shard,
        }
    }
}

/// The user running a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: u64,
    pub login: String,
    pub display_name: String,
    pub color: String,
}

/// A chat command on its way to the room's home shard.
#[derive(Debug)]
pub struct CommandSubmit {
    pub room: usize,
    pub from: CommandFrom,
    pub actor: Actor,
    pub command: ChatCommand,
}

/// How a command ended, which the HTTP API maps to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Done,
    /// The user may not run it (403).
    Forbidden,
    /// Its target does not exist (404).
    NotFound,
    /// It cannot apply (already banned, not a moderator, …) (400).
    Invalid,
    /// The store could not save it; try again (503).
    Unavailable,
}

/// The answer to a command: Twitch's NOTICE `msg-id` and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReply {
    pub kind: ReplyKind,
    pub msg_id: &'static str,
    pub text: String,
    /// Twitch answers some commands (`/clear`) with the room event alone, no NOTICE; the HTTP API still answers.
    pub notice: bool,
}

/// A user a CLEARCHAT names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearUser {
    pub login: String,
    pub user_id: u64,
    /// A timeout's length; `None` for a ban.
    pub duration_secs: Option<u32>,
}

/// A change moderation made to a room, sent by its home to every shard with viewers, in order with its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// `/clear` (`user` None), a timeout or a ban.
    Clear {
        user: Option<ClearUser>,
    },
    /// A message was deleted: it leaves the last-10 replay and viewers get CLEARMSG.
    Deleted {
        id: MessageId,
        login: String,
        text: String,
    },
    Modes {
        before: RoomModes,
        after: RoomModes,
    },
    /// A granted role changed: the user's connections get a fresh USERSTATE.
    Role {
        user_id: u64,
        role: Role,
    },
    /// AutoMod holds a message: moderators see it.
    Held {
        held_id: u64,
        login: String,
        display_name: String,
        user_id: u64,
        reason: &'static str,
        text: String,
    },
    /// A held message was allowed or denied.
    Resolved {
        held_id: u64,
        allowed: bool,
    },
}

/// A styling request: rewrite `text` in the room's style and answer with [`ShardCore::styled`].
#[derive(Debug)]
pub struct StyleRequest {
    pub ticket: u64,
    pub room: usize,
    pub text: String,
    pub seed: u64,
}

/// What the core asks of its driver.
#[derive(Debug)]
pub enum Output {
    /// Send to another shard, in order.
    Peer { shard: usize, msg: PeerMsg },
    /// The connection has new bytes to write ([`ShardCore::take_writes`]); the driver may write them from
    /// anywhere on the shard, in order, batching every connection flushed in the same pass.
    Flush(ConnId),
    /// The connection's state changed: it may read again, or it is closing.
    Wake(ConnId),
    /// End the connection now, whatever is still queued.
    Close(ConnId),
    /// Check a token; answer with [`ShardCore::auth_done`].
    Authenticate {
        conn: ConnId,
        login: String,
        token: String,
    },
    /// Style a message; answer with [`ShardCore::styled`].
    Style(StyleRequest),
    /// Append a message to the store; answer with [`ShardCore::stored`].
    Store { room: usize, record: MessageRecord },
    /// Find the user id of a login; answer with [`ShardCore::user_resolved`].
    ResolveUser { ticket: u64, login: String },
    /// Write (`Some`) or delete (`None`) a setting durably; answer with [`ShardCore::write_done`].
    PutSetting {
        ticket: u64,
        key: String,
        value: Option<Vec<u8>>,
    },
    /// Mark a stored message deleted; answer with [`ShardCore::write_done`].
    DeleteMessage {
        ticket: u64,
        room: usize,
        id: MessageId,
    },
    /// The answer to [`ShardCore::api_command`].
    ApiReply { ticket: u64, reply: CommandReply },
}

/// The result of a user lookup for a command.
pub type Resolved = Result<Option<u64>, StorageError>;
