//! Encoders for the lines a Twitch chat server sends.
//!
//! Every encoder appends one or more complete `\r\n`-terminated lines to the caller's buffer and
//! allocates nothing else: tag values are escaped straight into the buffer and numbers are
//! formatted on the stack. Room names are passed without the leading `#` (one is tolerated), as
//! the session hands them to the engine. `with_tags` says whether the client ACKed
//! `twitch.tv/tags`; without it, lines carry no tags, exactly like Twitch.

use super::irc::{push_middle, push_tag, push_trailing};

/// The server name Twitch uses in prefixes; configurable per deployment.
pub const SERVER_NAME_DEFAULT: &str = "tmi.twitch.tv";

/// The capabilities this server offers, in the order `CAP LS` lists them.
pub const CAPABILITIES: [&str; 3] = [
    "twitch.tv/tags",
    "twitch.tv/commands",
    "twitch.tv/membership",
];

/// `msg-id` values for NOTICE lines.
///
/// Where Twitch has an id for the situation, it is used verbatim so existing clients react as
/// they do on Twitch. Where Twitch has none (usually because Twitch drops the line silently), the
/// id is new but follows Twitch's `msg_` naming, and the doc comment says so.
pub mod msg_id {
    /// Twitch's id for a chat command the server does not run (`/ban`, `.color`, ...).
    pub const UNRECOGNIZED_CMD: &str = "unrecognized_cmd";
    /// Twitch's id: the sender exceeded the per-user message rate.
    pub const RATELIMIT: &str = "msg_ratelimit";
    /// Twitch's id for a JOIN or PRIVMSG to a channel that does not exist (or is suspended).
    pub const CHANNEL_SUSPENDED: &str = "msg_channel_suspended";
    /// Not a Twitch id: Twitch silently drops messages longer than 500 characters, and none of
    /// its ids (`msg_rejected` means "held by AutoMod") describes the situation honestly.
    pub const TOO_LONG: &str = "msg_too_long";
    /// Not a Twitch id: Twitch silently ignores PRIVMSG from anonymous (`justinfan`) users. A
    /// distinct id lets a client prompt for a login instead of guessing.
    pub const LOGIN_REQUIRED: &str = "msg_login_required";
    /// Not a Twitch id: the message could not be made durable in time (storage is overloaded)
    /// and was not sent; the client may send it again.
    pub const TRY_AGAIN: &str = "msg_try_again";
    /// Not a Twitch id: the connection sent JOINs faster than its JOIN rate limit; Twitch drops
    /// such JOINs silently. Kept apart from [`RATELIMIT`], which clients read as "message not
    /// sent".
    pub const JOIN_RATELIMIT: &str = "msg_join_ratelimit";
    /// Not a Twitch id: the connection has joined as many channels as it may.
    pub const TOO_MANY_CHANNELS: &str = "msg_too_many_channels";
    /// Not a Twitch id: PRIVMSG to a channel the connection has not joined. Twitch accepts
    /// those; this server requires the JOIN first so that every message targets a room the
    /// engine has already confirmed to exist.
    pub const NOT_JOINED: &str = "msg_not_joined";
    /// Not a Twitch id: the line could not be read (too long, not UTF-8, malformed tags or no
    /// command). Twitch drops or disconnects on such lines without explanation.
    pub const INVALID_LINE: &str = "msg_invalid_line";
    /// Not a Twitch id: the connection did not finish registering (NICK, and `CAP END` after
    /// `CAP LS`) in time and is closed. Twitch closes such connections silently.
    pub const REGISTRATION_TIMEOUT: &str = "msg_registration_timeout";
    /// Not a Twitch id: a WebSocket message was larger than the server accepts; the close frame
    /// that follows carries code 1009.
    pub const MESSAGE_TOO_BIG: &str = "msg_message_too_big";
    /// Not a Twitch id: a WebSocket text message was not valid UTF-8; the close frame that
    /// follows carries code 1007.
    pub const INVALID_UTF8: &str = "msg_invalid_utf8";
    /// Not a Twitch id: the client's address holds as many connections as it may; this one is closed.
    pub const TOO_MANY_CONNECTIONS: &str = "msg_too_many_connections";
}

/// One chat message as delivered to viewers.
#[derive(Debug, Clone, Copy)]
pub struct ChatLine<'a> {
    pub id: &'a str,
    /// Room name without `#`.
    pub room: &'a str,
    pub room_id: u64,
    pub user_id: u64,
    pub login: &'a str,
    pub display_name: &'a str,
    /// `#RRGGBB` or empty.
    pub color: &'a str,
    /// Twitch badge list, e.g. `moderator/1,subscriber/12`.
    pub badges: &'a str,
    pub is_mod: bool,
    /// The styled text viewers see.
    pub text: &'a str,
    /// The text as the sender wrote it, carried in the `twitchy/original` tag.
    pub original: &'a str,
    pub client_nonce: Option<&'a str>,
    pub sent_unix_ms: u64,
    /// True when replayed from history on JOIN; adds `historical=1` and `rm-received-ts`, as the recent-messages
    /// service Twitch clients know does.
    pub historical: bool,
    /// Twitch's `emotes` tag value (`id:start-end,…/id:…`, code-point offsets into the text), or empty.
    pub emotes: &'a str,
    /// The message this one answers, for Twitch's `reply-parent-*` and `reply-thread-parent-*` tags.
    pub reply: Option<&'a ReplyTags>,
}

/// What a reply carries about the message it answers (and the first message of its thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTags {
    pub parent_msg_id: String,
    pub parent_user_id: u64,
    pub parent_login: String,
    pub parent_display_name: String,
    /// The parent's text as viewers saw it.
    pub parent_body: String,
    pub thread_msg_id: String,
    pub thread_login: String,
}

/// The per-user values carried by USERSTATE and GLOBALUSERSTATE.
#[derive(Debug, Clone, Copy)]
pub struct UserState<'a> {
    pub login: &'a str,
    pub display_name: &'a str,
    pub color: &'a str,
    pub badges: &'a str,
    pub is_mod: bool,
}

/// Writes a tag section into a line, or nothing when tags are off.
struct TagWriter<'o> {
    out: &'o mut Vec<u8>,
    enabled: bool,
    first: bool,
}

