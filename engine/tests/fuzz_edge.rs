//! Seeded black-box fuzzing of what faces the internet: HTTP requests to every API endpoint with mangled bodies and
//! headers, and WebSocket upgrades with mangled handshakes followed by random frames. Every answer must be a
//! well-formed HTTP response (4xx/5xx with a JSON body for the API) or a clean close, and the server must stay up
//! and healthy throughout. A fixed number of cases runs in CI; `FUZZ_SEED=<n>` replays a failure, `FUZZ_CASES=<n>`
//! runs longer.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::TestServer;
use common::client::{http, register};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PATHS: [&str; 16] = [
    "/api/register",
    "/api/login",
    "/api/logout",
    "/api/rooms",
    "/api/rooms/lobby/messages",
    "/api/rooms/lobby/messages?after=0190c6a4-7c2b-7000-8000-000000000001&limit=3",
    "/api/rooms/lobby/messages?before=x&limit=-1",
    "/api/rooms/lobby/moderation",
    "/api/rooms/lobby/chatters?after=%ff&limit=99999999999999999999",
    "/api/account/username",
    "/api/account/color",
    "/api/whispers",
    "/api/whispers/someone",
    "/api/whispers/someone/read?up_to=%00",
    "/api/emotes",
    "/emotes/..%2f..%2fetc%2fpasswd.svg",
];

const BODIES: [&str; 8] = [
    r#"{"username":"fuzzer_user","password":"correct horse battery"}"#,
    r#"{"command":"/timeout someone 600 reason"}"#,
    r##"{"color":"#1E90FF"}"##,
    r#"{"username":"NewName"}"#,
    r#"{"token":"abc"}"#,
    r#"[1,2,3]"#,
    r#"{"command":"/automod add \u0000\ud800"}"#,
    "",
];

/// A body derived from a valid one: cut, bytes flipped, nested deeply, or replaced by noise.
fn mangle(rng: &mut StdRng, body: &str) -> Vec<u8> {
    let mut bytes = body.as_bytes().to_vec();
    match rng.random_range(0..6) {
        0 => bytes.truncate(rng.random_range(0..=bytes.len())),
        1 => {
            for _ in 0..rng.random_range(1..8) {
                if !bytes.is_empty() {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] = rng.random();
                }
            }
        }
        2 => {
            let depth = rng.random_range(1..5000);
            bytes = "[".repeat(depth).into_bytes();
        }
        3 => {
            bytes = (0..rng.random_range(0..2048))
                .map(|_| rng.random())
                .collect()
        }
        4 => bytes.extend(std::iter::repeat_n(b'x', rng.random_range(0..70_000))),
        _ => {}
    }
    bytes
}

/// Sends one raw request and reads what comes back (until close or a short quiet).
fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        panic!("the server stopped accepting");
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    // The server may close early (a refused upgrade); a failed write is an answer too.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 || answer.len() > 1 << 20 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    answer
}

