//! Client connections to a chat server over plain TCP or WebSocket, plus the
//! few HTTP calls the load generator makes. This is the IO edge: the framing
//! and parsing it relies on live in [`crate::ws`], [`crate::irc`] and
//! [`crate::http`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::irc::{LineBuffer, LineTooLong};
use crate::scenario::Transport;
use crate::ws::{self, Opcode};

/// Bytes a fast connection asks the kernel for per read.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Longest an HTTP call may take before it counts as failed.
pub const HTTP_TIMEOUT_MS: u64 = 30_000;

/// A server under test: `NAME=HTTP_ADDR[,irc=ADDR][,pid=PID]...[,log=PATH][,viewers=ADDR;ADDR...]`.
///
/// Several `pid=` name every process of the system under test (the nodes of a cluster and its brokers): their
/// CPU time and memory are added up. `viewers=` spreads the viewers (WebSocket) over those HTTP addresses, in
/// turn; the senders always use `HTTP_ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// HTTP API and WebSocket address.
    pub http: SocketAddr,
    /// Plain-TCP IRC address.
    pub irc: Option<SocketAddr>,
    /// The server's process ids, for CPU time and RSS from `/proc` (summed).
    pub pids: Vec<u32>,
    /// HTTP addresses the viewers connect to in turn (empty: `http`).
    pub viewers: Vec<SocketAddr>,
    /// The server's log file, scanned for stall-detector lines.
    pub log: Option<PathBuf>,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (name, rest) = spec.split_once('=').ok_or(
            "expected NAME=HTTP_ADDR[,irc=ADDR][,pid=PID]...[,log=PATH][,viewers=ADDR;ADDR...]",
        )?;
        if name.is_empty() {
            return Err("empty target name".into());
        }
        let mut parts = rest.split(',');
        let http = parts
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|e| format!("HTTP address: {e}"))?;
        let mut target = Target {
            name: name.to_string(),
            http,
            irc: None,
            pids: Vec::new(),
            viewers: Vec::new(),
            log: None,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("irc", v)) => {
                    target.irc = Some(v.parse().map_err(|e| format!("irc address: {e}"))?)
                }
                Some(("pid", v)) => target
                    .pids
                    .push(v.parse().map_err(|e| format!("pid: {e}"))?),
                Some(("viewers", v)) => {
                    for addr in v.split(';') {
                        target.viewers.push(
                            addr.parse()
                                .map_err(|e| format!("viewers address {addr:?}: {e}"))?,
                        );
                    }
                }
                Some(("log", v)) => target.log = Some(PathBuf::from(v)),
                _ => return Err(format!("unknown target option {part:?}")),
            }
        }
        Ok(target)
    }
}

/// One client connection speaking IRC lines, framed for WebSocket or not.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    websocket: bool,
    raw: Vec<u8>,
    pub lines: LineBuffer,
    out: Vec<u8>,
    mask_state: u32,
}

fn mask_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1);
    nanos | 1
}

impl Conn {
    /// Connects and, for WebSocket, completes the handshake. A receive
    /// buffer size makes a deliberately slow reader push back sooner.
    pub async fn open(
        target: &Target,
        transport: Transport,
        recv_buffer_bytes: Option<u32>,
    ) -> anyhow::Result<Conn> {
        let addr = match transport {
            Transport::Ws => target.http,
            Transport::Tcp => target
                .irc
                .ok_or_else(|| anyhow!("target {} has no irc= address", target.name))?,
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(bytes) = recv_buffer_bytes {
            socket.set_recv_buffer_size(bytes)?;
        }
        let stream = socket.connect(addr).await.context("connect")?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            websocket: transport == Transport::Ws,
            raw: Vec::new(),
            lines: LineBuffer::new(),
            out: Vec::new(),
            mask_state: mask_seed(),
        };
        if conn.websocket {
            conn.handshake(addr).await?;
        }
        Ok(conn)
    }

