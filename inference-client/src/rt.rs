//! Small adapters that let hyper 1.x run on a glommio shard: IO, timer and executor.
//!
//! hyper is runtime-agnostic through `hyper::rt::{Read, Write, Timer, Executor}`; glommio speaks `futures-io`
//! and has its own timers and `spawn_local`. These adapters are shared by the vLLM client (hyper client) and the
//! engine's HTTP server.
//!
//! Architecture invariant: everything here stays on the shard thread that created it. hyper's `Timer` demands
//! `Send + Sync` sleeps; [`GlommioTimer`] provides them by wrapping a shard-local glommio timer and checking, on every
//! poll and on drop, that it is still on its own thread.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::{LocalExecutorBuilder, Placement};

/// Runs `body` on a fresh, unpinned glommio executor (one shard) with `io_memory` bytes of io_uring memory, waits
/// for it and returns its result. For tools and tests that need one shard outside a server.
pub fn run_on_new_shard<G, F, T>(io_memory: usize, body: G) -> Result<T, String>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(io_memory)
        .spawn(body)
        .map_err(|error| format!("executor: {error}"))?
        .join()
        .map_err(|error| format!("executor join: {error}"))
}

/// Wraps a `futures-io` stream (a glommio `TcpStream`) as hyper IO.
#[derive(Debug)]
pub struct GlommioIo<T>(pub T);

impl<T> GlommioIo<T> {
    pub fn new(inner: T) -> Self {
        GlommioIo(inner)
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for GlommioIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the uninitialised tail is zeroed before it is handed out as `&mut [u8]`, and `advance` is called
        // with exactly the number of bytes the reader wrote into it.
        let filled = unsafe {
            let uninit = buf.as_mut();
            for byte in uninit.iter_mut() {
                byte.write(0);
            }
            let slice = &mut *(uninit as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]);
            match Pin::new(&mut self.0).poll_read(cx, slice) {
                Poll::Ready(Ok(n)) => n,
                // Errors are passed up, never swallowed: hyper closes the connection and reports it.
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        };
        // SAFETY: `filled` bytes were initialised above and written by the reader.
        unsafe { buf.advance(filled) };
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for GlommioIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// Runs hyper's background futures as detached glommio tasks on the current shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioExecutor;

impl<F> hyper::rt::Executor<F> for GlommioExecutor
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(fut).detach();
    }
}

/// hyper timer backed by glommio's shard-local timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioTimer;

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LocalSleep::new(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LocalSleep::new(
            deadline.saturating_duration_since(Instant::now()),
        ))
    }
}

/// A glommio timer that hyper may hold as `Send + Sync`. It must never leave its thread; this is checked.
struct LocalSleep {
    timer: glommio::timer::Timer,
    owner: ThreadId,
}

impl LocalSleep {
    fn new(duration: Duration) -> Self {
        LocalSleep {
            timer: glommio::timer::Timer::new(duration),
            owner: std::thread::current().id(),
        }
    }

    fn assert_owner(&self) {
        assert_eq!(
            self.owner,
            std::thread::current().id(),
            "a shard-local timer left its shard"
        );
    }
}

// SAFETY: hyper requires `Send + Sync` of sleeps, but the connections that own them run on one glommio shard and
// never move (their IO is `!Send`). `assert_owner` checks that on every poll and on drop.
unsafe impl Send for LocalSleep {}
// SAFETY: see above; `LocalSleep` exposes no `&self` methods that touch the timer.
unsafe impl Sync for LocalSleep {}

impl Future for LocalSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.assert_owner();
        Pin::new(&mut self.timer).poll(cx).map(|_| ())
    }
}

impl Drop for LocalSleep {
    fn drop(&mut self) {
        self.assert_owner();
    }
}

impl hyper::rt::Sleep for LocalSleep {}