impl<'o> TagWriter<'o> {
    fn new(out: &'o mut Vec<u8>, enabled: bool) -> Self {
        TagWriter {
            out,
            enabled,
            first: true,
        }
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        if self.enabled {
            push_tag(self.out, self.first, key, value);
            self.first = false;
        }
        self
    }

    fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        self.str(key, format_u64(value, &mut digits))
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.str(key, if value { "1" } else { "0" })
    }

    /// Ends the tag section with the space that separates it from the prefix.
    fn finish(&mut self) {
        if self.enabled && !self.first {
            self.out.push(b' ');
        }
    }
}

/// Formats `value` in decimal into `buffer` without allocating.
fn format_u64(mut value: u64, buffer: &mut [u8; 20]) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buffer[start..]).unwrap_or("0")
}

fn push_server_prefix(out: &mut Vec<u8>, server: &str) {
    out.push(b':');
    push_middle(out, server);
    out.push(b' ');
}

/// `:login!login@login.<server> `
fn push_user_prefix(out: &mut Vec<u8>, login: &str, server: &str) {
    out.push(b':');
    push_middle(out, login);
    out.push(b'!');
    push_middle(out, login);
    out.push(b'@');
    push_middle(out, login);
    out.push(b'.');
    push_middle(out, server);
    out.push(b' ');
}

fn push_room(out: &mut Vec<u8>, room: &str) {
    out.push(b'#');
    push_middle(out, room.strip_prefix('#').unwrap_or(room));
}

/// Whether a badge list holds a subscriber (or founder) badge, which Twitch mirrors in the
/// `subscriber` tag.
fn has_subscriber_badge(badges: &str) -> bool {
    badges
        .split(',')
        .any(|badge| badge.starts_with("subscriber/") || badge.starts_with("founder/"))
}

/// Twitch always sends a non-empty `display-name`, and some client libraries reject an empty
/// one, so an empty display name falls back to the login.
fn display_name<'a>(display_name: &'a str, login: &'a str) -> &'a str {
    if display_name.is_empty() {
        login
    } else {
        display_name
    }
}

fn user_type(is_mod: bool) -> &'static str {
    if is_mod { "mod" } else { "" }
}

/// A delivered chat message: tagged PRIVMSG from `login!login@login.<server>`.
pub fn encode_privmsg(line: &ChatLine<'_>, server: &str, with_tags: bool, out: &mut Vec<u8>) {
    let mut tags = TagWriter::new(out, with_tags);
    tags.str("badge-info", "").str("badges", line.badges);
    if let Some(nonce) = line.client_nonce {
        tags.str("client-nonce", nonce);
    }
    tags.str("color", line.color)
        .str("display-name", display_name(line.display_name, line.login))
        .str("emotes", line.emotes)
        .bool("first-msg", false)
        .str("flags", "");
    if line.historical {
        tags.str("historical", "1");
    }
    tags.str("id", line.id).bool("mod", line.is_mod);
    if let Some(reply) = line.reply {
        tags.str("reply-parent-display-name", &reply.parent_display_name)
            .str("reply-parent-msg-body", &reply.parent_body)
            .str("reply-parent-msg-id", &reply.parent_msg_id)
            .u64("reply-parent-user-id", reply.parent_user_id)
            .str("reply-parent-user-login", &reply.parent_login)
            .str("reply-thread-parent-msg-id", &reply.thread_msg_id)
            .str("reply-thread-parent-user-login", &reply.thread_login);
    }
    tags.bool("returning-chatter", false);
    if line.historical {
        tags.u64("rm-received-ts", line.sent_unix_ms);
    }
    tags.u64("room-id", line.room_id)
        .bool("subscriber", has_subscriber_badge(line.badges))
        .u64("tmi-sent-ts", line.sent_unix_ms)
        .bool("turbo", false)
        .str("twitchy/original", line.original)
        .u64("user-id", line.user_id)
        .str("user-type", user_type(line.is_mod))
        .finish();
    push_user_prefix(out, line.login, server);
    out.extend_from_slice(b"PRIVMSG ");
    push_room(out, line.room);
    out.extend_from_slice(b" :");
    push_trailing(out, line.text);
    out.extend_from_slice(b"\r\n");
}

fn userstate_tags(tags: &mut TagWriter<'_>, user: &UserState<'_>) {
    tags.str("badge-info", "")
        .str("badges", user.badges)
        .str("color", user.color)
        .str("display-name", display_name(user.display_name, user.login))
        .str("emote-sets", "0")
        .bool("mod", user.is_mod)
        .bool("subscriber", has_subscriber_badge(user.badges))
        .str("user-type", user_type(user.is_mod));
}

/// `USERSTATE #room`, sent after a JOIN.
pub fn encode_userstate(
    room: &str,
    user: &UserState<'_>,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    let mut tags = TagWriter::new(out, with_tags);
    userstate_tags(&mut tags, user);
    tags.finish();
    push_server_prefix(out, server);
    out.extend_from_slice(b"USERSTATE ");
    push_room(out, room);
    out.extend_from_slice(b"\r\n");
}

/// The acknowledgement of a durable message: `USERSTATE #room` with the usual tags plus
/// `id=<message id>` and the sender's `client-nonce`, so a client can match it to what it sent.
pub fn encode_ack(
    room: &str,
    user: &UserState<'_>,
    message_id: &str,
    client_nonce: Option<&str>,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    let mut tags = TagWriter::new(out, with_tags);
    userstate_tags(&mut tags, user);
    if let Some(nonce) = client_nonce {
        tags.str("client-nonce", nonce);
    }
    tags.str("id", message_id).finish();
    push_server_prefix(out, server);
    out.extend_from_slice(b"USERSTATE ");
    push_room(out, room);
    out.extend_from_slice(b"\r\n");
}

/// `GLOBALUSERSTATE`, sent after a registered (non-anonymous) login.
pub fn encode_globaluserstate(
    user: &UserState<'_>,
    user_id: u64,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    TagWriter::new(out, with_tags)
        .str("badge-info", "")
        .str("badges", user.badges)
        .str("color", user.color)
        .str("display-name", display_name(user.display_name, user.login))
        .str("emote-sets", "0")
        .u64("user-id", user_id)
        .str("user-type", user_type(user.is_mod))
        .finish();
    push_server_prefix(out, server);
    out.extend_from_slice(b"GLOBALUSERSTATE\r\n");
}

