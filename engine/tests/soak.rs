//! A short soak of the real server under what a public edge meets at once: a message flood, clients that never
//! read, clients that flood PINGs without reading, and connection churn. For its whole run the server's memory must
//! stay under a bound and `/healthz` must answer 200; at the end a fresh client still chats normally.
//!
//! Bounded in time (`SOAK_SECS`, 40 s by default) so it runs in CI; set it higher to soak longer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::TestServer;
use common::client::{Irc, http, is_ack, metric, register};

/// Resident memory the server may use during the soak. The queue limits below bound what the slow clients can
/// hold (8 × 256 KiB per-client, 16 MiB per shard); the rest is the process's own.
const RSS_BYTES_MAX: u64 = 400 << 20;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn floods_slow_readers_and_churn_leave_the_server_healthy_and_bounded() {
    let seconds: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--limits-exempt-loopback",
        "--rate-limit-messages",
        "1000000",
        "--outbound-queue-bytes-max",
        "262144",
        "--outbound-bytes-per-shard-max",
        "16777216",
        "--socket-send-buffer-bytes",
        "8192",
    ]);
    let pid = server.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();

    // Viewers that never read. They join before the flood starts: a viewer joining a room already flooded past its
    // queue limit within one fanout batch is dropped at once, before it could see its ROOMSTATE.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut irc = Irc::tcp(server.irc);
        irc.login_anonymous();
        irc.join("lobby");
        slow.push(irc);
    }
    // A flood of chat messages from two senders (raw sockets: the server may drop a sender that falls behind, and
    // a dropped sender just stops). Each has a reader that discards what comes back.
    for s in 0..2 {
        let login = format!("flooder_{s}");
        let token = register(server.http, &login, "correct horse battery");
        let (stop, sent, addr) = (stop.clone(), sent.clone(), server.irc);
        workers.push(thread::spawn(move || {
            let Ok(mut stream) = TcpStream::connect(addr) else {
                return;
            };
            if let Ok(mut reader) = stream.try_clone() {
                thread::spawn(move || {
                    let mut sink = [0u8; 16 * 1024];
                    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                });
            }
            let hello = format!(
                "CAP REQ :twitch.tv/tags twitch.tv/commands\r\nPASS oauth:{token}\r\nNICK {login}\r\nJOIN #lobby\r\n"
            );
            if stream.write_all(hello.as_bytes()).is_err() {
                return;
            }
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let line = format!("PRIVMSG #lobby :flood {s} message {i} with some words in it\r\n");
                if stream.write_all(line.as_bytes()).is_err() {
                    return;
                }
                i += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Clients that flood PINGs and never read (dropped by the server sooner or later; then they stop).
    for n in 0..4 {
        let (stop, addr) = (stop.clone(), server.irc);
        workers.push(thread::spawn(move || {
            let Ok(mut stream) = TcpStream::connect(addr) else {
                return;
            };
            let hello = format!("NICK justinfan{}\r\n", 70_000 + n);
            let pings = "PING :are you there\r\n".repeat(64);
            let _ = stream.write_all(hello.as_bytes());
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(pings.as_bytes()).is_err() {
                    return;
                }
            }
        }));
    }
    // Churn: connect, join, leave, over and over.
    {
        let (stop, http_addr, irc_addr) = (stop.clone(), server.http, server.irc);
        workers.push(thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut irc = if n.is_multiple_of(2) {
                    Irc::ws(http_addr)
                } else {
                    Irc::tcp(irc_addr)
                };
                irc.login_anonymous();
                irc.send("JOIN #lobby");
                irc.drain(Duration::from_millis(20));
                n += 1;
            }
        }));
    }

    let started = Instant::now();
    let mut rss_max = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        thread::sleep(Duration::from_secs(2));
        let rss = rss_bytes(pid);
        rss_max = rss_max.max(rss);
        assert!(
            rss < RSS_BYTES_MAX,
            "RSS {rss} bytes after {:?}",
            started.elapsed()
        );
        let health = http(server.http, "GET", "/healthz", None);
        assert_eq!(health.status, 200, "{}", health.body);
    }
    stop.store(true, Ordering::Relaxed);
    drop(slow);
    for worker in workers {
        worker.join().expect("worker");
    }
    println!(
        "soak: {} messages sent in {seconds} s, RSS max {} MiB",
        sent.load(Ordering::Relaxed),
        rss_max >> 20
    );
    let dropped: u64 = metric(server.http, "twitchy_slow_disconnects_total")
        .iter()
        .sum();
    assert!(dropped >= 1, "the clients that never read were dropped");

    // Afterwards a fresh client chats as usual.
    let token = register(server.http, "after_soak", "correct horse battery");
    let mut fresh = Irc::ws(server.http);
    fresh.login("after_soak", &token);
    fresh.join("tavern");
    fresh.send("PRIVMSG #tavern :still here");
    fresh.expect("ack", is_ack);
}
