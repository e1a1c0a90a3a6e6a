//! Minimal blocking clients for integration tests: IRC over WebSocket or TCP, and JSON over HTTP.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

enum Link {
    Ws(Box<WebSocket<TcpStream>>),
    Tcp(BufReader<TcpStream>),
}

/// An IRC client speaking the Twitch dialect.
pub struct Irc {
    link: Link,
    lines: VecDeque<String>,
    /// Every line received so far (for failure messages).
    pub seen: Vec<String>,
    pub closed: bool,
}

impl Irc {
    pub fn ws(addr: SocketAddr) -> Irc {
        let stream = TcpStream::connect(addr).expect("connect ws");
        stream.set_nodelay(true).unwrap();
        let mut request = format!("ws://{addr}/").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "irc".parse().unwrap());
        let (socket, response) = tungstenite::client(request, stream).expect("websocket handshake");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap()),
            Some("irc"),
            "the server must echo the irc subprotocol"
        );
        Irc {
            link: Link::Ws(Box::new(socket)),
            lines: VecDeque::new(),
            seen: Vec::new(),
            closed: false,
        }
    }

    pub fn tcp(addr: SocketAddr) -> Irc {
        let stream = TcpStream::connect(addr).expect("connect tcp");
        stream.set_nodelay(true).unwrap();
        Irc {
            link: Link::Tcp(BufReader::new(stream)),
            lines: VecDeque::new(),
            seen: Vec::new(),
            closed: false,
        }
    }

    /// Sends raw bytes (TCP) or one text frame (WebSocket) without adding a line ending.
    pub fn send_raw(&mut self, data: &[u8]) {
        match &mut self.link {
            Link::Ws(ws) => ws
                .send(Message::Text(
                    String::from_utf8_lossy(data).into_owned().into(),
                ))
                .expect("ws send"),
            Link::Tcp(reader) => reader.get_mut().write_all(data).expect("tcp send"),
        }
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes());
    }

    fn set_timeout(&mut self, timeout: Duration) {
        let stream = match &mut self.link {
            Link::Ws(ws) => ws.get_mut(),
            Link::Tcp(reader) => reader.get_mut(),
        };
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
    }

    /// The next line, or None if none arrives in time or the connection closed.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Some(line);
            }
            if self.closed {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.set_timeout(deadline - now);
            match &mut self.link {
                Link::Ws(ws) => match ws.read() {
                    Ok(Message::Text(text)) => {
                        for line in text.as_str().split("\r\n").filter(|l| !l.is_empty()) {
                            self.seen.push(line.to_string());
                            self.lines.push_back(line.to_string());
                        }
                    }
                    Ok(Message::Close(_)) => self.closed = true,
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => self.closed = true,
                },
                Link::Tcp(reader) => {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) => self.closed = true,
                        Ok(_) => {
                            let line = line.trim_end_matches(['\r', '\n']).to_string();
                            self.seen.push(line.clone());
                            self.lines.push_back(line);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => self.closed = true,
                    }
                }
            }
        }
    }

    /// Waits for a line matching `pred`, skipping others; panics with what was seen on timeout.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.expect_within(what, Duration::from_secs(10), pred)
    }

    pub fn expect_within(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(line) = self.next_line(deadline.saturating_duration_since(Instant::now())) {
            if line.starts_with("PING") {
                self.send("PONG :tmi.twitch.tv");
            }
            if pred(&line) {
                return line;
            }
        }
        let tail: Vec<&String> = self.seen.iter().rev().take(20).collect();
        panic!("expected {what}; last lines (newest first): {tail:#?}");
    }

    /// Collects every line that arrives until `quiet` passes with nothing new.
    pub fn drain(&mut self, quiet: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(line) = self.next_line(quiet) {
            out.push(line);
        }
        out
    }

    pub fn login_anonymous(&mut self) {
        self.send("CAP REQ :twitch.tv/tags twitch.tv/commands twitch.tv/membership");
        self.send(&format!("NICK justinfan{}", 10_000 + rand_digits()));
        self.expect("welcome 376", |l| l.contains(" 376 "));
    }

    pub fn login(&mut self, user: &str, token: &str) {
        self.send("CAP REQ :twitch.tv/tags twitch.tv/commands");
        self.send(&format!("PASS oauth:{token}"));
        self.send(&format!("NICK {user}"));
        self.expect("welcome 376", |l| l.contains(" 376 "));
    }

    /// Joins and waits for ROOMSTATE (history follows it).
    pub fn join(&mut self, room: &str) {
        self.send(&format!("JOIN #{room}"));
        let suffix = format!("ROOMSTATE #{room}");
        self.expect("ROOMSTATE", |l| l.ends_with(&suffix));
    }
}

fn rand_digits() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos % 89_999
}

/// The server's acknowledgement of a sent message: a `USERSTATE` carrying the stored message's `id`.
pub fn is_ack(l: &str) -> bool {
    l.contains(" USERSTATE #") && tag(l, "id").is_some()
}

/// The value of tag `key` in a line, unescaped for the common cases.
pub fn tag(line: &str, key: &str) -> Option<String> {
    let tags = line.strip_prefix('@')?.split(' ').next()?;
    tags.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| {
            v.replace("\\s", " ")
                .replace("\\:", ";")
                .replace("\\\\", "\\")
        })
    })
}

/// The trailing parameter (the text) of a line.
pub fn trailing(line: &str) -> &str {
    let rest = if line.starts_with('@') {
        line.split_once(' ').map(|x| x.1).unwrap_or("")
    } else {
        line
    };
    rest.split_once(" :").map(|x| x.1).unwrap_or("")
}

/// An HTTP response: status and body.
pub struct HttpResponse {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// A header's value (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    http_as(addr, method, path, None, body)
}

/// One HTTP/1.1 request with `Connection: close`, with `Authorization: Bearer <token>` when a token is given.
pub fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect http");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpResponse {
        status,
        head: head.to_string(),
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Registers a user and returns its token.
pub fn register(addr: SocketAddr, user: &str, password: &str) -> String {
    let body = serde_json::json!({ "username": user, "password": password }).to_string();
    let response = http(addr, "POST", "/api/register", Some(&body));
    assert_eq!(response.status, 201, "register {user}: {}", response.body);
    response.json()["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// Reads a per-shard counter from /metrics, summed or per shard.
/// The value of one sample of `/metrics`, named with its labels exactly as rendered (`name{room="lobby"}`, or
/// a bare name).
pub fn metric_sample(addr: SocketAddr, sample: &str) -> Option<f64> {
    let text = http(addr, "GET", "/metrics", None).body;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

pub fn metric(addr: SocketAddr, name: &str) -> Vec<u64> {
    let text = http(addr, "GET", "/metrics", None).body;
    let prefix = format!("{name}{{shard=\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .collect()
}