/// A room's chat modes, as ROOMSTATE carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomModes {
    /// Seconds a non-exempt user must wait between messages; 0 = off.
    pub slow_secs: u32,
    pub emote_only: bool,
    /// Twitch's unique-chat mode (`r9k`).
    pub r9k: bool,
}

/// `ROOMSTATE #room` with every mode, sent after a JOIN. Followers-only and subscribers-only do not exist here
/// and are always off.
pub fn encode_roomstate(
    room: &str,
    room_id: u64,
    modes: &RoomModes,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    TagWriter::new(out, with_tags)
        .bool("emote-only", modes.emote_only)
        .str("followers-only", "-1")
        .bool("r9k", modes.r9k)
        .u64("room-id", room_id)
        .u64("slow", u64::from(modes.slow_secs))
        .bool("subs-only", false)
        .finish();
    push_server_prefix(out, server);
    out.extend_from_slice(b"ROOMSTATE ");
    push_room(out, room);
    out.extend_from_slice(b"\r\n");
}

/// `ROOMSTATE #room` after a mode changed: `room-id` and the tags that differ between `before` and `after`, as
/// Twitch sends it.
pub fn encode_roomstate_change(
    room: &str,
    room_id: u64,
    before: &RoomModes,
    after: &RoomModes,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    let mut tags = TagWriter::new(out, with_tags);
    if before.emote_only != after.emote_only {
        tags.bool("emote-only", after.emote_only);
    }
    if before.r9k != after.r9k {
        tags.bool("r9k", after.r9k);
    }
    tags.u64("room-id", room_id);
    if before.slow_secs != after.slow_secs {
        tags.u64("slow", u64::from(after.slow_secs));
    }
    tags.finish();
    push_server_prefix(out, server);
    out.extend_from_slice(b"ROOMSTATE ");
    push_room(out, room);
    out.extend_from_slice(b"\r\n");
}

/// What a `CLEARCHAT` clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearTarget<'a> {
    /// `/clear`: the whole chat.
    All,
    /// A timeout (`ban_duration_secs` set) or a ban of one user.
    User {
        login: &'a str,
        user_id: u64,
        ban_duration_secs: Option<u32>,
    },
}

/// `CLEARCHAT #room [:login]`: a timeout, ban or `/clear`.
pub fn encode_clearchat(
    room: &str,
    room_id: u64,
    target: ClearTarget<'_>,
    sent_unix_ms: u64,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    let mut tags = TagWriter::new(out, with_tags);
    if let ClearTarget::User {
        ban_duration_secs: Some(secs),
        ..
    } = target
    {
        tags.u64("ban-duration", u64::from(secs));
    }
    tags.u64("room-id", room_id);
    if let ClearTarget::User { user_id, .. } = target {
        tags.u64("target-user-id", user_id);
    }
    tags.u64("tmi-sent-ts", sent_unix_ms).finish();
    push_server_prefix(out, server);
    out.extend_from_slice(b"CLEARCHAT ");
    push_room(out, room);
    if let ClearTarget::User { login, .. } = target {
        out.extend_from_slice(b" :");
        push_trailing(out, login);
    }
    out.extend_from_slice(b"\r\n");
}

/// `CLEARMSG #room :text`: one message was deleted.
#[allow(clippy::too_many_arguments)]
pub fn encode_clearmsg(
    room: &str,
    room_id: u64,
    login: &str,
    message_id: &str,
    text: &str,
    sent_unix_ms: u64,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    TagWriter::new(out, with_tags)
        .str("login", login)
        .u64("room-id", room_id)
        .str("target-msg-id", message_id)
        .u64("tmi-sent-ts", sent_unix_ms)
        .finish();
    push_server_prefix(out, server);
    out.extend_from_slice(b"CLEARMSG ");
    push_room(out, room);
    out.extend_from_slice(b" :");
    push_trailing(out, text);
    out.extend_from_slice(b"\r\n");
}

/// A message AutoMod holds for the room's moderators to allow or deny.
#[derive(Debug, Clone, Copy)]
pub struct HeldLine<'a> {
    pub held_id: u64,
    pub login: &'a str,
    pub display_name: &'a str,
    pub user_id: u64,
    /// Why AutoMod held it (`caps`, `link`, `phrase`, …).
    pub reason: &'a str,
    pub text: &'a str,
}

/// `USERNOTICE #room :text` with `msg-id=automod-held`, to moderators only: a message AutoMod holds.
pub fn encode_automod_held(
    room: &str,
    room_id: u64,
    held: &HeldLine<'_>,
    sent_unix_ms: u64,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    TagWriter::new(out, with_tags)
        .str("display-name", display_name(held.display_name, held.login))
        .u64("held-id", held.held_id)
        .str("login", held.login)
        .str("msg-id", "automod-held")
        .str("reason", held.reason)
        .u64("room-id", room_id)
        .u64("tmi-sent-ts", sent_unix_ms)
        .u64("user-id", held.user_id)
        .finish();
    push_server_prefix(out, server);
    out.extend_from_slice(b"USERNOTICE ");
    push_room(out, room);
    out.extend_from_slice(b" :");
    push_trailing(out, held.text);
    out.extend_from_slice(b"\r\n");
}

/// `USERNOTICE #room` with `msg-id=automod-resolved`, to moderators only: a held message was allowed or denied.
#[allow(clippy::too_many_arguments)]
pub fn encode_automod_resolved(
    room: &str,
    room_id: u64,
    held_id: u64,
    allowed: bool,
    sent_unix_ms: u64,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    TagWriter::new(out, with_tags)
        .u64("held-id", held_id)
        .str("msg-id", "automod-resolved")
        .u64("room-id", room_id)
        .str("status", if allowed { "allowed" } else { "denied" })
        .u64("tmi-sent-ts", sent_unix_ms)
        .finish();
    push_server_prefix(out, server);
    out.extend_from_slice(b"USERNOTICE ");
    push_room(out, room);
    out.extend_from_slice(b"\r\n");
}

