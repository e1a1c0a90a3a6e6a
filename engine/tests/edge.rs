//! End-to-end tests of the production edge: a valid `/metrics` (checked by Prometheus' own `promtool`), the metrics
//! listener, HTTP limits and deadlines, security headers, WebSocket errors, JOIN refusals and the registration
//! deadline.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use common::client::{Irc, http, is_ack, metric, register, tag};

/// A raw HTTP exchange: the status, the response head (lowercased names) and body, and when the server closed.
struct RawResponse {
    status: u16,
    head: String,
    body: String,
    /// From the end of the request bytes we sent to the server's close.
    closed_after: Duration,
}

/// Sends `request` (and then `trickle`, one byte every `every`) and reads until the server closes, for at most
/// `wait`.
fn raw_http(
    addr: SocketAddr,
    request: &[u8],
    trickle: &[u8],
    every: Duration,
    wait: Duration,
) -> RawResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request).unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut sent = 0;
    stream
        .set_read_timeout(Some(if trickle.is_empty() { wait } else { every }))
        .unwrap();
    loop {
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if started.elapsed() >= wait {
                    break;
                }
                if sent < trickle.len() {
                    // The server may already have closed: a failed write ends the trickle.
                    if stream.write_all(&trickle[sent..sent + 1]).is_err() {
                        sent = trickle.len();
                    } else {
                        sent += 1;
                    }
                }
            }
            Err(_) => break,
        }
    }
    let closed_after = started.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    RawResponse {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
        closed_after,
    }
}

/// `promtool check metrics` must accept what `/metrics` serves after some traffic, histograms included.
#[test]
fn metrics_pass_promtool_check_with_latency_histograms() {
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool (Debian package prometheus) is required under CI"
        );
        println!(
            "SKIPPED: promtool is not installed (apt-get install prometheus); set CI to make this an error"
        );
        return;
    }
    let server = TestServer::start(&["--shards", "2"]);
    let token = register(server.http, "metered", "correct horse");
    let mut viewer = Irc::tcp(server.irc);
    viewer.login_anonymous();
    viewer.join("lobby");
    let mut sender = Irc::ws(server.http);
    sender.login("metered", &token);
    sender.join("lobby");
    for n in 0..3 {
        sender.send(&format!(
            "@client-nonce=m{n} PRIVMSG #lobby :metrics message {n}"
        ));
        sender.expect("the ack", is_ack);
        viewer.expect("the message", |l| l.contains(" PRIVMSG #lobby :"));
    }
    let text = http(server.http, "GET", "/metrics", None).body;
    for family in [
        "twitchy_delivery_latency_seconds",
        "twitchy_ack_latency_seconds",
        "twitchy_style_latency_seconds",
        "twitchy_storage_batch_write_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} histogram\n")),
            "{family} missing"
        );
        assert!(
            text.contains(&format!("{family}_bucket{{le=\"+Inf\"}}")),
            "{family} has no +Inf bucket"
        );
    }
    // Every message was acked, styled and delivered once: the histograms counted them when they were written.
    for family in [
        "twitchy_ack_latency_seconds",
        "twitchy_delivery_latency_seconds",
        "twitchy_style_latency_seconds",
    ] {
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{family}_count ")))
            .unwrap_or_else(|| panic!("{family}_count missing"))
            .parse()
            .unwrap();
        assert!(count >= 3, "{family}_count {count}");
    }
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool rejected /metrics:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// With `--metrics-addr`, metrics move to their own listener and the main port answers 404 JSON for them.
#[test]
fn metrics_addr_serves_metrics_on_its_own_listener() {
    let server = TestServer::start(&["--shards", "1", "--metrics-addr", "127.0.0.1:0"]);
    let metrics = server
        .metrics
        .expect("the ready line names the metrics address");
    let main = http(server.http, "GET", "/metrics", None);
    assert_eq!(main.status, 404, "{}", main.body);
    assert!(
        main.json()["error"]
            .as_str()
            .unwrap()
            .contains("metrics address")
    );
    let own = http(metrics, "GET", "/metrics", None);
    assert_eq!(own.status, 200);
    assert!(own.body.contains("# TYPE twitchy_connections gauge"));
    let other = http(metrics, "GET", "/api/rooms", None);
    assert_eq!(other.status, 404);
    assert!(other.json()["error"].is_string());
}

/// A POST whose body never arrives is answered 408 and closed at the body deadline; so is one trickling in.
#[test]
fn http_bodies_must_arrive_within_the_body_deadline() {
    let server = TestServer::start(&["--shards", "1", "--http-body-timeout-ms", "1000"]);
    let head = format!(
        "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n",
        server.http
    );
    let stalled = raw_http(
        server.http,
        head.as_bytes(),
        b"",
        Duration::ZERO,
        Duration::from_secs(20),
    );
    assert_eq!(stalled.status, 408, "{}{}", stalled.head, stalled.body);
    assert!(stalled.body.contains("\"error\""), "{}", stalled.body);
    assert!(
        stalled.head.contains("connection: close"),
        "{}",
        stalled.head
    );
    assert!(
        stalled.closed_after < Duration::from_secs(10),
        "closed after {:?}",
        stalled.closed_after
    );

    let body = format!(
        "{{\"username\":\"someone\",\"password\":\"{}\"}}",
        "x".repeat(160)
    );
    let trickled = raw_http(
        server.http,
        head.as_bytes(),
        body.as_bytes(),
        Duration::from_millis(100),
        Duration::from_secs(20),
    );
    assert_eq!(trickled.status, 408, "{}{}", trickled.head, trickled.body);
    assert!(
        trickled.closed_after < Duration::from_secs(10),
        "a 20 s trickle was cut after {:?}",
        trickled.closed_after
    );
}

