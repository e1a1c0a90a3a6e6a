//! A real three-server NATS cluster (JetStream on) on loopback ports, for the cluster store's tests.
//!
//! Each server gets free ports (asked of the kernel), its own store directory in a temporary directory, and a log
//! file there. Servers are killed by pid (SIGKILL) when the cluster is dropped, pass or fail.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twitchy_storage::{NatsConfig, NatsStore};

/// How long the cluster may take to elect its JetStream leaders before a test fails.
const CLUSTER_READY_MS_MAX: u64 = 120_000;

/// The `nats-server` binary: `$NATS_SERVER`, else on `PATH`, else where Debian installs it. `None` if absent.
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// The binary, or `None` with a message when the test should skip. Under `CI` a missing binary fails the test.
pub fn nats_server_or_skip(test: &str) -> Option<PathBuf> {
    match nats_server_binary() {
        Some(path) => Some(path),
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "{test}: nats-server is not installed (apt-get install nats-server); CI requires it"
            )
        }
        None => {
            println!(
                "{test}: SKIPPED: nats-server is not installed (apt-get install nats-server, or set NATS_SERVER)"
            );
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

struct Server {
    name: String,
    client_port: u16,
    config_path: PathBuf,
    child: Option<Child>,
}

fn spawn_server(binary: &Path, config_path: &Path) -> Child {
    Command::new(binary)
        .arg("-c")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts")
}

/// Three servers, one cluster, JetStream on.
pub struct Cluster {
    servers: Vec<Server>,
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Cluster {
    pub fn start(binary: &Path) -> Cluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster)| format!("\"nats-route://127.0.0.1:{cluster}\""))
            .collect();
        let mut servers = Vec::new();
        for (i, (client_port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store).unwrap();
            let config = format!(
                "server_name: {name}\n\
                 listen: \"127.0.0.1:{client_port}\"\n\
                 log_file: \"{log}\"\n\
                 jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n\
                 cluster {{\n  name: twitchy_test\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{routes}]\n}}\n",
                log = dir.path().join(format!("{name}.log")).display(),
                store = store.display(),
                routes = routes.join(", "),
            );
            let config_path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config_path, config).unwrap();
            let child = spawn_server(binary, &config_path);
            servers.push(Server {
                name,
                client_port: *client_port,
                config_path,
                child: Some(child),
            });
        }
        Cluster {
            servers,
            dir,
            binary: binary.to_owned(),
        }
    }

    /// `nats://127.0.0.1:<port>` of every server still running, in server order.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect()
    }

    /// The URL of one server.
    pub fn url_of(&self, name: &str) -> String {
        let server = self.servers.iter().find(|s| s.name == name).unwrap();
        format!("nats://127.0.0.1:{}", server.client_port)
    }

    /// Kills a server with SIGKILL (by its pid) and reaps it.
    pub fn kill(&mut self, name: &str) {
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name}"));
        if let Some(mut child) = server.child.take() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: `pid` is our own child, not yet reaped (so not reused).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// Starts a killed server again, with its configuration and its JetStream data as it left them: it rejoins
    /// the cluster and catches up.
    pub fn restart(&mut self, name: &str) {
        let binary = self.binary.clone();
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name}"));
        assert!(server.child.is_none(), "{name} is running");
        server.child = Some(spawn_server(&binary, &server.config_path));
    }

    /// Connects a store (a "node") to the given servers, waiting while the cluster elects its leaders.
    pub fn store(&self, mut config: NatsConfig) -> NatsStore {
        if config.servers.is_empty() {
            config.servers = self.urls();
        }
        let deadline = Instant::now() + Duration::from_millis(CLUSTER_READY_MS_MAX);
        loop {
            match NatsStore::connect(&config) {
                Ok(store) => return store,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("cluster not ready yet: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!(
                    "the NATS cluster did not become ready: {e}\n{}",
                    self.logs_tail()
                ),
            }
        }
    }

    /// The end of every server's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for server in &self.servers {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", server.name)))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            out.push_str(&format!("--- {} ---\n", server.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let names: Vec<String> = self.servers.iter().map(|s| s.name.clone()).collect();
        for name in names {
            self.kill(&name);
        }
    }
}