/// `NOTICE <target> :text`, with `msg-id` when tags are on; `target` None means `*`.
pub fn encode_notice(
    target: Option<&str>,
    msg_id: Option<&str>,
    text: &str,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    if let Some(msg_id) = msg_id {
        TagWriter::new(out, with_tags)
            .str("msg-id", msg_id)
            .finish();
    }
    push_server_prefix(out, server);
    out.extend_from_slice(b"NOTICE ");
    match target {
        Some(room) => push_room(out, room),
        None => out.push(b'*'),
    }
    out.extend_from_slice(b" :");
    push_trailing(out, text);
    out.extend_from_slice(b"\r\n");
}

/// `NOTICE #room` for a message refused by the per-user rate limit (`msg_ratelimit`, with
/// Twitch's text).
pub fn encode_ratelimit_notice(room: &str, server: &str, with_tags: bool, out: &mut Vec<u8>) {
    encode_notice(
        Some(room),
        Some(msg_id::RATELIMIT),
        "Your message was not sent because you are sending messages too quickly.",
        server,
        with_tags,
        out,
    );
}

/// `NOTICE #room` for a message that could not be stored in time (`msg_try_again`).
pub fn encode_try_again_notice(room: &str, server: &str, with_tags: bool, out: &mut Vec<u8>) {
    encode_notice(
        Some(room),
        Some(msg_id::TRY_AGAIN),
        "Your message was not sent because the server is busy. Please try again.",
        server,
        with_tags,
        out,
    );
}

/// `NOTICE #room` for a room that does not exist (`msg_channel_suspended`).
pub fn encode_channel_suspended_notice(
    room: &str,
    server: &str,
    with_tags: bool,
    out: &mut Vec<u8>,
) {
    encode_notice(
        Some(room),
        Some(msg_id::CHANNEL_SUSPENDED),
        "This channel does not exist or has been suspended.",
        server,
        with_tags,
        out,
    );
}

/// Twitch's reply to a bad PASS: `:<server> NOTICE * :Login authentication failed`, without
/// tags; the connection is closed after it.
pub fn encode_authentication_failed(server: &str, out: &mut Vec<u8>) {
    encode_notice(
        None,
        None,
        "Login authentication failed",
        server,
        false,
        out,
    );
}

/// `:<server> RECONNECT`: asks the client to reconnect (sent before a restart).
pub fn encode_reconnect(server: &str, out: &mut Vec<u8>) {
    push_server_prefix(out, server);
    out.extend_from_slice(b"RECONNECT\r\n");
}

/// The server's keep-alive: `PING :<server>`.
pub fn encode_ping(server: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING :");
    push_trailing(out, server);
    out.extend_from_slice(b"\r\n");
}