/// A request head that does not complete in time gets 408 and the connection closes; an idle keep-alive
/// connection is closed after the keep-alive timeout.
#[test]
fn http_heads_and_idle_keep_alive_connections_have_deadlines() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--http-header-timeout-ms",
        "800",
        "--http-keep-alive-timeout-ms",
        "1500",
    ]);
    let partial = raw_http(
        server.http,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        b"",
        Duration::ZERO,
        Duration::from_secs(20),
    );
    assert_eq!(partial.status, 408, "{}", partial.head);
    assert!(partial.closed_after < Duration::from_secs(10));

    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.http);
    let kept = raw_http(
        server.http,
        request.as_bytes(),
        b"",
        Duration::ZERO,
        Duration::from_secs(20),
    );
    assert_eq!(kept.status, 200, "{}", kept.head);
    // The answer came at once; the close only after the keep-alive timeout (longer than the header deadline).
    assert!(
        kept.closed_after >= Duration::from_millis(1400)
            && kept.closed_after < Duration::from_secs(10),
        "closed after {:?}",
        kept.closed_after
    );
}

/// HTTP connections count against the per-shard connection limit; one over it gets 429 with Retry-After and a
/// JSON error, and is counted as refused.
#[test]
fn http_connections_share_the_connection_limit() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--connections-per-shard-max",
        "2",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let metrics = server.metrics.unwrap();
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.http).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(metrics, "twitchy_connections") != [2] {
        assert!(
            Instant::now() < deadline,
            "two idle HTTP connections are counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.http);
    let refused = raw_http(
        server.http,
        request.as_bytes(),
        b"",
        Duration::ZERO,
        Duration::from_secs(10),
    );
    assert_eq!(refused.status, 429, "{}", refused.head);
    assert!(refused.head.contains("retry-after: 1"), "{}", refused.head);
    let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many connections")
    );
    assert_eq!(metric(metrics, "twitchy_connections_refused_total"), [1]);
    // A chat connection is refused too while HTTP holds the places.
    let mut irc = Irc::tcp(server.irc);
    irc.send("NICK justinfan1");
    assert!(irc.next_line(Duration::from_secs(5)).is_none() && irc.closed);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(metrics, "twitchy_connections") != [0] {
        assert!(
            Instant::now() < deadline,
            "closed connections are uncounted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http(server.http, "GET", "/healthz", None).status, 200);
}

/// The web client's page and assets carry a Content-Security-Policy that forbids framing, and nosniff.
#[test]
fn web_client_responses_carry_security_headers() {
    let server = TestServer::start(&["--shards", "1"]);
    for path in ["/", "/assets/app.js", "/assets/style.css"] {
        let response = http(server.http, "GET", path, None);
        assert_eq!(response.status, 200, "{path}");
        let csp = response
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{path} has no CSP: {}", response.head));
        for directive in [
            "frame-ancestors 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert_eq!(
            response.header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}: {}",
            response.head
        );
    }
}

/// A raw WebSocket: the handshake by hand, then frames written byte by byte as the test wants them.
fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

fn masked_frame(opcode: u8, payload: &[u8], declared_len: Option<u64>) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let len = declared_len.unwrap_or(payload.len() as u64);
    let mut out = vec![0x80 | opcode];
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Reads server frames until the close frame; returns the text frames and the close code.
fn frames_until_close(stream: &mut TcpStream) -> (Vec<String>, Option<u16>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut texts = Vec::new();
    loop {
        let mut header = [0u8; 2];
        if stream.read_exact(&mut header).is_err() {
            return (texts, None);
        }
        let mut len = u64::from(header[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).unwrap();
        match header[0] & 0x0f {
            1 => texts.push(String::from_utf8(payload).unwrap()),
            8 => return (texts, Some(u16::from_be_bytes([payload[0], payload[1]]))),
            _ => {}
        }
    }
}

/// A frame over the size limit gets a NOTICE and close code 1009; invalid UTF-8 gets a NOTICE and close code 1007.
#[test]
fn websocket_errors_are_explained_and_closed_with_their_codes() {
    let server = TestServer::start(&["--shards", "1"]);
    let login = masked_frame(1, b"CAP REQ :twitch.tv/tags\r\nNICK justinfan5\r\n", None);

    let mut big = raw_websocket(server.http);
    big.write_all(&login).unwrap();
    // Only the header of a 1 MiB text frame and a few bytes: the declared length alone is over the limit.
    let mut frame = masked_frame(1, b"PRIVMSG #lobby :aaaa", Some(1 << 20));
    frame.truncate(frame.len());
    big.write_all(&frame).unwrap();
    let (texts, code) = frames_until_close(&mut big);
    assert_eq!(code, Some(1009), "{texts:?}");
    let notice = texts.concat();
    assert!(
        notice.contains("@msg-id=msg_message_too_big :tmi.twitch.tv NOTICE * :"),
        "{notice}"
    );

    let mut bad = raw_websocket(server.http);
    bad.write_all(&login).unwrap();
    bad.write_all(&masked_frame(1, b"PRIVMSG #lobby :\xc3\x28\r\n", None))
        .unwrap();
    let (texts, code) = frames_until_close(&mut bad);
    assert_eq!(code, Some(1007), "{texts:?}");
    let notice = texts.concat();
    assert!(
        notice.contains("@msg-id=msg_invalid_utf8 :tmi.twitch.tv NOTICE * :"),
        "{notice}"
    );
}

/// A JOIN line naming many channels that do not exist gets one NOTICE, not one per channel, and the channels
/// that do exist are still joined.
#[test]
fn a_join_line_gets_one_notice_for_all_its_refused_channels() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut irc = Irc::tcp(server.irc);
    irc.login_anonymous();
    let unknown: Vec<String> = (0..15).map(|n| format!("#nosuch{n}")).collect();
    irc.send(&format!("JOIN {},#lobby", unknown.join(",")));
    irc.expect("the lobby joined", |l| l.ends_with("ROOMSTATE #lobby"));
    irc.send("PING :after");
    irc.expect("the PONG", |l| l.contains("PONG"));
    let notices: Vec<&String> = irc.seen.iter().filter(|l| l.contains(" NOTICE ")).collect();
    assert_eq!(notices.len(), 1, "{notices:#?}");
    assert!(
        notices[0].contains("Your JOIN was not processed for 15 channels.")
            && notices[0].contains("#nosuch0, #nosuch1")
            && notices[0].contains("5 more"),
        "{}",
        notices[0]
    );
}

/// A connection that never finishes registering (CAP LS without CAP END) gets a NOTICE and is closed at the
/// registration deadline; a registered one stays.
#[test]
fn connections_that_do_not_register_are_closed_at_the_deadline() {
    let server = TestServer::start(&["--shards", "1", "--registration-timeout-ms", "1000"]);
    let mut stuck = Irc::tcp(server.irc);
    stuck.send("CAP LS 302");
    stuck.send("NICK justinfan77");
    let mut fine = Irc::tcp(server.irc);
    fine.login_anonymous();
    let started = Instant::now();
    stuck.expect_within("the deadline NOTICE", Duration::from_secs(15), |l| {
        l.contains(" NOTICE * :Closing the connection: it did not finish logging in")
    });
    assert!(stuck.next_line(Duration::from_secs(5)).is_none());
    assert!(stuck.closed, "closed after the NOTICE");
    assert!(started.elapsed() < Duration::from_secs(10));
    fine.send("PING :still-here");
    fine.expect("the PONG", |l| {
        l.contains("PONG") && l.contains("still-here")
    });
}

#[test]
fn one_address_holds_at_most_its_connection_limit() {
    let server = TestServer::start(&["--shards", "2", "--connections-per-ip-max", "3"]);
    let mut held: Vec<Irc> = (0..3)
        .map(|i| {
            let mut irc = if i % 2 == 0 {
                Irc::tcp(server.irc)
            } else {
                Irc::ws(server.http)
            };
            irc.login_anonymous();
            irc
        })
        .collect();
    // Over the limit: IRC is told why and closed; HTTP gets 429 with Retry-After.
    let mut refused = Irc::tcp(server.irc);
    let notice = refused.expect("NOTICE", |l| l.contains(" NOTICE "));
    assert_eq!(
        tag(&notice, "msg-id").as_deref(),
        Some("msg_too_many_connections")
    );
    while refused.next_line(Duration::from_secs(2)).is_some() {}
    assert!(refused.closed, "the refused connection is closed");
    let over = http(server.http, "GET", "/healthz", None);
    assert_eq!(over.status, 429, "{}", over.body);
    assert!(over.header("retry-after").is_some());
    // A connection that ends gives its place back.
    held.pop();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http(server.http, "GET", "/healthz", None).status, 200);
    held.clear();
    std::thread::sleep(Duration::from_millis(300));
    let refusals: u64 = metric(server.http, "twitchy_connections_refused_per_ip_total")
        .iter()
        .sum();
    assert_eq!(refusals, 2);

    // Load tests from one machine lift it for loopback.
    let exempt = TestServer::start(&["--connections-per-ip-max", "1", "--limits-exempt-loopback"]);
    let many: Vec<Irc> = (0..4)
        .map(|_| {
            let mut irc = Irc::tcp(exempt.irc);
            irc.login_anonymous();
            irc
        })
        .collect();
    assert_eq!(many.len(), 4);
    assert_eq!(http(exempt.http, "GET", "/healthz", None).status, 200);
}
