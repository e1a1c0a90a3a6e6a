//! The per-connection state machine of the chat protocol.
//!
//! A [`Session`] takes one line at a time plus the current time in milliseconds and pushes
//! [`Action`]s: bytes to write back, and requests for the engine (authenticate, join, part,
//! send). The engine answers requests by calling [`Session::authenticated`],
//! [`Session::joined`] and friends, which push further actions. The session never touches a
//! socket or a clock, so every flow is driven deterministically by the unit tests below.
//!
//! Registration follows Twitch: `PASS` then `NICK` completes it, unless the client opened IRCv3
//! capability negotiation with `CAP LS`, in which case it completes on `CAP END`. Anonymous
//! `justinfan<digits>` nicks need no password. Lines that arrive while the engine checks a
//! token are held (at most [`PENDING_LINES_MAX`]) and replayed once it answers, because many
//! clients send `JOIN` right after `NICK` without waiting for the welcome.

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;

use super::commands::{self, ChatCommand, Role};
use super::irc::{Message, ParseError};
use super::line::{LINE_BYTES_MAX_DEFAULT, LineError};
use super::twitch::{
    self, CAPABILITIES, ClearTarget, HeldLine, RoomModes, SERVER_NAME_DEFAULT, UserState, msg_id,
};

/// Most lines held while the engine checks a token, and most PRIVMSGs held per connection for
/// rooms whose JOIN the engine has not confirmed yet.
pub const PENDING_LINES_MAX: usize = 32;

/// Longest `client-nonce` or `reply-parent-msg-id` passed on, in bytes; longer values are
/// treated as absent because the nonce is echoed to every viewer.
pub const CLIENT_TAG_BYTES_MAX: usize = 128;

/// Channel names listed in the NOTICE for one refusal reason of a JOIN line; more are counted.
pub const REFUSED_JOIN_NAMES_MAX: usize = 10;

/// Longest room (channel) name in bytes, Twitch's login length limit.
pub const ROOM_NAME_BYTES_MAX: usize = 25;

/// Protocol limits and naming for every session on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Name used in server prefixes (`:tmi.twitch.tv 001 ...`).
    pub server_name: String,
    /// Longest chat message in characters (Unicode scalar values), Twitch's 500 by default.
    pub message_chars_max: usize,
    /// JOINs (counting each channel of a comma list) allowed per `join_window_ms`.
    pub joins_per_window_max: u32,
    /// Length of the sliding JOIN rate window.
    pub join_window_ms: u64,
    /// Channels one connection may be in (joined or joining) at once.
    pub rooms_joined_max: usize,
    /// Longest accepted line in bytes, terminator excluded; also the limit the transport
    /// should give its `LineBuffer`.
    pub line_bytes_max: usize,
    /// The rooms that exist, when the server's list is fixed: a JOIN for any other is refused
    /// here, in the one NOTICE for its JOIN line. `None`: every valid name goes to the engine,
    /// which answers with `joined` or `join_failed`.
    pub known_rooms: Option<HashSet<String>>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            server_name: SERVER_NAME_DEFAULT.to_owned(),
            message_chars_max: 500,
            joins_per_window_max: 20,
            join_window_ms: 10_000,
            rooms_joined_max: 100,
            line_bytes_max: LINE_BYTES_MAX_DEFAULT,
            known_rooms: None,
        }
    }
}

/// Who a registered (non-anonymous) connection is, as the engine's token check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub login: String,
    pub display_name: String,
    pub user_id: u64,
    pub color: String,
    pub badges: String,
    pub is_mod: bool,
}

impl Identity {
    /// The values USERSTATE and the send acknowledgement carry.
    pub fn user_state(&self) -> UserState<'_> {
        UserState {
            login: &self.login,
            display_name: &self.display_name,
            color: &self.color,
            badges: &self.badges,
            is_mod: self.is_mod,
        }
    }
}

/// What the engine knows about a room when confirming a JOIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomState {
    pub room_id: u64,
    /// This connection's user's role in the room (USERSTATE's badges and `mod`).
    pub role: Role,
    pub modes: RoomModes,
    /// The room's logged-in users for NAMES (sent with the membership capability); empty when the room is too
    /// big to list, as on Twitch.
    pub members: Vec<String>,
}

/// NOTICE text when the token could not be checked because the store is unavailable (the token may be fine).
/// The web client matches "try again" in it to keep its saved token.
pub const LOGIN_UNAVAILABLE_TEXT: &str = "Login unavailable, try again";
/// The `msg-id` of that NOTICE for clients that asked for tags.
pub const LOGIN_UNAVAILABLE_MSG_ID: &str = "login_unavailable";

/// What the session asks of its driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bytes to write to this client: one or more complete lines.
    Reply(Vec<u8>),
    /// Check `token` for `login`; answer with `authenticated` or `authentication_failed`.
    Authenticate { login: String, token: String },
    /// Join `room` (lowercase, no `#`); answer with `joined` or `join_failed`.
    Join { room: String },
    /// Leave `room`, which was joined or still joining.
    Part { room: String },
    /// Send a chat message to a room this connection has joined (the engine confirmed it).
    Privmsg {
        room: String,
        text: String,
        client_nonce: Option<String>,
        reply_parent_msg_id: Option<String>,
        /// `/me` (or CTCP `\x01ACTION …\x01`): `text` is the inner text, delivered as an ACTION.
        action: bool,
    },
    /// Run a chat command (`/timeout`, `/color`, …) typed in a room this connection has joined.
    Command { room: String, command: ChatCommand },
    /// Relay IRCv3 client tags to the room: a typing indicator, or a reaction to a message.
    TagMsg {
        room: String,
        typing: Option<Typing>,
        react: Option<Reaction>,
    },
    /// A private message to one user (`WHISPER` or `/w` in any channel).
    Whisper { to: String, text: String },
    /// Close the connection after writing the replies before it.
    Close,
}

/// IRCv3 `+typing`: the sender is typing, paused, or done (cleared the input or sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typing {
    Active,
    Paused,
    Done,
}

impl Typing {
    pub fn as_str(self) -> &'static str {
        match self {
            Typing::Active => "active",
            Typing::Paused => "paused",
            Typing::Done => "done",
        }
    }
}

/// IRCv3 `+draft/react` with `+draft/reply`: an emoji reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub emoji: String,
    pub msg_id: String,
}

/// Longest reaction in bytes (an emoji with modifiers, or an emote code).
pub const REACTION_BYTES_MAX: usize = 32;
/// Client-tag messages (typing, reactions) a connection may send per [`TAGMSG_WINDOW_MS`]; more are dropped.
pub const TAGMSGS_PER_WINDOW_MAX: usize = 10;
pub const TAGMSG_WINDOW_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    Unregistered,
    Authenticating,
    Anonymous,
    Registered,
    Closed,
}

/// A capability granted beyond Twitch's three: the client's own PRIVMSGs come back to it.
pub const ECHO_MESSAGE_CAP: &str = "echo-message";
/// A capability granted beyond Twitch's three: no replay of the last messages on JOIN (bots that would otherwise
/// answer old commands after every reconnect). Clients catch up through the HTTP API instead if they want to.
pub const NO_HISTORY_CAP: &str = "twitchy.tv/no-history";

/// What a PRIVMSG's text is, after Twitch's chat-command conventions.
#[derive(Debug, PartialEq, Eq)]
enum ChatText<'a> {
    /// Text to send. `". text"` and `"/ text"` are Twitch's way to send text that could look like a command
    /// (client libraries such as twitch-irc prefix every message with `". "`): the prefix is removed.
    Plain(&'a str),
    /// `/word` or `.word`: a chat command, none of which this server runs.
    Command(&'a str),
}

fn chat_command(text: &str) -> ChatText<'_> {
    match text.as_bytes() {
        [b'.' | b'/', b' ', ..] => ChatText::Plain(&text[2..]),
        [b'.' | b'/', c, ..] if c.is_ascii_alphabetic() => {
            ChatText::Command(text.split(' ').next().unwrap_or(text))
        }
        _ => ChatText::Plain(text),
    }
}

/// Whether `name` is a valid room (channel) name: 1 to [`ROOM_NAME_BYTES_MAX`] bytes of
/// lowercase ASCII letters, digits and `_`, which is Twitch's rule for logins.
pub fn is_valid_room_name(name: &str) -> bool {
    is_valid_login(name)
}

fn is_valid_login(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ROOM_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_anonymous_login(login: &str) -> bool {
    login
        .strip_prefix("justinfan")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// `#Room` → `room`: drops one leading `#` and lowercases.
fn normalize_room(raw: &str) -> String {
    raw.trim()
        .strip_prefix('#')
        .unwrap_or(raw.trim())
        .to_ascii_lowercase()
}

/// Returns the reply buffer at the end of `out`, starting a new one if the last action is not
/// a reply, so consecutive replies coalesce into one write while keeping their order relative
/// to engine requests.
fn reply(out: &mut Vec<Action>) -> &mut Vec<u8> {
    if !matches!(out.last(), Some(Action::Reply(_))) {
        out.push(Action::Reply(Vec::new()));
    }
    match out.last_mut() {
        Some(Action::Reply(bytes)) => bytes,
        _ => unreachable!("a Reply action was just ensured at the end"),
    }
}

/// Why a channel of a JOIN line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinRefusal {
    NoSuchChannel,
    RateLimited,
    TooManyChannels,
}

impl JoinRefusal {
    fn msg_id(self) -> &'static str {
        match self {
            JoinRefusal::NoSuchChannel => msg_id::CHANNEL_SUSPENDED,
            JoinRefusal::RateLimited => msg_id::JOIN_RATELIMIT,
            JoinRefusal::TooManyChannels => msg_id::TOO_MANY_CHANNELS,
        }
    }

    fn text(self, config: &SessionConfig) -> String {
        match self {
            JoinRefusal::NoSuchChannel => {
                "This channel does not exist or has been suspended.".to_owned()
            }
            JoinRefusal::RateLimited => {
                "Your JOIN was not processed because you are joining channels too quickly."
                    .to_owned()
            }
            JoinRefusal::TooManyChannels => format!(
                "Your JOIN was not processed because a connection may be in at most {} channels.",
                config.rooms_joined_max
            ),
        }
    }
}

