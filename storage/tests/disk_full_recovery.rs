//! A full disk, for real: the embedded store on a small tmpfs filled up by another file. The store must say so
//! (health and metrics), refuse sends at once while it is full, recover on its own once space is freed (no
//! restart), and never show a message whose write failed, neither then nor after reopening.
//!
//! Needs root (it mounts a tmpfs, and unmounts it at the end, also on failure); elsewhere it prints that it
//! skipped.

mod common;

use std::collections::HashSet;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{block_on, message};
use twitchy_storage::{
    CoalescerConfig, EmbeddedOptions, EmbeddedStore, Health, MessageId, MessageIdGen, StorageError,
    StorageService, Store,
};

/// Size of the tmpfs.
const DISK_BYTES: u64 = 48 << 20;
/// Log segment size: small, so that the log needs a new segment soon after the disk is full.
const SEGMENT_BYTES: u64 = 2 << 20;

/// A mounted tmpfs, unmounted (lazily, so a leftover open file cannot block it) when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let fstype = CString::new("tmpfs").unwrap();
        let options = CString::new(format!("size={bytes}")).unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            println!(
                "skipped: cannot mount a tmpfs here ({}); run as root",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Tmpfs {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn eventually(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        .parse()
        .unwrap()
}

fn stored_ids(store: &dyn Store) -> Vec<MessageId> {
    store
        .messages_before("forsen", None, usize::MAX)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect()
}

#[test]
fn a_full_disk_is_reported_refused_and_recovered_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk"), DISK_BYTES) else {
        return;
    };
    let data = disk.dir.join("data");
    let filler = disk.dir.join("filler");
    let options = EmbeddedOptions {
        segment_bytes_max: SEGMENT_BYTES,
        read_index_wait_ms_max: 20_000,
        ..EmbeddedOptions::default()
    };
    let store = Arc::new(EmbeddedStore::open_with(&data, options.clone()).unwrap());
    let config = CoalescerConfig {
        recover_interval_ms: 20,
        ..CoalescerConfig::default()
    };
    let service = StorageService::start(store.clone(), config);
    let h = service.handle();
    let mut ids = MessageIdGen::new(0, 0);
    let mut n = 0u64;
    let mut next = || {
        n += 1;
        message(ids.next_id(1_700_000_000_000 + n / 50), "forsen", n)
    };

    // Some messages while there is room.
    let mut acked = HashSet::new();
    let mut failed = HashSet::new();
    let first: Vec<_> = (0..2000).map(|_| next()).collect();
    let acks: Vec<_> = first.iter().map(|m| h.append(m.clone()).unwrap()).collect();
    for (m, ack) in first.iter().zip(acks) {
        block_on(ack).unwrap();
        acked.insert(m.id);
    }
    assert!(h.is_healthy());

    // The disk fills up. Keep sending, as chat does, until the store says it cannot take more.
    fill(&filler);
    let started = Instant::now();
    let mut refused = 0;
    while refused == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the store never noticed the full disk: {} acked",
            acked.len()
        );
        let wave: Vec<_> = (0..500).map(|_| next()).collect();
        let mut acks = Vec::new();
        for m in wave {
            match h.append(m.clone()) {
                Ok(ack) => acks.push((m.id, ack)),
                Err(StorageError::Unavailable(_)) => refused += 1,
                Err(StorageError::Busy) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("append: {e}"),
            }
        }
        for (id, ack) in acks {
            match block_on(ack) {
                Ok(()) => {
                    acked.insert(id);
                }
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    failed.insert(id);
                }
            }
        }
    }
    let health = h.health();
    println!(
        "disk full after {} acknowledged messages, {} failed: {health:?}",
        acked.len(),
        failed.len()
    );
    assert!(matches!(health, Health::Unavailable(_)), "{health:?}");
    let text = h.metrics_text();
    assert_eq!(
        metric(&text, "twitchy_storage_healthy{state=\"unavailable\"}"),
        0.0
    );
    // While full, a send is refused at once and nothing is queued.
    let m = next();
    assert!(
        matches!(h.append(m.clone()), Err(StorageError::Unavailable(_))),
        "refused while full"
    );
    failed.insert(m.id);
    assert_eq!(h.queue_depth(), 0);

    // Space is freed: the store recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    eventually(
        "healthy after space was freed",
        Duration::from_secs(60),
        || h.is_healthy(),
    );
    let later: Vec<_> = (0..1000).map(|_| next()).collect();
    let acks: Vec<_> = later.iter().map(|m| h.append(m.clone()).unwrap()).collect();
    for (m, ack) in later.iter().zip(acks) {
        block_on(ack).unwrap();
        acked.insert(m.id);
    }
    assert_eq!(
        metric(
            &h.metrics_text(),
            "twitchy_storage_healthy{state=\"healthy\"}"
        ),
        1.0
    );

    // Every acknowledged message is there once; no failed one is, now or after reopening.
    let check = |store: &dyn Store| {
        let stored = stored_ids(store);
        let unique: HashSet<MessageId> = stored.iter().copied().collect();
        assert_eq!(unique.len(), stored.len(), "no message stored twice");
        let missing = acked.difference(&unique).count();
        assert_eq!(missing, 0, "{missing} acknowledged messages missing");
        let reappeared = failed.intersection(&unique).count();
        assert_eq!(reappeared, 0, "{reappeared} failed messages reappeared");
    };
    check(&*store);
    service.shutdown().unwrap();
    drop(store);
    let reopened = EmbeddedStore::open_with(&data, options).unwrap();
    check(&reopened);
    drop(reopened);
    drop(disk);
}