    async fn handshake(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let mut nonce = [0u8; 16];
        for chunk in nonce.chunks_mut(4) {
            chunk.copy_from_slice(&self.next_mask());
        }
        let key = ws::client_key(nonce);
        let request = ws::client_request(&addr.to_string(), "/", &key);
        self.stream.write_all(request.as_bytes()).await?;
        loop {
            self.raw.reserve(4096);
            let n = self.stream.read_buf(&mut self.raw).await?;
            if let Some(head) = ws::check_server_response(&self.raw, &key)? {
                self.raw.drain(..head);
                // Frames that arrived in the same read as the response are already here: decode them now, or a
                // caller waiting on the socket for them would wait forever.
                if !self.absorb()? {
                    bail!("the server closed the WebSocket during the handshake");
                }
                return Ok(());
            }
            if n == 0 {
                bail!("connection closed during the WebSocket handshake");
            }
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks need only differ between frames here.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_le_bytes()
    }

    /// Queues one IRC line (without `\r\n`).
    pub fn queue_line(&mut self, line: &str) {
        if self.websocket {
            let mask = self.next_mask();
            ws::encode_frame(Opcode::Text, line.as_bytes(), Some(mask), &mut self.out);
        } else {
            self.out.extend_from_slice(line.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads what the kernel has (up to `max` bytes) into the line buffer.
    /// Returns `Ok(false)` once the peer has closed. Cancel-safe: a read that
    /// is dropped before completing has consumed nothing.
    pub async fn fill(&mut self, max: usize) -> anyhow::Result<bool> {
        let n = if max >= READ_CHUNK_BYTES {
            self.raw.reserve(READ_CHUNK_BYTES);
            self.stream.read_buf(&mut self.raw).await?
        } else {
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let n = self.stream.read(&mut chunk[..max.max(1)]).await?;
            self.raw.extend_from_slice(&chunk[..n]);
            n
        };
        if n == 0 {
            return Ok(false);
        }
        self.absorb()
    }

    /// Moves complete frames (or raw bytes) from `raw` into `lines`,
    /// answering WebSocket pings. Returns `Ok(false)` on a close frame.
    fn absorb(&mut self) -> anyhow::Result<bool> {
        if !self.websocket {
            self.lines.push(&self.raw);
            self.raw.clear();
            return Ok(true);
        }
        // Every complete frame is handled where it lies, and the buffer is moved once at the end: a read can hold
        // hundreds of frames, and moving the rest after each one costs the reader more than the server's writes.
        let mut used = 0;
        let mut open = true;
        while let Some(frame) = ws::frame_at(&self.raw[used..])? {
            let payload = used + frame.payload.start..used + frame.payload.end;
            used = payload.end;
            if let Some(key) = frame.mask {
                ws::unmask(&mut self.raw[payload.clone()], key);
            }
            match frame.opcode {
                Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                    let payload = &self.raw[payload];
                    self.lines.push(payload);
                    // A message that is one line without a terminator still
                    // ends that line.
                    if frame.fin && !payload.ends_with(b"\n") {
                        self.lines.push(b"\n");
                    }
                }
                Opcode::Ping => {
                    let mask = self.next_mask();
                    let payload = self.raw[payload].to_vec();
                    ws::encode_frame(Opcode::Pong, &payload, Some(mask), &mut self.out);
                }
                Opcode::Pong => {}
                Opcode::Close => {
                    open = false;
                    break;
                }
            }
        }
        self.raw.drain(..used);
        Ok(open)
    }

    /// The next complete line, if any.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, LineTooLong> {
        self.lines.next_line()
    }
}

/// One HTTP request with a JSON body; the connection closes after it.
pub async fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> anyhow::Result<crate::http::Response> {
    let call = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(&crate::http::request(
                method,
                &addr.to_string(),
                path,
                json_body,
            ))
            .await?;
        let mut buf = Vec::new();
        loop {
            buf.reserve(READ_CHUNK_BYTES);
            let n = stream.read_buf(&mut buf).await?;
            if let Some(response) = crate::http::parse_response(&buf, n == 0)? {
                return Ok(response);
            }
            if n == 0 {
                bail!("connection closed before the response ended");
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(HTTP_TIMEOUT_MS), call)
        .await
        .map_err(|_| anyhow!("{method} {path} timed out"))?
        .with_context(|| format!("{method} {path}"))
}

/// Registers `username`, or logs in if it exists, and returns the token.
pub async fn register_or_login(
    addr: SocketAddr,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    let mut response = http_call(addr, "POST", "/api/register", Some(&body)).await?;
    if response.status == 409 {
        response = http_call(addr, "POST", "/api/login", Some(&body)).await?;
    }
    if !(200..300).contains(&response.status) {
        bail!(
            "register/login of {username}: HTTP {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    let value: serde_json::Value = serde_json::from_slice(&response.body)?;
    value["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no token in the register/login response"))
}

/// The names of the rooms `GET /api/rooms` lists.
pub async fn list_rooms(addr: SocketAddr) -> anyhow::Result<Vec<String>> {
    let response = http_call(addr, "GET", "/api/rooms", None).await?;
    if response.status != 200 {
        bail!("GET /api/rooms: HTTP {}", response.status);
    }
    let value: serde_json::Value = serde_json::from_slice(&response.body)?;
    let rooms = value
        .as_array()
        .ok_or_else(|| anyhow!("GET /api/rooms did not return an array"))?;
    Ok(rooms
        .iter()
        .filter_map(|r| r["name"].as_str())
        .map(|name| name.trim_start_matches('#').to_string())
        .collect())
}

/// The body of `GET /metrics`.
pub async fn metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let response = http_call(addr, "GET", "/metrics", None).await?;
    if response.status != 200 {
        bail!("GET /metrics: HTTP {}", response.status);
    }
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}

/// Resident set size of a process, from `/proc/<pid>/status`.
pub fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU seconds a process has used, from `/proc/<pid>/stat`.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    proc_cpu_times_s(pid).map(|(user, system)| user + system)
}

/// User and system (kernel) CPU seconds a process has used, from `/proc/<pid>/stat`. On loopback the system part of
/// a server that writes to many sockets holds the send path and most of the receiving side's TCP work too.
pub fn proc_cpu_times_s(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime / ticks as f64, stime / ticks as f64))
}

