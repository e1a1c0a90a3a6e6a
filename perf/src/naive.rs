//! A deliberately simple chat server speaking the same dialect as Twitchy,
//! used as the baseline the load generator measures against in the same run.
//!
//! It is the design a first attempt would take: one OS thread per
//! connection, one global mutex over all state, and a broadcast that writes
//! to every viewer's socket in turn while holding that mutex. Messages live
//! in memory only, text is delivered as sent (no rewriting), and passwords
//! are kept as given. None of that is acceptable in the real server; it is
//! what makes this one a fair "simplest thing that works" reference.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::http::{self, Request};
use crate::irc::{LineBuffer, escape_tag_value};
use crate::ws::{self, Opcode};

/// History lines replayed to a viewer on JOIN, as Twitchy does.
pub const HISTORY_LINES_MAX: usize = 10;

/// Stack of each connection thread; the handler needs little.
const THREAD_STACK_BYTES: usize = 256 * 1024;

/// A broadcast write that blocks longer than this drops the viewer.
const WRITE_TIMEOUT_MS: u64 = 2_000;

/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 8 * 1024;

const DEFAULT_ROOMS: &[(&str, &str)] = &[
    ("lobby", "General chat."),
    ("gaming", "Games and speedruns."),
    ("music", "Tunes."),
];

#[derive(Debug, Clone)]
pub struct NaiveConfig {
    pub http: SocketAddr,
    pub irc: SocketAddr,
    pub rate_limit_messages: u32,
    pub rate_limit_window_ms: u64,
}

#[derive(Debug)]
struct Writer {
    stream: Mutex<TcpStream>,
    websocket: bool,
}

impl Writer {
    fn send(&self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 8);
        if self.websocket {
            let mut text = line.as_bytes().to_vec();
            text.extend_from_slice(b"\r\n");
            ws::encode_frame(Opcode::Text, &text, None, &mut bytes);
        } else {
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        lock(&self.stream).write_all(&bytes)
    }

    fn send_frame(&self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        let mut bytes = Vec::new();
        ws::encode_frame(opcode, payload, None, &mut bytes);
        lock(&self.stream).write_all(&bytes)
    }

    fn close(&self) {
        let _ = lock(&self.stream).shutdown(Shutdown::Both);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the server down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Default)]
struct Room {
    description: String,
    members: Vec<(u64, String, Arc<Writer>)>,
    history: VecDeque<String>,
}

#[derive(Debug, Default)]
struct Hub {
    users: HashMap<String, (u64, String)>,
    tokens: HashMap<String, String>,
    rooms: HashMap<String, Room>,
    room_order: Vec<String>,
    recent_sends: HashMap<String, VecDeque<Instant>>,
    next_message_id: u64,
}

#[derive(Debug)]
struct Server {
    config: NaiveConfig,
    hub: Mutex<Hub>,
    connections: AtomicU64,
    next_connection: AtomicU64,
}

/// The addresses a started server listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: SocketAddr,
    pub irc: SocketAddr,
}

/// Binds both listeners and serves on background threads.
pub fn start(config: NaiveConfig) -> io::Result<Bound> {
    let http_listener = TcpListener::bind(config.http)?;
    let irc_listener = TcpListener::bind(config.irc)?;
    let bound = Bound {
        http: http_listener.local_addr()?,
        irc: irc_listener.local_addr()?,
    };
    let mut hub = Hub::default();
    for (name, description) in DEFAULT_ROOMS {
        hub.rooms.insert(
            name.to_string(),
            Room {
                description: description.to_string(),
                ..Room::default()
            },
        );
        hub.room_order.push(name.to_string());
    }
    let server = Arc::new(Server {
        config,
        hub: Mutex::new(hub),
        connections: AtomicU64::new(0),
        next_connection: AtomicU64::new(1),
    });
    for (listener, is_http) in [(http_listener, true), (irc_listener, false)] {
        let server = server.clone();
        std::thread::Builder::new()
            .name(if is_http { "naive-http" } else { "naive-irc" }.into())
            .spawn(move || accept_loop(&server, &listener, is_http))?;
    }
    Ok(bound)
}

fn accept_loop(server: &Arc<Server>, listener: &TcpListener, is_http: bool) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let server = server.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || {
                let _ = stream.set_nodelay(true);
                if is_http {
                    serve_http(&server, stream);
                } else {
                    serve_irc(&server, stream, false, Vec::new());
                }
            });
        if spawned.is_err() {
            // Out of threads: the connection is dropped, which is what a
            // thread-per-connection server does under that load.
            continue;
        }
    }
}

