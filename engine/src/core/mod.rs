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
pub use shard::{AuthOutcome, CoreConfig, DELETABLE_MESSAGES_MAX, RoomInfo, ShardCore};

use twitchy_storage::{MessageId, MessageRecord, StorageError};

use crate::protocol::commands::{ChatCommand, Role};
use crate::protocol::twitch::{ChatLine, ReplyTags, RoomModes};
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
    /// Twitch's `emotes` tag for the delivered text, computed once.
    pub emotes: String,
    /// The message it answers, if it is a reply.
    pub reply: Option<ReplyTags>,
}

/// The text of a `/me` message is stored and delivered inside CTCP ACTION, as IRC carries it.
pub const ACTION_PREFIX: &str = "\x01ACTION ";

/// The inner text of an ACTION (`/me`) message, or `None` for a plain one.
pub fn action_inner(text: &str) -> Option<&str> {
    text.strip_prefix(ACTION_PREFIX)?.strip_suffix('\x01')
}

impl ChatMessage {
    /// A durable message with its derived delivery fields.
    pub fn new(
        record: MessageRecord,
        room_id: u64,
        is_mod: bool,
        origin: Option<Origin>,
        reply: Option<ReplyTags>,
    ) -> ChatMessage {
        let shown = action_inner(&record.text).unwrap_or(&record.text);
        ChatMessage {
            emotes: crate::protocol::emotes::emotes_tag(shown),
            record,
            room_id,
            is_mod,
            origin,
            reply,
        }
    }

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
            emotes: &self.emotes,
            reply: self.reply.as_ref(),
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
    /// `/me`: `text` is delivered inside a CTCP ACTION.
    pub action: bool,
    /// The id of the message this one answers (`reply-parent-msg-id`), checked by the home.
    pub reply_parent: Option<String>,
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
    /// To a room's home: a logged-in user's connection started (or stopped) viewing the room.
    Presence {
        room: usize,
        login: String,
        joined: bool,
    },
    /// To a room's home: a typing indicator or reaction to relay (and count).
    Tag(Box<TagSubmit>),
    /// To the recipient's user home ([`user_home`]): a whisper to store and deliver.
    Whisper(Box<WhisperSubmit>),
    /// To a user's home: one of the user's connections logged in (`online`) or closed.
    UserSeen {
        login: String,
        user_id: u64,
        at: Origin,
        online: bool,
    },
    /// To a connection's shard: a stored whisper for it (to its user, or its own, echoed as the acknowledgement).
    WhisperTo { conn: ConnId, whisper: Arc<Whisper> },
    /// To a connection's shard: a whisper could not be sent.
    WhisperRefused {
        conn: ConnId,
        msg_id: &'static str,
        text: std::borrow::Cow<'static, str>,
    },
    /// To every shard: a user changed colour; their connections there take it for later lines.
    ColorChanged { user_id: u64, color: String },
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

/// The shard that keeps a user's connections directory and receives their whispers: a plain function of the
/// login, so every shard agrees without talking.
pub fn user_home(login: &str, shard_count: usize) -> usize {
    // FNV-1a: stable across processes and releases, unlike the std hasher's random keys.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in login.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shard_count as u64) as usize
}

/// A relayed client-tag message on its way to the room's home.
#[derive(Debug)]
pub struct TagSubmit {
    pub room: usize,
    pub origin: Origin,
    pub user_id: u64,
    pub login: String,
    pub display_name: String,
    pub typing: Option<crate::protocol::session::Typing>,
    pub react: Option<crate::protocol::session::Reaction>,
}

/// A whisper on its way to the recipient's user home.
#[derive(Debug)]
pub struct WhisperSubmit {
    pub from: Actor,
    pub origin: Origin,
    pub to_login: String,
    pub text: String,
}

/// A stored whisper.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Whisper {
    pub id: String,
    pub from_id: u64,
    pub from_login: String,
    pub from_display_name: String,
    pub from_color: String,
    pub to_id: u64,
    pub to_login: String,
    pub text: String,
    pub sent_unix_ms: u64,
}

impl Whisper {
    /// Twitch's `thread-id`: the two user ids, lower first.
    pub fn thread_id(&self) -> String {
        thread_id(self.from_id, self.to_id)
    }
}

/// Twitch's whisper `thread-id` of two users: their ids, lower first, joined by `_`.
pub fn thread_id(a: u64, b: u64) -> String {
    format!("{}_{}", a.min(b), a.max(b))
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
#[derive(Debug, Clone)]
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
        /// The message that the deletion brings into the last 10 (the oldest of them now), if the room has one:
        /// a shard's copy of the last 10 takes it in, so every shard replays ten on JOIN.
        refill: Option<Arc<ChatMessage>>,
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
    /// A typing indicator or reaction, relayed to everyone but its sender.
    Tag {
        origin: Origin,
        login: String,
        display_name: String,
        user_id: u64,
        typing: Option<crate::protocol::session::Typing>,
        react: Option<(String, String, u32)>,
    },
    /// Logged-in users who came or went since the last batch. `listed` false: the room is now too big to list
    /// its members (membership lines stop, as on Twitch above 1,000 users).
    Membership {
        joined: Vec<String>,
        parted: Vec<String>,
        listed: bool,
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
    /// Read the settings under a prefix; answer with [`ShardCore::settings_read`].
    ReadSettings {
        ticket: u64,
        prefix: String,
        limit: usize,
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
