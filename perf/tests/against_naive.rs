//! Drives the real `twitchy-perf` binary against the real `twitchy-naive`
//! binary over loopback sockets and checks that what the load generator
//! counts matches what the scenario must produce.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    http: String,
    irc: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Killed by its own pid, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_naive(rate_limit_messages: u32, rate_limit_window_ms: u64) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twitchy-naive"))
        .args(["--http", "127.0.0.1:0", "--irc", "127.0.0.1:0"])
        .args(["--rate-limit-messages", &rate_limit_messages.to_string()])
        .args(["--rate-limit-window-ms", &rate_limit_window_ms.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start twitchy-naive");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    };
    Server {
        http: field("http="),
        irc: field("irc="),
        child,
    }
}

fn perf(args: &[&str]) -> serde_json::Value {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_twitchy-perf"))
        .args(args)
        .args(["--out", out_dir.path().to_str().expect("utf-8 path")])
        .arg("--no-progress")
        .output()
        .expect("run twitchy-perf");
    assert!(
        output.status.success(),
        "twitchy-perf failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let files: Vec<String> = std::fs::read_dir(out_dir.path())
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.ends_with(".json")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".html")), "{files:?}");
    serde_json::from_slice(&output.stdout).expect("JSON summary on stdout")
}

fn target_spec(server: &Server) -> String {
    format!(
        "naive={},irc={},pid={}",
        server.http,
        server.irc,
        server.child.id()
    )
}

fn check_complete_delivery(summary: &serde_json::Value, viewers_per_room: u64) {
    let t = &summary["targets"][0];
    let sent = t["sent"].as_u64().unwrap();
    assert!(sent > 0, "{t}");
    assert_eq!(t["connect"]["failed"], 0, "{t}");
    assert_eq!(t["acked"].as_u64().unwrap(), sent, "{t}");
    assert_eq!(t["unacked"], 0);
    assert_eq!(t["lost"], 0, "{t}");
    assert_eq!(t["duplicates"], 0);
    assert_eq!(t["deliveries"].as_u64().unwrap(), sent * viewers_per_room);
    assert_eq!(t["latency"]["count"], t["deliveries"]);
    assert_eq!(t["ack_latency"]["count"].as_u64().unwrap(), sent);
    let timeline_deliveries: u64 = t["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["deliveries"].as_u64().unwrap())
        .sum();
    assert_eq!(timeline_deliveries, sent * viewers_per_room);
    assert!(t["server"]["cpu_s"].as_f64().is_some());
}

#[test]
fn websocket_run_delivers_every_message_to_every_viewer() {
    let server = start_naive(100_000, 1_000);
    let summary = perf(&[
        "run",
        "--target",
        &target_spec(&server),
        "--preset",
        "average",
        "--rooms",
        "2",
        "--senders-per-room",
        "2",
        "--viewers-per-room",
        "5",
        "--rate",
        "100",
        "--duration-ms",
        "1000",
    ]);
    check_complete_delivery(&summary, 5);
    assert_eq!(summary["scenario"]["transport"], "ws");
}

#[test]
fn tcp_run_compares_two_targets() {
    let first = start_naive(100_000, 1_000);
    let second = start_naive(100_000, 1_000);
    let second_spec = target_spec(&second).replacen("naive=", "other=", 1);
    let summary = perf(&[
        "run",
        "--target",
        &target_spec(&first),
        "--target",
        &second_spec,
        "--transport",
        "tcp",
        "--rooms",
        "1",
        "--senders-per-room",
        "1",
        "--viewers-per-room",
        "3",
        "--rate",
        "50",
        "--duration-ms",
        "600",
    ]);
    check_complete_delivery(&summary, 3);
    assert_eq!(summary["targets"][1]["target"], "other");
    assert_eq!(summary["ratios"][0]["target"], "other");
    assert_eq!(summary["ratios"][0]["versus"], "naive");
}

#[test]
fn refused_messages_are_counted_as_notices_not_losses() {
    // Five messages per minute: a sender offering 20 gets 15 refused.
    let server = start_naive(5, 60_000);
    let summary = perf(&[
        "run",
        "--target",
        &target_spec(&server),
        "--rooms",
        "1",
        "--senders-per-room",
        "1",
        "--viewers-per-room",
        "2",
        "--rate",
        "20",
        "--duration-ms",
        "1000",
    ]);
    let t = &summary["targets"][0];
    assert_eq!(t["sent"], 20, "{t}");
    assert_eq!(t["acked"], 5, "{t}");
    assert_eq!(t["rejected"], 15, "{t}");
    assert_eq!(t["notices"]["msg_ratelimit"], 15, "{t}");
    assert_eq!(t["deliveries"], 10, "{t}");
    assert_eq!(t["lost"], 0, "{t}");
}

#[test]
fn memory_mode_counts_open_connections() {
    let server = start_naive(20, 30_000);
    let summary = perf(&[
        "memory",
        "--target",
        &target_spec(&server),
        "--connections",
        "40",
        "--settle-ms",
        "100",
    ]);
    let t = &summary["targets"][0];
    assert_eq!(t["connections_open"], 40, "{t}");
    assert_eq!(t["connect_failed"], 0);
    assert_eq!(t["server_connections_gauge"], 40.0, "{t}");
    assert!(t["rss_bytes_after"].as_u64().unwrap() > 0);
}

#[test]
fn unreachable_target_fails_cleanly() {
    // Bind and drop a listener to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_twitchy-perf"))
        .args(["run", "--no-progress", "--duration-ms", "100"])
        .args(["--target", &format!("gone=127.0.0.1:{port}")])
        .output()
        .expect("run twitchy-perf");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("target gone"), "{stderr}");
}