fn serve_http(server: &Arc<Server>, mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    let (request, used) = loop {
        match http::parse_request(&buf) {
            Ok(Some(done)) => break done,
            Ok(None) => {}
            Err(e) => {
                let body = serde_json::json!({ "error": e.to_string() }).to_string();
                let _ = stream.write_all(&http::response(400, "application/json", &body));
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let upgrade = request
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        let Some(key) = request.header("sec-websocket-key") else {
            let _ = stream.write_all(&http::response(
                400,
                "application/json",
                "{\"error\":\"missing Sec-WebSocket-Key\"}",
            ));
            return;
        };
        let irc = request
            .header("sec-websocket-protocol")
            .is_some_and(|v| v.split(',').any(|p| p.trim() == "irc"));
        if stream
            .write_all(ws::server_response(key, irc).as_bytes())
            .is_err()
        {
            return;
        }
        serve_irc(server, stream, true, buf[used..].to_vec());
        return;
    }
    let (status, content_type, body) = route(server, &request);
    let _ = stream.write_all(&http::response(status, content_type, &body));
}

fn valid_username(name: &str) -> bool {
    (4..=25).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn new_token(counter: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{counter:016x}{nanos:016x}")
}

fn json_error(status: u16, message: &str) -> (u16, &'static str, String) {
    (
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

fn route(server: &Server, request: &Request) -> (u16, &'static str, String) {
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/api/register") | ("POST", "/api/login") => {
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&request.body) else {
                return json_error(400, "body must be JSON");
            };
            let (Some(username), Some(password)) =
                (body["username"].as_str(), body["password"].as_str())
            else {
                return json_error(400, "username and password are required");
            };
            let mut hub = lock(&server.hub);
            let counter = server.next_connection.fetch_add(1, Ordering::Relaxed);
            if request.path == "/api/register" {
                if !valid_username(username) || !(8..=128).contains(&password.len()) {
                    return json_error(400, "invalid username or password");
                }
                if hub.users.contains_key(username) {
                    return json_error(409, "username taken");
                }
                let user_id = hub.users.len() as u64 + 1;
                hub.users
                    .insert(username.to_string(), (user_id, password.to_string()));
            } else if hub.users.get(username).map(|(_, p)| p.as_str()) != Some(password) {
                return json_error(401, "wrong username or password");
            }
            let token = new_token(counter);
            hub.tokens.insert(token.clone(), username.to_string());
            let status = if request.path == "/api/register" {
                201
            } else {
                200
            };
            (
                status,
                "application/json",
                serde_json::json!({ "token": token }).to_string(),
            )
        }
        ("GET", "/api/rooms") => {
            let hub = lock(&server.hub);
            let rooms: Vec<serde_json::Value> = hub
                .room_order
                .iter()
                .filter_map(|name| hub.rooms.get(name).map(|room| (name, room)))
                .map(|(name, room)| {
                    serde_json::json!({
                        "name": name,
                        "style": "plain",
                        "description": room.description,
                        "viewers": room.members.len(),
                    })
                })
                .collect();
            (
                200,
                "application/json",
                serde_json::Value::Array(rooms).to_string(),
            )
        }
        ("GET", "/metrics") => {
            let rss = crate::conn::proc_rss_bytes(std::process::id()).unwrap_or(0);
            let body = format!(
                "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n\
                 # TYPE naive_connections gauge\nnaive_connections {}\n",
                server.connections.load(Ordering::Relaxed)
            );
            (200, "text/plain; version=0.0.4", body)
        }
        _ => json_error(404, "not found"),
    }
}

#[derive(Debug)]
struct Session {
    id: u64,
    token: Option<String>,
    nick: Option<String>,
    /// Registered account name; `None` for an anonymous `justinfan` viewer.
    user: Option<(u64, String)>,
    rooms: HashSet<String>,
}

/// Reads client bytes into lines, through WebSocket frames when `websocket`.
#[derive(Debug)]
struct Reader {
    stream: TcpStream,
    websocket: bool,
    raw: Vec<u8>,
    lines: LineBuffer,
}

enum Input {
    Line(String),
    Ping(Vec<u8>),
    Closed,
}

impl Reader {
    fn next(&mut self) -> Input {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) => return Input::Line(String::from_utf8_lossy(line).into_owned()),
                Ok(None) => {}
                Err(_) => return Input::Closed,
            }
            if self.websocket {
                match ws::decode_frame(&mut self.raw) {
                    Ok(Some(frame)) => {
                        match frame.opcode {
                            Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                                self.lines.push(&frame.payload);
                                if frame.fin && !frame.payload.ends_with(b"\n") {
                                    self.lines.push(b"\n");
                                }
                            }
                            Opcode::Ping => return Input::Ping(frame.payload),
                            Opcode::Pong => {}
                            Opcode::Close => return Input::Closed,
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(_) => return Input::Closed,
                }
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return Input::Closed,
                Ok(n) if self.websocket => self.raw.extend_from_slice(&chunk[..n]),
                Ok(n) => self.lines.push(&chunk[..n]),
            }
        }
    }
}