/// The answer to a client PING: `PONG :<server>` for a bare `PING`, or
/// `:<server> PONG <server> :<argument>` when the PING carried one.
pub fn encode_pong(server: &str, argument: Option<&str>, out: &mut Vec<u8>) {
    match argument {
        None => {
            out.extend_from_slice(b"PONG :");
            push_trailing(out, server);
        }
        Some(argument) => {
            push_server_prefix(out, server);
            out.extend_from_slice(b"PONG ");
            push_middle(out, server);
            out.extend_from_slice(b" :");
            push_trailing(out, argument);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A numeric reply `:<server> <code> <target> [middle...] :text`.
pub fn encode_numeric(
    code: &str,
    target: &str,
    middle: &[&str],
    text: &str,
    server: &str,
    out: &mut Vec<u8>,
) {
    push_server_prefix(out, server);
    push_middle(out, code);
    out.push(b' ');
    push_middle(out, target);
    for param in middle {
        out.push(b' ');
        push_middle(out, param);
    }
    out.extend_from_slice(b" :");
    push_trailing(out, text);
    out.extend_from_slice(b"\r\n");
}

/// The welcome burst Twitch sends on login: numerics 001–004 and the MOTD 375/372/376.
pub fn encode_welcome(nick: &str, server: &str, out: &mut Vec<u8>) {
    encode_numeric("001", nick, &[], "Welcome, GLHF!", server, out);
    push_server_prefix(out, server);
    out.extend_from_slice(b"002 ");
    push_middle(out, nick);
    out.extend_from_slice(b" :Your host is ");
    push_trailing(out, server);
    out.extend_from_slice(b"\r\n");
    encode_numeric("003", nick, &[], "This server is rather new", server, out);
    encode_numeric("004", nick, &[], "-", server, out);
    encode_numeric("375", nick, &[], "-", server, out);
    encode_numeric(
        "372",
        nick,
        &[],
        "You are in a maze of twisty passages, all alike.",
        server,
        out,
    );
    encode_numeric("376", nick, &[], ">", server, out);
}

/// `:<server> CAP * <subcommand> :<capabilities>` (LS, ACK, NAK, LIST).
pub fn encode_cap(subcommand: &str, capabilities: &str, server: &str, out: &mut Vec<u8>) {
    push_server_prefix(out, server);
    out.extend_from_slice(b"CAP * ");
    push_middle(out, subcommand);
    out.extend_from_slice(b" :");
    push_trailing(out, capabilities);
    out.extend_from_slice(b"\r\n");
}

/// The echo of the client's own JOIN: `:nick!nick@nick.<server> JOIN #room`.
pub fn encode_join(nick: &str, room: &str, server: &str, out: &mut Vec<u8>) {
    push_user_prefix(out, nick, server);
    out.extend_from_slice(b"JOIN ");
    push_room(out, room);
    out.extend_from_slice(b"\r\n");
}

/// The echo of the client's own PART: `:nick!nick@nick.<server> PART #room`.
pub fn encode_part(nick: &str, room: &str, server: &str, out: &mut Vec<u8>) {
    push_user_prefix(out, nick, server);
    out.extend_from_slice(b"PART ");
    push_room(out, room);
    out.extend_from_slice(b"\r\n");
}

/// A whisper as delivered.
#[derive(Debug, Clone, Copy)]
pub struct WhisperLine<'a> {
    pub from_login: &'a str,
    pub from_display_name: &'a str,
    pub from_color: &'a str,
    pub from_id: u64,
    pub to_login: &'a str,
    pub text: &'a str,
    pub message_id: &'a str,
    pub thread_id: &'a str,
    pub emotes: &'a str,
}

/// `WHISPER <to> :text` from `from`, with Twitch's whisper tags.
pub fn encode_whisper(line: &WhisperLine<'_>, server: &str, with_tags: bool, out: &mut Vec<u8>) {
    TagWriter::new(out, with_tags)
        .str("badges", "")
        .str("color", line.from_color)
        .str(
            "display-name",
            display_name(line.from_display_name, line.from_login),
        )
        .str("emotes", line.emotes)
        .str("message-id", line.message_id)
        .str("thread-id", line.thread_id)
        .bool("turbo", false)
        .u64("user-id", line.from_id)
        .str("user-type", "")
        .finish();
    push_user_prefix(out, line.from_login, server);
    out.extend_from_slice(b"WHISPER ");
    push_middle(out, line.to_login);
    out.extend_from_slice(b" :");
    push_trailing(out, line.text);
    out.extend_from_slice(b"\r\n");
}

/// A relayed client-tag message: a typing indicator or a reaction.
#[derive(Debug, Clone, Copy)]
pub struct TagLine<'a> {
    pub room: &'a str,
    pub room_id: u64,
    pub login: &'a str,
    pub display_name: &'a str,
    pub user_id: u64,
    /// `active`, `paused` or `done`.
    pub typing: Option<&'a str>,
    /// The reaction, the message it answers, and how many users have reacted so to it.
    pub react: Option<(&'a str, &'a str, u32)>,
}

/// `TAGMSG #room` relaying IRCv3 client tags (`+typing`, `+draft/react` with `+draft/reply`) from `login`, with
/// the reaction's count in `twitchy/reaction-count`.
pub fn encode_tagmsg(line: &TagLine<'_>, server: &str, out: &mut Vec<u8>) {
    let mut tags = TagWriter::new(out, true);
    if let Some((emoji, msg_id, _)) = line.react {
        tags.str("+draft/react", emoji).str("+draft/reply", msg_id);
    }
    if let Some(typing) = line.typing {
        tags.str("+typing", typing);
    }
    tags.str("display-name", display_name(line.display_name, line.login))
        .u64("room-id", line.room_id);
    if let Some((_, _, count)) = line.react {
        tags.u64("twitchy/reaction-count", u64::from(count));
    }
    tags.u64("user-id", line.user_id).finish();
    push_user_prefix(out, line.login, server);
    out.extend_from_slice(b"TAGMSG ");
    push_room(out, line.room);
    out.extend_from_slice(b"\r\n");
}

/// Longest run of names in one `353` line, in bytes: lines stay well under IRC's 512.
const NAMES_LINE_BYTES_MAX: usize = 400;

/// The NAMES reply after a JOIN: `:nick.<server> 353 nick = #room :nick other …` (as many lines as the names need)
/// and `:nick.<server> 366 nick #room :End of /NAMES list`. `others` are the room's other logged-in users, listed
/// only with the membership capability, as on Twitch.
pub fn encode_names(nick: &str, room: &str, others: &[String], server: &str, out: &mut Vec<u8>) {
    let numeric_prefix = |out: &mut Vec<u8>, code: &[u8]| {
        out.push(b':');
        push_middle(out, nick);
        out.push(b'.');
        push_middle(out, server);
        out.push(b' ');
        out.extend_from_slice(code);
        out.push(b' ');
        push_middle(out, nick);
    };
    let names =
        std::iter::once(nick).chain(others.iter().map(String::as_str).filter(|n| *n != nick));
    let mut line_names = 0;
    let mut line_start = out.len();
    for name in names {
        if line_names > 0 && out.len() - line_start + name.len() + 1 > NAMES_LINE_BYTES_MAX {
            out.extend_from_slice(b"\r\n");
            line_names = 0;
        }
        if line_names == 0 {
            line_start = out.len();
            numeric_prefix(out, b"353");
            out.extend_from_slice(b" = ");
            push_room(out, room);
            out.extend_from_slice(b" :");
        } else {
            out.push(b' ');
        }
        push_middle(out, name);
        line_names += 1;
    }
    out.extend_from_slice(b"\r\n");
    numeric_prefix(out, b"366");
    out.push(b' ');
    push_room(out, room);
    out.extend_from_slice(b" :End of /NAMES list\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::irc::Message;

    const SERVER: &str = SERVER_NAME_DEFAULT;

    type Encoder = fn(&mut Vec<u8>);

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).expect("encoders write UTF-8")
    }

    fn chat_line() -> ChatLine<'static> {
        ChatLine {
            id: "b34ccfc7-4977-403a-8a94-33c6bac34fb8",
            room: "ronni",
            room_id: 1337,
            user_id: 42,
            login: "ronni",
            display_name: "Ronni Q",
            color: "#0D4200",
            badges: "moderator/1,subscriber/12",
            is_mod: true,
            text: "skibidi; rizz \\ ohio",
            original: "hello; world",
            client_nonce: Some("nonce 1"),
            sent_unix_ms: 1_507_246_572_675,
            historical: false,
            emotes: "",
            reply: None,
        }
    }

    #[test]
    fn privmsg_with_tags_exact() {
        let mut out = Vec::new();
        encode_privmsg(&chat_line(), SERVER, true, &mut out);
        assert_eq!(
            text(&out),
            "@badge-info=;badges=moderator/1,subscriber/12;client-nonce=nonce\\s1;color=#0D4200;\
             display-name=Ronni\\sQ;emotes=;first-msg=0;flags=;id=b34ccfc7-4977-403a-8a94-33c6bac34fb8;\
             mod=1;returning-chatter=0;room-id=1337;subscriber=1;tmi-sent-ts=1507246572675;turbo=0;\
             twitchy/original=hello\\:\\sworld;user-id=42;user-type=mod \
             :ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :skibidi; rizz \\ ohio\r\n"
        );
    }

    #[test]
    fn privmsg_parses_back() {
        let mut line = chat_line();
        line.historical = true;
        line.client_nonce = None;
        line.is_mod = false;
        line.badges = "";
        line.text = "multi\r\nline";
        let mut out = Vec::new();
        encode_privmsg(&line, "chat.example", true, &mut out);
        let message = Message::parse(text(&out)).unwrap();
        assert_eq!(message.prefix, Some("ronni!ronni@ronni.chat.example"));
        assert_eq!(message.command, "PRIVMSG");
        assert_eq!(message.params, ["#ronni", "multi  line"]);
        assert_eq!(message.tag("historical").as_deref(), Some("1"));
        assert_eq!(message.tag("client-nonce"), None);
        assert_eq!(
            message.tag("twitchy/original").as_deref(),
            Some("hello; world")
        );
        assert_eq!(message.tag("mod").as_deref(), Some("0"));
        assert_eq!(message.tag("subscriber").as_deref(), Some("0"));
        assert_eq!(message.tag("user-type").as_deref(), Some(""));
        assert_eq!(message.tag("tmi-sent-ts").as_deref(), Some("1507246572675"));
    }

    #[test]
    fn privmsg_without_tags() {
        let mut out = Vec::new();
        encode_privmsg(&chat_line(), SERVER, false, &mut out);
        assert_eq!(
            text(&out),
            ":ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :skibidi; rizz \\ ohio\r\n"
        );
    }

    #[test]
    fn ack_carries_id_and_nonce() {
        let user = UserState {
            login: "ronni",
            display_name: "Ronni",
            color: "",
            badges: "",
            is_mod: false,
        };
        let mut out = Vec::new();
        encode_ack(
            "#ronni",
            &user,
            "msg-1",
            Some("n;1"),
            SERVER,
            true,
            &mut out,
        );
        assert_eq!(
            text(&out),
            "@badge-info=;badges=;color=;display-name=Ronni;emote-sets=0;mod=0;subscriber=0;\
             user-type=;client-nonce=n\\:1;id=msg-1 :tmi.twitch.tv USERSTATE #ronni\r\n"
        );
        out.clear();
        encode_ack("ronni", &user, "msg-1", None, SERVER, false, &mut out);
        assert_eq!(text(&out), ":tmi.twitch.tv USERSTATE #ronni\r\n");
    }

    #[test]
    fn notice_variants() {
        let mut out = Vec::new();
        encode_notice(
            Some("room"),
            Some(msg_id::RATELIMIT),
            "Slow down.",
            SERVER,
            true,
            &mut out,
        );
        assert_eq!(
            text(&out),
            "@msg-id=msg_ratelimit :tmi.twitch.tv NOTICE #room :Slow down.\r\n"
        );
        out.clear();
        encode_notice(None, Some(msg_id::RATELIMIT), "x", SERVER, false, &mut out);
        assert_eq!(text(&out), ":tmi.twitch.tv NOTICE * :x\r\n");
        out.clear();
        encode_authentication_failed(SERVER, &mut out);
        assert_eq!(
            text(&out),
            ":tmi.twitch.tv NOTICE * :Login authentication failed\r\n"
        );
    }

    #[test]
    fn fixed_lines() {
        let cases: [(Encoder, &str); 6] = [
            (
                |out| encode_reconnect(SERVER, out),
                ":tmi.twitch.tv RECONNECT\r\n",
            ),
            (|out| encode_ping(SERVER, out), "PING :tmi.twitch.tv\r\n"),
            (
                |out| encode_pong(SERVER, None, out),
                "PONG :tmi.twitch.tv\r\n",
            ),
            (
                |out| encode_pong(SERVER, Some("abc 1"), out),
                ":tmi.twitch.tv PONG tmi.twitch.tv :abc 1\r\n",
            ),
            (
                |out| encode_join("bob", "room", SERVER, out),
                ":bob!bob@bob.tmi.twitch.tv JOIN #room\r\n",
            ),
            (
                |out| encode_names("bob", "room", &[], SERVER, out),
                ":bob.tmi.twitch.tv 353 bob = #room :bob\r\n\
                 :bob.tmi.twitch.tv 366 bob #room :End of /NAMES list\r\n",
            ),
        ];
        for (encode, expected) in cases {
            let mut out = Vec::new();
            encode(&mut out);
            assert_eq!(text(&out), expected);
        }
    }

    #[test]
    fn welcome_matches_twitch() {
        let mut out = Vec::new();
        encode_welcome("bob", SERVER, &mut out);
        assert_eq!(
            text(&out),
            ":tmi.twitch.tv 001 bob :Welcome, GLHF!\r\n\
             :tmi.twitch.tv 002 bob :Your host is tmi.twitch.tv\r\n\
             :tmi.twitch.tv 003 bob :This server is rather new\r\n\
             :tmi.twitch.tv 004 bob :-\r\n\
             :tmi.twitch.tv 375 bob :-\r\n\
             :tmi.twitch.tv 372 bob :You are in a maze of twisty passages, all alike.\r\n\
             :tmi.twitch.tv 376 bob :>\r\n"
        );
    }

    #[test]
    fn state_lines() {
        let user = UserState {
            login: "bob",
            display_name: "Bob",
            color: "#FF0000",
            badges: "founder/0",
            is_mod: false,
        };
        let mut out = Vec::new();
        let off = RoomModes::default();
        encode_roomstate("room", 7, &off, SERVER, true, &mut out);
        encode_userstate("room", &user, SERVER, true, &mut out);
        encode_globaluserstate(&user, 99, SERVER, true, &mut out);
        encode_roomstate("room", 7, &off, SERVER, false, &mut out);
        assert_eq!(
            text(&out),
            "@emote-only=0;followers-only=-1;r9k=0;room-id=7;slow=0;subs-only=0 \
             :tmi.twitch.tv ROOMSTATE #room\r\n\
             @badge-info=;badges=founder/0;color=#FF0000;display-name=Bob;emote-sets=0;mod=0;\
             subscriber=1;user-type= :tmi.twitch.tv USERSTATE #room\r\n\
             @badge-info=;badges=founder/0;color=#FF0000;display-name=Bob;emote-sets=0;\
             user-id=99;user-type= :tmi.twitch.tv GLOBALUSERSTATE\r\n\
             :tmi.twitch.tv ROOMSTATE #room\r\n"
        );
    }

    #[test]
    fn formats_numbers() {
        for value in [0, 7, 10, 1_234_567_890, u64::MAX] {
            let mut digits = [0u8; 20];
            assert_eq!(format_u64(value, &mut digits), value.to_string());
        }
    }
}

