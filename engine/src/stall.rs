//! Guards against a glommio 0.9.0 scheduler bug that can leave a shard asleep with work to do.
//!
//! glommio's executor loop arms a preemption timer, then runs task queues. If the timer has already fired when the
//! scheduler looks (the thread was descheduled for longer than the preemption period in between, which a loaded
//! machine does), it runs nothing, reads "nothing ran" as "nothing to run" and parks in `io_uring_enter` until the
//! next event, although a task is runnable. Two guards bound that sleep:
//!
//! - Once a shard runs, it keeps a timer pending ([`EXECUTOR_GUARD_MS`]): the timer is an event, so such a sleep
//!   lasts at most one period.
//! - Before a shard has run at all (the bug can strike on the executor's very first pass, before any of our code has
//!   armed a timer), nothing would ever wake it. The starting thread watches for each shard's first poll and, while
//!   it is missing, interrupts the shard's thread with a signal ([`interrupt_threads_named`]); glommio treats the
//!   interrupted wait as a wake-up and runs its queues.

use std::sync::OnceLock;

/// Period of the timer every shard keeps pending, bounding a stall to about this long.
pub const EXECUTOR_GUARD_MS: u64 = 20;
/// How long the starting thread waits for a shard's first poll before interrupting its thread, and between
/// interrupts.
pub const FIRST_POLL_WAIT_MS: u64 = 100;

/// The signal used to interrupt a parked shard thread. Ignored by default, and unused otherwise by the engine.
const INTERRUPT_SIGNAL: libc::c_int = libc::SIGURG;

extern "C" fn on_interrupt(_: libc::c_int) {}

/// Installs a no-op handler for the interrupt signal, without `SA_RESTART`, so that a blocking `io_uring_enter` in
/// the signalled thread returns `EINTR` instead of resuming its wait.
fn install_handler() -> std::io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is an async-signal-safe no-op; the mask is initialised by
        // sigemptyset before use.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(INTERRUPT_SIGNAL, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    installed.map_err(std::io::Error::from_raw_os_error)
}

/// Interrupts every thread of this process whose name starts with `prefix`; returns how many were signalled.
pub fn interrupt_threads_named(prefix: &str) -> std::io::Result<usize> {
    install_handler()?;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut signalled = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue; // the thread exited meanwhile
        };
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: tgkill only sends a signal, to a thread of this process, whose handler is the no-op above.
        if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, INTERRUPT_SIGNAL) } == 0 {
            signalled += 1;
        }
    }
    Ok(signalled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn an_interrupt_ends_a_blocking_wait_in_the_named_thread_only() {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let [read_fd, write_fd] = fds;
        let (done_tx, done_rx) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("stall-test-wait".into())
            .spawn(move || {
                let mut byte = 0u8;
                // Blocks on the empty pipe until a signal interrupts it (no SA_RESTART) or the test writes a byte.
                // SAFETY: reads at most one byte into a live local.
                let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
                let interrupted =
                    n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
                done_tx.send(interrupted).unwrap();
            })
            .unwrap();
        assert_eq!(interrupt_threads_named("no-such-thread-").unwrap(), 0);
        let mut outcome = None;
        for _ in 0..50 {
            // The reader may not have named itself or blocked yet: interrupt until it reports.
            assert!(interrupt_threads_named("stall-test-wait").unwrap() <= 1);
            if let Ok(interrupted) = done_rx.recv_timeout(Duration::from_millis(100)) {
                outcome = Some(interrupted);
                break;
            }
        }
        if outcome.is_none() {
            // Unblock the reader so the test ends.
            // SAFETY: writes one byte from a live local to the pipe created above.
            unsafe { libc::write(write_fd, [1u8].as_ptr().cast(), 1) };
        }
        reader.join().unwrap();
        // SAFETY: closing the descriptors pipe created, once nothing uses them.
        unsafe {
            libc::close(read_fd);
            libc::close(write_fd);
        }
        assert_eq!(outcome, Some(true), "the blocked read was not interrupted");
    }
}