fn serve_irc(server: &Arc<Server>, stream: TcpStream, websocket: bool, leftover: Vec<u8>) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let _ = write_half.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)));
    let writer = Arc::new(Writer {
        stream: Mutex::new(write_half),
        websocket,
    });
    let mut reader = Reader {
        stream,
        websocket,
        raw: leftover,
        lines: LineBuffer::new(),
    };
    let mut session = Session {
        id: server.next_connection.fetch_add(1, Ordering::Relaxed),
        token: None,
        nick: None,
        user: None,
        rooms: HashSet::new(),
    };
    server.connections.fetch_add(1, Ordering::Relaxed);
    loop {
        let line = match reader.next() {
            Input::Line(line) => line,
            Input::Ping(payload) => {
                if writer.send_frame(Opcode::Pong, &payload).is_err() {
                    break;
                }
                continue;
            }
            Input::Closed => break,
        };
        if handle_command(server, &writer, &mut session, &line).is_err() {
            break;
        }
    }
    let mut hub = lock(&server.hub);
    for name in &session.rooms {
        if let Some(room) = hub.rooms.get_mut(name) {
            room.members.retain(|(id, _, _)| *id != session.id);
        }
    }
    drop(hub);
    writer.close();
    server.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Handles one client line; an error ends the connection.
fn handle_command(
    server: &Server,
    writer: &Arc<Writer>,
    session: &mut Session,
    text: &str,
) -> io::Result<()> {
    let Some(line) = crate::irc::Line::parse(text) else {
        return Ok(());
    };
    let nick = session.nick.clone().unwrap_or_else(|| "*".into());
    match line.command {
        "CAP" => {
            let caps = line.params.last().copied().unwrap_or("");
            writer.send(&format!(":tmi.twitch.tv CAP * ACK :{caps}"))
        }
        "PASS" => {
            let pass = line.param(0).unwrap_or("");
            session.token = Some(pass.strip_prefix("oauth:").unwrap_or(pass).to_string());
            Ok(())
        }
        "NICK" => {
            let wanted = line.param(0).unwrap_or("").to_ascii_lowercase();
            match &session.token {
                Some(token) => {
                    let hub = lock(&server.hub);
                    let owner = hub.tokens.get(token).cloned();
                    match owner {
                        Some(name) if name == wanted => {
                            session.user = hub.users.get(&name).map(|(id, _)| (*id, name.clone()));
                        }
                        _ => {
                            drop(hub);
                            writer.send(":tmi.twitch.tv NOTICE * :Login authentication failed")?;
                            return Err(io::ErrorKind::PermissionDenied.into());
                        }
                    }
                }
                None if wanted.starts_with("justinfan") => {}
                None => {
                    writer.send(":tmi.twitch.tv NOTICE * :Improperly formatted auth")?;
                    return Err(io::ErrorKind::PermissionDenied.into());
                }
            }
            for (code, text) in [
                ("001", "Welcome, GLHF!"),
                ("002", "Your host is tmi.twitch.tv"),
                ("003", "This server is rather new"),
                ("004", "-"),
                ("375", "-"),
                ("372", "You are in a maze of twisty passages."),
                ("376", ">"),
            ] {
                writer.send(&format!(":tmi.twitch.tv {code} {wanted} :{text}"))?;
            }
            session.nick = Some(wanted);
            Ok(())
        }
        "JOIN" => {
            if session.nick.is_none() {
                return writer.send(":tmi.twitch.tv 451 * :You have not registered");
            }
            for channel in line.param(0).unwrap_or("").split(',') {
                let name = channel.trim_start_matches('#').to_ascii_lowercase();
                if name.is_empty() {
                    continue;
                }
                let mut hub = lock(&server.hub);
                let room = hub.rooms.entry(name.clone()).or_default();
                room.members
                    .push((session.id, nick.clone(), writer.clone()));
                session.rooms.insert(name.clone());
                writer.send(&format!(":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN #{name}"))?;
                writer.send(&format!(
                    ":{nick}.tmi.twitch.tv 353 {nick} = #{name} :{nick}"
                ))?;
                writer.send(&format!(
                    ":{nick}.tmi.twitch.tv 366 {nick} #{name} :End of /NAMES list"
                ))?;
                writer.send(&format!(
                    "@badge-info=;badges=;color=;display-name={nick};emote-sets=0;mod=0;subscriber=0;user-type= :tmi.twitch.tv USERSTATE #{name}"
                ))?;
                writer.send(&format!(
                    "@emote-only=0;followers-only=-1;r9k=0;room-id=0;slow=0;subs-only=0 :tmi.twitch.tv ROOMSTATE #{name}"
                ))?;
                for old in &room.history {
                    writer.send(&format!("@historical=1;{old}"))?;
                }
            }
            Ok(())
        }
        "PART" => {
            let name = line
                .param(0)
                .unwrap_or("")
                .trim_start_matches('#')
                .to_string();
            let mut hub = lock(&server.hub);
            if let Some(room) = hub.rooms.get_mut(&name) {
                room.members.retain(|(id, _, _)| *id != session.id);
            }
            session.rooms.remove(&name);
            writer.send(&format!(":{nick}!{nick}@{nick}.tmi.twitch.tv PART #{name}"))
        }
        "PRIVMSG" => privmsg(server, writer, session, &line),
        "PING" => {
            let token = line.params.last().copied().unwrap_or("tmi.twitch.tv");
            writer.send(&format!(":tmi.twitch.tv PONG tmi.twitch.tv :{token}"))
        }
        "PONG" => Ok(()),
        "QUIT" => Err(io::ErrorKind::ConnectionAborted.into()),
        other => writer.send(&format!(
            ":tmi.twitch.tv 421 {nick} {other} :Unknown command"
        )),
    }
}

