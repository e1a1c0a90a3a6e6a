//! Shards pin to CPUs inside the process's allowed set; a CPU outside it is refused with a clear error. The process
//! runs without transparent huge pages.
mod common;

use std::process::Command;

use common::TestServer;

/// The CPU lists of the threads whose name starts with `prefix`, from /proc.
fn cpus_allowed(pid: u32, prefix: &str) -> Vec<String> {
    let mut lists = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let path = entry.expect("task").path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim().starts_with(prefix) {
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            if let Some(list) = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            {
                lists.push(list.trim().to_string());
            }
        }
    }
    lists
}

fn allowed_here() -> Vec<usize> {
    twitchy_engine::placement::allowed_cpus()
}

#[test]
fn a_shard_pins_to_the_chosen_cpu_inside_the_allowed_set() {
    let allowed = allowed_here();
    let last = *allowed.last().expect("some CPU");
    let server = TestServer::start(&["--shards", "1", "--cpus", &last.to_string()]);
    // The executor thread (glommio names it `shard-0-<id>`) runs on the chosen CPU only.
    let shard = cpus_allowed(server.pid(), "shard-0");
    assert!(shard.contains(&last.to_string()), "{shard:?}");
    if allowed.len() > 1 {
        // Helper threads (the storage writer, the shard's blocking pool) stay off the shard's CPU.
        let others = cpus_allowed(server.pid(), "storage-writer");
        assert!(!others.is_empty());
        assert!(others.iter().all(|l| l != &last.to_string()), "{others:?}");
        assert!(
            shard.iter().filter(|l| **l == last.to_string()).count() == 1,
            "{shard:?}"
        );
    }
}

#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let server = TestServer::start(&[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("status");
    // `THP_enabled` is 0 once the process has turned them off (PR_SET_THP_DISABLE), 1 otherwise.
    let enabled = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(enabled, Some("0"), "{status}");
}

#[test]
fn a_cpu_outside_the_allowed_set_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_twitchy"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--irc",
            "127.0.0.1:0",
            "--cpus",
            "4095",
        ])
        .args(["--data-dir", "/nonexistent/never-created"])
        .output()
        .expect("run twitchy");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("may not run on"), "{stderr}");
}