/// A channel refused on a JOIN line; `room` is `None` for a name no room can have.
#[derive(Debug)]
struct RefusedJoin {
    room: Option<String>,
    reason: JoinRefusal,
}

/// A PRIVMSG held until the engine confirms the JOIN of its room.
#[derive(Debug)]
struct HeldPrivmsg {
    room: String,
    action: Action,
}

/// The protocol state of one client connection.
#[derive(Debug)]
pub struct Session {
    config: Rc<SessionConfig>,
    registration: Registration,
    caps_tags: bool,
    caps_commands: bool,
    caps_membership: bool,
    /// IRCv3 `echo-message`: the client wants its own PRIVMSGs delivered back. Not advertised in `CAP LS` (whose
    /// reply is Twitch's exact list) but granted on request, e.g. to the web client.
    caps_echo: bool,
    /// [`NO_HISTORY_CAP`]: no last-messages replay on JOIN.
    caps_no_history: bool,
    /// True between `CAP LS` and `CAP END` before registration.
    cap_negotiating: bool,
    pass: Option<String>,
    nick: Option<String>,
    identity: Option<Identity>,
    rooms_joined: Vec<String>,
    rooms_joining: Vec<String>,
    /// Times of the JOINs inside the current window, oldest first; at most
    /// `joins_per_window_max` entries.
    join_times_ms: VecDeque<u64>,
    tagmsg_times_ms: VecDeque<u64>,
    /// Lines received while authenticating, with their arrival time.
    lines_pending: VecDeque<(String, u64)>,
    privmsgs_held: VecDeque<HeldPrivmsg>,
}

impl Session {
    pub fn new(config: Rc<SessionConfig>) -> Session {
        Session {
            config,
            registration: Registration::Unregistered,
            caps_tags: false,
            caps_commands: false,
            caps_membership: false,
            caps_echo: false,
            caps_no_history: false,
            cap_negotiating: false,
            pass: None,
            nick: None,
            identity: None,
            rooms_joined: Vec::new(),
            rooms_joining: Vec::new(),
            join_times_ms: VecDeque::new(),
            tagmsg_times_ms: VecDeque::new(),
            lines_pending: VecDeque::new(),
            privmsgs_held: VecDeque::new(),
        }
    }

    /// The registered identity; None for anonymous or not (yet) registered connections.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The nick the client gave (lowercased); for registered users, their login.
    pub fn nick(&self) -> Option<&str> {
        self.nick.as_deref()
    }

    /// True once the welcome was sent (anonymous or authenticated).
    pub fn is_registered(&self) -> bool {
        matches!(
            self.registration,
            Registration::Anonymous | Registration::Registered
        )
    }

    /// True for a registered `justinfan` connection.
    pub fn is_anonymous(&self) -> bool {
        self.registration == Registration::Anonymous
    }

    /// True after the session asked for the connection to close; later lines are ignored.
    pub fn is_closed(&self) -> bool {
        self.registration == Registration::Closed
    }

    pub fn wants_tags(&self) -> bool {
        self.caps_tags
    }

    pub fn wants_commands(&self) -> bool {
        self.caps_commands
    }

    pub fn wants_membership(&self) -> bool {
        self.caps_membership
    }

    /// Whether the client asked for its own messages back (IRCv3 `echo-message`).
    pub fn wants_echo(&self) -> bool {
        self.caps_echo
    }

    /// Whether JOIN should replay the room's last messages (unless the client asked for [`NO_HISTORY_CAP`]).
    pub fn wants_history(&self) -> bool {
        !self.caps_no_history
    }