fn privmsg(
    server: &Server,
    writer: &Arc<Writer>,
    session: &Session,
    line: &crate::irc::Line<'_>,
) -> io::Result<()> {
    let name = line
        .param(0)
        .unwrap_or("")
        .trim_start_matches('#')
        .to_string();
    let text = line.param(1).unwrap_or("");
    let Some((user_id, user)) = &session.user else {
        return writer.send(&format!(
            "@msg-id=msg_requires_login :tmi.twitch.tv NOTICE #{name} :You must log in to chat."
        ));
    };
    if !session.rooms.contains(&name) || text.is_empty() {
        return writer.send(&format!(
            "@msg-id=msg_channel_not_joined :tmi.twitch.tv NOTICE #{name} :Join the room first."
        ));
    }
    let nonce = line.tag("client-nonce").unwrap_or("");
    let now = Instant::now();
    let mut hub = lock(&server.hub);
    let window = Duration::from_millis(server.config.rate_limit_window_ms);
    let recent = hub.recent_sends.entry(user.clone()).or_default();
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) > window)
    {
        recent.pop_front();
    }
    if recent.len() >= server.config.rate_limit_messages as usize {
        drop(hub);
        return writer.send(&format!(
            "@msg-id=msg_ratelimit :tmi.twitch.tv NOTICE #{name} :Your message was not sent because you are sending messages too quickly."
        ));
    }
    recent.push_back(now);
    hub.next_message_id += 1;
    let id = format!("naive-{}", hub.next_message_id);
    let sent_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let body = format!(
        "badge-info=;badges=;client-nonce={};color=;display-name={user};emotes=;first-msg=0;flags=;id={id};mod=0;room-id=0;subscriber=0;tmi-sent-ts={sent_ms};turbo=0;user-id={user_id};user-type= :{user}!{user}@{user}.tmi.twitch.tv PRIVMSG #{name} :{text}",
        escape_tag_value(nonce)
    );
    let delivery = format!("@{body}");
    let Some(room) = hub.rooms.get_mut(&name) else {
        return Ok(());
    };
    // The naive part: every viewer's socket is written in turn, under the one
    // lock, and a viewer whose write fails or times out is dropped.
    let mut dead = Vec::new();
    for (id, _, member) in &room.members {
        if *id == session.id {
            continue;
        }
        if member.send(&delivery).is_err() {
            member.close();
            dead.push(*id);
        }
    }
    room.members.retain(|(id, _, _)| !dead.contains(id));
    room.history.push_back(body);
    if room.history.len() > HISTORY_LINES_MAX {
        room.history.pop_front();
    }
    drop(hub);
    writer.send(&format!(
        "@badge-info=;badges=;client-nonce={};color=;display-name={user};emote-sets=0;id={id};mod=0;subscriber=0;user-type= :tmi.twitch.tv USERSTATE #{name}",
        escape_tag_value(nonce)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_api_rules() {
        for ok in ["abcd", "tp_sender_12", "a123456789012345678901234"] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in [
            "abc",
            "ABCD",
            "with space",
            "a1234567890123456789012345",
            "ünï",
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
    }
}
