//! Starts the real `twitchy` binary on ephemeral ports for integration tests, and stops it (by pid) on drop.
#![allow(dead_code)]

pub mod client;
pub mod twitch_irc;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server. Dropping it kills the process.
pub struct TestServer {
    child: Option<Child>,
    /// HTTP + WebSocket address.
    pub http: SocketAddr,
    /// Plain TCP IRC address.
    pub irc: SocketAddr,
    /// The metrics listener, when started with `--metrics-addr`.
    pub metrics: Option<SocketAddr>,
    /// The IRC-over-TLS listener, when started with `--irc-tls`.
    pub irc_tls: Option<SocketAddr>,
    /// Data directory (kept across restarts).
    pub data_dir: PathBuf,
    args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server with a fresh data dir and the given extra arguments.
    pub fn start(extra_args: &[&str]) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let args = extra_args.iter().map(|s| s.to_string()).collect();
        let mut server = TestServer {
            child: None,
            http: ([0, 0, 0, 0], 0).into(),
            irc: ([0, 0, 0, 0], 0).into(),
            metrics: None,
            irc_tls: None,
            data_dir,
            args,
            _tmp: Some(tmp),
        };
        server.spawn();
        server
    }

    /// Starts a server on an existing data dir (the caller keeps the directory alive).
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> TestServer {
        let args = extra_args.iter().map(|s| s.to_string()).collect();
        let mut server = TestServer {
            child: None,
            http: ([0, 0, 0, 0], 0).into(),
            irc: ([0, 0, 0, 0], 0).into(),
            metrics: None,
            irc_tls: None,
            data_dir: data_dir.to_path_buf(),
            args,
            _tmp: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_twitchy"));
        cmd.arg("--http")
            .arg("127.0.0.1:0")
            .arg("--irc")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start twitchy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.starts_with("twitchy ready") {
                    let _ = tx.send(line.clone());
                    sent = true;
                }
                // Keep draining so the server never blocks on a full pipe.
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("twitchy did not become ready within 60 s");
            }
        };
        self.http = field(&ready, "http=")
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .parse()
            .expect("http addr");
        self.irc = field(&ready, "irc=").parse().expect("irc addr");
        self.irc_tls = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("irc_tls="))
            .map(|a| a.parse().expect("irc_tls addr"));
        self.metrics = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("metrics=http://"))
            .map(|a| {
                a.trim_end_matches("/metrics")
                    .parse()
                    .expect("metrics addr")
            });
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait");
        status.code()
    }

    /// SIGTERM, wait, and start again on the same data dir (new ports).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGKILL without any shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.http)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}