    /// Rooms whose JOIN the engine confirmed and that were not parted since.
    pub fn joined_rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms_joined.iter().map(String::as_str)
    }

    /// Rooms whose JOIN was requested from the engine but not yet answered. On disconnect the
    /// engine must leave these as well as [`Session::joined_rooms`].
    pub fn joining_rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms_joining.iter().map(String::as_str)
    }

    /// The values USERSTATE and acks carry for this user with `role` in a room.
    fn room_user_state(identity: &Identity, role: Role) -> UserState<'_> {
        UserState {
            login: &identity.login,
            display_name: &identity.display_name,
            color: &identity.color,
            badges: if role == Role::Viewer {
                &identity.badges
            } else {
                role.badge()
            },
            is_mod: role.mod_tag() || identity.is_mod,
        }
    }

    /// Appends the acknowledgement of a durable message (USERSTATE with `id` and the
    /// `client-nonce`) when this client can receive it: it must be registered and have the
    /// commands capability, as USERSTATE is a Twitch command. Returns whether a line was written.
    pub fn encode_ack(
        &self,
        room: &str,
        role: Role,
        message_id: &str,
        client_nonce: Option<&str>,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(identity) = &self.identity else {
            return false;
        };
        if !self.caps_commands {
            return false;
        }
        twitch::encode_ack(
            room,
            &Self::room_user_state(identity, role),
            message_id,
            client_nonce,
            &self.config.server_name,
            self.caps_tags,
            out,
        );
        true
    }

    /// Appends a NOTICE for this client (with `msg-id` when it asked for tags).
    pub fn encode_notice(&self, room: Option<&str>, id: &str, text: &str, out: &mut Vec<u8>) {
        twitch::encode_notice(
            room,
            Some(id),
            text,
            &self.config.server_name,
            self.caps_tags,
            out,
        );
    }

    /// Appends `RECONNECT`: the server is going away or dropping this client; it should connect again.
    pub fn encode_reconnect(&self, out: &mut Vec<u8>) {
        twitch::encode_reconnect(&self.config.server_name, out);
    }

    /// Appends the keep-alive `PING` sent to a silent client.
    pub fn encode_ping(&self, out: &mut Vec<u8>) {
        twitch::encode_ping(&self.config.server_name, out);
    }

    /// Appends a chat line replayed from history (or delivered live) in this client's variant.
    pub fn encode_privmsg(&self, line: &twitch::ChatLine<'_>, out: &mut Vec<u8>) {
        twitch::encode_privmsg(line, &self.config.server_name, self.caps_tags, out);
    }

    /// Appends a fresh `USERSTATE #room` after the user's role in the room changed (with the commands capability).
    pub fn encode_role_change(&self, room: &str, role: Role, out: &mut Vec<u8>) {
        let Some(identity) = &self.identity else {
            return;
        };
        if self.caps_commands {
            twitch::encode_userstate(
                room,
                &Self::room_user_state(identity, role),
                &self.config.server_name,
                self.caps_tags,
                out,
            );
        }
    }

    /// Appends other users' JOINs and PARTs of a room (with the membership capability); the client's own are
    /// left out, as it had its own echo.
    pub fn encode_membership(
        &self,
        room: &str,
        joined: &[String],
        parted: &[String],
        out: &mut Vec<u8>,
    ) {
        if !self.caps_membership {
            return;
        }
        let own = self.identity.as_ref().map_or("", |i| i.login.as_str());
        let server = &self.config.server_name;
        for login in joined.iter().filter(|l| *l != own) {
            twitch::encode_join(login, room, server, out);
        }
        for login in parted.iter().filter(|l| *l != own) {
            twitch::encode_part(login, room, server, out);
        }
    }

    /// Appends a whisper (to this client's user, or its own echoed back as the acknowledgement).
    pub fn encode_whisper(&self, line: &twitch::WhisperLine<'_>, out: &mut Vec<u8>) {
        twitch::encode_whisper(line, &self.config.server_name, self.caps_tags, out);
    }

    /// Appends a relayed client-tag message (typing, reaction) for a client that asked for tags.
    pub fn encode_tagmsg(&self, line: &twitch::TagLine<'_>, out: &mut Vec<u8>) {
        if self.caps_tags {
            twitch::encode_tagmsg(line, &self.config.server_name, out);
        }
    }

    /// Appends the `ROOMSTATE` of a mode change (with the commands capability).
    pub fn encode_modes_change(
        &self,
        room: &str,
        room_id: u64,
        before: &RoomModes,
        after: &RoomModes,
        out: &mut Vec<u8>,
    ) {
        if self.caps_commands {
            twitch::encode_roomstate_change(
                room,
                room_id,
                before,
                after,
                &self.config.server_name,
                self.caps_tags,
                out,
            );
        }
    }

    /// Appends a `CLEARCHAT` (timeout, ban or `/clear`) with the commands capability.
    pub fn encode_clearchat(
        &self,
        room: &str,
        room_id: u64,
        target: ClearTarget<'_>,
        sent_unix_ms: u64,
        out: &mut Vec<u8>,
    ) {
        if self.caps_commands {
            twitch::encode_clearchat(
                room,
                room_id,
                target,
                sent_unix_ms,
                &self.config.server_name,
                self.caps_tags,
                out,
            );
        }
    }

    /// Appends a `CLEARMSG` (one message deleted) with the commands capability.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_clearmsg(
        &self,
        room: &str,
        room_id: u64,
        login: &str,
        message_id: &str,
        text: &str,
        sent_unix_ms: u64,
        out: &mut Vec<u8>,
    ) {
        if self.caps_commands {
            twitch::encode_clearmsg(
                room,
                room_id,
                login,
                message_id,
                text,
                sent_unix_ms,
                &self.config.server_name,
                self.caps_tags,
                out,
            );
        }
    }

    /// Appends AutoMod's `USERNOTICE` for a held message (`resolved` None) or its resolution, with the commands
    /// capability. Only moderators are sent these.
    pub fn encode_automod(
        &self,
        room: &str,
        room_id: u64,
        held: &HeldLine<'_>,
        resolved: Option<bool>,
        sent_unix_ms: u64,
        out: &mut Vec<u8>,
    ) {
        if !self.caps_commands {
            return;
        }
        let server = &self.config.server_name;
        match resolved {
            None => twitch::encode_automod_held(
                room,
                room_id,
                held,
                sent_unix_ms,
                server,
                self.caps_tags,
                out,
            ),
            Some(allowed) => twitch::encode_automod_resolved(
                room,
                room_id,
                held.held_id,
                allowed,
                sent_unix_ms,
                server,
                self.caps_tags,
                out,
            ),
        }
    }

    /// Replaces the user's colour (after `/color`), for lines encoded from now on.
    pub fn set_color(&mut self, color: &str) {
        if let Some(identity) = &mut self.identity {
            identity.color = color.to_owned();
        }
    }

    pub fn server_name(&self) -> &str {
        &self.config.server_name
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The nick to address numerics to: the nick once known, `*` before.
    fn target(&self) -> &str {
        self.nick.as_deref().unwrap_or("*")
    }

    fn notice(&self, room: Option<&str>, id: &str, text: &str, out: &mut Vec<Action>) {
        self.encode_notice(room, id, text, reply(out));
    }

    fn numeric(&self, code: &str, middle: &[&str], text: &str, out: &mut Vec<Action>) {
        twitch::encode_numeric(
            code,
            self.target(),
            middle,
            text,
            &self.config.server_name,
            reply(out),
        );
    }

    /// Tells the client that a line from the transport could not be read. The connection
    /// stays open: one bad line should not cost a client its session.
    pub fn handle_line_error(&mut self, error: LineError, out: &mut Vec<Action>) {
        if self.is_closed() {
            return;
        }
        let text = match error {
            LineError::TooLong => "Your line was dropped because it is too long.",
            LineError::InvalidUtf8 => "Your line was dropped because it is not valid UTF-8.",
        };
        self.notice(None, msg_id::INVALID_LINE, text, out);
    }

    /// Handles one line from the client (terminator optional) received at `now_ms`.
    pub fn handle_line(&mut self, line: &str, now_ms: u64, out: &mut Vec<Action>) {
        if self.is_closed() {
            return;
        }
        if line.len() > self.config.line_bytes_max {
            self.handle_line_error(LineError::TooLong, out);
            return;
        }
        let message = match Message::parse(line) {
            Ok(message) => message,
            Err(ParseError::Empty) => return,
            Err(error) => {
                let text = format!("Your line was dropped: {error}.");
                self.notice(None, msg_id::INVALID_LINE, &text, out);
                return;
            }
        };
        let command = message.command;
        let is = |name: &str| command.eq_ignore_ascii_case(name);

        if self.registration == Registration::Authenticating
            && !(is("PING") || is("PONG") || is("CAP") || is("QUIT"))
        {
            if self.lines_pending.len() >= PENDING_LINES_MAX {
                self.notice(
                    None,
                    msg_id::INVALID_LINE,
                    "Your line was dropped because login is still in progress.",
                    out,
                );
            } else {
                self.lines_pending.push_back((line.to_owned(), now_ms));
            }
            return;
        }

        if is("PRIVMSG") {
            self.handle_privmsg(&message, out);
        } else if is("TAGMSG") {
            self.handle_tagmsg(&message, now_ms, out);
        } else if is("WHISPER") {
            if self.require_registration(out) {
                match (message.param(0), message.param(1)) {
                    (Some(to), Some(text)) => self.whisper(to, text, out),
                    _ => self.numeric("461", &["WHISPER"], "Not enough parameters", out),
                }
            }
        } else if is("PING") {
            let argument = message.param(0);
            twitch::encode_pong(&self.config.server_name, argument, reply(out));
        } else if is("PONG") {
            // The client answering our keep-alive PING; its arrival is all that matters, and the
            // transport already saw it.
        } else if is("JOIN") {
            self.handle_join(&message, now_ms, out);
        } else if is("PART") {
            self.handle_part(&message, out);
        } else if is("CAP") {
            self.handle_cap(&message, out);
        } else if is("PASS") {
            if self.registration == Registration::Unregistered
                && let Some(token) = message.param(0)
            {
                let token = token.strip_prefix("oauth:").unwrap_or(token);
                self.pass = Some(token.to_owned());
            }
        } else if is("NICK") {
            self.handle_nick(&message, out);
        } else if is("USER") {
            // Twitch ignores USER; the login comes from NICK and the token.
        } else if is("QUIT") {
            self.registration = Registration::Closed;
            out.push(Action::Close);
        } else {
            self.numeric("421", &[command], "Unknown command", out);
        }
    }

    fn handle_cap(&mut self, message: &Message<'_>, out: &mut Vec<Action>) {
        let subcommand = message.param(0).unwrap_or("");
        let server = &self.config.server_name;
        if subcommand.eq_ignore_ascii_case("LS") {
            if self.registration == Registration::Unregistered {
                self.cap_negotiating = true;
            }
            twitch::encode_cap("LS", &CAPABILITIES.join(" "), server, reply(out));
        } else if subcommand.eq_ignore_ascii_case("REQ") {
            let requested = message.param(1).unwrap_or("");
            let known = |cap: &str| {
                let name = cap.strip_prefix('-').unwrap_or(cap);
                CAPABILITIES.contains(&name) || name == ECHO_MESSAGE_CAP || name == NO_HISTORY_CAP
            };
            let mut caps = requested.split_ascii_whitespace().peekable();
            // IRCv3 makes a request atomic: one unknown capability rejects all of it.
            if caps.peek().is_none() || !requested.split_ascii_whitespace().all(known) {
                twitch::encode_cap("NAK", requested, server, reply(out));
                return;
            }
            for cap in caps {
                let (enable, name) = match cap.strip_prefix('-') {
                    Some(name) => (false, name),
                    None => (true, cap),
                };
                match name {
                    "twitch.tv/tags" => self.caps_tags = enable,
                    "twitch.tv/commands" => self.caps_commands = enable,
                    ECHO_MESSAGE_CAP => self.caps_echo = enable,
                    NO_HISTORY_CAP => self.caps_no_history = enable,
                    _ => self.caps_membership = enable,
                }
            }
            twitch::encode_cap("ACK", requested, &self.config.server_name, reply(out));
        } else if subcommand.eq_ignore_ascii_case("END") {
            if self.cap_negotiating {
                self.cap_negotiating = false;
                if self.registration == Registration::Unregistered && self.nick.is_some() {
                    self.try_register(out);
                }
            }
        } else if subcommand.eq_ignore_ascii_case("LIST") {
            let enabled: Vec<&str> = [
                self.caps_tags,
                self.caps_commands,
                self.caps_membership,
                self.caps_echo,
                self.caps_no_history,
            ]
            .into_iter()
            .zip(
                CAPABILITIES
                    .into_iter()
                    .chain([ECHO_MESSAGE_CAP, NO_HISTORY_CAP]),
            )
            .filter_map(|(on, cap)| on.then_some(cap))
            .collect();
            twitch::encode_cap("LIST", &enabled.join(" "), server, reply(out));
        } else {
            self.numeric("410", &[subcommand], "Invalid CAP command", out);
        }
    }

    fn handle_nick(&mut self, message: &Message<'_>, out: &mut Vec<Action>) {
        if self.registration != Registration::Unregistered {
            // Twitch does not support nick changes; the login is fixed by the token.
            return;
        }
        let Some(nick) = message.param(0).filter(|nick| !nick.is_empty()) else {
            self.numeric("431", &[], "No nickname given", out);
            return;
        };
        self.nick = Some(nick.to_ascii_lowercase());
        if !self.cap_negotiating {
            self.try_register(out);
        }
    }

    fn try_register(&mut self, out: &mut Vec<Action>) {
        let Some(nick) = self.nick.clone() else {
            return;
        };
        if !is_valid_login(&nick) {
            self.fail_authentication(out);
            return;
        }
        if is_anonymous_login(&nick) {
            self.registration = Registration::Anonymous;
            self.pass = None;
            twitch::encode_welcome(&nick, &self.config.server_name, reply(out));
            return;
        }
        match self.pass.take() {
            Some(token) => {
                self.registration = Registration::Authenticating;
                out.push(Action::Authenticate { login: nick, token });
            }
            None => self.fail_authentication(out),
        }
    }

    fn fail_authentication(&mut self, out: &mut Vec<Action>) {
        twitch::encode_authentication_failed(&self.config.server_name, reply(out));
        out.push(Action::Close);
        self.registration = Registration::Closed;
        self.lines_pending.clear();
        self.privmsgs_held.clear();
    }

    /// The engine accepted the token: sends the welcome (and GLOBALUSERSTATE with the commands
    /// capability), then handles the lines that arrived meanwhile.
    pub fn authenticated(&mut self, identity: Identity, out: &mut Vec<Action>) {
        if self.registration != Registration::Authenticating {
            return;
        }
        self.registration = Registration::Registered;
        let server = &self.config.server_name;
        let buffer = reply(out);
        twitch::encode_welcome(&identity.login, server, buffer);
        if self.caps_commands {
            twitch::encode_globaluserstate(
                &identity.user_state(),
                identity.user_id,
                server,
                self.caps_tags,
                buffer,
            );
        }
        self.nick = Some(identity.login.clone());
        self.identity = Some(identity);
        let pending = std::mem::take(&mut self.lines_pending);
        for (line, received_ms) in pending {
            self.handle_line(&line, received_ms, out);
        }
    }

    /// The engine rejected the token: Twitch's failure NOTICE, then close.
    pub fn authentication_failed(&mut self, out: &mut Vec<Action>) {
        if self.is_closed() {
            return;
        }
        self.fail_authentication(out);
    }

    /// The engine could not check the token (its store is unavailable): a NOTICE that says to try again, which
    /// clients must not take for a bad token, then close so the client reconnects.
    pub fn authentication_unavailable(&mut self, out: &mut Vec<Action>) {
        if self.is_closed() {
            return;
        }
        twitch::encode_notice(
            None,
            Some(LOGIN_UNAVAILABLE_MSG_ID),
            LOGIN_UNAVAILABLE_TEXT,
            &self.config.server_name,
            self.caps_tags,
            reply(out),
        );
        out.push(Action::Close);
        self.registration = Registration::Closed;
        self.lines_pending.clear();
        self.privmsgs_held.clear();
    }

    fn require_registration(&self, out: &mut Vec<Action>) -> bool {
        if self.is_registered() {
            return true;
        }
        self.numeric("451", &[], "You have not registered", out);
        false
    }

    fn handle_join(&mut self, message: &Message<'_>, now_ms: u64, out: &mut Vec<Action>) {
        if !self.require_registration(out) {
            return;
        }
        let Some(list) = message.param(0) else {
            self.numeric("461", &["JOIN"], "Not enough parameters", out);
            return;
        };
        // Every channel refused on this line goes into one NOTICE, however many there are.
        let mut refused: Vec<RefusedJoin> = Vec::new();
        for raw in list.split(',').filter(|raw| !raw.trim().is_empty()) {
            let room = normalize_room(raw);
            if !is_valid_room_name(&room) {
                // No room can have this name; a lone refusal goes to `*` because the name may not
                // even be a valid parameter.
                refused.push(RefusedJoin {
                    room: None,
                    reason: JoinRefusal::NoSuchChannel,
                });
                continue;
            }
            if self
                .config
                .known_rooms
                .as_ref()
                .is_some_and(|known| !known.contains(&room))
            {
                refused.push(RefusedJoin {
                    room: Some(room),
                    reason: JoinRefusal::NoSuchChannel,
                });
                continue;
            }
            if self.rooms_joined.contains(&room) || self.rooms_joining.contains(&room) {
                continue;
            }
            let window_start_ms = now_ms.saturating_sub(self.config.join_window_ms);
            while self
                .join_times_ms
                .front()
                .is_some_and(|&time_ms| time_ms <= window_start_ms)
            {
                self.join_times_ms.pop_front();
            }
            if self.join_times_ms.len() >= self.config.joins_per_window_max as usize {
                refused.push(RefusedJoin {
                    room: Some(room),
                    reason: JoinRefusal::RateLimited,
                });
                continue;
            }
            if self.rooms_joined.len() + self.rooms_joining.len() >= self.config.rooms_joined_max {
                refused.push(RefusedJoin {
                    room: Some(room),
                    reason: JoinRefusal::TooManyChannels,
                });
                continue;
            }
            self.join_times_ms.push_back(now_ms);
            self.rooms_joining.push(room.clone());
            out.push(Action::Join { room });
        }
        self.notice_refused_joins(&refused, out);
    }

    /// The one NOTICE for the channels refused on a JOIN line. A single refusal gets the
    /// channel's own NOTICE (as Twitch sends it); several get one NOTICE to `*` that lists them
    /// by reason (at most [`REFUSED_JOIN_NAMES_MAX`] names per reason, the rest counted), with
    /// the `msg-id` of the first.
    fn notice_refused_joins(&self, refused: &[RefusedJoin], out: &mut Vec<Action>) {
        let [first, rest @ ..] = refused else {
            return;
        };
        if rest.is_empty() {
            let text = first.reason.text(&self.config);
            self.notice(first.room.as_deref(), first.reason.msg_id(), &text, out);
            return;
        }
        let mut text = format!(
            "Your JOIN was not processed for {} channels.",
            refused.len()
        );
        let mut reasons: Vec<JoinRefusal> = Vec::new();
        for refusal in refused {
            if !reasons.contains(&refusal.reason) {
                reasons.push(refusal.reason);
            }
        }
        for reason in reasons {
            let of_reason = || refused.iter().filter(move |r| r.reason == reason);
            let named: Vec<&str> = of_reason().filter_map(|r| r.room.as_deref()).collect();
            let unnamed = of_reason().count() - named.len();
            text.push(' ');
            text.push_str(&reason.text(&self.config));
            let mut parts: Vec<String> = named
                .iter()
                .take(REFUSED_JOIN_NAMES_MAX)
                .map(|room| format!("#{room}"))
                .collect();
            if named.len() > REFUSED_JOIN_NAMES_MAX {
                parts.push(format!("{} more", named.len() - REFUSED_JOIN_NAMES_MAX));
            }
            if unnamed > 0 {
                parts.push(format!("{unnamed} invalid names"));
            }
            text.push_str(&format!(" ({})", parts.join(", ")));
        }
        self.notice(None, first.reason.msg_id(), &text, out);
    }

    /// The engine confirmed a JOIN: echoes it with the NAMES reply, then USERSTATE and
    /// ROOMSTATE with the commands capability, then releases PRIVMSGs held for the room.
    /// Ignored when the room is not being joined (the client parted meanwhile). Returns whether the
    /// JOIN was confirmed to the client now.
    pub fn joined(&mut self, room: &str, state: &RoomState, out: &mut Vec<Action>) -> bool {
        let Some(index) = self
            .rooms_joining
            .iter()
            .position(|joining| joining == room)
        else {
            return false;
        };
        let room = self.rooms_joining.swap_remove(index);
        let nick = self.nick.as_deref().unwrap_or("*");
        let server = &self.config.server_name;
        let buffer = reply(out);
        twitch::encode_join(nick, &room, server, buffer);
        let others: &[String] = if self.caps_membership {
            &state.members
        } else {
            &[]
        };
        twitch::encode_names(nick, &room, others, server, buffer);
        if self.caps_commands {
            if let Some(identity) = &self.identity {
                twitch::encode_userstate(
                    &room,
                    &Self::room_user_state(identity, state.role),
                    server,
                    self.caps_tags,
                    buffer,
                );
            }
            twitch::encode_roomstate(
                &room,
                state.room_id,
                &state.modes,
                server,
                self.caps_tags,
                buffer,
            );
        }
        let held = std::mem::take(&mut self.privmsgs_held);
        for privmsg in held {
            if privmsg.room == room {
                out.push(privmsg.action);
            } else {
                self.privmsgs_held.push_back(privmsg);
            }
        }
        self.rooms_joined.push(room);
        true
    }

    /// The engine refused a JOIN (no such room): NOTICE `msg_channel_suspended`, and PRIVMSGs
    /// held for the room are dropped.
    pub fn join_failed(&mut self, room: &str, out: &mut Vec<Action>) {
        let Some(index) = self
            .rooms_joining
            .iter()
            .position(|joining| joining == room)
        else {
            return;
        };
        self.rooms_joining.swap_remove(index);
        self.privmsgs_held.retain(|privmsg| privmsg.room != room);
        twitch::encode_channel_suspended_notice(
            room,
            &self.config.server_name,
            self.caps_tags,
            reply(out),
        );
    }

    /// `TAGMSG #room` with `+typing` or `+draft/react` and `+draft/reply`: relayed to the room, never stored except
    /// a reaction's count. Only logged-in users in a room that exists; past the per-connection rate they are dropped
    /// (a typing indicator is not worth a NOTICE).
    fn handle_tagmsg(&mut self, message: &Message<'_>, now_ms: u64, out: &mut Vec<Action>) {
        if !self.require_registration(out) || self.registration == Registration::Anonymous {
            return;
        }
        let Some(target) = message.param(0) else {
            self.numeric("461", &["TAGMSG"], "Not enough parameters", out);
            return;
        };
        let room = normalize_room(target);
        let exists = is_valid_room_name(&room)
            && (self.rooms_joined.contains(&room)
                || self
                    .config
                    .known_rooms
                    .as_ref()
                    .is_some_and(|known| known.contains(&room)));
        if !exists {
            return;
        }
        let typing = match message.tag("+typing").as_deref() {
            Some("active") => Some(Typing::Active),
            Some("paused") => Some(Typing::Paused),
            Some("done") => Some(Typing::Done),
            _ => None,
        };
        let react = match (message.tag("+draft/react"), message.tag("+draft/reply")) {
            (Some(emoji), Some(msg_id))
                if !emoji.trim().is_empty()
                    && emoji.len() <= REACTION_BYTES_MAX
                    && !msg_id.is_empty()
                    && msg_id.len() <= CLIENT_TAG_BYTES_MAX =>
            {
                Some(Reaction {
                    emoji: emoji.trim().to_owned(),
                    msg_id: msg_id.into_owned(),
                })
            }
            _ => None,
        };
        if typing.is_none() && react.is_none() {
            return;
        }
        while self
            .tagmsg_times_ms
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= TAGMSG_WINDOW_MS)
        {
            self.tagmsg_times_ms.pop_front();
        }
        if self.tagmsg_times_ms.len() >= TAGMSGS_PER_WINDOW_MAX {
            // A typing indicator is not worth a NOTICE; a reaction the user chose is.
            if react.is_some() {
                self.notice(
                    Some(&room),
                    msg_id::RATELIMIT,
                    "Your reaction was not sent because you are reacting too quickly.",
                    out,
                );
            }
            return;
        }
        self.tagmsg_times_ms.push_back(now_ms);
        out.push(Action::TagMsg {
            room,
            typing,
            react,
        });
    }

    /// A whisper: logged-in users only, to a valid login other than their own, 1 to `message_chars_max`
    /// characters.
    fn whisper(&mut self, to: &str, text: &str, out: &mut Vec<Action>) {
        if self.registration == Registration::Anonymous {
            self.notice(
                None,
                msg_id::LOGIN_REQUIRED,
                "You must be logged in to send whispers.",
                out,
            );
            return;
        }
        let Some(to) = commands::parse_user(to) else {
            self.notice(
                None,
                "whisper_invalid_login",
                "That is not a valid username.",
                out,
            );
            return;
        };
        if self.identity.as_ref().is_some_and(|i| i.login == to) {
            self.notice(
                None,
                "whisper_invalid_self",
                "You cannot whisper to yourself.",
                out,
            );
            return;
        }
        let text = text.trim();
        if text.is_empty() {
            self.numeric("412", &[], "No text to send", out);
            return;
        }
        if text.chars().count() > self.config.message_chars_max {
            let text = format!(
                "Your whisper was not sent because it is longer than {} characters.",
                self.config.message_chars_max
            );
            self.notice(None, msg_id::TOO_LONG, &text, out);
            return;
        }
        out.push(Action::Whisper {
            to,
            text: text.to_owned(),
        });
    }

    fn handle_part(&mut self, message: &Message<'_>, out: &mut Vec<Action>) {
        if !self.require_registration(out) {
            return;
        }
        let Some(list) = message.param(0) else {
            self.numeric("461", &["PART"], "Not enough parameters", out);
            return;
        };
        for raw in list.split(',') {
            let room = normalize_room(raw);
            if let Some(index) = self.rooms_joined.iter().position(|joined| *joined == room) {
                self.rooms_joined.swap_remove(index);
                let nick = self.nick.as_deref().unwrap_or("*");
                twitch::encode_part(nick, &room, &self.config.server_name, reply(out));
            } else if let Some(index) = self.rooms_joining.iter().position(|r| *r == room) {
                self.rooms_joining.swap_remove(index);
                self.privmsgs_held.retain(|privmsg| privmsg.room != room);
            } else {
                // Twitch ignores a PART for a channel the client is not in.
                continue;
            }
            out.push(Action::Part { room });
        }
    }

    /// PRIVMSG rules: only registered, non-anonymous users send; the text is 1 to
    /// `message_chars_max` characters; the target is one room that exists.
    ///
    /// Twitch accepts PRIVMSG to channels a client has not joined, and client libraries rely on
    /// it (twitch-irc sends from whichever pooled connection is least busy). So does this server
    /// when the room list is fixed ([`SessionConfig::known_rooms`]): the engine then only ever
    /// sees messages for rooms that exist. Without a fixed list the JOIN is required. A PRIVMSG
    /// for a room whose JOIN is still being confirmed is held until the answer, so it cannot
    /// overtake the JOIN.
    fn handle_privmsg(&mut self, message: &Message<'_>, out: &mut Vec<Action>) {
        if !self.require_registration(out) {
            return;
        }
        let (Some(target), Some(text)) = (message.param(0), message.param(1)) else {
            if message.params.is_empty() {
                self.numeric("411", &[], "No recipient given (PRIVMSG)", out);
            } else {
                self.numeric("412", &[], "No text to send", out);
            }
            return;
        };
        let room = normalize_room(target);
        let room_known = is_valid_room_name(&room);
        let notice_room = room_known.then_some(room.as_str());
        if self.registration == Registration::Anonymous {
            self.notice(
                notice_room,
                msg_id::LOGIN_REQUIRED,
                "You must be logged in to send messages.",
                out,
            );
            return;
        }
        // `/w user text` (or `.w`) is a whisper, whichever channel it was sent to, joined or not, as on Twitch.
        if let Some(rest) = text
            .strip_prefix("/w ")
            .or_else(|| text.strip_prefix(".w "))
            .or_else(|| text.strip_prefix("/whisper "))
        {
            match rest.trim_start().split_once(' ') {
                Some((to, body)) => self.whisper(to, body, out),
                None => self.notice(
                    notice_room,
                    "usage_whisper",
                    "Usage: \"/w <login> <message>\"",
                    out,
                ),
            }
            return;
        }
        // `/me text` and CTCP ACTION are the same thing on Twitch: the inner text is what is sent.
        let (text, action) = match text
            .strip_prefix("\x01ACTION ")
            .and_then(|inner| inner.strip_suffix('\x01'))
            .or_else(|| text.strip_prefix("/me "))
            .or_else(|| text.strip_prefix(".me "))
        {
            Some(inner) => (inner.trim_start(), true),
            None => (text, false),
        };
        let (text, command) = match if action {
            ChatText::Plain(text)
        } else {
            chat_command(text)
        } {
            ChatText::Plain(text) => (text, None),
            ChatText::Command(name) => match commands::parse(text) {
                Some(Ok(command)) => (text, Some(command)),
                Some(Err(usage)) => {
                    self.notice(notice_room, usage.msg_id, usage.text, out);
                    return;
                }
                None => {
                    let text = format!("Unrecognized command: {name}");
                    self.notice(notice_room, msg_id::UNRECOGNIZED_CMD, &text, out);
                    return;
                }
            },
        };
        if text.is_empty() {
            self.numeric("412", &[], "No text to send", out);
            return;
        }
        if text.chars().count() > self.config.message_chars_max {
            let text = format!(
                "Your message was not sent because it is longer than {} characters.",
                self.config.message_chars_max
            );
            self.notice(notice_room, msg_id::TOO_LONG, &text, out);
            return;
        }
        let joined = room_known && self.rooms_joined.contains(&room);
        let joining = room_known && !joined && self.rooms_joining.contains(&room);
        let exists = room_known
            && self
                .config
                .known_rooms
                .as_ref()
                .is_some_and(|known| known.contains(&room));
        if !joined && !joining && !exists {
            self.notice(
                notice_room,
                msg_id::NOT_JOINED,
                "Your message was not sent because you have not joined this channel.",
                out,
            );
            return;
        }
        let client_tag = |key: &str| {
            message
                .tag(key)
                .filter(|value| !value.is_empty() && value.len() <= CLIENT_TAG_BYTES_MAX)
                .map(|value| value.into_owned())
        };
        let action = match command {
            Some(command) => Action::Command {
                room: room.clone(),
                command,
            },
            None => Action::Privmsg {
                room: room.clone(),
                text: text.to_owned(),
                client_nonce: client_tag("client-nonce"),
                reply_parent_msg_id: client_tag("reply-parent-msg-id"),
                action,
            },
        };
        if joined || !joining {
            out.push(action);
        } else if self.privmsgs_held.len() < PENDING_LINES_MAX {
            self.privmsgs_held.push_back(HeldPrivmsg { room, action });
        } else {
            self.notice(
                notice_room,
                msg_id::RATELIMIT,
                "Your message was not sent because you are sending messages too quickly.",
                out,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session plus the actions it produced, with helpers that render replies as text.
    struct Harness {
        session: Session,
        now_ms: u64,
    }

    impl Harness {
        fn new() -> Self {
            Self::with_config(SessionConfig::default())
        }

        fn with_config(config: SessionConfig) -> Self {
            Harness {
                session: Session::new(Rc::new(config)),
                now_ms: 1_000,
            }
        }

        fn send(&mut self, line: &str) -> Vec<Action> {
            let mut out = Vec::new();
            self.session.handle_line(line, self.now_ms, &mut out);
            out
        }

        /// Sends a line and returns its replies as text, asserting there was nothing else.
        fn send_text(&mut self, line: &str) -> String {
            replies_only(self.send(line))
        }

        fn anonymous(caps: &str) -> Self {
            let mut harness = Harness::new();
            if !caps.is_empty() {
                harness.send(&format!("CAP REQ :{caps}"));
            }
            harness.send("NICK justinfan4711");
            assert!(harness.session.is_registered());
            harness
        }

        fn registered(caps: &str) -> Self {
            let mut harness = Harness::new();
            if !caps.is_empty() {
                harness.send(&format!("CAP REQ :{caps}"));
            }
            harness.send("PASS oauth:secret");
            let actions = harness.send("NICK Ronni");
            assert_eq!(
                actions,
                [Action::Authenticate {
                    login: "ronni".to_owned(),
                    token: "secret".to_owned()
                }]
            );
            let mut out = Vec::new();
            harness.session.authenticated(identity(), &mut out);
            assert!(harness.session.is_registered());
            harness
        }

        /// JOINs `room` and confirms it, returning the replies.
        fn join(&mut self, room: &str) -> String {
            let actions = self.send(&format!("JOIN #{room}"));
            assert_eq!(
                actions,
                [Action::Join {
                    room: room.to_owned()
                }]
            );
            replies_only(self.answer_join(room, 77))
        }

        /// The core's answer to a JOIN of `room`: it joined, as a non-moderator; returns what the session wrote.
        fn answer_join(&mut self, room: &str, room_id: u64) -> Vec<Action> {
            let mut out = Vec::new();
            self.session.joined(
                room,
                &RoomState {
                    room_id,
                    role: Role::Viewer,
                    modes: RoomModes::default(),
                    members: Vec::new(),
                },
                &mut out,
            );
            out
        }
    }

    fn identity() -> Identity {
        Identity {
            login: "ronni".to_owned(),
            display_name: "Ronni".to_owned(),
            user_id: 42,
            color: "#FF0000".to_owned(),
            badges: "moderator/1".to_owned(),
            is_mod: true,
        }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).expect("replies are UTF-8")
    }

    fn replies_only(actions: Vec<Action>) -> String {
        actions
            .into_iter()
            .map(|action| match action {
                Action::Reply(bytes) => text(&bytes),
                other => panic!("expected only replies, got {other:?}"),
            })
            .collect()
    }

    const WELCOME_RONNI: &str = ":tmi.twitch.tv 001 ronni :Welcome, GLHF!\r\n\
        :tmi.twitch.tv 002 ronni :Your host is tmi.twitch.tv\r\n\
        :tmi.twitch.tv 003 ronni :This server is rather new\r\n\
        :tmi.twitch.tv 004 ronni :-\r\n\
        :tmi.twitch.tv 375 ronni :-\r\n\
        :tmi.twitch.tv 372 ronni :You are in a maze of twisty passages, all alike.\r\n\
        :tmi.twitch.tv 376 ronni :>\r\n";

    #[test]
    fn cap_ls_req_end_with_pass_and_nick() {
        let mut harness = Harness::new();
        assert_eq!(
            harness.send_text("CAP LS 302"),
            ":tmi.twitch.tv CAP * LS :twitch.tv/tags twitch.tv/commands twitch.tv/membership\r\n"
        );
        assert_eq!(
            harness.send_text("CAP REQ :twitch.tv/commands twitch.tv/tags"),
            ":tmi.twitch.tv CAP * ACK :twitch.tv/commands twitch.tv/tags\r\n"
        );
        assert!(harness.send("PASS oauth:tok").is_empty());
        // Negotiation is open, so NICK does not complete registration yet.
        assert!(harness.send("NICK ronni").is_empty());
        assert!(harness.send("USER ronni 0 * :Ronni").is_empty());
        assert_eq!(
            harness.send("CAP END"),
            [Action::Authenticate {
                login: "ronni".to_owned(),
                token: "tok".to_owned()
            }]
        );
        let mut out = Vec::new();
        harness.session.authenticated(identity(), &mut out);
        let expected = format!(
            "{WELCOME_RONNI}@badge-info=;badges=moderator/1;color=#FF0000;display-name=Ronni;\
             emote-sets=0;user-id=42;user-type=mod :tmi.twitch.tv GLOBALUSERSTATE\r\n"
        );
        assert_eq!(replies_only(out), expected);
        assert!(harness.session.is_registered());
        assert!(harness.session.wants_tags() && harness.session.wants_commands());
        assert!(!harness.session.wants_membership());
        assert_eq!(harness.session.identity(), Some(&identity()));
        assert_eq!(harness.session.nick(), Some("ronni"));
        assert_eq!(
            harness.send_text("CAP LIST"),
            ":tmi.twitch.tv CAP * LIST :twitch.tv/tags twitch.tv/commands\r\n"
        );
    }

    #[test]
    fn twitch_style_registration_without_cap_end() {
        let mut harness = Harness::new();
        harness.send("CAP REQ :twitch.tv/membership");
        harness.send("PASS tok-without-prefix");
        assert_eq!(
            harness.send("NICK ronni"),
            [Action::Authenticate {
                login: "ronni".to_owned(),
                token: "tok-without-prefix".to_owned()
            }]
        );
        let mut out = Vec::new();
        harness.session.authenticated(identity(), &mut out);
        // Without the commands capability there is no GLOBALUSERSTATE.
        assert_eq!(replies_only(out), WELCOME_RONNI);
        assert!(harness.session.wants_membership());
    }

    #[test]
    fn cap_req_with_unknown_capability_is_refused_whole() {
        let mut harness = Harness::new();
        assert_eq!(
            harness.send_text("CAP REQ :twitch.tv/tags sasl"),
            ":tmi.twitch.tv CAP * NAK :twitch.tv/tags sasl\r\n"
        );
        assert!(!harness.session.wants_tags());
        assert_eq!(
            harness.send_text("CAP REQ :"),
            ":tmi.twitch.tv CAP * NAK :\r\n"
        );
        harness.send("CAP REQ :twitch.tv/tags twitch.tv/commands");
        assert_eq!(
            harness.send_text("CAP REQ :-twitch.tv/tags"),
            ":tmi.twitch.tv CAP * ACK :-twitch.tv/tags\r\n"
        );
        assert!(!harness.session.wants_tags());
        assert!(harness.session.wants_commands());
        assert_eq!(
            harness.send_text("CAP FOO"),
            ":tmi.twitch.tv 410 * FOO :Invalid CAP command\r\n"
        );
    }

    #[test]
    fn anonymous_login_welcomes_directly_and_ignores_pass() {
        let mut harness = Harness::new();
        harness.send("CAP REQ :twitch.tv/tags twitch.tv/commands");
        harness.send("PASS SCHMOOPIIE");
        let welcome = harness.send_text("NICK justinfan12345");
        assert!(welcome.starts_with(":tmi.twitch.tv 001 justinfan12345 :Welcome, GLHF!\r\n"));
        assert!(welcome.ends_with(":tmi.twitch.tv 376 justinfan12345 :>\r\n"));
        assert!(!welcome.contains("GLOBALUSERSTATE"));
        assert!(harness.session.is_registered());
        assert!(harness.session.is_anonymous());
        assert_eq!(harness.session.identity(), None);
        assert_eq!(harness.session.nick(), Some("justinfan12345"));
    }

    #[test]
    fn anonymous_login_waits_for_cap_end_after_cap_ls() {
        let mut harness = Harness::new();
        harness.send("CAP LS");
        assert!(harness.send("NICK justinfan1").is_empty());
        assert!(!harness.session.is_registered());
        assert!(harness.send_text("CAP END").contains(" 001 justinfan1 "));
        assert!(harness.session.is_registered());
    }

    #[test]
    fn authentication_failures() {
        let fail = ":tmi.twitch.tv NOTICE * :Login authentication failed\r\n";
        let cases: [&[&str]; 5] = [
            &["NICK ronni"],
            &["PASS oauth:x", "NICK bad-nick!"],
            &["NICK justinfan"],
            &["NICK justinfanABC"],
            &["PASS oauth:x", "NICK this_login_is_way_too_long_for_twitch"],
        ];
        for lines in cases {
            let mut harness = Harness::new();
            let mut actions = Vec::new();
            for line in lines {
                actions = harness.send(line);
            }
            assert_eq!(
                actions,
                [Action::Reply(fail.as_bytes().to_vec()), Action::Close],
                "{lines:?}"
            );
            assert!(harness.session.is_closed());
            assert!(
                harness.send("PING").is_empty(),
                "closed sessions stay silent"
            );
        }

        let mut harness = Harness::new();
        harness.send("PASS oauth:wrong");
        harness.send("NICK ronni");
        let mut out = Vec::new();
        harness.session.authentication_failed(&mut out);
        assert_eq!(
            out,
            [Action::Reply(fail.as_bytes().to_vec()), Action::Close]
        );
        // A late answer from the engine changes nothing.
        let mut out = Vec::new();
        harness.session.authenticated(identity(), &mut out);
        assert!(out.is_empty());
        assert!(!harness.session.is_registered());
    }

    #[test]
    fn lines_sent_during_authentication_are_replayed_after_it() {
        let mut harness = Harness::new();
        harness.send("PASS oauth:tok");
        harness.send("NICK ronni");
        assert!(harness.send("JOIN #room").is_empty());
        assert!(harness.send("PRIVMSG #room :early").is_empty());
        // PING is answered right away even while authenticating.
        assert_eq!(harness.send_text("PING"), "PONG :tmi.twitch.tv\r\n");
        let mut out = Vec::new();
        harness.session.authenticated(identity(), &mut out);
        assert!(matches!(&out[0], Action::Reply(bytes) if text(bytes) == WELCOME_RONNI));
        assert_eq!(
            out[1..],
            [Action::Join {
                room: "room".to_owned()
            }]
        );
        // The PRIVMSG waits for the JOIN confirmation.
        let out = harness.answer_join("room", 5);
        assert!(matches!(&out[0], Action::Reply(bytes) if text(bytes).contains(" JOIN #room\r\n")));
        assert_eq!(
            out[1..],
            [Action::Privmsg {
                room: "room".to_owned(),
                text: "early".to_owned(),
                client_nonce: None,
                reply_parent_msg_id: None,
                action: false,
            }]
        );
    }

    #[test]
    fn too_many_lines_during_authentication_are_dropped_with_a_notice() {
        let mut harness = Harness::new();
        harness.send("PASS oauth:tok");
        harness.send("NICK ronni");
        for _ in 0..PENDING_LINES_MAX {
            assert!(harness.send("JOIN #room").is_empty());
        }
        assert!(
            harness
                .send_text("JOIN #room")
                .contains("NOTICE * :Your line was dropped")
        );
    }

    #[test]
    fn commands_before_registration_get_451() {
        let mut harness = Harness::new();
        for line in ["JOIN #a", "PART #a", "PRIVMSG #a :hi"] {
            assert_eq!(
                harness.send_text(line),
                ":tmi.twitch.tv 451 * :You have not registered\r\n",
                "{line}"
            );
        }
    }

    #[test]
    fn ping_pong() {
        let mut harness = Harness::new();
        let cases = [
            ("PING", "PONG :tmi.twitch.tv\r\n"),
            (
                "PING :tmi.twitch.tv",
                ":tmi.twitch.tv PONG tmi.twitch.tv :tmi.twitch.tv\r\n",
            ),
            ("ping 123", ":tmi.twitch.tv PONG tmi.twitch.tv :123\r\n"),
            (
                "PING :hello world",
                ":tmi.twitch.tv PONG tmi.twitch.tv :hello world\r\n",
            ),
            ("PONG :tmi.twitch.tv", ""),
        ];
        for (line, expected) in cases {
            assert_eq!(harness.send_text(line), expected, "{line}");
        }
    }

    #[test]
    fn server_name_is_configurable() {
        let mut harness = Harness::with_config(SessionConfig {
            server_name: "chat.example".to_owned(),
            ..SessionConfig::default()
        });
        assert_eq!(harness.session.server_name(), "chat.example");
        assert_eq!(harness.send_text("PING"), "PONG :chat.example\r\n");
        assert!(
            harness
                .send_text("NICK justinfan1")
                .starts_with(":chat.example 001 ")
        );
        let actions = harness.send("JOIN #r");
        assert_eq!(
            actions,
            [Action::Join {
                room: "r".to_owned()
            }]
        );
        let out = harness.answer_join("r", 1);
        assert!(
            replies_only(out)
                .starts_with(":justinfan1!justinfan1@justinfan1.chat.example JOIN #r\r\n")
        );
    }

    #[test]
    fn join_reply_with_tags_and_commands() {
        let mut harness = Harness::registered("twitch.tv/tags twitch.tv/commands");
        assert_eq!(
            harness.join("room"),
            ":ronni!ronni@ronni.tmi.twitch.tv JOIN #room\r\n\
             :ronni.tmi.twitch.tv 353 ronni = #room :ronni\r\n\
             :ronni.tmi.twitch.tv 366 ronni #room :End of /NAMES list\r\n\
             @badge-info=;badges=moderator/1;color=#FF0000;display-name=Ronni;emote-sets=0;mod=1;\
             subscriber=0;user-type=mod :tmi.twitch.tv USERSTATE #room\r\n\
             @emote-only=0;followers-only=-1;r9k=0;room-id=77;slow=0;subs-only=0 \
             :tmi.twitch.tv ROOMSTATE #room\r\n"
        );
        assert_eq!(harness.session.joined_rooms().collect::<Vec<_>>(), ["room"]);
    }

    #[test]
    fn join_reply_variants_by_capability() {
        let mut harness = Harness::registered("twitch.tv/commands");
        assert_eq!(
            harness.join("room"),
            ":ronni!ronni@ronni.tmi.twitch.tv JOIN #room\r\n\
             :ronni.tmi.twitch.tv 353 ronni = #room :ronni\r\n\
             :ronni.tmi.twitch.tv 366 ronni #room :End of /NAMES list\r\n\
             :tmi.twitch.tv USERSTATE #room\r\n\
             :tmi.twitch.tv ROOMSTATE #room\r\n"
        );
        let mut harness = Harness::registered("");
        assert_eq!(
            harness.join("room"),
            ":ronni!ronni@ronni.tmi.twitch.tv JOIN #room\r\n\
             :ronni.tmi.twitch.tv 353 ronni = #room :ronni\r\n\
             :ronni.tmi.twitch.tv 366 ronni #room :End of /NAMES list\r\n"
        );
        // Anonymous users have no USERSTATE, but do get ROOMSTATE.
        let mut harness = Harness::anonymous("twitch.tv/tags twitch.tv/commands");
        let reply = harness.join("room");
        assert!(!reply.contains("USERSTATE"));
        assert!(reply.ends_with(":tmi.twitch.tv ROOMSTATE #room\r\n"));
    }

    #[test]
    fn join_lists_are_split_normalised_and_deduplicated() {
        let mut harness = Harness::registered("");
        assert_eq!(
            harness.send("JOIN #A,#b,,c,#a"),
            [
                Action::Join {
                    room: "a".to_owned()
                },
                Action::Join {
                    room: "b".to_owned()
                },
                Action::Join {
                    room: "c".to_owned()
                },
            ]
        );
        assert!(harness.send("JOIN #a").is_empty(), "already joining");
        assert_eq!(
            harness.send_text("JOIN"),
            ":tmi.twitch.tv 461 ronni JOIN :Not enough parameters\r\n"
        );
    }

    #[test]
    fn unknown_or_invalid_room_gets_channel_suspended() {
        let mut harness = Harness::registered("twitch.tv/tags");
        harness.send("JOIN #nope");
        let mut out = Vec::new();
        harness.session.join_failed("nope", &mut out);
        assert_eq!(
            replies_only(out),
            "@msg-id=msg_channel_suspended :tmi.twitch.tv NOTICE #nope \
             :This channel does not exist or has been suspended.\r\n"
        );
        assert_eq!(harness.session.joined_rooms().count(), 0);
        assert_eq!(
            harness.send_text("JOIN #bad-name!"),
            "@msg-id=msg_channel_suspended :tmi.twitch.tv NOTICE * \
             :This channel does not exist or has been suspended.\r\n"
        );
        // A confirmation for a room that is not being joined is ignored.
        let mut out = harness.answer_join("other", 1);
        harness.session.join_failed("other", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_join_line_gets_at_most_one_notice_for_its_refused_channels() {
        let mut harness = Harness::with_config(SessionConfig {
            known_rooms: Some(["lobby".to_owned(), "tavern".to_owned()].into()),
            rooms_joined_max: 3,
            ..SessionConfig::default()
        });
        harness.send("CAP REQ :twitch.tv/tags");
        harness.send("NICK justinfan1");
        let unknown: Vec<String> = (0..30).map(|i| format!("#nope{i}")).collect();
        let actions = harness.send(&format!("JOIN {},#bad-name!,#lobby", unknown.join(",")));
        let notices: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply(bytes) => Some(text(bytes)),
                _ => None,
            })
            .collect();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!(notices[0].matches("NOTICE").count(), 1, "{notices:?}");
        assert!(
            notices[0].starts_with(
                "@msg-id=msg_channel_suspended :tmi.twitch.tv NOTICE * :Your JOIN was not processed for 31 channels. \
                 This channel does not exist or has been suspended. (#nope0, #nope1,"
            ),
            "{notices:?}"
        );
        assert!(
            notices[0].ends_with("#nope9, 20 more, 1 invalid names)\r\n"),
            "{notices:?}"
        );
        assert!(actions.contains(&Action::Join {
            room: "lobby".to_owned()
        }));
        // One unknown channel keeps Twitch's own NOTICE for that channel.
        assert_eq!(
            harness.send_text("JOIN #nope"),
            "@msg-id=msg_channel_suspended :tmi.twitch.tv NOTICE #nope \
             :This channel does not exist or has been suspended.\r\n"
        );
        let line = harness.send_text("JOIN #lobby,#x1,#x2,#x3");
        assert_eq!(line.matches("NOTICE").count(), 1, "{line}");
        assert!(line.contains("for 3 channels."), "{line}");
        assert!(line.ends_with("(#x1, #x2, #x3)\r\n"), "{line}");
    }

    #[test]
    fn join_rate_limit_uses_a_sliding_window() {
        let mut harness = Harness::with_config(SessionConfig {
            joins_per_window_max: 3,
            join_window_ms: 10_000,
            ..SessionConfig::default()
        });
        harness.send("CAP REQ :twitch.tv/tags");
        harness.send("NICK justinfan1");
        let actions = harness.send("JOIN #a,#b,#c,#d");
        assert_eq!(actions.len(), 4);
        assert_eq!(
            actions[..3]
                .iter()
                .filter(|a| matches!(a, Action::Join { .. }))
                .count(),
            3
        );
        assert!(matches!(&actions[3], Action::Reply(bytes)
            if text(bytes).starts_with("@msg-id=msg_join_ratelimit :tmi.twitch.tv NOTICE #d :")));
        harness.now_ms += 9_999;
        assert!(replies_only(harness.send("JOIN #d")).contains("msg_join_ratelimit"));
        harness.now_ms += 1;
        assert_eq!(
            harness.send("JOIN #d"),
            [Action::Join {
                room: "d".to_owned()
            }]
        );
    }

    #[test]
    fn joined_channels_are_capped() {
        let mut harness = Harness::with_config(SessionConfig {
            rooms_joined_max: 2,
            ..SessionConfig::default()
        });
        harness.send("NICK justinfan1");
        harness.send("JOIN #a");
        harness.answer_join("a", 1);
        harness.send("JOIN #b");
        assert_eq!(
            harness.send_text("JOIN #c"),
            ":tmi.twitch.tv NOTICE #c :Your JOIN was not processed because a connection may \
             be in at most 2 channels.\r\n"
        );
        // Parting frees a slot.
        harness.send("PART #a");
        assert_eq!(
            harness.send("JOIN #c"),
            [Action::Join {
                room: "c".to_owned()
            }]
        );
    }

    #[test]
    fn part_echoes_and_forgets_the_room() {
        let mut harness = Harness::registered("");
        harness.join("room");
        assert_eq!(
            harness.send("PART #Room"),
            [
                Action::Reply(b":ronni!ronni@ronni.tmi.twitch.tv PART #room\r\n".to_vec()),
                Action::Part {
                    room: "room".to_owned()
                }
            ]
        );
        assert_eq!(harness.session.joined_rooms().count(), 0);
        assert!(harness.send("PART #room").is_empty(), "not joined any more");
        // Parting while the JOIN is unconfirmed cancels it; the late confirmation is ignored.
        harness.send("JOIN #late");
        assert_eq!(
            harness.send("PART #late"),
            [Action::Part {
                room: "late".to_owned()
            }]
        );
        let out = harness.answer_join("late", 1);
        assert!(out.is_empty());
        assert_eq!(harness.session.joined_rooms().count(), 0);
    }

    #[test]
    fn privmsg_with_client_tags() {
        let mut harness = Harness::registered("twitch.tv/tags");
        harness.join("room");
        assert_eq!(
            harness
                .send("@client-nonce=abc\\s1;reply-parent-msg-id=p-1 PRIVMSG #room :hello  world"),
            [Action::Privmsg {
                room: "room".to_owned(),
                text: "hello  world".to_owned(),
                client_nonce: Some("abc 1".to_owned()),
                reply_parent_msg_id: Some("p-1".to_owned()),
                action: false,
            }]
        );
        let long_nonce = "n".repeat(CLIENT_TAG_BYTES_MAX + 1);
        assert_eq!(
            harness.send(&format!("@client-nonce={long_nonce} PRIVMSG #room :x")),
            [Action::Privmsg {
                room: "room".to_owned(),
                text: "x".to_owned(),
                client_nonce: None,
                reply_parent_msg_id: None,
                action: false,
            }]
        );
    }

    #[test]
    fn privmsg_length_is_counted_in_characters() {
        let mut harness = Harness::registered("twitch.tv/tags");
        harness.join("room");
        let at_limit = "é".repeat(500);
        assert!(matches!(
            &harness.send(&format!("PRIVMSG #room :{at_limit}"))[..],
            [Action::Privmsg { text, .. }] if *text == at_limit
        ));
        let over = "a".repeat(501);
        assert_eq!(
            harness.send_text(&format!("PRIVMSG #room :{over}")),
            "@msg-id=msg_too_long :tmi.twitch.tv NOTICE #room \
             :Your message was not sent because it is longer than 500 characters.\r\n"
        );
    }

    #[test]
    fn privmsg_refusals() {
        let mut anonymous = Harness::anonymous("twitch.tv/tags");
        anonymous.join("room");
        assert_eq!(
            anonymous.send_text("PRIVMSG #room :hi"),
            "@msg-id=msg_login_required :tmi.twitch.tv NOTICE #room \
             :You must be logged in to send messages.\r\n"
        );

        let mut harness = Harness::registered("twitch.tv/tags");
        harness.join("room");
        let cases = [
            (
                "PRIVMSG #elsewhere :hi",
                "@msg-id=msg_not_joined :tmi.twitch.tv NOTICE #elsewhere \
                 :Your message was not sent because you have not joined this channel.\r\n",
            ),
            (
                "PRIVMSG #a,#b :hi",
                "@msg-id=msg_not_joined :tmi.twitch.tv NOTICE * \
                 :Your message was not sent because you have not joined this channel.\r\n",
            ),
            (
                "PRIVMSG #room :",
                ":tmi.twitch.tv 412 ronni :No text to send\r\n",
            ),
            (
                "PRIVMSG #room",
                ":tmi.twitch.tv 412 ronni :No text to send\r\n",
            ),
            (
                "PRIVMSG",
                ":tmi.twitch.tv 411 ronni :No recipient given (PRIVMSG)\r\n",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(harness.send_text(line), expected, "{line}");
        }
    }

    #[test]
    fn privmsgs_held_for_a_failed_join_are_dropped() {
        let mut harness = Harness::registered("");
        harness.send("JOIN #ghost");
        assert!(harness.send("PRIVMSG #ghost :anyone?").is_empty());
        let mut out = Vec::new();
        harness.session.join_failed("ghost", &mut out);
        assert_eq!(
            replies_only(out),
            ":tmi.twitch.tv NOTICE #ghost :This channel does not exist or has been suspended.\r\n"
        );
        // A later successful JOIN does not resurrect the dropped message.
        harness.send("JOIN #ghost");
        let out = harness.answer_join("ghost", 1);
        assert_eq!(out.len(), 1, "only the JOIN reply: {out:?}");
    }

    #[test]
    fn malformed_and_unknown_lines() {
        let mut harness = Harness::registered("twitch.tv/tags");
        let cases = [
            ("", ""),
            ("   ", ""),
            (
                "WHO #room",
                ":tmi.twitch.tv 421 ronni WHO :Unknown command\r\n",
            ),
            (
                "MODE ronni +i",
                ":tmi.twitch.tv 421 ronni MODE :Unknown command\r\n",
            ),
            (
                ":only.a.prefix",
                "@msg-id=msg_invalid_line :tmi.twitch.tv NOTICE * :Your line was dropped: no command.\r\n",
            ),
            (
                "@bad key PRIVMSG #room :x",
                ":tmi.twitch.tv 421 ronni key :Unknown command\r\n",
            ),
            (
                "@k=v 12 #room :x",
                "@msg-id=msg_invalid_line :tmi.twitch.tv NOTICE * \
                 :Your line was dropped: invalid command.\r\n",
            ),
            (
                "@=x PRIVMSG #room :x",
                "@msg-id=msg_invalid_line :tmi.twitch.tv NOTICE * \
                 :Your line was dropped: malformed tags.\r\n",
            ),
            (
                "PRIVMSG #room :a\0b",
                "@msg-id=msg_invalid_line :tmi.twitch.tv NOTICE * \
                 :Your line was dropped: forbidden control character.\r\n",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(harness.send_text(line), expected, "{line:?}");
        }
        let long_line = format!("PRIVMSG #room :{}", "a".repeat(LINE_BYTES_MAX_DEFAULT));
        assert!(harness.send_text(&long_line).contains("too long"));
        let mut out = Vec::new();
        harness
            .session
            .handle_line_error(LineError::InvalidUtf8, &mut out);
        assert!(replies_only(out).contains("not valid UTF-8"));
        assert!(
            !harness.session.is_closed(),
            "bad lines do not end the session"
        );
    }

    #[test]
    fn quit_closes() {
        let mut harness = Harness::registered("");
        assert_eq!(harness.send("QUIT :bye"), [Action::Close]);
        assert!(harness.session.is_closed());
        assert!(harness.send("PING").is_empty());
    }

    #[test]
    fn nick_after_registration_is_ignored() {
        let mut harness = Harness::registered("");
        assert!(harness.send("NICK other").is_empty());
        assert_eq!(harness.session.nick(), Some("ronni"));
        assert!(harness.send("PASS oauth:again").is_empty());
    }

    #[test]
    fn joining_rooms_are_listed_until_answered() {
        let mut harness = Harness::registered("");
        harness.send("JOIN #a,#b");
        let mut joining: Vec<&str> = harness.session.joining_rooms().collect();
        joining.sort_unstable();
        assert_eq!(joining, ["a", "b"]);
        harness.answer_join("a", 1);
        assert_eq!(harness.session.joining_rooms().collect::<Vec<_>>(), ["b"]);
        assert_eq!(harness.session.joined_rooms().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn ack_follows_capabilities() {
        let mut out = Vec::new();
        let harness = Harness::registered("twitch.tv/tags twitch.tv/commands");
        assert!(
            harness
                .session
                .encode_ack("room", Role::Viewer, "m-1", Some("n-1"), &mut out)
        );
        assert_eq!(
            text(&out),
            "@badge-info=;badges=moderator/1;color=#FF0000;display-name=Ronni;emote-sets=0;mod=1;\
             subscriber=0;user-type=mod;client-nonce=n-1;id=m-1 :tmi.twitch.tv USERSTATE #room\r\n"
        );
        out.clear();
        let harness = Harness::registered("twitch.tv/tags");
        assert!(
            !harness
                .session
                .encode_ack("room", Role::Viewer, "m-1", None, &mut out)
        );
        let harness = Harness::anonymous("twitch.tv/tags twitch.tv/commands");
        assert!(
            !harness
                .session
                .encode_ack("room", Role::Viewer, "m-1", None, &mut out)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn room_names() {
        for name in [
            "a",
            "room_1",
            "justinfan123",
            &"x".repeat(ROOM_NAME_BYTES_MAX),
        ] {
            assert!(is_valid_room_name(name), "{name}");
        }
        for name in [
            "",
            "#a",
            "Room",
            "a-b",
            "a b",
            "é",
            &"x".repeat(ROOM_NAME_BYTES_MAX + 1),
        ] {
            assert!(!is_valid_room_name(name), "{name:?}");
        }
    }

    #[test]
    fn chat_commands_become_actions_or_usage_notices() {
        let mut harness = Harness::registered("twitch.tv/tags twitch.tv/commands");
        harness.join("lobby");
        assert_eq!(
            harness.send("PRIVMSG #lobby :/timeout @Bob 10m spam"),
            [Action::Command {
                room: "lobby".into(),
                command: ChatCommand::Timeout {
                    user: "bob".into(),
                    seconds: 600,
                    reason: "spam".into(),
                },
            }]
        );
        // `. /ban` is Twitch's escape for text that looks like a command: it is sent as text.
        assert!(matches!(
            harness.send("PRIVMSG #lobby :. /ban bob").as_slice(),
            [Action::Privmsg { text, .. }] if text == "/ban bob"
        ));
        let usage = harness.send_text("PRIVMSG #lobby :/timeout");
        assert!(usage.starts_with("@msg-id=usage_timeout "), "{usage}");
        let unknown = harness.send_text("PRIVMSG #lobby :/dance now");
        assert!(
            unknown.starts_with("@msg-id=unrecognized_cmd "),
            "{unknown}"
        );
        assert!(
            unknown.ends_with(":Unrecognized command: /dance\r\n"),
            "{unknown}"
        );
        // Commands, like messages, need the room joined.
        let not_joined = harness.send_text("PRIVMSG #elsewhere :/slow");
        assert!(
            not_joined.starts_with("@msg-id=msg_not_joined "),
            "{not_joined}"
        );
    }

    #[test]
    fn privmsg_to_an_existing_room_needs_no_join_as_on_twitch() {
        let mut harness = Harness::with_config(SessionConfig {
            known_rooms: Some(["lobby".to_owned()].into()),
            ..SessionConfig::default()
        });
        harness.send("CAP REQ :twitch.tv/tags twitch.tv/commands");
        harness.send("PASS oauth:secret");
        harness.send("NICK ronni");
        let mut out = Vec::new();
        harness.session.authenticated(identity(), &mut out);
        assert!(matches!(
            harness.send("PRIVMSG #lobby :hi without joining").as_slice(),
            [Action::Privmsg { room, .. }] if room == "lobby"
        ));
        assert!(matches!(
            harness.send("PRIVMSG #lobby :/mods").as_slice(),
            [Action::Command {
                command: ChatCommand::Mods,
                ..
            }]
        ));
        let refused = harness.send_text("PRIVMSG #nowhere :hi");
        assert!(refused.starts_with("@msg-id=msg_not_joined "), "{refused}");
    }

    #[test]
    fn me_and_ctcp_action_send_the_inner_text_as_an_action() {
        let mut harness = Harness::registered("twitch.tv/tags twitch.tv/commands");
        harness.join("lobby");
        for line in [
            "PRIVMSG #lobby :\x01ACTION waves hello\x01",
            "PRIVMSG #lobby :/me waves hello",
            "PRIVMSG #lobby :.me waves hello",
        ] {
            assert!(
                matches!(
                    harness.send(line).as_slice(),
                    [Action::Privmsg { text, action: true, .. }] if text == "waves hello"
                ),
                "{line}"
            );
        }
        // An unterminated CTCP is plain text; `/me` alone has nothing to send.
        assert!(matches!(
            harness.send("PRIVMSG #lobby :\x01ACTION oops").as_slice(),
            [Action::Privmsg { action: false, .. }]
        ));
        let empty = harness.send_text("PRIVMSG #lobby :/me ");
        assert!(empty.contains(" 412 "), "{empty}");
    }

    #[test]
    fn the_no_history_capability_is_granted_on_request() {
        let mut harness = Harness::new();
        assert!(harness.session.wants_history());
        let ack = harness.send_text("CAP REQ :twitchy.tv/no-history");
        assert!(ack.contains("ACK :twitchy.tv/no-history"), "{ack}");
        assert!(!harness.session.wants_history());
    }

    #[test]
    fn anonymous_users_run_no_commands() {
        let mut harness = Harness::anonymous("twitch.tv/tags twitch.tv/commands");
        harness.join("lobby");
        let refused = harness.send_text("PRIVMSG #lobby :/mods");
        assert!(
            refused.starts_with("@msg-id=msg_login_required "),
            "{refused}"
        );
    }

    #[test]
    fn moderation_events_need_the_commands_capability() {
        let mut with = Harness::registered("twitch.tv/tags twitch.tv/commands");
        let without = Harness::registered("twitch.tv/tags");
        with.join("lobby");
        let mut out = Vec::new();
        let all = ClearTarget::All;
        without
            .session
            .encode_clearchat("lobby", 7, all, 1, &mut out);
        without
            .session
            .encode_role_change("lobby", Role::Moderator, &mut out);
        assert!(out.is_empty(), "{}", text(&out));
        with.session.encode_clearchat("lobby", 7, all, 1, &mut out);
        with.session
            .encode_role_change("lobby", Role::Vip, &mut out);
        let lines = text(&out);
        assert!(lines.contains("CLEARCHAT #lobby\r\n"), "{lines}");
        assert!(lines.contains("badges=vip/1;"), "{lines}");
    }
}

#[cfg(test)]
mod chat_command_tests {
    use super::*;

    #[test]
    fn twitch_command_prefixes() {
        let cases = [
            (". hello", ChatText::Plain("hello")),
            ("/ hello", ChatText::Plain("hello")),
            ("/ban someone", ChatText::Command("/ban")),
            (".color red", ChatText::Command(".color")),
            ("...", ChatText::Plain("...")),
            ("./", ChatText::Plain("./")),
            ("/", ChatText::Plain("/")),
            ("hello", ChatText::Plain("hello")),
            ("/é", ChatText::Plain("/é")),
        ];
        for (text, want) in cases {
            assert_eq!(chat_command(text), want, "{text:?}");
        }
    }

    #[test]
    fn echo_message_is_granted_on_request() {
        let mut session = Session::new(Rc::new(SessionConfig::default()));
        let mut out = Vec::new();
        session.handle_line("CAP REQ :echo-message", 0, &mut out);
        assert!(session.wants_echo());
        assert!(
            matches!(&out[0], Action::Reply(bytes) if bytes.ends_with(b"ACK :echo-message\r\n"))
        );
        session.handle_line("CAP REQ :-echo-message", 0, &mut out);
        assert!(!session.wants_echo());
    }
}
