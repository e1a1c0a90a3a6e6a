//! File-system fault test: a child process runs the embedded store under a file size limit (RLIMIT_FSIZE, with
//! SIGXFSZ ignored, so writes past it fail with EFBIG just as they would on a full disk), writing acknowledged
//! messages until the journal hits the limit. The writer must report the failure, acknowledge nothing from then
//! on, and not panic; reopened without the limit, the store must hold every acknowledged message and accept new
//! writes.
//!
//! Its own harness (`harness = false`): the child mode is selected by `TWITCHY_FSIZE_CHILD_DIR`.

use std::collections::HashSet;
use std::io::Write;
use std::process::Command;
use std::sync::Arc;

use twitchy_storage::{
    CoalescerConfig, EmbeddedStore, MessageId, MessageIdGen, MessageRecord, StorageService, Store,
};

const CHILD_ENV: &str = "TWITCHY_FSIZE_CHILD_DIR";
/// The largest file the child may write.
const FILE_BYTES_MAX: u64 = 4 << 20;
/// Appends tried after the first failure, all of which must fail.
const AFTER_FAILURE_APPENDS: usize = 2000;

fn record(id: MessageId, n: u64) -> MessageRecord {
    MessageRecord {
        id,
        room: "forsen".into(),
        user_id: n,
        login: "writer".into(),
        display_name: "Writer".into(),
        color: String::new(),
        badges: String::new(),
        text: format!("fsize test message {id} {}", "x".repeat(100)),
        original: String::new(),
        styled_by: "local".into(),
        client_nonce: String::new(),
    }
}

fn child(dir: &str) {
    let store = Arc::new(EmbeddedStore::open(dir.as_ref()).unwrap());
    // The log prepares its next segment in the background as soon as it opens; let it finish before the limit
    // is set, so that the first failure is a write into the active segment, not that preparation.
    std::thread::sleep(std::time::Duration::from_secs(1));
    // The limit is set after opening: the journal file is created sparse at its full preallocated size, and the
    // limit then makes the first write past FILE_BYTES_MAX into it fail, as a full disk fails the first write that
    // needs a new block.
    // SAFETY: plain libc calls that change only this process's signal disposition and resource limit.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: FILE_BYTES_MAX,
            rlim_max: FILE_BYTES_MAX,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    let config = CoalescerConfig {
        batch_messages_max: 256,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store, config);
    let h = service.handle();
    let mut ids = MessageIdGen::new(0, 0);
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    // Write in waves of 512 until a wave has a failure.
    let mut failed = false;
    while !failed {
        let mut wave = Vec::new();
        for _ in 0..512 {
            n += 1;
            let id = ids.next_id(1_700_000_000_000 + n / 100);
            match h.append(record(id, n)) {
                Ok(ack) => wave.push((id, ack)),
                // The store already knows it cannot write (it could not prepare its next log segment): refused
                // at once, which is the failure this test waits for.
                Err(e) => {
                    writeln!(out, "FAILED {e}").unwrap();
                    failed = true;
                    break;
                }
            }
        }
        for (id, ack) in wave {
            match futures_lite::future::block_on(ack) {
                Ok(()) => writeln!(out, "ACKED {id}").unwrap(),
                Err(e) => {
                    if !failed {
                        writeln!(out, "FAILED {e}").unwrap();
                    }
                    failed = true;
                }
            }
        }
    }
    // After the failure the store may take writes again where they fit (a smaller batch below the limit): what it
    // acknowledges then must be as durable as anything else, so those ids are reported like the others.
    let acks: Vec<_> = (0..AFTER_FAILURE_APPENDS)
        .filter_map(|_| {
            n += 1;
            let id = ids.next_id(1_700_000_000_000 + n / 100);
            h.append(record(id, n)).ok().map(|ack| (id, ack))
        })
        .collect();
    let mut acked_after = 0;
    for (id, ack) in acks {
        if futures_lite::future::block_on(ack).is_ok() {
            writeln!(out, "ACKED {id}").unwrap();
            acked_after += 1;
        }
    }
    writeln!(out, "ACKED_AFTER_FAILURE {acked_after}").unwrap();
    let errors = h
        .metrics_text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("twitchy_storage_errors_total ")
                .map(str::to_owned)
        })
        .unwrap();
    writeln!(out, "ERRORS_TOTAL {errors}").unwrap();
    writeln!(out, "SHUTDOWN {:?}", service.shutdown().is_ok()).unwrap();
    out.flush().unwrap();
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child must exit cleanly, not panic: {:?}\n{stderr}",
        output.status
    );
    assert!(
        !stderr.contains("panicked"),
        "no panic in the child:\n{stderr}"
    );

    let acked: HashSet<MessageId> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ACKED "))
        .map(|s| s.parse().unwrap())
        .collect();
    let failure = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FAILED "))
        .expect("the writer reported a failure");
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    println!(
        "fault injected after {} acknowledged messages: {failure}",
        acked.len()
    );
    assert!(
        failure.contains("store failed"),
        "reported as a store IO error: {failure}"
    );
    assert!(
        !acked.is_empty(),
        "some messages were acknowledged before the limit"
    );
    // Whatever was acknowledged after the failure is in `acked` and checked below like the rest.
    println!(
        "acknowledged after the failure: {}",
        field("ACKED_AFTER_FAILURE ")
    );
    assert!(field("ERRORS_TOTAL ").parse::<u64>().unwrap() >= 1);

    // Reopened with room to write: every acknowledged message is there, once, and the store works again.
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let stored = store.messages_before("forsen", None, usize::MAX).unwrap();
    assert!(stored.windows(2).all(|w| w[0].id > w[1].id));
    let stored_ids: HashSet<MessageId> = stored.iter().map(|m| m.id).collect();
    for m in &stored {
        assert_eq!(
            m.text,
            format!("fsize test message {} {}", m.id, "x".repeat(100)),
            "intact record"
        );
    }
    let missing = acked.difference(&stored_ids).count();
    assert_eq!(missing, 0, "{missing} acknowledged messages lost");
    let service = StorageService::start(store.clone(), CoalescerConfig::default());
    let id = MessageIdGen::new(0, 1).next_id(1_800_000_000_000);
    futures_lite::future::block_on(service.handle().append(record(id, 0)).unwrap()).unwrap();
    service.shutdown().unwrap();
    assert_eq!(store.recent_messages("forsen", 1).unwrap()[0].id, id);
    println!(
        "disk-full test passed: {} acknowledged, {} stored after recovery",
        acked.len(),
        stored.len()
    );
}

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(&dir),
        Err(_) => parent(),
    }
}