/// CPU seconds this process has used.
pub fn self_cpu_s() -> f64 {
    proc_cpu_s(std::process::id()).unwrap_or(0.0)
}

/// Raises this process's open-file soft limit to its hard limit, since each
/// simulated client holds a socket.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_target_specs() {
        let t: Target = "twitchy=127.0.0.1:8080,irc=127.0.0.1:6667,pid=42,log=/tmp/x.log"
            .parse()
            .unwrap();
        assert_eq!(t.name, "twitchy");
        assert_eq!(t.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.irc, Some("127.0.0.1:6667".parse().unwrap()));
        assert_eq!(t.pids, vec![42]);
        assert_eq!(t.log, Some(PathBuf::from("/tmp/x.log")));
        let bare: Target = "n=127.0.0.1:1".parse().unwrap();
        assert_eq!(
            (bare.irc, bare.pids.len(), bare.viewers.len()),
            (None, 0, 0)
        );
        let cluster: Target = "c=127.0.0.1:1,pid=1,pid=2,viewers=127.0.0.1:1;127.0.0.1:2"
            .parse()
            .unwrap();
        assert_eq!(cluster.pids, vec![1, 2]);
        assert_eq!(
            cluster.viewers,
            vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            ]
        );
        for bad in [
            "",
            "=1.2.3.4:5",
            "x=nothost",
            "x=127.0.0.1:1,bogus=1",
            "x=127.0.0.1:1,viewers=127.0.0.1:1;nothost",
            "x=127.0.0.1:1,pid=a",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn websocket_client_talks_to_a_tungstenite_server() {
        use tungstenite::Message;
        use tungstenite::handshake::server::{Request, Response};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            #[allow(clippy::result_large_err)] // The callback's signature is tungstenite's.
            let negotiate = |req: &Request, mut resp: Response| {
                let asked = req
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                assert_eq!(asked, "irc");
                resp.headers_mut()
                    .insert("sec-websocket-protocol", "irc".parse().unwrap());
                Ok(resp)
            };
            let mut ws = tungstenite::accept_hdr(stream, negotiate).unwrap();
            ws.send(Message::text("PING :x\r\n:a 001 b :hi")).unwrap();
            ws.read().unwrap()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let target = Target {
                name: "t".into(),
                http: addr,
                irc: None,
                pids: Vec::new(),
                viewers: Vec::new(),
                log: None,
            };
            let mut conn = Conn::open(&target, Transport::Ws, None).await.unwrap();
            let mut lines = Vec::new();
            loop {
                while let Some(line) = conn.next_line().unwrap() {
                    lines.push(String::from_utf8(line.to_vec()).unwrap());
                }
                if lines.len() >= 2 {
                    break;
                }
                assert!(conn.fill(READ_CHUNK_BYTES).await.unwrap());
            }
            // The second line had no terminator: the frame's end ends it.
            assert_eq!(lines, ["PING :x", ":a 001 b :hi"]);
            conn.queue_line("PONG :x");
            conn.flush().await.unwrap();
        });
        assert_eq!(server.join().unwrap(), Message::text("PONG :x"));
        // Plain TCP needs an irc= address.
        let target = Target {
            name: "t".into(),
            http: addr,
            irc: None,
            pids: Vec::new(),
            viewers: Vec::new(),
            log: None,
        };
        let err = runtime
            .block_on(Conn::open(&target, Transport::Tcp, None))
            .unwrap_err();
        assert!(err.to_string().contains("irc="), "{err}");
    }

    #[test]
    fn reads_own_process_figures() {
        assert!(proc_rss_bytes(std::process::id()).unwrap() > 0);
        assert!(proc_cpu_s(std::process::id()).is_some());
        assert_eq!(proc_rss_bytes(u32::MAX), None);
    }
}