/// Our lines as an existing Twitch client library reads them: each must parse into the typed
/// message the library expects from Twitch, with the fields it exposes to applications.
#[cfg(test)]
mod client_compatibility {
    use super::*;
    use twitch_irc::message::{IRCMessage, ServerMessage};

    fn parse_one(bytes: &[u8]) -> ServerMessage {
        let line = std::str::from_utf8(bytes).expect("UTF-8");
        let line = line.strip_suffix("\r\n").expect("one terminated line");
        assert!(!line.contains("\r\n"), "expected one line: {line:?}");
        let irc = IRCMessage::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        ServerMessage::try_from(irc).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn user() -> UserState<'static> {
        UserState {
            login: "ronni",
            display_name: "",
            color: "#0D4200",
            badges: "moderator/1,subscriber/12",
            is_mod: true,
        }
    }

    #[test]
    fn privmsg() {
        let line = ChatLine {
            id: "b34ccfc7-4977-403a-8a94-33c6bac34fb8",
            room: "ronni",
            room_id: 1337,
            user_id: 42,
            login: "ronni",
            display_name: "Ronni",
            color: "#0D4200",
            badges: "moderator/1,subscriber/12",
            is_mod: true,
            text: "\x01ACTION skibidi; twiGG rizz twiGG\x01",
            original: "hello; world",
            client_nonce: Some("nonce 1"),
            sent_unix_ms: 1_507_246_572_675,
            historical: true,
            emotes: "15:9-13,20-24",
            reply: Some(&ReplyTags {
                parent_msg_id: "p-1".into(),
                parent_user_id: 7,
                parent_login: "bob".into(),
                parent_display_name: "Bob".into(),
                parent_body: "first; words".into(),
                thread_msg_id: "p-0".into(),
                thread_login: "al".into(),
            }),
        };
        let mut out = Vec::new();
        encode_privmsg(&line, SERVER_NAME_DEFAULT, true, &mut out);
        let ServerMessage::Privmsg(message) = parse_one(&out) else {
            panic!("not a PRIVMSG: {out:?}");
        };
        assert_eq!(message.channel_login, "ronni");
        assert_eq!(message.channel_id, "1337");
        assert!(message.is_action);
        assert_eq!(message.message_text, "skibidi; twiGG rizz twiGG");
        let emotes: Vec<(String, std::ops::Range<usize>, String)> = message
            .emotes
            .iter()
            .map(|e| (e.id.clone(), e.char_range.clone(), e.code.clone()))
            .collect();
        assert_eq!(
            emotes,
            [
                ("15".into(), 9..14, "twiGG".into()),
                ("15".into(), 20..25, "twiGG".into())
            ]
        );
        let parent = message.reply_parent.expect("reply parent");
        assert_eq!(parent.message_id, "p-1");
        assert_eq!(parent.reply_parent_user.login, "bob");
        assert_eq!(parent.message_text, "first; words");
        assert_eq!(
            message.source.tags.0.get("rm-received-ts").cloned(),
            Some("1507246572675".to_owned())
        );
        assert_eq!(message.sender.id, "42");
        assert_eq!(message.sender.login, "ronni");
        assert_eq!(message.sender.name, "Ronni");
        assert_eq!(message.message_id, line.id);
        assert_eq!(
            message.server_timestamp.timestamp_millis(),
            1_507_246_572_675
        );
        assert_eq!(message.badges.len(), 2);
        assert!(message.name_color.is_some());
        assert_eq!(
            message.source.tags.0.get("twitchy/original"),
            Some(&"hello; world".to_owned())
        );
    }

