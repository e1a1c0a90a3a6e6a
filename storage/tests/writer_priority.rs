//! The thread that appends to the embedded store's commit log (the coalescer's writer) asks for the real-time CPU
//! class where the process may have it, falls back to nice -10 when told not to, and no other thread of the store
//! changes class.
//!
//! One test in its own binary, so that no other test's store threads are in the process while it looks at them.

mod common;

use std::sync::Arc;

use common::{block_on, message};
use twitchy_storage::embedded::{LOG_WRITER_NICE, LOG_WRITER_RT_PRIORITY};
use twitchy_storage::{
    CoalescerConfig, EmbeddedOptions, EmbeddedStore, MessageIdGen, StorageService,
};

/// A thread's name, scheduling policy, real-time priority (0 outside the real-time classes) and niceness.
#[derive(Debug)]
struct ThreadClass {
    name: String,
    policy: i64,
    rt_priority: i64,
    nice: i64,
}

/// Every thread of this process, from `/proc/self/task`.
fn threads() -> Vec<ThreadClass> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the command's closing parenthesis start at field 3; rt_priority is 40, policy 41, nice 19.
        let (_, rest) = stat.rsplit_once(')').unwrap();
        let fields: Vec<&str> = rest.split_whitespace().skip(1).collect();
        let field = |n: usize| -> i64 { fields[n - 4].parse().unwrap() };
        out.push(ThreadClass {
            name: comm.trim().to_owned(),
            policy: field(41),
            rt_priority: field(40),
            nice: field(19),
        });
    }
    out
}

/// Whether this process may put a thread in the real-time class at the writer's priority, and whether it may
/// give one the writer's negative niceness: each tried on a thread of its own, which then ends.
fn allowed() -> (bool, bool) {
    let realtime = std::thread::spawn(|| {
        let param = libc::sched_param {
            sched_priority: LOG_WRITER_RT_PRIORITY,
        };
        // SAFETY: a plain syscall on the calling (throwaway) thread's own scheduling class.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
    });
    let nice = std::thread::spawn(|| {
        // SAFETY: plain syscalls on the calling (throwaway) thread's own priority.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, LOG_WRITER_NICE) == 0
        }
    });
    (realtime.join().unwrap(), nice.join().unwrap())
}

#[test]
fn the_log_writer_is_real_time_where_allowed_and_only_when_asked() {
    // Without root (or high enough RLIMIT_RTPRIO and RLIMIT_NICE) the writer stays in the class it started in.
    let (allowed, nice_allowed) = allowed();
    for realtime in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            log_writer_realtime: realtime,
            ..EmbeddedOptions::default()
        };
        let store = Arc::new(EmbeddedStore::open_with(dir.path(), options).unwrap());
        let service = StorageService::start(store, CoalescerConfig::default());
        let mut ids = MessageIdGen::new(1, 1);
        let ack = service
            .handle()
            .append(message(ids.next_id(1_000), "room", 1))
            .unwrap();
        block_on(ack).unwrap();

        let threads = threads();
        let writers: Vec<&ThreadClass> = threads
            .iter()
            .filter(|t| t.name == "storage-writer")
            .collect();
        assert_eq!(writers.len(), 1, "realtime {realtime}: {threads:?}");
        let writer = writers[0];
        if realtime && allowed {
            assert_eq!(
                (writer.policy, writer.rt_priority),
                (
                    i64::from(libc::SCHED_FIFO),
                    i64::from(LOG_WRITER_RT_PRIORITY)
                ),
                "{writer:?}"
            );
        } else {
            assert_eq!(writer.policy, i64::from(libc::SCHED_OTHER), "{writer:?}");
            let nice = if nice_allowed { LOG_WRITER_NICE } else { 0 };
            assert_eq!(writer.nice, i64::from(nice), "{writer:?}");
        }
        for other in threads.iter().filter(|t| t.name != "storage-writer") {
            assert_eq!(
                other.policy,
                i64::from(libc::SCHED_OTHER),
                "realtime {realtime}: {other:?} changed class"
            );
        }
        service.shutdown().unwrap();
    }
}
