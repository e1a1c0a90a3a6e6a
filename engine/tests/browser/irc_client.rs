//! "Another client" for the browser tests: a plain WebSocket client speaking the same Twitch IRC
//! dialect as the page, built on tungstenite.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// How long one blocking read waits before the caller's deadline is checked again.
const READ_POLL_MS: u64 = 200;
/// Longest wait for the server's answer to the WebSocket upgrade.
const HANDSHAKE_TIMEOUT_SECS: u64 = 30;

/// One parsed IRC line: unescaped tags, command and parameters (the trailing one included).
#[derive(Debug, Clone)]
pub struct IrcLine {
    pub tags: HashMap<String, String>,
    pub prefix: String,
    pub command: String,
    pub params: Vec<String>,
}

impl IrcLine {
    pub fn parse(line: &str) -> Option<IrcLine> {
        let mut rest = line;
        let mut tags = HashMap::new();
        if let Some(tagged) = rest.strip_prefix('@') {
            let (raw, after) = tagged.split_once(' ')?;
            for part in raw.split(';').filter(|p| !p.is_empty()) {
                let (key, value) = part.split_once('=').unwrap_or((part, ""));
                tags.insert(key.to_owned(), unescape(value));
            }
            rest = after.trim_start_matches(' ');
        }
        let mut prefix = String::new();
        if let Some(prefixed) = rest.strip_prefix(':') {
            let (p, after) = prefixed.split_once(' ')?;
            prefix = p.to_owned();
            rest = after.trim_start_matches(' ');
        }
        let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing.to_owned());
                break;
            }
            let (param, after) = rest.split_once(' ').unwrap_or((rest, ""));
            params.push(param.to_owned());
            rest = after;
        }
        (!command.is_empty()).then(|| IrcLine {
            tags,
            prefix,
            command: command.to_ascii_uppercase(),
            params,
        })
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => break,
        }
    }
    out
}

/// A logged-in (or anonymous) IRC-over-WebSocket connection.
pub struct IrcClient {
    ws: WebSocket<TcpStream>,
    nonce_counter: u64,
    /// Lines received while waiting for something else, in arrival order.
    pub backlog: Vec<IrcLine>,
}

impl IrcClient {
    /// Connects to `ws://<http>/` with the `irc` subprotocol and logs in: with `PASS oauth:<token>`
    /// when `auth` is given, else as an anonymous `justinfan`.
    pub fn connect(http: SocketAddr, auth: Option<(&str, &str)>) -> IrcClient {
        let stream =
            TcpStream::connect_timeout(&http, Duration::from_secs(5)).expect("connect websocket");
        // A plain blocking handshake (bounded by a long timeout); short polling reads come after.
        stream
            .set_read_timeout(Some(Duration::from_secs(HANDSHAKE_TIMEOUT_SECS)))
            .expect("read timeout");
        let mut request = format!("ws://{http}/")
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("irc"));
        let (ws, _response) = tungstenite::client(request, stream).expect("websocket handshake");
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(READ_POLL_MS)))
            .expect("read timeout");
        let mut client = IrcClient {
            ws,
            nonce_counter: 0,
            backlog: Vec::new(),
        };
        client.send("CAP REQ :twitch.tv/tags twitch.tv/commands twitch.tv/membership");
        match auth {
            Some((user, token)) => {
                client.send(&format!("PASS oauth:{token}"));
                client.send(&format!("NICK {user}"));
            }
            None => client.send("NICK justinfan48213"),
        }
        client.expect(Duration::from_secs(30), "welcome 001", |l| {
            l.command == "001"
        });
        client
    }

    pub fn send(&mut self, line: &str) {
        self.ws
            .send(Message::text(format!("{line}\r\n")))
            .expect("websocket send");
    }

    /// Joins `room` and waits for the ROOMSTATE that confirms it.
    pub fn join(&mut self, room: &str) {
        self.send(&format!("JOIN #{room}"));
        self.expect(Duration::from_secs(30), "ROOMSTATE after JOIN", |l| {
            l.command == "ROOMSTATE"
                && l.params.first().map(String::as_str) == Some(&format!("#{room}"))
        });
    }

    /// Sends a PRIVMSG with a fresh client nonce and returns the nonce (no waiting).
    pub fn privmsg(&mut self, room: &str, text: &str) -> String {
        self.nonce_counter += 1;
        let nonce = format!("test-nonce-{}", self.nonce_counter);
        self.send(&format!("@client-nonce={nonce} PRIVMSG #{room} :{text}"));
        nonce
    }

    /// Sends a PRIVMSG and waits for its acknowledgement; returns the message id.
    pub fn say(&mut self, room: &str, text: &str) -> String {
        let nonce = self.privmsg(room, text);
        self.wait_ack(&nonce)
    }

    /// Waits for the USERSTATE acknowledgement carrying `nonce`; returns the message id.
    pub fn wait_ack(&mut self, nonce: &str) -> String {
        let ack = self.expect(Duration::from_secs(30), "USERSTATE acknowledgement", |l| {
            if l.command == "NOTICE" {
                panic!("server refused a test message: {l:?}");
            }
            l.command == "USERSTATE" && l.tag("client-nonce") == Some(nonce)
        });
        ack.tag("id")
            .expect("acknowledgement carries id")
            .to_owned()
    }

    /// Reads lines until one matches `pred` (answering PINGs), or panics after `timeout`.
    pub fn expect(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&IrcLine) -> bool,
    ) -> IrcLine {
        if let Some(found) = self.backlog.iter().position(&mut pred) {
            return self.backlog.remove(found);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for line in self.read_some() {
                if pred(&line) {
                    return line;
                }
                self.backlog.push(line);
            }
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; received: {:#?}",
            self.backlog
        );
    }

    /// Reads whatever arrives within one poll interval.
    fn read_some(&mut self) -> Vec<IrcLine> {
        let mut lines = Vec::new();
        match self.ws.read() {
            Ok(Message::Text(text)) => {
                for raw in text.as_str().split("\r\n").filter(|l| !l.is_empty()) {
                    let Some(line) = IrcLine::parse(raw) else {
                        continue;
                    };
                    if line.command == "PING" {
                        let arg = line.params.last().cloned().unwrap_or_default();
                        self.send(&format!("PONG :{arg}"));
                    }
                    lines.push(line);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("websocket read failed: {e}"),
        }
        // Keep the backlog bounded: only recent lines matter to the tests.
        if self.backlog.len() > 10_000 {
            self.backlog.drain(..5_000);
        }
        lines
    }
}