    #[test]
    fn state_lines() {
        let mut out = Vec::new();
        encode_userstate("ronni", &user(), SERVER_NAME_DEFAULT, true, &mut out);
        let ServerMessage::UserState(userstate) = parse_one(&out) else {
            panic!("not a USERSTATE");
        };
        assert_eq!(userstate.channel_login, "ronni");
        assert_eq!(
            userstate.user_name, "ronni",
            "empty display names fall back to the login"
        );

        out.clear();
        encode_ack(
            "ronni",
            &user(),
            "m-1",
            Some("n"),
            SERVER_NAME_DEFAULT,
            true,
            &mut out,
        );
        let ServerMessage::UserState(ack) = parse_one(&out) else {
            panic!("not a USERSTATE");
        };
        assert_eq!(ack.source.tags.0.get("id"), Some(&"m-1".to_owned()));

        out.clear();
        encode_globaluserstate(&user(), 42, SERVER_NAME_DEFAULT, true, &mut out);
        let ServerMessage::GlobalUserState(global) = parse_one(&out) else {
            panic!("not a GLOBALUSERSTATE");
        };
        assert_eq!(global.user_id, "42");

        out.clear();
        let modes = RoomModes {
            slow_secs: 30,
            emote_only: true,
            r9k: false,
        };
        encode_roomstate("ronni", 1337, &modes, SERVER_NAME_DEFAULT, true, &mut out);
        let ServerMessage::RoomState(roomstate) = parse_one(&out) else {
            panic!("not a ROOMSTATE");
        };
        assert_eq!(roomstate.channel_login, "ronni");
        assert_eq!(roomstate.channel_id, "1337");
        assert_eq!(roomstate.emote_only, Some(true));
        assert_eq!(roomstate.r9k, Some(false));
        assert_eq!(
            roomstate.slow_mode,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(roomstate.subscribers_only, Some(false));
    }

    #[test]
    fn names_list_others_on_lines_under_the_limit() {
        let others: Vec<String> = (0..200).map(|i| format!("user_{i:03}")).collect();
        let mut out = Vec::new();
        encode_names("bob", "room", &others, SERVER_NAME_DEFAULT, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert!(lines.len() > 3, "{text}");
        let mut listed = Vec::new();
        for line in &lines[..lines.len() - 1] {
            assert!(line.len() <= NAMES_LINE_BYTES_MAX + 40, "{line}");
            assert!(
                line.starts_with(":bob.tmi.twitch.tv 353 bob = #room :"),
                "{line}"
            );
            listed.extend(line.rsplit_once(" :").unwrap().1.split(' '));
        }
        assert_eq!(listed[0], "bob");
        assert_eq!(listed.len(), 201);
        assert!(
            lines
                .last()
                .unwrap()
                .contains(" 366 bob #room :End of /NAMES list")
        );
    }

    #[test]
    fn moderation_lines_parse_as_twitch_clients_read_them() {
        use twitch_irc::message::ClearChatAction;
        let mut out = Vec::new();
        let before = RoomModes::default();
        let after = RoomModes {
            slow_secs: 10,
            ..before
        };
        encode_roomstate_change(
            "ronni",
            7,
            &before,
            &after,
            SERVER_NAME_DEFAULT,
            true,
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "@room-id=7;slow=10 :tmi.twitch.tv ROOMSTATE #ronni\r\n"
        );
        let ServerMessage::RoomState(change) = parse_one(&out) else {
            panic!("not a ROOMSTATE");
        };
        assert_eq!(change.slow_mode, Some(std::time::Duration::from_secs(10)));
        assert_eq!(change.emote_only, None, "unchanged modes are left out");

        let timeout = ClearTarget::User {
            login: "bob",
            user_id: 5,
            ban_duration_secs: Some(600),
        };
        for (target, want) in [
            (
                timeout,
                ClearChatAction::UserTimedOut {
                    user_login: "bob".into(),
                    user_id: "5".into(),
                    timeout_length: std::time::Duration::from_secs(600),
                },
            ),
            (
                ClearTarget::User {
                    login: "bob",
                    user_id: 5,
                    ban_duration_secs: None,
                },
                ClearChatAction::UserBanned {
                    user_login: "bob".into(),
                    user_id: "5".into(),
                },
            ),
            (ClearTarget::All, ClearChatAction::ChatCleared),
        ] {
            out.clear();
            encode_clearchat(
                "ronni",
                7,
                target,
                1_700_000_000_000,
                SERVER_NAME_DEFAULT,
                true,
                &mut out,
            );
            let ServerMessage::ClearChat(clear) = parse_one(&out) else {
                panic!("not a CLEARCHAT: {}", String::from_utf8_lossy(&out));
            };
            assert_eq!(clear.action, want);
            assert_eq!(clear.channel_id, "7");
        }

        out.clear();
        encode_clearmsg(
            "ronni",
            7,
            "bob",
            "abc-1",
            "arr; a text: with spaces",
            1_700_000_000_000,
            SERVER_NAME_DEFAULT,
            true,
            &mut out,
        );
        let ServerMessage::ClearMsg(clear) = parse_one(&out) else {
            panic!("not a CLEARMSG");
        };
        assert_eq!(clear.sender_login, "bob");
        assert_eq!(clear.message_id, "abc-1");
        assert_eq!(clear.message_text, "arr; a text: with spaces");

        out.clear();
        let held = HeldLine {
            held_id: 9,
            login: "bob",
            display_name: "Bob",
            user_id: 5,
            reason: "caps",
            text: "LOUD",
        };
        encode_automod_held("ronni", 7, &held, 1, SERVER_NAME_DEFAULT, true, &mut out);
        encode_automod_resolved("ronni", 7, 9, false, 2, SERVER_NAME_DEFAULT, true, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "@display-name=Bob;held-id=9;login=bob;msg-id=automod-held;reason=caps;room-id=7;tmi-sent-ts=1;\
             user-id=5 :tmi.twitch.tv USERNOTICE #ronni :LOUD\r\n\
             @held-id=9;msg-id=automod-resolved;room-id=7;status=denied;tmi-sent-ts=2 \
             :tmi.twitch.tv USERNOTICE #ronni\r\n"
        );
    }

    #[test]
    fn control_lines() {
        let mut out = Vec::new();
        encode_ratelimit_notice("ronni", SERVER_NAME_DEFAULT, true, &mut out);
        let ServerMessage::Notice(notice) = parse_one(&out) else {
            panic!("not a NOTICE");
        };
        assert_eq!(notice.channel_login.as_deref(), Some("ronni"));
        assert_eq!(notice.message_id.as_deref(), Some(msg_id::RATELIMIT));

        out.clear();
        encode_authentication_failed(SERVER_NAME_DEFAULT, &mut out);
        let ServerMessage::Notice(notice) = parse_one(&out) else {
            panic!("not a NOTICE");
        };
        assert_eq!(notice.channel_login, None);
        assert_eq!(notice.message_text, "Login authentication failed");

        out.clear();
        encode_join("ronni", "room", SERVER_NAME_DEFAULT, &mut out);
        let ServerMessage::Join(join) = parse_one(&out) else {
            panic!("not a JOIN");
        };
        assert_eq!(
            (join.channel_login.as_str(), join.user_login.as_str()),
            ("room", "ronni")
        );

        out.clear();
        encode_part("ronni", "room", SERVER_NAME_DEFAULT, &mut out);
        assert!(matches!(parse_one(&out), ServerMessage::Part(_)));

        type Encoder = fn(&mut Vec<u8>);
        type Check = fn(&ServerMessage) -> bool;
        let fixed: [(Encoder, Check); 4] = [
            (
                |out| encode_ping(SERVER_NAME_DEFAULT, out),
                |m| matches!(m, ServerMessage::Ping(_)),
            ),
            (
                |out| encode_pong(SERVER_NAME_DEFAULT, None, out),
                |m| matches!(m, ServerMessage::Pong(_)),
            ),
            (
                |out| encode_pong(SERVER_NAME_DEFAULT, Some("tmi.twitch.tv"), out),
                |m| matches!(m, ServerMessage::Pong(_)),
            ),
            (
                |out| encode_reconnect(SERVER_NAME_DEFAULT, out),
                |m| matches!(m, ServerMessage::Reconnect(_)),
            ),
        ];
        for (encode, is_expected) in fixed {
            let mut out = Vec::new();
            encode(&mut out);
            assert!(
                is_expected(&parse_one(&out)),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}