fn http_request(rng: &mut StdRng, addr: SocketAddr, token: &str) -> Vec<u8> {
    let method = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "G\u{0}T"][rng.random_range(0..6)];
    let path = PATHS[rng.random_range(0..PATHS.len())];
    let base = BODIES[rng.random_range(0..BODIES.len())];
    let body = mangle(rng, base);
    let length = match rng.random_range(0..4) {
        0 => body.len().to_string(),
        1 => (body.len() + rng.random_range(1..100)).to_string(),
        2 => "-1".to_owned(),
        _ => body.len().saturating_sub(1).to_string(),
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if rng.random_bool(0.5) {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    } else if rng.random_bool(0.3) {
        head.push_str("Authorization: Bearer \u{7f}\u{1}junk\r\n");
    }
    if rng.random_bool(0.9) {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    } else {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    head.push_str("Content-Type: application/json\r\n\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    request
}

fn websocket_request(rng: &mut StdRng, addr: SocketAddr) -> Vec<u8> {
    let key = ["dGhlIHNhbXBsZSBub25jZQ==", "", "not base64 at all", "AAAA"][rng.random_range(0..4)];
    let version = ["13", "8", "", "13, 8"][rng.random_range(0..4)];
    let protocol = ["irc", "", "irc, chat", "x\u{0}y"][rng.random_range(0..4)];
    let path = ["/", "/ws", "/?x=1", "//"][rng.random_range(0..4)];
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    )
    .into_bytes();
    // Frames after the handshake: masked and unmasked, valid opcodes and not, lengths that lie.
    for _ in 0..rng.random_range(0..6) {
        let opcode: u8 = [1, 2, 8, 9, 10, 3, 0][rng.random_range(0..7)];
        let fin = if rng.random_bool(0.8) { 0x80 } else { 0 };
        request.push(fin | opcode);
        let payload: Vec<u8> = match rng.random_range(0..3) {
            0 => b"PRIVMSG #lobby :hi\r\n".to_vec(),
            1 => (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect(),
            _ => b"NICK justinfan123\r\nJOIN #lobby\r\n".to_vec(),
        };
        let masked = rng.random_bool(0.85);
        let claimed = if rng.random_bool(0.9) {
            payload.len()
        } else {
            rng.random_range(0..100_000)
        };
        let mask_bit = if masked { 0x80 } else { 0 };
        if claimed < 126 {
            request.push(mask_bit | claimed as u8);
        } else if claimed < 65536 {
            request.push(mask_bit | 126);
            request.extend_from_slice(&(claimed as u16).to_be_bytes());
        } else {
            request.push(mask_bit | 127);
            request.extend_from_slice(&(claimed as u64).to_be_bytes());
        }
        let mask: [u8; 4] = rng.random();
        if masked {
            request.extend_from_slice(&mask);
        }
        request.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| if masked { b ^ mask[i % 4] } else { *b }),
        );
    }
    request
}

/// An answer is a well-formed HTTP response (or nothing: a closed connection); API errors have a JSON body.
fn check_answer(answer: &[u8], seed: u64, case: usize) {
    if answer.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(answer);
    let status: u16 = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("seed {seed} case {case}: not an HTTP response: {text:.200}"));
    assert!(
        (100..600).contains(&status),
        "seed {seed} case {case}: status {status}"
    );
    assert!(
        status < 500 || status == 503,
        "seed {seed} case {case}: {text:.300}"
    );
    // Only the first response: after a refused upgrade the rest of the bytes may be read as more requests.
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = head.to_ascii_lowercase();
    let is_json = head.contains("content-type: application/json");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse::<usize>().ok());
    if let (true, true, Some(length)) = (status >= 400, is_json, length) {
        let body = rest.get(..length).unwrap_or(rest);
        if !body.is_empty() {
            let value: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| {
                panic!("seed {seed} case {case}: error body not JSON ({e}): {body:.200}")
            });
            assert!(
                value["error"].is_string(),
                "seed {seed} case {case}: {body:.200}"
            );
        }
    }
}

#[test]
fn http_and_websocket_upgrades_survive_mangled_input() {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0074_5769_7463_6879);
    let cases: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--limits-exempt-loopback",
        "--http-body-timeout-ms",
        "500",
        "--http-header-timeout-ms",
        "500",
    ]);
    let token = register(server.http, "fuzz_owner", "correct horse battery");
    let mut rng = StdRng::seed_from_u64(seed);
    println!("fuzz seed {seed}, {cases} cases");
    for case in 0..cases {
        let request = if rng.random_bool(0.7) {
            http_request(&mut rng, server.http, &token)
        } else {
            websocket_request(&mut rng, server.http)
        };
        let answer = exchange(server.http, &request);
        check_answer(&answer, seed, case);
        if case % 50 == 49 {
            let health = http(server.http, "GET", "/healthz", None);
            assert_eq!(
                health.status, 200,
                "seed {seed} case {case}: {}",
                health.body
            );
        }
    }
    let health = http(server.http, "GET", "/healthz", None);
    assert_eq!(health.status, 200, "seed {seed}: {}", health.body);
    assert_eq!(
        http(server.http, "GET", "/api/rooms", None).status,
        200,
        "seed {seed}: the API still answers"
    );
}
